"""stirshaken-proxy: STIR/SHAKEN signing and verification service for SIP.

The engine's modules may be compiled by mypyc (setup.py: the same source, turned into C);
the interpreter then imports the compiled module before the source. With
STIRSHAKEN_CORE=python in the environment (the CLI sets it and restarts itself for
``[sip] core = "python"``), or where the compiled engine does not load, each of them is
imported from its source instead: the reference."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec, PathFinder
from importlib.util import spec_from_file_location
from types import ModuleType

__version__ = "0.1.0"
_COMPILED_SUFFIXES = tuple(EXTENSION_SUFFIXES)


def _engine_loads() -> bool:
    """The compiled engine's shared library is there and loads."""
    try:
        __import__(__name__ + "._engine__mypyc")
    except ImportError:
        return False
    return True


class _FromSource:
    """A finder before the path's: a module of this package compiled by mypyc comes from its
    source file. (The C modules, which have no source of the same name, are not touched.)"""

    @staticmethod
    def find_spec(name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if not name.startswith(__name__ + "."):
            return None
        spec = PathFinder.find_spec(name, path)
        origin = spec.origin if spec is not None else None
        if origin is None or not origin.endswith(_COMPILED_SUFFIXES):
            return None
        source = os.path.join(os.path.dirname(origin), name.rpartition(".")[2] + ".py")
        return spec_from_file_location(name, source) if os.path.exists(source) else None


# Why the engine's modules come from their source (None: compiled where they were built).
FROM_SOURCE: str | None = (
    "STIRSHAKEN_CORE=python" if os.environ.get("STIRSHAKEN_CORE") == "python"
    else None if _engine_loads() else "not compiled in this install, or it does not load")
if FROM_SOURCE is not None:
    sys.meta_path.insert(0, _FromSource)


def engine_core() -> str:
    """How the engine runs: ``compiled`` (mypyc) or ``python`` (its source)."""
    module = sys.modules.get(__name__ + ".engine.proxy")
    origin = getattr(module, "__file__", None) or ""
    return "compiled" if origin.endswith(_COMPILED_SUFFIXES) else "python"
