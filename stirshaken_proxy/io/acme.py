"""Getting a signing certificate (ATIS-1000080 §6.3): the STI-PA's SPC token, the ACME order
(RFC 8555) for a TNAuthList identifier (RFC 9448) answered with ``tkauth-01`` (RFC 9447), the
CSR, the download, the atomic install and the publishing of the chain where x5u points.

The JWS, CSR and token checks are ``stir.acme``'s; this module moves bytes and files.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec

from ..config import AcmeConfig, SigningConfig
from ..stir.acme import (
    TKAUTH_01,
    TN_AUTH_LIST,
    SpcToken,
    TokenError,
    check_spc_token,
    jws,
    key_fingerprint,
    make_csr,
    problem_text,
    tn_auth_list_value,
)
from ..stir.certs import pem_private_key
from ..stir.credentials import SigningCertificate, SigningCertificateError, check_signing_chain
from ..stir.passport import b64url
from .keys import load_private_key

log = logging.getLogger(__name__)
MAX_RESPONSE_BYTES = 1 << 20
POLL_ATTEMPTS = 30


class CertificateRequestError(Exception):
    """The certificate could not be got; ``step`` says where (sti-pa, token, acme, check,
    install, publish). Nothing was installed."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class Obtained:
    """A certificate got, checked and installed."""

    identity: str
    certificate: SigningCertificate
    x5u: str
    published: str | None  # where the chain was PUT, if anywhere


def ssl_context(config: AcmeConfig) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if config.ca_file is not None:
        context.load_verify_locations(cafile=str(config.ca_file))
    return context


