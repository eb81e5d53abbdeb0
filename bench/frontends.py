"""The STI service beside an SBC, measured: the SIP 302 front end and the ATIS-1000082 REST API.

    .venv/bin/python -m bench.frontends [--rates 500,1000,1500] [--seconds 10] [--rest-seconds 10]

302 mode: the same SIPp load (INVITE -> 302 -> ACK, every INVITE signed A with the same key)
against stirshaken-proxy's [redirect] listener and against Kamailio + secsipid answering the
302 itself (bench/kamailio-302.cfg.tmpl); beside them, stirshaken-proxy in the call path with
the full call (INVITE/100/180/200/ACK/BYE/200 through it), so CPU per signed call compares
the deployment shapes. Each rate goes through all three in turn (the machine's speed drifts).

REST: wrk posts the same signing request over keep-alive connections to our
``/stir/v1/signing`` and to secsipidx's own HTTP signing mode (``/v1/sign-csv``); the figure is
signings per CPU-second of the server (its process's user + system time), i.e. per core.

Needs the Debian packages kamailio, kamailio-secsipid-modules, sip-tester, secsipidx and wrk.
Everything is on 127.0.0.1; every step is bounded in calls and time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from bench.compare import session_cpu
from stirshaken_proxy.io.rest import key_hash
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

ORIGID = "5f3f3f7a-4c1b-4d1e-9a37-0d2c9b6a1e01"
X5U = "https://certs.example.org/shaken.pem"
KEY = "bench-key"


def start_kamailio_302(work: Path, key: Path, children: int) -> tuple[int, Kamailio]:
    port = free_port()
    kamailio = Kamailio(ROOT / "bench/kamailio-302.cfg.tmpl", work, {
        "CHILDREN": children, "PORT": port, "MAXBUFFER": 4 * 1024 * 1024, "X5U": X5U,
        "KEY": key}, ready=(HOST, port), args=("-x", "tlsf", "-m", "256", "-M", "16"))
    kamailio.start()
    return port, kamailio


def step(name: str, pid: int, work: Path, rate: int, seconds: int, *, target: int,
         scenario: str, uas: int | None = None) -> dict[str, float]:
    calls = rate * seconds
    before = session_cpu(os.getsid(pid))
    if uas is not None:
        with SippUas("uas.xml", uas, work, time_limit=seconds * 3 + 60, trace_messages=False):
            result = run_uac(scenario, target, free_port(), work, calls=calls, rate=rate,
                             hold_ms=500, caller="12025550142", time_limit=seconds * 3 + 30,
                             extra=("-l", str(rate * 4)))
    else:
        result = run_uac(scenario, target, free_port(), work, calls=calls, rate=rate,
                         caller="12025550142", time_limit=seconds * 3 + 30)
    used = session_cpu(os.getsid(pid)) - before
    row = {"rate": rate, "ok": result.successful, "failed": result.failed,
           "retrans": result.retransmissions,
           "cpu_us_per_call": used / max(1, result.successful) * 1e6}
    print(f"{name:34s} {rate:6d} cps {row['ok']:7.0f} ok {row['failed']:5.0f} failed "  # noqa: T201
          f"{row['retrans']:6.0f} retrans {row['cpu_us_per_call']:8.1f} µs CPU/call",
          flush=True)
    return row


def redirect_part(work: Path, rates: list[int], seconds: int, children: int) -> None:
    ports = Ports.pick()
    redirect = free_port()
    extra = signing_config(work, ports, refresh=2.0) + f'\n[redirect]\nlisten = "{HOST}:{redirect}"\n'
    cfg = write_config(work / "proxy-302.toml", ports, extra=extra)
    svc = Service(cfg, ports.admin, work / "proxy-302.log")
    svc.start()
    assert svc.proc is not None
    kam_port, kam = start_kamailio_302(work, work / "keys" / "key.pem", children)
    try:
        for rate in rates:
            assert kam.proc is not None
            step("kamailio+secsipid 302", kam.proc.pid, work, rate, seconds, target=kam_port,
                 scenario="uac_redirect.xml")
            step("stirshaken-proxy 302", svc.proc.pid, work, rate, seconds, target=redirect,
                 scenario="uac_redirect.xml")
            step("stirshaken-proxy in path (full call)", svc.proc.pid, work, rate, seconds,
                 target=ports.dialer, scenario="uac.xml", uas=ports.carrier_next_hop)
    finally:
        kam.stop()
        svc.stop()


def wrk(url: str, body: str, headers: dict[str, str], seconds: int, work: Path,
        name: str) -> float:
    """Requests per second wrk measured (2 connections, 1 thread: the server gets a core)."""
    script = work / f"{name}.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(body)}"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(["wrk", "-t1", "-c2", f"-d{seconds}s", "-s", str(script), url],
                         capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            if "Non-2xx" in out:
                raise RuntimeError(f"{name}: errors in the run:\n{out}")
            return float(line.split()[1])
    raise RuntimeError(out)


def rest_part(work: Path, seconds: int) -> None:
    ports = Ports.pick()
    rest_port = free_port()
    extra = signing_config(work, ports, refresh=2.0, account_extra=(
        f'api_keys = ["{key_hash(KEY)}"]')) + f'\n[rest]\nlisten = "{HOST}:{rest_port}"\n'
    cfg = write_config(work / "proxy-rest.toml", ports, extra=extra)
    svc = Service(cfg, ports.admin, work / "proxy-rest.log")
    svc.start()
    assert svc.proc is not None
    secs_port = free_port()
    secs = subprocess.Popen(["secsipidx", "-http-srv", f"{HOST}:{secs_port}", "-fprvkey",
                             str(work / "keys" / "key.pem"), "-expire", "300"],
                            stdout=open(work / "secsipidx.log", "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    time.sleep(1.0)
    try:
        body = json.dumps({"signingRequest": {
            "attest": "A", "dest": {"tn": ["12025550199"]}, "iat": int(time.time()),
            "orig": {"tn": "12025550142"}, "origid": ORIGID}})
        for name, proc, url, data, headers in (
                ("stirshaken-proxy REST", svc.proc, f"http://{HOST}:{rest_port}/stir/v1/signing",
                 body, {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}),
                ("secsipidx HTTP (sign-csv)", secs, f"http://{HOST}:{secs_port}/v1/sign-csv",
                 f"12025550142,12025550199,A,{ORIGID},{X5U}", {})):
            before = session_cpu(os.getsid(proc.pid))
            per_second = wrk(url, data, headers, seconds, work, name.split()[0])
            used = session_cpu(os.getsid(proc.pid)) - before
            print(f"{name:34s} {per_second:9.0f} signings/s {per_second * seconds / used:9.0f} "  # noqa: T201
                  f"signings per CPU-second of the server", flush=True)
    finally:
        os.killpg(secs.pid, signal.SIGTERM)
        secs.wait(10)
        svc.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="500,1000,1500")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rest-seconds", type=int, default=10)
    parser.add_argument("--kamailio-children", type=int, default=2)
    parser.add_argument("--part", choices=("redirect", "rest"), help="run one part only")
    args = parser.parse_args()
    for tool in ("kamailio", "sipp", "secsipidx", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install kamailio "
                             "kamailio-secsipid-modules sip-tester secsipidx wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.part in (None, "redirect"):
            redirect_part(work, [int(r) for r in args.rates.split(",")], args.seconds,
                          args.kamailio_children)
        if args.part in (None, "rest"):
            rest_part(work, args.rest_seconds)


if __name__ == "__main__":
    main()
