"""Verification through the pure engine: parking for a fetch, resuming, marking, rejecting."""

from __future__ import annotations

import dataclasses

import pytest

from stirshaken_proxy.engine.actions import Fetch
from stirshaken_proxy.sip.message import parse_message
from stirshaken_proxy.sip.transport import Peer, Send, Side, Transport
from stirshaken_proxy.stats import Stats
from stirshaken_proxy.stir.credentials import CachePolicy, TrustStore
from stirshaken_proxy.stir.verification import (
    FetchKind,
    FetchRequest,
    FetchResponse,
    OnFailure,
    VerificationService,
    VerifyPolicy,
)
from stirshaken_proxy.stir.verify import Checks
from stirshaken_proxy.stir.x5u import UrlPolicy
from tests.engine.test_proxy import engine, with_services
from tests.stir_pki import NOW, Pki, identity, make_pki, token

T = int(NOW.timestamp())
URL = "https://cert.example.org/good.pem"
CARRIER = Peer(Side.CARRIER, Transport.UDP, "127.0.0.1", 6000)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def setup(policy: VerifyPolicy | None = None, pki: Pki | None = None):  # type: ignore[no-untyped-def]
    e = engine()
    service = VerificationService(checks=Checks(url_policy=UrlPolicy()),
                                  trust=TrustStore([pki.root] if pki else []),
                                  cache_policy=CachePolicy(), stats=e.stats)
    with_services(e, verification=service, verify_policy=policy or VerifyPolicy())
    return e


GOOD = FetchRequest(url=URL, kind=FetchKind.X5U)


def chain(pki: Pki) -> FetchResponse:
    return FetchResponse(body=pki.leaves["good"].chain_pem, headers={"Cache-Control": "max-age=600"})


def invite(value: str | None, n: int = 1, pai: bool = True) -> bytes:
    lines = ["INVITE sip:+12025550199@127.0.0.1:5062 SIP/2.0",
             f"Via: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bKin{n}",
             "From: <sip:+12025550100@127.0.0.1>;tag=f", "To: <sip:+12025550199@127.0.0.1>",
             f"Call-ID: in-{n}", "CSeq: 1 INVITE", "Max-Forwards: 70"]
    if pai:
        lines.append("P-Asserted-Identity: <sip:+12025550100@127.0.0.1;user=phone>")
    if value:
        lines.append(f"Identity: {value}")
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


def test_parks_fetches_once_and_resumes(pki: Pki) -> None:
    e = setup(pki=pki)
    value = identity(token(pki.leaves["good"], URL, iat=T), URL)
    out1 = e.receive(invite(value, 1), CARRIER, T)
    out2 = e.receive(invite(value, 2), CARRIER, T)
    assert [type(a) for a in out1] == [Send, Fetch] and out1[1] == Fetch(GOOD)
    assert [type(a) for a in out2] == [Send]  # same URL: no second fetch
    assert e.parked == 2
    # The bytes the shell fetched go to the verification service; the engine hears the
    # credential is in.
    ready = e.services.verification.fetched(GOOD, chain(pki), T + 0.2).ready
    assert ready == (URL,)
    out = e.credentials_ready(ready, T + 0.2)
    assert e.parked == 0 and len(out) == 2
    for send in out:
        assert isinstance(send, Send) and send.peer.side == "dialer"
        msg = parse_message(send.data)
        assert msg.get("p-asserted-identity") == \
            "<sip:+12025550100@127.0.0.1;user=phone;verstat=TN-Validation-Passed>"
        assert msg.get("p-attestation-indicator") == "A"


def test_cancel_while_parked_ends_with_487(pki: Pki) -> None:
    e = setup(pki=pki)
    value = identity(token(pki.leaves["good"], URL, iat=T), URL)
    e.receive(invite(value), CARRIER, T)
    cancel = invite(None).replace(b"INVITE sip", b"CANCEL sip").replace(b"1 INVITE", b"1 CANCEL")
    out = e.receive(cancel, CARRIER, T + 0.1)
    assert sorted(int(a.data[8:11]) for a in out if isinstance(a, Send)) == [200, 487]
    ready = e.services.verification.fetched(GOOD, chain(pki), T + 0.2).ready
    assert e.credentials_ready(ready, T + 0.2) == []  # nothing is forwarded after the 487


@pytest.mark.parametrize(("pai", "header", "expected"), [
    (True, "p-asserted-identity",
     "<sip:+12025550100@127.0.0.1;user=phone;verstat=No-TN-Validation>"),
    (False, "from", "<sip:+12025550100@127.0.0.1;verstat=No-TN-Validation>;tag=f"),
])
def test_no_identity_is_marked(pai: bool, header: str, expected: str) -> None:
    e = setup()
    out = e.receive(invite(None, pai=pai), CARRIER, T)
    fwd = parse_message(next(a for a in out if isinstance(a, Send) and a.peer.side == "dialer")
                        .data)
    assert fwd.get(header) == expected


def test_missing_identity_rejected_by_policy() -> None:
    e = setup(VerifyPolicy(on_missing=OnFailure.REJECT))
    out = e.receive(invite(None), CARRIER, T)
    final = [a for a in out if isinstance(a, Send) and not a.data.startswith(b"SIP/2.0 100")]
    assert final[0].data.startswith(b"SIP/2.0 428 Use Identity Header\r\n")
    assert b'Reason: STIR ;cause=428 ;text="Use Identity Header"\r\n' in final[0].data


def test_parked_requests_are_bounded(pki: Pki) -> None:
    e = setup()
    e.config = dataclasses.replace(e.config, max_parked=1)
    value = identity(token(pki.leaves["good"], URL, iat=T), URL)
    e.receive(invite(value, 1), CARRIER, T)
    out = e.receive(invite(value, 2), CARRIER, T)
    assert any(isinstance(a, Send) and a.data.startswith(b"SIP/2.0 503 ") for a in out)


def test_counted(pki: Pki) -> None:
    e = setup()
    stats: Stats = e.stats
    e.receive(invite("garbage"), CARRIER, T)
    assert stats[("verifications", "TN-Validation-Failed", "438")] == 1
