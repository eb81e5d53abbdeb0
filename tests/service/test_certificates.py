"""The provider's own certificate by ACME (ATIS-1000080): the whole flow against the real
acme2certifier with a stand-in STI-PA, calls signed with the new certificate checked by
secsipidx, renewal under SIPp load, and each bad case refused with nothing changed."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from stirshaken_proxy.config import load_config
from stirshaken_proxy.io.acme import AcmeClient, CertificateRequestError, obtain
from stirshaken_proxy.stir.acme import TN_AUTH_LIST, key_fingerprint, tn_auth_list_value
from tests.acme_peers import A2C_PYTHON, StiCa, StiPa
from tests.service.conftest import requires_sipp
from tests.support import (
    HOST,
    ROOT,
    Ports,
    SippUas,
    free_port,
    run_uac,
    running_service,
    scrape,
    write_config,
)

pytestmark = pytest.mark.skipif(not A2C_PYTHON.exists(),
                                reason="acme2certifier not installed (scripts/setup.sh test)")
ORIGID = "5f3f3f7a-4c1b-4d1e-9a37-0d2c9b6a1e01"


def acme_config(tmp: Path, ports: Ports, pa: StiPa, ca: StiCa, *, renew_before: float = 0.33,
                check_interval: float = 3600, roots: str = "", publish: str = "") -> str:
    return f"""
[store]
path = "{tmp / 'inventory.db'}"

[acme]
directory = "{ca.directory_url}"
account_key = "{tmp / 'acme' / 'account-key.pem'}"
contact = ["mailto:noc@provider.test"]
renew_before = {renew_before}
check_interval = {check_interval}
retry_interval = 2
timeout = 20

[sti_pa]
url = "{pa.url}"
user_id = "{pa.user}"
password_file = "{pa.password_file}"
token_keys = ["{pa.cert_path}"]

[[signing]]
name = "main"
acme = true
spc = "123A"
organization = "Provider Test"
key = "{tmp / 'sti' / 'key.pem'}"
certificate = "{tmp / 'sti' / 'cert.pem'}"
chain = "{tmp / 'sti' / 'chain.pem'}"
roots = ["{roots or ca.root_path}"]
x5u = "http://{HOST}:{ports.admin}/sti/{{serial}}.pem"
serve_path = "/sti/{{serial}}.pem"
{publish}

[[accounts]]
name = "demo"
origid = "{ORIGID}"
sources = ["127.0.0.1/32"]
signing = "main"
numbers = ["+1 202 555 0100..0199"]
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stirshaken_proxy", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def secsipidx_ok(value: str, cert: Path, root: Path) -> bool:
    proc = subprocess.run(
        ["secsipidx", "-c", "-identity", value, "-p", str(cert), "-ca-file", str(root),
         "-ca-inter", str(root), "-cert-verify", "7", "-expire", "600"],
        capture_output=True, text=True, timeout=30, check=False)
    return proc.returncode == 0


def identities(messages: str) -> list[str]:
    return [m.strip() for m in re.findall(r"^Identity: (.*)$", messages, re.MULTILINE)]


def serial_of(path: Path) -> str:
    return f"{x509.load_pem_x509_certificates(path.read_bytes())[0].serial_number:x}"


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[tuple[StiPa, StiCa]]:
    with StiPa(tmp_path) as pa, StiCa(tmp_path / "ca", pa.cert_path) as ca:
        yield pa, ca


