"""In-process benchmark of the hot path: µs per message, best of several rounds.

    .venv/bin/python -m bench.inprocess

Measures parse alone, parse + proxy edits + serialise of a typical INVITE, and the whole engine
handling an INVITE (parse, checks, transaction, edits, serialise). Numbers vary with the machine;
compare ratios taken in one run.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

from stirshaken_proxy.engine.proxy import EngineConfig, ProxyEngine, SideConfig
from stirshaken_proxy.sip.message import parse_message
from stirshaken_proxy.sip.transport import Peer

INVITE = (
    b"INVITE sip:+12025550199@127.0.0.1:5060;user=phone SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-3131-1-0;rport\r\n"
    b"From: \"Sales\" <sip:+12025550100@127.0.0.1:5070;user=phone>;tag=3131SIPpTag001\r\n"
    b"To: <sip:+12025550199@127.0.0.1:5060;user=phone>\r\n"
    b"Call-ID: 1-3131@127.0.0.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:sipp@127.0.0.1:5070;transport=udp>\r\n"
    b"P-Asserted-Identity: <sip:+12025550100@127.0.0.1;user=phone>\r\n"
    b"Max-Forwards: 70\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n"
    b"Supported: timer\r\n"
    b"User-Agent: dialer/1.0\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 129\r\n\r\n"
    b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def timeit(fn: Callable[[int], None], n: int, rounds: int = 5) -> float:
    """Best µs per call over ``rounds`` rounds of ``n`` calls."""
    best = float("inf")
    for _ in range(rounds):
        gc.collect()
        t0 = time.perf_counter_ns()
        fn(n)
        best = min(best, (time.perf_counter_ns() - t0) / n / 1000)
    return best


def engine() -> ProxyEngine:
    d = SideConfig(name="dialer", host="127.0.0.1", port=5060, advertise_host="127.0.0.1",
                   advertise_port=5060, next_hop_host="127.0.0.1", next_hop_port=5082,
                   allow_any_source=True)
    c = SideConfig(name="carrier", host="127.0.0.1", port=5062, advertise_host="127.0.0.1",
                   advertise_port=5062, next_hop_host="127.0.0.1", next_hop_port=5080,
                   allow_any_source=True)
    return ProxyEngine(EngineConfig(dialer=d, carrier=c, max_transactions=10**7))


def bench_parse(n: int) -> None:
    for _ in range(n):
        parse_message(INVITE)


def bench_parse_edit_serialise(n: int) -> None:
    for _ in range(n):
        msg = parse_message(INVITE)
        msg.replace_header(msg.index["max-forwards"][0], b"Max-Forwards: 69\r\n")
        msg.prepend_header(b"Record-Route: <sip:127.0.0.1:5060;lr>\r\n")
        msg.prepend_header(b"Record-Route: <sip:127.0.0.1:5062;lr>\r\n")
        msg.prepend_header(b"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKabcdef.1\r\n")
        msg.serialize()


def bench_engine_invite(n: int) -> None:
    e = engine()
    peer = Peer("dialer", "udp", "127.0.0.1", 5070)
    datagrams = [INVITE.replace(b"-3131-1-0", b"-3131-%d-0" % i) for i in range(n)]
    t = 0.0
    for d in datagrams:
        e.receive(d, peer, t)


def main() -> None:
    gc.set_threshold(50_000, 20, 100)  # as the service runs (transport.gc_threshold)
    rows = [
        ("parse INVITE", timeit(bench_parse, 20000)),
        ("parse + edit + serialise INVITE", timeit(bench_parse_edit_serialise, 20000)),
        ("engine: INVITE in -> 100 + forward out", timeit(bench_engine_invite, 20000)),
    ]
    for name, us in rows:
        print(f"{name:45s} {us:8.2f} µs/message   {1e6 / us:10.0f} /s")  # noqa: T201


if __name__ == "__main__":
    main()
