"""The engine with digest authentication: who is challenged, what is forwarded (pure)."""

from __future__ import annotations

import re

from stirshaken_proxy.engine.proxy import ProxyEngine
from stirshaken_proxy.engine.sources import SourceFilter
from stirshaken_proxy.policy.accounts import Account, AccountDirectory
from stirshaken_proxy.policy.digest import Credential, DigestAuth, DigestConfig, ha1, response
from stirshaken_proxy.sip.message import parse_message
from stirshaken_proxy.sip.transport import Peer, Send, Side, Transport
from tests.engine.test_proxy import engine, with_services

ROAMING = Peer(Side.DIALER, Transport.UDP, "127.0.0.9", 5070)  # no account by address
URI = "sip:12025550199@127.0.0.1:5060"


def digest_engine() -> tuple[ProxyEngine, DigestAuth]:
    e = engine()
    d = DigestAuth(DigestConfig(realm="proxy.test"), secret=b"s" * 32, credentials={
        "dialer1": Credential.from_password(username="dialer1", account="demo",
                                            realm="proxy.test", password="pass-word-1")})
    demo = Account(name="demo", origid="5f3f3f7a-4c1b-4d1e-9a37-0d2c9b6a1e01", sources=())
    with_services(e, digest=d, accounts=AccountDirectory([demo]),
                  dialer_sources=SourceFilter(("127.0.0.1/32",)))
    return e, d


def request(method: str, *, cseq: int, branch: str, call: str = "c1", to_tag: str = "",
            extra: str = "") -> bytes:
    to = "<sip:12025550199@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    return (f"{method} {URI} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.9:5070;branch={branch}\r\n"
            f"From: <sip:12025550100@127.0.0.1>;tag=u\r\nTo: {to}\r\nCall-ID: {call}\r\n"
            f"CSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
            ).encode()


def sends(actions: list[object] | list[Send]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def test_challenge_answer_forward_and_dialog() -> None:
    e, d = digest_engine()
    out = sends(e.receive(request("INVITE", cseq=1, branch="z9hG4bK1"), ROAMING, 0.0))
    assert [s.data.split(b"\r\n")[0] for s in out] == [
        b"SIP/2.0 100 Trying", b"SIP/2.0 407 Proxy Authentication Required"]
    challenge = out[1].data.decode()
    assert challenge.count("Proxy-Authenticate: Digest") == 2
    to_tag = re.search(r"^To: .*;tag=(\w+)", challenge, re.M).group(1)  # type: ignore[union-attr]
    nonce = re.search(r'nonce="([^"]+)", algorithm=SHA-256', challenge).group(1)  # type: ignore[union-attr]
    # The ACK of the 407 is absorbed by its transaction (no 403 for the unlisted address).
    ack = request("ACK", cseq=1, branch="z9hG4bK1", to_tag=to_tag)
    assert sends(e.receive(ack, ROAMING, 0.1)) == []
    # The answer, beside another proxy's credentials (kept: they are not ours).
    digest = response("SHA-256", ha1("SHA-256", "dialer1", "proxy.test", "pass-word-1"),
                      nonce=nonce, nc="00000001", cnonce="x1", method="INVITE", uri=URI)
    ours = (f'Proxy-Authorization: Digest username="dialer1", realm="proxy.test", '
            f'nonce="{nonce}", uri="{URI}", response="{digest}", algorithm=SHA-256, '
            'cnonce="x1", qop=auth, nc=00000001\r\n')
    theirs = 'Proxy-Authorization: Digest username="u", realm="upstream.test", nonce="n"\r\n'
    out = sends(e.receive(request("INVITE", cseq=2, branch="z9hG4bK2", extra=theirs + ours),
                          ROAMING, 0.2))
    forwarded = [s for s in out if s.peer.side is Side.CARRIER]
    assert len(forwarded) == 1
    msg = parse_message(forwarded[0].data)
    assert [v for v in msg.raw_lines("proxy-authorization")] == [theirs.encode()]
    assert d.call_admitted("c1", 0.3)
    # In-dialog requests of that call come through; another call's do not.
    bye = request("BYE", cseq=3, branch="z9hG4bK3", to_tag="uas")
    assert [s.peer.side for s in sends(e.receive(bye, ROAMING, 5.0))] == [Side.CARRIER]
    stray = request("BYE", cseq=3, branch="z9hG4bK4", call="c2", to_tag="uas")
    out = sends(e.receive(stray, ROAMING, 5.0))
    assert [s.data.split(b"\r\n")[0] for s in out] == [b"SIP/2.0 403 Forbidden"]


def test_listed_addresses_are_not_challenged() -> None:
    e, _ = digest_engine()
    trunk = Peer(Side.DIALER, Transport.UDP, "127.0.0.1", 5070)
    out = sends(e.receive(request("INVITE", cseq=1, branch="z9hG4bK9"), trunk, 0.0))
    assert [s.peer.side for s in out] == [Side.DIALER, Side.CARRIER]  # 100, then forwarded
