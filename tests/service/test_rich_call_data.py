"""Branded and diverted calls through two running services: A signs (its account's brand,
set with the CLI, logo fetched and digested; the dialer's call reason), B verifies (x5u from
A, the logo from an HTTPS server, rcdi checked) and the PBX gets the verified name and logo.
secsipidx checks the signatures; a diverted call's shaken and div headers both verify."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stirshaken_proxy.stir.passport import decode_passport
from stirshaken_proxy.stir.rcd import integrity
from tests.https_server import CertServer, Route
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
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stirshaken_proxy.cli", *args],
                          capture_output=True, text=True, timeout=60, check=False)


@dataclass
class Pair:
    a: Ports
    b: Ports
    a_cfg: Path
    logo: str
    pbx: int
    keys: Path
    logos: CertServer
    dead_port: int  # allowed, nothing listens there


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    logos = CertServer(tmp_path, {"/acme.png": Route(body=PNG, headers=(
        ("Content-Type", "image/png"), ("Cache-Control", "max-age=600"))),
        "/page.html": Route(body=b"<html>", headers=(("Content-Type", "text/html"),)),
        "/big.png": Route(body=PNG * 40, headers=(("Content-Type", "image/png"),)),
        "/changing.png": Route(body=PNG, headers=(("Content-Type", "image/png"),))})
    with logos:
        logo_port = logos.port
        a, b = Ports.pick(), Ports.pick()
        pbx, dead = free_port(), free_port()
        a_dir, b_dir = tmp_path / "a", tmp_path / "b"
        a_dir.mkdir()
        b_dir.mkdir()
        fetch_rules = f"""
allow_networks = ["127.0.0.1/32"]
allowed_ports = [443, {logo_port}, {dead}]
tls_ca_file = "{logos.ca_file}"
"""
        # A signs; its [verify] rules are the ones the CLI fetches the logo under.
        a_extra = signing_config(a_dir, a) + f"""
[verify]
trust_anchors = ["{a_dir / 'keys' / 'ca.pem'}"]
{fetch_rules}"""
        a_cfg = write_config(a_dir / "proxy.toml", a, extra=a_extra)
        a_cfg.write_text(a_cfg.read_text().replace(
            f'next_hop = "{HOST}:{a.carrier_next_hop}"', f'next_hop = "{HOST}:{b.carrier}"'))
        b_extra = f"""
