"""The running service on each SIP core: calls signed and answered the same, the core named
at start, in /readyz and in the metrics."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from stirshaken_proxy.sip.message import compiled_available
from tests.service.conftest import requires_sipp
from tests.support import (
    HOST,
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


def started(tmp_path: Path, core: str) -> tuple[Ports, Service]:
    """The service signing calls, with ``[sip] core`` set to ``core``, started."""
    ports = Ports.pick()
    cfg = write_config(tmp_path / "proxy.toml", ports, sip=f'core = "{core}"',
                       extra=signing_config(tmp_path, ports))
    svc = Service(cfg, ports.admin, tmp_path / "proxy.log")
    svc.start()
    return ports, svc


def named_in_readyz(ports: Ports) -> tuple[str, str]:
    """The SIP core and the engine's form, as /readyz names them."""
    with urllib.request.urlopen(f"http://{HOST}:{ports.admin}/readyz", timeout=5) as r:
        ready = json.load(r)
    return ready["core"], ready["engine"]


@pytest.mark.parametrize("core", ["python", "compiled"])
def test_calls_through_each_core(tmp_path: Path, core: str) -> None:
    if core == "compiled" and not compiled_available():
        pytest.skip("the compiled core is not built in this install")
    ports, svc = started(tmp_path, core)
    try:
        # The engine runs as the core says: compiled by mypyc with the compiled core, from its
        # source with the Python one (the service restarts itself on it: STIRSHAKEN_CORE).
        assert named_in_readyz(ports) == (core, core)
        assert f'stirshaken_sip_core_info{{core="{core}",engine="{core}"}} 1.0' in \
            scrape(ports.admin)
        with SippUas("uas.xml", ports.carrier_next_hop, tmp_path) as uas:
            result = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=20, rate=20,
                             caller="+12025550142")
        assert result.successful == 20 and result.failed == 0
        signed = [line for line in scrape(ports.admin).splitlines()
                  if line.startswith("stirshaken_calls_signed_total{") and 'attest="A"' in line]
        assert len(signed) == 1 and signed[0].endswith(" 20.0")
        identities = [line for line in uas.messages().splitlines()
                      if line.startswith("Identity: ")]
        assert len(identities) == 20
    finally:
        assert svc.stop() == 0
    if core == "python":  # said at start, at the level the tests log (warning)
        assert "SIP core: Python; it takes more CPU per call (README, performance)" in svc.log()


def test_the_environment_runs_the_engine_from_its_source(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """STIRSHAKEN_CORE=python with the compiled core configured: the C modules in use, the
    engine from its source, and the start log says why."""
    if not compiled_available():
        pytest.skip("the compiled core is not built in this install")
    monkeypatch.setenv("STIRSHAKEN_CORE", "python")
    ports, svc = started(tmp_path, "compiled")
    try:
        assert named_in_readyz(ports) == ("compiled", "python")
    finally:
        assert svc.stop() == 0
    assert "SIP core: compiled (C); engine: Python (STIRSHAKEN_CORE=python)" in svc.log()
