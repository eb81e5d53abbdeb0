"""The HTTP servers' guard on real sockets: one account's slow clients do not take the others'
share, a flood from one address does not take the others' connections, silent and trickling
clients are closed, and a message that is not HTTP gets a short answer and one INFO line
(never a traceback, never its bytes)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from stirshaken_proxy.config import RestConfig
from stirshaken_proxy.engine.services import Services
from stirshaken_proxy.engine.sources import SourceFilter
from stirshaken_proxy.io.admin import AdminServer
from stirshaken_proxy.io.httpguard import HttpLimits
from stirshaken_proxy.io.keys import init_dev_pki, load_private_key
from stirshaken_proxy.io.rest import RestApi, key_hash
from stirshaken_proxy.policy.accounts import Account, AccountDirectory
from stirshaken_proxy.policy.inventory import Inventory, NumberBlock
from stirshaken_proxy.stats import Stats
from stirshaken_proxy.stir.passport import Signer, SigningIdentity
from stirshaken_proxy.stir.signing import Authenticator, AuthPolicy
from tests.support import free_port

ORIGID = "5f3f3f7a-4c1b-4d1e-9a37-0d2c9b6a1e01"
SHARE = 4  # max_in_flight_per_account
LIMITS = HttpLimits(header_timeout=4.0, body_timeout=1.0, max_connections=64,
                    max_per_source=16)
FLOODER = "127.0.0.3"  # another loopback address: the hostile source


@dataclass
class Api:
    port: int
    stats: Stats


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    keys = init_dev_pki(tmp_path / "keys", spc="123A")
    stats = Stats()
    auth = Authenticator(
        signers={"default": Signer(SigningIdentity(name="default",
                                                   key=load_private_key(keys.key),
                                                   x5u="https://cert.example.org/s.pem"))},
        inventory=Inventory([NumberBlock(first="12025550100", last="12025550149",
                                         account="quiet"),
                             NumberBlock(first="12025550150", last="12025550199",
                                         account="greedy")]),
        policy=AuthPolicy(), stats=stats)
    services = Services(
        dialer_sources=SourceFilter(()), carrier_sources=SourceFilter(()),
        accounts=AccountDirectory([Account(name=n, origid=ORIGID, sources=())
                                   for n in ("quiet", "greedy")]),
        authenticator=auth, verification=None)  # type: ignore[arg-type]
    port = free_port()
    rest = RestApi(RestConfig(host="127.0.0.1", port=port, max_in_flight=3 * SHARE,
                              max_in_flight_per_account=SHARE, limits=LIMITS),
                   services=lambda: services, feed=lambda: None,
                   api_keys={key_hash("k-quiet"): "quiet", key_hash("k-greedy"): "greedy"},
                   stats=stats)
    await rest.start()
    try:
        yield Api(port, stats)
    finally:
        await rest.stop()


def body(orig: str) -> bytes:
    return json.dumps({"signingRequest": {"attest": "A", "dest": {"tn": ["12025550100"]},
                                          "iat": int(time.time()), "orig": {"tn": orig},
                                          "origid": ORIGID}}).encode()


async def sign(port: int, key: str, orig: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{port}/stir/v1/signing", data=body(orig),
            headers={"Authorization": f"Bearer {key}",
                     "Content-Type": "application/json"}) as r:
        return r.status, await r.json()


async def open_from(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(host, 0))


async def closed(reader: asyncio.StreamReader, within: float) -> bytes | None:
    """What the server sent before closing the connection, or None if it is still open
    after ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            return await reader.read()
    except TimeoutError:
        return None
    except ConnectionResetError:
        return b""


async def test_one_accounts_slow_clients_do_not_take_the_others_share(api: Api) -> None:
    head = (b"POST /stir/v1/signing HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k-greedy\r\n"
            b"Content-Type: application/json\r\nContent-Length: 16384\r\n\r\n")
    slow = []
    for _ in range(SHARE):
        reader, writer = await open_from("127.0.0.1", api.port)
        writer.write(head + b"{")  # then nothing: the body trickles, or never comes
        slow.append((reader, writer))
    await asyncio.sleep(0.2)
    # The greedy account's share is taken: its next request is refused at once ...
    status, answer = await sign(api.port, "k-greedy", "12025550150")
    assert status == 503 and "POL5030" in json.dumps(answer)
    # ... the quiet account's are served, every one.
    results = await asyncio.gather(*(sign(api.port, "k-quiet", "12025550100")
                                     for _ in range(2 * SHARE)))
    assert [s for s, _ in results] == [200] * (2 * SHARE), results
    # The slow bodies get their 408 when the body deadline passes, and the share is free.
    for reader, writer in slow:
        sent = await closed(reader, 10 * LIMITS.body_timeout)
        assert sent is not None and sent.startswith(b"HTTP/1.1 408"), sent
        assert b"SVC4006" in sent
        writer.close()
    assert (await sign(api.port, "k-greedy", "12025550150"))[0] == 200
    assert api.stats[("http_refused", "rest", "account_share")] == 1
    assert api.stats[("http_refused", "rest", "body_timeout")] == SHARE


