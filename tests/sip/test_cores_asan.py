"""The compiled core built with AddressSanitizer and UndefinedBehaviorSanitizer, fed the
torture messages and thousands of mutations of them: any out-of-bounds read or write, use
after free or undefined behaviour in the C code aborts the run. Each input is compared with
the Python reference too."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "stirshaken_proxy/sip/_cmessage.c"

RUN = """
import importlib.machinery, importlib.util, random, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location(
    "stirshaken_proxy.sip._cmessage", sys.argv[1],
    loader=importlib.machinery.ExtensionFileLoader("stirshaken_proxy.sip._cmessage", sys.argv[1]))
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.modules["stirshaken_proxy.sip._cmessage"] = module
from stirshaken_proxy.sip import message, uri
assert message._built is module
from tests.sip.cores import same_on_both
corpus = [p.read_bytes() for p in sorted(Path("tests/data/rfc4475").glob("*.dat"))]
rnd = random.Random(7)
count = 0
for base in corpus:
    for stream in (False, True):
        same_on_both(base, stream=stream)
        count += 1
for _ in range(int(sys.argv[2])):
    data = bytearray(rnd.choice(corpus))
    for _ in range(rnd.randint(1, 4)):
        at = rnd.randint(0, len(data))
        data[at:at + rnd.randint(0, 6)] = bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 6)))
    same_on_both(bytes(data))
    try:  # the proxy's edits, serialised by assemble against the reference
        edited = message.parse_message(bytes(data))
    except message.SipError:
        edited = None
    if edited is not None:
        for _ in range(rnd.randint(0, 4)):
            i, roll = rnd.randrange(len(edited.headers)), rnd.random()
            if roll < 0.3:
                edited.replace_header(i, b"X: y\\r\\n")
            elif roll < 0.6:
                edited.remove_header(i)
            elif roll < 0.8:
                edited.prepend_header(b"Via: SIP/2.0/UDP p;branch=z9hG4bKq\\r\\n")
            else:
                edited.append_header(b"Max-Forwards: 9\\r\\n")
        message.use_core("python")
        reference = edited.serialize()
        message.use_core("auto")
        assert edited.serialize() == reference, bytes(data)
    text = rnd.choice(["SIP/2.0/UDP h", "SIP/2.0/TCP [::1]", "SIP/2.0/UDP h:5060;branch="]) \\
        + bytes(data[:40]).decode("latin-1")
    results = []
    for core in ("python", "compiled"):
        message.use_core(core)
        try:
            v = message.Via(text)
            results.append((v.transport, v.host, v.port, list(v.params.items())))
        except message.SipError as exc:
            results.append(("error", exc.detail))
    message.use_core("auto")
    assert results[0] == results[1], (text, results)
    value = bytes(data[:60]).decode("latin-1") + rnd.choice(["", '"', "<", "\\\\", "\\u20ac"])
    for sep in ",;":
        assert module.split_values(value, sep) == uri.split_values_reference(value, sep), value
    count += 1
# the timer heap: random arming, cancelling and popping against the reference
from stirshaken_proxy.transaction.timers import TimerHeap
class Txn:
    def __init__(self):
        self.deadlines = {}
heaps = (TimerHeap(), module.TimerHeap())
txns = [(Txn(), Txn()) for _ in range(50)]
now = 0.0
for step in range(int(sys.argv[2]) * 5):
    i, timer = rnd.randrange(50), rnd.choice("ABCM")
    roll = rnd.random()
    if roll < 0.6:
        when = now + rnd.choice([0.0, 0.5, 1.0, 32.0, 180.0])
        for heap, txn in zip(heaps, txns[i]):
            txn.deadlines[timer] = when
            heap.push(when, txn, timer)
    elif roll < 0.8:
        for txn in txns[i]:
            txn.deadlines.pop(timer, None)
    else:
        now += rnd.choice([0.0, 0.5, 2.0, 40.0])
        got = [[(txns.index(next(p for p in txns if p[k] is t)), e) for t, e in heap.pop_due(now)]
               for k, heap in enumerate(heaps)]
        assert got[0] == got[1] and len(heaps[0]) == len(heaps[1])
        assert heaps[0].next_deadline() == heaps[1].next_deadline()
print("inputs", count)
"""


def _libasan() -> str | None:
    if shutil.which("gcc") is None:
        return None
    found = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                           text=True, check=False).stdout.strip()
    return found if found and os.path.isabs(found) and os.path.exists(found) else None


def build_sanitized(source: Path, out: Path, *libs: str) -> None:
    """A C module of the compiled core built with AddressSanitizer and UBSan (any finding
    aborts), for a run under sanitizer_env."""
    build = subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O1", "-g", "-fno-omit-frame-pointer",
         "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
         f"-I{sysconfig.get_paths()['include']}", str(source), *libs, "-o", str(out)],
        capture_output=True, text=True, timeout=120, check=False)
    assert build.returncode == 0, build.stderr


def sanitizer_env(*, own_malloc: bool = False) -> dict[str, str]:
    """The environment of a Python run with ASan loaded first; ``own_malloc``: every object
    its own allocation (Python's allocator off), so ASan guards each one's end."""
    libasan = _libasan()
    assert libasan is not None
    env = {**os.environ, "LD_PRELOAD": libasan, "PYTHONPATH": str(ROOT),
           "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    if own_malloc:
        env["PYTHONMALLOC"] = "malloc"
    return env


SUITE = """
import importlib.machinery, importlib.util, sys
name, so, check, tests = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
spec = importlib.util.spec_from_file_location(
    name, so, loader=importlib.machinery.ExtensionFileLoader(name, so))
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.modules[name] = module
exec(check, {"module": module})
import pytest
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *tests]))
"""


def suite_with_sanitized(tmp_path: Path, source: Path, name: str, check: str,
                         tests: list[str]) -> None:
    """Builds ``source`` with the sanitizers as module ``name``, puts it in place of the
    installed one, runs ``check`` (Python, with ``module`` bound: that the package took the
    sanitized build) and then pytest on ``tests``; every test must pass, none be skipped."""
    so = tmp_path / (source.stem + "_asan.so")
    build_sanitized(source, so)
    done = subprocess.run([sys.executable, "-c", SUITE, name, str(so), check, *tests],
                          env=sanitizer_env(own_malloc=True), cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-4000:])
    assert " passed" in done.stdout and "failed" not in done.stdout, done.stdout[-2000:]
    assert "skipped" not in done.stdout, done.stdout[-2000:]


@pytest.mark.skipif(_libasan() is None, reason="gcc with libasan is not installed")
def test_the_compiled_core_under_address_sanitizer(tmp_path: Path) -> None:
    so = tmp_path / "_cmessage_asan.so"
    build_sanitized(SOURCE, so)
    env = sanitizer_env()
    runs = os.environ.get("ASAN_INPUTS", "3000")
    done = subprocess.run([sys.executable, "-c", RUN, str(so), runs], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip() == f"inputs {98 + int(runs)}"
