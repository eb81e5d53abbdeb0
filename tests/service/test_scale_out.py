"""Several instances sharing one inventory in PostgreSQL: an import on one is used by all
within a second; the store lost while running (the last inventory keeps serving, /readyz says
degraded, back when it returns); unreachable at start (a clear error, no traceback)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import Postgres, have_postgres
from tests.service.conftest import requires_sipp
from tests.support import (
    HOST,
    ROOT,
    Ports,
    SippUas,
    free_port,
    run_uac,
    running_service,
    scrape,
    signing_config,
    write_config,
)

pytestmark = pytest.mark.skipif(not have_postgres(), reason="PostgreSQL not installed")


def instance_config(tmp: Path, name: str, ports: Ports, url: str) -> Path:
    extra = signing_config(tmp, ports, numbers="[]").replace(
        f'path = "{tmp / "inventory.db"}"', f'url = "{url}"\ninstance = "{name}"')
    return write_config(tmp / f"{name}.toml", ports, extra=extra)


def inventory_version(port: int) -> int:
    found = re.search(r"^stirshaken_inventory_version (\d+)", scrape(port), re.MULTILINE)
    return int(found.group(1)) if found else -1


def readyz(port: int) -> tuple[int, dict[str, bool]]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/readyz", timeout=5) as r:
            return r.status, json.loads(r.read())["checks"]
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["checks"]


@pytest.fixture
def pg() -> Iterator[Postgres]:
    with Postgres() as server:
        yield server


@requires_sipp
@pytest.mark.sipp
def test_instances_share_the_inventory(tmp_path: Path, pg: Postgres) -> None:
    url = pg.create_database("inv")
    a, b = Ports.pick(), Ports.pick()
    cfg_a = instance_config(tmp_path, "a", a, url)
    cfg_b = instance_config(tmp_path, "b", b, url)
    with running_service(cfg_a, a.admin, tmp_path / "a.log"), \
            running_service(cfg_b, b.admin, tmp_path / "b.log"):
        assert inventory_version(a.admin) == inventory_version(b.admin) == 0
        csv = tmp_path / "numbers.csv"
        csv.write_text("tn,account\n+1 202 555 0142,demo\n")
        out = subprocess.run([sys.executable, "-m", "stirshaken_proxy", "numbers", "import",
                              "--config", str(cfg_a), str(csv)], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        imported = time.monotonic()
        seen = {}
        while len(seen) < 2 and time.monotonic() - imported < 5:
            for name, ports in (("a", a), ("b", b)):
                if name not in seen and inventory_version(ports.admin) == 1:
                    seen[name] = time.monotonic() - imported
            time.sleep(0.02)
        assert set(seen) == {"a", "b"} and max(seen.values()) < 1.0, seen
        # a call through the other instance is signed A from the imported number
        with SippUas("uas.xml", b.carrier_next_hop, tmp_path) as uas:
            result = run_uac("uac.xml", b.dialer, free_port(), tmp_path, calls=1, rate=1,
                             caller="+12025550142")
        assert result.successful == 1
        assert [c["attest"] for c in _claims(uas.messages())] == ["A"]


def _claims(messages: str) -> list[dict[str, object]]:
    import base64

    out = []
    for value in re.findall(r"^Identity: (.*)$", messages, re.MULTILINE):
        payload = value.split(".")[1]
        out.append(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
    return out


def test_store_lost_while_running_then_back(tmp_path: Path, pg: Postgres) -> None:
    url = pg.create_database("inv")
    ports = Ports.pick()
    cfg = instance_config(tmp_path, "a", ports, url)
    with running_service(cfg, ports.admin, tmp_path / "a.log") as svc:
        assert readyz(ports.admin) == (200, readyz(ports.admin)[1])
        pg.stop()
        deadline = time.monotonic() + 10
        while readyz(ports.admin)[0] == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        status, checks = readyz(ports.admin)
        assert status == 503 and checks["store"] is False and checks["keys"] is True
        assert "number store unreachable, serving the last inventory" in svc.log()
        pg.restart()
        deadline = time.monotonic() + 15
        while readyz(ports.admin)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert readyz(ports.admin)[0] == 200


def test_store_unreachable_at_start(tmp_path: Path) -> None:
    ports = Ports.pick()
    port = free_port()
    cfg = instance_config(tmp_path, "a", ports,
                          f"postgresql://app:secret@{HOST}:{port}/inv")
    out = subprocess.run([sys.executable, "-m", "stirshaken_proxy", "run", "--config",
                          str(cfg)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 4, out.stderr
    assert f"postgresql://app:***@{HOST}:{port}/inv: cannot connect to PostgreSQL" in \
        out.stderr and "Traceback" not in out.stderr and "secret" not in out.stderr
