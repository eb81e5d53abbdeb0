"""A whole call leaves no cyclic garbage: every object of it is freed by reference counting
when its transactions end, so the garbage collector's walks over the lingering transactions
find nothing, and a change that makes a cycle per call (memory held until a collection,
longer pauses) fails here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter: no thread of another test makes garbage meanwhile.
_CHECK = """
import gc, json, sys
from collections import Counter
from pathlib import Path
from bench.call_flow import calls
from bench.inprocess import signing_engine

def found():
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collection finds stays in gc.garbage, to name
    n = gc.collect()
    kinds = Counter(type(o).__name__ for o in gc.garbage).most_common(10)
    gc.set_debug(0)
    gc.garbage.clear()
    gc.collect()  # and is freed now, not found again by the next one
    return n, kinds

def found_after(e, n, first):
    calls(e, n, first=first)
    return found()

gc.disable()
e = signing_engine(Path(sys.argv[1]))
calls(e, 20, first=10**6)  # caches warm, as in a running service
found()  # and what start-up left
got = {"during": found_after(e, 400, 0), "lingering": e.transactions}
e.on_timers(1_790_000_000.0 + 1000.0)  # past every timer, Timer C included
got["left"] = e.transactions
got["ended"] = found()
print(json.dumps(got))
"""


def test_a_whole_signed_call_leaves_no_cyclic_garbage(tmp_path: Path) -> None:
    """INVITE (signed), 180, 200, ACK, BYE, 200, then the transactions' timers run out: every
    object of the calls is freed by reference counting, none waits for the collector."""
    run = subprocess.run([sys.executable, "-c", _CHECK, str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout)
    assert got["lingering"] >= 400  # the calls' transactions linger (Timers J, L, M)
    assert got["during"][0] == 0, got["during"]
    assert got["left"] == 0
    assert got["ended"][0] == 0, got["ended"]


_GROWTH = """
import gc, json, sys, tracemalloc
from pathlib import Path
from bench.call_flow import calls
from bench.inprocess import signing_engine

e = signing_engine(Path(sys.argv[1]))
e.record_calls(instance="i", worker=0)  # call records made too

def batch(k):
    calls(e, 1000, first=k * 1000)
    e.on_timers(1_790_000_000.0 + 1000.0)  # every transaction's timers run out

tracemalloc.start()
for k in range(3):  # caches and tables at their working size
    batch(k)
gc.collect()
memory, objects = tracemalloc.get_traced_memory()[0], len(gc.get_objects())
for k in range(3, 13):
    batch(k)
gc.collect()
print(json.dumps({"memory": tracemalloc.get_traced_memory()[0] - memory,
                  "objects": len(gc.get_objects()) - objects, "left": e.transactions}))
"""


def test_ten_thousand_calls_leave_no_memory_behind(tmp_path: Path) -> None:
    """What reference counting must free, it frees: a reference held once too often (in the
    compiled core's C code above all) keeps each call's objects forever. 10,000 signed calls
    after a warm-up, every timer run out: the memory Python traces and the objects the
    collector tracks are where they were (a leak of one small object per call would be
    ~500 KB)."""
    run = subprocess.run([sys.executable, "-c", _GROWTH, str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout)
    assert got["left"] == 0
    assert got["objects"] <= 0, got
    assert got["memory"] < 64 * 1024, got


_YOUNG = """
import gc, json, sys
from collections import Counter
from pathlib import Path
from bench.call_flow import calls
from bench.inprocess import signing_engine
from stirshaken_proxy.sip import message

gc.disable()
e = signing_engine(Path(sys.argv[1]))
e.record_calls(instance="i", worker=0)  # call records made too
calls(e, 20, first=10**6)
gc.collect()
gc.freeze()  # what start-up made, as the service does
calls(e, 1000)  # their transactions linger (64*T1), as a running service's do
gc.collect(0)  # a young collection: what it does not free moves to the middle generation
kept = Counter(type(o).__name__ for o in gc.get_objects(1))
print(json.dumps({"core": message.core_in_use(), "lingering": e.transactions,
                  "kept": sum(kept.values()), "kinds": kept.most_common(8)}))
"""


def test_what_a_call_keeps_is_not_walked_by_the_collector(tmp_path: Path) -> None:
    """A call's transactions, their contexts, its ACK template and its record's parts live for
    up to 64*T1: while the collector tracked them, each young collection walked ~50,000 of
    them (12 ms at 2,500 calls/s, a burst of late datagrams after it) and each middle one
    hundreds of thousands. With the compiled core none of them is tracked: after 1,000
    calls a young collection leaves (almost) nothing for the middle generation."""
    run = subprocess.run([sys.executable, "-c", _YOUNG, str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout)
    assert got["lingering"] >= 4000  # four transactions a call, lingering
    if got["core"] != "compiled":
        pytest.skip("the Python core's transactions are tracked (the reference)")
    assert got["kept"] < 100, got  # 1,000 calls; ~9,000 while they were tracked
