"""Rich Call Data and diverted calls in the STI core (pure): brands signed into the SHAKEN
PASSporT for A calls, div PASSporTs for diverted calls, and their verification (rcdi against
the fetched logo; each Identity header its own result; the div chain to the shaken one)."""

from __future__ import annotations

import pytest

from stirshaken_proxy.policy.accounts import Account
from stirshaken_proxy.policy.inventory import Inventory, NumberBlock
from stirshaken_proxy.stir.credentials import CachePolicy, TrustStore
from stirshaken_proxy.stir.passport import decode_passport
from stirshaken_proxy.stir.rcd import (
    Brand,
    RcdClaims,
    RcdError,
    check_logo_url,
    check_name,
    check_reason,
    digest_matches,
    integrity,
    is_display_text,
    parse_claims,
)
from stirshaken_proxy.stir.signing import Authenticator, AuthPolicy, CallFacts, Signed
from stirshaken_proxy.stir.verification import (
    FetchError,
    FetchKind,
    FetchRequest,
    FetchResponse,
    NeedsCredentials,
    VerificationService,
)
from stirshaken_proxy.stir.verify import Checks, Verdict, Verstat
from stirshaken_proxy.stir.x5u import UrlPolicy
from tests.stir_pki import NOW, ORIGID, Pki, make_pki

T = int(NOW.timestamp())
X5U = "https://cert.example.org/good.pem"
LOGO = "https://brand.example.org/acme.png"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def authenticator(pki: Pki, brands: dict[str, Brand]) -> Authenticator:
    inv = Inventory([NumberBlock(first="12025550100", last="12025550199", account="acme")])
    auth = Authenticator(signers={"default": pki.leaves["good"].signer(X5U)}, inventory=inv,
                         policy=AuthPolicy())
    auth.brands = brands
    return auth


ACME = Account(name="acme", origid=ORIGID, sources=("127.0.0.1/32",))
BRAND = Brand(name="Acme Sales", logo=LOGO, logo_digest=integrity(PNG))


def sign(pki: Pki, facts: CallFacts, brands: dict[str, Brand] | None = None) -> Signed:
    out = authenticator(pki, {"account:acme": BRAND} if brands is None else brands).sign(
        facts, T)
    assert isinstance(out, Signed), out
    return out


def service(pki: Pki) -> VerificationService:
    core = VerificationService(checks=Checks(url_policy=UrlPolicy()),
                               trust=TrustStore([pki.root]), cache_policy=CachePolicy())
    core.fetched(FetchRequest(url=X5U, kind=FetchKind.X5U),
                 FetchResponse(body=pki.leaves["good"].chain_pem, headers={}), T)
    return core


def test_a_call_is_signed_with_its_brand_and_reason() -> None:
    pki = make_pki()
    signed = sign(pki, CallFacts(ACME, "12025550142", "12025550199", reason="Appointment"))
    claims = decode_passport(signed.identity.split(";")[0]).claims
    assert claims["rcd"] == {"nam": "Acme Sales", "icn": LOGO}
    assert claims["rcdi"] == {"/icn": integrity(PNG)}
    assert claims["crn"] == "Appointment"
    assert signed.branded and signed.identity.endswith(";ppt=shaken")
    # A number's own brand wins over its account's; a B call (not its number) has none.
    own = Brand(name="Acme Billing")
    signed = sign(pki, CallFacts(ACME, "12025550142", "12025550199"),
                  {"account:acme": BRAND, "tn:12025550142": own})
    assert decode_passport(signed.identity.split(";")[0]).claims["rcd"] == {"nam": "Acme Billing"}
    unowned = sign(pki, CallFacts(ACME, "13035550142", "12025550199"))
    assert unowned.attest.value == "B" and not unowned.branded
    assert "rcd" not in decode_passport(unowned.identity.split(";")[0]).claims


def test_rcd_verifies_with_its_logo_fetched_and_checked(pki: Pki) -> None:
    signed = sign(pki, CallFacts(ACME, "12025550142", "12025550199", reason="Appointment"))
    core = service(pki)
    first = core.verify([signed.identity], orig="12025550142", dest="12025550199", date=None,
                        now=T)
    assert first == NeedsCredentials(urls=(LOGO,), fetch=(
        FetchRequest(url=LOGO, kind=FetchKind.CONTENT),))
    outcome = core.fetched(FetchRequest(url=LOGO, kind=FetchKind.CONTENT),
                           FetchResponse(body=PNG, headers={}), T)
    assert outcome.ready == (LOGO,)
    verdict = core.verify([signed.identity], orig="12025550142", dest="12025550199", date=None,
                          now=T)
    assert isinstance(verdict, Verdict) and verdict.verstat is Verstat.PASSED
    assert verdict.rcd == RcdClaims(name="Acme Sales", logo=LOGO, logo_digest=integrity(PNG),
                                    reason="Appointment")


