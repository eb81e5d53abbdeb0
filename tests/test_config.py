"""Configuration errors name the file, the line and the key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from stirshaken_proxy.config import ConfigError, load_config
from stirshaken_proxy.io.keys import init_dev_pki

ROOT = Path(__file__).resolve().parent.parent

BASE = """\
[dialer]
listen = "127.0.0.1:5060"
next_hop = "127.0.0.1:5082"

[carrier]
listen = "127.0.0.1:5062"
next_hop = "127.0.0.1:5080"

"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proxy.toml"
    path.write_text(text)
    return path


def test_example_config_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a fresh clone: the example asks for development keys (dev_spc), so the first load
    creates them where it names them, and the [verify] section trusts their STI-CA."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()  # its paths are relative to where the service starts
    shutil.copy(ROOT / "config" / "dev-admin-password", tmp_path / "config")
    config = load_config(ROOT / "config" / "example.toml")
    assert [pki.key for pki in config.created_keys] == [Path("var/keys/key.pem")]
    assert (tmp_path / "var/keys/key.pem").stat().st_mode & 0o777 == 0o600
    assert config.verify is not None and len(config.verify.anchors) == 1
    assert load_config(ROOT / "config" / "example.toml").created_keys == ()  # kept, not made anew
    assert config.engine.dialer.port == 5060 and config.engine.carrier.next_hop_port == 5080
    assert config.admin.port == 8080
    assert config.auth is not None and config.auth.accounts[0].name == "demo"
    assert config.auth.numbers[0].first == "12025550100"
    assert config.auth.numbers[0].last == "12025550199"
    assert config.verify is not None and len(config.verify.anchors) == 1


ERRORS = [
    (BASE + "[sip]\nmax_transactionz = 5\n",
     ":10: [sip] max_transactionz: unknown key (known keys: "),
    (BASE + "[sip]\nt1 = \"fast\"\n", ":10: [sip] t1: must be int or float, not str"),
    (BASE + "[sip]\nmax_transactions = 0\n", ":10: [sip] max_transactions: must be greater"),
    (BASE + "[bogus]\n", ":9: [bogus]: unknown section"),
    (BASE.replace('listen = "127.0.0.1:5062"', 'listen = "127.0.0.1"'),
     ":6: [carrier] listen: must be host:port, not '127.0.0.1'"),
    (BASE.replace('next_hop = "127.0.0.1:5082"', 'next_hop = "127.0.0.1:5082"\n'
                  'allowed_sources = ["10.0.0.300/8"]'),
     ":4: [dialer] allowed_sources: '10.0.0.300/8' is not an IP address or CIDR"),
    (BASE + "[log]\nlevel = \"loud\"\n", ":10: [log] level: must be debug, info, warning"),
    (BASE + "[transport]\ntcp = 1\n", ":10: [transport] tcp: must be bool, not int"),
    (BASE + "[transport]\nworkers = 0\n", ":10: [transport] workers: must be \"auto\""),
    (BASE + "[transport]\nworkers = \"all\"\n", ":10: [transport] workers: must be \"auto\""),
    (BASE + "[sip\n", "TOML syntax error"),
    ('[dialer]\nlisten = "127.0.0.1:5060"\n', ":1: [dialer] next_hop: is required"),
    (BASE.replace("[carrier]", "[carrierz]"), ":5: [carrierz]: unknown section (known: "),
    (BASE.split("[carrier]")[0], "section [carrier] is required"),
    (BASE + '[[signing]]\nkey = "missing.pem"\nx5u = "https://a.example/c.pem"\n',
     ":10: [[signing]] #1 key: missing.pem does not exist (development keys: set dev_spc"),
    (BASE + '[[signing]]\nkey = "KEY"\nx5u = "https://a.example/c.pem?x=1"\n',
     ":11: [[signing]] #1 x5u: must be an https:// URL without query or fragment"),
    (BASE + '[[signing]]\nkey = "KEY"\nx5u = "https://a.example/c.pem"\n\n'
     '[[accounts]]\nname = "a"\norigid = "5f3f3f7a-4c1b-4d1e-9a37-0d2c9b6a1e01"\n\n'
     '[[accounts]]\nname = "b"\norigid = "not-a-uuid"\n',
     ":19: [[accounts]] #2 origid: 'not-a-uuid' is not a UUID"),
    (BASE + '[[signing]]\nkey = "KEY"\nx5u = "https://a.example/c.pem"\n\n'
     '[[accounts]]\nname = "a"\norigid = "5f3f3f7a-4c1b-4d1e-9a37-0d2c9b6a1e01"\n'
     'signing = "reseller"\n',
     ":16: [[accounts]] #1 signing: no [[signing]] named 'reseller' (known: default)"),
    (BASE + '[[signing]]\nkey = "KEY"\nx5u = "https://a.example/c.pem"\n\n'
     '[[accounts]]\nname = "a"\norigid = "5f3f3f7a-4c1b-4d1e-9a37-0d2c9b6a1e01"\n'
     'numbers = ["12025550100..0199", "1202555 0150"]\n',
     ":16: [[accounts]] #1 numbers: 12025550150 (a) overlaps 12025550100..12025550199 (a)"),
    (BASE + '[[signing]]\nkey = "KEY"\nx5u = "https://a.example/c.pem"\n\n'
     '[[accounts]]\nname = "a"\norigid = "5f3f3f7a-4c1b-4d1e-9a37-0d2c9b6a1e01"\n'
     'numbers = ["nope"]\n',
     ":16: [[accounts]] #1 numbers: 'nope' is not a telephone number"),
]


