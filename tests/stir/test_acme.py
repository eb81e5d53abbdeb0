"""The pure part of certificates by ACME: JWS requests, the CSR, the SPC token checks, the
signing-certificate checks and the renewal time."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import time

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from stirshaken_proxy.stir.acme import (
    TokenError,
    check_spc_token,
    jwk,
    jwk_thumbprint,
    jws,
    key_fingerprint,
    make_csr,
    renewal_time,
    tn_auth_list_value,
)
from stirshaken_proxy.stir.certs import TN_AUTH_LIST_OID, certificate_spcs, issue_certificate
from stirshaken_proxy.stir.credentials import SigningCertificateError, check_signing_chain

PEM = serialization.Encoding.PEM


def test_tn_auth_list_value_is_the_sti_pa_form() -> None:
    # ATIS-1000080's example SPC token for SPC 281K carries "MAigBhYEMjgxSw=="
    assert tn_auth_list_value("281K") == "MAigBhYEMjgxSw=="


def test_fingerprint_is_sha256_of_the_public_key_info() -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    spki = key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)
    text = key_fingerprint(key)
    assert text.startswith("SHA256 ") and len(text) == 7 + 32 * 3 - 1
    assert bytes.fromhex(text[7:].replace(":", "")) == hashlib.sha256(spki).digest()


def test_jws_verifies_with_an_independent_library() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    body = json.loads(jws(key, {"identifiers": []}, url="http://127.0.0.1/new", nonce="n1",
                          kid="http://127.0.0.1/acct/1"))
    compact = f"{body['protected']}.{body['payload']}.{body['signature']}"
    assert jwt.api_jws.decode_complete(compact, key.public_key(), algorithms=["ES256"])[
        "payload"] == b'{"identifiers":[]}'
    header = json.loads(base64.urlsafe_b64decode(body["protected"] + "=="))
    assert header == {"alg": "ES256", "nonce": "n1", "url": "http://127.0.0.1/new",
                      "kid": "http://127.0.0.1/acct/1"}
    # before the account exists: the JWK, and POST-as-GET has an empty payload
    first = json.loads(jws(key, None, url="u", nonce="n2"))
    assert first["payload"] == ""
    assert json.loads(base64.urlsafe_b64decode(first["protected"] + "=="))["jwk"] == \
        jwk(key.public_key())
    assert len(jwk_thumbprint(key.public_key())) == 43


def test_csr_carries_tnauthlist_and_the_sti_subject() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.load_der_x509_csr(make_csr(key, spc="123A", organization="Provider"))
    assert csr.is_signature_valid
    ext = csr.extensions.get_extension_for_oid(TN_AUTH_LIST_OID).value
    assert isinstance(ext, x509.UnrecognizedExtension)
    assert base64.b64encode(ext.value).decode() == tn_auth_list_value("123A")
    assert csr.subject.rfc4514_string() == "CN=SHAKEN 123A,O=Provider,C=US"


STI_PA = ec.generate_private_key(ec.SECP256R1())
ACCOUNT = ec.generate_private_key(ec.SECP256R1())
NOW = 1_800_000_000


def token(**changes: object) -> str:
    atc = {"tktype": "TNAuthList", "tkvalue": tn_auth_list_value("123A"), "ca": False,
           "fingerprint": key_fingerprint(ACCOUNT.public_key())}
    claims: dict[str, object] = {"exp": NOW + 3600, "jti": "j1", "atc": atc}
    key = STI_PA
    for name, value in changes.items():
        if name == "key":
            key = value  # type: ignore[assignment]
        elif name in atc:
            atc[name] = value
        elif value is None:
            claims.pop(name)
        else:
            claims[name] = value
    return jwt.encode(claims, key, algorithm="ES256", headers={"x5u": "https://pa/cert"})


def test_a_good_token_passes() -> None:
    got = check_spc_token(token(), issuers=[STI_PA.public_key()],
                          account_key=ACCOUNT.public_key(), spc="123A", now=NOW)
    assert (got.spc, got.expires, got.jti) == ("123A", NOW + 3600, "j1")


OTHER = ec.generate_private_key(ec.SECP256R1())


@pytest.mark.parametrize(("changes", "reason"), [
    ({"key": OTHER}, "signature does not verify with the STI-PA's key"),
    ({"exp": NOW - 1}, "token expired"),
    ({"exp": NOW + 30}, "expires within 60 s"),
    ({"exp": None}, "exp is missing"),
    ({"atc": None}, "atc claim is missing"),
    ({"tktype": "JWTClaimConstraints"}, "tktype 'JWTClaimConstraints' is not TNAuthList"),
    ({"tkvalue": tn_auth_list_value("999Z")}, "is not the TNAuthList of SPC 123A"),
    ({"tkvalue": "%%%"}, "tkvalue is not base64"),
    ({"ca": True}, "token is for a CA certificate"),
    ({"fingerprint": key_fingerprint(OTHER.public_key())}, "fingerprint is not our ACME"),
])
def test_bad_tokens_are_refused_before_use(changes: dict[str, object], reason: str) -> None:
    with pytest.raises(TokenError, match=reason):
        check_spc_token(token(**changes), issuers=[STI_PA.public_key()],
                        account_key=ACCOUNT.public_key(), spc="123A", now=NOW)


@pytest.mark.parametrize("raw", ["", "a.b", "a.b.c", "e30.e30.AAAA"])
def test_undecodable_tokens(raw: str) -> None:
    with pytest.raises(TokenError):
        check_spc_token(raw, issuers=[STI_PA.public_key()], account_key=ACCOUNT.public_key(),
                        spc="123A", now=NOW)


def test_hs256_token_is_refused() -> None:
    raw = jwt.encode({"exp": NOW + 3600}, "k" * 32, algorithm="HS256")
    with pytest.raises(TokenError, match="alg 'HS256' is not ES256"):
        check_spc_token(raw, issuers=[STI_PA.public_key()], account_key=ACCOUNT.public_key(),
                        spc="123A", now=NOW)


def test_renewal_time_is_a_share_of_the_lifetime() -> None:
    assert renewal_time(1000.0, 1900.0, 0.33) == pytest.approx(1603.0)


NOW_DT = dt.datetime.now(dt.UTC)
ROOT_KEY = ec.generate_private_key(ec.SECP256R1())
ROOT = issue_certificate(subject_cn="SHAKEN root", key=ROOT_KEY, issuer_cert=None,
                         issuer_key=ROOT_KEY, ca=True, spc=None,
                         not_before=NOW_DT - dt.timedelta(days=1),
                         not_after=NOW_DT + dt.timedelta(days=300))


def leaf(*, spc: str | None = "123A", days: tuple[int, int] = (-1, 30),
         root: x509.Certificate = ROOT, root_key: ec.EllipticCurvePrivateKey = ROOT_KEY
         ) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_certificate(subject_cn="SHAKEN 123A", key=key, issuer_cert=root,
                             issuer_key=root_key, ca=False, spc=spc,
                             not_before=NOW_DT + dt.timedelta(days=days[0]),
                             not_after=NOW_DT + dt.timedelta(days=days[1]))
    return key, cert.public_bytes(PEM) + root.public_bytes(PEM)


def test_a_good_signing_chain() -> None:
    key, chain = leaf()
    info = check_signing_chain(key, chain, spc="123A", roots=[ROOT], now=time.time())
    assert info.spcs == ("123A",) and info.pem == chain
    assert int(info.serial, 16) == x509.load_pem_x509_certificates(chain)[0].serial_number
    assert certificate_spcs(x509.load_pem_x509_certificates(chain)[0]) == ["123A"]


OTHER_ROOT_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_ROOT = issue_certificate(subject_cn="SHAKEN root", key=OTHER_ROOT_KEY, issuer_cert=None,
                               issuer_key=OTHER_ROOT_KEY, ca=True, spc=None,
                               not_before=NOW_DT - dt.timedelta(days=1),
                               not_after=NOW_DT + dt.timedelta(days=300))


@pytest.mark.parametrize(("case", "reason"), [
    ("key", "the private key does not match the certificate"),
    ("spc", "holds 999Z, not SPC 123A"),
    ("none", "certificate has no TNAuthList with an SPC"),
    ("expired", "has expired"),
    ("future", "not valid yet"),
    ("root", "does not chain to a trusted STI-CA"),
])
def test_signing_chain_checks(case: str, reason: str) -> None:
    key, chain = leaf(spc={"spc": "999Z", "none": None}.get(case, "123A"),
                      days={"expired": (-30, -1), "future": (1, 30)}.get(case, (-1, 30)),
                      **({"root": OTHER_ROOT, "root_key": OTHER_ROOT_KEY}  # type: ignore[arg-type]
                         if case == "root" else {}))
    if case == "key":
        key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(SigningCertificateError, match=reason):
        check_signing_chain(key, chain, spc="123A", roots=[ROOT], now=time.time())
