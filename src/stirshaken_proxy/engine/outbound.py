"""The authentication service (RFC 8224 §6.1, ATIS-1000074): sign outbound INVITEs.

For each initial INVITE from the dialer side: drop any Identity the customer sent, recognise
the account by source address, canonicalise the calling and called numbers, decide the
attestation from the inventory, check or add Date, sign, and add the Identity header.
"""

from __future__ import annotations

import calendar
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..policy.accounts import AccountDirectory
from ..policy.attestation import Reason, decide
from ..policy.health import NumberHealth
from ..policy.inventory import Inventory
from ..policy.presence import Pool, choose
from ..policy.regions import state_of_npa
from ..sip.message import SipMessage
from ..sip.numbers import called_tn, calling_tn
from ..sip.transport import Peer
from ..sip.uri import uri_user, with_uri_user
from ..stir.passport import Signer
from .proxy import DIALER, Rejection
from .stats import LatencyHistogram, Stats

log = logging.getLogger(__name__)

_IDENTITY_HEADERS = (("from", b"From"), ("to", b"To"),
                     ("p-asserted-identity", b"P-Asserted-Identity"))
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# RFC 3261 §20.17: rfc1123-date, and only "GMT" (RFC 4475 §3.1.2.12).
_DATE_RE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d{2}) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    r" (\d{4}) (\d{2}):(\d{2}):(\d{2}) GMT\Z")


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


@dataclass(frozen=True, kw_only=True)
class AuthPolicy:
    unsigned_calls: str = "forward"  # a call we cannot sign: "forward" it unsigned or "reject"
    neighbour_spoofing: str = "sign_b"  # an unowned caller ID with the callee's NPA-NXX:
    # "sign_b" (never above B) or "reject" (403)
    local_presence_header: str = "X-Local-Presence"  # the dialer's per-call request
    max_date_skew: int = 60  # RFC 8224 §6.1 / §6.2.1: Date more than this off is refused
    country_code: str = "1"


