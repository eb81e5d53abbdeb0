"""PASSporT signing (RFC 8225/8588): exact header and claims, raw r||s, and interop with the
independent secsipidx implementation."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from stirshaken_proxy.io.keys import init_dev_pki, load_private_key
from stirshaken_proxy.stir.certs import (
    certificate_spcs,
    decode_tn_auth_list,
    encode_tn_auth_list_spc,
)
from stirshaken_proxy.stir.passport import (
    Attestation,
    ClaimError,
    Signer,
    SigningIdentity,
    b64url,
    b64url_decode,
    canonical_json,
    decode_passport,
)

ORIGID = "5f3f3f7a-4c1b-4d1e-9a37-0d2c9b6a1e01"
X5U = "https://cert.example.org/shaken.pem"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    init_dev_pki(d, spc="123A")
    return d


def signer(pki: Path) -> Signer:
    return Signer(SigningIdentity(name="default", key=load_private_key(pki / "key.pem"),
                                  x5u=X5U))


def test_token_is_exactly_shaken(pki: Path) -> None:
    s = signer(pki)
    token = s.sign(attest=Attestation.A, orig="12025550100", dest=["12025550199"],
                   iat=1700000000, origid=ORIGID)
    head, claims, sig = token.split(".")
    assert b64url_decode(head) == (
        b'{"alg":"ES256","ppt":"shaken","typ":"passport","x5u":"%s"}' % X5U.encode())
    assert b64url_decode(claims) == (
        b'{"attest":"A","dest":{"tn":["12025550199"]},"iat":1700000000,'
        b'"orig":{"tn":"12025550100"},"origid":"%s"}' % ORIGID.encode())
    assert len(b64url_decode(sig)) == 64 and "=" not in token
    # The claims are canonical JSON (RFC 8225 §9).
    parsed = json.loads(b64url_decode(claims))
    assert json.dumps(parsed, separators=(",", ":"), sort_keys=True).encode() == \
        b64url_decode(claims)
    cert = x509.load_pem_x509_certificate((pki / "cert.pem").read_bytes())
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert decode_passport(token).verify(key)
    # Claims changed after signing (another calling number) fail.
    forged = b64url(b64url_decode(claims).replace(b"12025550100", b"12025550101"))
    assert not decode_passport(head + "." + forged + "." + sig).verify(key)


def test_identity_value(pki: Path) -> None:
    s = signer(pki)
    assert s.identity_value("a.b.c") == f"a.b.c;info=<{X5U}>;alg=ES256;ppt=shaken"


def test_tn_auth_list() -> None:
    der = encode_tn_auth_list_spc("123A")
    assert der == bytes.fromhex("3008a00616043132 3341".replace(" ", ""))
    assert decode_tn_auth_list(der) == (["123A"], 0)


def test_dev_pki(pki: Path) -> None:
    cert = x509.load_pem_x509_certificate((pki / "cert.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    assert certificate_spcs(cert) == ["123A"] and certificate_spcs(ca) == []
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    assert (pki / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (pki / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        init_dev_pki(pki, spc="123A")


@pytest.mark.skipif(shutil.which("secsipidx") is None, reason="secsipidx not installed")
@pytest.mark.parametrize("attest", list(Attestation))
def test_secsipidx_verifies_our_identity(pki: Path, attest: Attestation) -> None:
    s = signer(pki)
    token = s.sign(attest=attest, orig="12025550100", dest=["12025550199"],
                   iat=int(time.time()), origid=ORIGID)
    value = s.identity_value(token)
    ok = _secsipidx(value, pki / "cert.pem", pki / "ca.pem")
    assert ok.returncode == 0 and "ok" in ok.stdout, ok.stdout + ok.stderr
    other = pki.parent / f"other-{attest.value}"
    init_dev_pki(other, spc="999")
    wrong = _secsipidx(value, other / "cert.pem", other / "ca.pem")
    assert wrong.returncode != 0


def _secsipidx(value: str, cert: Path, ca: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["secsipidx", "-c", "-identity", value, "-p", str(cert), "-ca-file", str(ca),
         "-ca-inter", str(ca), "-cert-verify", "7", "-expire", "300"],
        capture_output=True, text=True, timeout=30, check=False)


def test_the_fast_claims_are_the_canonical_encoders_text(pki: Path) -> None:
    s = signer(pki)
    fast = s.claims(attest=Attestation.B, orig="12025550100",
                    dest=["12025550199", "442079460000"], iat=1700000000, origid=ORIGID)
    assert fast == canonical_json({"attest": "B", "iat": 1700000000, "origid": ORIGID,
                                   "dest": {"tn": ["12025550199", "442079460000"]},
                                   "orig": {"tn": "12025550100"}})


@pytest.mark.parametrize(("claim", "value", "field"), [
    ("origid", "\t" + ORIGID.replace("-", "")[1:], "origid"),  # uuid.UUID reads it
    ("origid", ORIGID.upper(), "origid"),
    ("origid", "{" + ORIGID + "}", "origid"),
    ("origid", ORIGID + "\n", "origid"),
    ("orig", "1202555010\"", "orig.tn"),
    ("orig", "+12025550100", "orig.tn"),
    ("orig", "١٢٠٢٥٥٥٠١٠٠", "orig.tn"),  # digits, but not ASCII ones
    ("orig", "1" * 16, "orig.tn"),
    ("orig", "", "orig.tn"),
    ("dest", ["12025550199", "x"], "dest.tn"),
    ("dest", [], "dest.tn"),
    ("dest", ["12025550199"] * 33, "dest.tn"),
    ("iat", -1, "iat"),
])
def test_a_claim_we_would_not_sign_as_given_is_refused(pki: Path, claim: str, value: object,
                                                        field: str) -> None:
    s = signer(pki)
    claims: dict[str, Any] = {"attest": Attestation.A, "orig": "12025550100",
                              "dest": ["12025550199"], "iat": 1700000000, "origid": ORIGID}
    claims[claim] = value
    for sign in (s.sign, lambda **c: s.sign_with(**c, extra={"crn": "ok"})):
        with pytest.raises(ClaimError) as info:
            sign(**claims)
        assert info.value.field == field
    if claim != "origid":
        del claims["attest"], claims["origid"]
        with pytest.raises(ClaimError):
            s.sign_div(**claims, div="12025550111")


def test_extensions_are_canonical_json_and_cannot_replace_shaken_claims(pki: Path) -> None:
    s = signer(pki)
    base: dict[str, Any] = {"attest": Attestation.A, "orig": "12025550100",
                            "dest": ["12025550199"], "iat": 1700000000, "origid": ORIGID}
    token = s.sign_with(**base, extra={"crn": "Zoë \"quoted\" \\ </script>"})
    raw = b64url_decode(token.split(".")[1])
    assert raw.decode() == canonical_json(json.loads(raw))
    with pytest.raises(ClaimError, match="may not replace"):
        s.sign_with(**base, extra={"orig": {"tn": "19995550100"}})
    with pytest.raises(ClaimError):
        s.sign_with(**base, extra={"crn": float("nan")})
    with pytest.raises(ClaimError, match=r"div\.tn"):
        s.sign_div(orig="12025550100", dest=["12025550199"], div="abc", iat=1700000000)
