"""SIP over TLS with Kamailio's TLS module as the peer on both sides.

SIPp (UDP) -> Kamailio dialers' edge -> TLS, client certificate -> proxy A (signs: the account
is recognised by the certificate) -> TLS, RFC 5922 name check -> Kamailio carrier's edge ->
TLS -> proxy B (verifies) -> UDP -> SIPp. Then the checks that must fail: a next hop whose
certificate names another host, or is issued by a CA we do not trust, gets no call (counted);
a client certificate from an untrusted CA never completes its handshake (counted)."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from stirshaken_proxy.stir.certs import issue_certificate, pem_private_key
from stirshaken_proxy.stir.passport import decode_passport
from tests.service.conftest import requires_sipp
from tests.support import (
    HOST,
    Kamailio,
    Ports,
    SippUas,
    free_port,
    have_kamailio,
    run_uac,
    running_service,
    scrape,
    signing_config,
    write_config,
)

HERE = Path(__file__).parent
TLS_MODULE = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so")
SERVER_AND_CLIENT = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


@dataclass
class Pki:
    """A test CA (its certificate also as a file) that issues TLS certificates into files."""

    folder: Path
    ca: Path
    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey

    def issue(self, name: str, san: tuple[str, ...]) -> tuple[Path, Path]:
        now = dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = issue_certificate(subject_cn=name, key=key, issuer_cert=self.ca_cert,
                                 issuer_key=self.ca_key, ca=False, spc=None,
                                 not_before=now - dt.timedelta(minutes=5),
                                 not_after=now + dt.timedelta(days=2), san=san,
                                 usages=SERVER_AND_CLIENT)
        cert_path, key_path = self.folder / f"{name}.pem", self.folder / f"{name}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(pem_private_key(key))
        return cert_path, key_path


def make_pki(folder: Path, label: str) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    ca = issue_certificate(subject_cn=f"{label} test CA", key=key, issuer_cert=None,
                           issuer_key=key, ca=True, spc=None,
                           not_before=now - dt.timedelta(minutes=5),
                           not_after=now + dt.timedelta(days=2))
    path = folder / f"{label}-ca.pem"
    path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return Pki(folder=folder, ca=path, ca_cert=ca, ca_key=key)


def tls_section(cert: Path, key: Path, ca: Path) -> str:
    return f"""
[tls]
certificate = "{cert}"
key = "{key}"
ca_files = ["{ca}"]
handshake_timeout = 2.0
"""


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


# -- Kamailio on both sides ------------------------------------------------------------------

@pytest.mark.sipp
@requires_sipp
@pytest.mark.skipif(not have_kamailio() or not TLS_MODULE.exists(),
                    reason="kamailio or kamailio-tls-modules not installed")
def test_calls_over_tls_both_sides_signed_by_certificate_account_and_verified(
        tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", "sip")
    proxy_cert, proxy_key = pki.issue("proxy", (HOST, "localhost"))
    dialer_edge = pki.issue("dialer-edge.test", ("dialer-edge.test",))
    carrier_edge = pki.issue("carrier-edge", ("sip:carrier-edge.test",))  # RFC 5922 URI SAN
    edge_udp, edge_tls, uac_port, uas_port = (free_port() for _ in range(4))
    a, b = Ports.pick(), Ports.pick()
    a_tls, b_tls = free_port(), free_port()
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    # Proxy A signs. Its account has no source address: only the certificate names it.
    a_extra = signing_config(a_dir, a, sources="[]",
                             account_extra='tls_names = ["dialer-edge.test"]') \
        + tls_section(proxy_cert, proxy_key, pki.ca)
    a_cfg = write_config(a_dir / "proxy.toml", a, extra=a_extra, dialer_sources="[]",
                         carrier_transport="tls")
    text = a_cfg.read_text().replace(
        f'listen = "{HOST}:{a.dialer}"',
        f'listen = "{HOST}:{a.dialer}"\nlisten_tls = "{HOST}:{a_tls}"\n'
        'tls_verify_clients = "required"').replace(
        f'next_hop = "{HOST}:{a.carrier_next_hop}"',
        f'next_hop = "{HOST}:{edge_tls}"\nnext_hop_tls_name = "carrier-edge.test"')
    a_cfg.write_text(text)
    # Proxy B verifies what arrives on its carrier side over TLS; the PBX is SIPp.
    b_extra = tls_section(proxy_cert, proxy_key, pki.ca) + f"""