ERRORS += [
    (BASE + '[admin]\nmax_connections = 10\nmax_connections_per_source = 11\n',
     ":11: [admin] max_connections_per_source: must be at most max_connections"),
    (BASE + '[rest]\nlisten = "127.0.0.1:8090"\nbody_timeout = 0\n',
     ":11: [rest] body_timeout: must be greater than 0, not 0"),
    (BASE + '[rest]\nlisten = "127.0.0.1:8090"\nmax_in_flight_per_account = "all"\n',
     ":11: [rest] max_in_flight_per_account: must be int, not str"),
    (BASE + '[[signing]]\nkey = "KEY"\nx5u = "https://a.example/c.pem"\n\n'
     '[[accounts]]\nname = "a"\norigid = "5F3F3F7A-4C1B-4D1E-9A37-0D2C9B6A1E01"\n',
     ":15: [[accounts]] #1 origid: '5F3F3F7A-4C1B-4D1E-9A37-0D2C9B6A1E01' is not a UUID in "
     "canonical form"),
    (BASE + '[verify]\ntrust_anchors = []\n',
     ":10: [verify] trust_anchors: needs at least one STI-CA root certificate"),
    (BASE + '[verify]\n', ":9: [verify] trust_anchors: is required"),
    (BASE + '[verify]\ntrust_anchors = ["nope.pem"]\n',
     ":10: [verify] trust_anchors: nope.pem does not exist"),
    # a private key is not a certificate
    (BASE + '[verify]\ntrust_anchors = ["KEY"]\n', ":10: [verify] trust_anchors: "),
    (BASE + '[verify]\ntrust_anchors = ["CA"]\non_failure = "drop"\n',
     ':11: [verify] on_failure: must be "mark" or "reject"'),
    (BASE + '[verify]\ntrust_anchors = ["CA"]\nallow_networks = ["127.0.0.1/40"]\n',
     ":11: [verify] allow_networks: '127.0.0.1/40' is not an IP address or CIDR"),
    (BASE + '[verify]\ntrust_anchors = ["CA"]\nallowed_ports = [0]\n',
     ":11: [verify] allowed_ports: must be port numbers"),
    (BASE + '[digest]\nrealm = "r"\n', ":9: [digest]: needs [[accounts]]"),
]
_ACCOUNT = ('[[signing]]\nkey = "KEY"\nx5u = "https://a.example/c.pem"\n\n[[accounts]]\n'
            'name = "a"\norigid = "5f3f3f7a-4c1b-4d1e-9a37-0d2c9b6a1e01"\n')
