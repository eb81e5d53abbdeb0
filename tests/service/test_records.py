"""Call records through the running service: every call recorded in the store and the JSON
Lines export, none lost at a stop, and `report` counting the calls just placed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.service.conftest import requires_sipp
from tests.support import (
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


def report(cfg: Path, fmt: str) -> str:
    done = subprocess.run([sys.executable, "-m", "stirshaken_proxy.cli", "report", "--config",
                           str(cfg), "--since", "1h", "--format", fmt],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_calls_are_recorded_exported_and_reported(tmp_path: Path) -> None:
    ports = Ports.pick()
    extra = signing_config(tmp_path, ports) + f"""
[records]
flush_interval = 0.2
jsonl_dir = "{tmp_path / 'records'}"
"""
    cfg = write_config(tmp_path / "proxy.toml", ports, extra=extra)
    svc = Service(cfg, ports.admin, tmp_path / "proxy.log")
    svc.start()
    try:
        with SippUas("uas.xml", ports.carrier_next_hop, tmp_path):
            owned = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=10, rate=10,
                            caller="+12025550142")
            unowned = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=5, rate=5,
                              caller="+13035550142")
    finally:
        assert svc.stop() == 0
    assert owned.successful == 10 and unowned.successful == 5
    lines = [json.loads(line) for f in sorted((tmp_path / "records").glob("*.jsonl"))
             for line in f.read_text().splitlines()]
    assert len(lines) == 15 and len({r["id"] for r in lines}) == 15
    by_orig = {(r["orig"], r["attest"], r["status"]) for r in lines}
    assert by_orig == {("12025550142", "A", 200), ("13035550142", "B", 200)}
    assert all(r["duration"] > 0 and r["account"] == "demo" for r in lines)
    got = json.loads(report(cfg, "json"))
    demo = got["accounts"]["demo"]
    assert (demo["calls"], demo["A"], demo["B"], demo["answered"]) == (15, 10, 5, 15)
    b_reasons = {r["attest_reason"] for r in lines if r["attest"] == "B"}
    assert len(b_reasons) == 1 and got["not_a_reasons"] == {b_reasons.pop(): 5}
    assert "total: 15 calls, 67% A" in report(cfg, "table")
    assert "<svg" in report(cfg, "html")
    assert report(cfg, "csv").startswith("kind,key,calls,A,B,C")


def test_no_record_of_a_completed_call_is_lost_to_kill_9(tmp_path: Path) -> None:
    """100 calls at 100 calls/s through two workers, then kill -9 of the whole service at
    once (records flushed every 60 s: none of them committed yet). After the restart the
    store has every record, once, and the CRM webhook gets every one (at least once)."""
    import os
    import signal
    import sqlite3
    import time

    from tests.service.test_webhooks import SECRET, Receiver

    receiver = Receiver(free_port())
    receiver.start()
    (tmp_path / "webhook.key").write_bytes(SECRET + b"\n")
    ports = Ports.pick()
    extra = signing_config(tmp_path, ports) + f"""
[records]
flush_interval = 60
webhook_url = "http://127.0.0.1:{receiver.port}/calls"
webhook_secret_file = "{tmp_path / 'webhook.key'}"
webhook_max_backoff = 1
"""
    cfg = write_config(tmp_path / "proxy.toml", ports, extra=extra, transport="workers = 2")
    svc = Service(cfg, ports.admin, tmp_path / "proxy.log")
    svc.start()
    assert svc.proc is not None
    try:
        with SippUas("uas.xml", ports.carrier_next_hop, tmp_path):
            done = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=100,
                           rate=100, caller="+12025550142")
            time.sleep(0.05)
            os.killpg(svc.proc.pid, signal.SIGKILL)
            svc.proc.wait(10)
    finally:
        svc.stop()
    assert done.successful == 100, done.output[-2000:]
    db = tmp_path / "inventory.db"
    with sqlite3.connect(db) as con:
        before = con.execute("SELECT count(*) FROM call_records").fetchone()[0]
    journals = sorted(p.name for p in tmp_path.glob("records-journal-*"))
    assert len(journals) == 2, journals  # one a worker, each holding its records
    svc = Service(cfg, ports.admin, tmp_path / "proxy2.log")
    svc.start()
    try:
        receiver.wait_for(100, 30)
        recovered = re.search(r'^stirshaken_io_events_total{event="records_recovered"} (\S+)',
                              scrape(ports.admin), re.M)
    finally:
        assert svc.stop() == 0
        receiver.stop()
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT id, data FROM call_records").fetchall()
    assert len(rows) == 100 and before < 100, (len(rows), before)
    assert all(json.loads(data)["status"] == 200 for _, data in rows)
    assert set(receiver.ids) == {i for i, _ in rows} and receiver.bad_signatures == 0
    assert recovered is not None and float(recovered.group(1)) == 100  # worker 0's + 1's
    assert not list(tmp_path.glob("records-journal-*.sealed-*"))
    assert "Traceback" not in svc.log()
