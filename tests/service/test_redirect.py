"""The SIP redirect front end beside a real SBC: Kamailio from Debian's packages asks the running
service for a 302 and copies what it carries into the INVITE it relays; SIPp on both sides.

Signing: SIPp dialer -> Kamailio -> our 302 (Identity) -> Kamailio -> SIPp carrier, every
Identity checked by secsipidx. Verification: SIPp carrier with signed INVITEs -> Kamailio ->
our 302 (verstat) -> Kamailio -> SIPp PBX. Kamailio runs deploy/kamailio/sbc-redirect.cfg."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stirshaken_proxy.io.keys import load_private_key
from stirshaken_proxy.stir.passport import Attestation, Signer, SigningIdentity
from tests.service.conftest import requires_sipp
from tests.support import (
    HOST,
    ROOT,
    Kamailio,
    Ports,
    SippUas,
    free_port,
    have_kamailio,
    run_uac,
    running_service,
    signing_config,
    write_config,
)

pytestmark = [requires_sipp, pytest.mark.sipp,
              pytest.mark.skipif(not have_kamailio(), reason="kamailio not installed")]
CARRIER_IP = "127.0.0.2"  # the SBC's carrier-facing address (the service verifies from it)
ORIGID = "5f3f3f7a-4c1b-4d1e-9a37-0d2c9b6a1e01"


@dataclass
class Sbc:
    dialer_port: int  # Kamailio, dialer side (127.0.0.1)
    carrier_port: int  # Kamailio, carrier side (127.0.0.2)
    carrier_uas: int  # SIPp carrier
    pbx_uas: int  # SIPp PBX
    redirect: int  # our 302 service
    keys: Path
    admin: int


@pytest.fixture
def sbc(tmp_path: Path) -> Iterator[Sbc]:
    ports = Ports.pick()
    redirect = free_port()
    extra = signing_config(tmp_path, ports) + f"""
[redirect]
listen = "{HOST}:{redirect}"
verify_sources = ["{CARRIER_IP}/32"]

[verify]
trust_anchors = ["{tmp_path / 'keys' / 'ca.pem'}"]
allow_networks = ["127.0.0.1/32"]
allow_http = true
allowed_ports = [{ports.admin}]
"""
    cfg = write_config(tmp_path / "proxy.toml", ports, extra=extra)
    s = Sbc(free_port(), free_port(), free_port(), free_port(), redirect, tmp_path / "keys",
            ports.admin)
    values = {"DIALER_IP": HOST, "DIALER_PORT": s.dialer_port, "CARRIER_IP": CARRIER_IP,
              "CARRIER_PORT": s.carrier_port, "STI_IP": HOST, "STI_PORT": redirect,
              "CARRIER_NEXT_HOP": f"{HOST}:{s.carrier_uas}", "PBX_NEXT_HOP": f"{HOST}:{s.pbx_uas}"}
    with running_service(cfg, ports.admin, tmp_path / "proxy.log") as svc:
        with Kamailio(ROOT / "deploy/kamailio/sbc-redirect.cfg", tmp_path, values,
                      ready=(HOST, s.dialer_port)):
            yield s
        assert "Traceback" not in svc.log(), svc.log()


def test_kamailio_signs_through_the_302_service(sbc: Sbc, tmp_path: Path) -> None:
    with SippUas("uas.xml", sbc.carrier_uas, tmp_path) as carrier:
        result = run_uac("uac.xml", sbc.dialer_port, free_port(), tmp_path, calls=20, rate=10,
                         caller="+12025550142")
        msgs = carrier.messages()
    assert result.successful == 20 and result.failed == 0, result.output[-2000:]
    identities = re.findall(r"^Identity: (\S+)\r?$", msgs, re.M)
    assert len(identities) == 20, msgs[-3000:]
    assert len(set(identities)) == 20  # each call its own PASSporT
    if shutil.which("secsipidx"):
        for value in identities:
            out = subprocess.run(
                ["secsipidx", "-c", "-identity", value, "-p", str(sbc.keys / "cert.pem"),
                 "-ca-file", str(sbc.keys / "ca.pem"), "-ca-inter", str(sbc.keys / "ca.pem"),
                 "-cert-verify", "7", "-expire", "300"],
                capture_output=True, text=True, timeout=30, check=False)
            assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


def signed_identity(sbc: Sbc, orig: str) -> str:
    x5u = f"http://{HOST}:{sbc.admin}/certs/shaken.pem"  # the service's own repository
    signer = Signer(SigningIdentity(name="t", key=load_private_key(sbc.keys / "key.pem"),
                                    x5u=x5u))
    token = signer.sign(attest=Attestation.A, orig=orig, dest=["12025550199"],
                        iat=int(time.time()), origid=ORIGID)
    return signer.identity_value(token)


@pytest.mark.parametrize(("orig", "verstat"), [
    ("12025550100", "TN-Validation-Passed"),
    ("12025550111", "TN-Validation-Failed"),  # signed for another calling number
])
def test_kamailio_verifies_through_the_302_service(sbc: Sbc, tmp_path: Path, orig: str,
                                                   verstat: str) -> None:
    value = signed_identity(sbc, orig)
    with SippUas("uas.xml", sbc.pbx_uas, tmp_path) as pbx:
        result = run_uac("uac_identity.xml", sbc.carrier_port, free_port(), tmp_path,
                         calls=10, rate=10, caller="+12025550100", target_host=CARRIER_IP,
                         extra=("-key", "identity", value))
        msgs = pbx.messages()
    assert result.successful == 10 and result.failed == 0, result.output[-2000:]
    assert msgs.count(f"verstat={verstat}") == 10, msgs[-3000:]
    if verstat == "TN-Validation-Passed":
        assert msgs.count("P-Attestation-Indicator: A") == 10
    else:
        assert msgs.count('Reason: STIR ;cause=438 ;text="Invalid Identity Header"') == 10
