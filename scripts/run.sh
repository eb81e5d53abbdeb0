#!/usr/bin/env bash
# Installs everything and runs the proxy on config/example.toml (development keys and the
# SQLite inventory are created on first run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Development signing keys on first run (an STI-CA and a certificate for SPC 123A).
[ -f var/keys/key.pem ] || .venv/bin/stirshaken-proxy keys init var/keys --spc 123A
exec .venv/bin/stirshaken-proxy run --config "${CONFIG:-config/example.toml}"
