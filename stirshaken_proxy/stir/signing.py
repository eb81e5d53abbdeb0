"""The authentication service (RFC 8224 §6.1, ATIS-1000074 §5.2) as one pure object that every
front end calls: the in-path proxy, the 302 redirect server and the REST API.

A front end states what it knows of a call (``CallFacts``: the account it recognised, the
canonical calling and called numbers, the request's Date); ``Authenticator.sign`` decides the
attestation from the inventory, applies local presence and the Date rules, signs, and answers
``Signed`` (the Identity header value and what it was based on), ``Unsigned`` (policy lets the
call go on without one) or ``Refusal`` (the status and phrase to answer with).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from ..policy.accounts import Account, LocalPresence
from ..policy.attestation import Reason, decide
from ..policy.health import HealthEvent, NumberHealth
from ..policy.inventory import Inventory
from ..policy.presence import Pool, Selection, choose, ranked
from ..stats import LatencyHistogram, Stats
from .passport import Attestation, ClaimError, Signer
from .rcd import Brand, RcdError
from .rcd import claims as rcd_claims

log = logging.getLogger(__name__)


class UnsignedCalls(enum.StrEnum):
    """What happens to a call that cannot be signed (no account, no calling number)."""

    FORWARD = "forward"
    REJECT = "reject"


class NeighbourSpoofing(enum.StrEnum):
    """An unowned caller ID with the callee's own NPA-NXX."""

    SIGN_B = "sign_b"  # never above B
    REJECT = "reject"  # 403


@dataclass(frozen=True, kw_only=True)
class AuthPolicy:
    unsigned_calls: UnsignedCalls = UnsignedCalls.FORWARD
    neighbour_spoofing: NeighbourSpoofing = NeighbourSpoofing.SIGN_B
    local_presence_header: str = "X-Local-Presence"  # the dialer's per-call request
    call_reason_header: str = "X-Call-Reason"  # the dialer's call reason (rcd crn), per call
    max_date_skew: int = 60  # RFC 8224 §6.1 / §6.2.1: Date more than this off is refused
    country_code: str = "1"
    # The local-presence header's name as the parser indexes it (lower case), made once.
    presence_header_key: str = field(init=False, repr=False, compare=False, default="")
    reason_header_key: str = field(init=False, repr=False, compare=False, default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "presence_header_key", self.local_presence_header.lower())
        object.__setattr__(self, "reason_header_key", self.call_reason_header.lower())


class CallFacts(NamedTuple):
    """What a front end knows of a call to sign. (A NamedTuple: one is made for every call;
    give the fields by name.)"""

    account: Account | None  # recognised by source address, client certificate or API key
    orig: str | None  # canonical calling number
    dest: str | None  # canonical called number
    date: int | None = None  # the request's Date (Unix time), when it carries one
    presence_requested: bool = False  # the dialer asked for local presence on this call
    # What an API caller states besides (ATIS-1000082): the attestation it asks for (never
    # granted above what the inventory gives the account; a lower one is honoured), more
    # called numbers, and its own origination identifier.
    attest: Attestation | None = None
    more_dests: tuple[str, ...] = ()
    origid: str | None = None
    reason: str | None = None  # the call reason the dialer chose (checked), for rcd's crn
    diverted_from: str | None = None  # a diverted call: the number it was first placed to


class Signed(NamedTuple):
    """A signed call (a NamedTuple, as CallFacts)."""

    identity: str  # the Identity header value: token;info=<x5u>;alg=ES256;ppt=shaken
    attest: Attestation
    reason: Reason
    account: str
    orig: str  # the number signed (the chosen one when local presence replaced it)
    dest: str
    iat: int
    substitution: Selection | None = None  # set when the caller ID was replaced
    events: tuple[HealthEvent, ...] = ()  # number-health events to share and store
    more: tuple[str, ...] = ()  # further Identity header values (a div PASSporT)
    branded: bool = False  # the PASSporT carries the caller's Rich Call Data


@dataclass(frozen=True, kw_only=True, slots=True)
class Unsigned:
    """Policy lets the call go on without an Identity."""

    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Refusal:
    """The call is refused: answer ``status`` ``phrase`` (``cause`` is the metric label)."""

    status: int
    phrase: str
    cause: str
    retry_after: int | None = None
    field: str = ""  # invalid_claim: the claim refused (orig.tn, dest.tn, origid, iat)
    detail: str = ""  # and why


