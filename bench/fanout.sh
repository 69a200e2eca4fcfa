#!/usr/bin/env bash
# Fan-out benchmark: sidewire vs Nchan vs Pushpin, SSE and WebSocket, in one run.
#
#   bench/fanout.sh                                  # everything (≈ 10–15 min)
#   SYSTEMS="sidewire nchan" SIZES=1000 bench/fanout.sh
#   TRANSPORTS=ws REPEATS=2 BUILD=0 bench/fanout.sh
#
# For each size × transport × system (systems interleaved, so machine drift hits them
# alike) it starts the server fresh from a generated config in a temp dir, runs
# target/release/examples/loadgen against it (N subscribers, M messages at RATE msg/s,
# idle connections held HOLD s for the memory reading), stops the server, and finally
# prints a table and writes it to bench/out/fanout.md (raw JSON lines: bench/out/fanout.jsonl).
# Everything listens on and targets 127.0.0.1 only; every started process is killed on exit.
#
# Environment overrides:
#   SYSTEMS="sidewire nchan pushpin"  TRANSPORTS="sse ws"  SIZES="1000 10000"
#   MESSAGES_1000=200 MESSAGES_10000=50 (MESSAGES for any other size, default 100)
#   RATE=100 HOLD=10 REPEATS=1 SOURCES=8 CONCURRENCY=64 RUN_TIMEOUT=600
#   BUILD=1 (0: use the existing release binaries)  PORT_BASE=18100  OUT=bench/out
#   KEEP_WORK=1 (keep the temp dir with configs and server logs)
#   SIDEWIRE_BIN / LOADGEN_BIN (use other binaries)
#   SIDEWIRE_B_BIN: a second sidewire build, run as system "sidewire_b" (same config), to
#     compare two builds in one run, e.g. SYSTEMS="sidewire_b sidewire nchan"
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SYSTEMS=${SYSTEMS:-"sidewire nchan pushpin"}
TRANSPORTS=${TRANSPORTS:-"sse ws"}
SIZES=${SIZES:-"1000 10000"}
RATE=${RATE:-100}
HOLD=${HOLD:-10}
REPEATS=${REPEATS:-1}
SOURCES=${SOURCES:-8}
CONCURRENCY=${CONCURRENCY:-64}
RUN_TIMEOUT=${RUN_TIMEOUT:-600}
BUILD=${BUILD:-1}
OUT=${OUT:-$ROOT/bench/out}
PORT_BASE=${PORT_BASE:-18100}
SIDEWIRE_BIN=${SIDEWIRE_BIN:-$ROOT/target/release/sidewire}
LOADGEN_BIN=${LOADGEN_BIN:-$ROOT/target/release/examples/loadgen}
SIDEWIRE_B_BIN=${SIDEWIRE_B_BIN:-}

SW_PORT=$((PORT_BASE + 80))
SW_ADMIN=$((PORT_BASE + 90))
NCHAN_PORT=$((PORT_BASE + 180))
PP_PORT=$((PORT_BASE + 280))
GRIP_PORT=$((PORT_BASE + 299))
PP_HANDLER=$((PORT_BASE + 460)) # 460..463: push_in, push_in_http, push_in_sub, command

messages_for() {
    case $1 in
    1000) echo "${MESSAGES_1000:-200}" ;;
    10000) echo "${MESSAGES_10000:-50}" ;;
    *) echo "${MESSAGES:-100}" ;;
    esac
}

BENCH_NAME=fanout
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"

WORK=$(mktemp -d /tmp/sidewire-fanout.XXXXXX)
STARTED=() # every pid this script started (servers, backend)

cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do stop_pid "$pid"; done
    if [[ ${KEEP_WORK:-0} == 1 ]]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

children() { # pid -> its direct children
    pgrep -P "$1" | tr "\n" " " || true
}

