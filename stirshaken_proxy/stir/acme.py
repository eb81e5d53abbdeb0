"""Certificates by ACME for STI (ATIS-1000080, RFC 8555, RFC 9447, RFC 9448): the pure part.

JWS requests signed with the ACME account key (RFC 8555 §6.2), the TNAuthList identifier and
the CSR that carries it, the SPC token an STI-PA issues and the checks our client makes on it
before answering a ``tkauth-01`` challenge, and when a certificate is due for renewal. No
I/O: ``io.acme`` moves the bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .certs import TN_AUTH_LIST_OID, encode_tn_auth_list_spc
from .passport import PassportError, b64url, decode_passport, der_to_raw

TKAUTH_01 = "tkauth-01"  # RFC 9447 §3
TN_AUTH_LIST = "TNAuthList"  # RFC 9448 §3: identifier type and atc tktype


def _coordinate(value: int) -> str:
    return b64url(value.to_bytes(32, "big"))


def jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The public JWK of a P-256 key (RFC 7518 §6.2), members in RFC 7638's order."""
    numbers = key.public_numbers()
    return {"crv": "P-256", "kty": "EC", "x": _coordinate(numbers.x),
            "y": _coordinate(numbers.y)}


def jwk_thumbprint(key: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url)."""
    canonical = json.dumps(jwk(key), separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def key_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """The ``fingerprint`` an SPC token binds (RFC 9447 §4, ATIS-1000080 §6.3.5.2): SHA-256
    of the ACME account key's SubjectPublicKeyInfo, as "SHA256 AB:CD:..." (RFC 4572's form)."""
    spki = key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return "SHA256 " + ":".join(f"{b:02X}" for b in hashlib.sha256(spki).digest())


def tn_auth_list_value(spc: str) -> str:
    """The TNAuthList identifier value and the atc ``tkvalue``: base64 of the DER
    TNAuthList holding the SPC (RFC 9448 §3 and §5.4; the STI-PA's form, padded)."""
    return base64.b64encode(encode_tn_auth_list_spc(spc)).decode("ascii")


def jws(key: ec.EllipticCurvePrivateKey, payload: dict[str, Any] | None, *, url: str,
        nonce: str, kid: str | None = None) -> bytes:
    """A flattened JWS request body (RFC 8555 §6.2): ``kid`` once the account exists, the
    JWK before; ``payload`` None is a POST-as-GET (§6.3, empty payload)."""
    protected: dict[str, Any] = {"alg": "ES256", "nonce": nonce, "url": url}
    if kid is None:
        protected["jwk"] = jwk(key.public_key())
    else:
        protected["kid"] = kid
    head = b64url(json.dumps(protected, separators=(",", ":")).encode())
    body = "" if payload is None else b64url(json.dumps(payload, separators=(",", ":"))
                                             .encode())
    signature = der_to_raw(key.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256())))
    return json.dumps({"protected": head, "payload": body,
                       "signature": b64url(signature)}).encode()


def make_csr(key: ec.EllipticCurvePrivateKey, *, spc: str, organization: str,
             country: str = "US") -> bytes:
    """DER CSR for an STI end-entity certificate: subject C, O and CN "SHAKEN <SPC>"
    (ATIS-1000080 §6.4.1) and the TNAuthList extension with the SPC."""
    subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, country),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"SHAKEN {spc}")])
    csr = (x509.CertificateSigningRequestBuilder().subject_name(subject)
           .add_extension(x509.UnrecognizedExtension(TN_AUTH_LIST_OID,
                                                     encode_tn_auth_list_spc(spc)),
                          critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.DER)


class TokenError(Exception):
    """An SPC token we must not use: the reason says which check failed."""


@dataclass(frozen=True, kw_only=True)
class SpcToken:
    """A checked SPC token (ATIS-1000080 §6.3.5.2)."""

    token: str
    spc: str
    expires: int  # exp, Unix time
    jti: str


def check_spc_token(token: str, *, issuers: list[ec.EllipticCurvePublicKey],
                    account_key: ec.EllipticCurvePublicKey, spc: str, now: float,
                    min_validity: float = 60.0) -> SpcToken:
    """What an STI-CA checks (ATIS-1000080 §6.3.5.2, RFC 9448 §5), checked before we answer
    a challenge with the token: ES256 signed by one of the STI-PA's keys, not expired (with
    ``min_validity`` seconds to spare), ``atc`` naming TNAuthList with exactly our SPC, for an
    end-entity certificate, bound to our ACME account key's fingerprint."""
    try:
        jws_token = decode_passport(token)  # the same JWS compact form as a PASSporT
    except PassportError as exc:
        raise TokenError(f"undecodable token: {exc.reason}") from None
    header, claims = jws_token.header, jws_token.claims
    if header.get("alg") != "ES256":
        raise TokenError(f"alg {header.get('alg')!r} is not ES256")
    if not any(jws_token.verify(issuer) for issuer in issuers):
        raise TokenError("signature does not verify with the STI-PA's key")
    exp = claims.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise TokenError("exp is missing")
    if exp < now + min_validity:
        raise TokenError(f"token expired or expires within {min_validity:.0f} s (exp {exp})")
    atc = claims.get("atc")
    if not isinstance(atc, dict):
        raise TokenError("atc claim is missing")
    if atc.get("tktype") != TN_AUTH_LIST:
        raise TokenError(f"atc tktype {atc.get('tktype')!r} is not TNAuthList")
    if atc.get("ca") not in (False, None):
        raise TokenError("token is for a CA certificate")
    try:
        tkvalue = base64.b64decode(str(atc.get("tkvalue", "")), validate=True)
    except binascii.Error:
        raise TokenError("atc tkvalue is not base64") from None
    if tkvalue != encode_tn_auth_list_spc(spc):
        raise TokenError(f"atc tkvalue is not the TNAuthList of SPC {spc}")
    expected = key_fingerprint(account_key)
    if str(atc.get("fingerprint", "")).upper() != expected:
        raise TokenError("atc fingerprint is not our ACME account key's")
    return SpcToken(token=token, spc=spc, expires=exp, jti=str(claims.get("jti", "")))


def renewal_time(not_before: float, not_after: float, renew_before: float) -> float:
    """When a certificate is due for renewal: ``renew_before`` (a share of its lifetime,
    0 < share < 1) before it expires."""
    return not_after - (not_after - not_before) * renew_before


def problem_text(body: Any, status: int) -> str:
    """An ACME problem document (RFC 8555 §6.7) as one line."""
    if isinstance(body, dict):
        kind = str(body.get("type", "")).removeprefix("urn:ietf:params:acme:error:")
        detail = str(body.get("detail", ""))
        return f"{status} {kind}: {detail}".strip(": ")
    return f"HTTP {status}"
