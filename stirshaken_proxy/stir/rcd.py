"""Rich Call Data (RFC 9795, ATIS-1000094), pure: the brand an account or number presents, the
claims a SHAKEN PASSporT carries for it, and their checks on both sides.

Claims (in the ``shaken`` PASSporT we sign with our own certificate, its ``ppt`` unchanged):
  ``rcd``  {"nam": display name, "icn": https URL of a logo}
  ``rcdi`` {"/icn": "sha256-<base64 digest of the logo's bytes>"}: the integrity of the
           content ``icn`` points to, computed when the brand is set (the logo fetched under
           the x5u rules), checked by the verifier against what it fetches
  ``crn``  the call reason the dialer chose for this call
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

MAX_NAME = 64  # characters of a brand name (a caller-ID display is far shorter)
MAX_REASON = 64  # characters of a call reason (RFC 9796 suggests at most 64)
MAX_URL = 512
_DIGESTS = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}
_DIGEST_RE = re.compile(r"(sha256|sha384|sha512)-([A-Za-z0-9+/]+={0,2})\Z")


class RcdError(ValueError):
    """A brand, call reason or rcd claim that is not acceptable; the text says why."""


@dataclass(frozen=True, kw_only=True)
class Brand:
    """What an account (or one of its numbers) presents: a name, optionally a logo."""

    name: str
    logo: str = ""  # https URL
    logo_digest: str = ""  # "sha256-..." of the logo's bytes (rcdi)


def integrity(body: bytes, algorithm: str = "sha256") -> str:
    """``<alg>-<base64 digest>``, the integrity string of RFC 9795's rcdi."""
    return f"{algorithm}-" + base64.b64encode(_DIGESTS[algorithm](body).digest()).decode()


def digest_matches(expected: str, body: bytes) -> bool:
    m = _DIGEST_RE.match(expected)
    return m is not None and integrity(body, m.group(1)) == expected


def _text(value: str, what: str, limit: int) -> str:
    """The display text we sign (RFC 9795 ``nam``, RFC 9796 ``crn``): what a handset shows as
    a caller's name, so plain text that looks the same wherever it is shown. NFC-normalised
    Unicode, trimmed, at most ``limit`` characters, of letters, marks, digits, punctuation,
    symbols and the ASCII space only: no control or format characters (bidirectional
    overrides, zero-width joiners), no other spaces or line separators, no private-use or
    unassigned code points, and no ``<`` or ``>`` (markup). Returns the text to sign; a value
    that breaks a rule is refused, never cleaned."""
    if not isinstance(value, str):
        raise RcdError(f"{what} must be text")
    value = unicodedata.normalize("NFC", value.strip(" "))
    if not value:
        raise RcdError(f"{what} is empty")
    if len(value) > limit:
        raise RcdError(f"{what} has {len(value)} characters, more than {limit}")
    bad = [c for c in value if c != " " and (unicodedata.category(c)[0] in "CZ" or c in "<>")]
    if bad:
        codes = ", ".join(f"U+{ord(c):04X}" for c in bad[:3])
        kind = ("markup" if all(c in "<>" for c in bad) else
                "spaces other than U+0020" if all(unicodedata.category(c)[0] == "Z" for c in bad)
                else "control characters")
        raise RcdError(f"{what} contains {kind} ({codes}): plain text only")
    return value


def is_display_text(value: str, limit: int = MAX_NAME) -> bool:
    """``value`` is display text exactly as ``_text`` would sign it."""
    try:
        return _text(value, "text", limit) == value
    except RcdError:
        return False


def check_name(name: str) -> str:
    return _text(name, "brand name", MAX_NAME)


def check_reason(reason: str) -> str:
    return _text(reason, "call reason", MAX_REASON)


