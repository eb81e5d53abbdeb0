"""The verification service's credential flow, without sockets: what it asks to fetch, what
it makes of the bytes fed back, and when requests may go on (explicit ``now`` throughout)."""

from __future__ import annotations

import pytest

from stirshaken_proxy.stir.credentials import CachePolicy, Credential, FetchFailure, TrustStore
from stirshaken_proxy.stir.verification import (
    FetchError,
    FetchKind,
    FetchOutcome,
    FetchRequest,
    FetchResponse,
    NeedsCredentials,
    VerificationService,
)
from stirshaken_proxy.stir.verify import Checks, Verdict, Verstat
from stirshaken_proxy.stir.x5u import UrlPolicy
from tests.stir_pki import NOW, Pki, identity, make_pki, token

T = int(NOW.timestamp())
CRL_URL = "http://crl.example.org/sti.crl"
URL = "https://cert.example.org/{}.pem"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki(crl_url=CRL_URL)


def service(pki: Pki) -> VerificationService:
    return VerificationService(checks=Checks(url_policy=UrlPolicy()),
                               trust=TrustStore([pki.root]), cache_policy=CachePolicy())


def x5u(name: str) -> FetchRequest:
    return FetchRequest(url=URL.format(name), kind=FetchKind.X5U)


CRL = FetchRequest(url=CRL_URL, kind=FetchKind.CRL)


def value(pki: Pki, name: str) -> str:
    url = URL.format(name)
    return identity(token(pki.leaves[name], url, iat=T), url)


def verdict(core: VerificationService, pki: Pki, name: str) -> Verdict:
    result = core.verify([value(pki, name)], orig="12025550100", dest="12025550199", date=None,
                         now=T)
    assert isinstance(result, Verdict), result
    return result


def test_a_chain_naming_a_crl_waits_for_it_and_a_revoked_one_fails(pki: Pki) -> None:
    core = service(pki)
    for name in ("good", "revoked"):
        assert core.verify([value(pki, name)], orig="12025550100", dest="12025550199",
                           date=None, now=T) == NeedsCredentials(urls=(URL.format(name),),
                                                                 fetch=(x5u(name),))
    chain = FetchResponse(body=pki.leaves["good"].chain_pem, headers={})
    # The chain names the CRL: it is not cached (nor ready) until the CRL is in.
    assert core.fetched(x5u("good"), chain, T) == FetchOutcome(fetch=(CRL,))
    revoked = FetchResponse(body=pki.leaves["revoked"].chain_pem, headers={})
    assert core.fetched(x5u("revoked"), revoked, T) == FetchOutcome()  # one CRL fetch for both
    outcome = core.fetched(CRL, FetchResponse(body=pki.crl_pem, headers={}), T + 0.1)
    assert outcome.ready == tuple(sorted((URL.format("good"), URL.format("revoked"))))
    assert verdict(core, pki, "good").verstat is Verstat.PASSED
    failed = verdict(core, pki, "revoked")
    assert (failed.verstat, failed.code) == (Verstat.FAILED, 437)
    assert "revoked" in failed.reason
    # The CRL is not fetched again within its age.
    leaf = FetchResponse(body=pki.leaves["good"].chain_pem, headers={})
    assert core.fetched(x5u("good"), leaf, T + 60) == FetchOutcome(ready=(URL.format("good"),))


def test_a_crl_that_cannot_be_fetched_is_a_soft_fail(pki: Pki) -> None:
    core = service(pki)
    core.verify([value(pki, "revoked")], orig="12025550100", dest="12025550199", date=None, now=T)
    revoked = FetchResponse(body=pki.leaves["revoked"].chain_pem, headers={})
    assert core.fetched(x5u("revoked"), revoked, T).fetch == (CRL,)
    outcome = core.fetched(CRL, FetchError(reason="HTTP 503"), T)
    assert outcome.ready == (URL.format("revoked"),)
    assert verdict(core, pki, "revoked").verstat is Verstat.PASSED  # unknown revocation: soft fail


@pytest.mark.parametrize(("result", "cached", "code"), [
    (FetchError(reason="timed out after 2.0 s"), FetchFailure, 436),
    (FetchResponse(body=b"\x00 not a certificate", headers={}), Credential, 437),
])
def test_failures_are_cached_for_the_negative_age(pki: Pki, result: object, cached: type,
                                                  code: int) -> None:
    core = service(pki)
    core.verify([value(pki, "good")], orig="12025550100", dest="12025550199", date=None, now=T)
    assert core.fetched(x5u("good"), result, T).ready == (URL.format("good"),)  # type: ignore[arg-type]
    assert isinstance(core.cache.get(URL.format("good"), T + 29), cached)
    assert verdict(core, pki, "good").code == code
    assert core.cache.get(URL.format("good"), T + 30) is None  # asked for again after 30 s


def test_cache_control_sets_the_age() -> None:
    plain = make_pki()  # no CRL distribution points: a chain is cached as soon as it is in
    core = service(plain)
    body = plain.leaves["good"].chain_pem
    outcome = core.fetched(x5u("good"), FetchResponse(body=body, headers={
        "cache-control": "max-age=120"}), T)
    assert outcome == FetchOutcome(ready=(URL.format("good"),))
    assert core.cache.get(URL.format("good"), T + 119) is not None
    assert core.cache.get(URL.format("good"), T + 120) is None
