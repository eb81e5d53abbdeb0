"""Coverage-guided differential fuzzing (atheris/libFuzzer) of the compiled SIP core against
the Python reference: for every input both give the same message, field for field, or the
same error.

    .venv/bin/python fuzz/fuzz_cores.py -runs=1000000 CORPUS_DIR   # seed: tests/data/rfc4475

The reference's Python code is instrumented (its branches guide the search); the compiled
core runs on every input. Fails, with the input saved by libFuzzer, at the first difference.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import atheris

# atheris instruments Python bytecode: the modules setup.py compiles with mypyc have none, so
# they are imported from their source (STIRSHAKEN_CORE=python does only that here; the C
# parser is still chosen by message.use_core).
os.environ["STIRSHAKEN_CORE"] = "python"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports():
    from stirshaken_proxy.sip import message
    from tests.sip.cores import outcome

if not message.compiled_available():
    raise SystemExit("the compiled core is not built in this install")


def one_input(data: bytes) -> None:
    for stream in (False, True):
        reference = outcome(data, "python", stream=stream, max_size=16384)
        compiled = outcome(data, "compiled", stream=stream, max_size=16384)
        if compiled != reference:
            raise AssertionError(f"the cores differ (stream={stream}):\n"
                                 f"compiled  {compiled!r}\nreference {reference!r}")


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