@pytest.mark.parametrize(("body", "problem"), [
    (PNG + b"changed", "does not match its rcdi digest"),
    (FetchError(reason="HTTP 404"), "cannot be fetched: HTTP 404"),
])
def test_a_logo_that_does_not_match_or_cannot_be_had_is_not_passed_on(
        pki: Pki, body: bytes | FetchError, problem: str) -> None:
    signed = sign(pki, CallFacts(ACME, "12025550142", "12025550199"))
    core = service(pki)
    core.verify([signed.identity], orig="12025550142", dest="12025550199", date=None, now=T)
    result = body if isinstance(body, FetchError) else FetchResponse(body=body, headers={})
    core.fetched(FetchRequest(url=LOGO, kind=FetchKind.CONTENT), result, T)
    verdict = core.verify([signed.identity], orig="12025550142", dest="12025550199", date=None,
                          now=T)
    assert isinstance(verdict, Verdict)
    assert verdict.verstat is Verstat.PASSED and verdict.rcd is None  # SHAKEN still passes
    assert problem in verdict.results[0].rcd_problem


def test_a_diverted_call_carries_shaken_and_div_and_both_verify(pki: Pki) -> None:
    signed = sign(pki, CallFacts(ACME, "12025550142", "13035550111",
                                 diverted_from="12025550199"), brands={})
    assert len(signed.more) == 1 and signed.more[0].endswith(";ppt=div")
    shaken = decode_passport(signed.identity.split(";")[0]).claims
    div = decode_passport(signed.more[0].split(";")[0])
    assert shaken["dest"] == {"tn": ["12025550199"]}  # the call as first placed
    assert div.header["ppt"] == "div"
    assert div.claims == {"dest": {"tn": ["13035550111"]}, "div": {"tn": "12025550199"},
                          "iat": T, "orig": {"tn": "12025550142"}}
    core = service(pki)
    verdict = core.verify([signed.identity, signed.more[0]], orig="12025550142",
                          dest="13035550111", date=None, now=T)
    assert isinstance(verdict, Verdict) and verdict.verstat is Verstat.PASSED
    assert [r.passed for r in verdict.results] == [True, True]
    assert "through the diversion from 12025550199" in next(
        c.detail for c in verdict.results[0].checks if c.name == "dest")
    # Without the div header the shaken one does not name this destination.
    alone = core.verify([signed.identity], orig="12025550142", dest="13035550111", date=None,
                        now=T)
    assert isinstance(alone, Verdict) and alone.verstat is Verstat.FAILED and alone.code == 438


def test_a_failing_div_does_not_fail_a_valid_shaken(pki: Pki) -> None:
    direct = sign(pki, CallFacts(ACME, "12025550142", "12025550199"), brands={})
    diverted = sign(pki, CallFacts(ACME, "12025550142", "13035550111",
                                   diverted_from="12025550199"), brands={})
    token, rest = diverted.more[0].split(";", 1)
    h, c, sig = token.split(".")
    broken = f"{h}.{c}.{sig[:-4]}AAAA;{rest}"
    core = service(pki)
    verdict = core.verify([direct.identity, broken], orig="12025550142", dest="12025550199",
                          date=None, now=T)
    assert isinstance(verdict, Verdict) and verdict.verstat is Verstat.PASSED
    assert [r.passed for r in verdict.results] == [True, False]


@pytest.mark.parametrize(("check", "value", "problem"), [
    (check_name, "", "brand name is empty"),
    (check_name, "x" * 65, "more than 64"),
    (check_name, "Acme\x07Sales", "control characters (U+0007)"),
    (check_reason, "Pay\u202eyour bill", "control characters (U+202E)"),
    (check_reason, "r" * 65, "65 characters, more than 64"),
    (check_name, "<b>Acme</b>", "markup (U+003C, U+003E, U+003C)"),
    (check_name, "Acme\u200bSales", "control characters (U+200B)"),  # zero-width space
    (check_name, "Acme\u2028Sales", "spaces other than U+0020 (U+2028)"),
    (check_name, "Acme\u00a0Sales", "spaces other than U+0020 (U+00A0)"),
    (check_name, "Acme\tSales", "control characters (U+0009)"),
    (check_name, "Acme\ue000", "control characters (U+E000)"),  # private use
    (check_reason, "Bill\u0085", "control characters (U+0085)"),
    (check_logo_url, "http://brand.example.org/a.png", "is not an https URL"),
    (check_logo_url, "https://u:p@brand.example.org/a.png", "without credentials"),
    (check_logo_url, "https:///a.png", "must name a host"),
])
def test_bad_brand_input_is_refused_with_a_clear_error(check: object, value: str,
                                                        problem: str) -> None:
    with pytest.raises(RcdError) as info:
        check(value)  # type: ignore[operator]
    assert problem in str(info.value)


