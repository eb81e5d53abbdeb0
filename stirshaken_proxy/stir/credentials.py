"""Credentials behind x5u: parse the fetched chain, validate it to the STI-CA trust anchors,
check TNAuthList and revocation, and cache the outcome (pure: ``now`` comes in).

A chain is validated once when it is fetched; what depends on the call (the PASSporT's iat
inside every certificate's validity window) is checked per call from the cached bounds, so a
warm cache costs one signature verification per call and nothing more.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from .certs import certificate_spcs

MAX_CHAIN_DEPTH = 5
_MAX_AGE_RE = re.compile(r"\bmax-age\s*=\s*(\d+)")
_NO_STORE_RE = re.compile(r"\b(no-store|no-cache)\b")


@dataclass(frozen=True, kw_only=True)
class CachePolicy:
    """How long fetched chains and failures are kept (ATIS guidance: at most 24 h)."""

    max_age: float = 86_400.0
    default_age: float = 3_600.0  # when the server says nothing
    negative_age: float = 30.0  # failures are remembered this long


def cache_age(headers: Mapping[str, str], now: float, policy: CachePolicy) -> float:
    """Seconds to keep a response: Cache-Control max-age, else Expires, else the default;
    capped at max_age (no-store/no-cache: the negative age, so it is fetched again soon)."""
    lower = {k.lower(): v for k, v in headers.items()}
    cc = lower.get("cache-control", "")
    if _NO_STORE_RE.search(cc):
        return policy.negative_age
    m = _MAX_AGE_RE.search(cc)
    if m:
        return min(float(m.group(1)), policy.max_age)
    expires = lower.get("expires")
    if expires:
        try:
            when = email.utils.parsedate_to_datetime(expires).timestamp()
        except (TypeError, ValueError):
            when = now
        return max(0.0, min(when - now, policy.max_age))
    return min(policy.default_age, policy.max_age)


def parse_crl(data: bytes) -> x509.CertificateRevocationList:
    """A CRL in PEM or DER; raises ValueError."""
    if data.lstrip().startswith(b"-----"):
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


@dataclass(frozen=True, kw_only=True)
class Credential:
    """A fetched and validated chain. ``error`` is set when it cannot be used (a 437 reason)."""

    url: str
    public_key: ec.EllipticCurvePublicKey | None = None
    not_before: float = 0.0  # latest notBefore over the chain (Unix time)
    not_after: float = 0.0  # earliest notAfter over the chain
    spcs: tuple[str, ...] = ()
    subject: str = ""
    error: str | None = None
    crl_urls: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class FetchFailure:
    """The x5u could not be fetched (a 436 reason)."""

    url: str
    reason: str


def _ts(value: dt.datetime) -> float:
    return value.replace(tzinfo=dt.UTC).timestamp() if value.tzinfo is None else value.timestamp()


def load_pem_chain(data: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM chain (end-entity first); raises ValueError."""
    if b"-----BEGIN CERTIFICATE-----" not in data:
        # ATIS-1000074 serves PEM; accept a lone DER certificate as well.
        return [x509.load_der_x509_certificate(data)]
    certs = x509.load_pem_x509_certificates(data)
    if not certs:
        raise ValueError("no certificate in the chain")
    return certs


class TrustStore:
    """STI-CA trust anchors and the CRLs known from files or fetched from distribution points."""

    def __init__(self, anchors: list[x509.Certificate],
                 crls: list[x509.CertificateRevocationList] | None = None) -> None:
        self.anchors = anchors
        self._by_subject: dict[x509.Name, list[x509.Certificate]] = {}
        for a in anchors:
            self._by_subject.setdefault(a.subject, []).append(a)
        self.crls: list[x509.CertificateRevocationList] = list(crls or [])

    def add_crl(self, crl: x509.CertificateRevocationList) -> None:
        self.crls.append(crl)

    def anchors_for(self, name: x509.Name) -> list[x509.Certificate]:
        return self._by_subject.get(name, [])

    def is_revoked(self, cert: x509.Certificate, issuer: x509.Certificate) -> bool:
        for crl in self.crls:
            if crl.issuer != issuer.subject:
                continue
            key = issuer.public_key()
            if not isinstance(key, ec.EllipticCurvePublicKey) or \
                    not crl.is_signature_valid(key):
                continue  # a CRL we cannot authenticate says nothing
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                return True
        return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bc.ca


