"""Fetching for the verification service (x5u chains and CRLs): moves bytes, never blocks
the proxy, and hands every outcome to a callback (``on_done``): the body and headers, or why
there is none. What the bytes mean is the STI core's business (stir.verification).

- Asyncio only; one fetch in flight per URL (the core asks once per URL, and so does this).
- The URL must pass the ATIS-1000074 policy (CRLs: their own policy, plain http allowed); the
  host is resolved here and every address is checked against the SSRF guard, and the
  connection goes to exactly the addresses checked (a pinned resolver), so DNS cannot rebind
  it elsewhere.
- Bounded: total time, response size, concurrent fetches; fair: at most ``max_per_host`` in
  flight to one host and the hosts with fetches waiting take turns for free slots, so a slow
  or hostile host delays only its own URLs; a host that failed ``host_failures`` times in a row
  is not asked for ``host_backoff`` seconds (its URLs fail at once meanwhile).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from ..stats import LatencyHistogram
from ..stir.verification import (
    FetchError,
    FetchKind,
    FetchRequest,
    FetchResponse,
    VerificationService,
)
from ..stir.verify import Verdict, Verstat
from ..stir.x5u import FetchLimits, UrlPolicy

log = logging.getLogger(__name__)


def tls_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """The TLS context of fetches: the system's CAs, or ``ca_file``'s ([verify] tls_ca_file)."""
    ctx = ssl.create_default_context()
    if ca_file is not None:
        ctx.load_verify_locations(cafile=str(ca_file))
    return ctx


class GuardError(Exception):
    pass


class PinnedResolver(AbstractResolver):
    """Resolves, then keeps only the addresses the SSRF guard allows."""

    def __init__(self, policy: UrlPolicy) -> None:
        self.policy = policy

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                           family=socket.AF_UNSPEC)
        except OSError as exc:
            raise GuardError(f"cannot resolve {host}: {exc}") from None
        out: list[ResolveResult] = []
        refused: list[str] = []
        for fam, _, proto, _, sockaddr in infos:
            address = str(sockaddr[0])
            if not self.policy.address_allowed(address):
                refused.append(address)
                continue
            out.append(ResolveResult(hostname=host, host=address, port=int(sockaddr[1]),
                                     family=fam, proto=proto, flags=socket.AI_NUMERICHOST))
        if not out:
            raise GuardError(f"{host} resolves to addresses that are not allowed "
                             f"({', '.join(sorted(set(refused)))})")
        return out

    async def close(self) -> None:
        return None


OnDone = Callable[[FetchRequest, FetchResponse | FetchError], None]


class Fetcher:
    def __init__(self, *, policy: UrlPolicy, crl_policy: UrlPolicy, limits: FetchLimits,
                 ssl_context: ssl.SSLContext | None, on_done: OnDone,
                 counters: Counter[str]) -> None:
        self.policy = policy
        self.crl_policy = crl_policy
        self.limits = limits
        self.ssl_context = ssl_context
        self.on_done = on_done
        self.counters = counters
        self._tasks: dict[FetchRequest, asyncio.Task[None]] = {}
        self._queued: dict[str, deque[FetchRequest]] = {}  # host -> waiting, in order
        self._turns: deque[str] = deque()  # hosts with waiting fetches, whose turn is next
        self._waiting: set[FetchRequest] = set()
        self._per_host: Counter[str] = Counter()  # in flight
        self._failed: Counter[str] = Counter()  # failures in a row
        self._resting: dict[str, float] = {}  # host -> monotonic time it may be asked again
        self._session: aiohttp.ClientSession | None = None
        self._crl_session: aiohttp.ClientSession | None = None
        self.latency = LatencyHistogram((0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))

    def session(self, crl: bool = False) -> aiohttp.ClientSession:
        attr = "_crl_session" if crl else "_session"
        current: aiohttp.ClientSession | None = getattr(self, attr)
        if current is None or current.closed:
            policy = self.crl_policy if crl else self.policy
            connector = aiohttp.TCPConnector(resolver=PinnedResolver(policy), limit=64,
                                             ssl=self.ssl_context or True, use_dns_cache=False)
            current = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                            trust_env=False)
            setattr(self, attr, current)
        return current

    def request(self, request: FetchRequest) -> None:
        """Fetch, unless the same fetch is in flight or waiting for its turn."""
        if request in self._tasks or request in self._waiting:
            return
        host = (urlsplit(request.url).hostname or "").lower()
        resting = self._resting.get(host)
        if resting is not None:
            if time.monotonic() < resting:
                self.counters["fetch_host_resting"] += 1
                reason = (f"{host} failed {self.limits.host_failures} times in a row; not "
                          f"asked again for {self.limits.host_backoff:.0f} s")
                # Answered on the next loop turn: never inside the caller's own step.
                asyncio.get_running_loop().call_soon(self.on_done, request,
                                                     FetchError(reason=reason))
                return
            del self._resting[host]
        queue = self._queued.get(host)
        if queue is None:
            queue = self._queued[host] = deque()
            self._turns.append(host)
        queue.append(request)
        self._waiting.add(request)
        self._start_next()

    def _start_next(self) -> None:
        """Give free slots to the hosts in turn (each up to max_per_host in flight)."""
        limits = self.limits
        skipped = 0
        while self._turns and len(self._tasks) < limits.max_in_flight and \
                skipped < len(self._turns):
            host = self._turns.popleft()
            if self._per_host[host] >= limits.max_per_host:
                self._turns.append(host)  # full: the next host's turn
                skipped += 1
                continue
            skipped = 0
            queue = self._queued[host]
            request = queue.popleft()
            self._waiting.discard(request)
            if queue:
                self._turns.append(host)
            else:
                del self._queued[host]
            self._per_host[host] += 1
            self._tasks[request] = asyncio.get_running_loop().create_task(
                self._run(request, host))

    async def _run(self, request: FetchRequest, host: str) -> None:
        crl = request.kind is FetchKind.CRL
        name = request.kind.value  # x5u, crl, content
        started = time.monotonic()
        result: FetchResponse | FetchError
        try:
            body, headers = await self.get(request.url, crl=crl)
        except (GuardError, aiohttp.ClientError, TimeoutError, OSError, ssl.SSLError) as exc:
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError):
                reason = f"timed out after {self.limits.timeout} s"
            self.counters[f"{name}_fetch_failures"] += 1
            (log.warning if crl else log.info)("%s fetch %s failed: %s", name, request.url,
                                                reason)
            result = FetchError(reason=reason)
            self._failed[host] += 1
            if self._failed[host] >= self.limits.host_failures:
                self._resting[host] = time.monotonic() + self.limits.host_backoff
                del self._failed[host]
                log.warning("%s failed %d times in a row: not asked for %.0f s", host,
                            self.limits.host_failures, self.limits.host_backoff)
        else:
            self.counters[f"{name}_fetches"] += 1
            self._failed.pop(host, None)
            if request.kind is FetchKind.X5U:
                self.latency.observe(time.monotonic() - started)
            result = FetchResponse(body=body, headers={k: v for k, v in headers.items()})
        finally:
            self._tasks.pop(request, None)
            self._per_host[host] -= 1
            if self._per_host[host] <= 0:
                del self._per_host[host]
            self._start_next()
        self.on_done(request, result)

    async def get(self, url: str, *, crl: bool = False) -> tuple[bytes, Any]:
        """GET within the limits; raises GuardError / aiohttp / timeout errors."""
        policy = self.crl_policy if crl else self.policy
        problem = policy.check_url(url)
        if problem is not None:
            raise GuardError(problem)
        host = (urlsplit(url).hostname or "").strip("[]")
        if _is_ip(host) and not policy.address_allowed(host):
            # aiohttp does not consult the resolver for address literals: check them here.
            raise GuardError(f"address {host} is not allowed")
        limit = self.limits.max_bytes
        async with asyncio.timeout(self.limits.timeout):
            async with self.session(crl).get(url, allow_redirects=False,
                                             headers={"Accept": "application/pem-certificate-"
                                                      "chain, application/pkix-cert, */*"}) as r:
                if r.status != 200:
                    raise GuardError(f"HTTP {r.status}")
                if r.content_length is not None and r.content_length > limit:
                    raise GuardError(f"response of {r.content_length} bytes exceeds {limit}")
                body = bytearray()
                async for chunk in r.content.iter_chunked(16384):
                    body += chunk
                    if len(body) > limit:
                        raise GuardError(f"response exceeds {limit} bytes")
                return bytes(body), r.headers


    async def close(self) -> None:
        self._queued.clear()  # nothing more starts
        self._turns.clear()
        self._waiting.clear()
        for task in list(self._tasks.values()):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        for session in (self._session, self._crl_session):
            if session is not None:
                await session.close()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Resumable(Protocol):
    """A front end with requests waiting for credentials (an engine's shell)."""

    def credentials_ready(self, urls: tuple[str, ...]) -> None: ...


class CredentialFeed:
    """Between the fetcher and the verification service: each fetch's outcome is handed to
    the service once, the further fetches it asks for (CRLs) are started, and every front
    end hears which credentials are now in: the engines' shells (``fronts``) resume the
    requests they parked, and ``verify`` callers (the REST API, the CLI) wake up."""

    def __init__(self, service: VerificationService) -> None:
        self.service = service
        self.fetcher: Fetcher | None = None  # None: nothing can be fetched
        self.fronts: list[Resumable] = []
        self._ready: dict[str, asyncio.Event] = {}

    def request(self, request: FetchRequest) -> None:
        if self.fetcher is None:
            self.on_done(request, FetchError(reason="fetching is off"))
        else:
            self.fetcher.request(request)

    def on_done(self, request: FetchRequest, result: FetchResponse | FetchError) -> None:
        outcome = self.service.fetched(request, result, time.time())
        for more in outcome.fetch:
            self.request(more)
        if not outcome.ready:
            return
        for front in self.fronts:
            front.credentials_ready(outcome.ready)
        for url in outcome.ready:
            event = self._ready.pop(url, None)
            if event is not None:
                event.set()

    async def verify(self, identities: list[str], *, orig: str | None, dest: str | None,
                     date: int | None, now: float,
                     on_fetch: Callable[[str], None] | None = None) -> Verdict:
        """A verdict, fetching what is missing (bounded by the fetcher's timeout)."""
        # Three passes at most: the chains (and their CRLs), then what a verified PASSporT's
        # rcd claims point to (a logo), then the verdict; a fourth only if the cache dropped
        # an outcome meanwhile.
        for _ in range(4):
            result = self.service.verify(identities, orig=orig, dest=dest, date=date, now=now)
            if isinstance(result, Verdict):
                return result
            events = [self._ready.setdefault(url, asyncio.Event()) for url in result.urls]
            for request in result.fetch:
                if on_fetch is not None:
                    on_fetch(request.url)
                self.request(request)
            await asyncio.gather(*(event.wait() for event in events))
        return Verdict(verstat=Verstat.FAILED, results=[], code=436,
                       reason="credentials could not be kept in the cache")
