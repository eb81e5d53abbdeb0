"""The compiled transactions (_cmachine.c) against the reference (machine.py): the same random
events, including reentrant calls from the transaction user, give the same states, armed
timers, datagrams, callbacks and answers on both."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stirshaken_proxy.sip.message import SipMessage, parse_message
from stirshaken_proxy.sip.transport import Peer, Send, Side, Transport
from stirshaken_proxy.transaction import AckTemplate, Event, State, TimerConfig, timer_heap
from stirshaken_proxy.transaction.machine import COMPILED, REFERENCE, Machines

needs_compiled = pytest.mark.skipif(COMPILED is None, reason="the compiled core was not built")

PEERS = (Peer(Side.CARRIER, Transport.UDP, "127.0.0.1", 5080),
         Peer(Side.CARRIER, Transport.TCP, "127.0.0.1", 5080))
CONFIGS = (TimerConfig(), TimerConfig(t1=0.25, t2=1.0, t4=2.5, timer_d=40.0, timer_c=3.0))
KINDS = ("client_invite", "client_non_invite", "server_invite", "server_non_invite")


def response(status: int) -> SipMessage:
    return parse_message(
        b"SIP/2.0 %d X\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKabc\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=%d\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n"
        b"Content-Length: 0\r\n\r\n" % (status, status))


STATUSES = (100, 101, 180, 200, 202, 302, 486, 503)
RESPONSES = {status: response(status) for status in STATUSES}  # shared: compared by identity
REQUEST = parse_message(
    b"INVITE sip:c@d SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKabc\r\n"
    b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n"
    b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n")


class TU:
    """Records every callback; on_timer_c does what the proxy does (re-arms, or ends the
    transaction), and on_response may end it, so reentrant calls are compared too; some
    seeds make a callback raise, so the error paths are compared as well."""

    def __init__(self, reentrant: int) -> None:
        self.timers = timer_heap()
        self.seen: list[tuple[Any, ...]] = []
        self.reentrant = reentrant  # a seed: which callbacks call back into the transaction

    def on_response(self, txn: Any, msg: SipMessage, now: float, out: list[Send]) -> None:
        self.seen.append(("response", msg.status, now))
        if self.reentrant % 5 == 1 and msg.status >= 200:
            txn.terminate()
        if self.reentrant % 7 == 3 and msg.status == 486:
            raise RuntimeError("the transaction user failed")  # the steps after it do not run

    def on_timeout(self, txn: Any, now: float, out: list[Send]) -> None:
        self.seen.append(("timeout", now))

    def on_terminated(self, txn: Any) -> None:
        self.seen.append(("terminated", txn.state.name))
        if self.reentrant == 12:
            raise RuntimeError("the transaction user failed")  # the release is not done

    def on_timer_c(self, txn: Any, now: float, out: list[Send]) -> None:
        self.seen.append(("timer_c", now))
        if self.reentrant % 3 == 0:
            txn.arm_timer_c(64 * txn.config.t1, now)
        else:
            txn.terminate()


def make(m: Machines, kind: str, peer: Peer, cfg: TimerConfig, tu: TU) -> Any:
    common: dict[str, Any] = {"key": ("b", kind), "peer": peer, "tu": tu, "config": cfg}
    if kind == "client_invite":
        return m.client_invite(request=b"INVITE sip:c@d SIP/2.0\r\n\r\n", ack_template=AckTemplate(
            head=b"ACK sip:c@d SIP/2.0\r\nVia: v\r\n", from_call_id=b"From: f\r\nCall-ID: x\r\n",
            cseq=7), **common)
    if kind == "client_non_invite":
        return m.client_non_invite(request=b"BYE sip:c@d SIP/2.0\r\n\r\n", **common)
    return getattr(m, kind)(request=REQUEST, **common)


def snapshot(txn: Any, tu: TU, out: list[Send]) -> tuple[Any, ...]:
    extra: tuple[Any, ...] = ()
    if hasattr(txn, "last_response"):
        extra = (txn.last_response, txn.request is None)
    else:
        extra = (txn.request, txn.ack)
        if hasattr(txn, "ack_template"):
            extra += (txn.ack_template, txn.timer_c_at)
    return (txn.state.name, dict(txn.deadlines), txn._interval, txn.context,
            [(s.data, s.peer) for s in out], list(tu.seen), len(tu.timers), extra)


def step(txn: Any, tu: TU, op: tuple[Any, ...], out: list[Send]) -> Any:
    """One operation; its answer, or the type of the exception it raised."""
    name = op[0]
    try:
        if name == "start":
            return txn.start(op[1], out) if hasattr(txn, "start") else None
        if name == "response":
            return txn.receive_response(RESPONSES[op[1]], op[2], out) \
                if hasattr(txn, "receive_response") else None
        if name == "send":
            return txn.send_response(b"SIP/2.0 %d X\r\n\r\n" % op[1], op[1], op[2], out) \
                if hasattr(txn, "send_response") else None
        if name == "request":
            return txn.receive_request(op[1], out) if hasattr(txn, "receive_request") else None
        if name == "fire":
            return txn.fire(op[1], op[2], out, RESPONSES[200] if op[3] else None)
        if name == "advance":
            # Every armed timer due by then, each at its own deadline.
            fired = []
            while (when := tu.timers.next_deadline()) is not None and when <= op[1]:
                for t, timer in tu.timers.pop_due(when):
                    t.timer_fired(timer, when, out)
                    fired.append((timer, when))
            return fired
        if name == "timer":
            return txn.timer_fired(op[1], op[2], out)
        if name == "terminate":
            return txn.terminate()
        if name == "context":
            txn.context = op[1]
            return None
    except Exception as exc:  # noqa: BLE001 - compared, not hidden
        return type(exc)
    raise AssertionError(op)


TIMER_NAMES = [e.value for e in Event if e.name.startswith("TIMER_")]
now_st = st.floats(min_value=0.0, max_value=400.0, allow_nan=False)
ops = st.one_of(
    st.tuples(st.just("start"), now_st),
    st.tuples(st.just("response"), st.sampled_from(STATUSES),
              now_st),
    st.tuples(st.just("send"), st.sampled_from([100, 180, 200, 404, 500]), now_st),
    st.tuples(st.just("request"), now_st),
    st.tuples(st.just("fire"), st.sampled_from(list(Event)), now_st, st.booleans()),
    st.tuples(st.just("advance"), now_st),
    st.tuples(st.just("timer"), st.sampled_from([*TIMER_NAMES, "timer_x"]), now_st),
    st.tuples(st.just("terminate")),
    st.tuples(st.just("context"), st.sampled_from([None, "ctx"])),
)


@needs_compiled
@settings(max_examples=1000, deadline=None)
@given(kind=st.sampled_from(KINDS), peer=st.sampled_from(PEERS), cfg=st.sampled_from(CONFIGS),
       reentrant=st.integers(0, 14), script=st.lists(ops, max_size=25))
def test_compiled_transactions_match_the_reference(kind: str, peer: Peer, cfg: TimerConfig,
                                                   reentrant: int,
                                                   script: list[tuple[Any, ...]]) -> None:
    assert COMPILED is not None
    pair = []
    for m in (REFERENCE, COMPILED):
        tu = TU(reentrant)
        pair.append((make(m, kind, peer, cfg, tu), tu, []))
    (ref, ref_tu, ref_out), (built, built_tu, built_out) = pair
    assert snapshot(ref, ref_tu, ref_out) == snapshot(built, built_tu, built_out)
    # A client transaction starts as its creator starts it; every script ends by letting all
    # timers run out, so what was armed on the way plays out.
    first = [("start", 0.0)] if kind.startswith("client") else []
    for op in [*first, *script, ("advance", 1000.0)]:
        answers = [step(txn, tu, op, out) for txn, tu, out in pair]
        assert answers[0] == answers[1], op
        assert snapshot(ref, ref_tu, ref_out) == snapshot(built, built_tu, built_out), op


@needs_compiled
def test_a_whole_answered_call_on_both() -> None:
    """INVITE answered 180 then 200; the 2xx retransmitted; Timer M ends it."""
    assert COMPILED is not None
    seen = []
    for m in (REFERENCE, COMPILED):
        tu, out = TU(0), []
        txn = make(m, "client_invite", PEERS[0], CONFIGS[0], tu)
        txn.start(1.0, out)
        for status, now in ((180, 1.1), (200, 1.2), (200, 1.5)):
            txn.receive_response(RESPONSES[status], now, out)
        step(txn, tu, ("advance", 100.0), out)
        seen.append((snapshot(txn, tu, out), txn.state))
    assert seen[0] == seen[1]
    assert seen[1][1] is State.TERMINATED


@needs_compiled
def test_the_compiled_classes_refuse_misuse() -> None:
    assert COMPILED is not None
    tu = TU(0)
    with pytest.raises(TypeError):
        COMPILED.client(key="k", peer=PEERS[0], tu=tu, config=CONFIGS[0], request=b"")
    with pytest.raises(TypeError):  # every field is required
        COMPILED.client_non_invite(key="k", peer=PEERS[0], tu=tu, config=CONFIGS[0])
    with pytest.raises(TypeError):  # and a keyword
        COMPILED.server_non_invite("k", PEERS[0], tu, CONFIGS[0], REQUEST)
    txn = make(COMPILED, "server_invite", PEERS[0], CONFIGS[0], tu)
    assert isinstance(txn, COMPILED.server) and not isinstance(txn, COMPILED.client)
    with pytest.raises(KeyError):
        txn.timer_fired("timer_x", 1.0, [])
    with pytest.raises(AttributeError):
        txn.state = State.TERMINATED  # only its events move it


def test_the_compiled_transactions_are_built_where_the_compiled_core_is() -> None:
    # One compiler builds both (setup.py); the engine takes them while that core is in use.
    from stirshaken_proxy.sip import message
    from stirshaken_proxy.transaction.machine import machines

    if message.compiled_available():
        assert COMPILED is not None
    assert machines() is (COMPILED if message.compiled_core() is not None else REFERENCE)
