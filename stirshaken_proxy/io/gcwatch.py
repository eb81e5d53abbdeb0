"""The Python garbage collector, tuned for a proxy and timed (every message waits during a
collection: the p99 of the time added to an INVITE)."""

from __future__ import annotations

import gc
import time
from typing import Any

from ..stats import LatencyHistogram

_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


class GcWatch:
    def __init__(self) -> None:
        self.pauses = [LatencyHistogram(_BUCKETS) for _ in range(3)]  # by generation
        self._started = 0.0

    def start(self, threshold: int) -> None:
        # Transactions live for 32 s (Timers J, L, M): with the default thresholds the cyclic
        # GC walks tens of thousands of them again and again, which cost more than half of
        # the per-INVITE time in bench/inprocess.py. Collect young objects less often and
        # keep what start-up built out of the collector's way.
        gc.set_threshold(threshold, 20, 100)
        gc.freeze()
        gc.callbacks.append(self._pause)

    def stop(self) -> None:
        if self._pause in gc.callbacks:
            gc.callbacks.remove(self._pause)

    def _pause(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            self.pauses[info["generation"]].observe(time.perf_counter() - self._started)
            self._started = 0.0
