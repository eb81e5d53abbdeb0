"""What workers tell each other over their links (see io.workers): messages of calls another
worker owns, writes for TCP connections another worker holds, number-health events for the
replicas, digest authentication failures and successes (an address's tries are counted once
for the whole service), metric snapshots for worker 0's /metrics, and readiness."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..policy.digest import DigestAuth
from ..policy.health import HealthEvent, NumberHealth
from .shell import EngineShell
from .workers import DIGEST, HEALTH, MESSAGE, READY, SEND, STATS, STATS_REPLY, WorkerLink, decode_peer

log = logging.getLogger(__name__)


class WorkerDispatch:
    def __init__(self, link: WorkerLink, shell: EngineShell, *,
                 snapshot: Callable[[], dict[str, Any]], counters: Counter[str]) -> None:
        self.link = link
        self.shell = shell
        self.snapshot = snapshot  # this worker's metrics, as plain values
        self.counters = counters
        self.health: NumberHealth | None = None  # the replica events apply to
        self.digest: Callable[[], DigestAuth | None] = lambda: None  # the checker in use
        self.ready: set[int] = set()  # workers that said they listen
        self.peer_snapshots: list[dict[str, Any]] = []  # the others' last metrics
        self.stopped = False  # past this, only health events are taken (the last ones)
        self._waiters: dict[int, tuple[asyncio.Future[None], list[dict[str, Any]]]] = {}
        self._request = 0

    def start(self) -> None:
        self.link.start(self.on_link)

    def publish(self, event: HealthEvent) -> None:
        self.link.event(HEALTH, event)

    def publish_digest(self, event: tuple[str, str, float]) -> None:
        self.link.event(DIGEST, event)

    def on_link(self, kind: bytes, origin: int, datagram: bytes) -> None:
        link = self.link
        if self.stopped and kind != HEALTH:
            return
        if kind == MESSAGE:
            peer, data = decode_peer(datagram)
            if peer.reliable:
                self.shell.remember_tcp_home(peer, origin)
            self.shell.process(data, peer)
        elif kind == SEND:
            peer, data = decode_peer(datagram)
            self.shell.write_tcp(peer, data)
        elif kind == HEALTH:
            if self.health is not None:
                self.health.apply(link.value(datagram))
        elif kind == DIGEST:
            digest = self.digest()
            if digest is not None:
                digest.shared(link.value(datagram))
        elif kind == STATS:
            link.event(STATS_REPLY, (link.value(datagram), self.snapshot()), to=origin)
        elif kind == READY:
            self.ready.add(origin)
        elif kind == STATS_REPLY:
            request, snap = link.value(datagram)
            waiter = self._waiters.get(request)
            if waiter is not None:
                waiter[1].append(snap)
                if len(waiter[1]) == link.count - 1 and not waiter[0].done():
                    waiter[0].set_result(None)

    async def gather_snapshots(self, timeout: float = 1.0) -> None:
        """Ask every other worker for its metrics (worker 0, for /metrics)."""
        link = self.link
        self._request += 1
        request = self._request
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        got: list[dict[str, Any]] = []
        self._waiters[request] = (done, got)
        link.event(STATS, request)
        try:
            async with asyncio.timeout(timeout):
                await done
        except TimeoutError:
            self.counters["worker_stats_timeouts"] += 1
            log.warning("metrics: %d of %d workers answered", len(got) + 1, link.count)
        finally:
            del self._waiters[request]
        self.peer_snapshots = got

    def say_ready(self) -> None:
        self.link.event(READY, self.link.index, to=0)
