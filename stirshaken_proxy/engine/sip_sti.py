"""Between SIP messages and the STI core: what a front end takes from a request to sign or
verify it, and how it writes the outcome back (pure). The in-path proxy and the 302 redirect
server share these, so a call gets the same treatment whichever way it reaches us.
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass

from ..policy.accounts import Account
from ..sip.message import SipMessage
from ..sip.numbers import TnMemo, called_tn, calling_tn, diverted_from_tn
from ..stats import Stats
from ..stir.rcd import RcdError, check_reason
from ..stir.signing import AuthPolicy, CallFacts, Refusal, Signed
from ..stir.verification import NeedsCredentials, VerificationService, VerifyPolicy
from ..stir.verify import Verdict, Verstat

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# RFC 3261 §20.17: rfc1123-date, and only "GMT" (RFC 4475 §3.1.2.12).
_DATE_RE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d{2}) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    r" (\d{4}) (\d{2}):(\d{2}):(\d{2}) GMT\Z")
_VERSTAT_PARAM = re.compile(r";verstat=[^;>]*", re.IGNORECASE)
_TRUE = ("yes", "true", "1", "on")


def format_date(t: int) -> str:
    """RFC 3261 §20.17 Date for Unix time ``t`` (locale-independent)."""
    g = time.gmtime(t)
    return (f"{_DAYS[g.tm_wday]}, {g.tm_mday:02d} {_MONTHS[g.tm_mon - 1]} {g.tm_year:04d} "
            f"{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d} GMT")


def parse_date(text: str) -> int | None:
    """Unix time of an RFC 3261 Date value, or None when it is not one."""
    m = _DATE_RE.match(text.strip())
    if m is None:
        return None
    d, mon, y, h, mi, s = m.groups()
    try:
        return calendar.timegm((int(y), _MONTHS.index(mon) + 1, int(d), int(h), int(mi),
                                int(s), 0, 0, 0))
    except (ValueError, OverflowError):
        return None


@dataclass(frozen=True, kw_only=True, slots=True)
class BadDate:
    """The request's Date header is not an RFC 3261 date: answer 400."""

    text: str


@dataclass(frozen=True, kw_only=True, slots=True)
class BadReason:
    """The dialer's call reason cannot be signed (control characters, too long): 400."""

    problem: str


def strip_untrusted(msg: SipMessage, account: Account | None, stats: Stats) -> None:
    """What a dialer-side request may not carry past us: its own Identity headers (a customer
    never places its own PASSporT on our trunk), the legacy Identity-Info of RFC 4474, and an
    asserted identity from outside the trust domain (RFC 3325 §5: no account vouches for this
    source)."""
    if msg.has("identity"):
        stats[("identity_removed",)] += msg.remove_all("identity")
    if msg.has("identity-info"):
        stats[("identity_removed",)] += msg.remove_all("identity-info")
    if account is None and msg.has("p-asserted-identity"):
        msg.remove_all("p-asserted-identity")
        stats[("pai_removed",)] += 1


def is_initial_invite(msg: SipMessage) -> bool:
    """SHAKEN signs and verifies initial INVITEs only (no To tag)."""
    return msg.method == "INVITE" and "tag=" not in (msg.get("to") or "")


def call_facts(msg: SipMessage, account: Account | None, policy: AuthPolicy,
               tns: TnMemo | None = None) -> CallFacts | BadDate | BadReason:
    """The facts of a dialer-side INVITE for the authentication service. The dialer's local
    presence request and call reason headers stop here. ``tns``: the calling numbers of
    From and P-Asserted-Identity values seen before."""
    cc = policy.country_code
    date_text = msg.get("date")
    date = None
    if date_text is not None:
        date = parse_date(date_text)
        if date is None:
            return BadDate(text=date_text)
    name = policy.presence_header_key
    asked = False
    if msg.has(name):
        asked = (msg.get(name) or "").strip().lower() in _TRUE
        msg.remove_all(name)
    orig = calling_tn(msg.values("p-asserted-identity"), msg.get("from"), country_code=cc,
                      memo=tns)
    dest = called_tn(msg.uri, msg.get("to"), country_code=cc)
    index = msg.index
    key = policy.reason_header_key
    if key in index or "diversion" in index or "history-info" in index:
        reason = None
        if key in index:
            raw = msg.headers[index[key][0]].value
            msg.remove_all(key)
            try:  # header values are kept as latin-1 text; SIP's TEXT is UTF-8 (§25.1)
                reason = check_reason(raw.encode("latin-1").decode("utf-8"))
            except UnicodeError:
                return BadReason(problem="call reason is not UTF-8")
            except RcdError as exc:
                return BadReason(problem=str(exc))
        diverted = diverted_from_tn(msg.values("diversion"), msg.values("history-info"),
                                    country_code=cc)
        return CallFacts(account, orig, dest, date, asked, reason=reason,
                         diverted_from=diverted if diverted != dest else None)
    # Every field, in order (account, orig, dest, date, presence_requested, attest,
    # more_dests, origid, reason, diverted_from), by tuple.__new__: once per call, where a
    # NamedTuple's own __new__ is interpreted Python.
    return tuple.__new__(CallFacts, (account, orig, dest, date, asked, None, (), None, None,
                                     None))


