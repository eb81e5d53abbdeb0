"""Certificates and tokens for verification tests, all made here (nothing is fetched)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from stirshaken_proxy.stir.certs import issue_certificate
from stirshaken_proxy.stir.passport import (
    Attestation,
    Signer,
    SigningIdentity,
    b64url,
    canonical_json,
    der_to_raw,
)

ORIGID = "5f3f3f7a-4c1b-4d1e-9a37-0d2c9b6a1e01"
NOW = dt.datetime(2026, 11, 24, 12, 0, 0, tzinfo=dt.UTC)
PEM = serialization.Encoding.PEM


@dataclass
class Leaf:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    chain_pem: bytes

    def signer(self, x5u: str) -> Signer:
        return Signer(SigningIdentity(name="t", key=self.key, x5u=x5u))


@dataclass
class Pki:
    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    leaves: dict[str, Leaf] = field(default_factory=dict)
    crl: x509.CertificateRevocationList | None = None

    @property
    def root_pem(self) -> bytes:
        return self.root.public_bytes(PEM)

    @property
    def crl_pem(self) -> bytes:
        assert self.crl is not None
        return self.crl.public_bytes(PEM)


def _leaf(key_cn: str, *, issuer: x509.Certificate | None, issuer_key: ec.EllipticCurvePrivateKey,
          now: dt.datetime, spc: str | None = "123A", days: tuple[int, int] = (-30, 365),
          crl_url: str | None = None, extra_chain: bytes = b"") -> Leaf:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_certificate(
        subject_cn=key_cn, key=key, issuer_cert=issuer,
        issuer_key=issuer_key if issuer is not None else key, ca=False, spc=spc,
        not_before=now + dt.timedelta(days=days[0]), not_after=now + dt.timedelta(days=days[1]),
        crl_url=crl_url)
    return Leaf(key=key, cert=cert, chain_pem=cert.public_bytes(PEM) + extra_chain)


def make_pki(crl_url: str | None = None, now: dt.datetime = NOW) -> Pki:
    """A trusted root and leaves for every case; validity is set around ``now``."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = issue_certificate(subject_cn="Test STI-CA", key=root_key, issuer_cert=None,
                             issuer_key=root_key, ca=True, spc=None,
                             not_before=now - dt.timedelta(days=400),
                             not_after=now + dt.timedelta(days=4000))
    pki = Pki(root_key=root_key, root=root)
    root_pem = root.public_bytes(PEM)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_root = issue_certificate(subject_cn="Other CA", key=other_key, issuer_cert=None,
                                   issuer_key=other_key, ca=True, spc=None,
                                   not_before=now - dt.timedelta(days=400),
                                   not_after=now + dt.timedelta(days=4000))
    pki.leaves = {
        "good": _leaf("SHAKEN 123A", issuer=root, issuer_key=root_key, extra_chain=root_pem,
                      crl_url=crl_url, now=now),
        "expired": _leaf("expired", issuer=root, issuer_key=root_key, days=(-400, -1), now=now),
        "future": _leaf("not yet valid", issuer=root, issuer_key=root_key, days=(10, 400),
                        now=now),
        "no_tnauth": _leaf("no TNAuthList", issuer=root, issuer_key=root_key, spc=None,
                           now=now),
        "self_signed": _leaf("self-signed", issuer=None, issuer_key=root_key, now=now),
        "untrusted": _leaf("untrusted", issuer=other_root, issuer_key=other_key,
                           extra_chain=other_root.public_bytes(PEM), now=now),
        "revoked": _leaf("revoked", issuer=root, issuer_key=root_key, crl_url=crl_url, now=now),
    }
    revoked = pki.leaves["revoked"].cert
    pki.crl = (x509.CertificateRevocationListBuilder()
               .issuer_name(root.subject)
               .last_update(now - dt.timedelta(days=1))
               .next_update(now + dt.timedelta(days=30))
               .add_revoked_certificate(x509.RevokedCertificateBuilder()
                                        .serial_number(revoked.serial_number)
                                        .revocation_date(now - dt.timedelta(days=1)).build())
               .sign(root_key, hashes.SHA256()))
    return pki


def token(leaf: Leaf, x5u: str, *, iat: int, orig: str = "12025550100",
          dest: str = "12025550199", attest: Attestation = Attestation.A) -> str:
    """A SHAKEN PASSporT with these claims as given (the signer's own checks, which refuse a
    stale or malformed claim, are not asked: the verifier's tests need such tokens too)."""
    return leaf.signer(x5u).sign_claims(canonical_json(
        {"attest": attest.value, "dest": {"tn": [dest]}, "iat": iat, "orig": {"tn": orig},
         "origid": ORIGID}))


def identity(tok: str, x5u: str, *, ppt: str = "shaken", alg: str = "ES256") -> str:
    return f"{tok};info=<{x5u}>;alg={alg};ppt={ppt}"


def forge(leaf: Leaf, header: dict[str, object], claims: dict[str, object], *,
          sign: bool = True) -> str:
    """A token with any header and claims, signed with the leaf's key (or not at all)."""
    h = b64url(canonical_json(header).encode())
    c = b64url(canonical_json(claims).encode())
    if not sign:
        return f"{h}.{c}."
    sig = der_to_raw(leaf.key.sign(f"{h}.{c}".encode(), ec.ECDSA(hashes.SHA256())))
    return f"{h}.{c}.{b64url(sig)}"


def claims(iat: int, **over: object) -> dict[str, object]:
    base: dict[str, object] = {"attest": "A", "dest": {"tn": ["12025550199"]}, "iat": iat,
                               "orig": {"tn": "12025550100"}, "origid": ORIGID}
    base.update(over)
    return base


def header(x5u: str, **over: object) -> dict[str, object]:
    base: dict[str, object] = {"alg": "ES256", "ppt": "shaken", "typ": "passport", "x5u": x5u}
    base.update(over)
    return base


def write_key(path: Path, leaf: Leaf) -> Path:
    path.write_bytes(leaf.key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return path


__all__ = ["NOW", "ORIGID", "Leaf", "Pki", "claims", "forge", "header", "identity",
           "make_pki", "token", "write_key"]
