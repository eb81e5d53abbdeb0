"""The verification procedure (RFC 8224 §6.2) as a table: Identity in, verdict and code out.

The STI core runs without sockets or a clock: each chain is fed to it as fetched bytes with an
explicit ``now``, as the shell would after a fetch. Fetching itself is tested in tests/io and
through the real service in tests/service/test_verification.py.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from stirshaken_proxy.stir.credentials import CachePolicy, TrustStore
from stirshaken_proxy.stir.passport import Attestation, b64url, canonical_json
from stirshaken_proxy.stir.verification import (
    FetchError,
    FetchKind,
    FetchRequest,
    FetchResponse,
    NeedsCredentials,
    VerificationService,
)
from stirshaken_proxy.stir.verify import Checks, Verdict, Verstat, parse_identity
from stirshaken_proxy.stir.x5u import UrlPolicy
from tests.stir_pki import NOW, Pki, claims, forge, header, identity, make_pki, token

T = int(NOW.timestamp())
URL = "https://cert.example.org/{}.pem"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def x5u(url: str) -> FetchRequest:
    return FetchRequest(url=url, kind=FetchKind.X5U)


def verifier(pki: Pki) -> VerificationService:
    """The core with every leaf's chain fed as fetched (cached an hour), and one URL whose
    fetch failed (HTTP 404, cached for an hour as well)."""
    service = VerificationService(
        checks=Checks(url_policy=UrlPolicy()),
        trust=TrustStore([pki.root], [pki.crl] if pki.crl else []),
        cache_policy=CachePolicy(negative_age=3600))
    for name, leaf in pki.leaves.items():
        url = URL.format(name)
        outcome = service.fetched(x5u(url), FetchResponse(
            body=leaf.chain_pem, headers={"Cache-Control": "max-age=3600"}), T)
        assert outcome.ready == (url,) and outcome.fetch == ()
    service.fetched(x5u(URL.format("unfetchable")), FetchError(reason="HTTP 404"), T)
    return service


def verdict_of(service: VerificationService, identities: list[str], **kw: object) -> Verdict:
    result = service.verify(identities, **{"orig": "12025550100", "dest": "12025550199",
                                           "date": None, "now": T, **kw})  # type: ignore[arg-type]
    assert isinstance(result, Verdict), result
    return result


def good(pki: Pki, name: str = "good", **kw: object) -> str:
    url = URL.format(name)
    return identity(token(pki.leaves[name], url, **kw), url)  # type: ignore[arg-type]


Case = tuple[str, Callable[[Pki], str], int | None]


def _swap_claims(tok: str, new_claims: dict[str, object]) -> str:
    """The same header and signature over other claims (a B token made to say A)."""
    head, _, sig = tok.split(".")
    return f"{head}.{b64url(canonical_json(new_claims).encode())}.{sig}"


G = URL.format("good")

CASES: list[Case] = [
    ("valid", lambda p: good(p, iat=T), None),
    ("valid, iat 59 s old", lambda p: good(p, iat=T - 59), None),
    ("valid, quoted ppt", lambda p: good(p, iat=T).replace("ppt=shaken", 'ppt="shaken"'), None),
    ("valid, params reordered", lambda p: (lambda t: f"{t};ppt=shaken;alg=ES256;info=<{G}>")(
        token(p.leaves["good"], G, iat=T)), None),
    ("garbage", lambda p: "this is not a passport", 438),
    ("empty token", lambda p: f";info=<{G}>;alg=ES256;ppt=shaken", 438),
    ("two-part JWS", lambda p: identity("eyJhbGciOiJFUzI1NiJ9.e30", G), 438),
    ("bad base64", lambda p: identity("!!!.???.***", G), 438),
    ("header not JSON", lambda p: identity(b64url(b"{nope") + ".e30.AAAA", G), 438),
    ("info not in <>", lambda p: good(p, iat=T).replace(f"<{G}>", G), 438),
    # RFC 8224 §4.1: info is mandatory; x5u alone is not enough (regression: it was taken).
    ("no info parameter", lambda p: token(p.leaves["good"], G, iat=T) + ";alg=ES256;ppt=shaken",
     438),
    ("ppt absent everywhere", lambda p: identity(forge(
        p.leaves["good"], {"alg": "ES256", "typ": "passport", "x5u": G}, claims(T)), G, ppt="")
        .replace(";ppt=", ""), 438),
    ("ppt div (unsupported)", lambda p: good(p, iat=T).replace("ppt=shaken", "ppt=div"), 438),
    ("ppt shaken but PASSporT says div", lambda p: identity(forge(
        p.leaves["good"], header(G, ppt="div"), claims(T)), G), 438),
    ("typ not passport", lambda p: identity(forge(
        p.leaves["good"], header(G, typ="JWT"), claims(T)), G), 438),
    ("alg none", lambda p: identity(forge(p.leaves["good"], header(G, alg="none"), claims(T),
                                          sign=False), G, alg="none"), 438),  # unsigned: invalid
    ("alg RS256", lambda p: identity(forge(p.leaves["good"], header(G, alg="RS256"),
                                           claims(T)), G), 437),
    ("alg param ES384", lambda p: good(p, iat=T).replace("alg=ES256", "alg=ES384"), 437),
    ("attest D", lambda p: identity(forge(p.leaves["good"], header(G), claims(T, attest="D")),
                                    G), 438),
    ("no origid", lambda p: identity(forge(p.leaves["good"], header(G),
                                           {k: v for k, v in claims(T).items()
                                            if k != "origid"}), G), 438),
    ("dest not an array", lambda p: identity(forge(
        p.leaves["good"], header(G), claims(T, dest={"tn": "12025550199"})), G), 438),
    ("iat a string", lambda p: identity(forge(p.leaves["good"], header(G), claims(str(T))),
                                        G), 438),
    ("iat stale (61 s)", lambda p: good(p, iat=T - 61), 403),
    ("iat in the future (61 s)", lambda p: good(p, iat=T + 61), 403),
    ("iat zero", lambda p: good(p, iat=0), 403),
    ("iat negative", lambda p: good(p, iat=-5), 403),
    ("orig does not match", lambda p: good(p, iat=T, orig="12025550101"), 438),
    ("dest does not match", lambda p: good(p, iat=T, dest="12025550198"), 438),
    ("x5u differs from info", lambda p: identity(token(p.leaves["good"], G, iat=T),
                                                 URL.format("other")), 438),
    ("x5u over http", lambda p: (lambda u: identity(token(p.leaves["good"], u, iat=T), u))(
        "http://cert.example.org/good.pem"), 436),
    ("x5u on port 80", lambda p: (lambda u: identity(token(p.leaves["good"], u, iat=T), u))(
        "https://cert.example.org:80/good.pem"), 436),
    ("x5u with a query", lambda p: (lambda u: identity(token(p.leaves["good"], u, iat=T), u))(
        "https://cert.example.org/good.pem?v=1"), 436),
    ("x5u with userinfo", lambda p: (lambda u: identity(token(p.leaves["good"], u, iat=T),
                                                         u))(
        "https://user@cert.example.org/good.pem"), 436),
    ("x5u with a fragment", lambda p: (lambda u: identity(token(p.leaves["good"], u, iat=T),
                                                           u))(
        "https://cert.example.org/good.pem#x"), 436),
    ("x5u cannot be fetched", lambda p: (lambda u: identity(token(p.leaves["good"], u, iat=T),
                                                            u))(URL.format("unfetchable")), 436),
    ("expired certificate", lambda p: good(p, "expired", iat=T), 437),
    ("not yet valid certificate", lambda p: good(p, "future", iat=T), 437),
    ("no TNAuthList", lambda p: good(p, "no_tnauth", iat=T), 437),
    ("self-signed", lambda p: good(p, "self_signed", iat=T), 437),
    ("untrusted CA", lambda p: good(p, "untrusted", iat=T), 437),
    ("revoked (CRL)", lambda p: good(p, "revoked", iat=T), 437),
    ("signature by another key", lambda p: identity(token(p.leaves["untrusted"], G, iat=T), G),
     438),
    ("signature cut short", lambda p: identity(token(p.leaves["good"], G, iat=T)[:-4], G),
     438),
    ("claims changed after signing", lambda p: identity(_swap_claims(
        token(p.leaves["good"], G, iat=T, attest=Attestation.B), claims(T)), G), 438),
]


@pytest.mark.parametrize(("name", "make", "code"), CASES, ids=[c[0] for c in CASES])
def test_verification_table(pki: Pki, name: str, make: Callable[[Pki], str],
                            code: int | None) -> None:
    verdict = verdict_of(verifier(pki), [make(pki)])
    if code is None:
        assert verdict.verstat is Verstat.PASSED, verdict.results[0].checks
        assert verdict.attest == "A" and verdict.code is None
        assert [c.name for c in verdict.results[0].checks] == [
            "syntax", "ppt", "alg", "claims", "x5u", "orig", "dest", "iat", "credential",
            "signature"]
    else:
        assert verdict.verstat is Verstat.FAILED, verdict.results[0].checks
        assert verdict.code == code, verdict.results[0].checks
        assert verdict.reason


def test_table_has_enough_broken_cases() -> None:
    assert sum(1 for c in CASES if c[2] is not None) >= 20


def test_no_identity_is_428_no_tn_validation(pki: Pki) -> None:
    verdict = verdict_of(verifier(pki), [])
    assert verdict.verstat is Verstat.NONE and verdict.code == 428


def test_each_header_gets_a_result_and_one_pass_is_enough(pki: Pki) -> None:
    div = good(pki, iat=T).replace("ppt=shaken", "ppt=div")
    verdict = verdict_of(verifier(pki), [div, good(pki, iat=T)])
    assert verdict.verstat is Verstat.PASSED
    assert [r.code for r in verdict.results] == [438, None]


def test_unknown_credential_needs_one_fetch(pki: Pki) -> None:
    url = URL.format("not-cached")
    v = verifier(pki)
    value = identity(token(pki.leaves["good"], url, iat=T), url)
    first = v.verify([value], orig="12025550100", dest="12025550199", date=None, now=T)
    assert first == NeedsCredentials(urls=(url,), fetch=(x5u(url),))
    # A second request for the same URL waits for the same fetch: nothing new to start.
    again = v.verify([value], orig="12025550100", dest="12025550199", date=None, now=T)
    assert again == NeedsCredentials(urls=(url,), fetch=())
    assert v.fetched(x5u(url), FetchResponse(body=pki.leaves["good"].chain_pem, headers={}),
                     T).ready == (url,)
    assert verdict_of(v, [value]).verstat is Verstat.PASSED


def test_cache_expiry(pki: Pki) -> None:
    v = verifier(pki)
    assert v.cache.get(URL.format("good"), T + 3599) is not None
    assert v.cache.get(URL.format("good"), T + 3600) is None


@pytest.mark.parametrize(("value", "expected"), [
    ("abc;info=<https://a/b>;alg=ES256;ppt=shaken", ("abc", "https://a/b", "ES256", "shaken")),
    ('abc;info=<https://a/b;x>;ppt="shaken"', ("abc", "https://a/b;x", None, "shaken")),
    ("abc", ("abc", None, None, None)),
])
def test_parse_identity(value: str, expected: tuple[object, ...]) -> None:
    h = parse_identity(value)
    assert (h.token, h.info, h.alg, h.ppt) == expected
