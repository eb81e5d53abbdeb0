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
    scrape,
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


@pytest.mark.parametrize(("per_source", "table", "admitted"),
                         [(32, 1024, 32), (5000, 300, 300 - 128)])
def test_idle_tcp_connections_from_one_address_leave_room(tmp_path: Path, per_source: int,
                                                          table: int, admitted: int) -> None:
    """1,100 idle TCP connections from 127.0.0.2 (a source the configuration does not list):
    at most max_tcp_per_source of them, never the room kept for listed sources, closed when
    they send nothing; every one turned away is counted; the trusted dialer's TCP calls go
    through meanwhile."""
    ports = Ports.pick()
    cfg = write_config(tmp_path / "p.toml", ports, carrier_transport="tcp", transport=f"""
max_tcp_per_source = {per_source}
max_tcp_connections = {table}
tcp_first_message_timeout = 12
""")
    refused = "tcp_refused_per_source" if per_source == 32 else "tcp_refused"
    open_gauge = 'stirshaken_tcp_connections{side="dialer",transport="tcp"}'
    refused_counter = f'stirshaken_io_events_total{{event="{refused}"}}'
    sockets: list[socket.socket] = []
    with running_service(cfg, ports.admin, tmp_path / "proxy.log") as svc:
        try:
            # In batches of 50, each let in (admitted or refused) before the next: the listen
            # backlog would otherwise drop SYNs and let the rest in over tens of seconds.
            for _ in range(22):
                for _ in range(50):
                    s = socket.socket()
                    s.bind(("127.0.0.2", 0))
                    s.setblocking(False)
                    try:
                        s.connect((HOST, ports.dialer))
                    except BlockingIOError:
                        pass
                    sockets.append(s)
                deadline = time.monotonic() + 8  # past two SYN retries
                while True:
                    metrics = scrape(ports.admin)
                    seen = _gauge(metrics, open_gauge) + _gauge(metrics, refused_counter)
                    if seen >= len(sockets) or time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
            open_now = _gauge(metrics, open_gauge)
            turned_away = _gauge(metrics, refused_counter)
            with SippUas("uas.xml", ports.carrier_next_hop, tmp_path, transport="t1"):
                ok = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=50,
                             rate=50, transport="t1")
            deadline = time.monotonic() + 20  # past tcp_first_message_timeout
            while time.monotonic() < deadline:
                later = scrape(ports.admin)
                if _gauge(later, open_gauge) == 0:
                    break
                time.sleep(0.5)
        finally:
            for s in sockets:
                s.close()
        log = svc.log()
    assert open_now == admitted, metrics
    assert turned_away == 1100 - admitted, metrics
    assert ok.successful == 50 and ok.failed == 0, ok.output[-2000:]
    assert _gauge(later, 'stirshaken_io_events_total{event="tcp_silent_closed"}') >= admitted
    assert "Traceback" not in log


def _gauge(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
