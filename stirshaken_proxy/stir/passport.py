"""SHAKEN PASSporTs (RFC 8225, RFC 8588) and the RFC 8224 Identity header.

Signing is on the hot path of every outbound INVITE, so the JOSE header and the fixed claim
fragments are encoded once per signing identity; a call only formats its own claims, signs,
and writes the raw r||s that JWS ES256 wants (RFC 7518 §3.4). With the compiled core in use
the signature comes from ``_es256`` (OpenSSL's EVP signing, hedged nonces: see its header);
``cryptography`` is the reference and the fallback.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from ..sip.message import core_in_use

_es256: ModuleType | None
try:
    from . import _es256
except ImportError:  # built without OpenSSL's headers (or without a C compiler)
    _es256 = None

_ES256 = ec.ECDSA(hashes.SHA256())


class Attestation(enum.Enum):
    """SHAKEN attestation levels (ATIS-1000074 §5.2.3)."""

    A = "A"  # full: the customer is authenticated and authorised to use the number
    B = "B"  # partial: the customer is authenticated, the number is not known to be theirs
    C = "C"  # gateway: the call entered from a gateway, the origin is not authenticated


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url without padding (RFC 7515 §2); raises ValueError."""
    if not text or "=" in text or any(c in text for c in "+/ \t\r\n"):
        raise ValueError("not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


def canonical_json(value: Any) -> str:
    """RFC 8225 §9: keys in lexicographic order, no whitespace. Every JOSE header and claim
    set we sign is this encoder's output (``Signer.claims`` writes the same text directly, as
    its test shows). NaN and infinities are no JSON (RFC 8259 §6): refused."""
    try:
        return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False,
                          allow_nan=False)
    except ValueError as exc:
        raise ClaimError("claims", str(exc)) from None


class ClaimError(ValueError):
    """A claim value we do not sign as given: ``field`` names it (``orig.tn``, ``origid``)."""

    def __init__(self, field: str, text: str) -> None:
        super().__init__(f"{field}: {text}")
        self.field = field
        self.text = text


MAX_TN = 15  # digits of an E.164 number (ITU-T E.164 §6)
MAX_DESTS = 32  # called numbers one PASSporT may name
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


def check_tn(value: object, field: str) -> str:
    """A canonical telephone number (RFC 8224 §8.3): ASCII digits only, 1 to 15 of them."""
    if not isinstance(value, str) or not value.isdigit() or not value.isascii() \
            or len(value) > MAX_TN:
        raise ClaimError(field, f"{value!r} is not a canonical telephone number "
                         f"(1 to {MAX_TN} digits)")
    return value


def check_origid(value: object) -> str:
    """RFC 8588 §4 origid: a UUID in its canonical text (RFC 4122 §3: 8-4-4-4-12 lowercase
    hexadecimal digits), exactly; anything else is refused, not rewritten."""
    if not isinstance(value, str) or _UUID.match(value) is None:
        raise ClaimError("origid", f"{value!r} is not a UUID in canonical form "
                         "(RFC 4122: 8-4-4-4-12 lowercase hexadecimal digits)")
    return value


