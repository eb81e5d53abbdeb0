"""Caller-ID substitution (local presence) through the pure engine: the carrier leg carries
the chosen number, signed A; the dialer's dialog keeps its identity in both directions."""

from __future__ import annotations

from pathlib import Path

import pytest

from stirshaken_proxy.engine.proxy import ProxyEngine
from stirshaken_proxy.engine.sources import SourceFilter
from stirshaken_proxy.io.keys import init_dev_pki, load_private_key
from stirshaken_proxy.policy.accounts import Account, AccountDirectory, LocalPresence
from stirshaken_proxy.policy.health import HealthLimits, NumberHealth
from stirshaken_proxy.policy.inventory import Inventory, NumberBlock
from stirshaken_proxy.sip.message import SipMessage, parse_message
from stirshaken_proxy.sip.transport import Peer, Send, Side, Transport
from stirshaken_proxy.stir.passport import Signer, SigningIdentity, decode_passport
from stirshaken_proxy.stir.signing import Authenticator, AuthPolicy
from tests.engine.test_proxy import answer, engine, with_services

NOW = 1_790_000_000.0
DIALER = Peer(Side.DIALER, Transport.UDP, "127.0.0.1", 5070)
CARRIER = Peer(Side.CARRIER, Transport.UDP, "127.0.0.1", 5080)


def bundle(tmp: Path, e: ProxyEngine, mode: LocalPresence = LocalPresence.ALWAYS,
           limit: int = 50, health: NumberHealth | None = None) -> Authenticator:
    """A signing bundle for ``e`` (as a start or a reload builds one)."""
    if not (tmp / "key.pem").exists():
        init_dev_pki(tmp, spc="123A")
    account = Account(name="acme", origid="6a1b3f8e-7c2d-4e5f-9a0b-1c2d3e4f5a6b",
                      sources=("127.0.0.1/32",), local_presence=mode)
    health = health or NumberHealth(HealthLimits(max_calls_per_hour=limit))
    auth = Authenticator(
        signers={"default": Signer(SigningIdentity(name="default",
                                                   key=load_private_key(tmp / "key.pem"),
                                                   x5u="https://c.example/s.pem"))},
        inventory=Inventory([
            NumberBlock(first="12025550100", last="12025550101", account="acme"),
            NumberBlock(first="13105550100", last="13105550100", account="acme")]),
        policy=AuthPolicy(), health=health, stats=e.stats)
    with_services(e, accounts=AccountDirectory([account]), authenticator=auth, health=health,
                  dialer_sources=SourceFilter(("127.0.0.1/32",)))
    return auth


def setup(tmp: Path, mode: LocalPresence = LocalPresence.ALWAYS,  # type: ignore[no-untyped-def]
          limit: int = 50):
    e = engine()
    return e, bundle(tmp, e, mode, limit)


def invite(n: int = 1, extra: str = "") -> bytes:
    return (f"INVITE sip:+12025559999@127.0.0.1:5060 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKcid{n}\r\n"
            f"From: \"Sales\" <sip:+13105550100@127.0.0.1>;tag=dialer{n}\r\n"
            f"To: <sip:+12025559999@127.0.0.1>\r\nCall-ID: cid-{n}\r\nCSeq: 1 INVITE\r\n"
            f"P-Asserted-Identity: <sip:+13105550100@127.0.0.1;user=phone>\r\n{extra}"
            "Contact: <sip:dialer@127.0.0.1:5070>\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n").encode()


# The callee hangs up call cid-1, addressing the chosen number it was presented.
CALLEE_BYE = (b"BYE sip:dialer@127.0.0.1:5070 SIP/2.0\r\n"
              b"Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKcbye\r\n"
              b"From: <sip:+12025559999@127.0.0.1>;tag=uas\r\n"
              b"To: \"Sales\" <sip:+12025550100@127.0.0.1>;tag=dialer1\r\nCall-ID: cid-1\r\n"
              b"CSeq: 1 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")


def ok_for(request: SipMessage) -> bytes:
    """200 OK to an in-dialog request: its Via, From, To (already tagged), Call-ID, CSeq."""
    lines = [b"SIP/2.0 200 OK\r\n"]
    for name in ("via", "from", "to", "call-id", "cseq"):
        lines += request.raw_lines(name)
    return b"".join(lines) + b"Content-Length: 0\r\n\r\n"


def to_side(out: list[object], side: str) -> SipMessage:
    return parse_message(next(a for a in out if isinstance(a, Send) and a.peer.side == side
                              and not a.data.startswith(b"SIP/2.0 100")).data)


