from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Ports, Service, have_sipp, write_config

requires_sipp = pytest.mark.skipif(not have_sipp(), reason="sipp (Debian sip-tester) not installed")


@pytest.fixture
def ports() -> Ports:
    return Ports.pick()


@pytest.fixture(params=[1, 2], ids=["1worker", "2workers"])
def workers(request: pytest.FixtureRequest) -> int:
    """Every call flow runs through one process and through two workers sharing the ports."""
    return int(request.param)


@pytest.fixture
def service(tmp_path: Path, ports: Ports, workers: int) -> Iterator[Service]:
    cfg = write_config(tmp_path / "proxy.toml", ports, transport=f"workers = {workers}")
    svc = Service(cfg, ports.admin, tmp_path / "proxy.log")
    svc.start()
    yield svc
    rc = svc.stop()
    assert rc == 0, svc.log()
    assert "Traceback" not in svc.log(), svc.log()
