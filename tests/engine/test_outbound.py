"""The authentication service through the pure engine: who signs what, at which level."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from stirshaken_proxy.engine.sip_sti import format_date, parse_date
from stirshaken_proxy.engine.sources import SourceFilter
from stirshaken_proxy.io.keys import init_dev_pki, load_private_key
from stirshaken_proxy.policy.accounts import Account, AccountDirectory
from stirshaken_proxy.policy.health import NumberHealth
from stirshaken_proxy.policy.inventory import Inventory, NumberBlock
from stirshaken_proxy.sip.message import parse_message
from stirshaken_proxy.sip.transport import Peer, Side, Transport
from stirshaken_proxy.stir.passport import Signer, SigningIdentity, decode_passport
from stirshaken_proxy.stir.signing import Authenticator, AuthPolicy, UnsignedCalls
from tests.engine.test_proxy import engine, with_services

NOW = 1_790_000_000.0
ACME = Account(name="acme", origid="6a1b3f8e-7c2d-4e5f-9a0b-1c2d3e4f5a6b",
               sources=("127.0.0.1/32",))
RESELLER = Account(name="reseller", origid="0f0e0d0c-0b0a-4909-8807-060504030201",
                   sources=("127.0.0.3/32",), signing="reseller")
GATEWAY = Account(name="gw", origid="11111111-2222-4333-8444-555555555555",
                  sources=("127.0.0.4/32",), gateway=True)
FROM_ACME = Peer(Side.DIALER, Transport.UDP, "127.0.0.1", 5070)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("keys")
    init_dev_pki(base / "default", spc="123A")
    init_dev_pki(base / "reseller", spc="456B")
    return {"default": base / "default", "reseller": base / "reseller"}


def public_key(d: Path) -> ec.EllipticCurvePublicKey:
    key = x509.load_pem_x509_certificate((d / "cert.pem").read_bytes()).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def setup(keys: dict[str, Path], policy: AuthPolicy | None = None,  # type: ignore[no-untyped-def]
          health: NumberHealth | None = None):
    e = engine()
    signers = {name: Signer(SigningIdentity(name=name, key=load_private_key(d / "key.pem"),
                                            x5u=f"https://certs.example/{name}.pem"))
               for name, d in keys.items()}
    inventory = Inventory([
        NumberBlock(first="12025550100", last="12025550199", account="acme"),
        NumberBlock(first="13105550000", last="13105550000", account="reseller"),
    ])
    auth = Authenticator(signers=signers, inventory=inventory, policy=policy or AuthPolicy(),
                         health=health, stats=e.stats)
    directory = AccountDirectory([ACME, RESELLER, GATEWAY])
    with_services(e, accounts=directory, authenticator=auth, health=health,
                  dialer_sources=SourceFilter(("127.0.0.0/8",)))
    return e, directory


def invite(caller: str = "+12025550142", *, pai: str | None = None, extra: str = "",
           callee: str = "+12025550199", branch: str = "z9hG4bKa1") -> bytes:
    lines = [f"INVITE sip:{callee}@127.0.0.1:5060;user=phone SIP/2.0",
             f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}",
             f"From: <sip:{caller}@127.0.0.1>;tag=f1",
             f"To: <sip:{callee}@127.0.0.1>",
             "Call-ID: c-" + branch, "CSeq: 1 INVITE", "Max-Forwards: 70"]
    if pai:
        lines.append(f"P-Asserted-Identity: {pai}")
    if extra:
        lines.append(extra)
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


def forwarded(e, data: bytes, source: Peer = FROM_ACME):  # type: ignore[no-untyped-def]
    out = e.receive(data, source, NOW)
    fwd = [s for s in out if s.peer.side == "carrier"]
    return (parse_message(fwd[0].data) if fwd else None), out


CASES = [
    # (source, caller, PAI, expected attest, orig, signing identity)
    (FROM_ACME, "+12025550142", None, "A", "12025550142", "default"),
    (FROM_ACME, "2025550142", None, "A", "12025550142", "default"),  # national From
    (FROM_ACME, "anonymous", "<sip:+1-202-555-0142@127.0.0.1;user=phone>", "A", "12025550142",
     "default"),  # PAI wins over From
    (FROM_ACME, "+12025550142", "<tel:+13105550000>", "B", "13105550000", "default"),
    (FROM_ACME, "+13105550000", None, "B", "13105550000", "default"),  # reseller's number
    (FROM_ACME, "+19998887777", None, "B", "19998887777", "default"),  # unknown number
    (Peer(Side.DIALER, Transport.UDP, "127.0.0.3", 5070), "+13105550000", None, "A", "13105550000",
     "reseller"),  # a reseller signs with its own certificate (its own SPC)
    (Peer(Side.DIALER, Transport.UDP, "127.0.0.4", 5070), "+12025550142", None, "C", "12025550142",
     "default"),
]


@pytest.mark.parametrize(("source", "caller", "pai", "attest", "orig", "signing"), CASES)
def test_signing(keys: dict[str, Path], source: Peer, caller: str, pai: str | None,
                 attest: str, orig: str, signing: str) -> None:
    e, directory = setup(keys)
    msg, _ = forwarded(e, invite(caller, pai=pai), source)
    assert msg is not None
    identity = msg.get_all("identity")
    assert len(identity) == 1
    token, _, params = identity[0].partition(";")
    assert params == f"info=<https://certs.example/{signing}.pem>;alg=ES256;ppt=shaken"
    passport = decode_passport(token)
    assert passport.verify(public_key(keys[signing]))
    account = directory.by_source(source.host)
    assert passport.claims == {"attest": attest, "dest": {"tn": ["12025550199"]},
                               "iat": int(NOW), "orig": {"tn": orig},
                               "origid": account.origid}
    assert msg.get("date") == format_date(int(NOW))


def test_identity_from_the_dialer_is_replaced(keys: dict[str, Path]) -> None:
    e, _ = setup(keys)
    data = invite(extra="Identity: forged.token.here;info=<https://evil/x>;alg=ES256;ppt=shaken"
                        "\r\ny: another.forged.one")
    msg, _ = forwarded(e, data)
    assert msg is not None
    values = msg.get_all("identity")
    assert len(values) == 1 and "forged" not in values[0]
    assert e.stats[("identity_removed",)] == 2


@pytest.mark.parametrize("spelling", [
    "Identity: forged.a.b;info=<https://x/y>",
    "IDENTITY: forged.a.b",
    "identity   : forged.a.b",
    "y: forged.a.b",
    "Y : forged.a.b",
    "Identity:\r\n forged.a.b;info=<https://x/y>\r\n\t;alg=ES256",  # folded
])
def test_smuggled_identity_is_removed_however_spelled(keys: dict[str, Path],
                                                     spelling: str) -> None:
    e, _ = setup(keys)
    msg, _ = forwarded(e, invite(extra=spelling))
    assert msg is not None
    values = msg.get_all("identity")
    assert len(values) == 1 and "forged" not in values[0]
    assert b"forged" not in msg.serialize()


def test_legacy_identity_info_from_the_dialer_is_removed(keys: dict[str, Path]) -> None:
    """Regression: an RFC 4474 Identity-Info header from the dialer side reached the carrier."""
    e, _ = setup(keys)
    msg, _ = forwarded(e, invite(extra="Identity-Info: <https://evil.example/x.pem>;alg=rsa-sha1"))
    assert msg is not None and not msg.has("identity-info") and len(msg.get_all("identity")) == 1
    assert b"evil.example" not in msg.serialize()


def test_pai_from_outside_the_trust_domain_is_removed(keys: dict[str, Path]) -> None:
    e, _ = setup(keys)
    # 127.0.0.9 is admitted by the dialer side's allowed_sources but belongs to no account.
    stranger = Peer(Side.DIALER, Transport.UDP, "127.0.0.9", 5070)
    msg, _ = forwarded(e, invite(pai="<sip:+12025550142@127.0.0.9>"), stranger)
    assert msg is not None and not msg.has("p-asserted-identity") and not msg.has("identity")
    assert e.stats[("pai_removed",)] == 1
    # From an account's trunk it is kept (and used for the attestation).
    msg, _ = forwarded(e, invite(pai="<sip:+12025550142@127.0.0.1>", branch="z9hG4bKa2"))
    assert msg is not None and msg.has("p-asserted-identity") and msg.has("identity")


def test_date_in_request_is_used_or_refused(keys: dict[str, Path]) -> None:
    e, _ = setup(keys)
    msg, _ = forwarded(e, invite(extra="Date: " + format_date(int(NOW) - 30)))
    assert msg is not None and decode_passport(
        msg.get_all("identity")[0].split(";")[0]).claims["iat"] == int(NOW) - 30
    assert len(msg.get_all("date")) == 1
    _, out = forwarded(e, invite(extra="Date: " + format_date(int(NOW) - 61), branch="z9hG4bKs"))
    assert out[-1].data.startswith(b"SIP/2.0 403 Stale Date\r\n")
    _, out = forwarded(e, invite(extra="Date: Sat, 13 Nov 2010 23:29:00 PST", branch="z9hG4bKp"))
    assert out[-1].data.startswith(b"SIP/2.0 400 ")


@pytest.mark.parametrize(("policy", "expected"), [(UnsignedCalls.FORWARD, None),
                                                  (UnsignedCalls.REJECT, 433)])
def test_anonymous_caller(keys: dict[str, Path], policy: UnsignedCalls,
                          expected: int | None) -> None:
    e, _ = setup(keys, AuthPolicy(unsigned_calls=policy))
    msg, out = forwarded(e, invite("anonymous"))
    if expected is None:
        assert msg is not None and not msg.has("identity")
        assert e.stats[("calls_unsigned", "no_calling_number")] == 1
    else:
        assert msg is None and out[-1].data.startswith(b"SIP/2.0 433 Anonymity Disallowed")


def test_in_dialog_and_inbound_requests_are_not_signed(keys: dict[str, Path]) -> None:
    e, _ = setup(keys)
    reinvite = invite().replace(b"To: <sip:+12025550199@127.0.0.1>",
                                b"To: <sip:+12025550199@127.0.0.1>;tag=t9")
    msg, _ = forwarded(e, reinvite)
    assert msg is not None and not msg.has("identity")
    out = e.receive(invite(branch="z9hG4bKin"), Peer(Side.CARRIER, Transport.UDP, "127.0.0.1", 6000), NOW)
    fwd = parse_message(out[-1].data)
    assert out[-1].peer.side == "dialer" and not fwd.has("identity")


def test_dates() -> None:
    assert format_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert parse_date("Thu, 01 Jan 1970 00:00:00 GMT") == 0
    assert parse_date(format_date(1_790_000_123)) == 1_790_000_123
    assert format_date(1_790_000_123) == "Mon, 21 Sep 2026 14:15:23 GMT"
    assert parse_date("Thu, 01 Jan 1970 00:00:00 UTC") is None  # RFC 4475 §3.1.2.12
    assert parse_date("garbage") is None


def test_a_request_too_large_once_signed_gets_513_at_once(keys: dict[str, Path]) -> None:
    """Regression: an INVITE that fitted in a datagram on arrival but not with our Via,
    Record-Route and Identity got 100 Trying, then every send failed (EMSGSIZE) until the
    dialer gave up after 32 s. Now the dialer gets 513 at once and nothing is sent on."""
    e, _ = setup(keys)
    small = invite()
    body = b"v=0\r\n" + b"a=x-pad:" + b"p" * (65_200 - len(small)) + b"\r\n"
    data = small.replace(b"Content-Length: 0\r\n\r\n",
                         b"Content-Length: %d\r\n\r\n" % len(body)) + body
    assert 64_000 < len(data) <= 65_507  # fits as it arrives
    out = e.receive(data, FROM_ACME, NOW)
    assert [s.peer.side for s in out] == ["dialer", "dialer"]
    assert out[0].data.startswith(b"SIP/2.0 100 ") and out[1].data.startswith(b"SIP/2.0 513 ")
    assert b"z9hG4bKa1" in out[1].data and e.stats[("sip_rejected", "513")] == 1
    # A retransmission of it gets the 513 again (the transaction absorbs it).
    assert e.receive(data, FROM_ACME, NOW + 0.5)[-1].data.startswith(b"SIP/2.0 513 ")
