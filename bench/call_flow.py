"""One whole signed call through the engine in-process, as SIPp's uac/uas scenarios place it:
INVITE (signed A), 180, 200, ACK, BYE, 200 — the messages bench.compare sends over sockets,
without the sockets. µs of engine time per call, per core, best of several rounds:

    .venv/bin/python -m bench.call_flow [--calls 2000] [--core auto|python|compiled|both]
                                        [--split]

``--split`` prints the µs of each message of the call (INVITE, 180, 200, ACK, BYE, its 200).

``--core`` chooses the C modules; the engine's modules are compiled by mypyc where they were
built, and run from their source with STIRSHAKEN_CORE=python in the environment (each line
says which).

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
from stirshaken_proxy import engine_core
from stirshaken_proxy.engine.proxy import ProxyEngine
from stirshaken_proxy.sip import message
from stirshaken_proxy.sip.message import parse_message
from stirshaken_proxy.sip.transport import Peer, Send, Side, Transport

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


STEPS = ("INVITE", "180", "200", "ACK", "BYE", "200 (BYE)")


def calls(e: ProxyEngine, n: int, first: int = 0, split: dict[str, float] | None = None
          ) -> float:
    """Place ``n`` calls (numbered from ``first``); the engine's seconds for them (and, into
    ``split``, the seconds for each message of STEPS)."""
    spent = dict.fromkeys(STEPS, 0.0)
    now = 1_790_000_000.0
    clock = time.perf_counter

    def receive(step: str, data: bytes, peer: Peer) -> bytes:
        t0 = clock()
        out = e.receive(data, peer, now)
        spent[step] += clock() - t0
        last = out[-1] if out else None
        return last.data if isinstance(last, Send) else b""

    for i in range(first, first + n):
        invite = (INVITE.replace(b"-3131-1-0", b"-3131-%d-0" % i)
                  .replace(b"1-3131@", b"%d-3131@" % i)
                  .replace(b"Tag001", b"Tag00%d" % i))
        fwd = receive("INVITE", invite, UAC)
        ringing, ok = _answer(fwd, 180, b"Ringing"), _answer(fwd, 200, b"OK")
        ack = _in_dialog(b"ACK", 1, b"z9hG4bK-ack-%d" % i, i)
        bye = _in_dialog(b"BYE", 2, b"z9hG4bK-bye-%d" % i, i)
        receive("180", ringing, UAS)
        receive("200", ok, UAS)
        receive("ACK", ack, UAC)
        fwd_bye = receive("BYE", bye, UAC)
        receive("200 (BYE)", _answer(fwd_bye, 200, b"OK"), UAS)
        now += 0.001
    if split is not None:
        for step, seconds in spent.items():
            split[step] = split.get(step, 0.0) + seconds
    return sum(spent.values())


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
    ap.add_argument("--split", action="store_true",
                    help="also print µs per message of the call, for the core chosen")
    args = ap.parse_args()
    if args.split:
        message.use_core("auto" if args.core == "both" else args.core)
        e = signing_engine(Path(tempfile.mkdtemp()))
        calls(e, 50, first=10**6)
        gc.collect()
        split: dict[str, float] = {}
        calls(e, args.calls, split=split)
        for step, seconds in split.items():
            sys.stdout.write(f"{step:10} {seconds / args.calls * 1e6:7.1f} µs\n")
        sys.stdout.write(f"{'call':10} {sum(split.values()) / args.calls * 1e6:7.1f} µs "
                         f"({message.core_in_use()} core, engine {engine_core()})\n")
        return
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
        sys.stdout.write(f"{message.core_in_use():9} {per_call:8.1f} µs/call "
                         f"(engine {engine_core()})\n")
        return
    cores = ["python", "compiled"] if message.compiled_available() else ["python"]
    got = {c: best_per_call(c, args.calls) for c in cores}
    for c, us in got.items():
        ratio = f"  ({us / got['python']:.2f}x the Python core)" if c != "python" else ""
        sys.stdout.write(f"{c:9} {us:8.1f} µs of engine time per signed call{ratio} "
                         f"(engine {engine_core()})\n")


if __name__ == "__main__":
    main()