def check_logo_url(url: str) -> str:
    """An https URL without credentials or fragment (where the logo is fetched from)."""
    if not isinstance(url, str) or len(url) > MAX_URL:
        raise RcdError(f"logo URL longer than {MAX_URL} characters")
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise RcdError(f"logo {url!r} is not an https URL")
    if not parts.hostname or parts.username or parts.password or parts.fragment:
        raise RcdError(f"logo {url!r} must name a host, without credentials or fragment")
    if any(c.isspace() or unicodedata.category(c)[0] == "C" for c in url):
        raise RcdError(f"logo {url!r} contains spaces or control characters")
    return url


def claims(brand: Brand, reason: str | None) -> dict[str, Any]:
    """The rcd, rcdi and crn claims for a call. Every value is checked again here, where
    it is signed, whichever way it came in (config, CLI, the store written by another tool):
    raises RcdError rather than sign text that is not display text."""
    if not is_display_text(brand.name):
        raise RcdError(f"brand name {brand.name!r} is not display text")
    if brand.logo and (check_logo_url(brand.logo) != brand.logo
                       or not _DIGEST_RE.match(brand.logo_digest)):
        raise RcdError(f"brand logo {brand.logo!r} has no well-formed digest")
    if reason and not is_display_text(reason, MAX_REASON):
        raise RcdError(f"call reason {reason!r} is not display text")
    rcd: dict[str, str] = {"nam": brand.name}
    out: dict[str, Any] = {"rcd": rcd}
    if brand.logo:
        rcd["icn"] = brand.logo
        out["rcdi"] = {"/icn": brand.logo_digest}
    if reason:
        out["crn"] = reason
    return out


@dataclass(frozen=True, kw_only=True)
class RcdClaims:
    """The rcd claims a verified PASSporT carried, checked for form."""

    name: str
    logo: str = ""
    logo_digest: str = ""
    reason: str = ""


def parse_claims(passport_claims: dict[str, Any]) -> RcdClaims | None:
    """The rcd claims of a PASSporT (None when it has none); raises RcdError when they are
    malformed: ``nam`` text, ``icn`` an https URL, ``rcdi`` naming only members of ``rcd``
    with well-formed digests, and one for every URL ``rcd`` references (RFC 9795's
    integrity)."""
    rcd = passport_claims.get("rcd")
    crn = passport_claims.get("crn")
    rcdi = passport_claims.get("rcdi")
    if rcd is None:
        if crn is not None or rcdi is not None:
            raise RcdError("crn or rcdi without rcd")
        return None
    if not isinstance(rcd, dict) or not isinstance(rcd.get("nam"), str):
        raise RcdError("rcd has no nam")
    name = check_name(rcd["nam"])
    logo = rcd.get("icn", "")
    if logo:
        check_logo_url(logo)
    digests: dict[str, str] = {}
    if rcdi is not None:
        if not isinstance(rcdi, dict):
            raise RcdError("rcdi is not an object")
        for pointer, value in rcdi.items():
            if not isinstance(pointer, str) or not pointer.startswith("/") \
                    or pointer[1:] not in rcd:
                raise RcdError(f"rcdi names {pointer!r}, which is not in rcd")
            if not isinstance(value, str) or not _DIGEST_RE.match(value):
                raise RcdError(f"rcdi {pointer}: {value!r} is not <sha256|sha384|sha512>-base64")
            try:
                base64.b64decode(value.split("-", 1)[1], validate=True)
            except (binascii.Error, ValueError):
                raise RcdError(f"rcdi {pointer}: bad base64") from None
            digests[pointer] = value
    if logo and "/icn" not in digests:
        raise RcdError("rcd has an icn but rcdi has no digest for it")
    reason = check_reason(crn) if crn is not None else ""
    return RcdClaims(name=name, logo=logo, logo_digest=digests.get("/icn", ""), reason=reason)


__all__ = ["MAX_NAME", "MAX_REASON", "Brand", "RcdClaims", "RcdError",
           "check_logo_url", "check_name", "check_reason", "claims", "digest_matches",
           "integrity", "is_display_text", "parse_claims"]