def build_credential(url: str, data: bytes, trust: TrustStore) -> Credential:
    """Parse and validate a fetched chain (RFC 8224 §6.2.1 step 3, ATIS-1000074 §5.3.1)."""
    try:
        chain = load_pem_chain(data)
    except ValueError as exc:
        return Credential(url=url, error=f"not a certificate chain: {exc}")
    ee = chain[0]
    key = ee.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return Credential(url=url, error="end-entity key is not P-256 (ES256)")
    try:
        spcs = tuple(certificate_spcs(ee))
    except ValueError as exc:
        return Credential(url=url, error=f"malformed TNAuthList: {exc}")
    if not spcs:
        return Credential(url=url, error="certificate has no TNAuthList with an SPC")
    if _is_ca(ee):
        return Credential(url=url, error="end-entity certificate is a CA certificate")
    # Walk up: each certificate must be issued by the next one in the chain or by an anchor.
    path = [ee]
    intermediates = chain[1:]
    current = ee
    anchored = False
    for _ in range(MAX_CHAIN_DEPTH):
        anchor = next((a for a in trust.anchors_for(current.issuer) if _issued_by(current, a)),
                      None)
        if anchor is not None:
            if trust.is_revoked(current, anchor):
                return Credential(url=url, error="certificate is revoked (CRL)")
            path.append(anchor)
            anchored = True
            break
        parent = next((c for c in intermediates if c is not current and _is_ca(c)
                       and _issued_by(current, c)), None)
        if parent is None:
            break
        if trust.is_revoked(current, parent):
            return Credential(url=url, error="certificate is revoked (CRL)")
        path.append(parent)
        current = parent
    if not anchored:
        if ee.issuer == ee.subject:
            return Credential(url=url, error="self-signed certificate is not a trusted STI-CA")
        return Credential(url=url, error="certificate does not chain to a trusted STI-CA")
    crl_urls: list[str] = []
    try:
        dps = ee.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        for dp in dps:
            for name in dp.full_name or ():
                if isinstance(name, x509.UniformResourceIdentifier):
                    crl_urls.append(name.value)
    except x509.ExtensionNotFound:
        pass
    return Credential(
        url=url, public_key=key,
        not_before=max(_ts(c.not_valid_before_utc) for c in path),
        not_after=min(_ts(c.not_valid_after_utc) for c in path),
        spcs=spcs, subject=ee.subject.rfc4514_string(), crl_urls=tuple(crl_urls))


@dataclass
class _Entry:
    value: Credential | FetchFailure
    expires: float


@dataclass
class CredentialCache:
    """Credentials by URL with expiry, bounded in entries (least recently used goes first)."""

    max_entries: int = 10_000
    _entries: OrderedDict[str, _Entry] = field(default_factory=OrderedDict)
    hits: int = 0
    misses: int = 0

    def get(self, url: str, now: float) -> Credential | FetchFailure | None:
        entry = self._entries.get(url)
        if entry is None or entry.expires <= now:
            if entry is not None:
                del self._entries[url]
            self.misses += 1
            return None
        self._entries.move_to_end(url)
        self.hits += 1
        return entry.value

    def put(self, url: str, value: Credential | FetchFailure, expires: float) -> None:
        self._entries[url] = _Entry(value, expires)
        self._entries.move_to_end(url)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)



class SigningCertificateError(Exception):
    """Our own signing certificate cannot be used: the reason names the check."""


@dataclass(frozen=True, kw_only=True)
class SigningCertificate:
    """Our own certificate, checked: what ``certs status``, the expiry gauge and renewal use."""

    serial: str  # hex, lower case: names the certificate in x5u templates
    not_before: float
    not_after: float
    spcs: tuple[str, ...]
    subject: str
    pem: bytes  # the chain as checked: what x5u serves


def check_signing_chain(key: ec.EllipticCurvePrivateKey, chain: bytes, *, spc: str,
                        roots: list[x509.Certificate], now: float) -> SigningCertificate:
    """The checks on a certificate before we sign with it (ATIS-1000080 §6.4.1): the key is the
    certificate's, its TNAuthList holds ``spc`` (when one is configured), the chain validates to
    one of ``roots`` (the STI-CA roots), and it is valid now."""
    if not roots:
        raise SigningCertificateError("no STI-CA root to check the chain against")
    credential = build_credential("", chain, TrustStore(roots))
    if credential.error is not None:
        raise SigningCertificateError(credential.error)
    assert credential.public_key is not None
    if credential.public_key.public_numbers() != key.public_key().public_numbers():
        raise SigningCertificateError("the private key does not match the certificate")
    if spc and spc not in credential.spcs:
        raise SigningCertificateError(
            f"the certificate's TNAuthList holds {', '.join(credential.spcs)}, not SPC {spc}")
    if now >= credential.not_after:
        raise SigningCertificateError("the certificate (or its chain) has expired")
    if now < credential.not_before:
        raise SigningCertificateError("the certificate is not valid yet")
    ee = load_pem_chain(chain)[0]
    return SigningCertificate(serial=f"{ee.serial_number:x}", not_before=credential.not_before,
                              not_after=credential.not_after, spcs=credential.spcs,
                              subject=credential.subject, pem=chain)
