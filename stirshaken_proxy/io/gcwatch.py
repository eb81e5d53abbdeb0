"""The Python garbage collector, tuned for a proxy and timed (every message waits during a
collection: the p99 of the time added to an INVITE).

A call leaves no cyclic garbage: its transactions, contexts and messages are all freed by
reference counting when they end (tests/io/test_gcwatch.py checks a whole call). What the
collector would walk is therefore the transactions still alive (RFC 3261 Timers J, L and M
keep them 32 s): at 1,000 calls/s a young collection walked ~50,000 of them, 29 ms of cache
misses every 6 s, and found nothing. So what is alive is frozen each ``freeze_interval``
(out of the collector's reach, which costs nothing) and the young collections that remain
see only what was made since. Every ``full_interval`` everything is unfrozen and collected
once, so cycles that the rest of the process makes (asyncio's futures, exceptions) are
still reclaimed, at one longer pause then."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from ..stats import LatencyHistogram

_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


class GcWatch:
    def __init__(self) -> None:
        self.pauses = [LatencyHistogram(_BUCKETS) for _ in range(3)]  # by generation
        self._started = 0.0
        self._task: asyncio.Task[None] | None = None
        self.full_collections = 0
        self._thresholds: tuple[int, int, int] | None = None

    def start(self, threshold: int, *, freeze_interval: float = 0.0,
              full_interval: float = 600.0) -> None:
        # With the default thresholds the cyclic GC walked the lingering transactions again
        # and again (more than half of the per-INVITE time in bench/inprocess.py): collect
        # young objects less often and keep what start-up built out of the collector's way.
        if self._thresholds is None:
            self._thresholds = gc.get_threshold()
        gc.set_threshold(threshold, 20, 100)
        gc.freeze()
        if self._pause not in gc.callbacks:
            gc.callbacks.append(self._pause)
        if freeze_interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._freeze(freeze_interval, full_interval))

    def stop(self) -> None:
        """The collector as it was (a service stopped in a process that goes on)."""
        if self._pause in gc.callbacks:
            gc.callbacks.remove(self._pause)
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None
        if self._task is not None:
            self._task.cancel()
            self._task = None
            gc.unfreeze()

    async def _freeze(self, interval: float, full_interval: float) -> None:
        last_full = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            if time.monotonic() - last_full >= full_interval:
                gc.unfreeze()
                gc.collect()
                self.full_collections += 1
                last_full = time.monotonic()
            gc.freeze()

    def _pause(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            self.pauses[info["generation"]].observe(time.perf_counter() - self._started)
            self._started = 0.0