@requires_sipp
@pytest.mark.sipp
@pytest.mark.skipif(shutil.which("secsipidx") is None, reason="secsipidx not installed")
def test_certificate_from_acme_signs_calls_secsipidx_verifies(
        tmp_path: Path, peers: tuple[StiPa, StiCa]) -> None:
    pa, ca = peers
    ports = Ports.pick()
    cfg = write_config(tmp_path / "proxy.toml", ports, extra=acme_config(tmp_path, ports, pa, ca))
    # Before the certificate exists the service says how to get it.
    check = cli("check-config", "--config", str(cfg))
    assert check.returncode == 3 and "certs request --identity main" in check.stderr
    got = cli("certs", "request", "--config", str(cfg), "--identity", "main")
    assert got.returncode == 0, got.stderr
    sti = tmp_path / "sti"
    assert (sti / "key.pem").stat().st_mode & 0o777 == 0o600
    serial = serial_of(sti / "chain.pem")
    assert f"x5u: http://{HOST}:{ports.admin}/sti/{serial}.pem" in got.stdout
    # The STI-PA was asked for a token bound to the account key, the CA checked it.
    token_request = pa.requests[-1]["body"]["atc"]
    assert token_request["tkvalue"] == tn_auth_list_value("123A")
    assert "tkauth check passed" in ca.log()
    status = json.loads(cli("certs", "status", "--config", str(cfg), "--json").stdout)
    assert status["serial"] == serial and status["spc"] == "123A"
    assert status["next_renewal"] < status["not_after"]
    again = cli("certs", "request", "--config", str(cfg), "--identity", "main")
    assert again.returncode == 0 and "renewal due" in again.stdout  # nothing to do yet
    assert serial_of(sti / "chain.pem") == serial
    with running_service(cfg, ports.admin, tmp_path / "proxy.log"):
        with urllib.request.urlopen(f"http://{HOST}:{ports.admin}/sti/{serial}.pem") as r:
            assert r.read() == (sti / "chain.pem").read_bytes()
        with SippUas("uas.xml", ports.carrier_next_hop, tmp_path) as uas:
            result = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=20, rate=20,
                             caller="+12025550142")
        assert result.successful == 20 and result.failed == 0, result.output[-2000:]
        values = identities(uas.messages())
    assert len(values) == 20
    for value in values:
        assert f"info=<http://{HOST}:{ports.admin}/sti/{serial}.pem>" in value
        assert secsipidx_ok(value, sti / "cert.pem", ca.root_path), value


def _identity(cfg: Path) -> tuple[object, object]:
    config = load_config(cfg, pending_ok=True)
    assert config.auth is not None and config.acme is not None
    return config.auth.signing[0], config.acme


def _files(tmp: Path) -> dict[str, bytes | None]:
    return {name: (tmp / "sti" / name).read_bytes() if (tmp / "sti" / name).exists() else None
            for name in ("key.pem", "cert.pem", "chain.pem")}


BAD = [
    ("refused", "sti-pa", "SPC token refused (HTTP 403: account 123A is suspended)"),
    ("password", "sti-pa", "login refused (HTTP 401: invalid userId or password)"),
    ("fingerprint", "token", "atc fingerprint is not our ACME account key's"),
    ("spc", "token", "atc tkvalue is not the TNAuthList of SPC 123A"),
    ("expired", "token", "token expired"),
    ("signature", "token", "signature does not verify with the STI-PA's key"),
    ("root", "check", "certificate does not chain to a trusted STI-CA"),
]


