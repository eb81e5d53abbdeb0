"""Signed calls through the real service, checked by an independent verifier (secsipidx)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.service.conftest import requires_sipp
from tests.support import (
    HOST,
    ROOT,
    Ports,
    SippUas,
    free_port,
    run_uac,
    running_service,
    signing_config,
    write_config,
)

pytestmark = [requires_sipp, pytest.mark.sipp,
              pytest.mark.skipif(shutil.which("secsipidx") is None,
                                 reason="secsipidx not installed")]
ORIGID = "5f3f3f7a-4c1b-4d1e-9a37-0d2c9b6a1e01"


def identities(messages: str) -> list[str]:
    """The Identity header values of every INVITE the UAS received."""
    return [m.strip() for m in re.findall(r"^Identity: (.*)$", messages, re.MULTILINE)]


def claims(value: str) -> dict[str, object]:
    payload = value.split(";")[0].split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


def secsipidx_ok(value: str, keys: Path) -> bool:
    proc = subprocess.run(
        ["secsipidx", "-c", "-identity", value, "-p", str(keys / "cert.pem"),
         "-ca-file", str(keys / "ca.pem"), "-ca-inter", str(keys / "ca.pem"),
         "-cert-verify", "7", "-expire", "600"],
        capture_output=True, text=True, timeout=30, check=False)
    return proc.returncode == 0


def test_signed_calls_verify_with_secsipidx(tmp_path: Path, ports: Ports) -> None:
    cfg = write_config(tmp_path / "proxy.toml", ports, extra=signing_config(tmp_path, ports))
    keys = tmp_path / "keys"
    with running_service(cfg, ports.admin, tmp_path / "proxy.log") as svc:
        # The admin server is the development certificate repository behind x5u.
        with urllib.request.urlopen(f"http://{HOST}:{ports.admin}/certs/shaken.pem") as r:
            assert r.read() == (keys / "chain.pem").read_bytes()
        with SippUas("uas.xml", ports.carrier_next_hop, tmp_path) as uas:
            owned = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=100, rate=50,
                            caller="+12025550142")
            other = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=50, rate=50,
                            caller="13105550123")
        assert owned.successful == 100 and owned.failed == 0, owned.output[-2000:]
        assert other.successful == 50 and other.failed == 0, other.output[-2000:]
        msgs = uas.messages()
    assert "Traceback" not in svc.log()
    values = identities(msgs)
    assert len(values) == 150
    attests = {"A": 0, "B": 0}
    for value in values:
        assert value.endswith(f";info=<http://{HOST}:{ports.admin}/certs/shaken.pem>"
                              ";alg=ES256;ppt=shaken")
        c = claims(value)
        assert c["dest"] == {"tn": ["12025550199"]} and c["origid"] == ORIGID
        expected = {"A": "12025550142", "B": "13105550123"}[str(c["attest"])]
        assert c["orig"] == {"tn": expected}
        assert abs(int(c["iat"]) - time.time()) < 120  # type: ignore[call-overload]
        attests[str(c["attest"])] += 1
        assert secsipidx_ok(value, keys), value
    assert attests == {"A": 100, "B": 50}
    # ACK and BYE flowed through as well (the UAS completed every call).
    assert len(re.findall(r"^BYE sip:", msgs, re.MULTILINE)) >= 150


def test_inventory_changes_without_restart(tmp_path: Path, ports: Ports, workers: int) -> None:
    """With two workers, each reads the new inventory: ten calls after the import (owned by
    either worker) are all signed A."""
    cfg = write_config(tmp_path / "proxy.toml", ports, extra=signing_config(tmp_path, ports),
                       transport=f"workers = {workers}")
    csv = tmp_path / "more.csv"
    csv.write_text("tn,account,label\n+1 310 555 0100..0199,demo,west\n")
    with running_service(cfg, ports.admin, tmp_path / "proxy.log"):
        with SippUas("uas.xml", ports.carrier_next_hop, tmp_path) as uas:
            before = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=10, rate=10,
                             caller="13105550123")
            imported = subprocess.run(
                [sys.executable, "-m", "stirshaken_proxy", "numbers", "import", "--config",
                 str(cfg), str(csv)], capture_output=True, text=True, cwd=ROOT, timeout=60,
                check=False)
            assert imported.returncode == 0, imported.stderr
            time.sleep(1.0)  # several refresh intervals (0.2 s)
            after = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=10, rate=10,
                            caller="13105550123")
        msgs = uas.messages()
    assert before.successful == 10 and after.successful == 10
    assert [claims(v)["attest"] for v in identities(msgs)] == ["B"] * 10 + ["A"] * 10
