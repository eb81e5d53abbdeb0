"""The peers of the certificate flow (ATIS-1000080), on 127.0.0.1: a stand-in for the STI-PA
(outside the machine in production; it issues SPC tokens the way ATIS-1000080 §6.3.5.2 and
the STI-PA's API describe, signed with PyJWT) and the real acme2certifier as the STI-CA."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from stirshaken_proxy.stir.certs import issue_certificate, pem_private_key

from .support import HOST, ROOT

A2C_PYTHON = ROOT / ".venv-acme" / "bin" / "python"


def _self_signed(key: ec.EllipticCurvePrivateKey, cn: str, *, ca: bool,
                 days: int = 30) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return issue_certificate(subject_cn=cn, key=key, issuer_cert=None, issuer_key=key, ca=ca,
                             spc=None, not_before=now - dt.timedelta(minutes=5),
                             not_after=now + dt.timedelta(days=days))


@dataclass
class StiPa:
    """The STI-PA's API: ``POST /api/v1/auth/login`` then ``POST
    /api/v1/account/{SPC}/token`` with ``{"atc": {...}}``; the token is an ES256 JWT with
    x5u, exp, jti and the atc it was asked for. ``refuse`` answers as the STI-PA does when it
    will not issue; ``claims`` overrides what goes into the next tokens (bad-token tests)."""

    directory: Path
    user: str = "noc@provider.test"
    password: str = "s3cret"
    lifetime: int = 3600
    refuse: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    atc: dict[str, Any] = field(default_factory=dict)
    signing_key: ec.EllipticCurvePrivateKey | None = None  # None: the STI-PA's own key
    requests: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert_path = self.directory / "sti-pa.pem"
        self.cert_path.write_bytes(_self_signed(self.key, "STI-PA", ca=False)
                                   .public_bytes(serialization.Encoding.PEM))
        self.access = uuid.uuid4().hex
        pa = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    request = json.loads(body)
                except ValueError:
                    request = None
                status, answer = pa.answer(self.path, request,
                                           self.headers.get("Authorization", ""))
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.httpd = ThreadingHTTPServer((HOST, 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{HOST}:{self.httpd.server_address[1]}/api/v1"
        self.password_file = self.directory / "sti-pa-password"
        self.password_file.write_text(self.password + "\n")
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def answer(self, path: str, request: Any, authorization: str) -> tuple[int, Any]:
        self.requests.append({"path": path, "body": request})
        if path == "/api/v1/auth/login":
            if request == {"userId": self.user, "password": self.password}:
                return 200, {"status": "success", "accessToken": self.access,
                             "refreshToken": uuid.uuid4().hex}
            return 401, {"status": "failed", "message": "invalid userId or password"}
        if not path.startswith("/api/v1/account/") or not path.endswith("/token"):
            return 404, {"status": "failed", "message": "not found"}
        if authorization != f"Bearer {self.access}":
            return 401, {"status": "failed", "message": "not logged in"}
        if self.refuse is not None:
            return 403, {"status": "failed", "message": self.refuse}
        atc = request.get("atc") if isinstance(request, dict) else None
        if not isinstance(atc, dict) or set(atc) != {"tktype", "tkvalue", "ca", "fingerprint"}:
            return 400, {"status": "failed", "message": "atc is malformed"}
        claims = {"exp": int(time.time()) + self.lifetime, "jti": str(uuid.uuid4()),
                  "atc": {**atc, **self.atc}, **self.claims}
        token = jwt.encode(claims, self.signing_key or self.key, algorithm="ES256",
                           headers={"x5u": f"{self.url}/certificate/sti-pa.crt"})
        return 200, {"status": "success", "message": "SPC token created", "token": token,
                     "crl": f"{self.url}/crl"}

    def __enter__(self) -> StiPa:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class StiCa:
    """acme2certifier with its TNAuthList support on, issuing from a test STI-CA root (its
    OpenSSL CA handler with the TNAuthList copied into certificates), the SPC token checked
    in front of it (tests/acme/serve.py)."""

    def __init__(self, directory: Path, sti_pa_cert: Path, *, validity_days: int = 30,
                 tnauthlist: bool = True) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.root = _self_signed(self.key, "SHAKEN root", ca=True, days=365)
        self.root_path = directory / "sti-ca-root.pem"
        self.root_path.write_bytes(self.root.public_bytes(serialization.Encoding.PEM))
        (directory / "sti-ca-key.pem").write_bytes(pem_private_key(self.key))
        (directory / "issued").mkdir(exist_ok=True)
        now = dt.datetime.now(dt.UTC)
        crl = (x509.CertificateRevocationListBuilder().issuer_name(self.root.subject)
               .last_update(now - dt.timedelta(minutes=5))
               .next_update(now + dt.timedelta(days=7)).sign(self.key, hashes.SHA256()))
        (directory / "sti-ca.crl").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        self.config = directory / "acme_srv.cfg"
        self.config.write_text(f"""[DEFAULT]
debug: False

[Nonce]
nonce_check_disable: False

[CAhandler]
handler_module: sti_ca_handler
issuing_ca_key: {directory / 'sti-ca-key.pem'}
issuing_ca_cert: {self.root_path}
cert_save_path: {directory / 'issued'}
issuing_ca_crl: {directory / 'sti-ca.crl'}
cert_validity_days: {validity_days}

[DBhandler]
handler_module: acme2certifier.dbhandlers.wsgi_handler
dbfile: {directory / 'acme_srv.db'}

[Certificate]
revocation_reason_check_disable: False

[Challenge]
challenge_validation_disable: False
http_01_support: False
dns_01_support: False
tls_alpn_01_support: False

[Order]
tnauthlist_support: {tnauthlist}
""")
        self.sti_pa_cert = sti_pa_cert
        self.log_path = directory / "acme2certifier.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def directory_url(self) -> str:
        return f"http://{HOST}:{self.port}/directory"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> StiCa:
        port_file = self.directory / "port"
        env = {**os.environ, "ACME_SRV_CONFIGFILE": str(self.config),
               "ACME2CERTIFIER_I_KNOW_THE_RISK": "1",
               "PYTHONPATH": str(ROOT / "tests" / "acme")}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(A2C_PYTHON), str(ROOT / "tests" / "acme" / "serve.py"), str(self.config),
                 str(self.sti_pa_cert), str(port_file)], stdout=log, stderr=log, env=env,
                cwd=self.directory)
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"acme2certifier did not start:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
