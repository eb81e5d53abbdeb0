"""The compiled transactions built with AddressSanitizer and UndefinedBehaviorSanitizer, put
in place of the installed module, then run through this folder's tests (the machine tests
and the random comparison with the reference): a reference counted once too few, a field
read after it was released, or undefined behaviour aborts the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sip.test_cores_asan import _libasan, build_sanitized, sanitizer_env

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "stirshaken_proxy/transaction/_cmachine.c"

RUN = """
import importlib.machinery, importlib.util, sys
name = "stirshaken_proxy.transaction._cmachine"
spec = importlib.util.spec_from_file_location(
    name, sys.argv[1], loader=importlib.machinery.ExtensionFileLoader(name, sys.argv[1]))
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.modules[name] = module
from stirshaken_proxy.transaction import machine
assert machine.COMPILED is not None and machine.COMPILED.client_invite is module.ClientInvite
import pytest
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "tests/transaction/test_machines.py",
                      "tests/transaction/test_machine_cores.py", "tests/engine/test_proxy.py",
                      "tests/engine/test_no_cyclic_garbage.py"]))
"""


@pytest.mark.skipif(_libasan() is None, reason="gcc with libasan is not installed")
@pytest.mark.skipif(os.environ.get("STIRSHAKEN_CORE") == "python",
                    reason="the compiled transactions run with the compiled core")
def test_the_compiled_transactions_under_address_sanitizer(tmp_path: Path) -> None:
    so = tmp_path / "_cmachine_asan.so"
    build_sanitized(SOURCE, so)
    done = subprocess.run([sys.executable, "-c", RUN, str(so)],
                          env=sanitizer_env(own_malloc=True), cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-4000:])
    assert " passed" in done.stdout and "failed" not in done.stdout, done.stdout[-2000:]
