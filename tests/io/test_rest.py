"""The ATIS-1000082 REST front end on 127.0.0.1 with a real HTTP client: sign, then verify what
was signed (the chain fetched from a real HTTPS repository), and every bad request answered
with its ATIS error body and status."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stirshaken_proxy.config import RestConfig
from stirshaken_proxy.engine.services import Services
from stirshaken_proxy.engine.sources import SourceFilter
from stirshaken_proxy.io.fetcher import CredentialFeed, Fetcher
from stirshaken_proxy.io.keys import DevPki, init_dev_pki, load_private_key
from stirshaken_proxy.io.rest import ApiError, RestApi, key_hash, parse_json
from stirshaken_proxy.policy.accounts import Account, AccountDirectory
from stirshaken_proxy.policy.inventory import Inventory, NumberBlock
from stirshaken_proxy.stats import Stats
from stirshaken_proxy.stir.credentials import CachePolicy, TrustStore
from stirshaken_proxy.stir.passport import Signer, SigningIdentity, decode_passport
from stirshaken_proxy.stir.signing import Authenticator, AuthPolicy
from stirshaken_proxy.stir.verification import VerificationService
from stirshaken_proxy.stir.verify import Checks
from stirshaken_proxy.stir.x5u import FetchLimits, UrlPolicy
from tests.https_server import CertServer, Route
from tests.support import free_port

ORIGID = "5f3f3f7a-4c1b-4d1e-9a37-0d2c9b6a1e01"
KEY = "k-demo-0123456789"
LIMIT = 2048


@dataclass
class Rest:
    base: str
    keys: DevPki
    stats: Stats
    session: aiohttp.ClientSession

    async def post(self, path: str, body: Any, *, key: str | None = KEY,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        h = {"Content-Type": "application/json"}
        if key is not None:
            h["Authorization"] = f"Bearer {key}"
        h.update(headers or {})
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with self.session.post(self.base + path, data=data, headers=h) as r:
            assert r.content_type == "application/json"
            return r.status, await r.json()


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[tuple[CertServer, DevPki]]:
    keys = init_dev_pki(tmp_path / "keys", spc="123A")
    with CertServer(tmp_path, {"/shaken.pem": Route(keys.chain.read_bytes())}) as server:
        yield server, keys


@pytest.fixture
async def rest(repository: tuple[CertServer, DevPki]) -> AsyncIterator[Rest]:
    server, keys = repository
    stats = Stats()
    x5u = server.url("/shaken.pem")
    auth = Authenticator(
        signers={"default": Signer(SigningIdentity(name="default",
                                                   key=load_private_key(keys.key), x5u=x5u))},
        inventory=Inventory([NumberBlock(first="12025550100", last="12025550199",
                                         account="demo")]),
        policy=AuthPolicy(), stats=stats)
    policy = UrlPolicy(ports=(server.port,), allow_networks=("127.0.0.1/32",))
    from cryptography import x509

    anchors = [x509.load_pem_x509_certificate(keys.ca_cert.read_bytes())]
    verification = VerificationService(checks=Checks(url_policy=policy),
                                       trust=TrustStore(anchors), cache_policy=CachePolicy(),
                                       stats=stats)
    feed = CredentialFeed(verification)
    assert server.ca_file is not None
    context = ssl.create_default_context(cafile=str(server.ca_file))
    feed.fetcher = Fetcher(policy=policy, crl_policy=policy, limits=FetchLimits(timeout=2.0),
                           ssl_context=context, on_done=feed.on_done, counters=Counter())
    services = Services(dialer_sources=SourceFilter(()), carrier_sources=SourceFilter(()),
                        accounts=AccountDirectory([Account(name="demo", origid=ORIGID,
                                                           sources=())]),
                        authenticator=auth, verification=verification)
    port = free_port()
    api = RestApi(RestConfig(host="127.0.0.1", port=port, max_body_bytes=LIMIT),
                  services=lambda: services, feed=lambda: feed,
                  api_keys={key_hash(KEY): "demo"}, stats=stats)
    await api.start()
    async with aiohttp.ClientSession() as session:
        try:
            yield Rest(f"http://127.0.0.1:{port}", keys, stats, session)
        finally:
            await api.stop()
            await feed.fetcher.close()


def signing(**changes: Any) -> dict[str, Any]:
    body = {"attest": "A", "dest": {"tn": ["+1 202 555 0199"]}, "iat": int(time.time()),
            "orig": {"tn": "12025550142"}, "origid": ORIGID}
    body.update(changes)
    return {"signingRequest": {k: v for k, v in body.items() if v is not None}}


async def test_sign_then_verify(rest: Rest) -> None:
    status, body = await rest.post("/stir/v1/signing", signing())
    assert status == 200, body
    identity = body["signingResponse"]["identity"]
    token, _, params = identity.partition(";")
    assert params.endswith(";alg=ES256;ppt=shaken") and params.startswith("info=<https://")
    claims = decode_passport(token).claims
    assert claims["attest"] == "A" and claims["dest"] == {"tn": ["12025550199"]}
    assert claims["orig"] == {"tn": "12025550142"} and claims["origid"] == ORIGID
    request = {"verificationRequest": {"from": {"tn": "12025550142"},
                                       "to": {"tn": ["12025550199"]},
                                       "time": int(time.time()), "identity": identity}}
    status, body = await rest.post("/stir/v1/verification", request)
    assert status == 200, body
    assert body == {"verificationResponse": {"verstat": "TN-Validation-Passed", "attest": "A"}}
    # A PASSporT whose claims were changed after signing fails with its code.
    head, _, rest_of = identity.partition(".")
    forged = head + "." + rest_of.replace(rest_of[:8], rest_of[:7] + "A", 1)
    request["verificationRequest"]["identity"] = forged
    status, body = await rest.post("/stir/v1/verification", request)
    answer = body["verificationResponse"]
    assert status == 200 and answer["verstat"] == "TN-Validation-Failed"
    assert answer["reasonCode"] == 438 and answer["reasonText"] == "Invalid Identity Header"
    assert rest.stats[("rest_requests", "signing", "200")] == 1
    assert rest.stats[("rest_requests", "verification", "200")] == 2


async def test_a_caller_may_ask_for_less_never_for_more(rest: Rest) -> None:
    status, body = await rest.post("/stir/v1/signing", signing(attest="B"))
    assert status == 200
    token = body["signingResponse"]["identity"].split(";")[0]
    assert decode_passport(token).claims["attest"] == "B"
    status, body = await rest.post("/stir/v1/signing", signing(orig={"tn": "13105550000"}))
    assert status == 403
    error = body["requestError"]["policyException"]
    assert error["messageId"] == "POL4030" and "Attestation A Not Allowed" in error["text"]


@pytest.mark.skipif(shutil.which("secsipidx") is None, reason="secsipidx not installed")
async def test_secsipidx_verifies_what_rest_signed(rest: Rest) -> None:
    status, body = await rest.post("/stir/v1/signing", signing())
    assert status == 200
    keys = rest.keys
    out = subprocess.run(["secsipidx", "-c", "-identity", body["signingResponse"]["identity"],
                          "-p", str(keys.cert), "-ca-file", str(keys.ca_cert),
                          "-ca-inter", str(keys.ca_cert), "-cert-verify", "7",
                          "-expire", "300"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


# (what, path, body, key, extra headers, status, exception kind, messageId, a variable)
BAD: list[tuple[str, str, Any, str | None, dict[str, str], int, str, str, str | None]] = [
    ("no API key", "/stir/v1/signing", signing(), None, {}, 401, "policyException",
     "POL4010", None),
    ("unknown API key", "/stir/v1/signing", signing(), "nope", {}, 401, "policyException",
     "POL4010", None),
    ("wrong content type", "/stir/v1/signing", signing(), KEY,
     {"Content-Type": "text/plain"}, 415, "serviceException", "SVC4004", "application/json"),
    ("response type not acceptable", "/stir/v1/signing", signing(), KEY,
     {"Accept": "text/html"}, 406, "serviceException", "SVC4002", "text/html"),
    ("bad JSON", "/stir/v1/signing", b"{not json", KEY, {}, 400, "serviceException",
     "SVC4006", None),
    ("empty body", "/stir/v1/signing", b"", KEY, {}, 400, "serviceException", "SVC4000", None),
    ("no signingRequest", "/stir/v1/signing", {"other": {}}, KEY, {}, 400,
     "serviceException", "SVC4001", "signingRequest"),
    ("missing attest", "/stir/v1/signing", signing(attest=None), KEY, {}, 400,
     "serviceException", "SVC4001", "attest"),
    ("attest D", "/stir/v1/signing", signing(attest="D"), KEY, {}, 400, "serviceException",
     "SVC4005", "attest"),
    ("iat a string", "/stir/v1/signing", signing(iat="now"), KEY, {}, 400, "serviceException",
     "SVC4005", "iat"),
    ("iat stale", "/stir/v1/signing", signing(iat=int(time.time()) - 3600), KEY, {}, 400,
     "serviceException", "SVC4005", "iat"),
    ("dest not an array", "/stir/v1/signing", signing(dest={"tn": "12025550199"}), KEY, {},
     400, "serviceException", "SVC4005", "dest.tn"),
    ("orig not a number", "/stir/v1/signing", signing(orig={"tn": "abc"}), KEY, {}, 400,
     "serviceException", "SVC4005", "orig.tn"),
    ("origid not a UUID", "/stir/v1/signing", signing(origid="x"), KEY, {}, 400,
     "serviceException", "SVC4005", "origid"),
    # uuid.UUID reads these, but none is the canonical text a PASSporT may carry as given.
    ("origid after a tab", "/stir/v1/signing", signing(origid="\t" + ORIGID.replace("-", "")[1:]),
     KEY, {}, 400, "serviceException", "SVC4005", "origid"),
    ("origid in capitals", "/stir/v1/signing", signing(origid=ORIGID.upper()), KEY, {}, 400,
     "serviceException", "SVC4005", "origid"),
    ("origid in braces", "/stir/v1/signing", signing(origid="{" + ORIGID + "}"), KEY, {}, 400,
     "serviceException", "SVC4005", "origid"),
    ("origid as a URN", "/stir/v1/signing", signing(origid="urn:uuid:" + ORIGID), KEY, {},
     400, "serviceException", "SVC4005", "origid"),
    ("origid not text", "/stir/v1/signing", signing(origid=7), KEY, {}, 400,
     "serviceException", "SVC4005", "origid"),
    ("1,000-deep JSON", "/stir/v1/signing", b"[" * 1000 + b"]" * 1000, KEY, {}, 400,
     "serviceException", "SVC4006", None),
    ("NaN", "/stir/v1/signing", b'{"signingRequest":{"iat":NaN}}', KEY, {}, 400,
     "serviceException", "SVC4006", None),
    ("not UTF-8", "/stir/v1/signing", b'{"signingRequest":"\xff"}', KEY, {}, 400,
     "serviceException", "SVC4006", None),
    ("body over the limit", "/stir/v1/signing", b"{" + b" " * LIMIT + b"}", KEY, {}, 413,
     "serviceException", "SVC4006", None),
    ("unknown resource", "/stir/v1/other", signing(), KEY, {}, 404, "serviceException",
     "SVC4003", None),
    ("verification without identity", "/stir/v1/verification",
     {"verificationRequest": {"from": {"tn": "12025550142"}, "to": {"tn": ["12025550199"]},
                              "time": 1}}, KEY, {}, 400, "serviceException", "SVC4001",
     "identity"),
]


@pytest.mark.parametrize(("what", "path", "body", "key", "headers", "status", "kind",
                          "message_id", "variable"), BAD, ids=[b[0] for b in BAD])
async def test_bad_requests(rest: Rest, what: str, path: str, body: Any, key: str | None,
                            headers: dict[str, str], status: int, kind: str, message_id: str,
                            variable: str | None) -> None:
    got, answer = await rest.post(path, body, key=key, headers=headers)
    assert got == status, answer
    error = answer["requestError"][kind]
    assert error["messageId"] == message_id, error
    assert error["text"] and "%" not in error["text"]
    if variable is not None:
        assert error["variables"][0] == variable, error


async def test_get_is_not_allowed(rest: Rest) -> None:
    async with rest.session.get(rest.base + "/stir/v1/signing") as r:
        body = await r.json()
    assert r.status == 405 and body["requestError"]["policyException"]["messageId"] == "POL4050"


async def test_https_with_client_certificates(tmp_path: Path) -> None:
    """HTTPS, and with tls_client_ca only callers presenting a certificate it signed get in."""
    from tests.https_server import make_tls_files

    for name in ("server", "client", "other"):
        (tmp_path / name).mkdir()
    server_ca, server_cert, server_key = make_tls_files(tmp_path / "server")
    client_ca, client_cert, client_key = make_tls_files(tmp_path / "client")
    _, other_cert, other_key = make_tls_files(tmp_path / "other")
    port = free_port()
    services = Services(dialer_sources=SourceFilter(()), carrier_sources=SourceFilter(()))
    api = RestApi(RestConfig(host="127.0.0.1", port=port, tls_certificate=server_cert,
                             tls_key=server_key, tls_client_ca=client_ca),
                  services=lambda: services, feed=lambda: None, api_keys={}, stats=Stats())
    await api.start()
    url = f"https://127.0.0.1:{port}/stir/v1/signing"

    async def ask(cert: Path | None, key: Path | None) -> int:
        context = ssl.create_default_context(cafile=str(server_ca))
        if cert is not None and key is not None:
            context.load_cert_chain(str(cert), str(key))
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=b"{}", ssl=context,
                                    headers={"Content-Type": "application/json"}) as r:
                return r.status

    try:
        assert await ask(client_cert, client_key) == 401  # in over TLS; no API key given
        for cert, key in ((None, None), (other_cert, other_key)):
            with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
                await ask(cert, key)
    finally:
        await api.stop()


async def test_signing_reads_national_numbers_with_the_signing_policy(tmp_path: Path) -> None:
    """Regression: REST signing canonicalised numbers with the verification policy's country
    code ("1" without [verify]): a 10-digit number became a NANP one ("1" added), so a "44"
    provider's own number was not its own."""
    keys = init_dev_pki(tmp_path / "keys", spc="123A")
    auth = Authenticator(
        signers={"default": Signer(SigningIdentity(name="default",
                                                   key=load_private_key(keys.key),
                                                   x5u="https://certs.example/s.pem"))},
        inventory=Inventory([NumberBlock(first="2025550142", last="2025550142",
                                         account="demo")]),
        policy=AuthPolicy(country_code="44"))
    services = Services(dialer_sources=SourceFilter(()), carrier_sources=SourceFilter(()),
                        accounts=AccountDirectory([Account(name="demo", origid=ORIGID,
                                                           sources=())]),
                        authenticator=auth)
    port = free_port()
    api = RestApi(RestConfig(host="127.0.0.1", port=port), services=lambda: services,
                  feed=lambda: None, api_keys={key_hash(KEY): "demo"}, stats=Stats())
    await api.start()
    try:
        async with aiohttp.ClientSession() as session:
            rest = Rest(f"http://127.0.0.1:{port}", keys, Stats(), session)
            status, body = await rest.post("/stir/v1/signing", signing(
                orig={"tn": "2025550142"}, dest={"tn": ["2079876543"]}))
    finally:
        await api.stop()
    assert status == 200, body
    claims = decode_passport(body["signingResponse"]["identity"].split(";")[0]).claims
    assert claims["orig"] == {"tn": "2025550142"} and claims["attest"] == "A"


@pytest.mark.parametrize("raw", [b"[" * 5000, b'{"a":' * 5000 + b"1" + b"}" * 5000,
                                 b"[" * 1_000_000 + b"]" * 1_000_000, b"[1e999999999]",
                                 b"-Infinity", b'"\xed\xa0\x80"', b"\xff"])
def test_no_body_gets_past_the_parser_but_as_the_atis_400(raw: bytes) -> None:
    with pytest.raises(ApiError) as info:
        value = parse_json(raw)
        assert value != value or value is None  # 1e999999999 is inf: refused below
        raise AssertionError(f"parsed {str(value)[:40]}")
    assert info.value.message_id == "SVC4006" and len(str(info.value)) < 300


def test_brackets_inside_strings_are_not_nesting() -> None:
    text = {"signingRequest": {"orig": {"tn": "[" * 200 + "{" * 200 + "\\\"["}}}
    assert parse_json(json.dumps(text).encode()) == text
    assert parse_json(b"[" * 32 + b"]" * 32) is not None
