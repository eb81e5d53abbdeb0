"""Several worker processes sharing the SIP ports: the state that must be the same for the whole
service stays right (velocity limits, counters, number health written to the store), and no
worker outlives the service or dies unnoticed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.service.conftest import requires_sipp
from tests.support import (
    ROOT,
    Ports,
    Service,
    SippUas,
    free_port,
    run_uac,
    scrape,
    signing_config,
    write_config,
)

pytestmark = [requires_sipp, pytest.mark.sipp]


def samples(text: str) -> dict[str, float]:
    """Every sample of a scrape, by its name and labels as written."""
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_two_workers_keep_the_hourly_limit_and_every_counter(tmp_path: Path) -> None:
    """Four numbers at 10 calls an hour each and 60 calls offered: whichever worker owns a
    call, exactly 40 go out (10 per number) and 20 get 503; every counter adds up to the
    calls made, and what worker 0 writes to the store includes the other worker's calls."""
    ports = Ports.pick()
    cfg = write_config(tmp_path / "p.toml", ports, transport="workers = 2", extra=signing_config(
        tmp_path, ports, numbers='["+1 202 555 0100..0103"]',
        account_extra='local_presence = "always"\nmax_calls_per_hour = 10') + """
[health]
flush_interval = 60
""")
    svc = Service(cfg, ports.admin, tmp_path / "proxy.log")
    svc.start()
    assert svc.proc is not None
    try:
        assert len(children(svc.proc.pid)) == 1
        with SippUas("uas.xml", ports.carrier_next_hop, tmp_path) as carrier:
            result = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=60, rate=20,
                             caller="+13105550123", callee="12025550199")
        metrics = samples(scrape(ports.admin))
    finally:
        rc = svc.stop()
    assert rc == 0, svc.log()
    assert "Traceback" not in svc.log()
    assert result.successful == 40 and result.failed == 20, result.output[-2000:]
    invites = re.findall(r"^INVITE .*?^From: <sip:\+(1202555010\d)@", carrier.messages(),
                         re.MULTILINE | re.DOTALL)
    per_number = {tn: invites.count(tn) for tn in set(invites)}
    assert per_number == {f"1202555010{i}": 10 for i in range(4)}, per_number
    signed = 'stirshaken_calls_signed_total{account="demo",attest="A",reason="owned_number"}'
    assert metrics[signed] == 40
    refused = [v for k, v in metrics.items() if k.startswith("stirshaken_sign_refused_total")]
    assert refused == [20]
    # Requests received count SIPp's retransmissions too, on a busy machine.
    assert metrics['stirshaken_sip_requests_total{method="INVITE",side="dialer"}'] >= 60
    assert metrics['stirshaken_io_events_total{event="worker_handoffs"}'] > 0
    assert {k for k in metrics if k.startswith("stirshaken_worker_cpu_seconds_total")} == {
        'stirshaken_worker_cpu_seconds_total{worker="0"}',
        'stirshaken_worker_cpu_seconds_total{worker="1"}'}
    # Flushed only at the stop (interval 60 s): worker 0 had all 40 answered calls.
    out = subprocess.run([sys.executable, "-m", "stirshaken_proxy", "numbers", "health",
                          "--json", "--config", str(cfg)], capture_output=True, text=True,
                         cwd=ROOT, timeout=60, check=True).stdout
    rows = {row["tn"]: row for row in map(json.loads, out.splitlines())}
    for i in range(4):
        row = rows[f"1202555010{i}"]
        assert (row["attempts"], row["answered"], row["ended"]) == (10, 10, 10), row


def test_no_worker_outlives_the_service_nor_dies_unnoticed(tmp_path: Path) -> None:
    ports = Ports.pick()
    cfg = write_config(tmp_path / "p.toml", ports, transport="workers = 2")
    # Worker 0 killed outright: the other worker stops by itself.
    svc = Service(cfg, ports.admin, tmp_path / "proxy.log")
    svc.start()
    assert svc.proc is not None
    (child,) = children(svc.proc.pid)
    os.kill(svc.proc.pid, signal.SIGKILL)
    svc.proc.wait(5)
    svc.stop()
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)
    # Another worker dies: the service says so and stops with status 1 (to be restarted).
    svc = Service(cfg, ports.admin, tmp_path / "proxy2.log")
    svc.start()
    assert svc.proc is not None
    (child,) = children(svc.proc.pid)
    os.kill(child, signal.SIGKILL)
    assert svc.proc.wait(10) == 1
    svc.stop()
    # Each line names the worker that wrote it.
    assert re.search(r"ERROR \[worker 0\] stirshaken_proxy.io.supervisor: worker process \d+ exited "
                     r"\(status -9\); stopping the service", svc.log()), svc.log()
