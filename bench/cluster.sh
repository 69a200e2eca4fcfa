#!/usr/bin/env bash
# Many instances on Redis (issue 8 §3): sidewire on the memory broker vs sidewire on a
# private redis-server, in one run on this machine.
#
#   bench/cluster.sh                                   # A B C S, SSE and WS (≈ 5 min quiet)
#   TRANSPORTS=ws REPEATS=2 BUILD=0 bench/cluster.sh
#   CASES=C bench/cluster.sh                           # only the latency case
#
# Cases (per transport; cases interleaved per repeat, so machine drift hits them alike):
#   A        1 sidewire, memory broker,             SUBS subscribers, MESSAGES at RATE msg/s
#   B        INSTANCES sidewires on one Redis,      SUBS subscribers in total (SUBS/INSTANCES
#            each), publishes round-robin over the instances' admin listeners; every
#            instance with `workers: B_WORKERS` (default 1): the instances share this
#            machine's cores as they would share a host, instead of each starting one
#            serving thread per core
#   B-oversub  (not in the default CASES) B with `workers: WORKERS` (default 0 = one per
#            core) in every instance: INSTANCES × cores serving threads on the cores
#   C-mem    1 sidewire, memory broker,             LAT_SUBS subscribers, LAT_MESSAGES at LAT_RATE
#   C-redis  1 sidewire on Redis,                   same load as C-mem
#   R1       (not in the default CASES) 1 sidewire on Redis at the A/B load, to tell the
#            cost of the Redis path from the cost of splitting into instances
#   S        Redis alone at saturation (needs redis-benchmark): sidewire's PUBLISH script
#            (read from src/broker/script.rs) run by `redis-benchmark -c 16` with k
#            `redis-cli SUBSCRIBE` connections on its pub/sub channel (k in S_SUBSCRIBERS):
#            the messages/s one Redis core sustains, and its CPU per message when busy (the
#            low-rate runs' CPU per message is inflated by cold caches and per-message
#            wake-ups). The EVALSHA arguments follow the script's KEYS/ARGV layout; if
#            that layout changes, S reports failed calls instead of figures.
#
# How the load is spread: ONE loadgen process per run. It takes `--sse-url`/`--ws-url`
# once per instance (subscriber i connects to instance i mod k) and `--pub-url` once per
# instance (publish i goes to instance i mod k, one publish in flight, in order). One
# process means one clock for publish→deliver latency, one place that counts loss and
# duplicates (a subscriber seeing the same `n` twice), and the same load tool cost in A
# and B; 18,000 sockets fit under the 20,000-fd hard limit of one process.
#
# What is measured over the measured phase only (loadgen reads before/after it):
# sidewire CPU (utime+stime of every instance, /proc/PID/stat), redis-server CPU
# (`--aux-pid`), and Redis's INFO counters (`--redis-info`: total_commands_processed,
# EVALSHA / PUBLISH calls, used_cpu_sys+user). The Redis broker also runs one small READ
# script per instance per tick (readiness check), which shows in the command counts.
#
# redis-server is started once by this script on a free loopback port (`--save ''
# --appendonly no`, no disk), FLUSHALL'd before every Redis run; every sidewire is started
# fresh per run from a generated config. Everything listens on and targets 127.0.0.1
# (client sockets from 127.0.0.1…127.0.0.SOURCES); every started process is killed on
# exit. Results: bench/out/cluster.md (table) and bench/out/cluster.jsonl (raw lines).
#
# Environment overrides:
#   CASES="A B C S" (add R1 and B-oversub, see above)  TRANSPORTS="sse ws"
#   CEILING_N=100000 (EVALSHA calls in S)  S_SUBSCRIBERS="1 INSTANCES 10" (S's subscriber
#     connections, one S run each: how PUBLISH's cost grows with the instances listening)
#   INSTANCES=3 SUBS=18000 MESSAGES=200 RATE=50
#   LAT_SUBS=1000 LAT_MESSAGES=500 LAT_RATE=100
#   REPEATS=1 HOLD=2 SOURCES=16 CONCURRENCY=64 RUN_TIMEOUT=400
#   WORKERS=0 (sidewire `workers` in A, R1, C, B-oversub; 0 = one per core)  B_WORKERS=1 (in B)
#   BUILD=1 (0: use the existing release binaries)  PORT_BASE=18500  OUT=bench/out
#   QUIET_WAIT=120 QUIET_BUSY=15: before every run wait (at most QUIET_WAIT s) until the
#     machine's busy CPU is below QUIET_BUSY % of all cores in three 2-s samples in a row
#     (other jobs on a shared machine skew every figure; each run's "other CPU %" says how
#     much they did anyway, and the table marks runs above 10 % of a core as noisy)
#
# Needs: jq, python3, redis-server and redis-cli (Debian: redis-server), redis-benchmark
# (redis-tools) for S.
#   KEEP_WORK=1 (keep the temp dir with configs and logs)
#   SIDEWIRE_BIN / LOADGEN_BIN (other binaries; CARGO_TARGET_DIR is honoured for the defaults)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CASES=${CASES:-"A B C S"}
TRANSPORTS=${TRANSPORTS:-"sse ws"}
INSTANCES=${INSTANCES:-3}
CEILING_N=${CEILING_N:-100000}
S_SUBSCRIBERS=${S_SUBSCRIBERS:-"1 $INSTANCES 10"}
SUBS=${SUBS:-18000}
MESSAGES=${MESSAGES:-200}
RATE=${RATE:-50}
LAT_SUBS=${LAT_SUBS:-1000}
LAT_MESSAGES=${LAT_MESSAGES:-500}
LAT_RATE=${LAT_RATE:-100}
REPEATS=${REPEATS:-1}
HOLD=${HOLD:-2}
SOURCES=${SOURCES:-16}
CONCURRENCY=${CONCURRENCY:-64}
RUN_TIMEOUT=${RUN_TIMEOUT:-400}
WORKERS=${WORKERS:-0}
B_WORKERS=${B_WORKERS:-1}
QUIET_WAIT=${QUIET_WAIT:-120}
QUIET_BUSY=${QUIET_BUSY:-15}
BUILD=${BUILD:-1}
OUT=${OUT:-$ROOT/bench/out}
PORT_BASE=${PORT_BASE:-18500}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SIDEWIRE_BIN=${SIDEWIRE_BIN:-$TARGET_DIR/release/sidewire}
LOADGEN_BIN=${LOADGEN_BIN:-$TARGET_DIR/release/examples/loadgen}