@pytest.mark.parametrize(("case", "step", "reason"), BAD)
async def test_bad_cases_change_nothing(tmp_path: Path, peers: tuple[StiPa, StiCa], case: str,
                                        step: str, reason: str) -> None:
    pa, ca = peers
    ports = Ports.pick()
    other = StiCa(tmp_path / "other", pa.cert_path)  # only its root: an untrusted one
    cfg = write_config(tmp_path / "proxy.toml", ports, extra=acme_config(
        tmp_path, ports, pa, ca, roots=str(other.root_path) if case == "root" else ""))
    identity, acme = _identity(cfg)
    if case != "root":  # a certificate is running: a failed renewal must leave it as it is
        await obtain(identity, acme)  # type: ignore[arg-type]
        identity, acme = _identity(cfg)
    before = _files(tmp_path)
    if case == "refused":
        pa.refuse = "account 123A is suspended"
    elif case == "password":
        pa.password_file.write_text("wrong\n")
    elif case == "fingerprint":
        pa.atc = {"fingerprint": key_fingerprint(ec.generate_private_key(ec.SECP256R1())
                                                 .public_key())}
    elif case == "spc":
        pa.atc = {"tkvalue": tn_auth_list_value("999Z")}
    elif case == "expired":
        pa.lifetime = -60
    elif case == "signature":
        pa.signing_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(CertificateRequestError) as info:
        await obtain(identity, acme)  # type: ignore[arg-type]
    assert (info.value.step, info.value.reason) == (step, reason) or \
        (info.value.step == step and reason in info.value.reason), info.value
    assert _files(tmp_path) == before
    if case == "root":
        assert before == {"key.pem": None, "cert.pem": None, "chain.pem": None}
    # The CLI says the same, and that nothing was installed.
    if case in ("refused", "fingerprint"):
        out = cli("certs", "renew", "--config", str(cfg), "--identity", "main")
        assert out.returncode == 1 and f"{step}: {reason}" in out.stderr
        assert "nothing was installed" in out.stderr and "Traceback" not in out.stderr


async def test_acme_server_refuses_the_order_and_the_challenge(tmp_path: Path) -> None:
    with StiPa(tmp_path) as pa:
        ports = Ports.pick()
        # An STI-CA without TNAuthList support refuses the order; one that trusts another
        # STI-PA refuses the challenge (its check of the token's signature).
        (tmp_path / "x").mkdir()
        other_pa = StiPa(tmp_path / "x")
        for name, ca, expected in (
                ("no-tnauthlist", StiCa(tmp_path / "ca1", pa.cert_path, tnauthlist=False),
                 "acme: order refused: 400 unsupportedIdentifier"),
                ("other-sti-pa", StiCa(tmp_path / "ca2", other_pa.cert_path),
                 "acme: challenge refused: 403 unauthorized: token signature")):
            with ca:
                cfg = write_config(tmp_path / f"{name}.toml", ports,
                                   extra=acme_config(tmp_path, ports, pa, ca))
                identity, acme = _identity(cfg)
                with pytest.raises(CertificateRequestError) as info:
                    await obtain(identity, acme)  # type: ignore[arg-type]
                assert str(info.value).startswith(expected), (name, info.value, ca.log()[-2000:])
        assert _files(tmp_path) == {"key.pem": None, "cert.pem": None, "chain.pem": None}


async def test_the_sti_ca_checks_the_token_too(tmp_path: Path,
                                              peers: tuple[StiPa, StiCa]) -> None:
    """Our client refuses a bad token before using it; the CA side refuses one sent anyway
    (the check in front of acme2certifier: fingerprint, TNAuthList, expiry)."""
    import aiohttp

    pa, ca = peers
    account = ec.generate_private_key(ec.SECP256R1())
    async with aiohttp.ClientSession() as session:
        client = AcmeClient(ca.directory_url, account, session)
        await client.start(("mailto:noc@provider.test",))
        for atc, problem in (
                ({"fingerprint": key_fingerprint(ec.generate_private_key(ec.SECP256R1())
                                                 .public_key())},
                 "token fingerprint is not the ordering account key's"),
                ({"tkvalue": tn_auth_list_value("999Z")},
                 "token TNAuthList is not the authorization's")):
            status, order, _ = await client.post(client.directory["newOrder"], {
                "identifiers": [{"type": TN_AUTH_LIST, "value": tn_auth_list_value("123A")}]})
            assert status == 201, order
            _, authz, _ = await client.post(order["authorizations"][0], None)
            challenge = next(c for c in authz["challenges"] if c["type"] == "tkauth-01")
            assert challenge["tkauth-type"] == "atc"
            pa.atc = atc
            token = await _token(pa, account, session)
            status, body, _ = await client.post(challenge["url"], {"atc": token})
            assert status == 403 and body["detail"] == problem, body
    assert ca.log().count("tkauth check refused") == 2


