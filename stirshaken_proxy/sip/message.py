"""SIP messages: parse from bytes, validate, edit against the original bytes, serialise.

A message keeps its original bytes. Edits (insert, remove or replace a header line, a new
start line) are recorded by position and applied on serialise, so every header line nobody
touched goes out byte-identical, folding and odd spacing included.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from types import ModuleType
from typing import Protocol, TypeVar

from . import uri
from .errors import REASON_PHRASES, UNKNOWN_PHRASE, SipError
from .uri import (
    NameAddr,
    ascii_digits,
    is_token,
    parse_name_addr,
    parse_params,
    parse_uri,
    split_values,
    valid_name_addr,
)

_built: ModuleType | None
try:
    from . import _cmessage as _built
except ImportError:  # installed without a C compiler: the Python core alone
    _built = None
_compiled: ModuleType | None = None  # the core in use: set by use_core below


CORES = ("auto", "compiled", "python")


def use_core(name: str) -> str:
    """Parse (and keep transaction timers) with the ``compiled`` core (C, where it was
    built), the ``python`` one (the reference), or ``auto`` (compiled when built). Returns
    the core now in use. Engines made afterwards get that core's timer heap."""
    global _compiled
    if name not in CORES:
        raise ValueError(f"unknown core {name!r} ({', '.join(CORES)})")
    if name == "compiled" and _built is None:
        raise ValueError("the compiled core was not built in this install (no C compiler "
                         "at install time?)")
    _compiled = _built if name != "python" else None
    uri.compiled_split = _compiled.split_values if _compiled is not None else None
    return core_in_use()


def core_in_use() -> str:
    return "compiled" if _compiled is not None else "python"


def compiled_core() -> ModuleType | None:
    """The compiled core's module while it is in use (None: the Python core)."""
    return _compiled


def compiled_available() -> bool:
    return _built is not None


_T = TypeVar("_T")


def _same(obj: _T) -> _T:
    return obj


# untracked(obj) -> obj: out of the cyclic GC's lists, for the objects a call keeps for
# seconds that no reference cycle can include (_cmessage.c says why). Memory management
# only: the same with either core, so it is the C function wherever that was built.
untracked = _built.untracked if _built is not None else _same


use_core("auto")


# RFC 3261 §7.3.3 and later RFCs (y = Identity, RFC 8224 §7.1).
COMPACT_FORMS: dict[str, str] = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "y": "identity",
    "o": "event",
    "r": "refer-to",
    "b": "referred-by",
    "u": "allow-events",
    "x": "session-expires",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
}
_SINGLE = ("from", "to", "call-id", "cseq", "max-forwards", "content-length")
_REQUIRED = ("via", "from", "to", "call-id", "cseq")
_MAX_CSEQ = 2**32 - 1
_WS = " \t"
_VIA_RE = re.compile(
    r"SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*([A-Za-z0-9.!%*_+`'~-]+)[ \t]+"
    r"(\[[0-9A-Fa-f:.]+\]|[^ \t;:]+)(?:[ \t]*:[ \t]*([0-9]{1,5}))?[ \t]*(?:;(.*))?$",
    re.DOTALL,
)
BRANCH_COOKIE = "z9hG4bK"
# The everyday Request-URI, `sip:user@host:port;param=value`, recognised in one step; any
# other form goes through parse_uri.
_PARAM = r"""[A-Za-z0-9\-.!%*_+`'~\[\]/:&$]+(?:=[A-Za-z0-9\-.!%*_+`'~\[\]/:&$]+)?"""
_SIMPLE_SIP_URI = re.compile(
    r"sips?:(?:[A-Za-z0-9\-_.!~*'()&=+$,%]+@)?(?:[A-Za-z0-9][A-Za-z0-9.\-]*|\[[0-9A-Fa-f:.]+\])"
    r"(?::([0-9]{1,5}))?(?:;" + _PARAM + r")*\Z")