BENCH_NAME=cluster
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"

WORK=$(mktemp -d /tmp/sidewire-cluster.XXXXXX)
STARTED=()    # every pid this script started
SW_PIDS=()    # the sidewire instances of the current run
REDIS_PID=""
REDIS_PORT=""

cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do stop_pid "$pid"; done
    if [[ ${KEEP_WORK:-0} == 1 ]]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- Redis
start_redis() {
    local p
    for ((p = PORT_BASE + 400; p < PORT_BASE + 500; p++)); do
        port_free "$p" && break
    done
    port_free "$p" || die "no free port for redis-server in $((PORT_BASE + 400))…$((PORT_BASE + 499))"
    REDIS_PORT=$p
    mkdir -p "$WORK/redis"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --dir "$WORK/redis" \
        --daemonize no --protected-mode yes --loglevel warning --logfile "$WORK/redis/redis.log" &
    REDIS_PID=$!
    STARTED+=("$REDIS_PID")
    wait_port "$REDIS_PORT" || die "redis-server did not start: $(tail -5 "$WORK/redis/redis.log")"
    log "redis-server $(redis-server --version | grep -o 'v=[^ ]*') pid $REDIS_PID on 127.0.0.1:$REDIS_PORT"
}

rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

# ---------------------------------------------------------------- sidewire
start_sidewires() { # broker count workers: start `count` instances, sets SW_PIDS, SUB_*, PUB_URLS
    local broker=$1 count=$2 workers=$3 i port admin dir
    SW_PIDS=()
    SUB_SSE=()
    SUB_WS=()
    PUB_URLS=()
    for ((i = 0; i < count; i++)); do
        port=$((PORT_BASE + i))
        admin=$((PORT_BASE + 100 + i))
        port_free "$port" && port_free "$admin" || die "ports $port/$admin busy"
        dir=$WORK/sw$i
        mkdir -p "$dir"
        {
            cat <<EOF
listen: "127.0.0.1:$port"
shutdown_grace: 1s
workers: $workers
admin:
  listen: "127.0.0.1:$admin"
backend:
  url: "http://127.0.0.1:9"   # unused: no pass-through in this benchmark
auth:
  anonymous: true
routes:
  - { path: "/ws", transport: websocket }
  - { path: "/events", transport: sse }
channels:
  - match: "bench"
    history: { size: 100, ttl: 1h }
    public: true
limits:
  max_connections: 200000
  max_connections_per_ip: 200000
  subscriber_queue: 4096
heartbeat:
  interval: 1h
  timeout: 2h
EOF
            if [[ $broker == redis ]]; then
                echo "broker: { kind: redis, url: \"redis://127.0.0.1:$REDIS_PORT\", key_prefix: \"bench:\", timeout: 2s }"
            else
                echo "broker: { kind: memory }"
            fi
        } >"$dir/config.yaml"
        RUST_LOG=warn "$SIDEWIRE_BIN" --config "$dir/config.yaml" >"$dir/sidewire.log" 2>&1 &
        SW_PIDS+=("$!")
        STARTED+=("$!")
        SUB_SSE+=("http://127.0.0.1:$port/events?channel=bench")
        SUB_WS+=("ws://127.0.0.1:$port/ws")
        PUB_URLS+=("http://127.0.0.1:$admin/publish")
    done
    for ((i = 0; i < count; i++)); do
        wait_port $((PORT_BASE + i)) && wait_port $((PORT_BASE + 100 + i)) ||
            die "sidewire $i did not start: $(tail -5 "$WORK/sw$i/sidewire.log")"
    done
}

