"""SIP over TLS: the SSL contexts of the listeners and of the connections we open, the peer
identities of RFC 5922, and development certificates made on first run."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..stir.certs import issue_certificate, pem_private_key


class TlsSetupError(Exception):
    """A certificate, key or CA file the TLS settings name that cannot be used."""


@dataclass(frozen=True, kw_only=True)
class TlsSettings:
    """[tls]: our certificate for both directions and the CAs we trust for peers."""

    certificate: Path
    key: Path
    ca_files: tuple[Path, ...] = ()
    handshake_timeout: float = 5.0
    min_version: str = "1.2"

    def server_context(self, verify_clients: str) -> ssl.SSLContext:
        """A listener's context. ``verify_clients``: "none", "optional" (a certificate, if
        sent, must chain to our CAs; accounts may be recognised by it) or "required"."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._common(ctx)
        if verify_clients != "none":
            ctx.verify_mode = (ssl.CERT_REQUIRED if verify_clients == "required"
                               else ssl.CERT_OPTIONAL)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """The context of connections we open (to a next hop). The chain is checked by
        OpenSSL; the name by ``matches_name`` (RFC 5922 §7.3: URI and DNS SANs, no
        wildcards), so ``check_hostname`` is off."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._common(ctx)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def _common(self, ctx: ssl.SSLContext) -> None:
        ctx.minimum_version = (ssl.TLSVersion.TLSv1_3 if self.min_version == "1.3"
                               else ssl.TLSVersion.TLSv1_2)
        try:
            ctx.load_cert_chain(self.certificate, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise TlsSetupError(f"cannot load TLS certificate {self.certificate} with key "
                                f"{self.key}: {exc}") from None
        for ca in self.ca_files:
            try:
                ctx.load_verify_locations(cafile=str(ca))
            except (OSError, ssl.SSLError) as exc:
                raise TlsSetupError(f"cannot load TLS CA file {ca}: {exc}") from None
        if not self.ca_files:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)


def certificate_names(der: bytes) -> tuple[str, ...]:
    """The identities a certificate carries for SIP (RFC 5922 §7.1): the domains of its
    `sip:` URI SubjectAltNames and its DNS names, lower case; its IP addresses; the CN only
    when it has none of those."""
    cert = x509.load_der_x509_certificate(der)
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            scheme, _, rest = uri.partition(":")
            if scheme.lower() in ("sip", "sips") and rest and "@" not in rest:
                names.append(rest.split(";")[0].split(":")[0].lower())
        names.extend(n.lower() for n in san.get_values_for_type(x509.DNSName))
        names.extend(str(a) for a in san.get_values_for_type(x509.IPAddress))
    if not names:
        names.extend(str(a.value).lower()
                     for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    return tuple(dict.fromkeys(names))


def matches_name(der: bytes, expected: str) -> bool:
    """RFC 5922 §7.3: the server certificate names the domain we connected for, exactly
    (wildcards are not accepted, §7.2); an IP address next hop matches an IP SAN."""
    want = expected.lower().strip("[]")
    try:
        want = str(ipaddress.ip_address(want))
    except ValueError:
        pass
    return want in certificate_names(der)


# -- development certificates -----------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class DevTlsFiles:
    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path

    def files(self) -> tuple[Path, ...]:
        return (self.ca_cert, self.ca_key, self.cert, self.key)


def write_dev_tls(paths: DevTlsFiles, *, names: tuple[str, ...], days: int = 365,
                  now: dt.datetime | None = None) -> None:
    """A development TLS CA and a certificate for ``names`` (IP addresses and DNS names),
    usable as server and as client. Existing files are never overwritten (FileExistsError);
    private keys are 0600."""
    existing = [p for p in paths.files() if p.exists()]
    if existing:
        raise FileExistsError(f"{existing[0]} already exists; not overwriting key material")
    now = now or dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue_certificate(subject_cn="stirshaken-proxy dev SIP TLS CA", key=ca_key,
                           issuer_cert=None, issuer_key=ca_key, ca=True, spc=None,
                           not_before=now - dt.timedelta(minutes=5),
                           not_after=now + dt.timedelta(days=days * 3))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_certificate(subject_cn=names[0], key=key, issuer_cert=ca, issuer_key=ca_key,
                             ca=False, spc=None, not_before=now - dt.timedelta(minutes=5),
                             not_after=now + dt.timedelta(days=days), san=names,
                             usages=(ExtendedKeyUsageOID.SERVER_AUTH,
                                     ExtendedKeyUsageOID.CLIENT_AUTH))
    pem = serialization.Encoding.PEM
    for folder in {p.parent for p in paths.files()}:
        folder.mkdir(parents=True, exist_ok=True)
    for path, data, mode in ((paths.ca_key, pem_private_key(ca_key), 0o600),
                             (paths.key, pem_private_key(key), 0o600),
                             (paths.ca_cert, ca.public_bytes(pem), 0o644),
                             (paths.cert, cert.public_bytes(pem), 0o644)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)


__all__ = ["DevTlsFiles", "TlsSettings", "TlsSetupError", "certificate_names", "matches_name",
           "write_dev_tls"]
