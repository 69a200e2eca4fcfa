#!/usr/bin/env bash
# Connection-cycle check (issue 9 §6, docs/reliability.md "Connection cycles"): what a
# WebSocket, SSE or long-poll session leaves behind once its client is gone.
#
# Builds sidewire and examples/cycles.rs (release, without LTO: this checks leaks, not
# speed), starts sidewire on 127.0.0.1 with a temp config (anonymous clients, public
# channels, no backend needed), runs a warm-up round, measures (fds, RSS, gauges), runs
# the full set of connect/subscribe/disconnect cycles, lets the sessions drain, measures
# again, and prints PASS or FAIL (exit 1). Criteria:
#   - fd count back to the warm-up baseline (+ FD_SLACK);
#   - RSS drift < RSS_PCT % of the warm-up RSS, or < RSS_ABS_KIB (the allocator may keep
#     freed pages; the report says which criterion held);
#   - sidewire_realtime_connections, sidewire_subscriptions and the subscribers in
#     GET /channels back to 0; sidewire_open_connections back to the baseline.
#
#   checks/cycles.sh                 # 100000 cycles
#   CYCLES=20000 checks/cycles.sh    # a quicker run
# Env: CYCLES (100000), WARMUP (10000), CONCURRENCY (32), DRAIN_TIMEOUT (45 s),
# RUN_TIMEOUT (240 s for the measured run), RSS_PCT (5), RSS_ABS_KIB (1024), FD_SLACK (0).
set -euo pipefail
cd "$(dirname "$0")/.."

CYCLES=${CYCLES:-100000}
WARMUP=${WARMUP:-10000}
CONCURRENCY=${CONCURRENCY:-32}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-45}
RUN_TIMEOUT=${RUN_TIMEOUT:-240}
RSS_PCT=${RSS_PCT:-5}
RSS_ABS_KIB=${RSS_ABS_KIB:-1024}
FD_SLACK=${FD_SLACK:-0}

CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
  cargo build --release --quiet --bin sidewire --example cycles

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PUBLIC=$(free_port)
ADMIN=$(free_port)
dir=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

cat >"$dir/config.yaml" <<EOF
listen: "127.0.0.1:$PUBLIC"
admin: { listen: "127.0.0.1:$ADMIN" }
backend: { url: "http://127.0.0.1:9" }
auth: { anonymous: true }
routes:
  - { path: "/ws", transport: websocket }
  - { path: "/events", transport: sse }
  - { path: "/poll", transport: longpoll }
channels:
  - { match: "cycles:*", public: true, history: { size: 10, ttl: 1m } }
EOF

RUST_LOG=warn target/release/sidewire --config "$dir/config.yaml" 2>"$dir/server.log" &
server_pid=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$ADMIN/healthz" >/dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$dir/server.log" >&2; exit 1; }
  sleep 0.1
done

fds() { ls "/proc/$server_pid/fd" | wc -l; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$server_pid/status"; }
# Sum of every series of a metric (all label values).
metric() { curl -fsS "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $NF} END {print s + 0}'; }
subscribers() { curl -fsS "http://127.0.0.1:$ADMIN/channels" | jq '[.channels[].subscribers] | add // 0'; }
gauges() { echo "$(metric sidewire_realtime_connections) $(metric sidewire_subscriptions) $(subscribers)"; }
# Waits until no realtime session is left and the fd count is at most $1.
drain() {
  local deadline=$((SECONDS + DRAIN_TIMEOUT))
  while [ $SECONDS -lt $deadline ]; do
    [ "$(gauges)" = "0 0 0" ] && [ "$(fds)" -le "$1" ] && return 0
    sleep 0.5
  done
  return 1
}
run() {
  target/release/examples/cycles --addr "127.0.0.1:$PUBLIC" --cycles "$1" --concurrency "$CONCURRENCY" --timeout "$2"
}

fd_start=$(fds)
echo "cycles: sidewire pid $server_pid on 127.0.0.1:$PUBLIC, $fd_start fds at start; warm-up $WARMUP cycles" >&2
run "$WARMUP" 120 >/dev/null
drain "$((fd_start + 64))" || true
sleep 1
fd_base=$(fds)
rss_base=$(rss_kib)
open_base=$(metric sidewire_open_connections)
echo "cycles: baseline fds $fd_base, RSS $rss_base KiB, open connections $open_base; measuring $CYCLES cycles" >&2

fail=()
result=$(run "$CYCLES" "$RUN_TIMEOUT") || fail+=("driver: $result")
drained=yes
drain "$((fd_base + FD_SLACK))" || drained=no
sleep 1
fd_after=$(fds)
rss_after=$(rss_kib)
read -r rt_after subs_after chan_after <<<"$(gauges)"
open_after=$(metric sidewire_open_connections)

drift=$((rss_after - rss_base))
abs_drift=${drift#-}
pct=$(awk -v d="$drift" -v b="$rss_base" 'BEGIN {printf "%.2f", 100 * d / b}')
if awk -v d="$abs_drift" -v b="$rss_base" -v p="$RSS_PCT" 'BEGIN {exit !(100 * d < p * b)}'; then
  rss_held="< ${RSS_PCT}%"
elif [ "$abs_drift" -lt "$RSS_ABS_KIB" ]; then
  rss_held="< ${RSS_ABS_KIB} KiB"
else
  rss_held=none
  fail+=("RSS drift ${drift} KiB (${pct}%)")
fi
[ "$fd_after" -le "$((fd_base + FD_SLACK))" ] || fail+=("fds $fd_base -> $fd_after")
[ "$rt_after" = 0 ] || fail+=("sidewire_realtime_connections $rt_after")
[ "$subs_after" = 0 ] || fail+=("sidewire_subscriptions $subs_after")
[ "$chan_after" = 0 ] || fail+=("GET /channels subscribers $chan_after")
[ "$open_after" -le "$open_base" ] || fail+=("sidewire_open_connections $open_base -> $open_after")
grep -E ' (ERROR|error) ' "$dir/server.log" >&2 && fail+=("errors in the server log")

echo "cycles: driver $result"
echo "cycles: fds start $fd_start, baseline $fd_base, after $fd_after (drained: $drained)"
echo "cycles: RSS baseline $rss_base KiB, after $rss_after KiB, drift $drift KiB ($pct%), criterion held: $rss_held"
echo "cycles: after: realtime_connections $rt_after, subscriptions $subs_after, /channels subscribers $chan_after, open_connections $open_base -> $open_after"
if [ ${#fail[@]} -eq 0 ]; then
  echo "PASS"
else
  printf 'FAIL: %s\n' "${fail[@]}"
  exit 1
fi
