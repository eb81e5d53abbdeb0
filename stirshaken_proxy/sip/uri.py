"""SIP/tel URIs (RFC 3261 §19.1, RFC 3966) and name-addr / addr-spec values (RFC 3261 §25.1)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import SipError

TOKEN_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)
_WS = " \t"


_BAD_URI_CHARS = re.compile(r"[ \t\r\n<>]")
_BAD_HOST_CHARS = re.compile(r"[ \t,;?@]")
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")


def ascii_digits(text: str) -> bool:
    """Only 0-9 (str.isdigit alone accepts '¹' and other digits that int() refuses)."""
    return text.isascii() and text.isdigit()


def is_token(text: str) -> bool:
    # Letters and digits alone (most tags and branches) need no regex: asked of every From
    # tag a call's messages carry.
    if text.isascii() and text.isalnum():
        return True
    return _TOKEN_RE.match(text) is not None


@dataclass(frozen=True, kw_only=True, slots=True)
class Uri:
    """A parsed URI. For tel: URIs ``user`` holds the number and ``host`` is empty."""

    scheme: str
    user: str = ""
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str = ""

    @property
    def is_sip(self) -> bool:
        return self.scheme in ("sip", "sips")


def parse_params(text: str, what: str) -> dict[str, str | None]:
    """Parse ``;name[=value]`` pairs (text starts after the first ';'). Empty names are errors."""
    params: dict[str, str | None] = {}
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        name = name.strip(_WS).lower()
        if not name or (not is_token(name) and not _is_paramchars(name)):
            raise SipError(400, f"empty or malformed parameter in {what}")
        params[name] = value.strip(_WS) if eq else None
    return params


def _is_paramchars(text: str) -> bool:
    return all(c in TOKEN_CHARS or c in "[]/:&+$" for c in text)


def parse_uri(text: str) -> Uri:
    """Parse a URI. Raises SipError(400) on a malformed sip/sips/tel URI."""
    scheme, colon, rest = text.partition(":")
    if not colon or not scheme or not scheme[0].isalpha():
        raise SipError(400, "URI has no scheme")
    scheme = scheme.lower()
    if _BAD_URI_CHARS.search(rest) is not None:
        raise SipError(400, "whitespace or angle bracket inside a URI")
    if scheme == "tel":
        number, semi, ptext = rest.partition(";")
        if not number:
            raise SipError(400, "tel URI without a number")
        return Uri(scheme=scheme, user=number, params=parse_params(ptext, "tel URI") if semi else {})
    if scheme not in ("sip", "sips"):
        # Other schemes are kept opaque: the parser accepts them (RFC 4475 §3.3.2).
        return Uri(scheme=scheme, host=rest)
    user = ""
    at = rest.find("@")
    if at >= 0:
        user = rest[:at]
        rest = rest[at + 1 :]
        if not user:
            raise SipError(400, "SIP URI with an empty user part")
    headers = ""
    q = rest.find("?")
    if q >= 0:
        headers = rest[q + 1 :]
        rest = rest[:q]
    hostport, semi, ptext = rest.partition(";")
    host, port = split_hostport(hostport)
    params = parse_params(ptext, "URI") if semi else {}
    return Uri(scheme=scheme, user=user, host=host, port=port, params=params, headers=headers)


def split_hostport(hostport: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` (IPv6 references in brackets). Raises SipError(400)."""
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0:
            raise SipError(400, "unterminated IPv6 reference")
        host, tail = hostport[: close + 1], hostport[close + 1 :]
        if tail and not tail.startswith(":"):
            raise SipError(400, "junk after IPv6 reference")
        porttext = tail[1:] if tail else ""
    else:
        host, _, porttext = hostport.partition(":")
    if not host or _BAD_HOST_CHARS.search(host) is not None:
        raise SipError(400, "malformed host")
    if not porttext:
        return host.lower(), None
    if not ascii_digits(porttext) or len(porttext) > 5 or int(porttext) > 65535:
        raise SipError(400, "malformed port")
    return host.lower(), int(porttext)


@dataclass(frozen=True, kw_only=True, slots=True)
class NameAddr:
    """``[display-name] <uri> *(;param)`` or ``addr-spec *(;param)``."""

    display: str
    uri: str
    params: dict[str, str | None]

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")


