"""Telephone number canonicalisation for STIR (RFC 8224 §8.3, RFC 8588, ATIS-1000074).

The canonical form is digits only, no leading '+': "18587542200". Visual separators and
RFC 4904 ``;tgrp=``/``;trunk-context=`` user parameters are dropped. A national NANP number
(10 digits) gets the country code; anything that is not a number gives None.
"""

from __future__ import annotations

from urllib.parse import unquote

from .errors import SipError
from .message import untagged
from .uri import parse_name_addr

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
    number = user.partition(";")[0]
    if "%" in number:
        number = unquote(number)
    if not number.isdigit() and not (number[:1] == "+" and number[1:].isdigit()):
        number = number.translate(_VISUAL)  # (a number of digits has no separator to drop)
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


def _tn_of(value: str | None, country_code: str) -> str | None:
    if not value:
        return None
    try:
        return canonical_tn(parse_name_addr(value).uri, country_code=country_code)
    except SipError:
        return None


class TnMemo:
    """Canonical numbers of From and P-Asserted-Identity values already seen (bounded). Every
    call of a dialer's number repeats the same value but for the From tag, so a value is
    remembered without its final ``;tag=TOKEN`` (``untagged``: the tag is a header
    parameter, outside the URI, so the number does not depend on it)."""

    __slots__ = ("_tns", "country_code")
    LIMIT = 20_000
    MAX_LENGTH = 256

    def __init__(self) -> None:
        self._tns: dict[str, str | None] = {}
        self.country_code = "1"

    def tn_of(self, value: str, country_code: str) -> str | None:
        if country_code != self.country_code:  # (a reload changed it)
            self._tns.clear()
            self.country_code = country_code
        key = untagged(value) or value
        try:
            return self._tns[key]
        except KeyError:
            pass
        tn = _tn_of(value, country_code)
        if len(key) <= self.MAX_LENGTH:
            if len(self._tns) >= self.LIMIT:
                self._tns.clear()
            self._tns[key] = tn
        return tn


def calling_tn(pai_values: list[str], from_value: str | None, *,
               country_code: str = "1", memo: TnMemo | None = None) -> str | None:
    """The calling number: the first P-Asserted-Identity value holding a number (a tel URI or
    a sip URI with one), else From. ``memo``: remembers each value's number."""
    for value in pai_values:
        tn = _tn_by(memo, value, country_code)
        if tn is not None:
            return tn
    return _tn_by(memo, from_value, country_code) if from_value else None


def _tn_by(memo: TnMemo | None, value: str, country_code: str) -> str | None:
    # (memo.tn_of is called where it is named: a bound method taken as a value would be
    # called through Python's calling convention by the compiled engine)
    return memo.tn_of(value, country_code) if memo is not None else _tn_of(value, country_code)


def diverted_from_tn(diversion: list[str], history_info: list[str], *,
                     country_code: str = "1") -> str | None:
    """The number a diverted call was placed to before its last diversion: the top Diversion
    value (RFC 5806: the most recent diversion first), else the History-Info entry before the
    last one (RFC 7044: entries in order, the last is the current target)."""
    if diversion:
        return _tn_of(diversion[0], country_code)
    if len(history_info) >= 2:
        return _tn_of(history_info[-2], country_code)
    return None


def called_tn(request_uri: str, to_value: str | None, *, country_code: str = "1") -> str | None:
    """The called number: the Request-URI's, else To's."""
    return canonical_tn(request_uri, country_code=country_code) or _tn_of(to_value,
                                                                           country_code)