# ---------------------------------------------------------------- sidewire
start_sidewire() {
    port_free "$SW_PORT" && port_free "$SW_ADMIN" || die "ports $SW_PORT/$SW_ADMIN busy"
    local dir=$WORK/sidewire
    mkdir -p "$dir"
    cat >"$dir/config.yaml" <<EOF
listen: "127.0.0.1:$SW_PORT"
shutdown_grace: 1s
admin:
  listen: "127.0.0.1:$SW_ADMIN"
backend:
  url: "http://127.0.0.1:$((PORT_BASE + 99))"   # unused: no pass-through in this benchmark
auth:
  anonymous: true
routes:
  - { path: "/ws", transport: websocket }
  - { path: "/events", transport: sse }
channels:
  - match: "bench"
    history: { size: 16, ttl: 5m }
    public: true
limits:
  max_connections: 100000
  max_connections_per_ip: 100000
  subscriber_queue: 1024
heartbeat:
  interval: 1h
  timeout: 2h
broker:
  kind: memory
EOF
    RUST_LOG=warn "$SIDEWIRE_BIN" --config "$dir/config.yaml" >"$dir/sidewire.log" 2>&1 &
    SERVER_MAIN=$!
    STARTED+=("$SERVER_MAIN")
    wait_port "$SW_PORT" && wait_port "$SW_ADMIN" || die "sidewire did not start: $(tail -5 "$dir/sidewire.log")"
    SERVER_PIDS=$SERVER_MAIN
    SSE_URL="http://127.0.0.1:$SW_PORT/events?channel=bench"
    WS_URL="ws://127.0.0.1:$SW_PORT/ws"
    WS_FRAME='{"type":"subscribe","channel":"bench"}'
    PUB_URL="http://127.0.0.1:$SW_ADMIN/publish"
    PUB_BODY='{"channel":"bench","data":{"t":{t},"n":{n}}}'
}

stop_sidewire() { stop_pid "$SERVER_MAIN"; }

# The same server and config from another binary (bash scoping: the local is seen inside).
start_sidewire_b() {
    local SIDEWIRE_BIN=$SIDEWIRE_B_BIN
    start_sidewire
}
stop_sidewire_b() { stop_sidewire; }

# ---------------------------------------------------------------- Nchan
start_nchan() {
    port_free "$NCHAN_PORT" || die "port $NCHAN_PORT busy"
    local dir=$WORK/nchan
    rm -rf "$dir"
    mkdir -p "$dir/logs"
    {
        echo "worker_processes auto;"
        [[ $(id -u) == 0 ]] && echo "user root;"
        cat <<EOF
daemon off;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
worker_rlimit_nofile 19500;
events { worker_connections 19000; multi_accept on; }
http {
  access_log off;
  client_body_temp_path $dir/tmp_body;
  proxy_temp_path $dir/tmp_proxy;
  fastcgi_temp_path $dir/tmp_fastcgi;
  uwsgi_temp_path $dir/tmp_uwsgi;
  scgi_temp_path $dir/tmp_scgi;
  server {
    listen 127.0.0.1:$NCHAN_PORT backlog=4096;
    location = /pub { nchan_publisher; nchan_channel_id \$arg_id; nchan_message_buffer_length 16; nchan_message_timeout 5m; }
    location = /sub { nchan_subscriber eventsource; nchan_channel_id \$arg_id; nchan_subscriber_first_message newest; }
    location = /ws  { nchan_subscriber websocket; nchan_channel_id \$arg_id; nchan_subscriber_first_message newest; }
  }
}
EOF
    } >"$dir/nginx.conf"
    nginx -p "$dir" -c "$dir/nginx.conf" >"$dir/logs/stdout.log" 2>&1 &
    SERVER_MAIN=$!
    STARTED+=("$SERVER_MAIN")
    wait_port "$NCHAN_PORT" || die "nginx did not start: $(tail -5 "$dir/logs/error.log" "$dir/logs/stdout.log")"
    sleep 0.5 # let every worker come up
    SERVER_PIDS="$SERVER_MAIN $(children "$SERVER_MAIN")"
    SSE_URL="http://127.0.0.1:$NCHAN_PORT/sub?id=bench"
    WS_URL="ws://127.0.0.1:$NCHAN_PORT/ws?id=bench"
    WS_FRAME=""
    PUB_URL="http://127.0.0.1:$NCHAN_PORT/pub?id=bench"
    PUB_BODY='{"t":{t},"n":{n}}'
}

stop_nchan() { stop_pid "$SERVER_MAIN"; }

