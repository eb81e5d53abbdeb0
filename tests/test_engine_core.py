"""The engine compiled by mypyc (setup.py's ENGINE) and its reference, the same source run by
the interpreter: which one a process imports, and that each is what it says. (That both
decide the same is the whole suite: CI runs the in-process suites again with
STIRSHAKEN_CORE=python; tests/service/test_cores.py runs the service on each.)"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

import stirshaken_proxy

ROOT = Path(__file__).resolve().parent.parent


def engine_modules() -> list[str]:
    """The module names setup.py compiles (read from its ENGINE list, not repeated here)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "ENGINE":
            paths = ast.literal_eval(node.value)
            return [p.removesuffix(".py").replace("/", ".") for p in paths]
    raise AssertionError("setup.py has no ENGINE list")


PROBE = """
import json, sys
{before}
import importlib, stirshaken_proxy
files = {{name: importlib.import_module(name).__file__ for name in sys.argv[1:]}}
print(json.dumps({{"engine": stirshaken_proxy.engine_core(), "files": files}}))
"""


def probe(modules: list[str], *, core: str | None = None, before: str = "") -> dict[str, object]:
    """Import ``modules`` in a new interpreter; how the engine runs there and each module's
    file."""
    env = {k: v for k, v in os.environ.items() if k != "STIRSHAKEN_CORE"}
    if core is not None:
        env["STIRSHAKEN_CORE"] = core
    done = subprocess.run([sys.executable, "-c", PROBE.format(before=before), *modules],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=True)
    result: dict[str, object] = json.loads(done.stdout)
    return result


def compiled(path: str) -> bool:
    return path.endswith(tuple(EXTENSION_SUFFIXES))


def test_the_engine_is_compiled_where_a_compiler_was() -> None:
    # scripts/setup.sh builds it on every machine it installs; STIRSHAKEN_CORE=python marks a
    # run that is meant to be without it.
    if os.environ.get("STIRSHAKEN_CORE") == "python":
        pytest.skip("a run of the Python core")
    modules = engine_modules()
    assert "stirshaken_proxy.engine.proxy" in modules
    seen = probe(modules)
    assert seen["engine"] == "compiled"
    files = seen["files"]
    assert isinstance(files, dict)
    assert all(compiled(files[name]) for name in modules), files
    # The module this process runs the tests with is the compiled one too.
    import stirshaken_proxy.engine.proxy as proxy

    assert compiled(proxy.__file__ or "") and stirshaken_proxy.engine_core() == "compiled"


def test_the_python_core_imports_every_engine_module_from_its_source() -> None:
    modules = engine_modules()
    seen = probe([*modules, "stirshaken_proxy.sip._cmessage"], core="python")
    assert seen["engine"] == "python"
    files = seen["files"]
    assert isinstance(files, dict)
    assert [name for name in modules if not files[name].endswith(".py")] == []
    # The C modules have no source of their name: they are still there, for use_core.
    assert compiled(files["stirshaken_proxy.sip._cmessage"])


def test_an_engine_that_does_not_load_is_run_from_its_source() -> None:
    """A compiled engine whose shared library cannot be imported (a partial build, a library
    of another Python) is not an import error: the interpreter runs the source."""
    seen = probe(["stirshaken_proxy.engine.proxy", "stirshaken_proxy.policy.health"],
                 before='sys.modules["stirshaken_proxy._engine__mypyc"] = None')
    assert seen["engine"] == "python"
    files = seen["files"]
    assert isinstance(files, dict)
    assert all(path.endswith(".py") for path in files.values()), files


def test_engine_core_names_what_this_process_runs() -> None:
    import stirshaken_proxy.engine.proxy as proxy

    expected = "compiled" if compiled(proxy.__file__ or "") else "python"
    assert stirshaken_proxy.engine_core() == expected
