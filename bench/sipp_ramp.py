"""SIPp rate ramp through the real service: INVITE/100/180/200/ACK/BYE/200 at rising rates.

    .venv/bin/python -m bench.sipp_ramp [--rates 100,200,400] [--seconds 5] [--hold-ms 500]
                                        [--sign]

For each offered rate it prints the calls placed, failed calls, retransmissions seen by the UAC
and the proxy's CPU time per call (user + system, from /proc). Everything runs on 127.0.0.1;
each step is bounded in calls and time, and the ramp stops at the first step with failures.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from bench.compare import session_cpu
from tests.support import (
    Ports,
    Service,
    SippUas,
    free_port,
    run_uac,
    signing_config,
    write_config,
)


def ramp(rates: list[int], seconds: int, hold_ms: int, *, sign: bool = False,
         scenario: str = "uac.xml", caller: str = "12025550142") -> list[dict[str, float]]:
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ports = Ports.pick()
        extra = signing_config(work, ports) if sign else ""
        cfg = write_config(work / "proxy.toml", ports, extra=extra)
        svc = Service(cfg, ports.admin, work / "proxy.log")
        svc.start()
        try:
            assert svc.proc is not None
            for rate in rates:
                calls = rate * seconds
                with SippUas("uas.xml", ports.carrier_next_hop, work,
                             time_limit=seconds * 4 + 60, trace_messages=False):
                    before = session_cpu(os.getsid(svc.proc.pid))
                    result = run_uac(scenario, ports.dialer, free_port(), work, calls=calls,
                                     rate=rate, hold_ms=hold_ms, caller=caller,
                                     time_limit=seconds * 4 + 30)
                    used = session_cpu(os.getsid(svc.proc.pid)) - before
                row = {"rate": rate, "calls": result.successful, "failed": result.failed,
                       "retransmissions": result.retransmissions,
                       "cpu_us_per_call": used / max(1, result.successful) * 1e6}
                rows.append(row)
                print(f"{rate:6d} cps  {result.successful:7d} ok  {result.failed:5d} failed  "  # noqa: T201
                      f"{result.retransmissions:6d} retrans  "
                      f"{row['cpu_us_per_call']:8.1f} µs CPU/call", flush=True)
                if result.failed or result.successful < calls:
                    break
        finally:
            svc.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="100,200,400,600,800,1000,1200,1500")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--hold-ms", type=int, default=500)
    parser.add_argument("--sign", action="store_true",
                        help="sign every INVITE (account demo, owned calling number: attest A)")
    args = parser.parse_args()
    ramp([int(r) for r in args.rates.split(",")], args.seconds, args.hold_ms, sign=args.sign)


if __name__ == "__main__":
    main()