ERRORS += [
    (BASE + '[digest]\nrealm = "a\\"b"\n' + _ACCOUNT, ':10: [digest] realm: \'a"b\' cannot be'),
    (BASE + '[digest]\nalgorithms = ["SHA-512"]\n' + _ACCOUNT,
     ':10: [digest] algorithms: must list "SHA-256" and/or "MD5"'),
    (BASE + '[digest]\nnonce_lifetime = 0\n' + _ACCOUNT,
     ":10: [digest] nonce_lifetime: must be greater than 0"),
    (BASE + _ACCOUNT + 'tls_names = ["*.dialer.test"]\n',
     "[[accounts]] #1 tls_names: '*.dialer.test' is not a certificate name"),
    (BASE + '[records]\nwebhook_url = "ftp://crm"\n', ":10: [records] webhook_url: must be an"),
    (BASE + '[records]\nwebhook_url = "https://crm.example/hook"\n',
     ":9: [records] webhook_secret_file: is required with webhook_url"),
    (BASE + '[records]\nwebhook_url = "https://crm.example/hook"\n'
     'webhook_secret_file = "/nonexistent/key"\n',
     "[records] webhook_secret_file: cannot read /nonexistent/key"),
    (BASE + '[records]\nkeep_days = 0\n', ":10: [records] keep_days: must be greater than 0"),
    (BASE + _ACCOUNT + 'business = { legal_name = "Acme Widgets LLC" }\nbrand = "Best Deals"\n',
     "[[accounts]] #1 brand: brand name 'Best Deals' does not match the business "
     "('Acme Widgets LLC')"),
    (BASE + _ACCOUNT + 'business = { legal_name = "Acme", ein = "123456789" }\n',
     "[[accounts]] #1 business: ein '123456789' is not NN-NNNNNNN"),
    (BASE + _ACCOUNT + 'business = { ein = "12-3456789" }\n',
     "[[accounts]] #1 business: legal_name is required"),
    (BASE + _ACCOUNT + 'business = { legal_name = "Acme", phone = "x" }\n',
     "[[accounts]] #1 business: unknown key 'phone'"),
    (BASE + _ACCOUNT + 'brand = "Acme\\u0007"\n',
     "[[accounts]] #1 brand: brand name contains control characters (U+0007)"),
]


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_config_errors(tmp_path: Path, text: str, message: str) -> None:
    pki = init_dev_pki(tmp_path / "keys", spc="1")
    path = write(tmp_path, text.replace("KEY", str(pki.key)).replace("CA", str(pki.ca_cert)))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(str(path)), info.value
    assert message in str(info.value), info.value


SIGNING = BASE + """[[signing]]
dev_spc = "SPC"
key = "DIR/key.pem"
certificate = "DIR/mine.pem"
x5u = "https://a.example/c"
"""