async def _token(pa: StiPa, account: ec.EllipticCurvePrivateKey, session: object) -> str:
    from stirshaken_proxy.io.acme import StiPaClient

    config = replace(_acme_stub(pa), sti_pa_user=pa.user)
    return await StiPaClient(config, session).token(  # type: ignore[arg-type]
        spc="123A", fingerprint=key_fingerprint(account.public_key()))


def _acme_stub(pa: StiPa) -> object:
    from stirshaken_proxy.config import AcmeConfig

    return AcmeConfig(directory="", account_key=Path(), contact=(), ca_file=None,
                      renew_before=0.33, check_interval=1, retry_interval=1, timeout=10,
                      sti_pa_url=pa.url, sti_pa_user=pa.user,
                      sti_pa_password_file=pa.password_file, sti_pa_keys=(),
                      token_lifetime_margin=60)


def test_load_and_reload_check_the_certificate(tmp_path: Path,
                                               peers: tuple[StiPa, StiCa]) -> None:
    """A certificate that fails a check is refused at reload (the error names the file) and the
    running one keeps signing; at start it is a clear error."""
    pa, ca = peers
    ports = Ports.pick()
    cfg = write_config(tmp_path / "proxy.toml", ports, extra=acme_config(tmp_path, ports, pa, ca))
    assert cli("certs", "request", "--config", str(cfg), "--identity", "main").returncode == 0
    sti = tmp_path / "sti"
    serial = serial_of(sti / "chain.pem")
    good = _files(tmp_path)
    with running_service(cfg, ports.admin, tmp_path / "proxy.log") as svc:
        # a chain from another CA (its own root is not configured), with its key
        from stirshaken_proxy.io.keys import init_dev_pki

        dev = init_dev_pki(tmp_path / "dev", spc="123A")
        shutil.copy(dev.chain, sti / "chain.pem")
        shutil.copy(dev.key, sti / "key.pem")
        assert svc.proc is not None
        svc.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reload refused" not in svc.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f"[[signing]] #1 chain: {sti / 'chain.pem'}: certificate does not chain to a " \
               "trusted STI-CA" in svc.log()
        metrics = scrape(ports.admin)
        assert 'stirshaken_signing_certificate_expiry_seconds{identity="main"}' in metrics
        with urllib.request.urlopen(f"http://{HOST}:{ports.admin}/sti/{serial}.pem") as r:
            assert r.read() == good["chain.pem"]
    start = cli("check-config", "--config", str(cfg))
    assert start.returncode == 3 and "certificate does not chain to a trusted STI-CA" in \
        start.stderr and "Traceback" not in start.stderr


