"""The pure engine: datagrams in, datagrams out, an explicit clock, no sockets."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from stirshaken_proxy.engine.proxy import EngineConfig, ProxyEngine, SideConfig
from stirshaken_proxy.engine.services import Services
from stirshaken_proxy.engine.sources import SourceFilter
from stirshaken_proxy.sip.message import SipMessage, parse_message
from stirshaken_proxy.sip.transport import Peer, Send, Side, Transport

UAC = Peer(Side.DIALER, Transport.UDP, "127.0.0.1", 5070)
UAS_ADDR = ("127.0.0.1", 5080)
CARRIER_UAC = Peer(Side.CARRIER, Transport.UDP, "127.0.0.1", 6000)


def engine(**kw: object) -> ProxyEngine:
    dialer = SideConfig(name=Side.DIALER, host="127.0.0.1", port=5060, advertise_host="127.0.0.1",
                        advertise_port=5060, next_hop_host="127.0.0.1", next_hop_port=5082,
                        allowed_sources=("127.0.0.1/32",))
    carrier = SideConfig(name=Side.CARRIER, host="127.0.0.1", port=5062, advertise_host="127.0.0.1",
                         advertise_port=5062, next_hop_host="127.0.0.1", next_hop_port=5080,
                         allow_any_source=True)
    config = EngineConfig(dialer=dialer, carrier=carrier, **kw)  # type: ignore[arg-type]
    services = Services(dialer_sources=SourceFilter(dialer.allowed_sources),
                        carrier_sources=SourceFilter((), allow_any=True))
    return ProxyEngine(config, services, rng=random.Random(7).randbytes)


def with_services(e: ProxyEngine, **changes: object) -> None:
    """Replace parts of the engine's bundle, as a reload does."""
    e.replace(services=dataclasses.replace(e.services, **changes))  # type: ignore[arg-type]


def invite(branch: str = "z9hG4bKuac1", *, extra: bytes = b"", mf: bytes = b"70",
           uri: bytes = b"sip:12025550199@127.0.0.1:5060", call_id: bytes = b"call-1") -> bytes:
    return (b"INVITE " + uri + b" SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=" + branch.encode() + b"\r\n"
            b"From: <sip:12025550100@127.0.0.1>;tag=uac\r\n"
            b"To: <sip:12025550199@127.0.0.1>\r\n"
            b"Call-ID: " + call_id + b"\r\nCSeq: 1 INVITE\r\n"
            b"Max-Forwards: " + mf + b"\r\n" + extra +
            b"X-Untouched:   keep   me \r\n"
            b"Content-Length: 0\r\n\r\n")


def answer(req: bytes, status: int, *, to_tag: bytes = b"uas", rr: bool = True) -> bytes:
    """The UAS's response to a request it received (copies Via, RR, From, To, Call-ID, CSeq)."""
    msg = parse_message(req)
    lines = [b"SIP/2.0 %d Reason\r\n" % status, *msg.raw_lines("via")]
    if rr:
        lines += msg.raw_lines("record-route")
    lines += msg.raw_lines("from")
    lines.append(b"To: " + (msg.get("to") or "").encode() + b";tag=" + to_tag + b"\r\n")
    lines += [*msg.raw_lines("call-id"), *msg.raw_lines("cseq")]
    lines.append(b"Contact: <sip:uas@127.0.0.1:5080>\r\nContent-Length: 0\r\n\r\n")
    return b"".join(lines)


def carrier_peer() -> Peer:
    return Peer(Side.CARRIER, Transport.UDP, *UAS_ADDR)


def only(out: list[Send]) -> Send:
    assert len(out) == 1, out
    return out[0]


def parsed(send: Send) -> SipMessage:
    return parse_message(send.data)


