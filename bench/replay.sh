#!/usr/bin/env bash
# Resume cost and WebSocket-over-HTTP/2 memory (issue 11, target 4), sidewire only.
#
#   bench/replay.sh                                   # every part, ≈ 2 min per binary
#   PARTS=replay ROUNDS=3 bench/replay.sh
#   PARTS=h2 H2_N=10000 H2_K=100 bench/replay.sh
#   BUILD=0 SIDEWIRE_BIN="/tmp/sidewire-before /tmp/sidewire-after" bench/replay.sh
#
# replay: for each round and each binary (interleaved, so machine drift hits them alike)
#   a fresh sidewire (memory broker) serves, in turn, target/release/examples/replay in
#   the modes resume-ws, live-ws, resume-sse, live-sse: N clients, M messages of history
#   (resume: all N subscribe/reconnect at once with a cursor before the first message) or
#   M messages published live at LIVE_RATE msg/s. Reported: sidewire's CPU per delivered
#   message (its threads' run time, /proc/PID/task/*/schedstat) for each, and resume/live.
#   WebSocket resume is reported as the replay alone (clients already connected, from
#   `subscribe` to the last replayed message) and with the N connects and handshakes.
# sends: for each binary, one resume-ws and one resume-sse run of SENDS_N clients with
#   `strace -f -c` attached to sidewire: its socket writes (sendto; writev is hyper's, for
#   the handshakes and the admin API's answers) per client. strace slows the server:
#   these runs count calls and measure nothing else.
# h2: for each binary, H2_N idle WebSockets held HOLD s over HTTP/1.1, then (fresh server)
#   over h2c extended CONNECT, H2_K per HTTP/2 connection; RSS after − before, per WS.
# resumed: for each binary, H2_N WebSockets over HTTP/1.1 that each resume M messages of
#   history, then held idle HOLD s: what a connection keeps after a mass reconnect.
#
# Everything listens on and targets 127.0.0.1 only; every started process is killed on
# exit; every tool run is bounded by `timeout`.
#
# Environment: PARTS="replay sends h2 resumed" N=1000 M=100 ROUNDS=2 LIVE_RATE=100 H2_N=10000 H2_K=100
#   SENDS_N=100 HOLD=10 SOURCES=8 BUILD=1 PORT_BASE=18400 OUT=bench/out TIMEOUT=120
#   SIDEWIRE_BIN (one or more binaries, space-separated)  REPLAY_BIN
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PARTS=${PARTS:-"replay sends h2 resumed"}
N=${N:-1000}
M=${M:-100}
ROUNDS=${ROUNDS:-2}
LIVE_RATE=${LIVE_RATE:-100}
SENDS_N=${SENDS_N:-100}
H2_N=${H2_N:-10000}
H2_K=${H2_K:-100}
HOLD=${HOLD:-10}
SOURCES=${SOURCES:-8}
BUILD=${BUILD:-1}
PORT_BASE=${PORT_BASE:-18400}
OUT=${OUT:-$ROOT/bench/out}
TIMEOUT=${TIMEOUT:-120}
SIDEWIRE_BIN=${SIDEWIRE_BIN:-$ROOT/target/release/sidewire}
REPLAY_BIN=${REPLAY_BIN:-$ROOT/target/release/examples/replay}

PORT=$((PORT_BASE + 80))
ADMIN=$((PORT_BASE + 90))

BENCH_NAME=replay
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"

WORK=$(mktemp -d /tmp/sidewire-replay.XXXXXX)
SERVER=""

stop_server() {
    [[ -n $SERVER ]] || return 0
    stop_pid "$SERVER"
    SERVER=""
}

cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_server() { # binary
    port_free "$PORT" && port_free "$ADMIN" || die "ports $PORT/$ADMIN busy"
    cat >"$WORK/config.yaml" <<EOF
listen: "127.0.0.1:$PORT"
shutdown_grace: 1s
admin:
  listen: "127.0.0.1:$ADMIN"
backend:
  url: "http://127.0.0.1:$((PORT_BASE + 99))"   # unused: no pass-through here
auth:
  anonymous: true
routes:
  - { path: "/ws", transport: websocket }
  - { path: "/events", transport: sse }
channels:
  - match: "replay:*"
    history: { size: $((M > 100 ? M : 100)), ttl: 10m }
    public: true
limits:
  max_connections: 100000
  max_connections_per_ip: 100000
  max_open_connections: 100000
  max_open_connections_per_ip: 100000
  subscriber_queue: 1024
heartbeat:
  interval: 1h
  timeout: 2h
broker:
  kind: memory
EOF
    RUST_LOG=warn "$1" --config "$WORK/config.yaml" >"$WORK/sidewire.log" 2>&1 &
    SERVER=$!
    wait_port "$PORT" && wait_port "$ADMIN" || die "sidewire did not start: $(tail -5 "$WORK/sidewire.log")"
}

tool() { # label mode args...: one JSON line to $RESULTS
    local label=$1 mode=$2 line rc=0
    shift 2
    timeout -k 5 $((TIMEOUT * 3 + HOLD + 30)) "$REPLAY_BIN" --mode "$mode" --addr "127.0.0.1:$PORT" \
        --admin "127.0.0.1:$ADMIN" --server-pid "$SERVER" --sources "$SOURCES" --timeout "$TIMEOUT" \
        --label "$label" "$@" >"$WORK/one.json" 2>"$WORK/tool.log" || rc=$?
    line=$(tail -n 1 "$WORK/one.json")
    if [[ $line != \{* ]]; then
        log "$label $mode failed ($rc): $(tail -3 "$WORK/tool.log")"
        line="{\"mode\":\"$mode\",\"label\":\"$label\",\"error\":\"exit $rc\"}"
    fi
    echo "$line" >>"$RESULTS"
    sleep 1 # let closed sockets settle
}

part_replay() {
    local round bin
    for ((round = 1; round <= ROUNDS; round++)); do
        for bin in $SIDEWIRE_BIN; do
            log "round $round: $bin, $N clients x $M messages"
            start_server "$bin"
            for mode in resume-ws live-ws resume-sse live-sse; do
                tool "$(basename "$bin")/$round" "$mode" -n "$N" -m "$M" --rate "$LIVE_RATE"
            done
            stop_server
        done
    done
}

calls() { # syscall: its count in the strace -c summary
    awk -v s="$1" '$NF == s { print $4; f = 1 } END { if (!f) print 0 }' "$WORK/strace.out"
}

part_sends() {
    command -v strace >/dev/null || die "the sends part needs strace"
    local bin mode st calls
    for bin in $SIDEWIRE_BIN; do
        for mode in resume-ws resume-sse; do
            log "$mode under strace: $bin, $SENDS_N clients x $M messages"
            start_server "$bin"
            strace -f -c -e trace=sendto,sendmsg,write,writev -o "$WORK/strace.out" -p "$SERVER" 2>/dev/null &
            st=$!
            sleep 1 # attached to every thread
            tool "$(basename "$bin")/sends" "$mode" -n "$SENDS_N" -m "$M"
            kill -INT "$st" 2>/dev/null || true
            wait "$st" 2>/dev/null || true
            jq -nc --arg bin "$(basename "$bin")" --arg mode "$mode" --argjson n "$SENDS_N" \
                --argjson sendto "$(calls sendto)" --argjson writev "$(calls writev)" --argjson write "$(calls write)" \
                '{"label": $bin, "mode": ("sends-" + $mode), "clients": $n, "sendto": $sendto, "writev": $writev, "write": $write}' \
                >>"$RESULTS"
            stop_server
        done
    done
}

part_h2() {
    local bin mode
    for bin in $SIDEWIRE_BIN; do
        for mode in idle-h1 idle-h2; do
            log "$mode: $bin, $H2_N WebSockets held ${HOLD}s"
            start_server "$bin"
            tool "$(basename "$bin")" "$mode" -n "$H2_N" --per-conn "$H2_K" --hold "$HOLD"
            stop_server
        done
    done
}

part_resumed() {
    local bin
    for bin in $SIDEWIRE_BIN; do
        log "idle-h1 after a replay of $M messages: $bin, $H2_N WebSockets held ${HOLD}s"
        start_server "$bin"
        tool "$(basename "$bin")" idle-h1 -n "$H2_N" -m "$M" --replay --hold "$HOLD"
        stop_server
    done
}

table() { # title header alignment rows(tsv): a markdown table, or nothing without rows
    [[ -n $4 ]] || return 0
    printf '%s\n%s\n%s\n' "$1" "$2" "$3"
    sed 's/\t/ | /g; s/^/| /; s/$/ |/' <<<"$4"
    echo
}

report() {
    table "Resume vs live, $N clients x $M messages (live at $LIVE_RATE msg/s): sidewire CPU us per delivered message" \
        "| binary/round | WS replay | WS resume (with connect) | WS live | WS ratio | SSE resume | SSE live | SSE ratio | delivered |" \
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|" \
        "$(jq -rs '
          def r2: . * 100 | round / 100;
          group_by(.label)[] | map({(.mode): .}) | add as $x
          | select($x.ResumeWs and $x.LiveWs and $x.ResumeSse and $x.LiveSse)
          | [ $x.ResumeWs.label,
              ($x.ResumeWs.replay_us_per_msg | r2), ($x.ResumeWs.resume_us_per_msg | r2),
              ($x.LiveWs.live_us_per_msg | r2),
              (($x.ResumeWs.resume_us_per_msg / $x.LiveWs.live_us_per_msg) | r2),
              ($x.ResumeSse.resume_us_per_msg | r2), ($x.LiveSse.live_us_per_msg | r2),
              (($x.ResumeSse.resume_us_per_msg / $x.LiveSse.live_us_per_msg) | r2),
              ($x.ResumeWs.received + $x.LiveWs.received + $x.ResumeSse.received + $x.LiveSse.received) ]
          | @tsv' "$RESULTS")"
    table "Socket writes under strace, $SENDS_N clients resuming $M messages (WS: the welcome is one of them)" \
        "| binary | run | clients | sendto | sendto per client | writev (hyper) |" \
        "|---|---|---:|---:|---:|---:|" \
        "$(jq -rs 'map(select(.sendto != null)) | .[]
          | [.label, .mode, .clients, .sendto, (.sendto / .clients * 100 | round / 100), .writev] | @tsv' "$RESULTS")"
    table "Idle WebSockets held ${HOLD}s: server RSS after - before, per WebSocket" \
        "| binary | mode | WebSockets | TCP connections | messages replayed to each | KiB per WS |" \
        "|---|---|---:|---:|---:|---:|" \
        "$(jq -rs 'map(select(.kib_per_ws)) | .[]
          | [.label, .mode, .websockets, .tcp_connections, .replayed, (.kib_per_ws * 100 | round / 100)] | @tsv' "$RESULTS")"
}

main() {
    command -v jq >/dev/null || die "jq is needed"
    ulimit -n "$(ulimit -Hn)" || true
    ((H2_N + 200 < $(ulimit -n))) || die "H2_N=$H2_N needs more than the $(ulimit -n) fds a process may open"
    if [[ $BUILD == 1 ]]; then
        log "building sidewire and the replay tool (release)"
        (cd "$ROOT" && cargo build --release --bin sidewire --example replay) >&2
    fi
    [[ -x $REPLAY_BIN ]] || die "no $REPLAY_BIN (run with BUILD=1)"
    for bin in $SIDEWIRE_BIN; do [[ -x $bin ]] || die "no $bin"; done
    mkdir -p "$OUT"
    RESULTS=$OUT/replay.jsonl
    : >"$RESULTS"
    log "parts: $PARTS; binaries: $SIDEWIRE_BIN; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    for part in $PARTS; do
        case $part in
        replay) part_replay ;;
        sends) part_sends ;;
        h2) part_h2 ;;
        resumed) part_resumed ;;
        *) die "unknown part $part (replay, sends, h2, resumed)" ;;
        esac
    done
    report | tee "$OUT/replay.md"
    log "table: $OUT/replay.md; raw: $RESULTS"
}

main "$@"