@requires_sipp
@pytest.mark.sipp
@pytest.mark.skipif(shutil.which("secsipidx") is None, reason="secsipidx not installed")
def test_renewal_under_load(tmp_path: Path) -> None:
    """Certificates of one day renewed when 25 s of their life is gone, under 20 calls/s:
    no failed call, every INVITE signed, the new x5u served, the old one no longer used once
    the new one is live."""
    with StiPa(tmp_path) as pa, StiCa(tmp_path / "ca", pa.cert_path, validity_days=1) as ca:
        ports = Ports.pick()  # after the peers bound theirs
        cfg = write_config(tmp_path / "proxy.toml", ports, extra=acme_config(
            tmp_path, ports, pa, ca, renew_before=1 - 25 / 86400, check_interval=1))
        assert cli("certs", "request", "--config", str(cfg),
                   "--identity", "main").returncode == 0
        sti = tmp_path / "sti"
        first = serial_of(sti / "chain.pem")
        first_cert = tmp_path / "first-cert.pem"
        shutil.copy(sti / "cert.pem", first_cert)
        with running_service(cfg, ports.admin, tmp_path / "proxy.log") as svc:
            with SippUas("uas.xml", ports.carrier_next_hop, tmp_path) as uas:
                result = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=800,
                                 rate=20, caller="+12025550142")
            values = identities(uas.messages())
            metrics = scrape(ports.admin)
            log = svc.log()
            served = {}
            for serial in {re.search(r"/sti/([0-9a-f]+)\.pem", v).group(1)  # type: ignore[union-attr]
                           for v in values}:
                with urllib.request.urlopen(f"http://{HOST}:{ports.admin}/sti/{serial}.pem") as r:
                    served[serial] = r.read()
    assert result.successful == 800 and result.failed == 0, result.output[-2000:]
    assert len(values) == 800, "every INVITE signed"
    serials = [re.search(r"/sti/([0-9a-f]+)\.pem", v).group(1)  # type: ignore[union-attr]
               for v in values]
    assert serials[0] == first and len(set(serials)) >= 2, log[-3000:]
    # each certificate is used in one stretch, and never again once the next one is live
    stretches = [s for i, s in enumerate(serials) if i == 0 or serials[i - 1] != s]
    assert len(stretches) == len(set(stretches)), stretches
    assert re.search(r'stirshaken_certificate_renewals_total\{identity="main"\} [1-9]', metrics)
    assert 'stirshaken_certificate_renewal_failures_total{identity="main"} 0.0' in metrics
    # the old certificate's calls verify with it, the new one's with the new chain served
    assert secsipidx_ok(values[0], first_cert, ca.root_path)
    last = stretches[-1]
    new_cert = tmp_path / "new-cert.pem"
    new_cert.write_bytes(served[last].split(b"-----END CERTIFICATE-----")[0] +
                         b"-----END CERTIFICATE-----\n")
    assert secsipidx_ok(values[-1], new_cert, ca.root_path)


async def test_publish_to_an_https_repository(tmp_path: Path,
                                             peers: tuple[StiPa, StiCa]) -> None:
    """The chain is PUT where x5u points before the certificate is installed; a repository that
    refuses the upload leaves the running certificate as it was."""
    from tests.https_server import CertServer

    pa, ca = peers
    ports = Ports.pick()
    token = tmp_path / "repo-token"
    token.write_text("t0ken\n")
    (tmp_path / "repo").mkdir()
    with CertServer(tmp_path / "repo", {}, put_token="t0ken") as repo:
        publish = (f'publish_url = "{repo.url("/sti/{serial}.pem")}"\n'
                   f'publish_token_file = "{token}"')
        cfg = write_config(tmp_path / "proxy.toml", ports,
                           extra=acme_config(tmp_path, ports, pa, ca, publish=publish))
        config = load_config(cfg, pending_ok=True)
        assert config.auth is not None and config.acme is not None
        acme = replace(config.acme, ca_file=repo.ca_file)  # the repository's TLS CA
        got = await obtain(config.auth.signing[0], acme)
        serial = got.certificate.serial
        assert got.published == repo.url(f"/sti/{serial}.pem")
        route = repo.routes[f"/sti/{serial}.pem"]
        assert route.body == (tmp_path / "sti" / "chain.pem").read_bytes()
        assert ("Content-Type", "application/x-pem-file") in route.headers
        before = _files(tmp_path)
        repo.put_status = 403
        config = load_config(cfg)
        assert config.auth is not None
        with pytest.raises(CertificateRequestError) as info:
            await obtain(config.auth.signing[0], acme)
        assert info.value.step == "publish" and "HTTP 403" in info.value.reason
        assert _files(tmp_path) == before


