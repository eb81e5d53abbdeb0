"""The store behind the in-memory state: the inventory (and the dialers' digest credentials)
reloaded when its version changes (never a query per call), number health written behind in
batches."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from ..policy.digest import Credential
from ..policy.health import NumberHealth
from ..policy.inventory import Inventory, NumberBlock
from .base import HealthStore, Store

log = logging.getLogger(__name__)


class InventorySync:
    """Polls the store's inventory version and hands a new inventory to ``apply``."""

    def __init__(self, store: Store, *, extra: Iterable[NumberBlock], version: int,
                 apply: Callable[[Inventory], None], interval: float,
                 credentials: Callable[[list[Credential]], None] | None = None,
                 credentials_version: int = -1) -> None:
        self.store = store
        self.credentials = credentials  # where reloaded credentials go (digest is on)
        self.credentials_version = credentials_version
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
            if self.credentials is not None:
                version = await asyncio.to_thread(self.store.credentials_version)
                if version != self.credentials_version:
                    creds = await asyncio.to_thread(self.store.credentials)
                    self.credentials_version = version
                    self.credentials(creds)
                    log.info("digest credentials reloaded: %d (version %d)", len(creds),
                             version)
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