[verify]
trust_anchors = ["{a_dir / 'keys' / 'ca.pem'}"]
allow_networks = ["127.0.0.1/32"]
allow_http = true
allowed_ports = [{a.admin}]
"""
    b_cfg = write_config(b_dir / "proxy.toml", b, extra=b_extra)
    b_cfg.write_text(b_cfg.read_text().replace(
        f'listen = "{HOST}:{b.carrier}"', f'listen = "{HOST}:{b.carrier}"\n'
        f'listen_tls = "{HOST}:{b_tls}"').replace(
        f'next_hop = "{HOST}:{b.dialer_next_hop}"', f'next_hop = "{HOST}:{uas_port}"'))
    tls_cfg = HERE / "kamailio" / "tls-edge-tls.cfg"
    filled = tls_cfg.read_text()
    for key, value in {"SERVER_CERT": carrier_edge[0], "SERVER_KEY": carrier_edge[1],
                       "CLIENT_CERT": dialer_edge[0], "CLIENT_KEY": dialer_edge[1],
                       "CA": pki.ca}.items():
        filled = filled.replace(f"@{key}@", str(value))
    (tmp_path / "kamailio-tls.cfg").write_text(filled)
    values = {"HOST": HOST, "EDGE_UDP": edge_udp, "EDGE_TLS": edge_tls, "PROXY_A_TLS": a_tls,
              "PROXY_B_TLS": b_tls, "TLS_CFG": tmp_path / "kamailio-tls.cfg"}
    with running_service(a_cfg, a.admin, a_dir / "proxy.log") as svc_a, \
            running_service(b_cfg, b.admin, b_dir / "proxy.log") as svc_b, \
            Kamailio(HERE / "kamailio" / "tls-edge.cfg", tmp_path, values,
                     ready=(HOST, edge_udp)) as kamailio, \
            SippUas("uas.xml", uas_port, tmp_path) as uas:
        result = run_uac("uac.xml", edge_udp, uac_port, tmp_path, calls=20, rate=10)
        assert result.successful == 20, (result.output, kamailio.log()[-3000:],
                                         svc_a.log()[-2000:], svc_b.log()[-2000:])
        msgs = uas.messages()
        invites = [m for m in msgs.split("INVITE sip:")[1:]]
        assert len(invites) >= 20
        # Every call was signed A for the account the client certificate named, verified by B.
        identities = re.findall(r"^Identity: ([^;\r\n]+)", msgs, re.M)
        assert len(identities) >= 20
        for token in identities:
            passport = decode_passport(token)
            assert passport.claims["attest"] == "A"
            assert passport.claims["origid"] == "5f3f3f7a-4c1b-4d1e-9a37-0d2c9b6a1e01"
        assert msgs.count("verstat=TN-Validation-Passed") >= 20
        metrics_a, metrics_b = scrape(a.admin), scrape(b.admin)
        # A's carrier side: one reused TLS connection carried all 20 calls (RFC 5923 alias).
        assert "alias" in kamailio.log()
        assert metric(metrics_a, 'stirshaken_tcp_connections{side="carrier",transport="tls"}') == 1
        assert metric(metrics_a, 'stirshaken_tcp_connections{side="dialer",transport="tls"}') >= 1
        assert metric(metrics_b, 'stirshaken_tcp_connections{side="carrier",transport="tls"}') >= 1
        assert 'tls_name_mismatch' not in metrics_a and 'tls_verify_failures' not in metrics_a


# -- the checks that must fail -----------------------------------------------------------------

class TlsSink:
    """A TLS server on 127.0.0.1 that counts the connections it completes (the carrier a
    failing check must never reach)."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.completed = 0
        self.received = b""
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    self.completed += 1
                    tls.settimeout(1.0)
                    self.received += tls.recv(65536)
            except (OSError, ssl.SSLError):
                conn.close()

    def __enter__(self) -> TlsSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()


def invite(port: int, call: str) -> bytes:
    return (f"INVITE sip:+12025550199@{HOST} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{port};branch=z9hG4bK{call};rport\r\n"
            f"From: <sip:+12025550100@{HOST}>;tag=a{call}\r\nTo: <sip:+12025550199@{HOST}>\r\n"
            f"Call-ID: {call}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
            f"Contact: <sip:{HOST}:{port}>\r\nContent-Length: 0\r\n\r\n").encode()


@pytest.fixture
def failing_pki(tmp_path: Path) -> Iterator[tuple[Pki, Pki]]:
    yield make_pki(tmp_path / "good", "good"), make_pki(tmp_path / "rogue", "rogue")


