#!/usr/bin/env bash
# Slow clients (docs/reliability.md): slowhttptest's slow headers (slowloris), slow body
# (R-U-Dead-Yet) and slow read against sidewire's public listener (pass-through to
# tools/plain_backend.py) and its admin listener, one attack at a time, while
# tools/steady.py sends normal requests from another loopback address (127.0.0.2, so the
# attacker's per-address limit is not the one measured) and counts how many are served.
# PASS when at least MIN_SERVED_PCT % (default 99) are served in every phase and sidewire
# is still up. About 2.5 minutes.
#
#   checks/slow.sh
#   CONNS=2000 LENGTH=30 checks/slow.sh      # attack connections per phase, seconds per phase
#   PHASES="public-slow-read" checks/slow.sh  # only the named phases
source "$(dirname "$0")/lib.sh"

CONNS=${CONNS:-1000}
LENGTH=${LENGTH:-18}
MIN_SERVED_PCT=${MIN_SERVED_PCT:-99}
need slowhttptest slowhttptest
need curl curl
sw_build
sw_ports
sw_spawn python3 tools/plain_backend.py "$BACKEND_PORT" 2>/dev/null
wait_port "$BACKEND_PORT" || die "backend did not start"
sw_start "listen: \"127.0.0.1:$PUBLIC_PORT\"
admin: { listen: \"127.0.0.1:$ADMIN_PORT\" }
backend: { url: \"http://127.0.0.1:$BACKEND_PORT\" }"

P="http://127.0.0.1:$PUBLIC_PORT"
A="http://127.0.0.1:$ADMIN_PORT"
say "sidewire $(git describe --always --dirty 2>/dev/null) public $P admin $A; $CONNS attack connections, ${LENGTH}s per phase"
say "limits: defaults (header_read_timeout 10s, body_read_timeout 30s, max_open_connections_per_ip 2000)"
printf '%-22s %-9s %-9s %-9s %-28s %-8s %-7s %s\n' phase attack_max attack_end served p50/p99/max_ms rss_max cpu_s result
fail=0
# phase NAME URL_FOR_STEADY slowhttptest-args...
phase() {
  local name=$1 steady_url=$2
  if [ -n "${PHASES:-}" ] && [[ " $PHASES " != *" $name "* ]]; then return 0; fi
  shift 2
  local csv="$SW_TMP/$name"
  sw_sample_start "$SW_PID"
  slowhttptest "$@" -c "$CONNS" -r 250 -l "$LENGTH" -p 3 -g -o "$csv" >"$SW_TMP/$name.out" 2>&1 &
  local attack=$!
  SW_PIDS+=("$attack")
  sleep 3 # let the attack open its connections first
  local steady
  steady=$(python3 tools/steady.py --url "$steady_url" --duration $((LENGTH - 4)) --interval 0.05 --timeout 5)
  wait "$attack" || true
  local usage
  usage=$(sw_sample_stop "$SW_PID")
  local attempted served p50 p99 max
  read -r attempted served _ p50 p99 max _ <<<"$steady"
  # slowhttptest's CSV: seconds,closed,pending,connected,service_available
  local cmax cend
  cmax=$(awk -F, 'NR > 1 && $4 > m { m = $4 } END { print m + 0 }' "$csv.csv" 2>/dev/null || echo "?")
  cend=$(awk -F, 'NR > 1 { c = $4 } END { print c + 0 }' "$csv.csv" 2>/dev/null || echo "?")
  local pct ok=PASS
  pct=$(awk -v s="$served" -v a="$attempted" 'BEGIN { printf "%.1f", a ? 100 * s / a : 0 }')
  awk -v p="$pct" -v m="$MIN_SERVED_PCT" 'BEGIN { exit !(p >= m) }' || ok=FAIL
  sw_alive || ok="FAIL (sidewire exited)"
  [ "$ok" = PASS ] || fail=1
  read -r rss cpu wall <<<"$usage"
  printf '%-22s %-9s %-9s %-9s %-28s %-8s %-7s %s\n' "$name" "$cmax" "$cend" "$served/$attempted" \
    "$p50/$p99/$max" "$((rss / 1024))MiB" "$cpu" "$ok ($pct%)"
  sleep 2
}

phase public-slow-headers "$P/small" -H -i 5 -x 24 -u "$P/small"
phase public-slow-body "$P/small" -B -i 5 -x 24 -s 65536 -u "$P/upload"
phase public-slow-read "$P/small" -X -k 3 -n 5 -w 512 -y 1024 -z 32 -u "$P/big"
phase admin-slow-headers "$A/healthz" -H -i 5 -x 24 -u "$A/healthz"
phase admin-slow-body "$A/healthz" -B -i 5 -x 24 -s 65536 -u "$A/publish"
phase admin-slow-read "$A/healthz" -X -k 3 -n 5 -w 512 -y 1024 -z 32 -u "$A/metrics"

say "attack_max/attack_end: attack connections open at the peak / at the end (slowhttptest's count)"
say "served: normal requests answered 2xx within 5 s from 127.0.0.2 during the attack"
if [ "$fail" = 0 ]; then say "slow: PASS"; else say "slow: FAIL"; fi
exit "$fail"
