"""The running service (two workers) under a connection flood from one address at its REST and
admin ports: the flood gets its per-address share and no more, and the other clients get
their REST answers, /healthz and /readyz, and their SIP calls over TCP."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from stirshaken_proxy.io.rest import key_hash
from tests.service.conftest import requires_sipp
from tests.support import (
    HOST,
    Ports,
    SippUas,
    free_port,
    run_uac,
    running_service,
    scrape,
    signing_config,
    write_config,
)

pytestmark = [requires_sipp, pytest.mark.sipp]

KEY = "k-flood-test-0123"
FLOODER = "127.0.0.3"
PER_SOURCE = {"rest": 256, "admin": 32}  # the defaults
ATTEMPTS = 2000  # at each of the two ports


def _counter(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _flood(port: int, count: int, sockets: list[socket.socket]) -> None:
    for _ in range(count):
        s = socket.socket()
        s.bind((FLOODER, 0))
        s.setblocking(False)
        try:
            s.connect((HOST, port))
        except BlockingIOError:
            pass
        sockets.append(s)


def _sign(rest_port: int) -> int:
    body = json.dumps({"signingRequest": {
        "attest": "A", "dest": {"tn": ["12025550199"]}, "iat": int(time.time()),
        "orig": {"tn": "12025550142"}, "origid": "5f3f3f7a-4c1b-4d1e-9a37-0d2c9b6a1e01"}})
    request = urllib.request.Request(
        f"http://{HOST}:{rest_port}/stir/v1/signing", data=body.encode(), method="POST",
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as r:
        return int(r.status)


def _get(port: int, path: str) -> int:
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=5) as r:
        return int(r.status)


def test_a_connection_flood_from_one_address_takes_no_service_from_the_others(
        tmp_path: Path) -> None:
    ports = Ports.pick()
    rest_port = free_port()
    cfg = write_config(
        tmp_path / "p.toml", ports, carrier_transport="tcp", transport="workers = 2",
        extra=signing_config(tmp_path, ports, account_extra=f'api_keys = ["{key_hash(KEY)}"]')
        + f'\n[rest]\nlisten = "{HOST}:{rest_port}"\nheader_timeout = 30\n')
    sockets: list[socket.socket] = []
    with running_service(cfg, ports.admin, tmp_path / "proxy.log") as svc:
        try:
            refused = {}
            for name, port in (("rest", rest_port), ("admin", ports.admin)):
                counter = f'stirshaken_http_refused_total{{reason="per_source",server="{name}"}}'
                mine: list[socket.socket] = []
                for _ in range(ATTEMPTS // 100):  # in batches the listen backlog takes
                    _flood(port, 100, mine)
                    deadline = time.monotonic() + 8
                    while time.monotonic() < deadline:
                        seen = _counter(scrape(ports.admin), counter)
                        if seen >= len(mine) - PER_SOURCE[name]:
                            break
                        time.sleep(0.02)
                sockets += mine
                refused[name] = _counter(scrape(ports.admin), counter)
                # Other clients are served while the flood holds its connections.
                assert _sign(rest_port) == 200
                assert _get(ports.admin, "/healthz") == 200
                assert _get(ports.admin, "/readyz") == 200
            with SippUas("uas.xml", ports.carrier_next_hop, tmp_path, transport="t1"):
                ok = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=20,
                             rate=20, transport="t1")
            assert _sign(rest_port) == 200
        finally:
            for s in sockets:
                s.close()
        log = svc.log()
    # Every connection past the address's share was turned away as it came.
    assert refused["rest"] == ATTEMPTS - PER_SOURCE["rest"], refused
    assert refused["admin"] == ATTEMPTS - PER_SOURCE["admin"], refused
    assert ok.successful == 20 and ok.failed == 0, ok.output[-2000:]
    assert "Traceback" not in log
