#!/bin/sh
# Fills in deploy/kamailio/dispatcher.cfg from the environment and runs Kamailio:
#   LB_IP, LB_PORT       where dialers send (default 127.0.0.1:5100)
#   INSTANCES            the instances' [dialer] listen addresses, space-separated
#   PING_INTERVAL        seconds between OPTIONS probes (default 2)
#   TEMPLATE, OUT        the template and where the filled file goes (for tests)
set -eu
LB_IP="${LB_IP:-127.0.0.1}"
LB_PORT="${LB_PORT:-5100}"
PING_INTERVAL="${PING_INTERVAL:-2}"
TEMPLATE="${TEMPLATE:-/etc/kamailio/dispatcher.cfg.in}"
OUT="${OUT:-/tmp/kamailio}"
MODULES="${MODULES:-/usr/lib/x86_64-linux-gnu/kamailio/modules}"
mkdir -p "$OUT"
: > "$OUT/dispatcher.list"
for instance in ${INSTANCES:?INSTANCES names the instances, e.g. "127.0.0.1:5160 127.0.0.1:5260"}; do
  echo "1 sip:$instance" >> "$OUT/dispatcher.list"
done
sed -e "s#@LB_IP@#$LB_IP#g" -e "s#@LB_PORT@#$LB_PORT#g" -e "s#@PING_INTERVAL@#$PING_INTERVAL#g" \
    -e "s#@LIST_FILE@#$OUT/dispatcher.list#g" -e "s#@MODULES@#$MODULES#g" \
    "$TEMPLATE" > "$OUT/dispatcher.cfg"
if [ "${1:-}" = "--check" ]; then
  exec kamailio -c -f "$OUT/dispatcher.cfg"
fi
exec kamailio -DD -E -f "$OUT/dispatcher.cfg" -Y "$OUT" -w "$OUT"