def account_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The ACME account key, created (0600) on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, pem_private_key(ec.generate_private_key(ec.SECP256R1())), 0o600)
        log.info("created the ACME account key %s", path)
    return load_private_key(path)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write beside the target and rename over it: a reader sees the old file or the new."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class StiPaClient:
    """The STI-PA's API (iconectiv's, as ATIS-1000080 §6.3.5.2 describes the SPC token
    request): log in, then ``POST {url}/account/{SPC}/token`` with the ``atc`` to bind."""

    def __init__(self, config: AcmeConfig, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.session = session

    async def _json(self, response: aiohttp.ClientResponse) -> Any:
        body = await response.content.read(MAX_RESPONSE_BYTES)
        try:
            return json.loads(body)
        except ValueError:
            return None

    async def token(self, *, spc: str, fingerprint: str) -> str:
        c = self.config
        headers = {}
        if c.sti_pa_user:
            password = (c.sti_pa_password_file.read_text().strip()
                        if c.sti_pa_password_file is not None else "")
            async with self.session.post(f"{c.sti_pa_url}/auth/login",
                                         json={"userId": c.sti_pa_user,
                                               "password": password}) as r:
                body = await self._json(r)
                if r.status != 200 or not isinstance(body, dict) or \
                        not isinstance(body.get("accessToken"), str):
                    raise CertificateRequestError("sti-pa", f"login refused (HTTP {r.status}"
                                                  f"{_message(body)})")
                headers["Authorization"] = f"Bearer {body['accessToken']}"
        atc = {"tktype": TN_AUTH_LIST, "tkvalue": tn_auth_list_value(spc), "ca": False,
               "fingerprint": fingerprint}
        async with self.session.post(f"{c.sti_pa_url}/account/{spc}/token", json={"atc": atc},
                                     headers=headers) as r:
            body = await self._json(r)
            if r.status != 200 or not isinstance(body, dict) or \
                    body.get("status") != "success" or not isinstance(body.get("token"), str):
                raise CertificateRequestError(
                    "sti-pa", f"SPC token refused (HTTP {r.status}{_message(body)})")
            return str(body["token"])


def _message(body: Any) -> str:
    if isinstance(body, dict) and body.get("message"):
        return f": {str(body['message'])[:200]}"
    return ""


class AcmeClient:
    """An RFC 8555 client for one account key: every request a JWS POST with a fresh nonce."""

    def __init__(self, directory_url: str, key: ec.EllipticCurvePrivateKey,
                 session: aiohttp.ClientSession, *, poll_interval: float = 1.0) -> None:
        self.directory_url = directory_url
        self.key = key
        self.session = session
        self.directory: dict[str, Any] = {}
        self.kid: str | None = None
        self.nonce: str | None = None
        self.poll_interval = poll_interval

    async def _fetch_nonce(self) -> str:
        async with self.session.head(self.directory["newNonce"]) as r:
            nonce = r.headers.get("Replay-Nonce")
        if not nonce:
            raise CertificateRequestError("acme", "the server gave no Replay-Nonce")
        return nonce

    async def post(self, url: str, payload: dict[str, Any] | None,
                   *, raw: bool = False) -> tuple[int, Any, dict[str, str]]:
        """One signed request (a bad nonce is retried once, RFC 8555 §6.5)."""
        for attempt in range(2):
            nonce = self.nonce or await self._fetch_nonce()
            self.nonce = None
            body = jws(self.key, payload, url=url, nonce=nonce, kid=self.kid)
            async with self.session.post(url, data=body,
                                         headers={"Content-Type": "application/jose+json"}) as r:
                self.nonce = r.headers.get("Replay-Nonce")
                data = await r.content.read(MAX_RESPONSE_BYTES)
                headers = dict(r.headers)
                status = r.status
            if raw and status < 300:
                return status, data, headers
            try:
                parsed = json.loads(data) if data else {}
            except ValueError:
                parsed = None
            if status == 400 and isinstance(parsed, dict) and attempt == 0 and \
                    parsed.get("type") == "urn:ietf:params:acme:error:badNonce":
                continue
            return status, parsed, headers
        raise AssertionError("unreachable")

    async def start(self, contact: tuple[str, ...]) -> None:
        async with self.session.get(self.directory_url) as r:
            if r.status != 200:
                raise CertificateRequestError("acme", f"directory: HTTP {r.status}")
            self.directory = json.loads(await r.content.read(MAX_RESPONSE_BYTES))
        payload: dict[str, Any] = {"termsOfServiceAgreed": True}
        if contact:
            payload["contact"] = list(contact)
        status, body, headers = await self.post(self.directory["newAccount"], payload)
        if status not in (200, 201) or "Location" not in headers:
            raise CertificateRequestError("acme", "account: " + problem_text(body, status))
        self.kid = headers["Location"]

    async def poll(self, url: str, *, until: tuple[str, ...], what: str) -> dict[str, Any]:
        for _ in range(POLL_ATTEMPTS):
            status, body, _ = await self.post(url, None)
            if status != 200 or not isinstance(body, dict):
                raise CertificateRequestError("acme", f"{what}: " + problem_text(body, status))
            if body.get("status") in until:
                return body
            if body.get("status") == "invalid":
                detail = _challenge_error(body) or problem_text(body.get("error"), status)
                raise CertificateRequestError("acme", f"{what} is invalid: {detail}")
            await asyncio.sleep(self.poll_interval)
        raise CertificateRequestError("acme", f"{what} still {body.get('status')} after "
                                      f"{POLL_ATTEMPTS} polls")


def _challenge_error(authz: dict[str, Any]) -> str:
    for challenge in authz.get("challenges", ()):
        if isinstance(challenge, dict) and challenge.get("error"):
            return problem_text(challenge["error"], 400)
    return ""


async def obtain(identity: SigningConfig, config: AcmeConfig, *,
                 clock: Any = time.time) -> Obtained:
    """The whole ATIS-1000080 flow for one signing identity; the running files are replaced
    only once the new certificate passed every check (and was published)."""
    acct_key = account_key(config.account_key)
    timeout = aiohttp.ClientTimeout(total=config.timeout)
    connector = aiohttp.TCPConnector(ssl=ssl_context(config))
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        try:
            return await _obtain(identity, config, acct_key, session, clock)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise CertificateRequestError("network", str(exc) or type(exc).__name__) from None


async def _obtain(identity: SigningConfig, config: AcmeConfig,
                  acct_key: ec.EllipticCurvePrivateKey, session: aiohttp.ClientSession,
                  clock: Any) -> Obtained:
    spc = identity.spc
    acme = AcmeClient(config.directory, acct_key, session)
    await acme.start(config.contact)
    fingerprint = key_fingerprint(acct_key.public_key())
    identifier = {"type": TN_AUTH_LIST, "value": tn_auth_list_value(spc)}
    status, order, headers = await acme.post(acme.directory["newOrder"],
                                             {"identifiers": [identifier]})
    if status != 201 or not isinstance(order, dict) or "Location" not in headers:
        raise CertificateRequestError("acme", "order refused: " + problem_text(order, status))
    order_url = headers["Location"]
    token: SpcToken | None = None
    for authz_url in order.get("authorizations", ()):
        status, authz, _ = await acme.post(authz_url, None)
        if status != 200 or not isinstance(authz, dict):
            raise CertificateRequestError("acme", "authorization: " + problem_text(authz, status))
        if authz.get("status") == "valid":
            continue
        challenge = next((c for c in authz.get("challenges", ())
                          if isinstance(c, dict) and c.get("type") == TKAUTH_01), None)
        if challenge is None:
            raise CertificateRequestError("acme", "the authorization offers no tkauth-01")
        if token is None:
            raw = await StiPaClient(config, session).token(spc=spc, fingerprint=fingerprint)
            try:
                token = check_spc_token(raw, issuers=list(config.sti_pa_keys),
                                        account_key=acct_key.public_key(), spc=spc,
                                        now=clock(), min_validity=config.token_lifetime_margin)
            except TokenError as exc:
                raise CertificateRequestError("token", str(exc)) from None
        status, body, _ = await acme.post(challenge["url"], {"atc": token.token})
        if status != 200:
            raise CertificateRequestError("acme", "challenge refused: " +
                                          problem_text(body, status))
        await acme.poll(authz_url, until=("valid",), what="authorization")
    cert_key = ec.generate_private_key(ec.SECP256R1())
    csr = make_csr(cert_key, spc=spc, organization=identity.organization)
    status, body, _ = await acme.post(order["finalize"], {"csr": b64url(csr)})
    if status != 200 or not isinstance(body, dict):
        raise CertificateRequestError("acme", "finalize refused: " + problem_text(body, status))
    order = body if body.get("status") == "valid" else await acme.poll(
        order_url, until=("valid",), what="order")
    status, chain, _ = await acme.post(order["certificate"], None, raw=True)
    if status != 200 or not isinstance(chain, bytes):
        raise CertificateRequestError("acme", "download: " + problem_text(chain, status))
    try:
        info = check_signing_chain(cert_key, chain, spc=spc, roots=list(identity.roots),
                                   now=clock())
    except SigningCertificateError as exc:
        raise CertificateRequestError("check", str(exc)) from None
    serial_x5u = identity.x5u_template.replace("{serial}", info.serial)
    published = None
    if identity.publish_url:
        published = await publish(identity, chain, info, session)
    install(identity, cert_key, chain)
    log.info("certificate %s for SPC %s installed for identity %s (valid until %s)",
             info.serial, spc, identity.name,
             time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.not_after)))
    return Obtained(identity=identity.name, certificate=info, x5u=serial_x5u,
                    published=published)