class Header:
    """One header line (continuation lines included) of the original message. The compiled
    core makes its own Header type with the same read-only fields."""

    __slots__ = ("end", "name", "start", "value")

    def __init__(self, name: str, value: str, start: int, end: int) -> None:
        self.name = name  # canonical: lower case, compact form expanded
        self.value = value  # unfolded, surrounding whitespace stripped
        self.start = start  # offset of the line in the original bytes
        self.end = end  # offset after its final CRLF


class HeaderLine(Protocol):
    """A header line: this module's Header or the compiled core's own type."""

    @property
    def name(self) -> str: ...
    @property
    def value(self) -> str: ...
    @property
    def start(self) -> int: ...
    @property
    def end(self) -> int: ...


class Via:
    """One Via value (RFC 3261 §20.42)."""

    __slots__ = ("branch", "host", "params", "port", "rfc3261_branch", "text", "transport")

    def __init__(self, text: str) -> None:
        self.text = text
        fields = _compiled.via_fields(text) if _compiled is not None else None
        if fields is not None:
            self.transport, self.host, self.port, self.params = fields
        else:
            m = _VIA_RE.match(text)
            if m is None:
                raise SipError(400, "malformed Via")
            self.transport = m.group(1).upper()
            self.host = m.group(2).lower()
            self.port = int(m.group(3)) if m.group(3) else None
            if self.port is not None and self.port > 65535:
                raise SipError(400, "malformed Via port")
            self.params = parse_params(m.group(4), "Via") if m.group(4) is not None else {}
        self.branch = branch = self.params.get("branch") or ""
        # The branch carries the magic cookie and something after it (§8.1.1.7).
        self.rfc3261_branch = branch.startswith(BRANCH_COOKIE) and len(branch) > len(BRANCH_COOKIE)

    def response_address(self) -> tuple[str, int] | None:
        """Where a response is sent: received/rport when present (RFC 3581), else None."""
        received = self.params.get("received")
        rport = self.params.get("rport")
        if received and rport and ascii_digits(rport):
            return received, int(rport)
        return None


_NO_EDITS: dict[int, bytes | None] = {}  # joined's lines as received (never written to)


