"""Several instances sharing one inventory in PostgreSQL: an import on one is used by all
within a second; the store lost while running (the last inventory keeps serving, /readyz says
degraded, back when it returns); unreachable at start (a clear error, no traceback)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.servers import Postgres, Redis, have_postgres
from tests.service.conftest import requires_sipp
from tests.support import (
    HOST,
    ROOT,
    Ports,
    SippResult,
    SippUas,
    free_port,
    run_uac,
    running_service,
    scrape,
    signing_config,
    with_credential,
    write_config,
)

needs_postgres = pytest.mark.skipif(not have_postgres(), reason="PostgreSQL not installed")


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


@needs_postgres
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


@needs_postgres
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


def _shared_config(tmp: Path, name: str, ports: Ports, redis_url: str, limit: int) -> Path:
    folder = tmp / name
    folder.mkdir(exist_ok=True)
    extra = signing_config(folder, ports, numbers='["+1 202 555 0100..0109"]',
                           account_extra='local_presence = "always"')
    extra += f'\n[health]\nredis = "{redis_url}"\nmax_calls_per_hour = {limit}\n'
    extra = extra.replace("[store]", f'[store]\ninstance = "{name}"', 1)
    return write_config(folder / "proxy.toml", ports, extra=extra)


def _presented(messages: str) -> Counter[str]:
    """The calling number signed in every INVITE the carrier received."""
    return Counter(str(c["orig"]["tn"]) for c in _claims(messages))  # type: ignore[index]


def _health(port: int) -> dict[str, int]:
    with urllib.request.urlopen(with_credential(f"http://{HOST}:{port}/numbers/health"),
                                timeout=5) as r:
        return {row["tn"]: row["calls_last_hour"] for row in json.loads(r.read())}


def _both(tmp: Path, a: Ports, b: Ports, calls: int, rate: int) -> list[SippResult]:
    results: list[SippResult] = []

    def one(ports: Ports) -> None:
        results.append(run_uac("uac.xml", ports.dialer, free_port(), tmp, calls=calls,
                               rate=rate, caller="+12025550142", time_limit=120))

    threads = [threading.Thread(target=one, args=(p,)) for p in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@requires_sipp
@pytest.mark.sipp
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_no_number_over_its_limit_across_instances(tmp_path: Path) -> None:
    """Two instances sharing number health in Redis, each asked for 200 local-presence calls
    at once: ten numbers of 30 calls an hour give exactly 300, never a 31st from a number."""
    with Redis() as redis:  # bound before the instances' ports are picked
        a = Ports.pick()
        b = replace(Ports.pick(), carrier_next_hop=a.carrier_next_hop)
        cfg_a = _shared_config(tmp_path, "a", a, redis.url, 30)
        cfg_b = _shared_config(tmp_path, "b", b, redis.url, 30)
        with running_service(cfg_a, a.admin, tmp_path / "a.log"), \
                running_service(cfg_b, b.admin, tmp_path / "b.log"), \
                SippUas("uas.xml", a.carrier_next_hop, tmp_path) as uas:
            results = _both(tmp_path, a, b, calls=200, rate=40)
            messages = uas.messages()
            metrics = scrape(a.admin)
    presented = _presented(messages)
    assert sum(r.successful for r in results) == 300, [r.output[-800:] for r in results]
    assert sum(r.failed for r in results) == 100  # 503 Caller ID Pool Exhausted
    assert presented == {f"1202555010{n}": 30 for n in range(10)}, presented
    assert re.search(r'io_events_total\{event="shared_health_picks"\} [1-9]', metrics)
    assert "stirshaken_shared_health_up 1.0" in metrics


@requires_sipp
@pytest.mark.sipp
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_redis_stopped_and_restarted_under_load(tmp_path: Path) -> None:
    with Redis() as redis:  # bound before the instances' ports are picked
        a = Ports.pick()
        b = replace(Ports.pick(), carrier_next_hop=a.carrier_next_hop)
        cfg_a = _shared_config(tmp_path, "a", a, redis.url, 50)
        cfg_b = _shared_config(tmp_path, "b", b, redis.url, 50)
        with running_service(cfg_a, a.admin, tmp_path / "a.log") as svc_a, \
                running_service(cfg_b, b.admin, tmp_path / "b.log") as svc_b, \
                SippUas("uas.xml", a.carrier_next_hop, tmp_path) as uas:

            def outage() -> None:
                time.sleep(5)
                redis.stop()
                time.sleep(5)
                redis.start_on_same_port()

            cut = threading.Thread(target=outage)
            cut.start()
            results = _both(tmp_path, a, b, calls=150, rate=10)
            cut.join()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _health(a.admin) != _health(b.admin):
                time.sleep(0.2)
            health_a, health_b = _health(a.admin), _health(b.admin)
            messages = uas.messages()
            down = scrape(a.admin)
            alive = svc_a.proc is not None and svc_a.proc.poll() is None and \
                svc_b.proc is not None and svc_b.proc.poll() is None
            logs = svc_a.log() + svc_b.log()
    assert alive, logs[-2000:]
    assert sum(r.successful for r in results) == 300 and all(r.failed == 0 for r in results)
    invites = len(re.findall(r"^INVITE ", messages, re.MULTILINE))
    assert invites == 300 == len(re.findall(r"^Identity: ", messages, re.MULTILINE))
    assert "unreachable" in logs and "is back" in logs
    assert re.search(r'io_events_total\{event="shared_health_local_picks"\} [1-9]', down)
    # after it is back, both instances' replicas agree, and on every call placed
    assert health_a == health_b, (health_a, health_b)
    assert sum(health_a.values()) == 300