stop_sidewires() {
    local pid i
    for pid in "${SW_PIDS[@]}"; do stop_pid "$pid"; done
    # Anything sidewire said above `warn` is worth a look: keep it next to the results.
    for ((i = 0; i < ${#SW_PIDS[@]}; i++)); do
        if [[ -s $WORK/sw$i/sidewire.log ]]; then
            {
                echo "== $RUN_LABEL instance $i"
                tail -n 20 "$WORK/sw$i/sidewire.log"
            } >>"$OUT/cluster-sidewire.log"
        fi
        rm -f "$WORK/sw$i/sidewire.log"
    done
    SW_PIDS=()
}

# ---------------------------------------------------------------- runs
busy_pct() { # % of all cores busy over 2 s (user nice system irq softirq steal)
    local a b
    a=$(head -n 1 /proc/stat)
    sleep 2
    b=$(head -n 1 /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN {
        split(a, x); split(b, y)
        busy = (y[2]+y[3]+y[4]+y[7]+y[8]+y[9]) - (x[2]+x[3]+x[4]+x[7]+x[8]+x[9])
        total = busy + (y[5]+y[6]) - (x[5]+x[6])
        printf "%d", (total > 0 ? 100 * busy / total : 0)
    }'
}

wait_quiet() { # until the machine is quiet (3 samples in a row), at most QUIET_WAIT s
    local start=$SECONDS b quiet=0
    while :; do
        b=$(busy_pct)
        if ((b < QUIET_BUSY)); then
            quiet=$((quiet + 1))
            ((quiet >= 3)) && break
            continue
        fi
        quiet=0
        if ((SECONDS - start >= QUIET_WAIT)); then
            log "machine still busy ($b % of all cores) after ${QUIET_WAIT}s: running anyway"
            return 0
        fi
        log "machine busy ($b % of all cores): waiting"
        sleep 5
    done
    ((SECONDS - start > 8)) && log "quiet after $((SECONDS - start))s"
    return 0
}

run_one() { # case broker instances workers transport subscribers messages rate rep
    local case=$1 broker=$2 count=$3 workers=$4 transport=$5 n=$6 m=$7 rate=$8 rep=$9 u p line rc
    RUN_LABEL="$case/$transport/$rep"
    wait_quiet
    if [[ $broker == redis ]]; then rcli FLUSHALL >/dev/null; fi
    start_sidewires "$broker" "$count" "$workers"
    local args=(--subscribers "$n" --messages "$m" --rate "$rate" --hold "$HOLD" --sources "$SOURCES"
        --concurrency "$CONCURRENCY" --timeout "$RUN_TIMEOUT" --label "$RUN_LABEL"
        --pub-body '{"channel":"bench","data":{"t":{t},"n":{n}}}')
    for u in "${PUB_URLS[@]}"; do args+=(--pub-url "$u"); done
    if [[ $transport == sse ]]; then
        for u in "${SUB_SSE[@]}"; do args+=(--sse-url "$u"); done
    else
        for u in "${SUB_WS[@]}"; do args+=(--ws-url "$u"); done
        args+=(--ws-subscribe-frame '{"type":"subscribe","channel":"bench"}')
    fi
    for p in "${SW_PIDS[@]}"; do args+=(--server-pid "$p"); done
    if [[ $broker == redis ]]; then args+=(--aux-pid "$REDIS_PID" --redis-info "127.0.0.1:$REDIS_PORT"); fi
    log "$RUN_LABEL: $count × sidewire ($broker broker, workers: $workers), $n subscribers × $m messages at $rate msg/s; pids ${SW_PIDS[*]}"
    rc=0
    timeout -k 5 $((RUN_TIMEOUT + 60)) "$LOADGEN_BIN" "${args[@]}" >"$WORK/one.json" 2>"$WORK/loadgen.log" || rc=$?
    grep "^loadgen:" "$WORK/loadgen.log" >&2 || true
    line=$(tail -n 1 "$WORK/one.json")
    [[ $line == \{* ]] || line="{\"error\":\"loadgen exited $rc without a result\"}"
    jq -c --arg c "$case" --arg b "$broker" --argjson k "$count" --argjson w "$workers" --arg tr "$transport" \
        --argjson n "$n" --argjson m "$m" --argjson rep "$rep" \
        '. + {case: $c, broker: $b, instances: $k, workers: $w, transport: $tr, subscribers: $n, messages: $m, rep: $rep}' \
        <<<"$line" >>"$RESULTS"
    stop_sidewires
    sleep 1 # let sockets settle between runs
}

proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime+stime, 1/100 s

redis_ceiling() { # rep k: sidewire's publish script alone on Redis, at saturation, k listeners
    local rep=$1 k=$2 lua sha i n pids=() c0 c1 t0 t1 out rps
    if ! command -v redis-benchmark >/dev/null; then
        log "S: no redis-benchmark (Debian: redis-tools): skipped"
        return 0
    fi
    lua=$(sed -n '/^const PUBLISH: &str = r"/,/^";/p' "$ROOT/src/broker/script.rs" | sed '1d;$d')
    [[ -n $lua ]] || die "S: could not read the PUBLISH script from src/broker/script.rs"
    wait_quiet
    rcli FLUSHALL >/dev/null
    sha=$(rcli SCRIPT LOAD "$lua")
    for ((i = 0; i < k; i++)); do
        redis-cli -h 127.0.0.1 -p "$REDIS_PORT" SUBSCRIBE 'bench:{bench}' >/dev/null &
        pids+=("$!")
        STARTED+=("$!")
    done
    for ((i = 0; i < 100; i++)); do
        n=$(rcli PUBSUB NUMSUB 'bench:{bench}' | tail -n 1)
        ((n >= k)) && break
        sleep 0.05
    done
    rcli CONFIG RESETSTAT >/dev/null
    log "S/$rep: $CEILING_N × EVALSHA publish (16 connections) with $n subscriber connections"
    c0=$(proc_ticks "$REDIS_PID")
    t0=$(date +%s.%N)
    # One item of one message, no idempotency key, no fingerprint; the message: pub/sub
    # channel, history size, ttl ms, not ephemeral, envelope (what sidewire sends for a
    # small message). Two layouts of the script's KEYS/ARGV exist:
    #   KEYS epoch seq log; ARGV epoch candidate, idem ttl, n items, …  (up to 61fdaf2)
    #   KEYS seq log epoch; ARGV epoch candidate, 1 (last key is epoch), idem ttl, n items, …
    local call
    if grep -q "ARGV\[2\] == '1'" <<<"$lua"; then
        call=(3 'bench:{bench}:seq' 'bench:{bench}:log' bench:epoch 77 1 300 1 1 0 '')
    else
        call=(3 bench:epoch 'bench:{bench}:seq' 'bench:{bench}:log' 77 300 1 1 0 '')
    fi
    call+=('bench:{bench}' 100 3600000 0 '{"data":{"t":1,"n":1}}')
    out=$(timeout 120 redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -n "$CEILING_N" -c 16 -q \
        EVALSHA "$sha" "${call[@]}" 2>&1 | tr '\r' '\n' | grep -v '^ *$' | tail -n 1 || true)
    t1=$(date +%s.%N)
    c1=$(proc_ticks "$REDIS_PID")
    for i in "${pids[@]}"; do stop_pid "$i"; done
    rps=$(grep -o '[0-9.]* requests per second' <<<"$out" | cut -d' ' -f1 || true)
    [[ -n $rps ]] || rps=null
    local failed
    failed=$(rcli INFO commandstats | grep -o 'cmdstat_evalsha:.*' | grep -o 'failed_calls=[0-9]*' | cut -d= -f2 || true)
    # A script whose arguments changed shape fails every call: say so instead of a figure.
    if [[ $rps == null || ${failed:-0} -gt 0 ]]; then
        log "S/$rep: the publish script did not run cleanly (${failed:-?} failed calls): ${out:0:300}"
    fi
    jq -nc --argjson rep "$rep" --argjson k "$n" --argjson calls "$CEILING_N" --argjson rps "$rps" \
        --argjson ticks $((c1 - c0)) --arg t0 "$t0" --arg t1 "$t1" --argjson failed "${failed:-0}" \
        '{case: "S", broker: "redis", instances: $k, rep: $rep, calls: $calls, failed_calls: $failed,
          messages_per_s: $rps, redis_cpu_s: ($ticks / 100), wall_s: (($t1 | tonumber) - ($t0 | tonumber)),
          redis_cpu_pct: (100 * ($ticks / 100) / (($t1 | tonumber) - ($t0 | tonumber))),
          redis_cpu_us_per_message: (1e6 * ($ticks / 100) / $calls)}' >>"$RESULTS"
    log "S/$rep: $out; Redis CPU $((c1 - c0))/100 s"
}

run_case() { # case transport rep
    local case=$1 tr=$2 rep=$3
    case $case in
    A) run_one A memory 1 "$WORKERS" "$tr" "$SUBS" "$MESSAGES" "$RATE" "$rep" ;;
    B) run_one B redis "$INSTANCES" "$B_WORKERS" "$tr" "$SUBS" "$MESSAGES" "$RATE" "$rep" ;;
    B-oversub) run_one B-oversub redis "$INSTANCES" "$WORKERS" "$tr" "$SUBS" "$MESSAGES" "$RATE" "$rep" ;;
    R1) run_one R1 redis 1 "$WORKERS" "$tr" "$SUBS" "$MESSAGES" "$RATE" "$rep" ;;
    C)
        run_one C-mem memory 1 "$WORKERS" "$tr" "$LAT_SUBS" "$LAT_MESSAGES" "$LAT_RATE" "$rep"
        run_one C-redis redis 1 "$WORKERS" "$tr" "$LAT_SUBS" "$LAT_MESSAGES" "$LAT_RATE" "$rep"
        ;;
    S) ;; # once per repeat, not per transport (see main)
    *) die "unknown case $case (A, B, B-oversub, C, R1, S)" ;;
    esac
}