@pytest.mark.parametrize("case", ["wrong_name", "untrusted_ca"])
def test_next_hop_certificate_checked(tmp_path: Path, failing_pki: tuple[Pki, Pki],
                                      case: str) -> None:
    good, rogue = failing_pki
    proxy_cert, proxy_key = good.issue("proxy", (HOST,))
    if case == "wrong_name":  # a trusted CA, but the certificate is for another carrier
        sink_cert = good.issue("other", ("sip:other-carrier.test", "other-carrier.test"))
    else:  # the right name from a CA we do not trust
        sink_cert = rogue.issue("carrier", ("sip:carrier.test", "carrier.test"))
    ports = Ports.pick()
    with TlsSink(*sink_cert) as sink:
        extra = signing_config(tmp_path, ports) + tls_section(proxy_cert, proxy_key, good.ca)
        cfg = write_config(tmp_path / "proxy.toml", ports, extra=extra, carrier_transport="tls")
        cfg.write_text(cfg.read_text().replace(
            f'next_hop = "{HOST}:{ports.carrier_next_hop}"',
            f'next_hop = "{HOST}:{sink.port}"\nnext_hop_tls_name = "carrier.test"'))
        with running_service(cfg, ports.admin, tmp_path / "proxy.log") as svc, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dialer:
            dialer.bind((HOST, 0))
            dialer.settimeout(5)
            dialer.sendto(invite(dialer.getsockname()[1], "tls-check-1"), (HOST, ports.dialer))
            answers = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    answers.append(dialer.recv(65536).split(b"\r\n", 1)[0])
                except TimeoutError:
                    break
                if not answers[-1].startswith(b"SIP/2.0 1"):
                    break
            metrics = scrape(ports.admin)
            counter = "tls_name_mismatch" if case == "wrong_name" else "tls_verify_failures"
            assert metric(metrics, f'stirshaken_io_events_total{{event="{counter}"}}') >= 1, \
                svc.log()
        assert b"INVITE" not in sink.received  # the call never reached it
        assert answers[0] == b"SIP/2.0 100 Trying"
        # At once (Timer B would be 32 s): the failed connection counts as a 503.
        assert answers[-1] == b"SIP/2.0 503 Service Unavailable", answers


def test_client_certificate_from_untrusted_ca_is_refused(tmp_path: Path,
                                                         failing_pki: tuple[Pki, Pki]) -> None:
    good, rogue = failing_pki
    proxy_cert, proxy_key = good.issue("proxy", (HOST,))
    rogue_cert, rogue_key = rogue.issue("dialer.test", ("dialer.test",))
    good_cert, good_key = good.issue("dialer.test", ("dialer.test",))
    ports = Ports.pick()
    tls_port = free_port()
    extra = signing_config(tmp_path, ports, sources="[]",
                           account_extra='tls_names = ["dialer.test"]') \
        + tls_section(proxy_cert, proxy_key, good.ca)
    cfg = write_config(tmp_path / "proxy.toml", ports, extra=extra, dialer_sources="[]")
    cfg.write_text(cfg.read_text().replace(
        f'listen = "{HOST}:{ports.dialer}"',
        f'listen = "{HOST}:{ports.dialer}"\nlisten_tls = "{HOST}:{tls_port}"\n'
        'tls_verify_clients = "optional"'))

    async def call(cert: Path | None, key: Path | None) -> bytes:
        ctx = ssl.create_default_context(cafile=str(good.ca))
        ctx.check_hostname = False
        if cert is not None and key is not None:
            ctx.load_cert_chain(cert, key)
        reader, writer = await asyncio.open_connection(HOST, tls_port, ssl=ctx)
        writer.write(invite(5099, f"mtls-{cert is not None}").replace(b"UDP", b"TLS"))
        await writer.drain()
        head = b""
        try:
            while b"SIP/2.0 1" not in head[:12] or head.count(b"\r\n\r\n") < 2:
                chunk = await asyncio.wait_for(reader.read(65536), 3)
                if not chunk:
                    break
                head += chunk
                if b"SIP/2.0 4" in head or b"SIP/2.0 5" in head:
                    break
        except TimeoutError:
            pass
        writer.close()
        return head

    with running_service(cfg, ports.admin, tmp_path / "proxy.log") as svc, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as carrier:
        carrier.bind((HOST, ports.carrier_next_hop))
        carrier.settimeout(5)
        # A certificate from a CA we do not trust: the handshake fails, counted.
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            got = asyncio.run(call(rogue_cert, rogue_key))
            if not got:
                raise ConnectionError("closed")
        # No certificate (optional): the connection is made, but no account owns it.
        assert b"403" in asyncio.run(call(None, None))
        # The right certificate: the account it names is recognised (signed, forwarded).
        assert b"100 Trying" in asyncio.run(call(good_cert, good_key))
        forwarded = carrier.recv(65536).decode()
        assert forwarded.startswith("INVITE ") and "Call-ID: mtls-True" in forwarded
        token = re.search(r"^Identity: ([^;\r\n]+)", forwarded, re.M)
        assert token is not None and decode_passport(token.group(1)).claims["attest"] == "A"
        metrics = scrape(ports.admin)
        assert metric(metrics, 'stirshaken_io_events_total{event="tls_verify_failures"}') \
            == 1, svc.log()
