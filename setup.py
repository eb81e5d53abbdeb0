"""The compiled core beside the pure-Python package, built when a C compiler and Python's
headers are there and skipped otherwise (the Python core is used then, and the service says
so at start):

- the SIP core in C (the CPython API): parser, transactions, datagram path; its ES256 signer
  also needs OpenSSL's headers (Debian's libssl-dev), without them signing stays with
  `cryptography`;
- the engine compiled by mypyc: the modules of ENGINE, the same source the interpreter runs
  (the reference), turned into C from their type annotations. STIRSHAKEN_CORE=python (or
  `[sip] core = "python"`) imports their source instead."""

import sys

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror=implicit"]

# The per-message path of the engine and the STI core under it.
ENGINE = [
    "stirshaken_proxy/engine/proxy.py",
    "stirshaken_proxy/engine/sti_leg.py",
    "stirshaken_proxy/engine/sip_sti.py",
    "stirshaken_proxy/engine/records.py",
    "stirshaken_proxy/engine/calls.py",
    "stirshaken_proxy/engine/flood.py",
    "stirshaken_proxy/engine/sources.py",
    "stirshaken_proxy/stir/signing.py",
    "stirshaken_proxy/stir/passport.py",
    "stirshaken_proxy/sip/numbers.py",
    "stirshaken_proxy/sip/uri.py",
    "stirshaken_proxy/sip/message.py",
    "stirshaken_proxy/policy/health.py",
    "stirshaken_proxy/policy/attestation.py",
    "stirshaken_proxy/policy/inventory.py",
    "stirshaken_proxy/policy/accounts.py",
    "stirshaken_proxy/policy/presence.py",
    "stirshaken_proxy/policy/digest.py",
    "stirshaken_proxy/stir/verify.py",
    "stirshaken_proxy/stir/verification.py",
    "stirshaken_proxy/stir/rcd.py",
    "stirshaken_proxy/engine/redirect.py",
    "stirshaken_proxy/stats.py",
]


def compiled_engine() -> list[Extension]:
    """mypyc's extensions for ENGINE (optional like the rest); none where mypyc or a compiler
    is missing, or its type check fails (the interpreter runs the source then)."""
    try:
        from mypyc.build import mypycify

        # pip's build environment has no third-party package (cryptography, aiohttp, ...):
        # what they hand back is a Python object (Any) there, and the strict checks that
        # would complain of it are left to the project's own type check (CI's mypy run).
        relaxed = ["--ignore-missing-imports", "--no-warn-return-any",
                   "--no-warn-unused-ignores", "--allow-subclassing-any",
                   "--allow-untyped-decorators"]
        extensions = mypycify([*ENGINE, *relaxed], group_name="stirshaken_proxy._engine",
                              opt_level="3")
    except (Exception, SystemExit) as exc:  # noqa: BLE001 (optional, like the C modules)
        sys.stderr.write(f"setup.py: the engine is not compiled ({exc!r}); the interpreter "
                         "runs its source\n")
        return []
    for ext in extensions:
        ext.optional = True
    return extensions


setup(ext_modules=[
    Extension("stirshaken_proxy.sip._cmessage", ["stirshaken_proxy/sip/_cmessage.c"],
              extra_compile_args=FLAGS, optional=True),
    Extension("stirshaken_proxy.transaction._cmachine",
              ["stirshaken_proxy/transaction/_cmachine.c"], extra_compile_args=FLAGS,
              optional=True),
    Extension("stirshaken_proxy.io._cpump", ["stirshaken_proxy/io/_cpump.c"],
              extra_compile_args=FLAGS, optional=True),
    Extension("stirshaken_proxy.stir._es256", ["stirshaken_proxy/stir/_es256.c"],
              extra_compile_args=FLAGS, libraries=["crypto"], optional=True),
    *compiled_engine(),
])
