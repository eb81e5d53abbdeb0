"""x5u fetching for the verification service: never blocks the proxy.

- Asyncio only; one fetch in flight per URL (the engine asks once per URL).
- The URL must pass the ATIS-1000074 policy; the host is resolved here and every address is
  checked against the SSRF guard, and the connection goes to exactly the addresses checked
  (a pinned resolver), so DNS cannot rebind it elsewhere.
- Bounded: total time, response size, concurrent fetches.
- Outcomes go into the credential cache: a chain for its Cache-Control/Expires age (capped),
  a failure for a short negative age. CRL distribution points of the certificate are fetched
  under the same guard.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import logging
import re
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography import x509

from ..engine.stats import LatencyHistogram
from ..stir.credentials import CredentialCache, FetchFailure, TrustStore, build_credential
from ..stir.x5u import UrlPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class FetchConfig:
    timeout: float = 2.0
    max_bytes: int = 64 * 1024
    max_age: float = 86_400.0  # ATIS guidance: cache up to 24 h
    default_age: float = 3_600.0  # when the server says nothing
    negative_age: float = 30.0  # failures are remembered this long
    max_in_flight: int = 64


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


def cache_age(headers: Any, now: float, cfg: FetchConfig) -> float:
    """Seconds to keep a response: Cache-Control max-age, else Expires, else the default;
    capped at max_age (no-store/no-cache: the negative age, so it is fetched again soon)."""
    cc = headers.get("Cache-Control", "")
    if re.search(r"\b(no-store|no-cache)\b", cc):
        return cfg.negative_age
    m = re.search(r"\bmax-age\s*=\s*(\d+)", cc)
    if m:
        return min(float(m.group(1)), cfg.max_age)
    expires = headers.get("Expires")
    if expires:
        try:
            when = email.utils.parsedate_to_datetime(expires).timestamp()
        except (TypeError, ValueError):
            when = now
        return max(0.0, min(when - now, cfg.max_age))
    return min(cfg.default_age, cfg.max_age)


class Fetcher:
    def __init__(self, *, policy: UrlPolicy, crl_policy: UrlPolicy, cache: CredentialCache,
                 trust: TrustStore, config: FetchConfig, ssl_context: ssl.SSLContext | None,
                 on_done: Callable[[str], None], counters: Counter[str]) -> None:
        self.policy = policy
        self.crl_policy = crl_policy
        self.cache = cache
        self.trust = trust
        self.config = config
        self.ssl_context = ssl_context
        self.on_done = on_done
        self.counters = counters
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._crls_seen: dict[str, float] = {}
        self._sem = asyncio.Semaphore(config.max_in_flight)
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

    def request(self, url: str) -> None:
        """Start fetching ``url`` unless it is already being fetched."""
        if url in self._tasks:
            return
        self._tasks[url] = asyncio.get_running_loop().create_task(self._run(url))

    async def _run(self, url: str) -> None:
        try:
            async with self._sem:
                await self._fetch_credential(url)
        finally:
            self._tasks.pop(url, None)
            self.on_done(url)

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
        limit = self.config.max_bytes
        async with asyncio.timeout(self.config.timeout):
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

    async def _fetch_credential(self, url: str) -> None:
        started = time.monotonic()
        now = time.time()
        try:
            body, headers = await self.get(url)
        except (GuardError, aiohttp.ClientError, TimeoutError, OSError, ssl.SSLError) as exc:
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError):
                reason = f"timed out after {self.config.timeout} s"
            self.counters["x5u_fetch_failures"] += 1
            log.info("x5u fetch %s failed: %s", url, reason)
            self.cache.put(url, FetchFailure(url=url, reason=reason),
                           now + self.config.negative_age)
            return
        self.counters["x5u_fetches"] += 1
        self.latency.observe(time.monotonic() - started)
        credential = build_credential(url, body, self.trust)
        if credential.error is None and credential.crl_urls:
            if await self._refresh_crls(credential.crl_urls):
                credential = build_credential(url, body, self.trust)
        age = cache_age(headers, now, self.config) if credential.error is None \
            else self.config.negative_age
        self.cache.put(url, credential, now + age)

    async def _refresh_crls(self, urls: tuple[str, ...]) -> bool:
        """Fetch the CRLs a certificate names (at most once per max_age each); True when a new
        CRL was added. A CRL that cannot be fetched is counted and logged (soft fail)."""
        added = False
        now = time.time()
        for url in urls:
            if self._crls_seen.get(url, 0.0) > now:
                continue
            self._crls_seen[url] = now + self.config.max_age
            try:
                body, _ = await self.get(url, crl=True)
                crl = (x509.load_pem_x509_crl(body) if body.lstrip().startswith(b"-----")
                       else x509.load_der_x509_crl(body))
            except (GuardError, aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                self.counters["crl_fetch_failures"] += 1
                self._crls_seen[url] = now + self.config.negative_age
                log.warning("CRL %s unavailable: %s", url, exc)
                continue
            self.trust.add_crl(crl)
            self.counters["crl_fetches"] += 1
            added = True
        return added

    async def close(self) -> None:
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
