"""The compiled datagram path (io/_cpump.c) built with AddressSanitizer and
UndefinedBehaviorSanitizer, put in place of the installed module, then run through the shell's
tests on real sockets: a reference counted once too few, a field read after it was released,
or undefined behaviour aborts the run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.sip.test_cores_asan import ROOT, _libasan, suite_with_sanitized


@pytest.mark.skipif(_libasan() is None, reason="gcc with libasan is not installed")
@pytest.mark.skipif(os.environ.get("STIRSHAKEN_CORE") == "python",
                    reason="the compiled datagram path runs with the compiled core")
def test_the_compiled_datagram_path_under_address_sanitizer(tmp_path: Path) -> None:
    suite_with_sanitized(
        tmp_path, ROOT / "stirshaken_proxy/io/_cpump.c", "stirshaken_proxy.io._cpump",
        "from stirshaken_proxy.io import shell, transports\n"
        "assert shell._cpump is module\n"
        "assert transports.CompiledUdpEndpoint.__mro__[1] is module.Endpoint",
        ["tests/io/test_shell.py"])
