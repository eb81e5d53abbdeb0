#!/bin/sh
# Runs stirshaken-proxy. For `run`, creates development signing keys in var/keys on first
# start unless STIRSHAKEN_DEV_KEYS=0 (production mounts its own key and certificate).
set -eu
if [ "${1:-}" = "run" ] && [ "${STIRSHAKEN_DEV_KEYS:-1}" = "1" ] && [ ! -f var/keys/key.pem ]; then
  stirshaken-proxy keys init var/keys --spc "${STIRSHAKEN_DEV_SPC:-123A}"
fi
exec stirshaken-proxy "$@"