async def publish(identity: SigningConfig, chain: bytes, info: SigningCertificate,
                  session: aiohttp.ClientSession) -> str:
    """HTTP PUT of the chain to the certificate repository behind x5u (before we sign with
    it: a verifier must find the new chain at the new x5u)."""
    url = identity.publish_url.replace("{serial}", info.serial)
    headers = {"Content-Type": "application/x-pem-file"}
    if identity.publish_token_file is not None:
        headers["Authorization"] = f"Bearer {identity.publish_token_file.read_text().strip()}"
    async with session.put(url, data=chain, headers=headers) as r:
        if r.status not in (200, 201, 204):
            raise CertificateRequestError("publish", f"PUT {url}: HTTP {r.status}")
    return url


def install(identity: SigningConfig, key: ec.EllipticCurvePrivateKey, chain: bytes) -> None:
    """Key (0600), certificate and chain, each renamed into place; the key last, so a reader
    that sees the new key also sees the new certificate (and ``check_signing_chain`` on load
    refuses a pair caught in between)."""
    assert identity.certificate is not None and identity.chain is not None
    first_end = chain.index(b"-----END CERTIFICATE-----") + len(b"-----END CERTIFICATE-----")
    for path in (identity.certificate, identity.chain, identity.key_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(identity.chain, chain, 0o644)
    write_atomic(identity.certificate, chain[:first_end] + b"\n", 0o644)
    write_atomic(identity.key_path, pem_private_key(key), 0o600)
