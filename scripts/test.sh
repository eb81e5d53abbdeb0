#!/usr/bin/env bash
# Installs everything (with the test tools) and runs lint, type checks and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
.venv/bin/ruff check stirshaken_proxy tests bench fuzz
.venv/bin/mypy
.venv/bin/pytest -q "$@"
