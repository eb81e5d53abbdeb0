"""A bounded coverage-guided fuzz run (atheris) in CI; longer runs: see fuzz/fuzz_sip.py."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
@pytest.mark.parametrize("target", ["fuzz_sip.py", "fuzz_cores.py"])
def test_atheris_bounded_run(tmp_path: Path, target: str) -> None:
    from stirshaken_proxy.sip.message import compiled_available

    if target == "fuzz_cores.py" and not compiled_available():
        pytest.skip("the compiled core is not built in this install")
    corpus = tmp_path / "corpus"
    shutil.copytree(ROOT / "tests/data/rfc4475", corpus,
                    ignore=shutil.ignore_patterns("*.md", "SHA256SUMS"))
    runs = os.environ.get("FUZZ_RUNS", "20000")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / target), f"-runs={runs}", "-max_len=4096",
         "-timeout=10", "-rss_limit_mb=2048", str(corpus)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False)
    tail = proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    assert "Done" in proc.stderr, tail
