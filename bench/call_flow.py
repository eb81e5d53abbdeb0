"""One whole signed call through the engine in-process, as SIPp's uac/uas scenarios place it:
INVITE (signed A), 180, 200, ACK, BYE, 200 — the messages bench.compare sends over sockets,
without the sockets. µs of engine time per call, per core, best of several rounds:

    .venv/bin/python -m bench.call_flow [--calls 2000] [--core auto|python|compiled|both]

``--profile`` prints cProfile's top functions instead. For instruction counts (repeatable on
a busy machine) run it under ``valgrind --tool=callgrind`` twice, with --calls N and 2N, and
divide the difference by N.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

from bench.inprocess import INVITE, signing_engine
from stirshaken_proxy.engine.proxy import ProxyEngine
from stirshaken_proxy.sip import message
from stirshaken_proxy.sip.message import parse_message
from stirshaken_proxy.sip.transport import Peer, Side, Transport

UAC = Peer(Side.DIALER, Transport.UDP, "127.0.0.1", 5070)
UAS = Peer(Side.CARRIER, Transport.UDP, "127.0.0.1", 5080)


def _answer(req: bytes, status: int, reason: bytes) -> bytes:
    """The UAS's response to what the proxy sent it, as SIPp's uas.xml writes it."""
    msg = parse_message(req)
    return b"".join([
        b"SIP/2.0 %d %s\r\n" % (status, reason), *msg.raw_lines("via"),
        *msg.raw_lines("record-route"), *msg.raw_lines("from"),
        b"To: " + (msg.get("to") or "").encode() + b";tag=uas-1\r\n",
        *msg.raw_lines("call-id"), *msg.raw_lines("cseq"),
        b"Contact: <sip:sipp@127.0.0.1:5080;transport=UDP>\r\nContent-Length: 0\r\n\r\n"])


def _in_dialog(method: bytes, cseq: int, branch: bytes, call: int) -> bytes:
    return (b"%s sip:sipp@127.0.0.1:5080;transport=UDP SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=%s;rport\r\n"
            b"Route: <sip:127.0.0.1:5060;lr>, <sip:127.0.0.1:5062;lr>\r\n"
            b"From: \"Sales\" <sip:+12025550100@127.0.0.1:5070;user=phone>;tag=3131SIPpTag00%d\r\n"
            b"To: <sip:+12025550199@127.0.0.1:5060;user=phone>;tag=uas-1\r\n"
            b"Call-ID: %d-3131@127.0.0.1\r\nCSeq: %d %s\r\n"
            b"Contact: <sip:sipp@127.0.0.1:5070;transport=UDP>\r\n"
            b"Max-Forwards: 70\r\nSubject: Performance Test\r\nContent-Length: 0\r\n\r\n"
            % (method, branch, call, call, cseq, method))


def calls(e: ProxyEngine, n: int, first: int = 0) -> float:
    """Place ``n`` calls (numbered from ``first``); the engine's seconds for them."""
    spent = 0.0
    now = 1_790_000_000.0
    for i in range(first, first + n):
        invite = (INVITE.replace(b"-3131-1-0", b"-3131-%d-0" % i)
                  .replace(b"1-3131@", b"%d-3131@" % i)
                  .replace(b"Tag001", b"Tag00%d" % i))
        t0 = time.perf_counter()
        out = e.receive(invite, UAC, now)
        spent += time.perf_counter() - t0
        fwd = out[-1].data
        ringing, ok = _answer(fwd, 180, b"Ringing"), _answer(fwd, 200, b"OK")
        ack = _in_dialog(b"ACK", 1, b"z9hG4bK-ack-%d" % i, i)
        bye = _in_dialog(b"BYE", 2, b"z9hG4bK-bye-%d" % i, i)
        t0 = time.perf_counter()
        e.receive(ringing, UAS, now)
        e.receive(ok, UAS, now)
        e.receive(ack, UAC, now)
        fwd_bye = e.receive(bye, UAC, now)[-1].data
        spent += time.perf_counter() - t0
        bye_ok = _answer(fwd_bye, 200, b"OK")
        t0 = time.perf_counter()
        e.receive(bye_ok, UAS, now)
        spent += time.perf_counter() - t0
        now += 0.001
    return spent


def best_per_call(core: str, n: int, rounds: int = 5) -> float:
    message.use_core(core)
    best = float("inf")
    for _ in range(rounds):
        e = signing_engine(Path(tempfile.mkdtemp()))
        calls(e, 50, first=10**6)  # warm the caches as a running service has them
        gc.collect()
        best = min(best, calls(e, n) / n * 1e6)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--core", default="both", choices=("auto", "python", "compiled", "both"))
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    if args.profile:
        import cProfile
        import pstats

        message.use_core("auto" if args.core == "both" else args.core)
        e = signing_engine(Path(tempfile.mkdtemp()))
        cProfile.runctx("calls(e, args.calls)", globals(), {"e": e, "args": args, "calls": calls},
                        "/tmp/call_flow.prof")
        pstats.Stats("/tmp/call_flow.prof").sort_stats("tottime").print_stats(30)
        return
    if args.core != "both":
        message.use_core(args.core)
        e = signing_engine(Path(tempfile.mkdtemp()))
        per_call = calls(e, args.calls) / args.calls * 1e6
        sys.stdout.write(f"{message.core_in_use():9} {per_call:8.1f} µs/call\n")
        return
    cores = ["python", "compiled"] if message.compiled_available() else ["python"]
    got = {c: best_per_call(c, args.calls) for c in cores}
    for c, us in got.items():
        ratio = f"  ({us / got['python']:.2f}x the Python core)" if c != "python" else ""
        sys.stdout.write(f"{c:9} {us:8.1f} µs of engine time per signed call{ratio}\n")


if __name__ == "__main__":
    main()
