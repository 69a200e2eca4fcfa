#!/usr/bin/env bash
# HTTP/2 abuse (docs/reliability.md): tools/h2flood.py (hand-built frames over h2c prior
# knowledge) runs rapid reset (CVE-2023-44487), a reset storm that never reads, a
# CONTINUATION flood, a stream flood past SETTINGS_MAX_CONCURRENT_STREAMS, a SETTINGS
# flood and a PING flood against the public listener, one at a time, while
# tools/steady.py (HTTP/1.1 from 127.0.0.2) and h2load (h2c) send normal requests.
# Prints what sidewire answered the attacker (GOAWAY / RST_STREAM codes, close), the
# normal requests served, and sidewire's peak RSS and CPU per phase.
# PASS when >= MIN_SERVED_PCT % (default 99) of the normal requests are served in every
# phase, peak RSS stays under MAX_RSS_MB (default 256) and sidewire is still up.
#
#   checks/h2abuse.sh                 # about 1.5 minutes
#   DURATION=20 CONNS=8 checks/h2abuse.sh
source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-10}
CONNS=${CONNS:-4}
MIN_SERVED_PCT=${MIN_SERVED_PCT:-99}
MAX_RSS_MB=${MAX_RSS_MB:-256}
need h2load nghttp2-client
need curl curl
sw_build
sw_ports
sw_spawn python3 tools/plain_backend.py "$BACKEND_PORT" 2>/dev/null
wait_port "$BACKEND_PORT" || die "backend did not start"
sw_start "listen: \"127.0.0.1:$PUBLIC_PORT\"
admin: { listen: \"127.0.0.1:$ADMIN_PORT\" }
backend: { url: \"http://127.0.0.1:$BACKEND_PORT\" }"

P="http://127.0.0.1:$PUBLIC_PORT"
say "sidewire $(git describe --always --dirty 2>/dev/null) public $P; $CONNS attacking connections x ${DURATION}s per phase; idle RSS $(($(sw_rss_kb "$SW_PID") / 1024)) MiB"
fail=0
phase() {
  local mode=$1
  shift
  sw_sample_start "$SW_PID"
  python3 tools/h2flood.py "$mode" --port "$PUBLIC_PORT" --conns "$CONNS" --duration "$DURATION" "$@" >"$SW_TMP/$mode.json" &
  local attack=$!
  SW_PIDS+=("$attack")
  sleep 1
  h2load -c 2 -m 2 --rps 10 -D $((DURATION - 2)) "$P/small" >"$SW_TMP/$mode.h2load" 2>&1 &
  local h2l=$!
  SW_PIDS+=("$h2l")
  local steady
  steady=$(python3 tools/steady.py --url "$P/small" --duration $((DURATION - 2)) --interval 0.05 --timeout 5)
  wait "$attack" || true
  wait "$h2l" || true
  local usage attempted served h2ok h2total rss cpu wall ok=PASS
  usage=$(sw_sample_stop "$SW_PID")
  read -r rss cpu wall <<<"$usage"
  read -r attempted served _ <<<"$steady"
  # h2load: "requests: 160 total, 160 started, 160 done, 160 succeeded, 0 failed, ..."
  h2total=$(awk '/^requests:/ { print $2 }' "$SW_TMP/$mode.h2load")
  h2ok=$(awk '/^requests:/ { print $8 }' "$SW_TMP/$mode.h2load")
  local all_s=$((served + ${h2ok:-0})) all_a=$((attempted + ${h2total:-0}))
  local pct
  pct=$(awk -v s="$all_s" -v a="$all_a" 'BEGIN { printf "%.1f", a ? 100 * s / a : 0 }')
  awk -v p="$pct" -v m="$MIN_SERVED_PCT" 'BEGIN { exit !(p >= m) }' || ok=FAIL
  [ $((rss / 1024)) -le "$MAX_RSS_MB" ] || ok=FAIL
  sw_alive || ok="FAIL (sidewire exited)"
  [ "$ok" = PASS ] || fail=1
  say ""
  say "== $mode: $ok"
  say "   normal requests served: h1 $served/$attempted, h2 ${h2ok:-?}/${h2total:-?} ($pct%)"
  say "   sidewire: peak RSS $((rss / 1024)) MiB, CPU ${cpu}s over ${wall}s"
  say "   attacker saw: $(cat "$SW_TMP/$mode.json")"
  sleep 1
}

phase rapid-reset
phase reset-storm
phase continuation
phase stream-flood --streams 20000
phase settings
phase ping
say ""
say "final RSS $(($(sw_rss_kb "$SW_PID") / 1024)) MiB, threads $(sw_threads "$SW_PID"), fds $(sw_fds "$SW_PID")"
if [ "$fail" = 0 ]; then say "h2abuse: PASS"; else say "h2abuse: FAIL"; fi
exit "$fail"
