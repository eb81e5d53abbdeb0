"""Operations: /metrics counts exactly what happened, SIGHUP reloads without dropping calls,
the dashboard and alert rules only use metrics the service exports."""

from __future__ import annotations

import base64
import json
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

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

pytestmark = [requires_sipp, pytest.mark.sipp]


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample (0 when it is not there)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_exactly_the_calls_placed(tmp_path: Path, workers: int) -> None:
    """With two workers the scrape is the sum of both (each owns about half the calls)."""
    ports = Ports.pick()
    cfg = write_config(tmp_path / "p.toml", ports, extra=signing_config(tmp_path, ports),
                       transport=f"workers = {workers}")
    with running_service(cfg, ports.admin, tmp_path / "proxy.log"):
        before = scrape(ports.admin)
        with SippUas("uas.xml", ports.carrier_next_hop, tmp_path):
            a = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=30, rate=30,
                        caller="+12025550142")
            b = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=20, rate=30,
                        caller="+13105550100")
        after = scrape(ports.admin)
    assert a.successful == 30 and b.successful == 20

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("stirshaken_calls_signed_total", account="demo", attest="A",
                 reason="owned_number") == 30
    assert delta("stirshaken_calls_signed_total", account="demo", attest="B",
                 reason="number_not_in_inventory") == 20
    assert delta("stirshaken_sip_requests_total", side="dialer", method="INVITE") == 50
    assert delta("stirshaken_sip_requests_total", side="dialer", method="BYE") == 50
    assert delta("stirshaken_sip_forwarded_total", side="carrier", method="INVITE") == 50
    assert delta("stirshaken_sign_seconds_count") == 50
    assert sample(after, "stirshaken_signing_certificate_expiry_seconds",
                  identity="default") > 300 * 86400


def test_sighup_reloads_without_dropping_calls(tmp_path: Path, workers: int) -> None:
    """With two workers, worker 0 passes the SIGHUP on: calls owned by either are signed A."""
    ports = Ports.pick()
    cfg = write_config(tmp_path / "p.toml", ports, extra=signing_config(tmp_path, ports),
                       transport=f"workers = {workers}")
    with running_service(cfg, ports.admin, tmp_path / "proxy.log") as svc:
        assert svc.proc is not None
        with SippUas("uas.xml", ports.carrier_next_hop, tmp_path) as uas:
            # Calls are up (500 ms hold) while the configuration changes under them:
            # +1 310 555 0100 becomes the account's number.
            # Three reloads while 200 calls a second arrive: the signer is replaced each time.
            def reload_soon() -> None:
                time.sleep(0.8)
                cfg.write_text(cfg.read_text().replace(
                    'numbers = ["+1 202 555 0100..0199"]',
                    'numbers = ["+1 202 555 0100..0199", "+1 310 555 0100"]'))
                for _ in range(3):
                    assert svc.proc is not None
                    svc.proc.send_signal(signal.SIGHUP)
                    time.sleep(0.4)

            t = threading.Thread(target=reload_soon)
            t.start()
            during = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=600, rate=200,
                             caller="+13105550100", hold_ms=500)
            t.join()
            time.sleep(0.5)
            after = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=10, rate=10,
                            caller="+13105550100")
        msgs = uas.messages()
    assert during.successful == 600 and during.failed == 0, during.output[-2000:]
    assert after.successful == 10
    # No INVITE slipped through unsigned while the signer was being replaced.
    invites = re.findall(r"^INVITE .*?\r?\n\r?\n", msgs, re.MULTILINE | re.DOTALL)
    assert len(invites) >= 610
    assert all("\nIdentity: " in invite for invite in invites)
    attests = re.findall(r"^Identity: [^.]+\.([^.]+)\.", msgs, re.MULTILINE)
    for claims in attests[-10:]:
        last = json.loads(base64.urlsafe_b64decode(claims + "==="))
        assert last["attest"] == "A" and last["orig"] == {"tn": "13105550100"}


def _base(name: str) -> str:
    return re.sub(r"_(total|bucket|sum|count|created)$", "", name)


def exported_names(text: str) -> set[str]:
    """Metric names in a scrape, without the sample suffixes (# TYPE says x_total for a
    counter x)."""
    return {_base(line.split()[2]) for line in text.splitlines() if line.startswith("# TYPE ")}


def referenced(expr: str) -> set[str]:
    return {_base(n) for n in re.findall(r"\bstirshaken_[a-z0-9_]+", expr)}


def _request(method: str, n: int, port: int, *, caller: str = "+12025550142",
             extra: str = "") -> bytes:
    return (f"{method} sip:+12025550199@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-ops-{n}\r\n"
            f"From: <sip:{caller}@127.0.0.1>;tag=o{n}\r\nTo: <sip:+12025550199@127.0.0.1>\r\n"
            f"Call-ID: ops-{n}\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n{extra}"
            "Content-Length: 0\r\n\r\n").encode()


def test_dashboard_and_alerts_use_exported_metrics(tmp_path: Path) -> None:
    """Each kind of traffic once through the real service, then every query's metric must
    be in the scrape."""
    ports = Ports.pick()
    keys = tmp_path / "keys"
    extra = signing_config(tmp_path, ports) + f"""
[verify]
trust_anchors = ["{keys / 'ca.pem'}"]
allow_networks = ["127.0.0.1/32"]
allow_http = true
allowed_ports = [{ports.admin}]
"""
    cfg = write_config(tmp_path / "p.toml", ports, extra=extra)
    with running_service(cfg, ports.admin, tmp_path / "proxy.log"), \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
        x5u = f"http://{HOST}:{ports.admin}/certs/shaken.pem"
        signed = subprocess.run(
            ["secsipidx", "-sign-full", "-k", str(keys / "key.pem"), "-x5u", x5u, "-a", "A",
             "-o", "12025550142", "-d", "12025550199", "-orig-id",
             "5f3f3f7a-4c1b-4d1e-9a37-0d2c9b6a1e01", "-iat", str(int(time.time()))],
            capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        for data, side in [
            (_request("INVITE", 1, port), ports.dialer),  # signed A
            (_request("INVITE", 2, port, caller="anonymous"), ports.dialer),  # unsigned
            (_request("INVITE", 3, port, extra="Date: Sat, 01 Jan 2000 00:00:00 GMT\r\n"),
             ports.dialer),  # refused: stale Date
            (b"\x00garbage", ports.dialer),  # malformed, dropped
            (_request("INVITE", 4, port, extra=f"Identity: {signed}\r\n"), ports.carrier),
        ]:
            s.sendto(data, (HOST, side))
        time.sleep(1.5)  # the carrier-side INVITE waits for its x5u fetch
        names = exported_names(scrape(ports.admin))
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/stirshaken.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 8
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    missing = {n for e in exprs for n in referenced(e)} - names
    assert missing == set(), missing