[verify]
trust_anchors = ["{a_dir / 'keys' / 'ca.pem'}"]
allow_http = true
{fetch_rules.replace(f"{dead}]", f"{dead}, {a.admin}]")}"""
        b_cfg = write_config(b_dir / "proxy.toml", b, extra=b_extra)
        b_cfg.write_text(b_cfg.read_text().replace(
            f'next_hop = "{HOST}:{b.dialer_next_hop}"', f'next_hop = "{HOST}:{pbx}"'))
        logo = f"https://127.0.0.1:{logo_port}/acme.png"
        with running_service(a_cfg, a.admin, a_dir / "proxy.log"), \
                running_service(b_cfg, b.admin, b_dir / "proxy.log"):
            yield Pair(a=a, b=b, a_cfg=a_cfg, logo=logo, pbx=pbx, keys=a_dir / "keys",
                       logos=logos, dead_port=dead)


def secsipidx_ok(value: str, keys: Path) -> bool:
    proc = subprocess.run(
        ["secsipidx", "-c", "-identity", value, "-p", str(keys / "cert.pem"),
         "-ca-file", str(keys / "ca.pem"), "-ca-inter", str(keys / "ca.pem"),
         "-cert-verify", "7", "-expire", "600"],
        capture_output=True, text=True, timeout=30, check=False)
    return proc.returncode == 0


def test_branded_calls_reach_the_pbx_with_the_verified_name_and_logo(
        pair: Pair, tmp_path: Path) -> None:
    done = cli("brands", "set", "--config", str(pair.a_cfg), "--account", "demo",
               "--name", 'Acme "Sales"', "--logo", pair.logo)
    assert done.returncode == 0, done.stderr
    assert integrity(PNG) in done.stdout
    import time
    time.sleep(1.0)  # the store's refresh (0.2 s) brings it to the running service
    with SippUas("uas.xml", pair.pbx, tmp_path) as pbx:
        result = run_uac("uac_reason.xml", pair.a.dialer, free_port(), tmp_path, calls=5,
                         rate=5, extra=("-key", "reason", "Your appointment tomorrow"))
    assert result.successful == 5, result.output
    msgs = pbx.messages()
    invites = [m for m in msgs.split("INVITE sip:")[1:]]
    assert len(invites) >= 5
    for invite in invites[:5]:
        assert re.search(r'^From: "Acme \\"Sales\\"" <sip:12025550100@[^>]*;verstat='
                         r'TN-Validation-Passed>', invite, re.M), invite
        assert f"Call-Info: <{pair.logo}>;purpose=icon" in invite
        assert "X-Call-Reason" not in invite  # the dialer's header stops at A
        token = re.search(r"^Identity: ([^\r\n]+)", invite, re.M)
        assert token is not None
        claims = decode_passport(token.group(1).split(";")[0]).claims
        assert claims["rcd"] == {"nam": 'Acme "Sales"', "icn": pair.logo}
        assert claims["rcdi"] == {"/icn": integrity(PNG)}
        assert claims["crn"] == "Your appointment tomorrow"
        if shutil.which("secsipidx"):
            assert secsipidx_ok(token.group(1), pair.keys), token.group(1)
    metrics = scrape(pair.b.admin)
    assert 'stirshaken_rcd_verifications_total{result="passed"} 5.0' in metrics
    assert 'stirshaken_calls_branded_total{account="demo"} 5.0' in scrape(pair.a.admin)


def test_a_diverted_call_carries_shaken_and_div_and_both_verify(
        pair: Pair, tmp_path: Path) -> None:
    with SippUas("uas.xml", pair.pbx, tmp_path) as pbx:
        result = run_uac("uac_diverted.xml", pair.a.dialer, free_port(), tmp_path, calls=3,
                         rate=3, callee="13035550111", extra=("-key", "diverted",
                                                              "+12025550150"))
    assert result.successful == 3, result.output
    invites = pbx.messages().split("INVITE sip:")[1:]
    for invite in invites[:3]:
        assert "verstat=TN-Validation-Passed" in invite
        values = re.findall(r"^Identity: ([^\r\n]+)", invite, re.M)
        assert sorted(v.rsplit("ppt=", 1)[1] for v in values) == ["div", "shaken"]
        by_ppt = {v.rsplit("ppt=", 1)[1]: decode_passport(v.split(";")[0]) for v in values}
        assert by_ppt["shaken"].claims["dest"] == {"tn": ["12025550150"]}
        assert by_ppt["div"].claims["div"] == {"tn": "12025550150"}
        assert by_ppt["div"].claims["dest"] == {"tn": ["13035550111"]}
        if shutil.which("secsipidx"):
            assert secsipidx_ok(values[0], pair.keys)
    assert 'stirshaken_verifications_total{code="",verstat="TN-Validation-Passed"} 3.0' in \
        scrape(pair.b.admin)


@pytest.mark.parametrize(("logo", "error"), [
    ("http://127.0.0.1/acme.png", "is not an https URL"),
    ("https://127.0.0.1:{port}/missing.png", "HTTP 404"),
    ("https://127.0.0.1:{port}/page.html", "not an image (Content-Type text/html"),
    ("https://127.0.0.2:{port}/acme.png", "not allowed"),
    ("https://127.0.0.1:{port}/big.png", "exceeds 65536"),
    ("https://127.0.0.1:{dead}/acme.png", "cannot be fetched"),
])
def test_bad_logos_are_refused_with_clear_errors(pair: Pair, logo: str, error: str) -> None:
    port = pair.logo.split(":")[2].split("/")[0]
    done = cli("brands", "set", "--config", str(pair.a_cfg), "--account", "demo",
               "--name", "Acme", "--logo", logo.format(port=port, dead=pair.dead_port))
    assert done.returncode != 0 and error in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_logo_changed_since_it_was_signed_is_not_passed_on(pair: Pair,
                                                             tmp_path: Path) -> None:
    logo = pair.logo.replace("/acme.png", "/changing.png")
    done = cli("brands", "set", "--config", str(pair.a_cfg), "--account", "demo",
               "--name", "Acme", "--logo", logo)
    assert done.returncode == 0, done.stderr
    pair.logos.routes["/changing.png"] = Route(body=PNG + b"tampered",
                                               headers=(("Content-Type", "image/png"),))
    import time
    time.sleep(1.0)
    with SippUas("uas.xml", pair.pbx, tmp_path) as pbx:
        result = run_uac("uac.xml", pair.a.dialer, free_port(), tmp_path, calls=1, rate=1)
    assert result.successful == 1, result.output
    invite = pbx.messages().split("INVITE sip:")[1]
    assert "verstat=TN-Validation-Passed" in invite  # the SHAKEN PASSporT is fine
    assert "Call-Info" not in invite and '"Acme"' not in invite  # its rcd is not passed on
    assert 'stirshaken_rcd_verifications_total{result="failed"} 1.0' in scrape(pair.b.admin)


@pytest.mark.parametrize(("reason", "status"), [
    ("r" * 65, "400 Bad Call Reason"),
    ("Pay\u202enow", "400 Bad Call Reason"),  # a bidi override (a format character)
])
def test_a_bad_call_reason_is_refused(pair: Pair, tmp_path: Path, reason: str,
                                      status: str) -> None:
    result = run_uac("uac_reason.xml", pair.a.dialer, free_port(), tmp_path, calls=1, rate=1,
                     time_limit=10, extra=("-key", "reason", reason, "-trace_msg",
                                           "-message_file", str(tmp_path / "r.log")))
    assert result.successful == 0
    assert f"SIP/2.0 {status}" in (tmp_path / "r.log").read_text()
