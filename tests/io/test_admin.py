"""The admin API's number-health endpoints on 127.0.0.1 with a real HTTP client: what they
accept, and that every answer is valid JSON (regressions from a black-box test: any string was
taken as a number, and hours of nan, -5 or inf, inf answering ``Infinity``, which is no JSON)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from stirshaken_proxy.io.admin import AdminServer, HealthApi
from stirshaken_proxy.io.trust_center import AdminAuth, AdminCredential
from stirshaken_proxy.policy.health import HealthLimits, NumberHealth
from tests.support import free_port

OWNED = {"12025550142"}
def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


CREDENTIAL = basic("admin", "secret-pass")


@pytest.fixture
async def admin() -> AsyncIterator[tuple[str, NumberHealth]]:
    health = NumberHealth(HealthLimits())
    port = free_port()
    server = AdminServer("127.0.0.1", port, readiness=lambda: {"ok": True})
    auth = AdminAuth(AdminCredential(user="admin", password="secret-pass"))
    HealthApi(lambda: health, None, owned=OWNED.__contains__).add_to(server, auth.guard)
    await server.start()
    try:
        yield f"http://127.0.0.1:{port}", health
    finally:
        await server.stop()


@pytest.mark.parametrize(("path", "status"), [
    ("/numbers/12025550142/quarantine?hours=2", 200),
    ("/numbers/+1%20202%20555%200142/quarantine?hours=2", 200),  # canonicalised
    ("/numbers/12025550142/release", 200),
    ("/numbers/abc/quarantine", 400),
    ("/numbers/x1998/quarantine", 400),
    ("/numbers/" + "9" * 5000 + "/quarantine", 400),
    ("/numbers/19998887777/quarantine", 404),  # not in the inventory
    ("/numbers/19998887777/release", 404),
    ("/numbers/12025550142/quarantine?hours=nan", 400),
    ("/numbers/12025550142/quarantine?hours=-5", 400),
    ("/numbers/12025550142/quarantine?hours=inf", 400),
    ("/numbers/12025550142/quarantine?hours=0", 400),
    ("/numbers/12025550142/quarantine?hours=1e9", 400),
    ("/numbers/12025550142/quarantine?hours=soon", 400),
])
async def test_quarantine_and_release(admin: tuple[str, NumberHealth], path: str,
                                      status: int) -> None:
    base, health = admin
    async with aiohttp.ClientSession() as session:
        async with session.post(base + path, headers=CREDENTIAL) as r:
            text = await r.text()
    assert r.status == status, text
    body = json.loads(text, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    if status == 200:
        assert body["tn"] == "12025550142"
    else:
        assert body["error"]
    assert set(health.numbers) <= OWNED  # nothing else entered the health table


@pytest.mark.parametrize("auth", [{}, basic("admin", "wrong-pass"), basic("root", "secret-pass"),
                                  {"Authorization": "Basic !!!"}])
async def test_changes_need_the_credential(admin: tuple[str, NumberHealth],
                                           auth: dict[str, str]) -> None:
    base, health = admin
    async with aiohttp.ClientSession() as session:
        for path in ("/numbers/12025550142/quarantine?hours=2", "/numbers/12025550142/release"):
            async with session.post(base + path, headers=auth) as r:
                assert r.status == 401 and (await r.json())["error"]
        async with session.get(base + "/numbers/health", headers=auth) as r:  # reading too
            assert r.status == 401 and r.headers["WWW-Authenticate"] == 'Basic realm="admin"'
        async with session.get(base + "/numbers/health", headers=CREDENTIAL) as r:
            assert r.status == 200 and await r.json() == []
    assert not health.numbers


async def test_wrong_basic_credentials_are_throttled_like_logins(
        admin: tuple[str, NumberHealth]) -> None:
    """50 wrong passwords from one address, then the right one: refused (429) until the
    window passes, on every endpoint that takes the credential; another address is not
    affected."""
    base, _ = admin
    statuses = []
    async with aiohttp.ClientSession() as session:
        for n in range(50):
            async with session.post(base + "/numbers/12025550142/release",
                                    headers=basic("admin", f"guess-{n}")) as r:
                statuses.append(r.status)
        assert statuses == [401] * 5 + [429] * 45
        for method, path in (("POST", "/numbers/12025550142/release"),
                             ("GET", "/numbers/health")):
            async with session.request(method, base + path, headers=CREDENTIAL) as r:
                assert r.status == 429 and r.headers["Retry-After"] == "60"
                assert "too many failed logins" in (await r.json())["error"]
        async with session.get(base + "/healthz") as r:  # what needs no credential answers
            assert r.status == 200
    port = int(base.rsplit(":", 1)[1])
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
    async with aiohttp.ClientSession(connector=connector) as other, \
            other.get(f"http://127.0.0.1:{port}/numbers/health", headers=CREDENTIAL) as r:
        assert r.status == 200
