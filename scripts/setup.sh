#!/usr/bin/env bash
# Installs what stirshaken-proxy needs on a fresh Debian machine: SIPp and secsipidx from
# Debian's packages (and Kamailio for the tests), and the package itself in a virtual
# environment (.venv).
# Usage: scripts/setup.sh [test]   ("test" adds the test and lint tools)
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
command -v secsipidx >/dev/null 2>&1 || need+=(secsipidx)
# The tests run Kamailio as the SBC in front of the SIP 302 service (and with its TLS module as
# the TLS peer), and their own PostgreSQL
# and Redis servers (shared state of several instances).
if [ "${1:-}" = "test" ]; then
  command -v kamailio >/dev/null 2>&1 || need+=(kamailio)
  # Kamailio's TLS module: the TLS peer on both sides in tests/service/test_tls.py.
  ls /usr/lib/*/kamailio/modules/tls.so >/dev/null 2>&1 || need+=(kamailio-tls-modules)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  # The Trust Center's browser tests drive Debian's Chromium with Playwright.
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
fi
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# The compiled core's ES256 signer links OpenSSL's libcrypto (setup.py; optional like the rest).
[ -f /usr/include/openssl/ecdsa.h ] || need+=(libssl-dev)
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
extra=""
[ "${1:-}" = "test" ] && extra="[test]"
.venv/bin/pip install -q --disable-pip-version-check -e ".${extra}"
# The tests' STI-CA: acme2certifier in an environment of its own (it pins pyOpenSSL).
if [ "${1:-}" = "test" ]; then
  [ -x .venv-acme/bin/python ] || python3 -m venv .venv-acme
  .venv-acme/bin/pip install -q --disable-pip-version-check "acme2certifier==0.46"
fi
