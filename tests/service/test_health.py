"""Number health through the real service: statistics from real calls, written behind to
SQLite, surviving kill -9; the CLI shows them and quarantines through the admin API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.service.conftest import requires_sipp
from tests.support import (
    HOST,
    ROOT,
    Ports,
    Service,
    SippUas,
    free_port,
    run_uac,
    signing_config,
    with_credential,
    write_config,
)

pytestmark = [requires_sipp, pytest.mark.sipp]


def cli(cfg: Path, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "stirshaken_proxy", "numbers", *args,
                           "--config", str(cfg)], capture_output=True, text=True, cwd=ROOT,
                          timeout=60, check=True).stdout


def health(port: int) -> dict[str, dict[str, object]]:
    with urllib.request.urlopen(with_credential(f"http://{HOST}:{port}/numbers/health"),
                                timeout=5) as r:
        return {row["tn"]: row for row in json.loads(r.read())}


def test_statistics_survive_kill_9(tmp_path: Path) -> None:
    ports = Ports.pick()
    cfg = write_config(tmp_path / "p.toml", ports, extra=signing_config(tmp_path, ports) + """
[health]
flush_interval = 0.3
""")
    svc = Service(cfg, ports.admin, tmp_path / "proxy.log")
    svc.start()
    assert svc.proc is not None
    with SippUas("uas.xml", ports.carrier_next_hop, tmp_path):
        result = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=30, rate=30,
                         caller="+12025550142", hold_ms=1000)
    assert result.successful == 30
    live = health(ports.admin)["12025550142"]
    assert live["attempts"] == 30 and live["answered"] == 30 and live["ended"] == 30
    assert float(live["average_duration"]) >= 1.0  # type: ignore[arg-type]
    time.sleep(1.0)  # more than the flush interval
    os.kill(svc.proc.pid, signal.SIGKILL)
    svc.proc.wait(5)
    svc.stop()
    # The CLI reads what was written behind.
    table = cli(cfg, "health")
    assert "12025550142" in table and "healthy" in table
    rows = [json.loads(line) for line in cli(cfg, "health", "--json").splitlines()]
    assert rows[0]["attempts"] == 30 and rows[0]["calls_last_hour"] == 30
    # A restarted service carries on from there, and the operator can quarantine. (Its
    # statistics are now written behind once a minute: what the CLI shows meanwhile is the
    # running service's.)
    cfg.write_text(cfg.read_text().replace("flush_interval = 0.3", "flush_interval = 60"))
    svc2 = Service(cfg, ports.admin, tmp_path / "proxy2.log")
    svc2.start()
    try:
        assert health(ports.admin)["12025550142"]["attempts"] == 30
        out = cli(cfg, "quarantine", "12025550142", "--hours", "2", "--reason", "complaints")
        assert "quarantined complaints" in out
        assert health(ports.admin)["12025550142"]["state"] == "quarantined"
        row = json.loads(cli(cfg, "health", "--json").splitlines()[0])
        assert (row["state"], row["quarantine_reason"]) == ("quarantined", "complaints")
        assert "healthy" in cli(cfg, "release", "12025550142")
        assert "healthy" in cli(cfg, "health")
    finally:
        svc2.stop()
