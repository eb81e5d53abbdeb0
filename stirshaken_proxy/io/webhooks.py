"""Call records to a CRM webhook: batches POSTed as JSON from the store's outbox, signed with
HMAC-SHA256, retried with backoff, at least once (each record carries its id: the receiver
drops what it has seen), surviving restarts (the outbox is in the store)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from ..store.base import Store

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Stirshaken-Signature"  # "sha256=<hex HMAC of timestamp.body>"
TIMESTAMP_HEADER = "X-Stirshaken-Timestamp"


@dataclass(frozen=True, kw_only=True)
class WebhookConfig:
    url: str
    secret: bytes
    batch: int = 100
    timeout: float = 5.0
    max_backoff: float = 300.0
    outbox_max: int = 1_000_000  # records waiting; past this the oldest are dropped, counted
    interval: float = 1.0


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """What the receiver recomputes: HMAC-SHA256 over ``<timestamp>.<body>``."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def backoff(attempts: int, limit: float) -> float:
    return float(min(limit, 2 ** min(attempts, 16)))


class WebhookSender:
    """Drains the outbox (one sender per instance: worker 0)."""

    def __init__(self, config: WebhookConfig, store: Callable[[], Store], *,
                 counters: Counter[str]) -> None:
        self.config = config
        self.store_of = store
        self.counters = counters
        self._store: Store | None = None
        self._session: aiohttp.ClientSession | None = None

    async def run(self) -> None:
        while True:
            try:
                sent = await self.send_once()
            except Exception as exc:  # noqa: BLE001 - the store or the network; next turn
                self.counters["webhook_failures"] += 1
                log.warning("webhook: %s", exc)
                sent = 0
            if not sent:
                await asyncio.sleep(self.config.interval)

    def _db(self) -> Store:
        if self._store is None:
            self._store = self.store_of()
        return self._store

    async def send_once(self) -> int:
        """One batch; returns how many records were delivered."""
        now = time.time()
        due = await asyncio.to_thread(lambda: self._db().outbox_due(now, self.config.batch))
        if not due:
            return 0
        ids = [i for i, _, _ in due]
        body = ('{"records":[' + ",".join(d for _, d, _ in due) + "]}").encode()
        stamp = str(int(now))
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: stamp,
                   SIGNATURE_HEADER: signature(self.config.secret, stamp, body)}
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout))
        try:
            async with self._session.post(self.config.url, data=body, headers=headers) as r:
                ok = 200 <= r.status < 300
                reason = f"HTTP {r.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            ok, reason = False, str(exc) or type(exc).__name__
        if ok:
            await asyncio.to_thread(self._db().outbox_done, ids)
            self.counters["webhook_records_sent"] += len(ids)
            return len(ids)
        attempts = min(a for _, _, a in due)
        wait = backoff(attempts, self.config.max_backoff)
        await asyncio.to_thread(self._db().outbox_retry, ids, now + wait)
        self.counters["webhook_failures"] += 1
        log.warning("webhook %s: %s; %d records retried in %.0f s", self.config.url, reason,
                    len(ids), wait)
        return 0

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._store is not None:
            self._store.close()


__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "WebhookConfig", "WebhookSender",
           "signature"]
