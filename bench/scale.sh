#!/usr/bin/env bash
# Scale check: N (default 18,000) idle WebSocket (or SSE) connections to one sidewire,
# held HOLD seconds (default 60) with heartbeats running, then every connection must
# receive a publish. Prints server RSS per connection, server CPU while idle, and the
# loadgen result. 127.0.0.1 only; every process is stopped on exit.
#
#   bench/scale.sh                 # 18,000 WebSocket connections, 60 s
#   N=18000 KIND=sse bench/scale.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-18000}
HOLD=${HOLD:-60}
KIND=${KIND:-ws}
HEARTBEAT=${HEARTBEAT:-10s}
OUT=${OUT:-$ROOT/bench/out/scale}
mkdir -p "$OUT"
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
PORT=$(free_port); ADMIN=$(free_port)
cat >"$OUT/config.yaml" <<YAML
listen: "127.0.0.1:$PORT"
admin: { listen: "127.0.0.1:$ADMIN" }
auth: { anonymous: true }
channels: [{ match: "*", public: true, history: { size: 10, ttl: 1m } }]
limits: { max_connections: 100000, max_connections_per_ip: 100000 }
heartbeat: { interval: $HEARTBEAT, timeout: 60s }
YAML
(cd "$ROOT" && cargo build --release --bin sidewire --example loadgen) >&2
ulimit -n 20000
RUST_LOG=warn "$ROOT/target/release/sidewire" --config "$OUT/config.yaml" 2>"$OUT/sidewire.log" &
SW=$!
trap 'kill $SW 2>/dev/null || true; kill $SAMPLER 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null && break; sleep 0.1; done
ticks() { awk '{print $14+$15}' "/proc/$SW/stat"; }
# Server CPU during the middle of the hold (connections idle, heartbeats running).
( sleep $((HOLD / 2)); a=$(ticks); sleep 20; b=$(ticks)
  echo "idle CPU over 20 s: $(( (b - a) )) ticks ($(awk -v t=$((b - a)) 'BEGIN{printf "%.2f", t/100/20*100}')% of one core)" >"$OUT/idle_cpu.txt"
  grep VmRSS "/proc/$SW/status" >>"$OUT/idle_cpu.txt" ) &
SAMPLER=$!
args=(--subscribers "$N" --messages 5 --rate 1 --hold "$HOLD" --sources 16 --concurrency 64 --timeout 900
      --pub-url "http://127.0.0.1:$ADMIN/publish" --server-pid "$SW" --label "scale/$KIND/$N")
if [[ $KIND == sse ]]; then
  args+=(--sse-url "http://127.0.0.1:$PORT/events?channel=bench")
else
  args+=(--ws-url "ws://127.0.0.1:$PORT/ws" --ws-subscribe-frame '{"type":"subscribe","channel":"bench"}')
fi
"$ROOT/target/release/examples/loadgen" "${args[@]}" >"$OUT/result.json"
wait $SAMPLER || true
cat "$OUT/idle_cpu.txt"
cat "$OUT/result.json"
curl -s "http://127.0.0.1:$ADMIN/metrics" | grep -E '^sidewire_(realtime_connections|evictions_total|subscriptions)' || true