def test_dev_keys_are_made_only_when_asked(tmp_path: Path) -> None:
    folder = tmp_path / "new" / "keys"
    config = load_config(write(tmp_path, SIGNING.replace("DIR", str(folder))
                               .replace("SPC", "999Z")))
    (pki,) = config.created_keys
    assert pki.cert == folder / "mine.pem" and pki.chain == folder / "chain.pem"
    assert {p.name for p in folder.iterdir()} == {"ca.pem", "ca-key.pem", "key.pem", "mine.pem",
                                                  "chain.pem"}
    assert (folder / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    from cryptography import x509

    from stirshaken_proxy.stir.certs import certificate_spcs

    cert = x509.load_pem_x509_certificate((folder / "mine.pem").read_bytes())
    assert certificate_spcs(cert) == ["999Z"]
    # Without dev_spc a missing key is an error, and nothing is written.
    other = tmp_path / "other"
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(write(tmp_path, SIGNING.replace('dev_spc = "SPC"\n', "")
                          .replace("DIR", str(other))))
    assert not other.exists()


@pytest.mark.parametrize(("spc", "folder", "message"), [
    ("", "keys", "does not exist"),  # an empty dev_spc asks for nothing
    ("bad\tspc", "keys", "[[signing]] #1 dev_spc: SPC must be printable ASCII"),
    ("123A", "/proc/no/such", "[[signing]] #1 key: cannot create development keys"),
])
def test_dev_key_errors(tmp_path: Path, spc: str, folder: str, message: str) -> None:
    where = folder if folder.startswith("/") else str(tmp_path / folder)
    text = SIGNING.replace("DIR", where).replace('"SPC"', '"' + spc + '"')
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert message in str(info.value) and str(info.value).startswith(str(tmp_path)), info.value


def test_wrong_kind_of_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    pem = tmp_path / "p384.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    path = write(tmp_path, BASE + f'[[signing]]\nkey = "{pem}"\nx5u = "https://a.example/c"\n')
    with pytest.raises(ConfigError, match=r":10: \[\[signing\]\] #1 key: .* ES256 needs a P-256"):
        load_config(path)


def test_workers_auto_is_one_per_core(tmp_path: Path) -> None:
    import os

    config = load_config(write(tmp_path, BASE + '[transport]\nworkers = "auto"\n'))
    assert config.transport.workers == len(os.sched_getaffinity(0))
    assert load_config(write(tmp_path, BASE)).transport.workers == 1


ACME = BASE + """[acme]
directory = "https://sti-ca.test/directory"
contact = ["mailto:noc@provider.test"]
RENEW
[sti_pa]
url = "https://sti-pa.test/api/v1"
token_keys = ["CA"]

[[signing]]
name = "main"
acme = true
spc = "123A"
organization = "Provider"
key = "DIR/key.pem"
certificate = "DIR/cert.pem"
chain = "DIR/chain.pem"
roots = ["CA"]
x5u = "https://cr.test/X5U.pem"
"""


@pytest.mark.parametrize(("changes", "message"), [
    ({"RENEW": "renew_before = 1.5"}, ":12: [acme] renew_before: must be a share of the lifetime"),
    ({"RENEW": "check_interval = 0"}, ":12: [acme] check_interval: must be greater than 0"),
    ({'token_keys = ["CA"]': "token_keys = []"},
     ":15: [sti_pa] token_keys: needs the STI-PA's certificate(s)"),
    ({'organization = "Provider"\n': ""},
     "[[signing]] #1 organization: an ACME identity needs the organization"),
    ({'spc = "123A"\n': ""}, "[[signing]] #1 spc: an ACME identity needs its SPC"),
    ({"X5U": "{spc}"}, "[[signing]] #1 x5u: the only placeholder is {serial}"),
    ({}, "[[signing]] #1 key: DIR/key.pem does not exist (get it with: stirshaken-proxy certs "
         "request --identity main)"),
])
def test_acme_config_errors(tmp_path: Path, changes: dict[str, str], message: str) -> None:
    pki = init_dev_pki(tmp_path / "keys", spc="1")
    text = ACME.replace("RENEW", "")
    for old, new in changes.items():
        text = ACME.replace(old, new) if old == "RENEW" else text.replace(old, new)
    text = text.replace("RENEW", "").replace("CA", str(pki.ca_cert))
    path = write(tmp_path, text.replace("DIR", str(tmp_path / "sti")))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message.replace("DIR", str(tmp_path / "sti")) in str(info.value), info.value


def test_acme_identity_may_be_pending_for_certs_request(tmp_path: Path) -> None:
    pki = init_dev_pki(tmp_path / "keys", spc="1")
    path = write(tmp_path, ACME.replace("RENEW", "").replace("CA", str(pki.ca_cert))
                 .replace("DIR", str(tmp_path / "sti")).replace("X5U", "{serial}"))
    config = load_config(path, pending_ok=True)
    assert config.auth is not None and config.acme is not None
    (main,) = config.auth.signing
    assert main.acme and main.cert_info is None and main.x5u_template == "https://cr.test/{serial}.pem"
    assert config.acme.renew_before == 0.33 and config.acme.contact == ("mailto:noc@provider.test",)
