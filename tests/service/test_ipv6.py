"""Calls over IPv6 on ::1: SIPp dialer -> service (UDP, then TCP) -> SIPp carrier, signed."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from stirshaken_proxy.stir.passport import decode_passport
from tests.service.conftest import requires_sipp
from tests.support import SCENARIOS, Ports, free_port, running_service, scrape, signing_config, write_config

V6 = "::1"


def free_port6() -> int:
    """A port free for both UDP and TCP on ::1."""
    return free_port(V6)


def have_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind((V6, 0))
    except OSError:
        return False
    return True


pytestmark = [requires_sipp, pytest.mark.sipp,
              pytest.mark.skipif(not have_ipv6(), reason="no ::1 on this machine")]


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_calls_over_ipv6_are_signed(tmp_path: Path, transport: str) -> None:
    import subprocess

    ports = Ports(*(free_port6() for _ in range(4)), admin=Ports.pick().admin)
    uac, uas = free_port6(), free_port6()
    tcp = "tcp" if transport == "t1" else "udp"
    extra = signing_config(tmp_path, ports, sources='["::1/128"]')
    cfg = write_config(tmp_path / "proxy.toml", ports, extra=extra, carrier_transport=tcp,
                       dialer_sources='["::1/128"]')
    text = cfg.read_text().replace(f'"127.0.0.1:{ports.dialer}"', f'"[::1]:{ports.dialer}"')
    text = text.replace(f'"127.0.0.1:{ports.carrier}"', f'"[::1]:{ports.carrier}"')
    text = text.replace(f'"127.0.0.1:{ports.carrier_next_hop}"', f'"[::1]:{uas}"')
    text = text.replace(f'"127.0.0.1:{ports.dialer_next_hop}"',
                        f'"[::1]:{ports.dialer_next_hop}"')
    cfg.write_text(text)
    with running_service(cfg, ports.admin, tmp_path / "proxy.log") as svc:
        uas_proc = subprocess.Popen(
            ["sipp", "-sf", str(SCENARIOS / "uas.xml"), "-i", V6, "-p", str(uas), "-t", transport,
             "-nostdin", "-timeout", "60s", "-m", "10", "-trace_msg", "-message_file",
             str(tmp_path / "uas-msg.log")], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, cwd=tmp_path)
        try:
            done = subprocess.run(
                ["sipp", f"[::1]:{ports.dialer}", "-sf", str(SCENARIOS / "uac.xml"), "-i", V6,
                 "-p", str(uac), "-t", transport, "-s", "12025550199", "-key", "caller",
                 "12025550100", "-d", "50", "-m", "10", "-r", "10", "-nostdin",
                 "-timeout", "60s", "-timeout_error"],
                capture_output=True, cwd=tmp_path, timeout=90, check=False)
        finally:
            uas_proc.wait(30)
        assert done.returncode == 0, done.stdout.decode()[-2000:] + svc.log()
        msgs = (tmp_path / "uas-msg.log").read_text(errors="replace")
        vias = re.findall(r"^Via: SIP/2.0/(\w+) (\S+?);", msgs, re.M)
        assert (tcp.upper(), f"[::1]:{ports.carrier}") in vias
        assert f"<sip:[::1]:{ports.carrier}" in msgs  # Record-Route in bracket form
        tokens = re.findall(r"^Identity: ([^;\r\n]+)", msgs, re.M)
        assert len(tokens) == 10
        assert {decode_passport(t).claims["attest"] for t in tokens} == {"A"}
        assert 'stirshaken_sip_requests_total{method="INVITE",side="dialer"} 10.0' in \
            scrape(ports.admin)
