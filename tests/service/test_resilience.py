"""Loss, crashes and floods: calls complete under 10% loss, a kill -9 loses nothing stored,
and a flood from one untrusted address is banned while trusted traffic flows."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
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
    running_service,
    signing_config,
    write_config,
)

pytestmark = [requires_sipp, pytest.mark.sipp]


def test_calls_complete_under_ten_percent_loss(tmp_path: Path) -> None:
    """The dialer's SIPp loses 10% of the messages it sends and receives (its -lost): the
    proxy absorbs retransmitted requests, answers them again, and relays retransmitted
    finals, so every call completes. (Loss on the UAS side is not used: SIPp's UAS aborts a
    call when a retransmitted INVITE reaches it after its 200, where RFC 3261 §13.3.1.4 has
    the UAS send the 2xx again.)"""
    ports = Ports.pick()
    cfg = write_config(tmp_path / "p.toml", ports)
    with running_service(cfg, ports.admin, tmp_path / "proxy.log") as svc:
        with SippUas("uas.xml", ports.carrier_next_hop, tmp_path):
            result = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=100,
                             rate=20, extra=("-lost", "10", "-recv_timeout", "60000"))
    assert result.successful == 100 and result.failed == 0, result.output[-3000:]
    assert result.retransmissions > 0  # loss really happened
    assert "Traceback" not in svc.log()


def test_kill_9_under_load_loses_no_inventory(tmp_path: Path) -> None:
    ports = Ports.pick()
    cfg = write_config(tmp_path / "p.toml", ports, extra=signing_config(tmp_path, ports))
    csv = tmp_path / "numbers.csv"
    csv.write_text("tn,account,label\n+1 310 555 0000..0999,demo,west\n")
    subprocess.run([sys.executable, "-m", "stirshaken_proxy", "numbers", "import", "--config",
                    str(cfg), str(csv)], check=True, cwd=ROOT, capture_output=True, timeout=60)
    svc = Service(cfg, ports.admin, tmp_path / "proxy.log")
    svc.start()
    assert svc.proc is not None
    with SippUas("uas.xml", ports.carrier_next_hop, tmp_path):
        killer = threading.Timer(2.0, lambda: os.kill(svc.proc.pid, signal.SIGKILL))  # type: ignore[union-attr]
        killer.start()
        run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=400, rate=100,
                caller="+13105550123", time_limit=20)
        killer.join()
        assert svc.proc.wait(5) == -signal.SIGKILL
        svc.stop()
        listed = subprocess.run([sys.executable, "-m", "stirshaken_proxy", "numbers", "list",
                                 "--config", str(cfg)], capture_output=True, text=True,
                                cwd=ROOT, timeout=60, check=True).stdout
        assert "13105550000..13105550999\tdemo\twest" in listed
        svc2 = Service(cfg, ports.admin, tmp_path / "proxy2.log")
        svc2.start()
        try:
            after = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=20, rate=20,
                            caller="+13105550123")
        finally:
            svc2.stop()
    assert after.successful == 20 and after.failed == 0


def _invite(n: int, port: int) -> bytes:
    return (f"INVITE sip:+12025550199@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.2:{port};branch=z9hG4bK-flood-{n}\r\n"
            f"From: <sip:+12025550100@127.0.0.2>;tag=f{n}\r\nTo: <sip:+12025550199@127.0.0.1>\r\n"
            f"Call-ID: flood-{n}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def test_flood_from_an_untrusted_address_is_banned(tmp_path: Path) -> None:
    """5,000 INVITEs with unique Call-IDs from 127.0.0.2 to the carrier side (which admits any
    source): the source is banned after its burst, the transaction table stays small, and
    calls from the trusted dialer trunk still complete."""
    ports = Ports.pick()
    cfg = write_config(tmp_path / "p.toml", ports, extra="""
[flood]
requests_per_second = 20
burst = 40
ban_seconds = 30
""")
    with running_service(cfg, ports.admin, tmp_path / "proxy.log"), \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.2", 0))
        port = s.getsockname()[1]
        for n in range(5000):
            s.sendto(_invite(n, port), (HOST, ports.carrier))
            if n % 100 == 99:
                time.sleep(0.005)  # paced, so the kernel's socket buffer keeps up
        time.sleep(0.5)
        with urllib.request.urlopen(f"http://{HOST}:{ports.admin}/metrics") as r:
            metrics = r.read().decode()

        def value(prefix: str) -> float:
            return next(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                        if line.startswith(prefix))

        received = value('stirshaken_sip_requests_total{method="INVITE",side="carrier"}')
        dropped = value('stirshaken_sip_dropped_total{reason="flood"}')
        transactions = value("stirshaken_sip_transactions ")
        assert received >= 4000
        assert dropped >= received - 45  # the burst of 40 (and a token or two) got through
        assert transactions <= 2 * 41  # a server and a client transaction per admitted INVITE
        with SippUas("uas.xml", ports.carrier_next_hop, tmp_path):
            ok = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=50, rate=50)
        assert ok.successful == 50
