"""The collector's freezing: a whole call leaves no cyclic garbage (what freezing relies on),
what is alive is frozen each interval and out of the young and middle collections' reach,
cycles made meanwhile are still reclaimed by the full collection, and a stop gives
everything back to the collector."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections import Counter
from pathlib import Path

from bench.call_flow import calls
from bench.inprocess import signing_engine
from stirshaken_proxy.io.gcwatch import GcWatch


def test_a_whole_signed_call_leaves_no_cyclic_garbage(tmp_path: Path) -> None:
    """INVITE (signed), 180, 200, ACK, BYE, 200, then the transactions' timers run out: every
    object of the calls is freed by reference counting, none waits for the collector."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds stays in gc.garbage, to name
    try:
        e = signing_engine(tmp_path)
        calls(e, 20, first=10**6)  # caches warm, as in a running service
        gc.collect()
        gc.garbage.clear()
        calls(e, 200)
        assert e.transactions >= 200  # the calls' transactions linger (Timers J, L, M)
        found = gc.collect()
        assert found == 0, Counter(type(o).__name__ for o in gc.garbage).most_common(10)
        e.on_timers(1_790_000_000.0 + 1000.0)  # past every timer, Timer C included
        assert e.transactions == 0
        found = gc.collect()
        assert found == 0, Counter(type(o).__name__ for o in gc.garbage).most_common(10)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


async def test_what_is_alive_is_frozen_and_cycles_wait_for_the_full_collection() -> None:
    watch = GcWatch()
    watch.start(50_000, freeze_interval=0.05, full_interval=1.0)
    try:
        node = _Node()
        ref = weakref.ref(node)
        del node
        await asyncio.sleep(0.2)  # a few freezes
        assert gc.get_freeze_count() > 0
        gc.collect(1)  # the young and middle generations: the frozen cycle is not in them
        assert ref() is not None
        deadline = time.monotonic() + 5
        while ref() is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert ref() is None, "the full collection did not reclaim the cycle"
        assert watch.full_collections >= 1
        assert watch.pauses[2].count >= 1  # timed, for stirshaken_gc_pause_seconds
    finally:
        watch.stop()
    assert gc.get_freeze_count() == 0


async def test_no_freezing_when_the_interval_is_zero() -> None:
    watch = GcWatch()
    watch.start(50_000, freeze_interval=0.0)
    try:
        gc.unfreeze()  # what start() froze once, at start-up
        node = _Node()
        ref = weakref.ref(node)
        del node
        await asyncio.sleep(0.1)
        assert gc.get_freeze_count() == 0
        gc.collect()
        assert ref() is None
    finally:
        watch.stop()