@pytest.mark.parametrize(("claims", "problem"), [
    ({"rcd": {"nam": "A", "icn": LOGO}}, "rcd has an icn but rcdi has no digest for it"),
    ({"rcd": {"nam": "A"}, "rcdi": {"/jcl": integrity(b"x")}}, "not in rcd"),
    ({"rcd": {"nam": "A", "icn": LOGO}, "rcdi": {"/icn": "md5-abc"}}, "is not <sha256"),
    ({"rcd": {"icn": LOGO}}, "rcd has no nam"),
    ({"crn": "x"}, "crn or rcdi without rcd"),
])
def test_malformed_rcd_claims(claims: dict[str, object], problem: str) -> None:
    with pytest.raises(RcdError, match=problem):
        parse_claims(claims)


def test_integrity_strings() -> None:
    assert integrity(b"abc") == "sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
    assert digest_matches(integrity(b"abc", "sha384"), b"abc")
    assert not digest_matches(integrity(b"abc"), b"abd")
    assert not digest_matches("sha1-AAAA", b"abc")


def test_a_separate_rcd_passport_names_the_caller_of_a_valid_shaken(pki: Pki) -> None:
    """RFC 9795: Rich Call Data may come in a PASSporT of its own (ppt=rcd)."""
    from tests.stir_pki import forge, header, identity

    leaf = pki.leaves["good"]
    shaken = sign(pki, CallFacts(ACME, "12025550142", "12025550199"), brands={})
    rcd = forge(leaf, header(X5U, ppt="rcd"), {
        "dest": {"tn": ["12025550199"]}, "iat": T, "orig": {"tn": "12025550142"},
        "rcd": {"nam": "Acme Partner"}})
    core = service(pki)
    verdict = core.verify([shaken.identity, identity(rcd, X5U, ppt="rcd")],
                          orig="12025550142", dest="12025550199", date=None, now=T)
    assert isinstance(verdict, Verdict) and verdict.verstat is Verstat.PASSED
    assert verdict.rcd == RcdClaims(name="Acme Partner")
    # Alone it verifies nothing: a call needs its SHAKEN PASSporT.
    alone = core.verify([identity(rcd, X5U, ppt="rcd")], orig="12025550142",
                        dest="12025550199", date=None, now=T)
    assert isinstance(alone, Verdict) and alone.verstat is Verstat.FAILED


def test_display_text_is_plain_nfc_text_trimmed_of_spaces() -> None:
    assert check_name("  Zoë's Café & Co. — Sales #1  ") == "Zoë's Café & Co. — Sales #1"
    assert check_name("Cafe\u0301") == "Caf\u00e9"  # NFC: one code point as signed
    assert check_name("東京 営業部") == "東京 営業部"
    assert is_display_text("Acme Sales") and not is_display_text(" Acme")
    assert not is_display_text("Cafe\u0301") and not is_display_text("A\x00")


def test_a_stored_brand_that_is_not_display_text_is_never_signed(pki: Pki) -> None:
    """Written to the store by another tool, past the CLI's checks: the call is still signed
    (attestation A), without rcd, and counted."""
    for bad in (Brand(name="Acme\x1b[2J"), Brand(name="<script>x</script>"),
                Brand(name="Acme", logo=LOGO, logo_digest="md5-x")):
        auth = authenticator(pki, {"account:acme": bad})
        out = auth.sign(CallFacts(ACME, "12025550142", "12025550199"), T)
        assert isinstance(out, Signed) and not out.branded and out.attest.value == "A"
        assert "rcd" not in decode_passport(out.identity.split(";")[0]).claims
        assert auth.stats[("brand_refused", "acme")] == 1
    auth = authenticator(pki, {"account:acme": BRAND})
    out = auth.sign(CallFacts(ACME, "12025550142", "12025550199", reason="Pay\x00"), T)
    assert isinstance(out, Signed) and not out.branded