def test_invite_is_forwarded_with_via_rr_and_max_forwards() -> None:
    e = engine()
    out = e.receive(invite(), UAC, 0.0)
    trying, fwd = out
    assert trying.peer == UAC and trying.data.startswith(b"SIP/2.0 100 Trying\r\n")
    assert fwd.peer == Peer(Side.CARRIER, Transport.UDP, "127.0.0.1", 5080)
    msg = parsed(fwd)
    vias = msg.vias()
    assert vias[0].host == "127.0.0.1" and vias[0].port == 5062 and vias[0].rfc3261_branch
    assert vias[1].branch == "z9hG4bKuac1"
    assert msg.get("max-forwards") == "69"
    assert msg.get_all("record-route") == ["<sip:127.0.0.1:5062;lr>", "<sip:127.0.0.1:5060;lr>"]
    assert b"X-Untouched:   keep   me \r\n" in fwd.data


def test_full_call_flow_and_retransmissions() -> None:
    e = engine()
    fwd = e.receive(invite(), UAC, 0.0)[1]
    # A retransmitted INVITE is absorbed: the 100 again, nothing forwarded.
    again = e.receive(invite(), UAC, 0.5)
    assert [s.peer for s in again] == [UAC] and again[0].data.startswith(b"SIP/2.0 100")
    # UDP retransmission by the proxy itself (Timer A) when the UAS says nothing.
    assert e.next_deadline() == pytest.approx(0.5)
    assert [s.data for s in e.on_timers(0.5)] == [fwd.data]
    ringing = only(e.receive(answer(fwd.data, 180), carrier_peer(), 0.6))
    assert ringing.peer == UAC
    msg = parsed(ringing)
    assert [v.branch for v in msg.vias()] == ["z9hG4bKuac1"]
    assert e.pending_requests == 1
    ok = only(e.receive(answer(fwd.data, 200), carrier_peer(), 1.0))
    assert ok.peer == UAC and ok.data.startswith(b"SIP/2.0 200")
    # Answered: nothing left for a graceful stop to wait for, though the transactions
    # linger (Accepted, RFC 6026) to absorb retransmissions.
    assert e.pending_requests == 0 and e.transactions > 0
    # A 2xx retransmission from the UAS is relayed too (RFC 6026 Accepted).
    assert only(e.receive(answer(fwd.data, 200), carrier_peer(), 1.5)).peer == UAC
    # ACK for the 2xx, following the route set, goes end to end with our routes removed.
    ack = (b"ACK sip:uas@127.0.0.1:5080 SIP/2.0\r\n"
           b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKack1\r\n"
           b"Route: <sip:127.0.0.1:5060;lr>, <sip:127.0.0.1:5062;lr>\r\n"
           b"From: <sip:12025550100@127.0.0.1>;tag=uac\r\n"
           b"To: <sip:12025550199@127.0.0.1>;tag=uas\r\nCall-ID: call-1\r\nCSeq: 1 ACK\r\n"
           b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
    fwd_ack = only(e.receive(ack, UAC, 2.0))
    assert fwd_ack.peer == carrier_peer()
    assert not parsed(fwd_ack).has("route")
    bye = ack.replace(b"ACK sip", b"BYE sip").replace(b"1 ACK", b"2 BYE").replace(
        b"bKack1", b"bKbye1")
    fwd_bye = only(e.receive(bye, UAC, 3.0))
    bye_ok = only(e.receive(answer(fwd_bye.data, 200, rr=False), carrier_peer(), 3.1))
    assert bye_ok.peer == UAC and b"CSeq: 2 BYE" in bye_ok.data
    # Everything ends by itself: Timer L/M (32 s), J (32 s).
    e.on_timers(100.0)
    assert e.transactions == 0


def test_busy_ack_is_hop_by_hop() -> None:
    e = engine()
    fwd = e.receive(invite(), UAC, 0.0)[1]
    out = e.receive(answer(fwd.data, 486), carrier_peer(), 0.1)
    ack, busy = out
    assert ack.peer == carrier_peer() and ack.data.startswith(b"ACK sip:12025550199@")
    ack_msg = parsed(ack)
    assert ack_msg.top_via().branch == parse_message(fwd.data).top_via().branch
    assert ack_msg.get("to", ).endswith("tag=uas")  # type: ignore[union-attr]
    assert busy.peer == UAC and busy.data.startswith(b"SIP/2.0 486")
    uac_ack = (b"ACK sip:12025550199@127.0.0.1:5060 SIP/2.0\r\n"
               b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKuac1\r\n"
               b"From: <sip:12025550100@127.0.0.1>;tag=uac\r\n"
               b"To: <sip:12025550199@127.0.0.1>;tag=uas\r\nCall-ID: call-1\r\n"
               b"CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")
    assert e.receive(uac_ack, UAC, 0.2) == []  # absorbed by the server transaction
    # The UAS retransmits its 486: the proxy ACKs again and does not relay it twice.
    assert [s.peer for s in e.receive(answer(fwd.data, 486), carrier_peer(), 0.3)] == [
        carrier_peer()]


CANCEL = (b"CANCEL sip:12025550199@127.0.0.1:5060 SIP/2.0\r\n"
          b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKuac1\r\n"
          b"From: <sip:12025550100@127.0.0.1>;tag=uac\r\n"
          b"To: <sip:12025550199@127.0.0.1>\r\nCall-ID: call-1\r\nCSeq: 1 CANCEL\r\n"
          b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n")


def test_cancel_after_provisional() -> None:
    e = engine()
    fwd = e.receive(invite(), UAC, 0.0)[1]
    e.receive(answer(fwd.data, 180), carrier_peer(), 0.1)
    ok, cancel = e.receive(CANCEL, UAC, 0.2)
    assert ok.peer == UAC and ok.data.startswith(b"SIP/2.0 200") and b"CSeq: 1 CANCEL" in ok.data
    assert cancel.peer == carrier_peer()
    cmsg = parsed(cancel)
    fmsg = parse_message(fwd.data)
    assert cmsg.method == "CANCEL" and cmsg.uri == fmsg.uri
    assert cmsg.top_via().branch == fmsg.top_via().branch and cmsg.cseq == 1
    # 200 to our CANCEL stops here; the 487 goes up.
    assert e.receive(answer(cancel.data, 200, rr=False), carrier_peer(), 0.3) == []
    ack, terminated = e.receive(answer(fwd.data, 487), carrier_peer(), 0.4)
    assert ack.peer == carrier_peer() and terminated.peer == UAC
    assert terminated.data.startswith(b"SIP/2.0 487")


def test_cancel_before_provisional_waits_for_it() -> None:
    e = engine()
    fwd = e.receive(invite(), UAC, 0.0)[1]
    (ok,) = e.receive(CANCEL, UAC, 0.1)
    assert ok.data.startswith(b"SIP/2.0 200")
    out = e.receive(answer(fwd.data, 100), carrier_peer(), 0.2)
    assert [parsed(s).method for s in out] == ["CANCEL"]


def test_cancel_without_invite_is_481() -> None:
    e = engine()
    (r,) = e.receive(CANCEL, UAC, 0.0)
    assert r.data.startswith(b"SIP/2.0 481 Call/Transaction Does Not Exist")


def test_downstream_timeout_gives_408() -> None:
    e = engine()
    e.receive(invite(), UAC, 0.0)
    out: list[Send] = []
    t = 0.0
    while (d := e.next_deadline()) is not None and d <= 40.0:
        t = d
        out += e.on_timers(t)
    finals = [s for s in out if s.peer == UAC]
    assert len(finals) >= 1 and finals[0].data.startswith(b"SIP/2.0 408 Request Timeout")


@pytest.mark.parametrize(("data", "source", "status"), [
    (invite(mf=b"0"), UAC, 483),
    (invite(extra=b"Proxy-Require: foo, bar\r\n"), UAC, 420),
    (invite(uri=b"mailto:someone@example.com"), UAC, 416),
    (invite(), Peer(Side.DIALER, Transport.UDP, "127.0.0.2", 5070), 403),
])
def test_rejections(data: bytes, source: Peer, status: int) -> None:
    e = engine()
    out = e.receive(data, source, 0.0)
    finals = [s for s in out if not s.data.startswith(b"SIP/2.0 100")]
    assert len(finals) == 1 and finals[0].peer == source
    assert finals[0].data.startswith(b"SIP/2.0 %d " % status)
    if status == 420:
        assert b"Unsupported: foo, bar\r\n" in finals[0].data
    assert not any(s.peer.side == "carrier" for s in out)


def test_a_reload_of_the_source_lists_applies_to_addresses_already_seen() -> None:
    """The admission verdicts kept per address go with the lists they came from."""
    e = engine()
    stranger = Peer(Side.DIALER, Transport.UDP, "127.0.0.2", 5070)
    (r,) = e.receive(invite("z9hG4bKs1", call_id=b"s1"), stranger, 0.0)
    assert r.data.startswith(b"SIP/2.0 403 ")
    with_services(e, dialer_sources=SourceFilter(("127.0.0.2/32",)))
    out = e.receive(invite("z9hG4bKs2", call_id=b"s2"), stranger, 1.0)
    assert [s.peer for s in out] == [stranger, carrier_peer()]  # 100 Trying, forwarded
    # And back: the address the first list admitted is refused by the next one.
    with_services(e, dialer_sources=SourceFilter(("127.0.0.3/32",)))
    (r,) = e.receive(invite("z9hG4bKs3", call_id=b"s3"), stranger, 2.0)
    assert r.data.startswith(b"SIP/2.0 403 ")
    assert e.stats[("sip_refused_sources", Side.DIALER)] == 2


def test_options_to_the_proxy_itself() -> None:
    e = engine()
    ping = (b"OPTIONS sip:127.0.0.1:5062 SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bKping\r\n"
            b"From: <sip:sbc@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1:5062>\r\nCall-ID: p\r\n"
            b"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
    (r,) = e.receive(ping, CARRIER_UAC, 0.0)
    assert r.data.startswith(b"SIP/2.0 200 OK\r\n") and b"Allow: INVITE" in r.data


def test_inbound_goes_to_the_pbx() -> None:
    e = engine()
    _, fwd = e.receive(invite(), CARRIER_UAC, 0.0)
    assert fwd.peer == Peer(Side.DIALER, Transport.UDP, "127.0.0.1", 5082)
    assert parsed(fwd).top_via().port == 5060


def test_overload_answers_503_with_retry_after() -> None:
    e = engine(max_transactions=2)
    for i in range(2):
        e.receive(invite(f"z9hG4bKo{i}", call_id=b"c%d" % i), UAC, 0.0)
    (r,) = e.receive(invite("z9hG4bKo9", call_id=b"c9"), UAC, 0.0)
    assert r.data.startswith(b"SIP/2.0 503 Service Unavailable") and b"Retry-After: 5" in r.data
    assert e.stats[("sip_overload_responses",)] == 1


DATA = Path(__file__).resolve().parent.parent / "data" / "rfc4475"


@pytest.mark.parametrize("name", sorted(p.stem for p in DATA.glob("*.dat")))
def test_rfc4475_through_the_engine(name: str) -> None:
    """Every torture message gets an answer or a forward, or is dropped; none escapes."""
    e = engine()
    with_services(e, dialer_sources=SourceFilter((), allow_any=True))
    out = e.receive((DATA / f"{name}.dat").read_bytes(), UAC, 0.0)
    for send in out:
        # Nothing is ever sent anywhere but the sender or the configured next hop.
        assert send.peer == UAC or send.peer == carrier_peer(), (name, send.peer)
    # Our answers copy the sender's (possibly broken) headers: read only the status.
    answered = {int(s.data[8:11]) for s in out if s.peer == UAC}
    forwarded = [s for s in out if s.peer == carrier_peer()]
    expected = {"badvers": {505}, "zeromf": {483}, "unkscm": {416}, "novelsc": {416},
                "bext01": {420}, "scalar02": {400}, "insuf": {400}, "badinv01": {400}}
    if name in expected:
        assert answered - {100} == expected[name]
    if name in ("wsinv", "esc01", "intmeth", "invut", "longreq", "sdp01", "inv2543"):
        assert len(forwarded) == 1, name
    if name in ("scalarlg", "bigcode", "bcast", "unreason", "noreason"):
        assert out == []  # responses that match nothing of ours are dropped
