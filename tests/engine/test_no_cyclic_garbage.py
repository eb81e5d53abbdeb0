"""A whole call leaves no cyclic garbage: every object of it is freed by reference counting
when its transactions end, so the garbage collector's walks over the lingering transactions
find nothing, and a change that makes a cycle per call (memory held until a collection,
longer pauses) fails here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
