"""The verification service (RFC 8224 §6.2, ATIS-1000074 §5.3) as one pure object that every
front end calls: the in-path proxy, the 302 redirect server and the REST API.

It never does I/O. ``verify`` answers a verdict, or ``NeedsCredentials`` naming the x5u URLs
whose chains are not cached yet (and, of those, the fetches to start: one per URL however many
requests wait for it). The shell fetches the bytes and hands them back with ``fetched``; the
chain is parsed and validated here, its CRL distribution points are asked for in turn (the
chain is cached only once they are in), and ``fetched`` answers which x5u URLs are now ready,
so the requests waiting for them can be verified again.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from ..stats import LatencyHistogram, Stats
from .credentials import (
    CachePolicy,
    Credential,
    CredentialCache,
    FetchFailure,
    TrustStore,
    build_credential,
    cache_age,
    parse_crl,
)
from .rcd import integrity
from .verify import Checks, HeaderResult, Verdict, Verstat

_MAX_PENDING_CHAINS = 10_000  # chains waiting for their CRLs
_MAX_CRL_URLS = 10_000  # CRL URLs remembered with their next fetch time
_MAX_CONTENTS = 10_000  # rcd content (logos) remembered by URL, as digests


class FetchKind(enum.Enum):
    X5U = "x5u"  # a certificate chain behind an x5u / info URL
    CRL = "crl"  # a CRL named by a certificate's CRL distribution point
    CONTENT = "content"  # what a PASSporT's rcd claims point to (a logo), checked by rcdi


@dataclass(frozen=True, kw_only=True, slots=True)
class FetchRequest:
    url: str
    kind: FetchKind


@dataclass(frozen=True, kw_only=True, slots=True)
class FetchResponse:
    """What a fetch brought: the body and the response headers (Cache-Control, Expires)."""

    body: bytes
    headers: Mapping[str, str]


@dataclass(frozen=True, kw_only=True, slots=True)
class FetchError:
    """A fetch that did not bring a body: refused by the guard, timed out, HTTP 404, ..."""

    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class NeedsCredentials:
    """No verdict yet: these x5u URLs must be in the cache first. ``fetch`` are the fetches
    to start now (the others are in flight already)."""

    urls: tuple[str, ...]
    fetch: tuple[FetchRequest, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class FetchOutcome:
    """After a fetched body: the x5u URLs now cached (requests waiting on them may go on) and
    further fetches to start (CRLs a chain names)."""

    ready: tuple[str, ...] = ()
    fetch: tuple[FetchRequest, ...] = ()


class OnFailure(enum.StrEnum):
    MARK = "mark"  # pass the call on with the verdict (verstat)
    REJECT = "reject"  # answer with the RFC 8224 code


@dataclass(frozen=True, kw_only=True)
class VerifyPolicy:
    """What a front end does with a verdict."""

    on_failure: OnFailure = OnFailure.MARK
    on_missing: OnFailure = OnFailure.MARK  # no Identity: "mark" No-TN-Validation or 428
    attestation_header: bool = True  # P-Attestation-Indicator on a passed call
    country_code: str = "1"

    def rejects(self, verdict: Verdict) -> bool:
        if verdict.verstat is Verstat.FAILED:
            return self.on_failure is OnFailure.REJECT
        return verdict.verstat is Verstat.NONE and self.on_missing is OnFailure.REJECT


_V = TypeVar("_V")


def _with_room(table: dict[str, _V], limit: int, now: float,
               until: Callable[[_V], float]) -> dict[str, _V]:
    """A bounded table with room for one more: its expired entries dropped when it is full,
    then the oldest if it still is."""
    if len(table) < limit:
        return table
    table = {k: v for k, v in table.items() if until(v) > now}
    if len(table) >= limit:
        del table[next(iter(table))]
    return table


class _PendingChain:
    """A validated chain waiting for the CRLs its certificate names."""

    __slots__ = ("body", "crls", "expires")

    def __init__(self, body: bytes, expires: float, crls: set[str]) -> None:
        self.body = body
        self.expires = expires
        self.crls = crls


class VerificationService:
    """Verifies the Identity headers of one request at a time; owns the credential cache."""

    def __init__(self, *, checks: Checks, trust: TrustStore, cache_policy: CachePolicy,
                 cache_entries: int = 10_000, stats: Stats | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.checks = checks
        self.trust = trust
        self.cache_policy = cache_policy
        self.cache = CredentialCache(max_entries=cache_entries)
        self.stats: Stats = stats if stats is not None else Stats()
        self.clock = clock  # a performance clock for the latency histogram, given by the shell
        self.latency = LatencyHistogram()
        self._in_flight: set[str] = set()
        self._pending: dict[str, _PendingChain] = {}  # x5u URL -> chain waiting for CRLs
        self._crl_waiters: dict[str, set[str]] = {}  # CRL URL -> x5u URLs waiting for it
        self._crl_next: dict[str, float] = {}  # CRL URL -> when to fetch it again
        # rcd content URL -> (its digests by algorithm, or why it could not be had; until)
        self._contents: dict[str, tuple[dict[str, str] | str, float]] = {}

    def carry_over(self, old: VerificationService) -> None:
        """Keep the latency counts of the one this replaces (a reload)."""
        self.latency = old.latency

    # -- verification ----------------------------------------------------------------------
    def verify(self, identities: list[str], *, orig: str | None, dest: str | None,
               date: int | None, now: float) -> Verdict | NeedsCredentials:
        """Every Identity header of a request (RFC 8224 §6.2); see stir.verify for the codes."""
        started = self.clock() if self.clock is not None else 0.0
        results = self.checks.precheck_all(identities, orig=orig, dest=dest, date=date, now=now)
        missing: list[str] = []
        for result in results:
            if result.code is None and result.url is not None:
                cred = self.cache.get(result.url, now)
                if cred is None:
                    missing.append(result.url)
                else:
                    self.checks.with_credential(result, cred)
        contents: list[str] = []
        for result in results:
            if result.rcd is not None and result.rcd.logo and result.passed \
                    and not result.rcd_problem and not self._content_check(result, now):
                contents.append(result.rcd.logo)
        if missing or contents:
            wanted = tuple(dict.fromkeys(missing + contents))
            fetch = tuple(FetchRequest(url=u, kind=FetchKind.CONTENT if u in contents
                                       and u not in missing else FetchKind.X5U)
                          for u in wanted if u not in self._in_flight)
            self._in_flight.update(r.url for r in fetch)
            self.stats[("verify_waits",)] += 1
            return NeedsCredentials(urls=wanted, fetch=fetch)
        verdict = Checks.verdict(results)
        for result in results:
            if result.rcd is not None or result.rcd_problem:
                self.stats[("rcd_verifications", "passed" if result.rcd_verified is not None
                            else "failed")] += 1
        if self.clock is not None:
            self.latency.observe(self.clock() - started)
        self.stats[("verifications", verdict.verstat.value,
                    str(verdict.code) if verdict.code is not None else "")] += 1
        return verdict

    def _content_check(self, result: HeaderResult, now: float) -> bool:
        """rcdi against the fetched logo (RFC 9795 integrity); False: not fetched yet."""
        rcd = result.rcd
        assert rcd is not None
        entry = self._contents.get(rcd.logo)
        if entry is None or entry[1] <= now:
            return False
        digests = entry[0]
        if isinstance(digests, str):
            result.rcd_problem = f"logo {rcd.logo}: {digests}"
        elif digests.get(rcd.logo_digest.split("-", 1)[0]) != rcd.logo_digest:
            result.rcd_problem = f"logo {rcd.logo} does not match its rcdi digest"
        else:
            result.rcd_checked = True
        return True

    # -- credentials, fed by the shell ------------------------------------------------------
    def fetched(self, request: FetchRequest, result: FetchResponse | FetchError,
                now: float) -> FetchOutcome:
        if request.kind is FetchKind.CRL:
            return self._crl_fetched(request.url, result, now)
        if request.kind is FetchKind.CONTENT:
            return self._content_fetched(request.url, result, now)
        url = request.url
        self._in_flight.discard(url)
        policy = self.cache_policy
        if isinstance(result, FetchError):
            self.cache.put(url, FetchFailure(url=url, reason=result.reason),
                           now + policy.negative_age)
            return FetchOutcome(ready=(url,))
        credential = build_credential(url, result.body, self.trust)
        if credential.error is not None:
            self.cache.put(url, credential, now + policy.negative_age)
            return FetchOutcome(ready=(url,))
        expires = now + cache_age(result.headers, now, policy)
        stale = [c for c in credential.crl_urls if self._crl_next.get(c, 0.0) <= now]
        if not stale or len(self._pending) >= _MAX_PENDING_CHAINS:
            self.cache.put(url, credential, expires)
            return FetchOutcome(ready=(url,))
        # Revocation first: the chain is cached once its CRLs are in (or failed: soft fail).
        self._pending[url] = _PendingChain(result.body, expires, set(stale))
        fetch: list[FetchRequest] = []
        for crl_url in stale:
            waiters = self._crl_waiters.get(crl_url)
            if waiters is None:
                self._crl_waiters[crl_url] = {url}
                fetch.append(FetchRequest(url=crl_url, kind=FetchKind.CRL))
            else:
                waiters.add(url)
        return FetchOutcome(fetch=tuple(fetch))

    def _crl_fetched(self, crl_url: str, result: FetchResponse | FetchError,
                     now: float) -> FetchOutcome:
        policy = self.cache_policy
        next_fetch = now + policy.negative_age
        if isinstance(result, FetchResponse):
            try:
                self.trust.add_crl(parse_crl(result.body))
                next_fetch = now + policy.max_age
            except ValueError:
                self.stats[("crl_unusable",)] += 1
        self._crl_next = _with_room(self._crl_next, _MAX_CRL_URLS, now, lambda t: t)
        self._crl_next[crl_url] = next_fetch
        ready: list[str] = []
        for url in self._crl_waiters.pop(crl_url, set()):
            pending = self._pending.get(url)
            if pending is None:
                continue
            pending.crls.discard(crl_url)
            if pending.crls:
                continue
            del self._pending[url]
            self._in_flight.discard(url)
            credential: Credential = build_credential(url, pending.body, self.trust)
            expires = pending.expires if credential.error is None else now + policy.negative_age
            self.cache.put(url, credential, expires)
            ready.append(url)
        return FetchOutcome(ready=tuple(sorted(ready)))

    def _content_fetched(self, url: str, result: FetchResponse | FetchError,
                         now: float) -> FetchOutcome:
        self._in_flight.discard(url)
        policy = self.cache_policy
        self._contents = _with_room(self._contents, _MAX_CONTENTS, now, lambda e: e[1])
        if isinstance(result, FetchError):
            self._contents[url] = (f"cannot be fetched: {result.reason}", now + policy.negative_age)
        else:
            body = result.body
            self._contents[url] = ({alg: integrity(body, alg)
                                    for alg in ("sha256", "sha384", "sha512")},
                                   now + cache_age(result.headers, now, policy))
        return FetchOutcome(ready=(url,))

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)


__all__ = ["FetchError", "FetchKind", "FetchOutcome", "FetchRequest", "FetchResponse",
           "NeedsCredentials", "OnFailure", "Verdict", "VerificationService", "VerifyPolicy",
           "Verstat"]