class SipMessage:
    """A parsed request or response over its original bytes, with recorded edits."""

    __slots__ = (
        "_append",
        "_edits",
        "_prepend",
        "_start_line",
        "_top_via",
        "_vias",
        "body_end",
        "body_start",
        "call_id",
        "cseq",
        "cseq_method",
        "head_end",
        "headers",
        "index",
        "is_request",
        "line_end",
        "method",
        "raw",
        "reason",
        "status",
        "uri",
    )

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.is_request = True
        self.method = ""
        self.uri = ""
        self.status = 0
        self.reason = ""
        self.headers: list[HeaderLine] = []
        self.index: dict[str, list[int]] = {}
        self.line_end = 0  # offset after the start line's CRLF
        self.head_end = 0  # offset of the CRLF that ends the header section
        self.body_start = 0
        self.body_end = 0
        self.call_id = ""
        self.cseq = 0
        self.cseq_method = ""
        self._vias: list[Via] | None = None
        self._top_via: Via | None = None
        self._edits: dict[int, bytes | None] = {}
        self._prepend: list[bytes] = []
        self._append: list[bytes] = []
        self._start_line: bytes | None = None

    # -- reading -----------------------------------------------------------------------
    def get(self, name: str) -> str | None:
        idx = self.index.get(name)
        return self.headers[idx[0]].value if idx else None

    def get_all(self, name: str) -> list[str]:
        return [self.headers[i].value for i in self.index.get(name, ())]

    def values(self, name: str) -> list[str]:
        """All comma-separated values of a header across its lines, in order."""
        out: list[str] = []
        for i in self.index.get(name, ()):
            out.extend(split_values(self.headers[i].value))
        return out

    def has(self, name: str) -> bool:
        return name in self.index

    @property
    def body(self) -> bytes:
        return self.raw[self.body_start : self.body_end]

    def vias(self) -> list[Via]:
        if self._vias is None:
            self._vias = [Via(v) for v in self.values("via")]
        return self._vias

    def top_via(self) -> Via:
        if self._top_via is None:
            idx = self.index.get("via")
            if not idx:
                raise SipError(400, "no Via")
            first = self.headers[idx[0]].value
            self._top_via = Via(first if "," not in first else split_values(first)[0])
        return self._top_via

    def from_(self) -> NameAddr:
        return parse_name_addr(self.get("from") or "")

    def to(self) -> NameAddr:
        return parse_name_addr(self.get("to") or "")

    def header_line(self, i: int) -> bytes:
        h = self.headers[i]
        return self.raw[h.start : h.end]

    def raw_lines(self, name: str) -> list[bytes]:
        return [self.header_line(i) for i in self.index.get(name, ())]

    def joined(self, name: str, *, current: bool = False) -> bytes:
        """The lines of a header, one after another: as received, or (``current``) as
        serialise will write them (current_lines)."""
        if _compiled is not None:
            return _compiled.joined_lines(  # type: ignore[no-any-return]
                self.raw, self.headers, self.index.get(name),
                self._edits if current else _NO_EDITS)
        return b"".join(self.current_lines(name) if current else self.raw_lines(name))

    def current_lines(self, name: str) -> list[bytes]:
        """The lines of a header as serialise will write them (recorded edits applied;
        lines added with prepend/append are not included)."""
        out: list[bytes] = []
        for i in self.index.get(name, ()):
            line = self._edits.get(i, self.header_line(i)) if self._edits else self.header_line(i)
            if line is not None:
                out.append(line)
        return out

    # -- edits ---------------------------------------------------------------------------
    def prepend_header(self, line: bytes) -> None:
        """Insert a header line (with CRLF) at the top of the header section."""
        self._prepend.append(line)

    def append_header(self, line: bytes) -> None:
        self._append.append(line)

    def remove_header(self, i: int) -> None:
        self._edits[i] = None

    def replace_header(self, i: int, line: bytes) -> None:
        self._edits[i] = line

    def remove_all(self, name: str) -> int:
        idx = self.index.get(name, ())
        for i in idx:
            self._edits[i] = None
        return len(idx)

    def set_start_line(self, line: bytes) -> None:
        self._start_line = line

    def without_top_via(self) -> bytes:
        """The message serialised without its top Via value: a response a proxy relays
        (RFC 3261 §16.7 step 3). The Via line goes, or keeps the values after the first."""
        i = self.index["via"][0]
        first = self.headers[i].value
        values = split_values(first) if "," in first else None
        if values is None or len(values) == 1:
            self._edits[i] = None
        else:
            self._edits[i] = b"Via: " + ", ".join(values[1:]).encode("latin-1") + b"\r\n"
        return self.serialize()

    def serialize(self) -> bytes:
        if _compiled is not None:
            return _compiled.assemble(  # type: ignore[no-any-return]
                self.raw, self._start_line, self.line_end, self._prepend, self._edits,
                self.headers, self.head_end, self._append, "content-length" in self.index,
                self.body_start, self.body_end)
        raw = self.raw
        parts: list[bytes] = [
            self._start_line if self._start_line is not None else raw[: self.line_end]
        ]
        if self._prepend:
            # Inserted lines go top-down in the order they were added last-first, so the last
            # one prepended is on top (as a proxy's own Via must be).
            parts.extend(reversed(self._prepend))
        pos = self.line_end
        if self._edits:
            headers = self.headers
            for i in sorted(self._edits):
                h = headers[i]
                parts.append(raw[pos : h.start])
                edit = self._edits[i]
                if edit is not None:
                    parts.append(edit)
                pos = h.end
        parts.append(raw[pos : self.head_end])
        parts.extend(self._append)
        if "content-length" not in self.index:
            parts.append(b"Content-Length: %d\r\n" % (self.body_end - self.body_start))
        parts.append(b"\r\n")
        parts.append(raw[self.body_start : self.body_end])
        return b"".join(parts)


def untagged(value: str) -> str | None:
    """A From/To value without its final ``;tag=TOKEN``, or None when it ends in no such tag
    or names a tag before it. Every call from a dialer shares this part: a tag is a token,
    so adding one to a well-formed value (or taking it off) leaves it well-formed."""
    at = value.rfind(";tag=")
    if at < 0 or not is_token(value[at + 5 :]):
        return None
    head = value[:at]
    return head if "tag" not in head.lower() else None


