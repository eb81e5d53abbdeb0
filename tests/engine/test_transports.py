"""How the engine names itself over TLS and IPv6: Via, Record-Route, next hops (RFC 3261
§18.2.1 and §20.42, RFC 5923 alias, RFC 3261 §25.1 for IPv6 references)."""

from __future__ import annotations

import random

import pytest

from stirshaken_proxy.engine.proxy import EngineConfig, ProxyEngine, SideConfig
from stirshaken_proxy.engine.services import Services
from stirshaken_proxy.engine.sources import SourceFilter
from stirshaken_proxy.sip.message import parse_message
from stirshaken_proxy.sip.transport import Peer, Send, Side, Transport
from tests.engine.test_proxy import answer


def engine(host: str, *, dialer_tls: int = 0, carrier_transport: Transport = Transport.UDP,
           allowed: tuple[str, ...] = ("127.0.0.1/32", "::1/128")) -> ProxyEngine:
    dialer = SideConfig(name=Side.DIALER, host=host, port=5060, advertise_host=host,
                        advertise_port=5060, next_hop_host=host, next_hop_port=5082,
                        allowed_sources=allowed, tls_port=dialer_tls,
                        advertise_tls_port=dialer_tls)
    carrier = SideConfig(name=Side.CARRIER, host=host, port=5062, advertise_host=host,
                         advertise_port=5062, next_hop_host=host, next_hop_port=5080,
                         next_hop_transport=carrier_transport, allow_any_source=True)
    services = Services(dialer_sources=SourceFilter(allowed),
                        carrier_sources=SourceFilter((), allow_any=True))
    return ProxyEngine(EngineConfig(dialer=dialer, carrier=carrier), services,
                       rng=random.Random(7).randbytes)


def invite(via: str) -> bytes:
    return (f"INVITE sip:12025550199@example.test SIP/2.0\r\nVia: {via};branch=z9hG4bKa1\r\n"
            "From: <sip:12025550100@example.test>;tag=uac\r\nTo: <sip:12025550199@example.test>\r\n"
            "Call-ID: t-1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            ).encode()


@pytest.mark.parametrize(("host", "source", "via_in", "carrier_transport", "via_out", "routes"), [
    # TLS in from a dialer, TLS out to the carrier: alias (RFC 5923), transport=tls routes
    ("127.0.0.1", Peer(Side.DIALER, Transport.TLS, "127.0.0.1", 40000, ("dialer.test",)),
     "SIP/2.0/TLS 127.0.0.1:40000", Transport.TLS,
     "SIP/2.0/TLS 127.0.0.1:5062;alias;branch=",
     ["<sip:127.0.0.1:5062;transport=tls;lr>", "<sip:127.0.0.1:5061;transport=tls;lr>"]),
    # UDP in, TCP out: each route names the transport its side's peer uses
    ("127.0.0.1", Peer(Side.DIALER, Transport.UDP, "127.0.0.1", 5070),
     "SIP/2.0/UDP 127.0.0.1:5070", Transport.TCP, "SIP/2.0/TCP 127.0.0.1:5062;branch=",
     ["<sip:127.0.0.1:5062;transport=tcp;lr>", "<sip:127.0.0.1:5060;lr>"]),
    # IPv6: references in brackets
    ("::1", Peer(Side.DIALER, Transport.UDP, "::1", 5070), "SIP/2.0/UDP [::1]:5070",
     Transport.UDP, "SIP/2.0/UDP [::1]:5062;branch=",
     ["<sip:[::1]:5062;lr>", "<sip:[::1]:5060;lr>"]),
])
def test_forwarded_invite_names_us_for_each_transport(
        host: str, source: Peer, via_in: str, carrier_transport: Transport, via_out: str,
        routes: list[str]) -> None:
    e = engine(host, dialer_tls=5061, carrier_transport=carrier_transport)
    out = [a for a in e.receive(invite(via_in), source, 0.0) if isinstance(a, Send)]
    trying, forwarded = out
    assert trying.peer == source and trying.data.startswith(b"SIP/2.0 100")
    assert forwarded.peer == Peer(Side.CARRIER, carrier_transport, host, 5080)
    msg = parse_message(forwarded.data)
    assert msg.raw_lines("via")[0].decode().startswith("Via: " + via_out)
    assert [v.strip() for line in msg.raw_lines("record-route")
            for v in line.decode()[len("Record-Route: "):].split(",")] == routes
    # The carrier's answer comes back through the same transaction, to the dialer's peer.
    ok = answer(forwarded.data, 200)
    back = [a for a in e.receive(ok, forwarded.peer, 0.1) if isinstance(a, Send)]
    assert len(back) == 1 and back[0].peer == source
    assert parse_message(back[0].data).raw_lines("via")[0].decode().startswith("Via: " + via_in)


def test_in_dialog_request_with_our_ipv6_route_is_routed_on() -> None:
    e = engine("::1")
    bye = (b"BYE sip:uas@[::1]:5080 SIP/2.0\r\nVia: SIP/2.0/UDP [::1]:5070;branch=z9hG4bKb1\r\n"
           b"Route: <sip:[::1]:5060;lr>, <sip:[::1]:5062;lr>\r\n"
           b"From: <sip:a@x>;tag=uac\r\nTo: <sip:b@x>;tag=uas\r\nCall-ID: t-2\r\n"
           b"CSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
    out = [a for a in e.receive(bye, Peer(Side.DIALER, Transport.UDP, "::1", 5070), 0.0)
           if isinstance(a, Send)]
    assert len(out) == 1
    assert b"\r\nRoute:" not in out[0].data  # both of our own routes popped (§16.4)
    assert out[0].peer == Peer(Side.CARRIER, Transport.UDP, "::1", 5080)


def test_failed_connection_answers_its_requests_with_503_at_once() -> None:
    """RFC 3261 §17.1.4 and §8.1.3.1: a transport error ends the client transaction, and the
    proxy answers as for a 503 instead of waiting for Timer B."""
    e = engine("127.0.0.1", carrier_transport=Transport.TLS)
    source = Peer(Side.DIALER, Transport.UDP, "127.0.0.1", 5070)
    e.receive(invite("SIP/2.0/UDP 127.0.0.1:5070"), source, 0.0)
    other = Peer(Side.CARRIER, Transport.TLS, "127.0.0.1", 5999)
    assert e.transport_failed(other, 0.1) == []  # another peer's failure changes nothing
    out = [a for a in e.transport_failed(Peer(Side.CARRIER, Transport.TLS, "127.0.0.1", 5080),
                                         0.2) if isinstance(a, Send)]
    assert [(s.peer, s.data.split(b"\r\n")[0]) for s in out] == [
        (source, b"SIP/2.0 503 Service Unavailable")]
    later = e.on_timers(40.0)  # when Timer B would have fired: no 408 (503 retransmissions)
    assert {a.data.split(b"\r\n")[0] for a in later if isinstance(a, Send)} <= {
        b"SIP/2.0 503 Service Unavailable"}