main() {
    command -v jq >/dev/null || die "jq is needed"
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null || die "redis-server and redis-cli are needed"
    ulimit -n "$(ulimit -Hn)" || true
    local fds
    fds=$(ulimit -n)
    ((SUBS + 200 < fds)) || die "SUBS=$SUBS needs more than the $fds fds a process may open"
    ((SUBS % INSTANCES == 0)) || die "SUBS=$SUBS is not a multiple of INSTANCES=$INSTANCES"
    ((SOURCES >= 1 && SOURCES <= 250)) || die "SOURCES must be 1…250"
    if [[ $BUILD == 1 ]]; then
        log "building sidewire and loadgen (release)"
        (cd "$ROOT" && cargo build --release --bin sidewire --example loadgen) >&2
    fi
    [[ -x $SIDEWIRE_BIN ]] || die "no $SIDEWIRE_BIN (run with BUILD=1)"
    [[ -x $LOADGEN_BIN ]] || die "no $LOADGEN_BIN (run with BUILD=1)"
    mkdir -p "$OUT"
    RESULTS=$OUT/cluster.jsonl
    : >"$RESULTS"
    : >"$OUT/cluster-sidewire.log"
    start_redis
    local started load rep tr case k
    started=$(date -u +%FT%TZ)
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    log "cases: $CASES; transports: $TRANSPORTS; $INSTANCES instances; load average before: $load"
    for ((rep = 1; rep <= REPEATS; rep++)); do
        for tr in $TRANSPORTS; do
            for case in $CASES; do run_case "$case" "$tr" "$rep"; done
        done
        if [[ " $CASES " == *" S "* ]]; then
            for k in $S_SUBSCRIBERS; do redis_ceiling "$rep" "$k"; done
        fi
    done
    {
        echo "# Many instances on Redis"
        echo
        echo "Run $started on $(nproc) cores (load average before: $load; after: $(cut -d' ' -f1-3 /proc/loadavg)); $(redis-server --version | cut -d' ' -f1-3)."
        echo "Command: \`CASES=\"$CASES\" TRANSPORTS=\"$TRANSPORTS\" INSTANCES=$INSTANCES WORKERS=$WORKERS B_WORKERS=$B_WORKERS SUBS=$SUBS MESSAGES=$MESSAGES RATE=$RATE LAT_SUBS=$LAT_SUBS LAT_MESSAGES=$LAT_MESSAGES LAT_RATE=$LAT_RATE REPEATS=$REPEATS bench/cluster.sh\`"
        echo
        python3 "$HERE/cluster_table.py" "$RESULTS"
    } >"$OUT/cluster.md"
    cat "$OUT/cluster.md"
    if [[ -s $OUT/cluster-sidewire.log ]]; then log "sidewire logged warnings or errors: see $OUT/cluster-sidewire.log"; fi
    log "table: $OUT/cluster.md; raw: $RESULTS"
}

main "$@"
