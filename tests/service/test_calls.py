"""The real service between real SIPp UAs on 127.0.0.1 (RFC 3261 call flows through the proxy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.service.conftest import requires_sipp
from tests.support import Ports, Service, SippUas, free_port, run_uac, write_config

pytestmark = [requires_sipp, pytest.mark.sipp]


@pytest.mark.parametrize(
    ("uac", "uas", "calls"),
    [
        ("uac.xml", "uas.xml", 500),  # INVITE/100/180/200/ACK/BYE/200
        ("uac_cancel.xml", "uas_cancel.xml", 500),  # CANCEL before answer, 487, ACK hop by hop
        ("uac_busy.xml", "uas_busy.xml", 500),  # 486, ACK hop by hop
    ],
)
def test_outbound_call_flows_udp(tmp_path: Path, ports: Ports, service: Service, uac: str,
                                 uas: str, calls: int) -> None:
    with SippUas(uas, ports.carrier_next_hop, tmp_path):
        result = run_uac(uac, ports.dialer, free_port(), tmp_path, calls=calls, rate=200)
    assert result.successful == calls, result.output[-3000:]
    assert result.failed == 0


def test_inbound_calls_carrier_to_pbx(tmp_path: Path, ports: Ports, service: Service) -> None:
    with SippUas("uas.xml", ports.dialer_next_hop, tmp_path) as pbx:
        result = run_uac("uac.xml", ports.carrier, free_port(), tmp_path, calls=500, rate=200)
    assert result.successful == 500, result.output[-3000:]
    assert result.failed == 0
    # The PBX sees the proxy's double Record-Route, carrier-facing side below its own side.
    msgs = pbx.messages()
    assert (f"Record-Route: <sip:127.0.0.1:{ports.dialer};lr>\n"
            f"Record-Route: <sip:127.0.0.1:{ports.carrier};lr>") in msgs.replace("\r\n", "\n")


def test_calls_over_tcp(tmp_path: Path, ports: Ports, workers: int) -> None:
    cfg = write_config(tmp_path / "tcp.toml", ports, carrier_transport="tcp",
                       transport=f"workers = {workers}")
    svc = Service(cfg, ports.admin, tmp_path / "proxy.log")
    svc.start()
    try:
        with SippUas("uas.xml", ports.carrier_next_hop, tmp_path, transport="t1"):
            result = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=500, rate=200,
                             transport="t1")
    finally:
        assert svc.stop() == 0
    assert result.successful == 500, result.output[-3000:]
    assert result.failed == 0
    assert "Traceback" not in svc.log()


def test_unknown_dialer_source_is_refused(tmp_path: Path, ports: Ports) -> None:
    cfg = write_config(tmp_path / "p.toml", ports, dialer_sources='["127.0.0.2/32"]')
    svc = Service(cfg, ports.admin, tmp_path / "proxy.log")
    svc.start()
    try:
        with SippUas("uas.xml", ports.carrier_next_hop, tmp_path) as uas:
            result = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=5, rate=10,
                             time_limit=10)
    finally:
        svc.stop()
    assert result.successful == 0
    assert result.failed == 5
    assert "INVITE" not in uas.messages()
