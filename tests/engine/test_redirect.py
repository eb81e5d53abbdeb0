"""The SIP redirect front end through the pure engine: INVITEs in, 302s (or the RFC codes) out,
with an explicit clock; the same STI core as the in-path proxy."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from stirshaken_proxy.engine.actions import Fetch
from stirshaken_proxy.engine.redirect import RedirectConfig, RedirectEngine
from stirshaken_proxy.engine.services import Services
from stirshaken_proxy.engine.sources import SourceFilter
from stirshaken_proxy.io.keys import init_dev_pki, load_private_key
from stirshaken_proxy.policy.accounts import Account, AccountDirectory
from stirshaken_proxy.policy.health import HealthEvent, HealthLimits, NumberHealth
from stirshaken_proxy.policy.inventory import Inventory, NumberBlock
from stirshaken_proxy.sip.message import SipMessage, parse_message
from stirshaken_proxy.sip.transport import Peer, Send, Side, Transport
from stirshaken_proxy.stats import Stats
from stirshaken_proxy.stir.credentials import CachePolicy, TrustStore
from stirshaken_proxy.stir.passport import Signer, SigningIdentity, decode_passport
from stirshaken_proxy.stir.signing import Authenticator, AuthPolicy
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
from tests.stir_pki import NOW, Pki, identity, make_pki, token

T = int(NOW.timestamp())
SBC = Peer(Side.REDIRECT, Transport.UDP, "127.0.0.1", 5070)  # the SBC's dialer-facing address
SBC_CARRIER = Peer(Side.REDIRECT, Transport.UDP, "127.0.0.2", 5070)  # its carrier-facing one
STRANGER = Peer(Side.REDIRECT, Transport.UDP, "127.0.0.9", 5070)
URL = "https://cert.example.org/good.pem"
ACME = Account(name="acme", origid="6a1b3f8e-7c2d-4e5f-9a0b-1c2d3e4f5a6b",
               sources=("127.0.0.1/32",))


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    init_dev_pki(d, spc="123A")
    return d


def engine(key_dir: Path, pki: Pki, *, policy: VerifyPolicy | None = None,
           route: str = "", health: NumberHealth | None = None) -> RedirectEngine:
    signer = Signer(SigningIdentity(name="default", key=load_private_key(key_dir / "key.pem"),
                                    x5u="https://certs.example/shaken.pem"))
    stats = Stats()  # one set of counters, as in the service
    auth = Authenticator(signers={"default": signer}, policy=AuthPolicy(), health=health,
                         stats=stats,
                         inventory=Inventory([NumberBlock(first="12025550100",
                                                          last="12025550199", account="acme")]))
    verification = VerificationService(checks=Checks(url_policy=UrlPolicy()), stats=stats,
                                       trust=TrustStore([pki.root]), cache_policy=CachePolicy())
    services = Services(dialer_sources=SourceFilter(()), carrier_sources=SourceFilter(()),
                        accounts=AccountDirectory([ACME]), authenticator=auth,
                        verification=verification, verify_policy=policy or VerifyPolicy(),
                        health=health)
    config = RedirectConfig(host="127.0.0.1", port=5064, route=route,
                            verify_sources=("127.0.0.2/32",), answer_cache_seconds=32.0)
    return RedirectEngine(config, services, rng=random.Random(3).randbytes, stats=stats)


def invite(branch: str = "z9hG4bKr1", *, caller: str = "+12025550142", extra: str = "",
           callee: str = "+12025550199", method: str = "INVITE") -> bytes:
    return (f"{method} sip:{callee}@127.0.0.1:5080;user=phone SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\r\n"
            f"From: <sip:{caller}@127.0.0.1>;tag=f1\r\nTo: <sip:{callee}@127.0.0.1>\r\n"
            f"Call-ID: c-{branch}\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n{extra}"
            "Content-Length: 0\r\n\r\n").encode()


def answers(out: list[object]) -> list[SipMessage]:
    return [parse_message(a.data) for a in out if isinstance(a, Send)]


def test_signing_answers_302_with_identity_and_the_same_to_retransmissions(
        key_dir: Path, pki: Pki) -> None:
    e = engine(key_dir, pki)
    out = e.receive(invite(), SBC, T)
    (reply,) = answers(out)
    assert (reply.status, reply.reason) == (302, "Moved Temporarily")
    assert reply.get("contact") == "<sip:+12025550199@127.0.0.1:5080;user=phone>"
    token_text, _, params = reply.get_all("identity")[0].partition(";")
    assert params == "info=<https://certs.example/shaken.pem>;alg=ES256;ppt=shaken"
    claims = decode_passport(token_text).claims
    assert (claims["attest"], claims["orig"], claims["dest"]) == (
        "A", {"tn": "12025550142"}, {"tn": ["12025550199"]})
    assert reply.get("date") is not None  # iat carries it; the SBC copies it with Identity
    # A retransmission gets the very same answer (no second signature); the ACK is absorbed.
    again = e.receive(invite(), SBC, T + 0.5)
    assert [a.data for a in again if isinstance(a, Send)] == [
        a.data for a in out if isinstance(a, Send)]
    ack = invite(method="ACK").replace(b"CSeq: 1 ACK", b"CSeq: 1 ACK")
    assert e.receive(ack, SBC, T + 0.6) == []
    assert e.stats[("calls_signed", "acme", "A", "owned_number")] == 1
    assert e.stats[("sip_retransmissions_absorbed",)] == 1
    # Past the cache's time it is a new request.
    assert answers(e.receive(invite(), SBC, T + 40))[0].status == 302
    assert e.stats[("calls_signed", "acme", "A", "owned_number")] == 2


@pytest.mark.parametrize(("data", "source", "status"), [
    (invite(), STRANGER, 403),  # not an account's source nor marked for verification
    (invite(method="OPTIONS"), SBC, 200),  # the SBC's keepalive probe
    (invite(method="BYE"), SBC, 405),
    (invite(extra="Date: Sat, 13 Nov 2010 23:29:00 PST\r\n"), SBC, 400),
    (invite(extra="Date: Thu, 01 Jan 2026 00:00:00 GMT\r\n"), SBC, 403),  # stale
    (invite().replace(b"Max-Forwards: 70", b"Max-Forwards: 0"), SBC, 483),
    (invite().replace(b"INVITE sip:", b"INVITE mailto:"), SBC, 416),
    (invite(method="CANCEL"), SBC, 481),  # nothing to cancel
    (b"INVITE sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKq\r\n"
     b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n", SBC, 400),
])
def test_answers(key_dir: Path, pki: Pki, data: bytes, source: Peer, status: int) -> None:
    (reply,) = [a for a in engine(key_dir, pki).receive(data, source, T) if isinstance(a, Send)]
    assert int(reply.data[8:11]) == status, reply.data  # (a 400 copies a broken request)


def test_unsigned_when_not_owned_is_b_and_route_sets_the_contact(key_dir: Path,
                                                                 pki: Pki) -> None:
    e = engine(key_dir, pki, route="10.0.0.1:5090".replace("10.0.0.1", "127.0.0.1"))
    (reply,) = answers(e.receive(invite(caller="+13105550000"), SBC, T))
    assert reply.status == 302
    assert reply.get("contact") == "<sip:+12025550199@127.0.0.1:5090;user=phone>"
    assert decode_passport(reply.get_all("identity")[0].split(";")[0]).claims["attest"] == "B"


def test_health_attempts_leave_as_events(key_dir: Path, pki: Pki) -> None:
    health = NumberHealth(HealthLimits())
    out = engine(key_dir, pki, health=health).receive(invite(), SBC, T)
    assert [a.tn for a in out if isinstance(a, HealthEvent)] == ["12025550142"]
    assert health.report("12025550142", T)["attempts"] == 1


def signed(pki: Pki, **kw: object) -> str:
    return identity(token(pki.leaves["good"], URL, iat=T, **kw), URL)  # type: ignore[arg-type]


def inbound(pki: Pki, value: str | None, branch: str = "z9hG4bKv1") -> bytes:
    extra = "P-Asserted-Identity: <sip:+12025550100@127.0.0.1;user=phone>\r\n"
    if value is not None:
        extra += f"Identity: {value}\r\n"
    return invite(branch, caller="+12025550100", extra=extra)


def test_verification_waits_for_the_fetch_then_answers_302_with_verstat(
        key_dir: Path, pki: Pki) -> None:
    e = engine(key_dir, pki)
    out = e.receive(inbound(pki, signed(pki)), SBC_CARRIER, T)
    fetch = FetchRequest(url=URL, kind=FetchKind.X5U)
    assert [type(a) for a in out] == [Fetch, Send] and out[0] == Fetch(fetch)
    assert answers(out)[0].status == 100
    # The INVITE retransmitted while waiting: 100 again, no second fetch.
    assert [answers(e.receive(inbound(pki, signed(pki)), SBC_CARRIER, T + 0.5))[0].status] == [100]
    verification = e.services.verification
    assert verification is not None
    ready = verification.fetched(fetch, FetchResponse(body=pki.leaves["good"].chain_pem,
                                                      headers={}), T + 0.6).ready
    (reply,) = answers(e.credentials_ready(ready, T + 0.6))
    assert reply.status == 302
    assert reply.get("p-asserted-identity") == \
        "<sip:+12025550100@127.0.0.1;user=phone;verstat=TN-Validation-Passed>"
    assert reply.get("p-attestation-indicator") == "A"
    assert not reply.has("identity")


@pytest.mark.parametrize(("on_failure", "value", "status", "verstat"), [
    (OnFailure.MARK, "garbage", 302, "TN-Validation-Failed"),
    (OnFailure.REJECT, "garbage", 438, None),
    (OnFailure.MARK, None, 302, "No-TN-Validation"),
])
def test_verification_outcomes(key_dir: Path, pki: Pki, on_failure: OnFailure,
                               value: str | None, status: int, verstat: str | None) -> None:
    e = engine(key_dir, pki, policy=VerifyPolicy(on_failure=on_failure))
    (reply,) = answers(e.receive(inbound(pki, value), SBC_CARRIER, T))
    assert reply.status == status
    if verstat is not None:
        assert f"verstat={verstat}" in (reply.get("p-asserted-identity") or "")
    if status == 438 or verstat == "TN-Validation-Failed":
        assert reply.get("reason") == 'STIR ;cause=438 ;text="Invalid Identity Header"'


def test_cancel_while_waiting_ends_with_487(key_dir: Path, pki: Pki) -> None:
    e = engine(key_dir, pki)
    e.receive(inbound(pki, signed(pki)), SBC_CARRIER, T)
    cancel = invite("z9hG4bKv1", method="CANCEL")
    assert sorted(m.status for m in answers(e.receive(cancel, SBC_CARRIER, T + 0.1))) == [
        200, 487]
    assert e.parked == 0
    assert e.credentials_ready((URL,), T + 0.2) == []


def test_draining_answers_503(key_dir: Path, pki: Pki) -> None:
    e = engine(key_dir, pki)
    e.draining = True
    (reply,) = answers(e.receive(invite(), SBC, T))
    assert reply.status == 503 and reply.get("retry-after") == "5"
