"""RFC 5922 identities of a SIP peer's certificate, and the [tls] configuration."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from stirshaken_proxy.config import ConfigError, load_config
from stirshaken_proxy.io.tls import certificate_names, matches_name
from stirshaken_proxy.stir.certs import issue_certificate

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def der(cn: str, san: tuple[str, ...]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_certificate(subject_cn=cn, key=key, issuer_cert=None, issuer_key=key, ca=False,
                             spc=None, not_before=NOW, not_after=NOW + dt.timedelta(days=1),
                             san=san)
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(("cn", "san", "expected", "match"), [
    ("x", ("sip:carrier.test",), "carrier.test", True),  # §7.1: URI SAN
    ("x", ("carrier.test",), "Carrier.Test", True),  # DNS SAN, case-insensitive
    ("carrier.test", ("other.test",), "carrier.test", False),  # CN ignored beside SANs
    ("carrier.test", (), "carrier.test", True),  # CN only when there is no SAN
    ("x", ("*.carrier.test",), "edge.carrier.test", False),  # §7.2: no wildcards
    ("x", ("sip:user@carrier.test",), "carrier.test", False),  # a user URI names no domain
    ("x", ("127.0.0.1",), "127.0.0.1", True),  # an address next hop: IP SAN
    ("x", ("::1",), "[::1]", True),
    ("x", ("127.0.0.1",), "127.0.0.2", False),
])
def test_matches_name(cn: str, san: tuple[str, ...], expected: str, match: bool) -> None:
    assert matches_name(der(cn, san), expected) is match


def test_certificate_names_in_order_without_duplicates() -> None:
    assert certificate_names(der("cn", ("sip:a.test", "a.test", "b.test"))) == ("a.test",
                                                                               "b.test")


BASE = """
[dialer]
listen = "127.0.0.1:5060"
next_hop = "127.0.0.1:5082"
{dialer}
[carrier]
listen = "127.0.0.1:5062"
next_hop = "127.0.0.1:5080"
{carrier}
"""


@pytest.mark.parametrize(("dialer", "carrier", "extra", "error"), [
    ('listen_tls = "127.0.0.1:5061"', "", "", "[dialer] listen_tls: needs a [tls] section"),
    ("", 'next_hop_transport = "tls"', "", "[carrier] next_hop_transport: needs a [tls]"),
    ('listen_tls = "127.0.0.2:5061"', "", "", "must be on the listen address 127.0.0.1"),
    ('tls_verify_clients = "maybe"', "", "", 'must be "none", "optional" or "required"'),
    ('listen_tls = "127.0.0.1:5061"', "", '[tls]\ncertificate = "nope.pem"\nkey = "nope.pem"',
     "[tls] certificate: nope.pem does not exist"),
    ('listen_tls = "127.0.0.1:5061"', "",
     '[tls]\ncertificate = "c.pem"\nkey = "k.pem"\nmin_version = "1.1"', 'must be "1.2" or'),
])
def test_tls_config_errors(tmp_path: Path, dialer: str, carrier: str, extra: str,
                           error: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(BASE.format(dialer=dialer, carrier=carrier) + extra)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert error in str(info.value)
    assert str(path) in str(info.value)


def test_dev_certificates_made_once_and_usable(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    folder = tmp_path / "keys"
    path.write_text(BASE.format(dialer='listen_tls = "127.0.0.1:5061"', carrier="") + f"""
[tls]
certificate = "{folder}/sip-tls-cert.pem"
key = "{folder}/sip-tls-key.pem"
ca_files = ["{folder}/sip-tls-ca.pem"]
dev_certificates = true
""")
    config = load_config(path)
    assert config.tls is not None
    made = sorted(p.name for p in folder.iterdir())
    assert made == ["sip-tls-ca-key.pem", "sip-tls-ca.pem", "sip-tls-cert.pem",
                    "sip-tls-key.pem"]
    assert (folder / "sip-tls-key.pem").stat().st_mode & 0o777 == 0o600
    cert = (folder / "sip-tls-cert.pem").read_bytes()
    from cryptography import x509
    names = certificate_names(x509.load_pem_x509_certificate(cert).public_bytes(
        serialization.Encoding.DER))
    assert "127.0.0.1" in names and "localhost" in names
    before = cert
    load_config(path)  # a second start keeps them
    assert (folder / "sip-tls-cert.pem").read_bytes() == before
