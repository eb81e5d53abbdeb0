"""x5u fetching against a real HTTPS server on 127.0.0.1: policy, guard, bounds, caching, CRLs.

The fetcher moves bytes and the STI core makes them credentials: wired here as the shell
wires them (each outcome fed to the core, the further fetches it asks for started)."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from stirshaken_proxy.io.fetcher import Fetcher
from stirshaken_proxy.stir.credentials import (
    CachePolicy,
    Credential,
    CredentialCache,
    FetchFailure,
    TrustStore,
    cache_age,
)
from stirshaken_proxy.stir.verification import (
    FetchError,
    FetchKind,
    FetchRequest,
    FetchResponse,
    VerificationService,
)
from stirshaken_proxy.stir.verify import Checks
from stirshaken_proxy.stir.x5u import FetchLimits, UrlPolicy
from tests.https_server import CertServer, Route
from tests.stir_pki import Pki, make_pki
from tests.support import free_port

LOOPBACK = ("127.0.0.1/32",)


def fetch(server: CertServer, pki: Pki, urls: list[str], *, allow: tuple[str, ...] = LOOPBACK,
          extra_port: int | None = None) -> tuple[CredentialCache, Counter[str], list[str]]:
    """Ask a Fetcher for ``urls`` (each twice) and wait until the core has every one cached."""
    async def go() -> tuple[CredentialCache, Counter[str], list[str]]:
        counters: Counter[str] = Counter()
        done: list[str] = []
        ports = (443, 8443, server.port) + ((extra_port,) if extra_port else ())
        policy = UrlPolicy(ports=ports, allow_networks=allow)
        service = VerificationService(checks=Checks(url_policy=policy),
                                      trust=TrustStore([pki.root]), cache_policy=CachePolicy())
        ctx = ssl.create_default_context()
        assert server.ca_file is not None
        ctx.load_verify_locations(cafile=str(server.ca_file))

        def on_done(request: FetchRequest, result: FetchResponse | FetchError) -> None:
            outcome = service.fetched(request, result, time.time())
            for more in outcome.fetch:
                fetcher.request(more)
            done.extend(outcome.ready)

        fetcher = Fetcher(policy=policy,
                          crl_policy=UrlPolicy(ports=ports, allow_networks=allow,
                                               allow_http=True),
                          limits=FetchLimits(timeout=0.5, max_bytes=64 * 1024),
                          ssl_context=ctx, on_done=on_done, counters=counters)
        for url in urls:
            fetcher.request(FetchRequest(url=url, kind=FetchKind.X5U))
            # Asked again while in flight: nothing new starts.
            fetcher.request(FetchRequest(url=url, kind=FetchKind.X5U))
        for _ in range(250):
            if len(done) >= len(set(urls)):
                break
            await asyncio.sleep(0.02)
        await fetcher.close()
        return service.cache, counters, done

    return asyncio.run(go())


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[CertServer, Pki]]:
    with CertServer(tmp_path, {}) as server:
        pki = make_pki(crl_url=server.url("/crl.pem"))
        server.routes.update({
            "/good.pem": Route(pki.leaves["good"].chain_pem,
                               headers=(("Cache-Control", "max-age=600"),)),
            "/revoked.pem": Route(pki.leaves["revoked"].chain_pem),
            "/crl.pem": Route(pki.crl_pem),
            "/garbage.pem": Route(b"\x00\x01 not a certificate"),
            "/huge.pem": Route(b"x" * 200_000),
            "/slow.pem": Route(pki.leaves["good"].chain_pem, delay=2.0),
            "/redirect.pem": Route(b"", status=302, headers=(("Location", "/good.pem"),)),
        })
        yield server, pki


def test_good_chain_is_fetched_once_and_cached_for_its_max_age(
        served: tuple[CertServer, Pki]) -> None:
    server, pki = served
    url = server.url("/good.pem")
    t0 = time.time()
    cache, counters, done = fetch(server, pki, [url])
    assert done == [url]
    assert server.requests.count("/good.pem") == 1
    cred = cache.get(url, t0)
    assert isinstance(cred, Credential) and cred.error is None and cred.spcs == ("123A",)
    assert cache.get(url, t0 + 590) is not None and cache.get(url, t0 + 700) is None
    assert counters["x5u_fetches"] == 1


def test_crl_distribution_point_revokes(served: tuple[CertServer, Pki]) -> None:
    server, pki = served
    url = server.url("/revoked.pem")
    cache, counters, _ = fetch(server, pki, [url])
    cred = cache.get(url, time.time())
    assert isinstance(cred, Credential) and cred.error == "certificate is revoked (CRL)"
    assert "/crl.pem" in server.requests and counters["crl_fetches"] == 1


@pytest.mark.parametrize(("path", "host", "allow", "reason"), [
    ("/missing.pem", "127.0.0.1", LOOPBACK, "HTTP 404"),
    ("/huge.pem", "127.0.0.1", LOOPBACK, "exceeds 65536"),
    ("/slow.pem", "127.0.0.1", LOOPBACK, "timed out"),
    ("/redirect.pem", "127.0.0.1", LOOPBACK, "HTTP 302"),  # redirects would dodge the guard
    ("/good.pem", "127.0.0.2", LOOPBACK, "address 127.0.0.2 is not allowed"),
    ("/good.pem", "localhost", (), "not allowed"),  # a name resolving to loopback
])
def test_fetch_failures(served: tuple[CertServer, Pki], path: str, host: str,
                        allow: tuple[str, ...], reason: str) -> None:
    server, pki = served
    url = server.url(path, host)
    cache, counters, done = fetch(server, pki, [url], allow=allow)
    entry = cache.get(url, time.time())
    assert done == [url]
    assert isinstance(entry, FetchFailure), entry
    assert reason in entry.reason, entry.reason
    assert counters["x5u_fetch_failures"] == 1
    if host != "127.0.0.1":
        assert server.requests == []  # refused before any connection was made


def test_garbage_is_an_unusable_credential(served: tuple[CertServer, Pki]) -> None:
    server, pki = served
    url = server.url("/garbage.pem")
    cache, _, _ = fetch(server, pki, [url])
    entry = cache.get(url, time.time())
    assert isinstance(entry, Credential) and entry.error is not None


def test_unreachable(served: tuple[CertServer, Pki]) -> None:
    server, pki = served
    port = free_port()  # nothing listens there
    url = f"https://127.0.0.1:{port}/good.pem"
    cache, _, _ = fetch(server, pki, [url], extra_port=port)
    assert isinstance(cache.get(url, time.time()), FetchFailure)


@pytest.mark.parametrize(("headers", "expected"), [
    ({"Cache-Control": "max-age=120"}, 120.0),
    ({"Cache-Control": "public, max-age=999999"}, 86400.0),  # capped at 24 h
    ({"Cache-Control": "no-store"}, 30.0),
    ({"Expires": "Thu, 01 Jan 1970 00:10:00 GMT"}, 600.0),
    ({}, 3600.0),
])
def test_cache_age(headers: dict[str, str], expected: float) -> None:
    assert cache_age(headers, 0.0, CachePolicy()) == expected


def _fetcher(server: CertServer, ports: tuple[int, ...], on_done: object,
             counters: Counter[str], **limits: float) -> Fetcher:
    policy = UrlPolicy(ports=(443, 8443, *ports), allow_networks=LOOPBACK)
    ctx = ssl.create_default_context()
    assert server.ca_file is not None
    ctx.load_verify_locations(cafile=str(server.ca_file))
    return Fetcher(policy=policy, crl_policy=policy,
                   limits=FetchLimits(timeout=5.0, max_bytes=64 * 1024, **limits),  # type: ignore[arg-type]
                   ssl_context=ctx, on_done=on_done, counters=counters)  # type: ignore[arg-type]


def test_a_slow_host_delays_only_its_own_urls(tmp_path: Path) -> None:
    """300 fetches from a host that answers slowly, then one from another host (the same
    server reached by another name): that one is not queued behind them, and the slow host
    never has more than max_per_host in flight."""
    pki = make_pki()
    routes = {f"/slow-{i}.pem": Route(pki.leaves["good"].chain_pem, delay=0.3)
              for i in range(300)}
    routes["/good.pem"] = Route(pki.leaves["good"].chain_pem)
    with CertServer(tmp_path, routes) as server:
        async def go() -> tuple[list[str], int]:
            done: list[str] = []
            seen_by_slow = -1

            def on_done(request: FetchRequest, result: FetchResponse | FetchError) -> None:
                nonlocal seen_by_slow
                assert isinstance(result, FetchResponse), result
                done.append(request.url)
                if "localhost" in request.url:
                    seen_by_slow = sum(1 for r in server.requests if r.startswith("/slow"))

            fetcher = _fetcher(server, (server.port,), on_done, Counter(), max_per_host=4)
            for i in range(300):
                fetcher.request(FetchRequest(url=server.url(f"/slow-{i}.pem"),
                                             kind=FetchKind.X5U))
            fetcher.request(FetchRequest(url=server.url("/good.pem", host="localhost"),
                                         kind=FetchKind.X5U))
            for _ in range(200):
                if any("localhost" in u for u in done):
                    break
                await asyncio.sleep(0.02)
            await fetcher.close()
            return done, seen_by_slow

        done, seen_by_slow = asyncio.run(go())
    assert done and "localhost" in done[0], done[:5]  # before any of the slow host's
    assert 0 <= seen_by_slow <= 4, seen_by_slow  # the slow host had 4 in flight, no more


def test_a_failing_host_rests(tmp_path: Path) -> None:
    pki = make_pki()
    with CertServer(tmp_path, {}) as server:
        port = free_port()  # nothing listens there

        async def go() -> tuple[list[str], Counter[str]]:
            reasons: list[str] = []
            counters: Counter[str] = Counter()

            def on_done(request: FetchRequest, result: FetchResponse | FetchError) -> None:
                assert isinstance(result, FetchError)
                reasons.append(result.reason)

            fetcher = _fetcher(server, (port,), on_done, counters, max_per_host=1,
                               host_failures=5, host_backoff=30.0)
            for i in range(5):  # one at a time: five failures in a row
                fetcher.request(FetchRequest(url=f"https://127.0.0.1:{port}/{i}.pem",
                                             kind=FetchKind.X5U))
            for _ in range(200):
                if len(reasons) >= 5:
                    break
                await asyncio.sleep(0.02)
            for i in range(5, 10):
                fetcher.request(FetchRequest(url=f"https://127.0.0.1:{port}/{i}.pem",
                                             kind=FetchKind.X5U))
            await asyncio.sleep(0.05)
            await fetcher.close()
            return reasons, counters

        reasons, counters = asyncio.run(go())
    assert len(reasons) == 10
    assert all("failed 5 times in a row; not asked again for 30 s" in r for r in reasons[5:])
    assert counters["fetch_host_resting"] == 5 and counters["x5u_fetch_failures"] == 5
    assert pki is not None
