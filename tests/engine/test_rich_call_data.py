"""What a dialer-side INVITE says for Rich Call Data and diversion (pure): the call reason
(UTF-8, checked, never forwarded) and the number a diverted call was first placed to."""

from __future__ import annotations

import pytest

from stirshaken_proxy.engine.sip_sti import BadReason, call_facts
from stirshaken_proxy.sip.message import parse_message
from stirshaken_proxy.stir.signing import AuthPolicy, CallFacts


def invite(extra: bytes) -> bytes:
    return (b"INVITE sip:+13035550111@127.0.0.1 SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n"
            b"From: <sip:+12025550142@127.0.0.1>;tag=a\r\nTo: <sip:+13035550111@127.0.0.1>\r\n"
            b"Call-ID: c\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n" + extra +
            b"Content-Length: 0\r\n\r\n")


@pytest.mark.parametrize(("extra", "reason", "diverted"), [
    (b"X-Call-Reason: Caf\xc3\xa9 reservation\r\n", "Café reservation", None),
    (b"Diversion: <sip:+12025550150@pbx>;reason=unconditional;counter=1\r\n"
     b"Diversion: <sip:+12025550199@pbx>;reason=user-busy;counter=1\r\n", None, "12025550150"),
    (b"History-Info: <sip:+12025550150@pbx>;index=1\r\n"
     b"History-Info: <sip:+13035550111@pbx;cause=302>;index=1.1\r\n", None, "12025550150"),
    (b"Diversion: <sip:+13035550111@pbx>\r\n", None, None),  # to itself: not a diversion
])
def test_reason_and_diversion(extra: bytes, reason: str | None, diverted: str | None) -> None:
    msg = parse_message(invite(extra))
    facts = call_facts(msg, None, AuthPolicy())
    assert isinstance(facts, CallFacts)
    assert (facts.reason, facts.diverted_from, facts.dest) == (reason, diverted, "13035550111")
    assert b"X-Call-Reason" not in msg.serialize()


@pytest.mark.parametrize("value", [b"Pay\xe2\x80\xaenow", b"\xff\xfe", b"x" * 65])
def test_bad_call_reasons(value: bytes) -> None:
    facts = call_facts(parse_message(invite(b"X-Call-Reason: " + value + b"\r\n")), None,
                       AuthPolicy())
    assert isinstance(facts, BadReason)
