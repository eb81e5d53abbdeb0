"""Call records to a CRM webhook, with a real HTTP receiver on 127.0.0.1: every record
arrives (at least once, each with its id) after the receiver was down for 10 s and after the
service restarts; every delivery's HMAC-SHA256 signature verifies."""

from __future__ import annotations

import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from stirshaken_proxy.io.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature
from tests.service.conftest import requires_sipp
from tests.support import (
    HOST,
    Ports,
    Service,
    SippUas,
    free_port,
    run_uac,
    signing_config,
    write_config,
)

pytestmark = [requires_sipp, pytest.mark.sipp]
SECRET = b"crm-webhook-secret-0123456789"


class Receiver:
    """The CRM's endpoint: records by id, and whether each delivery's signature held."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ids: dict[str, int] = {}
        self.bad_signatures = 0
        self.deliveries = 0
        self.httpd: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stamp = self.headers.get(TIMESTAMP_HEADER, "")
                if not hmac.compare_digest(self.headers.get(SIGNATURE_HEADER, ""),
                                           signature(SECRET, stamp, body)):
                    receiver.bad_signatures += 1
                receiver.deliveries += 1
                for record in json.loads(body)["records"]:
                    receiver.ids[record["id"]] = receiver.ids.get(record["id"], 0) + 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        ThreadingHTTPServer.allow_reuse_address = True
        self.httpd = ThreadingHTTPServer((HOST, self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        assert self.httpd is not None
        self.httpd.shutdown()
        self.httpd.server_close()

    def wait_for(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ids) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(self.ids) >= count, (len(self.ids), count)


def test_every_record_arrives_after_an_outage_and_a_restart(tmp_path: Path) -> None:
    receiver = Receiver(free_port())
    receiver.start()
    (tmp_path / "webhook.key").write_bytes(SECRET + b"\n")
    ports = Ports.pick()
    extra = signing_config(tmp_path, ports) + f"""
[records]
flush_interval = 0.2
webhook_url = "http://{HOST}:{receiver.port}/calls"
webhook_secret_file = "{tmp_path / 'webhook.key'}"
webhook_max_backoff = 2
"""
    cfg = write_config(tmp_path / "proxy.toml", ports, extra=extra)

    def calls(n: int) -> None:
        result = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=n, rate=10)
        assert result.successful == n, result.output

    with SippUas("uas.xml", ports.carrier_next_hop, tmp_path, time_limit=180):
        svc = Service(cfg, ports.admin, tmp_path / "proxy.log")
        svc.start()
        try:
            calls(5)
            receiver.wait_for(5, 15)
            receiver.stop()  # the CRM is down for 10 s
            calls(5)
            time.sleep(10)
            assert len(receiver.ids) == 5
            receiver.start()
            receiver.wait_for(10, 20)
            receiver.stop()  # down again: these 3 can only arrive after the restart
            calls(3)
        finally:
            assert svc.stop() == 0  # the last records are written to the outbox at the stop
        assert len(receiver.ids) == 10
        receiver.start()
        svc = Service(cfg, ports.admin, tmp_path / "proxy2.log")
        svc.start()
        try:
            receiver.wait_for(13, 20)
        finally:
            assert svc.stop() == 0
    receiver.stop()
    assert len(receiver.ids) == 13 and receiver.bad_signatures == 0
    assert "Traceback" not in svc.log()
