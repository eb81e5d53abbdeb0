"""Local presence through the real service with SIPp: the carrier receives the account's own
number with the callee's area code, signed A; the dialer's dialog keeps its own number; the
call flow completes; a quarantined number leaves the rotation."""

from __future__ import annotations

import base64
import json
import re
import urllib.request
from pathlib import Path

import pytest

from tests.service.conftest import requires_sipp
from tests.support import (
    Ports,
    SippUas,
    admin_post,
    free_port,
    run_uac,
    running_service,
    signing_config,
    write_config,
)

pytestmark = [requires_sipp, pytest.mark.sipp]


def test_substituted_caller_id_end_to_end(tmp_path: Path, workers: int) -> None:
    """With two workers, the quarantine goes to worker 0's admin API and the calls owned by
    worker 1 must still leave the number out (the health replicas agree)."""
    ports = Ports.pick()
    cfg = write_config(tmp_path / "p.toml", ports, transport=f"workers = {workers}",
                       extra=signing_config(
        tmp_path, ports, numbers='["+1 202 555 0100..0103", "+1 415 555 0100"]',
        account_extra='local_presence = "always"'))
    uac_log = tmp_path / "uac-msg.log"
    with running_service(cfg, ports.admin, tmp_path / "proxy.log"):
        # The operator takes one of the 202 numbers out of rotation first.
        req = admin_post(ports.admin, "/numbers/12025550103/quarantine?hours=1")
        with urllib.request.urlopen(req, timeout=5) as r:
            assert json.loads(r.read())["state"] == "quarantined"
        with SippUas("uas.xml", ports.carrier_next_hop, tmp_path) as carrier:
            result = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=30, rate=15,
                             caller="+13105550123", callee="12025550199",
                             extra=("-trace_msg", "-message_file", str(uac_log)))
        carrier_msgs = carrier.messages()
    assert result.successful == 30 and result.failed == 0, result.output[-2000:]
    # Carrier side: From carries one of the account's 202 numbers, never the dialer's.
    froms = re.findall(r"^From: <sip:([^@]+)@", carrier_msgs, re.MULTILINE)
    assert froms and "+13105550123" not in froms
    assert set(froms) <= {"+12025550100", "+12025550101", "+12025550102"}  # 0103 quarantined
    assert len(set(froms)) == 3  # spread over the pool
    for token in re.findall(r"^Identity: ([^;\s]+)", carrier_msgs, re.MULTILINE):
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "==="))
        assert claims["attest"] == "A" and claims["orig"]["tn"] in {
            "12025550100", "12025550101", "12025550102"}
    # Dialer side: every response it received names its own number.
    dialer_msgs = uac_log.read_text(errors="replace")
    dialer_froms = set(re.findall(r"^From: <sip:([^@]+)@", dialer_msgs, re.MULTILINE))
    assert dialer_froms == {"+13105550123"}


def test_reinvite_is_mapped_both_ways(tmp_path: Path, workers: int) -> None:
    """A re-INVITE from the dialer reaches the carrier with the chosen number, and its 200
    comes back with the dialer's own (SIPp on both sides, through the real service)."""
    ports = Ports.pick()
    cfg = write_config(tmp_path / "p.toml", ports, transport=f"workers = {workers}",
                       extra=signing_config(
        tmp_path, ports, numbers='["+1 202 555 0100..0101"]',
        account_extra='local_presence = "always"'))
    uac_log = tmp_path / "uac-msg.log"
    with running_service(cfg, ports.admin, tmp_path / "proxy.log"):
        with SippUas("uas_reinvite.xml", ports.carrier_next_hop, tmp_path) as carrier:
            result = run_uac("uac_reinvite.xml", ports.dialer, free_port(), tmp_path,
                             calls=10, rate=10, caller="+13105550123", callee="12025550199",
                             extra=("-trace_msg", "-message_file", str(uac_log)))
        carrier_msgs = carrier.messages()
    assert result.successful == 10 and result.failed == 0, result.output[-2000:]
    reinvites = re.findall(r"^INVITE .*?^CSeq: 2 INVITE", carrier_msgs,
                           re.MULTILINE | re.DOTALL)
    assert len(reinvites) >= 10
    for block in reinvites:
        from_line = re.findall(r"^From: <sip:([^@]+)@", block, re.MULTILINE)[-1]
        assert from_line in ("+12025550100", "+12025550101")
    dialer_msgs = uac_log.read_text(errors="replace")
    assert "CSeq: 2 INVITE" in dialer_msgs
    assert set(re.findall(r"^From: <sip:([^@]+)@", dialer_msgs, re.MULTILINE)) == {
        "+13105550123"}