# ---------------------------------------------------------------- Pushpin
GRIP_PID=""
start_pushpin() {
    local dir=$WORK/pushpin p
    for p in "$PP_PORT" $((PP_HANDLER)) $((PP_HANDLER + 1)) $((PP_HANDLER + 2)) $((PP_HANDLER + 3)); do
        port_free "$p" || die "port $p busy"
    done
    if [[ -z $GRIP_PID ]]; then
        port_free "$GRIP_PORT" || die "port $GRIP_PORT busy"
        python3 "$HERE/grip_backend.py" "$GRIP_PORT" >"$WORK/grip_backend.log" 2>&1 &
        GRIP_PID=$!
        STARTED+=("$GRIP_PID")
        wait_port "$GRIP_PORT" || die "GRIP backend did not start"
    fi
    rm -rf "$dir"
    mkdir -p "$dir/run" "$dir/log"
    # Debian's internal.conf points at a system-wide zurl that does not run: use our own.
    sed -e 's#^zurl_out_specs=.*#zurl_out_specs=ipc://{rundir}/{ipc_prefix}zurl-in#' \
        -e 's#^zurl_out_stream_specs=.*#zurl_out_stream_specs=ipc://{rundir}/{ipc_prefix}zurl-in-stream#' \
        -e 's#^zurl_in_specs=.*#zurl_in_specs=ipc://{rundir}/{ipc_prefix}zurl-out#' \
        /usr/lib/pushpin/internal.conf >"$dir/internal.conf"
    echo "* 127.0.0.1:$GRIP_PORT,over_http" >"$dir/routes"
    cat >"$dir/pushpin.conf" <<EOF
[global]
include=$dir/internal.conf
rundir=$dir/run
ipc_prefix=pushpin-
port_offset=0
stats_connection_ttl=120

[runner]
services=condure,zurl,pushpin-proxy,pushpin-handler
http_port=127.0.0.1:$PP_PORT
logdir=$dir/log
log_level=2
client_buffer_size=8192
client_maxconn=50000
condure_bin=condure
zurl_bin=zurl

[proxy]
routesfile=routes
debug=false
auto_cross_origin=false
accept_x_forwarded_protocol=false
set_x_forwarded_protocol=proto-only
x_forwarded_for=
x_forwarded_for_trusted=
orig_headers_need_mark=
accept_pushpin_route=false
log_from=false
log_user_agent=false
sig_iss=pushpin
sig_key=changeme
upstream_key=
updates_check=off

[handler]
push_in_spec=tcp://127.0.0.1:$PP_HANDLER
push_in_http_addr=127.0.0.1
push_in_http_port=$((PP_HANDLER + 1))
push_in_sub_specs=tcp://127.0.0.1:$((PP_HANDLER + 2))
push_in_sub_connect=false
push_in_http_max_headers_size=10000
push_in_http_max_body_size=1000000
stats_spec=ipc://{rundir}/{ipc_prefix}stats
command_spec=tcp://127.0.0.1:$((PP_HANDLER + 3))
# no rate cap, no drops (defaults 2500/s and 25000 would cap fan-out)
message_rate=0
message_hwm=10000000
message_wait=5000
id_cache_ttl=60
connection_subscription_max=20
subscription_linger=60
stats_subscription_ttl=60
stats_report_interval=10
stats_format=tnetstring
EOF
    pushpin --config "$dir/pushpin.conf" >"$dir/log/runner.log" 2>&1 &
    SERVER_MAIN=$!
    STARTED+=("$SERVER_MAIN")
    wait_port "$PP_PORT" && wait_port $((PP_HANDLER + 1)) || die "pushpin did not start: $(tail -5 "$dir/log/runner.log")"
    sleep 1
    SERVER_PIDS="$SERVER_MAIN $(children "$SERVER_MAIN")" # runner, condure, zurl, proxy, handler
    SSE_URL="http://127.0.0.1:$PP_PORT/sse?channel=bench"
    WS_URL="ws://127.0.0.1:$PP_PORT/ws?channel=bench"
    WS_FRAME=""
    PUB_URL="http://127.0.0.1:$((PP_HANDLER + 1))/publish/"
    PUB_BODY='{"items":[{"channel":"bench","formats":{"http-stream":{"content":"data: {\"t\":{t},\"n\":{n}}\n\n"},"ws-message":{"content":"{\"t\":{t},\"n\":{n}}"}}}]}'
}

stop_pushpin() {
    local kids
    kids=$(children "$SERVER_MAIN")
    stop_pid "$SERVER_MAIN"
    for p in $kids; do kill -KILL "$p" 2>/dev/null || true; done
}

