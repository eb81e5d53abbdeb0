"""Call records from the pure engine: one per initial INVITE, emitted when the call ends."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from stirshaken_proxy.engine.records import CallRecord, json_text
from stirshaken_proxy.sip.transport import Send
from tests.engine.test_proxy import UAC, answer, carrier_peer, engine, invite


def records(out: list[object]) -> list[CallRecord]:
    return [a for a in out if isinstance(a, CallRecord)]


def forwarded(out: list[object]) -> bytes:
    return next(a.data for a in out if isinstance(a, Send) and a.peer.side.value == "carrier")


def bye(branch: str) -> bytes:
    return (b"BYE sip:uas@127.0.0.1:5080 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch="
            + branch.encode() + b"\r\nFrom: <sip:12025550100@127.0.0.1>;tag=uac\r\n"
            b"To: <sip:12025550199@127.0.0.1>;tag=uas\r\nCall-ID: call-1\r\nCSeq: 2 BYE\r\n"
            b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n")


def test_an_answered_call_is_recorded_at_its_bye_with_its_duration() -> None:
    e = engine()
    e.record_calls(instance="a", worker=0)
    out = e.receive(invite(), UAC, 100.0)
    assert records(out) == [] and len(e.records) == 1
    assert records(e.receive(answer(forwarded(out), 200), carrier_peer(), 101.5)) == []
    got = records(e.receive(bye("z9hG4bKbye1"), UAC, 161.5))
    assert len(got) == 1
    r = got[0]
    assert (r.call_id, r.direction, r.status, r.started, r.answered, r.ended, r.duration) == (
        "call-1", "outbound", 200, 100.0, 101.5, 161.5, 60.0)
    assert r.id == "a-0-186a0-1" and len(e.records) == 0  # instance-worker-ms(hex)-count


def test_a_failed_call_is_recorded_at_its_final_response() -> None:
    e = engine()
    e.record_calls(instance="", worker=0)
    out = e.receive(invite(), UAC, 100.0)
    got = records(e.receive(answer(forwarded(out), 486), carrier_peer(), 102.0))
    assert [(r.status, r.answered, r.duration, r.ended) for r in got] == [(486, None, 0.0, 102.0)]


def test_a_call_answered_here_is_recorded_at_once() -> None:
    e = engine()
    e.record_calls(instance="", worker=0)
    got = records(e.receive(invite(mf=b"0"), UAC, 100.0))  # 483 Too Many Hops
    assert [(r.status, r.direction) for r in got] == [(483, "outbound")]


def test_records_are_off_unless_enabled() -> None:
    e = engine()
    out = e.receive(invite(), UAC, 100.0)
    assert records(out) == [] and len(e.records) == 0


def test_a_timed_out_call_is_recorded_with_its_408() -> None:
    e = engine()
    e.record_calls(instance="", worker=0)
    e.receive(invite(), UAC, 100.0)
    out = e.on_timers(100.0 + 64 * 0.5 + 1)  # Timer B: 64*T1
    got = [a for a in out if isinstance(a, CallRecord)]
    assert [(r.status, r.answered) for r in got] == [(408, None)]


_text = st.text(max_size=12)  # any code point: quotes, controls, non-ASCII, surrogates
_maybe_text = st.none() | _text
_time = st.floats(allow_nan=True, allow_infinity=True)


@given(st.builds(
    CallRecord, _text, _text, _text, _maybe_text, _maybe_text, _maybe_text, _maybe_text,
    _maybe_text, _maybe_text, _maybe_text, st.none() | st.integers(0, 699),
    st.integers(0, 699), _time, st.none() | _time, _time, _time, _text, st.integers(0, 64)))
def test_a_records_json_text_is_what_the_json_encoder_writes(record: CallRecord) -> None:
    assert json_text(record) == json.dumps(record.as_json(), separators=(",", ":"))