def check_iat(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 1 << 40:
        raise ClaimError("iat", f"{value!r} is not a positive number of seconds")
    return value


def der_to_raw(der: bytes) -> bytes:
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def jws_signer(key: ec.EllipticCurvePrivateKey, *, compiled: bool | None = None
               ) -> Callable[[str, str], str]:
    """``sign(header_b64, payload) -> compact JWS`` (RFC 7515 §7.1) with ES256 and ``key``:
    the compiled signer while the compiled core is in use (``compiled`` None) or when asked
    for, else the reference below on ``cryptography``."""
    if compiled is None:
        compiled = core_in_use() == "compiled" and _es256 is not None
    if compiled:
        if _es256 is None:
            raise ValueError("the compiled ES256 signer was not built in this install")
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        sign_jws: Callable[[str, str], str] = _es256.Signer(der).sign_jws
        return sign_jws

    def reference(header_b64: str, payload: str) -> str:
        signing_input = header_b64 + "." + b64url(payload.encode())
        raw = der_to_raw(key.sign(signing_input.encode("ascii"), _ES256))
        return signing_input + "." + b64url(raw)

    return reference


def compiled_signer_available() -> bool:
    return _es256 is not None


def raw_to_der(raw: bytes) -> bytes:
    if len(raw) != 64:
        raise ValueError("ES256 signature must be 64 bytes (r||s)")
    return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


@dataclass(frozen=True, kw_only=True)
class SigningIdentity:
    """One certificate we sign with: its name, private key and x5u."""

    name: str
    key: ec.EllipticCurvePrivateKey
    x5u: str


class Signer:
    """Signs SHAKEN PASSporTs for one signing identity."""

    __slots__ = ("_div_header_b64", "_div_info", "_header_b64", "_info", "_sign_jws", "identity")

    def __init__(self, identity: SigningIdentity) -> None:
        if not isinstance(identity.key.curve, ec.SECP256R1):
            raise ValueError(f"signing key {identity.name!r} is not a P-256 key (ES256)")
        self.identity = identity
        self._sign_jws = jws_signer(identity.key)
        header = canonical_json({"alg": "ES256", "ppt": "shaken", "typ": "passport",
                                 "x5u": identity.x5u})
        self._header_b64 = b64url(header.encode())
        self._div_header_b64 = b64url(canonical_json(
            {"alg": "ES256", "ppt": "div", "typ": "passport", "x5u": identity.x5u}).encode())
        self._info = f";info=<{identity.x5u}>;alg=ES256;ppt=shaken"
        self._div_info = f";info=<{identity.x5u}>;alg=ES256;ppt=div"

    def claims(self, *, attest: Attestation, orig: str, dest: list[str], iat: int,
               origid: str) -> str:
        """The claims in canonical form: attest, dest, iat, orig, origid (sorted keys), the
        text ``canonical_json`` makes of them (tested). Each value is checked first (raises
        ClaimError): digits and a canonical UUID need no JSON escaping, and nothing else
        gets in."""
        check_claims(orig=orig, dest=dest, iat=iat, origid=origid)
        dests = '","'.join(dest)
        return (f'{{"attest":"{attest._value_}","dest":{{"tn":["{dests}"]}},"iat":{iat},'
                f'"orig":{{"tn":"{orig}"}},"origid":"{origid}"}}')

    def sign_claims(self, claims: str, header_b64: str | None = None) -> str:
        return self._sign_jws(header_b64 or self._header_b64, claims)

    def sign(self, *, attest: Attestation, orig: str, dest: list[str], iat: int,
             origid: str) -> str:
        return self.sign_claims(self.claims(attest=attest, orig=orig, dest=dest, iat=iat,
                                            origid=origid))

    def sign_with(self, *, attest: Attestation, orig: str, dest: list[str], iat: int,
                  origid: str, extra: dict[str, Any]) -> str:
        """A SHAKEN PASSporT with more claims (Rich Call Data: rcd, rcdi, crn), in
        canonical JSON (RFC 8225 §9)."""
        check_claims(orig=orig, dest=dest, iat=iat, origid=origid)
        if not extra.keys().isdisjoint(("attest", "dest", "iat", "orig", "origid")):
            raise ClaimError("claims", "an extension may not replace a SHAKEN claim")
        claims = {"attest": attest.value, "dest": {"tn": dest}, "iat": iat,
                  "orig": {"tn": orig}, "origid": origid, **extra}
        return self.sign_claims(canonical_json(claims))

    def sign_div(self, *, orig: str, dest: list[str], div: str, iat: int) -> str:
        """A div PASSporT (RFC 8946): the call from ``orig`` to ``div`` was diverted to
        ``dest``. Returns the Identity header value (``ppt=div``)."""
        check_claims(orig=orig, dest=dest, iat=iat)
        check_tn(div, "div.tn")
        claims = canonical_json({"dest": {"tn": dest}, "div": {"tn": div}, "iat": iat,
                                 "orig": {"tn": orig}})
        token = self.sign_claims(claims, self._div_header_b64)
        return token + self._div_info

    def identity_value(self, token: str) -> str:
        """RFC 8224 §4: ``<full PASSporT>;info=<x5u>;alg=ES256;ppt=shaken``."""
        return token + self._info


def check_claims(*, orig: str, dest: list[str], iat: int, origid: str | None = None) -> None:
    """The claims every PASSporT we sign carries, checked (raises ClaimError naming the
    field): a few string tests a call, on the hot path."""
    if not isinstance(orig, str) or not orig.isdigit() or not orig.isascii() \
            or len(orig) > MAX_TN:
        check_tn(orig, "orig.tn")
    if not dest or len(dest) > MAX_DESTS:
        raise ClaimError("dest.tn", f"1 to {MAX_DESTS} called numbers")
    for tn in dest:
        check_tn(tn, "dest.tn")
    check_iat(iat)
    if origid is not None:
        check_origid(origid)


class PassportError(Exception):
    """A PASSporT that cannot be decoded or does not verify; ``reason`` is for logs/metrics."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class Passport:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes

    def verify(self, public_key: ec.EllipticCurvePublicKey) -> bool:
        try:
            public_key.verify(raw_to_der(self.signature), self.signing_input, _ES256)
        except (InvalidSignature, ValueError):
            return False
        return True


def decode_passport(token: str) -> Passport:
    """Split and decode a full-form PASSporT (no verification). Raises PassportError."""
    parts = token.split(".")
    if len(parts) != 3:
        raise PassportError("not a full-form JWS (three parts)")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        signature = b64url_decode(parts[2]) if parts[2] else b""
    except (ValueError, UnicodeDecodeError) as exc:
        raise PassportError(f"undecodable PASSporT: {exc}") from None
    if not signature:
        # An unsecured JWS ("alg": "none") is no PASSporT at all: an invalid header (438),
        # not merely an unsupported algorithm.
        raise PassportError("unsigned PASSporT (empty signature)")
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise PassportError("PASSporT header or claims are not JSON objects")
    return Passport(header=header, claims=claims,
                    signing_input=(parts[0] + "." + parts[1]).encode("ascii"),
                    signature=signature)
