"""Inbound verification through the real service: the carrier sends signed INVITEs, the
certificate repository is a real HTTPS server on 127.0.0.1 (named by the allow-list), and the
PBX receives the verdict or the carrier gets the RFC 8224 code."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stirshaken_proxy.stir.passport import b64url
from tests.https_server import CertServer, Route
from tests.service.conftest import requires_sipp
from tests.stir_pki import ORIGID, Pki, claims, forge, header, identity, make_pki, token, write_key
from tests.support import (
    HOST,
    Ports,
    SippUas,
    free_port,
    run_uac,
    running_service,
    write_config,
)

pytestmark = [requires_sipp, pytest.mark.sipp]
LEAVES = ("good", "expired", "future", "no_tnauth", "self_signed", "untrusted", "revoked")


@dataclass
class Repo:
    server: CertServer
    pki: Pki
    anchors: Path
    dead_port: int

    def url(self, name: str, host: str = HOST) -> str:
        return self.server.url(f"/{name}.pem", host)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repo]:
    tmp = tmp_path_factory.mktemp("repo")
    with CertServer(tmp, {}) as server:
        pki = make_pki(crl_url=server.url("/crl.pem"), now=dt.datetime.now(dt.UTC))
        for name in LEAVES:
            server.routes[f"/{name}.pem"] = Route(pki.leaves[name].chain_pem,
                                                  headers=(("Cache-Control", "max-age=600"),))
        server.routes.update({
            "/crl.pem": Route(pki.crl_pem),
            "/garbage.pem": Route(b"<html>this is not a certificate</html>"),
            "/huge.pem": Route(b"-" * 300_000),
            "/slow.pem": Route(pki.leaves["good"].chain_pem, delay=3.0),
        })
        anchors = tmp / "sti-ca.pem"
        anchors.write_bytes(pki.root_pem)
        yield Repo(server=server, pki=pki, anchors=anchors, dead_port=free_port())


def verify_config(repo: Repo, on_failure: str) -> str:
    return f"""