class OutboundAuthenticator:
    """A RequestHook (see engine.proxy) that signs initial INVITEs from the dialer side."""

    def __init__(self, *, directory: AccountDirectory, signers: dict[str, Signer],
                 inventory: Inventory, policy: AuthPolicy, stats: Stats,
                 clock: Callable[[], float] | None = None) -> None:
        self.directory = directory
        # A performance clock for the sign-latency histogram, given by the I/O layer.
        self.clock = clock
        self.sign_latency = LatencyHistogram()
        # Number health fed from the signalling: call-id -> [calling number, answer time].
        self.health: NumberHealth | None = None
        self._calls: dict[str, list[Any]] = {}
        self.max_tracked_calls = 200_000
        # call-id -> (dialer's From user, dialer's PAI user, presented user) for substituted
        # caller IDs; bounded, the oldest calls go first.
        self._identities: dict[str, tuple[str, str | None, str]] = {}
        self._pools: dict[tuple[str, int, int], Pool] = {}
        self.signers = signers
        self.inventory = inventory
        self.policy = policy
        self.stats = stats
        self._date_cache: tuple[int, bytes] = (-1, b"")

    def carry_over(self, old: OutboundAuthenticator) -> None:
        """Take over what the one this replaces (a reload) knows of calls in progress, so
        their caller-ID mapping and their statistics go on; and its latency counts."""
        self._calls = old._calls
        self._identities = old._identities
        self.sign_latency = old.sign_latency

    def __call__(self, msg: SipMessage, source: Peer, now: float) -> Rejection | None:
        if source.side != DIALER:
            return None
        if msg.has("identity"):
            # A customer never gets to place its own PASSporT on our trunk.
            self.stats[("identity_removed",)] += msg.remove_all("identity")
        account = self.directory.by_source(source.host)
        if account is None and msg.has("p-asserted-identity"):
            # RFC 3325 §5: an identity asserted from outside the trust domain (no account
            # vouches for this source) is removed, not passed on.
            msg.remove_all("p-asserted-identity")
            self.stats[("pai_removed",)] += 1
        if msg.method != "INVITE" or "tag=" in (msg.get("to") or ""):
            return None  # SHAKEN signs initial INVITEs only
        if account is None:
            return self._unsigned(msg, "unknown_account")
        cc = self.policy.country_code
        orig = calling_tn(msg.values("p-asserted-identity"), msg.get("from"), country_code=cc)
        if orig is None:
            return self._unsigned(msg, "no_calling_number")
        dest = called_tn(msg.uri, msg.get("to"), country_code=cc)
        if dest is None:
            return self._unsigned(msg, "no_called_number")
        date_text = msg.get("date")
        if date_text is not None:
            date = parse_date(date_text)
            if date is None:
                self.stats[("sign_refused", "bad_date")] += 1
                return Rejection(status=400, reason="Bad Request (Date)")
            if abs(date - now) > self.policy.max_date_skew:
                self.stats[("sign_refused", "stale_date")] += 1
                return Rejection(status=403, reason="Stale Date")
            iat = date  # RFC 8224 §4.1: iat carries the Date value
        else:
            iat = int(now)
            msg.append_header(self._date_line(iat))
        if account.local_presence != "off" and self.health is not None:
            wanted = self._presence_requested(msg, account.local_presence)
            if wanted:
                pick = choose(self._pool(account.name), dest, self.health, now,
                              max_per_hour=account.max_calls_per_hour)
                if pick is None:
                    self.stats[("sign_refused", "caller_id_pool_exhausted")] += 1
                    return Rejection(status=503, reason="Caller ID Pool Exhausted",
                                     headers=(b"Retry-After: 60\r\n",))
                if pick.tn != orig:
                    self._map_identity(msg, pick.tn)
                    self.stats[("caller_id_substituted", account.name,
                                "local" if pick.local else "same_state" if pick.same_state
                                else "other_area")] += 1
                    if log.isEnabledFor(logging.DEBUG):  # no per-call logging at info
                        log.debug("call %s: caller ID %s presented as %s", msg.call_id, orig,
                                  pick.tn, extra={"call_id": msg.call_id,
                                                  "account": account.name, "orig": orig})
                    orig = pick.tn
        decision = decide(account, orig, self.inventory, dest)
        if decision.reason is Reason.NEIGHBOUR_SPOOFING and \
                self.policy.neighbour_spoofing == "reject":
            self.stats[("sign_refused", "neighbour_spoofing")] += 1
            return Rejection(status=403, reason="Neighbour Spoofing Refused")
        signer = self.signers[account.signing]
        started = self.clock() if self.clock is not None else 0.0
        token = signer.sign(attest=decision.level, orig=orig, dest=[dest], iat=iat,
                            origid=account.origid)
        if self.clock is not None:
            self.sign_latency.observe(self.clock() - started)
        msg.append_header(signer.identity_header(token))
        if self.health is not None:
            self.health.attempt(orig, now)
            self._calls[msg.call_id] = [orig, 0.0]
            if len(self._calls) > self.max_tracked_calls:
                del self._calls[next(iter(self._calls))]
        self.stats[("calls_signed", account.name, decision.level.value,
                    decision.reason.value)] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("signed %s %s->%s attest %s (%s)", msg.call_id, orig, dest,
                      decision.level.value, decision.reason.value,
                      extra={"call_id": msg.call_id, "account": account.name,
                             "attest": decision.level.value, "reason": decision.reason.value})
        return None

    # -- caller-ID substitution -------------------------------------------------------------
    def _presence_requested(self, msg: SipMessage, mode: str) -> bool:
        name = self.policy.local_presence_header.lower()
        asked = (msg.get(name) or "").strip().lower() in ("yes", "true", "1", "on")
        msg.remove_all(name)  # the dialer's request stops here
        return mode == "always" or (mode == "header" and asked)

    def _pool(self, account: str) -> Pool:
        key = (account, self.inventory.version, len(self.inventory))
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = Pool(self.inventory.numbers_of(account), state_of_npa)
        return pool

    def _map_identity(self, msg: SipMessage, chosen: str) -> None:
        """Remember, for this call, the dialer's identities and the number that replaces them
        on the carrier side; ``map_identities`` applies it to every message of the call."""
        from_user = uri_user(msg.get("from") or "")
        pai = msg.get("p-asserted-identity")
        pai_user = uri_user(pai) if pai else None
        self._identities[msg.call_id] = (from_user, pai_user, "+" + chosen)
        if len(self._identities) > self.max_tracked_calls:
            del self._identities[next(iter(self._identities))]

    def map_identities(self, msg: SipMessage, out_side: str) -> None:
        """A forward filter (see engine.proxy): toward the carrier the dialer's identity becomes
        the chosen number; toward the dialer the chosen number becomes the dialer's identity
        again, in From, To and P-Asserted-Identity. Tags and Call-ID never change, so both
        dialogs stay whole (UAs match dialogs on them, RFC 3261 §12)."""
        entry = self._identities.get(msg.call_id)
        if entry is None:
            return
        from_user, pai_user, chosen = entry
        for name, label in _IDENTITY_HEADERS:
            for i in msg.index.get(name, ()):
                value = msg.headers[i].value
                user = uri_user(value)
                if not user:
                    continue
                if out_side != DIALER and user in (from_user, pai_user) and user != chosen:
                    new = with_uri_user(value, chosen)
                elif out_side == DIALER and user == chosen:
                    new = with_uri_user(value, pai_user if name == "p-asserted-identity"
                                        and pai_user else from_user)
                else:
                    continue
                msg.replace_header(i, label + b": " + new.encode("latin-1") + b"\r\n")

    # -- CallObserver: what the engine tells about calls it carries -------------------------
    def invite_final(self, call_id: str, status: int, now: float) -> None:
        call = self._calls.get(call_id)
        if call is None or self.health is None:
            return
        self.health.final(call[0], status, now)
        if 200 <= status < 300:
            call[1] = now
        else:
            del self._calls[call_id]

    def bye(self, call_id: str, now: float) -> None:
        call = self._calls.pop(call_id, None)
        if call is not None and call[1] and self.health is not None:
            self.health.ended(call[0], now - call[1], now)

    def _unsigned(self, msg: SipMessage, reason: str) -> Rejection | None:
        self.stats[("calls_unsigned", reason)] += 1
        if self.policy.unsigned_calls == "reject":
            if reason == "no_calling_number":
                return Rejection(status=433, reason="Anonymity Disallowed")
            return Rejection(status=403, reason="Forbidden")
        return None

    def _date_line(self, t: int) -> bytes:
        cached_t, line = self._date_cache
        if cached_t != t:
            line = b"Date: " + format_date(t).encode() + b"\r\n"
            self._date_cache = (t, line)
        return line


__all__ = ["AuthPolicy", "OutboundAuthenticator", "format_date", "parse_date"]