class ParseCache:
    """What a parser may remember between messages, both bounded: header names as written ->
    canonical names, and From, To and Contact values already found well-formed (every message
    of a dialog repeats them, so each is checked once; only values of everyday length). From
    and To are remembered without their tag (``untagged``): a dialer's calls differ only
    there. Only single values are remembered (a list of Contacts, or '*', is no From)."""

    __slots__ = ("addresses", "names")
    NAMES_LIMIT = 4096
    ADDRESSES_LIMIT = 20_000
    MAX_ADDRESS_LENGTH = 256

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.addresses: set[str] = set()

    def canonical(self, raw_name: str) -> str:
        """Canonical name of a header name as written (trailing whitespace allowed before
        the colon); SipError(400) if it is not a token."""
        canonical = self.names.get(raw_name)
        if canonical is None:
            name = raw_name.rstrip(_WS)
            if not is_token(name):
                raise SipError(400, "malformed header name")
            low = name.lower()
            canonical = COMPACT_FORMS.get(low, low) if len(low) == 1 else low
            if len(self.names) < self.NAMES_LIMIT:
                self.names[raw_name] = canonical
        return canonical

    def check_addresses(self, msg: SipMessage) -> None:
        """From and To must be well-formed name-addr/addr-spec values; so must every Contact
        value that is not '*'. Values found well-formed before are not checked again."""
        known = self.addresses
        for name in ("from", "to"):
            value = msg.headers[msg.index[name][0]].value
            if value in known:
                continue
            head = untagged(value)
            if head is not None and head in known:
                continue
            if len(split_values(value)) > 1:
                raise SipError(400, f"more than one {name}")
            valid_name_addr(value)
            self.remember_valid(head if head is not None else value)
        for i in msg.index.get("contact", ()):
            value = msg.headers[i].value
            if value not in known:
                for v in (value,) if "," not in value else split_values(value):
                    if v != "*":
                        valid_name_addr(v)
                if "," not in value and value != "*":
                    self.remember_valid(value)

    def remember_valid(self, value: str) -> None:
        if len(value) > self.MAX_ADDRESS_LENGTH:
            return
        if len(self.addresses) >= self.ADDRESSES_LIMIT:
            self.addresses.clear()
        self.addresses.add(value)


def parse_message(data: bytes, *, max_size: int = 65535, stream: bool = False,
                  cache: ParseCache | None = None) -> SipMessage:
    """Parse and validate one SIP message.

    Over UDP (``stream=False``) octets after Content-Length are ignored (RFC 3261 §18.3); a
    missing Content-Length means the body runs to the end of the datagram. Raises SipError.
    A long-lived caller (the engine) passes its own ``cache``.
    """
    if cache is None:
        cache = ParseCache()
    if _compiled is not None:
        msg = SipMessage(data)
        try:
            if _compiled.parse_fast(msg, data, max_size, stream, cache.names, cache.canonical,
                                    cache.addresses, _check_request_uri,
                                    cache.check_addresses, Via):
                if msg._top_via is None:  # a Via of another form: the reference reads it
                    msg.top_via()
                return msg
        except SipError:
            pass  # the reference parser below gives the answer and the exact error
    msg = SipMessage(data)
    end = data.find(b"\r\n\r\n")
    if end < 0:
        # A datagram whose header section is not closed by an empty line: take it as headers
        # only when it ends in CRLF (RFC 4475 §3.1.2.15 sends such a message).
        if stream or not data.endswith(b"\r\n"):
            raise SipError(400, "header section not terminated")
        end = len(data) - 2
        body_start = len(data)
    else:
        body_start = end + 4
    head = data[: end + 2].decode("latin-1")
    if "\x00" in head:
        _check_nul(head)
    eol = head.find("\r\n")
    first = head[:eol]
    msg.line_end = eol + 2
    msg.head_end = end + 2
    is_response = first.startswith("SIP/")
    msg.is_request = not is_response
    try:
        _parse_headers(msg, head[eol + 2 :], cache)
        if is_response:
            _parse_status_line(msg, first)
        else:
            _parse_request_line(msg, first)
        if len(data) > max_size:
            # Checked after the headers so the 513 can be addressed (RFC 3261 §18.1.1).
            raise SipError(513, "message larger than max_message_size")
        _validate(msg, data, body_start, stream, cache)
    except SipError as exc:
        if is_response:
            exc.status = None  # a bad response is dropped, never answered
        exc.message = msg
        raise
    return msg