# The everyday form, `["Name"|token ...] <uri>;param=value...`, checked in one step.
_SIMPLE_NAME_ADDR = re.compile(
    r"""(?:"[^"\\\r\n]*"[ \t]*|(?:[A-Za-z0-9\-.!%*_+`'~]+[ \t]+)*)"""
    r"""<([^<>\s"]+:[^<>\s"]+)>((?:[ \t]*;[ \t]*[A-Za-z0-9\-.!%*_+`'~]+"""
    r"""(?:=[A-Za-z0-9\-.!%*_+`'~:\[\]]+)?)*)\Z""")


def valid_name_addr(value: str) -> bool:
    """True when a From/To/Contact value is well-formed (fast path for the common forms)."""
    if _SIMPLE_NAME_ADDR.match(value) is not None:
        return True
    parse_name_addr(value)
    return True


def parse_name_addr(value: str) -> NameAddr:
    """Parse a From/To/P-Asserted-Identity/Contact value. Raises SipError(400) when malformed."""
    text = value.strip(_WS)
    display = ""
    if text.startswith('"'):
        i = 1
        n = len(text)
        while i < n:
            c = text[i]
            if c == "\\":
                i += 2
                continue
            if c == '"':
                break
            i += 1
        else:
            raise SipError(400, "unterminated quoted display name")
        display = text[1:i]
        text = text[i + 1 :].lstrip(_WS)
        if not text.startswith("<"):
            raise SipError(400, "quoted display name not followed by <URI>")
    lt = text.find("<")
    if lt >= 0:
        if not display:
            words = text[:lt].split()
            # Display names are tokens separated by LWS unless quoted (RFC 3261 §25.1).
            if not all(is_token(w) for w in words):
                raise SipError(400, "display name has non-token characters")
            display = " ".join(words)
        gt = text.find(">", lt)
        if gt < 0:
            raise SipError(400, "unterminated <URI>")
        uri = text[lt + 1 : gt]
        if not uri or uri[0] in _WS or uri[-1] in _WS:
            raise SipError(400, "whitespace inside <URI>")
        rest = text[gt + 1 :].strip(_WS)
    else:
        # addr-spec form: the URI ends at the first ';' and must not contain ',' or '?'
        # (RFC 3261 §20: such URIs must be enclosed in angle brackets).
        uri, semi, ptail = text.partition(";")
        uri = uri.rstrip(_WS)
        if not uri or any(c in uri for c in " \t,?\""):
            raise SipError(400, "malformed addr-spec (must it be in <>?)")
        rest = ";" + ptail if semi else ""
    if rest:
        if not rest.startswith(";"):
            raise SipError(400, "junk after URI")
        params = parse_params(rest[1:], "header parameters")
    else:
        params = {}
    if ":" not in uri:
        raise SipError(400, "URI has no scheme")
    return NameAddr(display=display, uri=uri, params=params)


# One separated element: quoted strings and <...> may hold the separator.
_ELEMENT_RE = {sep: re.compile(r'(?:"(?:[^"\\]|\\.)*"?|<[^>]*>?|[^' + sep + r'"<])+')
               for sep in ",;"}


# The compiled core's split (message.use_core sets it; None: this module's, the reference).
compiled_split: Callable[[str, str], list[str]] | None = None


def split_values(value: str, sep: str = ",") -> list[str]:
    """Split a header value on ``sep`` ("," or ";"), ignoring it inside quotes and <...>."""
    if sep not in value:
        return [value.strip(_WS)]
    if compiled_split is not None:
        return compiled_split(value, sep)
    return split_values_reference(value, sep)


def split_values_reference(value: str, sep: str) -> list[str]:
    """The split itself, by regular expression: what the compiled core's split must equal."""
    return [v.strip(_WS) for v in _ELEMENT_RE[sep].findall(value)]


_USER_RE = re.compile(r"(<?\s*(?:sips?|tel):)([^@;>?]*)(?=[@;>?]|$)", re.IGNORECASE)


def uri_user(value: str) -> str:
    """The user part (or tel number) of the URI in a header value, '' when there is none."""
    m = _USER_RE.search(value)
    if m is None:
        return ""
    scheme_is_tel = m.group(1).rstrip().lower().endswith("tel:")
    rest = value[m.end():]
    if not scheme_is_tel and not rest.startswith("@"):
        return ""  # sip:host, no user part
    return m.group(2)


def with_uri_user(value: str, user: str) -> str:
    """The header value with its URI's user part (or tel number) replaced; unchanged when
    the URI has no user part."""
    m = _USER_RE.search(value)
    if m is None or not uri_user(value):
        return value
    return value[: m.start(2)] + user + value[m.end(2):]