[verify]
trust_anchors = ["{repo.anchors}"]
on_failure = "{on_failure}"
allowed_ports = [443, 8443, {repo.server.port}, {repo.dead_port}]
allow_networks = ["127.0.0.1/32"]
tls_ca_file = "{repo.server.ca_file}"
fetch_timeout = 1.0
"""


INVITE = (
    "INVITE sip:+12025550199@127.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-case-{n}\r\n"
    "From: <sip:+12025550100@127.0.0.1>;tag=c{n}\r\n"
    "To: <sip:+12025550199@127.0.0.1>\r\n"
    "Call-ID: case-{n}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
    "{identity}Content-Length: 0\r\n\r\n")


def ack_for(invite: str, reply: str) -> bytes:
    """The ACK for a non-2xx final (RFC 3261 §17.1.1.3): same branch, To with the tag."""
    lines = invite.split("\r\n")
    to = next(line for line in reply.split("\r\n") if line.startswith("To:"))
    keep = [line for line in lines[1:] if line.startswith(("Via:", "From:", "Call-ID:"))]
    return ("\r\n".join([lines[0].replace("INVITE", "ACK", 1), *keep, to, "CSeq: 1 ACK",
                          "Content-Length: 0", "", ""])).encode()


def good(r: Repo, name: str = "good", **kw: object) -> str:
    url = r.url(name)
    kw.setdefault("iat", int(time.time()))
    return identity(token(r.pki.leaves[name], url, **kw), url)  # type: ignore[arg-type]


def on_url(r: Repo, url: str) -> str:
    return identity(token(r.pki.leaves["good"], url, iat=int(time.time())), url)


def now() -> int:
    return int(time.time())


G = "good"
# (name, Identity value or None for none at all, expected final status at the carrier)
CASES: list[tuple[str, Callable[[Repo], str | None], int]] = [
    ("valid", lambda r: good(r), 0),  # 0: forwarded to the PBX
    ("garbage Identity", lambda r: "garbage-that-is-no-jwt", 438),
    ("bad JWT (undecodable claims)", lambda r: good(r).replace(".", ".!!", 1), 438),
    ("alg none", lambda r: identity(forge(r.pki.leaves[G], header(r.url(G), alg="none"),
                                          claims(now()), sign=False), r.url(G), alg="none"),
     438),  # an unsigned token is an invalid header
    ("alg ES384", lambda r: identity(forge(r.pki.leaves[G], header(r.url(G), alg="ES384"),
                                           claims(now())), r.url(G), alg="ES384"), 437),
    ("wrong ppt", lambda r: good(r).replace("ppt=shaken", "ppt=div"), 438),
    ("absent ppt", lambda r: identity(forge(r.pki.leaves[G], {"alg": "ES256", "typ": "passport",
                                                              "x5u": r.url(G)}, claims(now())),
                                      r.url(G)).replace(";ppt=shaken", ""), 438),
    ("iat stale", lambda r: good(r, iat=now() - 90), 403),
    ("iat in the future", lambda r: good(r, iat=now() + 90), 403),
    ("iat zero", lambda r: good(r, iat=0), 403),
    ("iat negative", lambda r: good(r, iat=-1), 403),
    ("replay of a stale token", lambda r: good(r, iat=now() - 3600), 403),
    ("orig does not match", lambda r: good(r, orig="12025550111"), 438),
    ("dest does not match", lambda r: good(r, dest="12025550111"), 438),
    ("expired certificate", lambda r: good(r, "expired"), 437),
    ("not yet valid certificate", lambda r: good(r, "future"), 437),
    ("self-signed certificate", lambda r: good(r, "self_signed"), 437),
    ("untrusted certificate", lambda r: good(r, "untrusted"), 437),
    ("no TNAuthList", lambda r: good(r, "no_tnauth"), 437),
    ("revoked (CRL distribution point)", lambda r: good(r, "revoked"), 437),
    ("x5u over http", lambda r: on_url(r, r.url(G).replace("https:", "http:")), 436),
    ("x5u on port 80", lambda r: on_url(r, f"https://127.0.0.1:80/{G}.pem"), 436),
    ("x5u with a query", lambda r: on_url(r, r.url(G) + "?v=2"), 436),
    ("x5u unreachable", lambda r: on_url(r, f"https://127.0.0.1:{r.dead_port}/good.pem"), 436),
    ("x5u slow", lambda r: on_url(r, r.url("slow")), 436),
    ("x5u 404", lambda r: on_url(r, r.url("missing")), 436),
    ("x5u garbage", lambda r: on_url(r, r.url("garbage")), 437),
    ("x5u huge body", lambda r: on_url(r, r.url("huge")), 436),
    ("x5u at an address not allowed", lambda r: on_url(r, r.url(G, host="127.0.0.2")), 436),
    ("signature forged", lambda r: (lambda v: v.split(".")[0] + "." + v.split(".")[1] + "."
                                    + b64url(b"\x01" * 64) + v[v.index(";"):])(good(r)), 438),
]


def test_broken_identities_get_their_rfc_code(tmp_path: Path, repo: Repo) -> None:
    ports = Ports.pick()
    cfg = write_config(tmp_path / "p.toml", ports, extra=verify_config(repo, "reject"))
    assert sum(1 for c in CASES if c[2]) >= 20
    with running_service(cfg, ports.admin, tmp_path / "proxy.log") as svc, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as carrier, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as pbx:
        carrier.bind((HOST, 0))
        pbx.bind((HOST, ports.dialer_next_hop))
        carrier.settimeout(6.0)
        pbx.settimeout(6.0)
        port = carrier.getsockname()[1]
        failures = []
        for n, (name, make, expected) in enumerate(CASES):
            value = make(repo)
            data = INVITE.format(port=port, n=n, identity=f"Identity: {value}\r\n" if value
                                 else "").encode()
            carrier.sendto(data, (HOST, ports.carrier))
            if expected == 0:
                got = pbx.recv(65535).decode()
                if "verstat=TN-Validation-Passed" not in got:
                    failures.append((name, got[:300]))
                continue
            while True:
                reply = carrier.recv(65535).decode(errors="replace")
                # Skip 100 Trying and retransmitted finals of earlier cases.
                if not reply.startswith("SIP/2.0 100 ") and f"Call-ID: case-{n}\r\n" in reply:
                    break
            carrier.sendto(ack_for(data.decode(), reply), (HOST, ports.carrier))
            status = int(reply[8:11])
            if status != expected or f"Reason: STIR ;cause={expected}" not in reply:
                failures.append((name, reply.splitlines()[0]))
        assert failures == [], failures
    assert "Traceback" not in svc.log()


@pytest.mark.skipif(shutil.which("secsipidx") is None, reason="secsipidx not installed")
def test_valid_calls_reach_the_pbx_with_verstat(tmp_path: Path, repo: Repo) -> None:
    """Carrier side SIPp -> proxy -> PBX SIPp, the PASSporT signed by secsipidx (interop)."""
    ports = Ports.pick()
    cfg = write_config(tmp_path / "p.toml", ports, extra=verify_config(repo, "mark"))
    key = write_key(tmp_path / "good-key.pem", repo.pki.leaves["good"])
    signed = subprocess.run(
        ["secsipidx", "-sign-full", "-k", str(key), "-x5u", repo.url("good"), "-a", "A",
         "-o", "12025550100", "-d", "12025550199", "-orig-id", ORIGID, "-iat",
         str(int(time.time()))], capture_output=True, text=True, timeout=30, check=True)
    value = signed.stdout.strip()
    fetched_before = repo.server.requests.count("/good.pem")
    with running_service(cfg, ports.admin, tmp_path / "proxy.log") as svc:
        with SippUas("uas.xml", ports.dialer_next_hop, tmp_path) as pbx:
            result = run_uac("uac_identity.xml", ports.carrier, free_port(), tmp_path,
                             calls=50, rate=25, caller="+12025550100",
                             extra=("-key", "identity", value))
        msgs = pbx.messages()
    assert result.successful == 50 and result.failed == 0, result.output[-2000:]
    assert msgs.count("INVITE sip:") >= 50
    assert msgs.count("verstat=TN-Validation-Passed") >= 50
    assert msgs.count("P-Attestation-Indicator: A") >= 50
    assert "Traceback" not in svc.log()
    # One fetch served the whole run (the chain is cached, one fetch in flight per URL).
    assert repo.server.requests.count("/good.pem") - fetched_before == 1


def test_failed_call_is_marked_when_policy_continues(tmp_path: Path, repo: Repo) -> None:
    ports = Ports.pick()
    cfg = write_config(tmp_path / "p.toml", ports, extra=verify_config(repo, "mark"))
    stale = good(repo, iat=int(time.time()) - 300)
    with running_service(cfg, ports.admin, tmp_path / "proxy.log"):
        with SippUas("uas.xml", ports.dialer_next_hop, tmp_path) as pbx:
            result = run_uac("uac_identity.xml", ports.carrier, free_port(), tmp_path,
                             calls=1, rate=1, caller="+12025550100",
                             extra=("-key", "identity", stale))
        msgs = pbx.messages()
    assert result.successful == 1
    assert "verstat=TN-Validation-Failed" in msgs
    assert 'Reason: STIR ;cause=403 ;text="Stale Date"' in msgs
