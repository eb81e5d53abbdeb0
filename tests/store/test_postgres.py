"""The PostgreSQL store against a real server of the tests' own: the same inventory rules as
SQLite, migrations once however many instances start together, changes announced to every
listener, health rows per instance, and its faults (unreachable at start, lost and back)."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import uuid
from collections.abc import Iterator

import pytest

from stirshaken_proxy.policy.inventory import NumberBlock
from stirshaken_proxy.store.base import StoreError
from tests.servers import Postgres, have_postgres

pytestmark = pytest.mark.skipif(not have_postgres(), reason="PostgreSQL not installed")


@pytest.fixture(scope="module")
def server() -> Iterator[Postgres]:
    with Postgres() as pg:
        yield pg


@pytest.fixture
def url(server: Postgres) -> str:
    return server.create_database(f"t{uuid.uuid4().hex[:12]}")


def _open(url: str) -> int:
    from stirshaken_proxy.store.postgres import PgStore

    store = PgStore(url, instance="x")
    version = store.version()
    store.close()
    return version


def test_inventory_rules_and_versions(url: str) -> None:
    from stirshaken_proxy.store.postgres import PgStore

    store = PgStore(url, instance="a")
    assert store.version() == 0 and len(store.load()) == 0
    store.add([NumberBlock(first="12025550100", last="12025550199", account="acme", label="m"),
               NumberBlock(first="13035550142", last="13035550142", account="beta")])
    inventory = store.load([NumberBlock(first="14155550100", last="14155550100",
                                        account="cfg")])
    assert inventory.version == 1 == store.version()
    assert [inventory.owner(tn) for tn in ("12025550150", "13035550142", "14155550100",
                                           "12025550200")] == ["acme", "beta", "cfg", None]
    with pytest.raises(StoreError, match="overlaps"):
        store.add([NumberBlock(first="12025550150", last="12025550150", account="beta")])
    assert store.version() == 1  # refused as a whole
    removed = store.remove("12025550150", "12025550150")
    assert [(b.first, b.last) for b in removed] == [("12025550100", "12025550199")]
    assert [(b.first, b.last) for b in store.blocks("acme")] == [
        ("12025550100", "12025550149"), ("12025550151", "12025550199")]
    assert store.load().owner("12025550150") is None and store.version() == 2
    with pytest.raises(StoreError, match="is not in the inventory"):
        store.remove("19995550100", "19995550100")
    store.close()


def test_instances_starting_together_migrate_once(url: str) -> None:
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(6) as pool:
        assert pool.map(_open, [url] * 6) == [0] * 6


def test_health_rows_are_each_instances_own(url: str) -> None:
    from stirshaken_proxy.store.postgres import PgStore

    a, b = PgStore(url, instance="a"), PgStore(url, instance="b")
    a.health().save([("12025550100", {"recent": [1.0]})], time.time())
    b.health().save([("12025550100", {"recent": [2.0, 3.0]})], time.time())
    assert a.health().load() == {"12025550100": {"recent": [1.0]}}
    assert b.health().load() == {"12025550100": {"recent": [2.0, 3.0]}}


async def test_a_change_is_announced_to_every_listener(url: str) -> None:
    from stirshaken_proxy.store.postgres import InventoryListener, PgStore

    heard: list[float] = []
    listeners = [InventoryListener(url, lambda: heard.append(time.monotonic()))
                 for _ in range(2)]
    tasks = [asyncio.get_running_loop().create_task(listener.run()) for listener in listeners]
    try:
        for _ in range(100):
            if all(listener.connected for listener in listeners):
                break
            await asyncio.sleep(0.05)
        heard.clear()
        store = PgStore(url, instance="a")
        start = time.monotonic()
        await asyncio.to_thread(store.add, [NumberBlock(first="12025550100",
                                                        last="12025550100", account="a")])
        for _ in range(100):
            if len(heard) >= 2:
                break
            await asyncio.sleep(0.01)
        assert len(heard) == 2 and max(heard) - start < 1.0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def test_unreachable_at_start_is_a_clear_error() -> None:
    from stirshaken_proxy.store.postgres import PgStore
    from tests.support import free_port

    port = free_port()
    with pytest.raises(StoreError) as info:
        PgStore(f"postgresql://app:secret@127.0.0.1:{port}/inv", instance="a")
    text = str(info.value)
    assert text.startswith(f"postgresql://app:***@127.0.0.1:{port}/inv: cannot connect to "
                           "PostgreSQL") and "secret" not in text


async def test_lost_while_running_serves_the_last_inventory_and_recovers() -> None:
    from stirshaken_proxy.store.postgres import PgStore
    from stirshaken_proxy.store.sync import InventorySync

    with Postgres() as pg:  # its own server: this test stops it
        url = pg.create_database("inv")
        store = PgStore(url, instance="a")
        store.add([NumberBlock(first="12025550100", last="12025550100", account="a")])
        applied = []
        sync = InventorySync(store, extra=(), version=0, apply=applied.append, interval=60)
        await sync.poll()
        assert sync.ok and applied[-1].owner("12025550100") == "a"
        pg.stop()
        await sync.poll()
        assert not sync.ok and len(applied) == 1  # the last inventory stays in use
        pg.restart()
        other = PgStore(url, instance="b")
        other.add([NumberBlock(first="12025550101", last="12025550101", account="a")])
        await sync.poll()
        assert sync.ok and applied[-1].owner("12025550101") == "a"


def test_digest_credentials_versioned_and_announced(url: str) -> None:
    from stirshaken_proxy.policy.digest import Credential
    from stirshaken_proxy.store.postgres import PgStore

    store = PgStore(url, instance="a")
    assert store.credentials_version() == 0 and store.credentials() == []
    cred = Credential.from_password(username="d1", account="acme", realm="r", password="pw-12345")
    store.set_credential(cred)
    store.set_credential(Credential.from_password(username="d1", account="beta", realm="r",
                                                  password="pw-67890"))
    assert store.credentials_version() == 2
    assert [(c.username, c.account) for c in store.credentials()] == [("d1", "beta")]
    assert store.version() == 0  # the inventory is not reloaded for a credential change
    assert store.remove_credential("d1") and not store.remove_credential("d1")
    assert store.credentials() == [] and store.credentials_version() == 4
    store.close()


def test_brands_versioned_and_announced(url: str) -> None:
    from stirshaken_proxy.stir.rcd import Brand
    from stirshaken_proxy.store.postgres import PgStore

    store = PgStore(url, instance="a")
    store.set_brand("tn:12025550100", Brand(name="Acme", logo="https://x.example/a.png",
                                            logo_digest="sha256-AAAA"))
    assert store.brands() == {"tn:12025550100": Brand(name="Acme", logo="https://x.example/a.png",
                                                      logo_digest="sha256-AAAA")}
    assert store.brands_version() == 1 and store.credentials_version() == 0
    assert store.remove_brand("tn:12025550100") and not store.remove_brand("tn:12025550100")
    store.close()


def test_records_are_counted_and_streamed_by_window(url: str) -> None:
    from stirshaken_proxy.store.postgres import PgStore
    from tests.store.test_store import check_records_window

    store = PgStore(url, instance="a")
    try:
        check_records_window(store)
    finally:
        store.close()