class DateLines:
    """``Date:`` header lines by second, the last one kept (most calls in a second share it)."""

    __slots__ = ("_line", "_t")

    def __init__(self) -> None:
        self._t = -1
        self._line = b""

    def line(self, t: int) -> bytes:
        if t != self._t:
            self._t, self._line = t, b"Date: " + format_date(t).encode() + b"\r\n"
        return self._line


def identity_line(signed: Signed) -> bytes:
    return b"Identity: " + signed.identity.encode("ascii") + b"\r\n"


def refusal_headers(refusal: Refusal) -> tuple[bytes, ...]:
    """The header lines that go with a refusal's answer (Retry-After, when it has one)."""
    return () if refusal.retry_after is None else (
        b"Retry-After: %d\r\n" % refusal.retry_after,)


# -- verification ------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class VerifyInput:
    identities: list[str]
    orig: str | None
    dest: str | None
    date: int | None


def verify_input(msg: SipMessage, country_code: str) -> VerifyInput:
    date_text = msg.get("date")
    return VerifyInput(
        identities=msg.get_all("identity"),
        orig=calling_tn(msg.values("p-asserted-identity"), msg.get("from"),
                        country_code=country_code),
        dest=called_tn(msg.uri, msg.get("to"), country_code=country_code),
        date=parse_date(date_text) if date_text else None)


def verify_message(msg: SipMessage, verification: VerificationService, policy: VerifyPolicy,
                   now: float, facts: VerifyInput | None = None) -> Verdict | NeedsCredentials:
    """The verification service's answer for an INVITE's Identity headers (``facts``: its
    verify_input, when the caller has it already)."""
    if facts is None:
        facts = verify_input(msg, policy.country_code)
    return verification.verify(facts.identities, orig=facts.orig, dest=facts.dest,
                               date=facts.date, now=now)


def rejection(verdict: Verdict) -> tuple[int, str, bytes]:
    """The answer when policy rejects a verdict: code, phrase and the RFC 9410 Reason."""
    code = verdict.code or 438
    return code, verdict.phrase, reason_header(code, verdict.phrase)


def verdict_lines(verdict: Verdict, *, attestation_header: bool) -> list[bytes]:
    """What a call that goes on carries besides verstat: the attestation level when it
    passed, the RFC 9410 Reason after a failure (§3)."""
    lines = []
    if verdict.verstat is Verstat.PASSED and verdict.attest and attestation_header:
        lines.append(b"P-Attestation-Indicator: " + verdict.attest.encode() + b"\r\n")
    if verdict.code is not None and verdict.verstat is Verstat.FAILED:
        lines.append(reason_header(verdict.code, verdict.phrase))
    return lines


def reason_header(code: int, phrase: str) -> bytes:
    """RFC 9410 §3: ``Reason: STIR ;cause=<code> ;text="<phrase>"``."""
    return f'Reason: STIR ;cause={code} ;text="{phrase}"\r\n'.encode()


def mark_verdict(msg: SipMessage, verdict: Verdict, *, attestation_header: bool) -> None:
    """verstat on the URI of P-Asserted-Identity (else From), as 3GPP TS 24.229 does; the
    attestation level on a passed call; a Reason header when the call goes on after a
    failure (RFC 9410 §3)."""
    name, label = ("p-asserted-identity", b"P-Asserted-Identity") \
        if msg.has("p-asserted-identity") else ("from", b"From")
    i = msg.index[name][0]
    marked = with_verstat(msg.headers[i].value, verdict.verstat.value)
    value = marked.encode("latin-1")
    # Only a verified logo reaches the callee: an icon the call arrived with is removed.
    for j in reversed(msg.index.get("call-info", [])):
        if "purpose=icon" in msg.headers[j].value.lower().replace(" ", ""):
            msg.remove_header(j)
    rcd = verdict.rcd
    if rcd is not None:
        # The verified caller's name (RFC 9795 nam) is what the callee's phone shows; its
        # logo goes as Call-Info purpose=icon.
        value = with_display_name(value, rcd.name)
        if rcd.logo:
            msg.append_header(b"Call-Info: <" + rcd.logo.encode("latin-1")
                              + b">;purpose=icon\r\n")
    msg.replace_header(i, label + b": " + value + b"\r\n")
    lines = verdict_lines(verdict, attestation_header=attestation_header)
    if lines and verdict.verstat is Verstat.PASSED:
        msg.remove_all("p-attestation-indicator")  # a previous hop's says nothing
    for line in lines:
        msg.append_header(line)


def with_display_name(value: bytes, name: str) -> bytes:
    """A name-addr value with ``name`` as its quoted display name (UTF-8, RFC 3261 §25.1)."""
    lt = value.find(b"<")
    quoted = ('"' + name.replace("\\", "\\\\").replace('"', '\\"') + '" ').encode()
    return quoted + (value[lt:] if lt >= 0 else b"<" + value + b">")


def with_verstat(value: str, verstat: str) -> str:
    """Put ``;verstat=`` inside the URI of a name-addr or addr-spec value (replacing one a
    previous hop put there)."""
    lt = value.find("<")
    if lt >= 0:
        gt = value.find(">", lt)
        uri = _VERSTAT_PARAM.sub("", value[lt + 1 : gt])
        return f"{value[:lt]}<{uri};verstat={verstat}>{value[gt + 1 :]}"
    # addr-spec: what follows ';' are header parameters, so the URI gets brackets.
    uri, semi, params = value.partition(";")
    return f"<{_VERSTAT_PARAM.sub('', uri)};verstat={verstat}>" + (";" + params if semi else "")
