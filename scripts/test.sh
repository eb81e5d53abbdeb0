#!/usr/bin/env bash
# Installs everything (with the test tools) and runs lint, type checks and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
.venv/bin/ruff check stirshaken_proxy tests bench fuzz
.venv/bin/mypy
.venv/bin/pytest -q "$@"
if [ $# -eq 0 ]; then
  # The in-process suites again on the Python reference core (the service tests run both
  # cores in tests/service/test_cores.py).
  STIRSHAKEN_CORE=python .venv/bin/pytest -q -p no:cacheprovider tests/sip tests/engine \
    tests/transaction tests/stir tests/policy
fi
