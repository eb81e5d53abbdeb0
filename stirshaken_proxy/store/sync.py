"""The store behind the in-memory state: the inventory (and each ``Watch``ed table: digest
credentials, brands) reloaded when its version changes (never a query per call), number
health written behind in batches."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..policy.health import NumberHealth
from ..policy.inventory import Inventory, NumberBlock
from .base import HealthStore, Store

log = logging.getLogger(__name__)


class Watch:
    """Another versioned table of the store reloaded beside the inventory (digest
    credentials, brands): its version, how to load it, where it goes."""

    def __init__(self, label: str, version: Callable[[], int], load: Callable[[], Any],
                 apply: Callable[[Any], None], seen: int) -> None:
        self.label = label
        self.version = version
        self.load = load
        self.apply = apply
        self.seen = seen


class InventorySync:
    """Polls the store's inventory version and hands a new inventory to ``apply``; the same
    for each ``Watch``."""

    def __init__(self, store: Store, *, extra: Iterable[NumberBlock], version: int,
                 apply: Callable[[Inventory], None], interval: float,
                 watches: Iterable[Watch] = ()) -> None:
        self.store = store
        self.watches = list(watches)
        self.extra = tuple(extra)  # numbers written in the config
        self.version = version
        self.apply = apply
        self.interval = interval
        self.ok = True  # the store answered the last poll
        self._wake: asyncio.Event | None = None

    def notify(self) -> None:
        """A change was announced (PostgreSQL NOTIFY): look now, not at the next poll."""
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        self._wake = asyncio.Event()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.poll()

    async def poll(self) -> None:
        try:
            version = await asyncio.to_thread(self.store.version)
            if version != self.version:
                inventory = await asyncio.to_thread(self.store.load, self.extra)
                self.version = inventory.version
                self.apply(inventory)
                log.info("inventory reloaded: %d blocks (version %d)", len(inventory),
                         inventory.version)
            for watch in self.watches:
                version = await asyncio.to_thread(watch.version)
                if version != watch.seen:
                    rows = await asyncio.to_thread(watch.load)
                    watch.seen = version
                    watch.apply(rows)
                    log.info("%s reloaded: %d (version %d)", watch.label, len(rows), version)
            self.ok = True
        except Exception as exc:  # noqa: BLE001 - keep serving from memory
            if self.ok:
                log.warning("number store unreachable, serving the last inventory: %s", exc)
            self.ok = False


class HealthWriter:
    """Writes the numbers whose statistics changed (a kill -9 loses at most one interval)."""

    def __init__(self, health: NumberHealth, rows: HealthStore, *, interval: float) -> None:
        self.health = health
        self.rows = rows
        self.interval = interval

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> None:
        rows = self.health.take_dirty()
        if not rows:
            return
        try:
            await asyncio.to_thread(self.rows.save, rows, time.time())
        except Exception as exc:  # noqa: BLE001 - keep them for the next flush
            log.warning("number health not saved (retrying): %s", exc)
            self.health.dirty.update(tn for tn, _ in rows)