def test_the_carrier_sees_the_chosen_number_and_the_dialer_its_own(tmp_path: Path) -> None:
    e, auth = setup(tmp_path)
    out = e.receive(invite(), DIALER, NOW)
    fwd = to_side(out, "carrier")
    # A number of the account with the callee's area code (202), signed A.
    assert fwd.get("from") == '"Sales" <sip:+12025550100@127.0.0.1>;tag=dialer1'
    assert fwd.get("p-asserted-identity") == "<sip:+12025550100@127.0.0.1;user=phone>"
    claims = decode_passport(fwd.get_all("identity")[0].split(";")[0]).claims
    assert claims["orig"] == {"tn": "12025550100"} and claims["attest"] == "A"
    # Responses go back to the dialer with its own identity.
    fwd_raw = fwd.serialize()
    for status in (180, 200):
        back = to_side(e.receive(answer(fwd_raw, status), CARRIER, NOW + 1), "dialer")
        assert back.get("from") == '"Sales" <sip:+13105550100@127.0.0.1>;tag=dialer1'
    # In-dialog requests from the dialer: ACK, re-INVITE carry the chosen number onward.
    for method, cseq in (("ACK", 1), ("INVITE", 2)):
        req = (f"{method} sip:uas@127.0.0.1:5080 SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKin{method}\r\n"
               "From: \"Sales\" <sip:+13105550100@127.0.0.1>;tag=dialer1\r\n"
               "To: <sip:+12025559999@127.0.0.1>;tag=uas\r\nCall-ID: cid-1\r\n"
               f"CSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
        onward = to_side(e.receive(req.encode(), DIALER, NOW + 2), "carrier")
        assert onward.get("from") == '"Sales" <sip:+12025550100@127.0.0.1>;tag=dialer1'
        assert not onward.has("identity")  # in-dialog requests are not signed
    # The callee hangs up: the BYE reaches the dialer addressed to its own identity ...
    to_dialer = to_side(e.receive(CALLEE_BYE, CARRIER, NOW + 60), "dialer")
    assert to_dialer.get("to") == '"Sales" <sip:+13105550100@127.0.0.1>;tag=dialer1'
    # ... and its 200 goes back to the carrier with the chosen number.
    ok = to_side(e.receive(ok_for(to_dialer), DIALER, NOW + 60.1), "carrier")
    assert ok.get("to") == '"Sales" <sip:+12025550100@127.0.0.1>;tag=dialer1'
    # Health counted the presented number, not the dialer's.
    report = auth.health.report("12025550100", NOW + 61)
    assert report["attempts"] == 1 and report["answered"] == 1


def test_calls_spread_and_the_pool_runs_out(tmp_path: Path) -> None:
    e, _ = setup(tmp_path, limit=1)
    chosen = []
    for n in range(4):
        out = e.receive(invite(n), DIALER, NOW + n)
        finals = [a for a in out if isinstance(a, Send) and a.data.startswith(b"SIP/2.0 503")]
        if finals:
            assert b"Caller ID Pool Exhausted" in finals[0].data
            chosen.append(None)
            continue
        chosen.append(to_side(out, "carrier").get("p-asserted-identity"))
    # Two local numbers, then the other area's, then nothing (each may carry 1 an hour).
    assert chosen[0] != chosen[1] and "+1202555010" in chosen[0] and "+1202555010" in chosen[1]
    assert "+13105550100" in chosen[2] and chosen[3] is None


@pytest.mark.parametrize(("header", "substituted"), [
    ("X-Local-Presence: yes\r\n", True), ("", False), ("x-local-presence: no\r\n", False)])
def test_header_opt_in(tmp_path: Path, header: str, substituted: bool) -> None:
    e, _ = setup(tmp_path, mode=LocalPresence.HEADER)
    fwd = to_side(e.receive(invite(extra=header), DIALER, NOW), "carrier")
    assert ("+12025550100" in (fwd.get("from") or "")) is substituted
    assert not fwd.has("x-local-presence")


def test_a_reloaded_bundle_carries_the_calls_in_progress(tmp_path: Path) -> None:
    """SIGHUP builds a new bundle: the calls the engine has in progress keep their caller-ID
    mapping and are still counted when they are answered and end."""
    e, old = setup(tmp_path)
    fwd = to_side(e.receive(invite(), DIALER, NOW), "carrier")
    new = bundle(tmp_path, e, health=old.health)
    new.carry_over(old)
    assert e.services.authenticator is new
    back = to_side(e.receive(answer(fwd.serialize(), 200), CARRIER, NOW + 1), "dialer")
    assert back.get("from") == '"Sales" <sip:+13105550100@127.0.0.1>;tag=dialer1'
    to_dialer = to_side(e.receive(CALLEE_BYE, CARRIER, NOW + 60), "dialer")
    assert to_dialer.get("to") == '"Sales" <sip:+13105550100@127.0.0.1>;tag=dialer1'
    assert new.health is not None
    report = new.health.report("12025550100", NOW + 61)
    assert (report["attempts"], report["answered"], report["ended"]) == (1, 1, 1)
    assert new.latency is old.latency