def _check_nul(head: str) -> None:
    """A NUL is never passed on (it ends strings in the C code of peers), except the one
    RFC 3261 allows: escaped as a quoted-pair inside a quoted string (RFC 4475 §3.1.1.2)."""
    start_line_end = head.find("\r\n")
    i = head.find("\x00")
    while i >= 0:
        if i < start_line_end or head[i - 1] != "\\":
            raise SipError(400, "NUL byte in the start line or a header value")
        i = head.find("\x00", i + 1)


def _parse_headers(msg: SipMessage, head: str, cache: ParseCache) -> None:
    """Index the header lines of ``head`` (the header section after the start line, each
    line ending in CRLF). Offsets are relative to the original bytes."""
    headers = msg.headers
    index = msg.index
    names = cache.names
    pos = msg.line_end
    lines = head.split("\r\n")
    lines.pop()  # the empty string after the final CRLF
    if "\r\n " in head or "\r\n\t" in head or head[:1] in (" ", "\t"):
        lines = _unfold(lines)
    for line in lines:
        colon = line.find(":")
        if colon <= 0:
            raise SipError(400, "header line without a name and colon")
        raw_name = line[:colon]
        name = names.get(raw_name) or cache.canonical(raw_name)
        end = pos + len(line) + 2
        value = line[colon + 1 :]
        if "\r\n" in value:
            value = _FOLD_RE.sub(" ", value)  # unfold (RFC 3261 §7.3.1)
        idx = index.get(name)
        if idx is None:
            index[name] = [len(headers)]
        else:
            idx.append(len(headers))
        headers.append(Header(name, value.strip(_WS), pos, end))
        pos = end


_FOLD_RE = re.compile(r"[ \t]*\r\n[ \t]+")


def _unfold(lines: list[str]) -> list[str]:
    """Join continuation lines to their header line, keeping the CRLFs (so lengths add up)."""
    out: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if not out:
                raise SipError(400, "continuation line before the first header")
            out[-1] += "\r\n" + line
        else:
            out.append(line)
    return out


def _parse_request_line(msg: SipMessage, line: str) -> None:
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise SipError(400, "malformed Request-Line (must be Method SP Request-URI SP Version)")
    method, uri, version = parts
    if version != "SIP/2.0":
        if version.upper().startswith("SIP/"):
            raise SipError(505, f"unsupported SIP version {version[:16]}")
        raise SipError(400, "malformed SIP version")
    if not is_token(method):
        raise SipError(400, "malformed method")
    if uri.startswith("<"):
        raise SipError(400, "Request-URI enclosed in <>")
    m = _SIMPLE_SIP_URI.match(uri)
    if m is None or (m.group(1) is not None and int(m.group(1)) > 65535):
        _check_request_uri(uri)
    msg.method = method
    msg.uri = uri


def _check_request_uri(uri: str) -> None:
    """A Request-URI beyond the everyday form, through the general parser (its exact error)."""
    parsed = parse_uri(uri)
    if parsed.is_sip and parsed.headers:
        # RFC 4475 §3.1.2.11: never forward escaped headers in a Request-URI.
        raise SipError(400, "Request-URI carries escaped headers")


def _parse_status_line(msg: SipMessage, line: str) -> None:
    version, sp, rest = line.partition(" ")
    code, sp2, reason = rest.partition(" ")
    if version != "SIP/2.0" or not sp or not sp2 or len(code) != 3 or not ascii_digits(code):
        raise SipError(None, "malformed Status-Line")
    status = int(code)
    if not 100 <= status <= 699:
        raise SipError(None, "status code out of range")
    msg.is_request = False
    msg.status = status
    msg.reason = reason


