"""Telephone number canonicalisation for STIR (RFC 8224 §8.3, RFC 8588, ATIS-1000074).

The canonical form is digits only, no leading '+': "18587542200". Visual separators and
RFC 4904 ``;tgrp=``/``;trunk-context=`` user parameters are dropped. A national NANP number
(10 digits) gets the country code; anything that is not a number gives None.
"""

from __future__ import annotations

from urllib.parse import unquote

_VISUAL = str.maketrans("", "", "-.() \t")


def user_part(uri: str) -> str:
    """The user part of a sip/sips URI, or the number of a tel URI ('' when there is none)."""
    scheme, colon, rest = uri.partition(":")
    if not colon:
        return ""
    scheme = scheme.lower()
    if scheme == "tel":
        return rest
    if scheme not in ("sip", "sips"):
        return ""
    at = rest.find("@")
    return rest[:at] if at >= 0 else ""


def canonical_tn(uri: str, *, country_code: str = "1") -> str | None:
    """Canonical TN of a URI's user part, or None when it is not a telephone number."""
    return canonical_digits(user_part(uri), country_code=country_code)


def canonical_digits(user: str, *, country_code: str = "1") -> str | None:
    # User parameters (RFC 3261 §19.1.6, RFC 4904 tgrp/trunk-context) are not part of the number.
    number = unquote(user.partition(";")[0]).translate(_VISUAL)
    international = number.startswith("+")
    if international:
        number = number[1:]
    if not number or not number.isdigit() or not number.isascii():
        return None
    if international:
        return number if 1 <= len(number) <= 15 else None
    if country_code == "1":
        if len(number) == 10 and number[0] in "23456789":
            return "1" + number
        if len(number) == 11 and number[0] == "1":
            return number
        return None
    return number if len(number) <= 15 else None
