"""Number health fed by the proxy's own signalling (pure engine, explicit clock)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stirshaken_proxy.policy.health import HealthEvent, HealthEventKind, HealthLimits, NumberHealth
from stirshaken_proxy.sip.message import parse_message
from stirshaken_proxy.sip.transport import Peer, Send, Side, Transport
from tests.engine.test_outbound import FROM_ACME, NOW, invite, keys, setup  # noqa: F401
from tests.engine.test_proxy import answer

CARRIER = Peer(Side.CARRIER, Transport.UDP, "127.0.0.1", 5080)


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
    health = NumberHealth(HealthLimits())
    e, _ = setup(keys, health=health)
    out = e.receive(invite(branch="z9hG4bKh1"), FROM_ACME, NOW)
    fwd = next(a for a in out if isinstance(a, Send) and a.peer.side == "carrier")
    events = [a for a in out if isinstance(a, HealthEvent)]
    e.receive(answer(fwd.data, 180), CARRIER, NOW + 1)
    events += [a for a in e.receive(answer(fwd.data, status), CARRIER, NOW + 5)
               if isinstance(a, HealthEvent)]
    # A retransmission counts once.
    assert not [a for a in e.receive(answer(fwd.data, status), CARRIER, NOW + 5.5)
                if isinstance(a, HealthEvent)]
    if hangup_after is not None:
        events += [a for a in e.receive(_bye("h1"), FROM_ACME, NOW + 5 + hangup_after)
                   if isinstance(a, HealthEvent)]
    report = health.report("12025550142", NOW + 200)
    # Every change leaves the engine as an action, for the other workers' replicas: a replica
    # fed only these events holds the same figures.
    assert [ev.kind for ev in events] == [HealthEventKind.ATTEMPT, HealthEventKind.FINAL] + (
        [HealthEventKind.ENDED] if hangup_after is not None else [])
    replica = NumberHealth(HealthLimits())
    for ev in events:
        replica.apply(ev)
    assert replica.report("12025550142", NOW + 200) == report
    assert report["attempts"] == 1 and report["answered"] == answered
    assert report["average_duration"] == pytest.approx(duration)
    assert report["finals"] == {status: 1}
    assert parse_message(fwd.data).call_id == "c-z9hG4bKh1"