# ---------------------------------------------------------------- runs
run_one() { # system transport n m rep
    local system=$1 transport=$2 n=$3 m=$4 rep=$5 p line rc
    "start_$system"
    local args=(--subscribers "$n" --messages "$m" --rate "$RATE" --hold "$HOLD" --sources "$SOURCES"
        --concurrency "$CONCURRENCY" --timeout "$RUN_TIMEOUT" --pub-url "$PUB_URL" --pub-body "$PUB_BODY"
        --label "$system/$transport/$n/$rep")
    if [[ $transport == sse ]]; then
        args+=(--sse-url "$SSE_URL")
    else
        args+=(--ws-url "$WS_URL")
        [[ -n $WS_FRAME ]] && args+=(--ws-subscribe-frame "$WS_FRAME")
    fi
    for p in $SERVER_PIDS; do args+=(--server-pid "$p"); done
    log "$system $transport ${n}x$m (rep $rep), server pids: $SERVER_PIDS"
    rc=0
    timeout -k 5 $((RUN_TIMEOUT + 60)) "$LOADGEN_BIN" "${args[@]}" >"$WORK/one.json" 2>>"$WORK/loadgen.log" || rc=$?
    grep "^loadgen:" "$WORK/loadgen.log" >&2 || true
    : >"$WORK/loadgen.log"
    line=$(tail -n 1 "$WORK/one.json")
    [[ $line == \{* ]] || line="{\"error\":\"loadgen exited $rc without a result\"}"
    jq -c --arg s "$system" --arg tr "$transport" --argjson n "$n" --argjson m "$m" --argjson rep "$rep" \
        '. + {system: $s, transport: $tr, subscribers: $n, messages: $m, rep: $rep}' <<<"$line" >>"$RESULTS"
    "stop_$system"
    sleep 1 # let sockets settle between runs
}

main() {
    command -v jq >/dev/null || die "jq is needed"
    ulimit -n "$(ulimit -Hn)" || true
    local fds
    fds=$(ulimit -n)
    for n in $SIZES; do ((n + 200 < fds)) || die "SIZES: $n subscribers need more than the $fds fds a process may open"; done
    for s in $SYSTEMS; do
        case $s in
        sidewire) ;;
        sidewire_b) [[ -x $SIDEWIRE_B_BIN ]] || die "sidewire_b needs SIDEWIRE_B_BIN (an executable)" ;;
        nchan) [[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ]] || die "nchan needs nginx + libnginx-mod-nchan" ;;
        pushpin) command -v pushpin >/dev/null || die "pushpin is not installed" ;;
        *) die "unknown system $s (sidewire, sidewire_b, nchan, pushpin)" ;;
        esac
    done
    if [[ $BUILD == 1 ]]; then
        log "building sidewire and loadgen (release)"
        (cd "$ROOT" && cargo build --release --bin sidewire --example loadgen) >&2
    fi
    [[ -x $LOADGEN_BIN ]] || die "no $LOADGEN_BIN (run with BUILD=1)"
    mkdir -p "$OUT"
    RESULTS=$OUT/fanout.jsonl
    : >"$RESULTS"
    local started load
    started=$(date -u +%FT%TZ)
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    log "systems: $SYSTEMS; transports: $TRANSPORTS; sizes: $SIZES; rate $RATE msg/s; load average before: $load"
    for ((rep = 1; rep <= REPEATS; rep++)); do
        for n in $SIZES; do
            for transport in $TRANSPORTS; do
                for system in $SYSTEMS; do
                    run_one "$system" "$transport" "$n" "$(messages_for "$n")" "$rep"
                done
            done
        done
    done
    {
        echo "# Fan-out benchmark"
        echo
        echo "Run $started on $(nproc) cores (load average before: $load; after: $(cut -d' ' -f1-3 /proc/loadavg))."
        echo "Command: \`SYSTEMS=\"$SYSTEMS\" TRANSPORTS=\"$TRANSPORTS\" SIZES=\"$SIZES\" RATE=$RATE HOLD=$HOLD REPEATS=$REPEATS${MESSAGES_1000:+ MESSAGES_1000=$MESSAGES_1000}${MESSAGES_10000:+ MESSAGES_10000=$MESSAGES_10000} bench/fanout.sh\`${SIDEWIRE_B_BIN:+ (sidewire_b: $SIDEWIRE_B_BIN)}"
        echo
        python3 "$HERE/fanout_table.py" "$RESULTS"
    } >"$OUT/fanout.md"
    cat "$OUT/fanout.md"
    log "table: $OUT/fanout.md; raw: $RESULTS"
}

main "$@"
