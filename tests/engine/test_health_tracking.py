"""Number health fed by the proxy's own signalling (pure engine, explicit clock)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stirshaken_proxy.policy.health import HealthLimits, NumberHealth
from stirshaken_proxy.sip.message import parse_message
from stirshaken_proxy.sip.transport import Peer, Send
from tests.engine.test_outbound import FROM_ACME, NOW, invite, keys, setup  # noqa: F401
from tests.engine.test_proxy import answer

CARRIER = Peer("carrier", "udp", "127.0.0.1", 5080)


def _bye(n: str) -> bytes:
    return (f"BYE sip:uas@127.0.0.1:5080 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKbye{n}\r\n"
            f"From: <sip:+12025550142@127.0.0.1>;tag=f1\r\n"
            f"To: <sip:+12025550199@127.0.0.1>;tag=uas\r\nCall-ID: c-z9hG4bK{n}\r\n"
            "CSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


@pytest.mark.parametrize(("status", "hangup_after", "answered", "duration"), [
    (200, 90.0, 1, 90.0),
    (486, None, 0, 0.0),
])
def test_attempt_answer_and_duration(keys: dict[str, Path], status: int,  # noqa: F811
                                     hangup_after: float | None, answered: int,
                                     duration: float) -> None:
    e, auth = setup(keys)
    auth.health = NumberHealth(HealthLimits())
    e.call_observers.append(auth)
    out = e.receive(invite(branch="z9hG4bKh1"), FROM_ACME, NOW)
    fwd = next(a for a in out if isinstance(a, Send) and a.peer.side == "carrier")
    e.receive(answer(fwd.data, 180), CARRIER, NOW + 1)
    e.receive(answer(fwd.data, status), CARRIER, NOW + 5)
    e.receive(answer(fwd.data, status), CARRIER, NOW + 5.5)  # a retransmission counts once
    if hangup_after is not None:
        e.receive(_bye("h1"), FROM_ACME, NOW + 5 + hangup_after)
    report = auth.health.report("12025550142", NOW + 200)
    assert report["attempts"] == 1 and report["answered"] == answered
    assert report["average_duration"] == pytest.approx(duration)
    assert report["finals"] == {status: 1}
    assert parse_message(fwd.data).call_id == "c-z9hG4bKh1"
