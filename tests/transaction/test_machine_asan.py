"""The compiled transactions built with AddressSanitizer and UndefinedBehaviorSanitizer, put
in place of the installed module, then run through this folder's tests (the machine tests
and the random comparison with the reference): a reference counted once too few, a field
read after it was released, or undefined behaviour aborts the run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.sip.test_cores_asan import ROOT, _libasan, suite_with_sanitized


@pytest.mark.skipif(_libasan() is None, reason="gcc with libasan is not installed")
@pytest.mark.skipif(os.environ.get("STIRSHAKEN_CORE") == "python",
                    reason="the compiled transactions run with the compiled core")
def test_the_compiled_transactions_under_address_sanitizer(tmp_path: Path) -> None:
    suite_with_sanitized(
        tmp_path, ROOT / "stirshaken_proxy/transaction/_cmachine.c",
        "stirshaken_proxy.transaction._cmachine",
        "from stirshaken_proxy.transaction import machine\n"
        "assert machine.COMPILED is not None\n"
        "assert machine.COMPILED.client_invite is module.ClientInvite",
        ["tests/transaction/test_machines.py", "tests/transaction/test_machine_cores.py",
         "tests/engine/test_proxy.py", "tests/engine/test_no_cyclic_garbage.py"])