def _validate(msg: SipMessage, data: bytes, body_start: int, stream: bool,
              cache: ParseCache) -> None:
    index = msg.index
    for name in _REQUIRED:
        if name not in index:
            raise SipError(400, f"missing required header {name}")
    for name in _SINGLE:
        idx = index.get(name)
        if idx and len(idx) > 1:
            raise SipError(400, f"more than one {name}")
    cseq_text = msg.headers[index["cseq"][0]].value
    num, _, cmethod = cseq_text.partition(" ")
    cmethod = cmethod.strip(_WS)
    if not ascii_digits(num) or not is_token(cmethod):
        raise SipError(400, "malformed CSeq")
    cseq = int(num)
    if cseq > _MAX_CSEQ:
        raise SipError(400, "CSeq number larger than 2**32-1")
    msg.cseq = cseq
    msg.cseq_method = cmethod
    if msg.is_request:
        if cmethod != msg.method:
            raise SipError(400, "CSeq method does not match the Request-Line")
    else:
        msg.method = cmethod
    msg.call_id = msg.headers[index["call-id"][0]].value
    if not msg.call_id:
        raise SipError(400, "empty Call-ID")
    mf = index.get("max-forwards")
    if mf and not ascii_digits(msg.headers[mf[0]].value):
        raise SipError(400, "malformed Max-Forwards")
    cache.check_addresses(msg)
    msg.top_via()
    available = len(data) - body_start
    cl = index.get("content-length")
    if cl:
        text = msg.headers[cl[0]].value
        if not ascii_digits(text):
            raise SipError(400, "malformed Content-Length", fatal_stream=True)
        length = int(text)
        if length > available:
            raise SipError(400, "Content-Length larger than the message", fatal_stream=True)
    elif stream:
        raise SipError(400, "no Content-Length on a stream transport", fatal_stream=True)
    else:
        length = available
    msg.body_start = body_start
    msg.body_end = body_start + length


def make_response(
    request: SipMessage,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    extra: Iterable[bytes] = (),
    body: bytes = b"",
) -> bytes:
    """A response built by this element to a request (RFC 3261 §8.2.6).

    Via, From, Call-ID and CSeq lines are copied byte for byte; To gets our tag when it has
    none and the response is not 100 (§8.2.6.2).
    """
    # (errors.reason_phrase's lookup, in place: that module is not compiled)
    phrase = reason if reason is not None else REASON_PHRASES.get(status, UNKNOWN_PHRASE)
    parts = [b"SIP/2.0 %d %s\r\n" % (status, phrase.encode("utf-8")), request.joined("via"),
             request.joined("from")]
    to_idx = request.index.get("to")
    if to_idx:
        to_value = request.headers[to_idx[0]].value
        if to_tag and status > 100 and ";tag=" not in to_value.replace(" ", "").lower():
            parts.append(b"To: %s;tag=%s\r\n" % (to_value.encode("latin-1"), to_tag.encode()))
        else:
            parts.append(request.header_line(to_idx[0]))
    parts.append(request.joined("call-id"))
    parts.append(request.joined("cseq"))
    parts.extend(extra)
    parts.append(b"Content-Length: %d\r\n\r\n" % len(body))
    parts.append(body)
    return b"".join(parts)


_CALL_ID_LINE = re.compile(rb"\r\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r\n", re.I)


def call_id_of(data: bytes) -> bytes:
    """The Call-ID of a raw message without parsing it (which worker owns a call), b"" when
    there is none. The value is the one the parser gives, folded lines included, so every
    message of a call, whichever side and header form it came in, maps to the same bytes."""
    m = _CALL_ID_LINE.search(data)
    if m is None:
        return b""
    if data[m.end():m.end() + 1] in (b" ", b"\t"):  # a folded Call-ID: rare, ask the parser
        try:
            return parse_message(data, stream=True).call_id.encode("latin-1")
        except SipError:
            return m.group(1)
    return m.group(1)
