"""The compiled datagram path (io/_cpump.c) built with AddressSanitizer and
UndefinedBehaviorSanitizer, put in place of the installed module, then run through the shell's
tests on real sockets: a reference counted once too few, a field read after it was released,
or undefined behaviour aborts the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sip.test_cores_asan import _libasan, build_sanitized, sanitizer_env

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "stirshaken_proxy/io/_cpump.c"

RUN = """
import importlib.machinery, importlib.util, sys
name = "stirshaken_proxy.io._cpump"
spec = importlib.util.spec_from_file_location(
    name, sys.argv[1], loader=importlib.machinery.ExtensionFileLoader(name, sys.argv[1]))
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.modules[name] = module
from stirshaken_proxy.io import shell, transports
assert shell._cpump is module and transports.CompiledUdpEndpoint.__mro__[1] is module.Endpoint
import pytest
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "tests/io/test_shell.py"]))
"""


@pytest.mark.skipif(_libasan() is None, reason="gcc with libasan is not installed")
@pytest.mark.skipif(os.environ.get("STIRSHAKEN_CORE") == "python",
                    reason="the compiled datagram path runs with the compiled core")
def test_the_compiled_datagram_path_under_address_sanitizer(tmp_path: Path) -> None:
    so = tmp_path / "_cpump_asan.so"
    build_sanitized(SOURCE, so)
    done = subprocess.run([sys.executable, "-c", RUN, str(so)],
                          env=sanitizer_env(own_malloc=True), cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-4000:])
    assert " passed" in done.stdout and "failed" not in done.stdout, done.stdout[-2000:]
    assert "skipped" not in done.stdout, done.stdout[-2000:]  # the compiled cases ran
