"""stirshaken-proxy beside Kamailio + secsipid, the same SIPp load through each, one run.

    .venv/bin/python -m bench.compare [--rates 500,1000,2000] [--seconds 10] [--hold-ms 500]

Needs the Debian packages kamailio, kamailio-secsipid-modules, sip-tester and tcpdump. Each
proxy signs every INVITE (attestation A, the same numbers, the same P-256 key) and relays
statefully with Record-Route; the scenario is INVITE/100/180/200/ACK/BYE/200. For each proxy
and offered rate it prints the calls that succeeded and failed, SIPp's retransmissions, the
proxy's CPU time per call (user + system over all its processes, from /proc) and the time the
proxy adds to an INVITE (p50/p99: INVITE in -> signed INVITE out, from a loopback capture).
Everything is on 127.0.0.1; every step is bounded in calls and time, and a proxy's ramp stops
at its first step with failures or retransmissions. ``--no-capture`` leaves tcpdump out (no
latency figures). ``--ours-workers 1,2`` runs stirshaken-proxy once per worker count.
``--baseline TREE`` also runs stirshaken-proxy from another source tree (a git worktree of an
earlier commit), interleaved with the others, to measure a change before and after in one run.
``--sipp-buffer BYTES`` gives both SIPp instances sockets of that size (SIPp's -buff_size;
by default the system's, net.core.rmem_default). At 2,500 cps and above, a default-sized SIPp
UAS socket overflows whenever SIPp falls behind for a few ms on this 2-core machine (its drops
show in /proc/net/udp): SIPp retransmits, whichever proxy is under test. The proxies' own
sockets are 4 MB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stirshaken_proxy.io.keys import DevPki, init_dev_pki
from tests.support import (
    HOST,
    ROOT,
    Kamailio,
    Ports,
    Service,
    SippUas,
    free_port,
    run_uac,
    signing_config,
    write_config,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")


def session_cpu(sid: int) -> float:
    """CPU seconds (user + system) of every process in session ``sid``."""
    return sum(session_cpu_split(sid))


def session_cpu_split(sid: int) -> tuple[float, float]:
    """CPU seconds (user, system) of every process in session ``sid``."""
    user = system = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # field 6 of stat: the session id
            user += int(fields[11])
            system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


@dataclass
class Proxy:
    name: str
    listen_port: int  # where the dialer sends
    out_port: int  # the port forwarded INVITEs leave from
    uas_port: int
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def start_kamailio(work: Path, key: Path, x5u: str, children: int) -> Proxy:
    port, uas = free_port(), free_port()
    kamailio = Kamailio(ROOT / "bench/kamailio.cfg.tmpl", work, {
        "CHILDREN": children, "PORT": port, "MAXBUFFER": 4 * 1024 * 1024, "X5U": x5u,
        "KEY": key, "UAS_PORT": uas}, ready=(HOST, port),
        args=("-x", "tlsf", "-m", "4096", "-M", "64"))
    kamailio.start()
    assert kamailio.proc is not None
    return Proxy("kamailio+secsipid", port, port, uas, kamailio.proc)


def start_ours(work: Path, transport: str = "", workers: int = 1,
               tree: Path | None = None, extra: str = "") -> Proxy:
    ports = Ports.pick()
    transport = f"workers = {workers}\n{transport}"
    tag = f"{workers}{'-baseline' if tree else ''}"
    # Capacity raised for the load as Kamailio's is (-m 4096: 4 GB of shared memory for its
    # transactions): with the default of 100,000 server transactions (they linger up to 32 s
    # after a call's messages) 18% of the calls got 503 at 3,000 calls/s.
    cfg = write_config(work / f"proxy{tag}.toml", ports, transport=transport,
                       sip="max_transactions = 1000000",
                       extra=signing_config(work, ports, refresh=2.0) + extra)
    python_path = None
    if tree is not None:  # the package at the top of the tree, or in src/ (older layout)
        python_path = tree / "src" if (tree / "src" / "stirshaken_proxy").is_dir() else tree
    svc = Service(cfg, ports.admin, work / f"proxy{tag}.log", python_path=python_path)
    # Our own session, so its CPU is counted like Kamailio's.
    svc.start()
    assert svc.proc is not None
    name = "stirshaken-proxy" if workers == 1 else f"stirshaken-proxy x{workers}"
    if tree is not None:
        name += " (baseline)"
    return Proxy(name, ports.dialer, ports.carrier, ports.carrier_next_hop, svc.proc)


def invite_latencies(pcap: Path, in_port: int, out_port: int, uas_port: int) -> list[float]:
    """Seconds between each INVITE reaching the proxy and the proxy sending it on."""
    data = pcap.read_bytes()
    if len(data) < 24:
        return []
    magic = struct.unpack("<I", data[:4])[0]
    nano = magic == 0xA1B23C4D
    link = struct.unpack("<I", data[20:24])[0]
    offset = 24
    seen_in: dict[bytes, float] = {}
    out: list[float] = []
    while offset + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack("<IIII", data[offset:offset + 16])
        packet = data[offset + 16:offset + 16 + caplen]
        offset += 16 + caplen
        ts = sec + frac / (1e9 if nano else 1e6)
        ip = packet[14:] if link == 1 else packet[16:] if link == 113 else packet
        if len(ip) < 28 or ip[9] != 17:
            continue
        ihl = (ip[0] & 0x0F) * 4
        sport, dport = struct.unpack("!HH", ip[ihl:ihl + 4])
        payload = ip[ihl + 8:]
        if not payload.startswith(b"INVITE "):
            continue
        start = payload.find(b"\r\nCall-ID: ")
        if start < 0:
            continue
        call_id = payload[start + 11:payload.find(b"\r\n", start + 11)]
        if dport == in_port and call_id not in seen_in:
            seen_in[call_id] = ts
        elif sport == out_port and dport == uas_port and call_id in seen_in:
            out.append(ts - seen_in.pop(call_id))
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_step(proxy: Proxy, work: Path, rate: int, seconds: int, hold_ms: int,
             capture: bool = True, sipp_buffer: int = 0) -> dict[str, float]:
    calls = rate * seconds
    pcap = work / f"{proxy.listen_port}-{rate}.pcap"
    dump = subprocess.Popen(
        ["tcpdump", "-i", "lo", "-s", "600", "-w", str(pcap), "-B", "65536", "-U",
         "--time-stamp-precision=micro", f"udp and (dst port {proxy.listen_port} or "
         f"(src port {proxy.out_port} and dst port {proxy.uas_port}))"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) if capture else None
    time.sleep(0.5)
    buffer = ("-buff_size", str(sipp_buffer)) if sipp_buffer else ()
    with SippUas("uas.xml", proxy.uas_port, work, time_limit=seconds * 3 + 60,
                 trace_messages=False, extra=buffer):
        before = session_cpu_split(os.getsid(proxy.proc.pid))
        result = run_uac("uac.xml", proxy.listen_port, free_port(), work, calls=calls, rate=rate,
                         hold_ms=hold_ms, caller="12025550142", time_limit=seconds * 3 + 30,
                         extra=("-l", str(rate * (hold_ms // 1000 + 3)), *buffer))
        after = session_cpu_split(os.getsid(proxy.proc.pid))
    user, system = after[0] - before[0], after[1] - before[1]
    calls_ok = max(1, result.successful)
    if dump is not None:
        dump.send_signal(signal.SIGINT)
        dump.wait(10)
    lat = invite_latencies(pcap, proxy.listen_port, proxy.out_port, proxy.uas_port) \
        if pcap.exists() else []
    pcap.unlink(missing_ok=True)
    return {"rate": rate, "ok": result.successful, "failed": result.failed,
            "retrans": result.retransmissions,
            "cpu_us_per_call": (user + system) / calls_ok * 1e6,
            "user_us_per_call": user / calls_ok * 1e6,
            "system_us_per_call": system / calls_ok * 1e6,
            "p50_us": percentile(lat, 0.5) * 1e6, "p99_us": percentile(lat, 0.99) * 1e6,
            "samples": len(lat)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="250,500,1000,1500,2000,3000")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--hold-ms", type=int, default=500)
    parser.add_argument("--kamailio-children", type=int, default=2)
    parser.add_argument("--sipp-buffer", type=int, default=0,
                        help="SIPp's socket buffers, bytes (default: the system's)")
    parser.add_argument("--only", choices=("kamailio", "ours"), help="run one proxy only")
    parser.add_argument("--no-capture", action="store_true",
                        help="no tcpdump (no INVITE latency; tcpdump's CPU is left to the rest)")
    parser.add_argument("--keep", help="keep logs and configs in this directory")
    parser.add_argument("--ours-workers", default="1,2",
                        help="run stirshaken-proxy with each of these [transport] workers")
    parser.add_argument("--baseline", help="also run stirshaken-proxy from this source tree")
    parser.add_argument("--ours-transport", default="",
                        help="extra [transport] lines for stirshaken-proxy (e.g. gc_threshold = 100000)")
    parser.add_argument("--ours-extra", default="",
                        help="config sections for stirshaken-proxy (e.g. '[records]\\nenabled = "
                        "false')")
    args = parser.parse_args()
    args.ours_extra = args.ours_extra.replace("\\n", "\n")
    for tool in ("kamailio", "sipp", *(() if args.no_capture else ("tcpdump",))):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install kamailio "
                             "kamailio-secsipid-modules sip-tester tcpdump)")
    rates = [int(r) for r in args.rates.split(",")]
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        keys = init_dev_pki(work / "keys", spc="123A") if not (work / "keys").exists() \
            else DevPki.in_dir(work / "keys")
        starters: list[tuple[str, Callable[[], Proxy]]] = [
            ("kamailio", lambda: start_kamailio(work, keys.key,
                                                "https://certs.example.org/shaken.pem",
                                                args.kamailio_children))]
        for count in map(int, args.ours_workers.split(",")):
            starters.append(("ours", lambda count=count: start_ours(  # type: ignore[misc]
                work, args.ours_transport, count, extra=args.ours_extra)))
            if args.baseline:
                starters.append(("ours", lambda count=count: start_ours(  # type: ignore[misc]
                    work, args.ours_transport, count, Path(args.baseline),
                    extra=args.ours_extra)))
        # Every proxy runs from the start, and each rate goes through all of them in turn,
        # so a change in the shared machine's speed during the run touches them alike.
        running: list[Proxy] = []
        try:
            for name, start in starters:
                if not args.only or args.only == name:
                    running.append(start())
            active = list(running)
            for rate in rates:
                for proxy in list(active):
                    row = run_step(proxy, work, rate, args.seconds, args.hold_ms,
                                   capture=not args.no_capture, sipp_buffer=args.sipp_buffer)
                    results.setdefault(proxy.name, []).append(row)
                    print(f"{proxy.name:20s} {rate:6d} cps  {row['ok']:7.0f} ok "  # noqa: T201
                          f"{row['failed']:5.0f} failed {row['retrans']:6.0f} retrans  "
                          f"{row['cpu_us_per_call']:7.1f} µs CPU/call "
                          f"({row['user_us_per_call']:.0f} user {row['system_us_per_call']:.0f}"
                          " system)  INVITE +"
                          f"{row['p50_us']:7.0f} µs p50 {row['p99_us']:8.0f} µs p99",
                          flush=True)
                    if row["failed"] or row["retrans"] or row["ok"] < rate * args.seconds:
                        active.remove(proxy)  # its ramp ends at its first failing step
        finally:
            for proxy in running:
                proxy.stop()
    print()  # noqa: T201
    kam = {r["rate"]: r for r in results.get("kamailio+secsipid", [])}
    for name, rows in results.items():
        if name == "kamailio+secsipid":
            continue
        print(f"{name}: {'rate':>6s} {'µs/call':>9s} {'kamailio µs/call':>17s} "  # noqa: T201
              f"{'ratio':>6s}")
        for row in rows:
            k = kam.get(row["rate"])
            if k is None:
                continue
            print(f"{'':{len(name) + 2}s}{row['rate']:6.0f} {row['cpu_us_per_call']:9.1f} "  # noqa: T201
                  f"{k['cpu_us_per_call']:17.1f} "
                  f"{row['cpu_us_per_call'] / k['cpu_us_per_call']:6.2f}")

    def best(rows: list[dict[str, float]]) -> float:
        ok = [r["rate"] for r in rows if not r["failed"] and not r["retrans"]]
        return max(ok) if ok else 0

    for name, rows in results.items():
        print(f"{name}: highest rate with zero failures and no retransmissions: "  # noqa: T201
              f"{best(rows):.0f} cps")


if __name__ == "__main__":
    main()
