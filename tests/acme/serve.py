"""acme2certifier on 127.0.0.1 for the tests (run with the interpreter of its own virtual
environment, .venv-acme): ``serve.py CONFIG STI_PA_CERT PORT_FILE``.

acme2certifier 0.46 accepts any tkauth-01 token (with ACME2CERTIFIER_I_KNOW_THE_RISK=1); the
check an STI-CA makes on the SPC token (ATIS-1000080 §6.3.5.2: signed by the STI-PA, not
expired, the ordering account key's fingerprint, the TNAuthList of the authorization) is made
here, in front of its WSGI application, on every challenge response that carries ``atc``."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable
from configparser import ConfigParser
from io import BytesIO
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from jwcrypto import jwk, jws

CHALLENGE_PATH = re.compile(r"^/acme/chall/([A-Za-z0-9_-]+)$")


def b64url_json(text: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


class TokenCheck:
    """The STI-CA's SPC token check, as WSGI middleware around acme2certifier."""

    def __init__(self, app: Callable[..., Iterable[bytes]], db: str, sti_pa_cert: str) -> None:
        self.app = app
        self.db = db
        with open(sti_pa_cert, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        pem = cert.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        self.sti_pa = jwk.JWK.from_pem(pem)

    def problem(self, challenge: str, body: bytes) -> str | None:
        request = json.loads(body)
        protected = b64url_json(request["protected"])
        payload = b64url_json(request["payload"]) if request.get("payload") else {}
        if "atc" not in payload:
            return None
        with sqlite3.connect(self.db) as db:
            row = db.execute("SELECT jwk FROM account WHERE name = ?",
                             (str(protected.get("kid", "")).rsplit("/", 1)[-1],)).fetchone()
            authz = db.execute(
                'SELECT a.value FROM challenge c JOIN "authorization" a '
                "ON c.authorization_id = a.id WHERE c.name = ?", (challenge,)).fetchone()
        if row is None or authz is None:
            return "unknown account or challenge"
        token = jws.JWS()
        try:
            token.deserialize(payload["atc"])
            token.verify(self.sti_pa, alg="ES256")
        except Exception as exc:  # jwcrypto raises several kinds  # noqa: BLE001
            return f"token signature: {exc}"
        claims = json.loads(token.payload)
        atc = claims.get("atc", {})
        account = jwk.JWK(**json.loads(row[0]))
        spki = serialization.load_pem_public_key(account.export_to_pem()).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        fingerprint = "SHA256 " + ":".join(f"{b:02X}" for b in hashlib.sha256(spki).digest())
        if not isinstance(claims.get("exp"), int) or claims["exp"] <= time.time():
            return "token expired"
        if atc.get("tktype") != "TNAuthList" or atc.get("ca") is not False:
            return "token is not for a TNAuthList end-entity certificate"
        if atc.get("tkvalue") != authz[0]:
            return "token TNAuthList is not the authorization's"
        if atc.get("fingerprint") != fingerprint:
            return "token fingerprint is not the ordering account key's"
        return None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        match = CHALLENGE_PATH.match(environ.get("PATH_INFO", ""))
        if environ.get("REQUEST_METHOD") == "POST" and match:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length)
            environ["wsgi.input"] = BytesIO(body)
            try:
                problem = self.problem(match.group(1), body)
            except (ValueError, KeyError, TypeError) as exc:
                problem = f"malformed challenge response: {exc}"
            sys.stderr.write(f"tkauth check {challenge_result(problem)}\n")
            sys.stderr.flush()
            if problem is not None:
                doc = json.dumps({"type": "urn:ietf:params:acme:error:unauthorized",
                                  "detail": problem, "status": 403}).encode()
                start_response("403 Forbidden", [("Content-Type", "application/problem+json"),
                                                  ("Content-Length", str(len(doc)))])
                return [doc]
        return self.app(environ, start_response)


def challenge_result(problem: str | None) -> str:
    return "passed" if problem is None else f"refused: {problem}"


class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return

    def address_string(self) -> str:
        return str(self.client_address[0])


def main() -> None:
    config, sti_pa_cert, port_file = sys.argv[1:4]
    parser = ConfigParser()
    parser.read(config)
    from acme2certifier.share.acme2certifier_wsgi import application

    app = TokenCheck(application, parser["DBhandler"]["dbfile"], sti_pa_cert)
    server = make_server("127.0.0.1", 0, app, server_class=Server, handler_class=QuietHandler)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    import os

    os.replace(port_file + ".tmp", port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
