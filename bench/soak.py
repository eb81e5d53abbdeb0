"""Soak: a steady rate of signed calls for a bounded time, sampling the proxy's RSS, open
file descriptors and transaction table. After warm-up (about 64*T1 = 32 s, the longest a
finished transaction lives) all three must stay flat.

    .venv/bin/python -m bench.soak [--rate 300] [--minutes 10] [--every 15]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from tests.support import (
    HOST,
    Ports,
    Service,
    SippUas,
    free_port,
    run_uac,
    signing_config,
    write_config,
)


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(m.group(1)) / 1024 if m else 0.0


def transactions(admin: int) -> float:
    with urllib.request.urlopen(f"http://{HOST}:{admin}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("stirshaken_sip_transactions "):
                return float(line.split()[1])
    return -1.0


def gc_pauses(admin: int) -> str:
    """The garbage collector's pauses so far, by generation: how many, and their total."""
    with urllib.request.urlopen(f"http://{HOST}:{admin}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = []
    for generation in ("0", "1", "2"):
        label = f'generation="{generation}"'
        values = {line.split("{")[0].rsplit("_", 1)[1]: float(line.rsplit(" ", 1)[1])
                  for line in text.splitlines()
                  if line.startswith("stirshaken_gc_pause_seconds_") and label in line
                  and "_bucket" not in line}
        count, total = values.get("count", 0.0), values.get("sum", 0.0)
        mean = total / count * 1e3 if count else 0.0
        out.append(f"generation {generation}: {count:.0f} pauses, {total:.2f} s"
                   f" (mean {mean:.0f} ms)")
    return "; ".join(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=300)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=15.0)
    args = parser.parse_args()
    seconds = int(args.minutes * 60)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ports = Ports.pick()
        cfg = write_config(work / "p.toml", ports,
                           extra=signing_config(work, ports, refresh=2.0))
        svc = Service(cfg, ports.admin, work / "proxy.log")
        svc.start()
        assert svc.proc is not None
        pid = svc.proc.pid
        with urllib.request.urlopen(f"http://{HOST}:{ports.admin}/readyz", timeout=5) as r:
            print(f"SIP core: {json.load(r)['core']}", flush=True)  # noqa: T201
        samples: list[tuple[float, float, int, float]] = []
        stop = threading.Event()

        def sample() -> None:
            start = time.monotonic()
            while not stop.wait(args.every):
                samples.append((time.monotonic() - start, rss_mb(pid),
                                len(os.listdir(f"/proc/{pid}/fd")), transactions(ports.admin)))
                t, rss, fds, txns = samples[-1]
                print(f"{t:7.0f} s  RSS {rss:7.1f} MB  fds {fds:4d}  transactions {txns:8.0f}",  # noqa: T201
                      flush=True)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            with SippUas("uas.xml", ports.carrier_next_hop, work, time_limit=seconds + 120,
                         trace_messages=False):
                result = run_uac("uac.xml", ports.dialer, free_port(), work,
                                 calls=args.rate * seconds, rate=args.rate, hold_ms=500,
                                 caller="+12025550142", time_limit=seconds + 120)
            pauses = gc_pauses(ports.admin)
        finally:
            stop.set()
            sampler.join()
            svc.stop()
        print(f"calls: {result.successful} ok, {result.failed} failed, "  # noqa: T201
              f"{result.retransmissions} retransmissions")
        print(f"garbage collector: {pauses}")  # noqa: T201
        warm = [s for s in samples if s[0] >= 60]
        if warm:
            rss = [s[1] for s in warm]
            txn = [s[3] for s in warm]
            fds = [s[2] for s in warm]
            print(f"after warm-up: RSS {min(rss):.1f}-{max(rss):.1f} MB, fds "  # noqa: T201
                  f"{min(fds)}-{max(fds)}, transactions {min(txn):.0f}-{max(txn):.0f}")


if __name__ == "__main__":
    main()