async def test_a_flood_from_one_address_leaves_the_others_their_connections(api: Api) -> None:
    held = [await open_from(FLOODER, api.port) for _ in range(LIMITS.max_per_source)]
    await asyncio.sleep(0.1)
    for reader, _ in held:  # admitted: still open
        assert await closed(reader, 0.05) is None
    # Every connection past the address's share is closed as it is accepted (bounded: 400,
    # well within the held ones' header deadline).
    refused = 0
    started = time.monotonic()
    for _ in range(400):
        reader, writer = await open_from(FLOODER, api.port)
        if await closed(reader, 1.0) is not None:
            refused += 1
        writer.close()
    assert time.monotonic() - started < LIMITS.header_timeout, "too slow to tell"
    assert refused == 400
    assert api.stats[("http_refused", "rest", "per_source")] == 400
    # Another address is served meanwhile.
    assert (await sign(api.port, "k-quiet", "12025550100"))[0] == 200
    # The held ones never sent a request head: closed when the header deadline passes.
    for reader, writer in held:
        assert await closed(reader, 10 * LIMITS.header_timeout) is not None
        writer.close()
    await asyncio.sleep(0.1)
    assert (await open_from(FLOODER, api.port)) and (await sign(api.port, "k-quiet",
                                                                "12025550100"))[0] == 200


async def test_a_trickled_request_head_is_closed_at_its_deadline(api: Api) -> None:
    reader, writer = await open_from("127.0.0.1", api.port)
    started = time.monotonic()
    result = None
    for byte in b"POST /stir/v1/signing HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 400:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            break
        result = await closed(reader, 0.1)
        if result is not None:
            break
    assert result is not None, "a head trickled for 40 s was not cut off"
    assert time.monotonic() - started >= LIMITS.header_timeout * 0.9
    assert time.monotonic() - started < 10 * LIMITS.header_timeout
    writer.close()


MARK = "zq-secret-marker"

# Requests that are not HTTP as RFC 9112 reads it: each must get a short 400.
SMUGGLING = [
    f"POST /stir/v1/signing HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    f"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{MARK}",
    f"POST /stir/v1/signing HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    f"zz{MARK}\r\n",
    f"POST /stir/v1/signing HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
    f"Content-Length: 2\r\n\r\n{MARK}",
    f"GET /{MARK} HTTP/1.1\r\nHost: x\r\n{MARK}\r\n\r\n",
    f"\x16\x03\x01{MARK}\r\n\r\n",
]


@pytest.mark.parametrize("raw", SMUGGLING, ids=range(len(SMUGGLING)))
async def test_a_message_that_is_not_http_gets_a_short_answer(
        api: Api, raw: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    reader, writer = await open_from("127.0.0.1", api.port)
    writer.write(raw.encode("latin-1"))
    sent = await closed(reader, 5.0)
    writer.close()
    assert sent is not None and sent[:12] in (b"HTTP/1.0 400", b"HTTP/1.1 400"), sent
    head, _, answer = sent.partition(b"\r\n\r\n")
    assert b"application/json" in head and len(answer) < 300
    assert json.loads(answer)["requestError"]["serviceException"]["messageId"] == "SVC4006"
    assert MARK.encode() not in sent
    for record in caplog.records:
        assert MARK not in record.getMessage() and record.exc_info is None, record
        assert record.levelno <= logging.INFO, record.getMessage()
    assert any("malformed HTTP request" in r.getMessage() for r in caplog.records)
    assert api.stats[("http_refused", "rest", "malformed")] == 1
    assert (await sign(api.port, "k-quiet", "12025550100"))[0] == 200


async def test_the_admin_server_is_guarded_too(caplog: pytest.LogCaptureFixture) -> None:
    stats = Stats()
    port = free_port()
    admin = AdminServer("127.0.0.1", port, readiness=lambda: {"x": True}, limits=LIMITS,
                        stats=stats)
    await admin.start()
    try:
        held = [await open_from(FLOODER, port) for _ in range(LIMITS.max_per_source)]
        reader, writer = await open_from(FLOODER, port)
        assert await closed(reader, 2.0) is not None
        writer.close()
        async with aiohttp.ClientSession() as session, \
                session.get(f"http://127.0.0.1:{port}/healthz") as r:
            assert r.status == 200
        reader, writer = await open_from("127.0.0.1", port)
        writer.write(f"GET / HTTP/1.1\r\nHost: x\r\n{MARK}\r\n\r\n".encode())
        sent = await closed(reader, 5.0)
        assert sent is not None and sent[9:12] == b"400" and MARK.encode() not in sent
        assert sent.endswith(b"400 Bad Request\n")
        writer.close()
        for reader, writer in held:
            assert await closed(reader, 10 * LIMITS.header_timeout) is not None
            writer.close()
        assert stats[("http_refused", "admin", "per_source")] == 1
    finally:
        await admin.stop()
    assert not any(r.exc_info for r in caplog.records)


def test_loopback_aliases_work() -> None:
    """The tests above flood from 127.0.0.3: Linux answers all of 127/8."""
    with socket.socket() as s:
        s.bind((FLOODER, 0))