@pytest.mark.skipif(shutil.which("secsipidx") is None, reason="secsipidx not installed")
def test_each_account_signs_with_its_own_certificate(tmp_path: Path,
                                                    peers: tuple[StiPa, StiCa]) -> None:
    """A reseller: two identities with their own SPCs, both got by ACME, each account's calls
    signed with its own (through the ATIS-1000082 front end of the running service)."""
    from stirshaken_proxy.io.rest import key_hash

    pa, ca = peers
    ports = Ports.pick()
    rest_port = free_port()
    base = acme_config(tmp_path, ports, pa, ca)
    second = base[base.index("[[signing]]"):base.index("[[accounts]]")]
    second = (second.replace('name = "main"', 'name = "west"').replace("123A", "456B")
              .replace(str(tmp_path / "sti"), str(tmp_path / "sti-west")))
    config = (base.replace("[[accounts]]", second + "\n[[accounts]]", 1)
              + f'api_keys = ["{key_hash("key-east")}"]\n\n'
              + f'[[accounts]]\nname = "west-customer"\norigid = "{ORIGID}"\n'
              + 'signing = "west"\nnumbers = ["+1 303 555 0100..0199"]\n'
              + f'api_keys = ["{key_hash("key-west")}"]\n\n'
              + f'[rest]\nlisten = "{HOST}:{rest_port}"\n')
    cfg = write_config(tmp_path / "proxy.toml", ports, extra=config)
    for name in ("main", "west"):
        out = cli("certs", "request", "--config", str(cfg), "--identity", name)
        assert out.returncode == 0, out.stderr
    status = [json.loads(line) for line in
              cli("certs", "status", "--config", str(cfg), "--json").stdout.splitlines()]
    assert [(s["identity"], s["spc"]) for s in status] == [("main", "123A"), ("west", "456B")]
    with running_service(cfg, ports.admin, tmp_path / "proxy.log"):
        for key, orig, folder, spc in (("key-east", "12025550142", "sti", "123A"),
                                       ("key-west", "13035550142", "sti-west", "456B")):
            body = json.dumps({"signingRequest": {
                "attest": "A", "dest": {"tn": ["12025550199"]}, "iat": int(time.time()),
                "orig": {"tn": orig}, "origid": ORIGID}}).encode()
            request = urllib.request.Request(
                f"http://{HOST}:{rest_port}/stir/v1/signing", data=body, method="POST",
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
            with urllib.request.urlopen(request) as r:
                identity = json.loads(r.read())["signingResponse"]["identity"]
            serial = serial_of(tmp_path / folder / "chain.pem")
            assert f"/sti/{serial}.pem>" in identity, identity
            assert secsipidx_ok(identity, tmp_path / folder / "cert.pem", ca.root_path)
            cert = x509.load_pem_x509_certificate((tmp_path / folder / "cert.pem").read_bytes())
            assert cert.subject.rfc4514_string() == f"CN=SHAKEN {spc},O=Provider Test,C=US"


@requires_sipp
@pytest.mark.sipp
def test_a_failing_renewal_is_counted_and_the_old_certificate_signs(
        tmp_path: Path, peers: tuple[StiPa, StiCa]) -> None:
    pa, ca = peers
    ports = Ports.pick()
    cfg = write_config(tmp_path / "proxy.toml", ports, extra=acme_config(
        tmp_path, ports, pa, ca, renew_before=0.999999, check_interval=1))
    assert cli("certs", "request", "--config", str(cfg), "--identity", "main").returncode == 0
    serial = serial_of(tmp_path / "sti" / "chain.pem")
    pa.refuse = "account 123A is suspended"
    with running_service(cfg, ports.admin, tmp_path / "proxy.log") as svc:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not re.search(
                r'renewal_failures_total\{identity="main"\} [2-9]', scrape(ports.admin)):
            time.sleep(0.5)
        metrics = scrape(ports.admin)
        with SippUas("uas.xml", ports.carrier_next_hop, tmp_path) as uas:
            result = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=10, rate=10,
                             caller="+12025550142")
        log = svc.log()
    assert re.search(r'renewal_failures_total\{identity="main"\} [2-9]', metrics), metrics
    assert "certificate renewal for main failed" in log and \
        "SPC token refused (HTTP 403: account 123A is suspended)" in log
    assert result.successful == 10
    values = identities(uas.messages())
    assert len(values) == 10 and all(f"/sti/{serial}.pem>" in v for v in values)
    assert serial_of(tmp_path / "sti" / "chain.pem") == serial
