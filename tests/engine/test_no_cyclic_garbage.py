"""A whole call leaves no cyclic garbage: every object of it is freed by reference counting
when its transactions end, so the garbage collector's walks over the lingering transactions
find nothing, and a change that makes a cycle per call (memory held until a collection,
longer pauses) fails here."""

from __future__ import annotations

import gc
from collections import Counter
from pathlib import Path

from bench.call_flow import calls
from bench.inprocess import signing_engine


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