@dataclass(frozen=True, kw_only=True, slots=True)
class NeedsNumber:
    """Number health is shared by several instances: which of ``candidates`` (in order of
    preference, each healthy by this replica) may present this call is decided by the shared
    state, in one atomic step (take the first still under ``limit`` calls in the last hour).
    Sign again with ``picked`` set to the answer."""

    candidates: tuple[Selection, ...]
    limit: int


class Picked(NamedTuple):
    """The shared state's answer to NeedsNumber: the candidate taken (None: none was free),
    or ``fallback`` when the shared state could not be asked (this replica decides)."""

    selection: Selection | None
    fallback: bool = False


SignOutcome = Signed | Unsigned | Refusal | NeedsNumber
_STRENGTH = {Attestation.A: 3, Attestation.B: 2, Attestation.C: 1}


class Authenticator:
    """Signs calls for the configured accounts. Holds the inventory in memory (replaced when
    the store changes) and the per-account local-presence pools built from it."""

    def __init__(self, *, signers: dict[str, Signer], inventory: Inventory, policy: AuthPolicy,
                 health: NumberHealth | None = None,
                 state_of: Callable[[str], str | None] | None = None,
                 stats: Stats | None = None, clock: Callable[[], float] | None = None) -> None:
        self.signers = signers
        self.inventory = inventory
        self.policy = policy
        self.health = health
        self.state_of = state_of  # area code -> state, for same-state local presence
        self.stats: Stats = stats if stats is not None else Stats()
        self.clock = clock  # a performance clock for the sign-latency histogram
        self.latency = LatencyHistogram()
        self._pools: dict[str, Pool] = {}
        # Rich Call Data: "tn:<number>" and "account:<name>" -> the brand presented
        self.brands: dict[str, Brand] = {}
        self.shared_picks = False  # number health is shared: picks are asked (NeedsNumber)

    def carry_over(self, old: Authenticator) -> None:
        """Keep the latency counts of the one this replaces (a reload)."""
        self.latency = old.latency

    def set_inventory(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self._pools.clear()

    def sign(self, facts: CallFacts, now: float, *, picked: Picked | None = None,
             defer: bool = False) -> SignOutcome:
        """``defer``: the caller can wait for a shared pick (the in-path proxy); ``picked``:
        the answer it got."""
        account = facts.account
        if account is None:
            return self._unsigned("unknown_account")
        orig, dest = facts.orig, facts.dest
        if orig is None:
            return self._unsigned("no_calling_number")
        if dest is None:
            return self._unsigned("no_called_number")
        if facts.date is not None:
            if abs(facts.date - now) > self.policy.max_date_skew:
                return self._refuse(403, "Stale Date", "stale_date")
            iat = facts.date  # RFC 8224 §4.1: iat carries the Date value
        else:
            iat = int(now)
        events: list[HealthEvent] = []
        pick = None
        health = self.health
        mode = account.local_presence
        if health is not None and (mode is LocalPresence.ALWAYS or (
                mode is LocalPresence.HEADER and facts.presence_requested)):
            limit = account.max_calls_per_hour or health.limits.max_calls_per_hour
            if picked is not None and not picked.fallback:
                pick = picked.selection
            elif defer and self.shared_picks and picked is None:
                candidates = ranked(self._pool(account.name), dest, health, now,
                                    max_per_hour=account.max_calls_per_hour)
                if candidates:
                    return NeedsNumber(candidates=tuple(candidates), limit=limit)
                pick = None
            else:
                pick = choose(self._pool(account.name), dest, health, now,
                              max_per_hour=account.max_calls_per_hour)
            if pick is None:
                return self._refuse(503, "Caller ID Pool Exhausted", "caller_id_pool_exhausted",
                                    retry_after=60)
            if pick.tn == orig:
                pick = None
            else:
                self.stats[("caller_id_substituted", account.name, pick.match)] += 1
                orig = pick.tn
        decision = decide(account, orig, self.inventory, dest)
        if decision.reason is Reason.NEIGHBOUR_SPOOFING and \
                self.policy.neighbour_spoofing is NeighbourSpoofing.REJECT:
            return self._refuse(403, "Neighbour Spoofing Refused", "neighbour_spoofing")
        level = decision.level
        if facts.attest is not None and facts.attest is not level:
            if _STRENGTH[facts.attest] > _STRENGTH[level]:
                return self._refuse(403, f"Attestation {facts.attest.value} Not Allowed "
                                    f"({decision.reason.value})", "attestation_not_allowed")
            level = facts.attest  # a caller may always ask for less
        signer = self.signers[account.signing]
        started = self.clock() if self.clock is not None else 0.0
        # A diverted call: the SHAKEN PASSporT is the call as first placed, the div PASSporT
        # says where it went (RFC 8946).
        first = facts.diverted_from or dest
        dests = [first, *facts.more_dests]
        origid = facts.origid or account.origid
        brand = self._brand(orig, account.name) if level is Attestation.A and self.brands \
            else None
        try:
            extra = None
            if brand is not None:  # only a caller fully attested for the number is named
                try:
                    extra = rcd_claims(brand, facts.reason)
                except RcdError as exc:  # never signed; the call keeps its attestation
                    self.stats[("brand_refused", account.name)] += 1
                    log.warning("brand of %s not signed: %s", orig, exc)
                    brand = None
            if extra is not None:
                token = signer.sign_with(attest=level, orig=orig, dest=dests, iat=iat,
                                         origid=origid, extra=extra)
                self.stats[("calls_branded", account.name)] += 1
            else:
                token = signer.sign(attest=level, orig=orig, dest=dests, iat=iat,
                                    origid=origid)
        except ClaimError as exc:
            return self._refuse(400, "Bad Request", "invalid_claim", field=exc.field,
                                detail=exc.text)
        more: tuple[str, ...] = ()
        if facts.diverted_from is not None and facts.diverted_from != dest:
            try:
                more = (signer.sign_div(orig=orig, dest=[dest], div=facts.diverted_from,
                                        iat=iat),)
            except ClaimError as exc:
                return self._refuse(400, "Bad Request", "invalid_claim", field=exc.field,
                                    detail=exc.text)
            self.stats[("calls_diverted_signed", account.name)] += 1
        if self.clock is not None:
            self.latency.observe(self.clock() - started)
        if health is not None:
            events.append(health.attempt(orig, now))
        # _value_, not .value: Enum.value is a Python-level property (two calls each).
        self.stats[("calls_signed", account.name, level._value_, decision.reason._value_)] += 1
        # Every field, in order (identity, attest, reason, account, orig, dest, iat,
        # substitution, events, more, branded), by tuple.__new__: a NamedTuple's own __new__
        # is interpreted Python (and keywords cost twice as much), once per call.
        return tuple.__new__(Signed, (signer.identity_value(token), level, decision.reason,
                                      account.name, orig, dest, iat, pick, tuple(events), more,
                                      brand is not None))

    def _brand(self, tn: str, account: str) -> Brand | None:
        """The number's own brand, else its account's."""
        brands = self.brands
        return brands.get("tn:" + tn) or brands.get("account:" + account)

    def _pool(self, account: str) -> Pool:
        pool = self._pools.get(account)
        if pool is None:
            pool = self._pools[account] = Pool(self.inventory.numbers_of(account),
                                               self.state_of)
        return pool

    def _unsigned(self, reason: str) -> Unsigned | Refusal:
        self.stats[("calls_unsigned", reason)] += 1
        if self.policy.unsigned_calls is UnsignedCalls.REJECT:
            if reason == "no_calling_number":
                return Refusal(status=433, phrase="Anonymity Disallowed", cause=reason)
            return Refusal(status=403, phrase="Forbidden", cause=reason)
        return Unsigned(reason=reason)

    def _refuse(self, status: int, phrase: str, cause: str, retry_after: int | None = None,
                field: str = "", detail: str = "") -> Refusal:
        self.stats[("sign_refused", cause)] += 1
        return Refusal(status=status, phrase=phrase, cause=cause, retry_after=retry_after,
                       field=field, detail=detail)


__all__ = ["AuthPolicy", "Authenticator", "CallFacts", "NeedsNumber", "NeighbourSpoofing",
           "Picked", "Refusal",
           "SignOutcome", "Signed", "Unsigned", "UnsignedCalls"]
