#!/usr/bin/env bash
# Installs everything and runs the proxy on config/example.toml (development keys, asked
# for by its [[signing]] dev_spc, and the SQLite inventory are created on first run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/stirshaken-proxy run --config "${CONFIG:-config/example.toml}"
