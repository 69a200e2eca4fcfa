#!/usr/bin/env bash
# Pass-through benchmark: sidewire against nginx as a reverse proxy, in one run.
#
#   bench/passthrough.sh                 # 10 s per measured run
#   DURATION=5s bench/passthrough.sh     # shorter
#   ROUNDS=3 bench/passthrough.sh        # 3 interleaved rounds, medians (busy machine)
#   TLS=1 bench/passthrough.sh           # clients speak HTTPS to both proxies
#
# Starts (all on 127.0.0.1, free ports, own temp dir under bench/out/):
#   backend  - Debian nginx, 1 worker, serves /small (100 B) and /large (64 KiB)
#   nginx    - Debian nginx reverse proxy, 2 workers, upstream keepalive 64
#   sidewire - target/release/sidewire with a generated config, RUST_LOG=warn
# then runs `wrk -t1 -c64 -d$DURATION --latency` (after a $WARMUP warm-up) against
# each of them for each size, prints a table and writes it to bench/out/passthrough.md.
# Ratios are against the nginx proxy measured in the same run (the same round): the
# machine's speed drifts 20-30% between runs, ratios within one run far less.
#
# Environment: DURATION (10s), WARMUP (2s), CONNECTIONS (64), THREADS (1),
#              ROUNDS (1; N > 1 repeats all six runs N times, interleaved, and reports
#              medians: use it when the machine is busy), OUT (bench/out/passthrough.md),
#              SKIP_BUILD=1 (use the existing binary instead of `cargo build --release`),
#              SIDEWIRE_B_BIN (a second sidewire build, measured as "sidewire_b" in the same
#              rounds: two builds compared under the same machine drift).
#              TLS=1 (wrk speaks HTTPS, TLS 1.3, to the nginx proxy and to sidewire's TLS
#              listener, with one generated self-signed P-256 certificate; the backend
#              hop stays plain HTTP, as in a sidecar deployment).
#              The environment is passed on to sidewire, e.g. TOKIO_WORKER_THREADS=1.
# Every process started here is killed on exit; every wait is bounded.

set -euo pipefail

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-1}
TLS=${TLS:-0}
SCHEME=http
[[ $TLS == 1 ]] && SCHEME=https

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUTDIR="$ROOT/bench/out"
OUT=${OUT:-$OUTDIR/passthrough.md}
BIN="$ROOT/target/release/sidewire"
BIN_B=${SIDEWIRE_B_BIN:-}
[[ -z $BIN_B || -x $BIN_B ]] || { echo "passthrough.sh: SIDEWIRE_B_BIN=$BIN_B is not executable" >&2; exit 1; }

die() { echo "passthrough.sh: $*" >&2; exit 1; }

# Dies with the exit status of a server that is no longer running (name, pid).
check_alive() {
    local rc=0
    kill -0 "$2" 2>/dev/null && return 0
    wait "$2" || rc=$?
    die "$1 (pid $2) exited with status $rc; logs in $RUN"
}

[[ $TLS != 1 ]] || command -v openssl >/dev/null || die "TLS=1 needs 'openssl' (apt-get install openssl)"
for tool in wrk nginx curl python3 timeout; do
    command -v "$tool" >/dev/null || die "needs '$tool' (apt-get install wrk nginx curl python3)"
done

# Seconds in a wrk-style duration (10s, 2m, 500 = seconds), for timeouts.
secs() {
    local d=$1
    case $d in
        *ms) echo 1 ;;
        *s) echo "${d%s}" ;;
        *m) echo $(( ${d%m} * 60 )) ;;
        *h) echo $(( ${d%h} * 3600 )) ;;
        *) echo "$d" ;;
    esac
}
[[ $(secs "$DURATION") =~ ^[0-9]+$ ]] || die "DURATION must look like 10s, 2m"
[[ $(secs "$WARMUP") =~ ^[0-9]+$ ]] || die "WARMUP must look like 2s"
[[ $ROUNDS =~ ^[1-9][0-9]?$ ]] || die "ROUNDS must be 1..99"

# ---------------------------------------------------------------- build
if [[ ${SKIP_BUILD:-0} != 1 || ! -x $BIN ]]; then
    echo "==> cargo build --release" >&2
    (cd "$ROOT" && timeout 1800 cargo build --release --quiet) || die "release build failed"
fi
[[ -x $BIN ]] || die "no binary at $BIN"

# ---------------------------------------------------------------- run dir, cleanup
mkdir -p "$OUTDIR"
RUN=$(mktemp -d "$OUTDIR/run.XXXXXX")
chmod 755 "$RUN"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # nginx and sidewire both exit promptly on TERM; do not wait forever.
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits (at most ~10 s) until $1 answers 200 with exactly $2 body bytes; the process
# $3 must stay alive meanwhile.
wait_ready() {
    local url=$1 want=$2 pid=$3 got
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || die "process for $url exited; logs in $RUN"
        got=$(curl -s -k -o /dev/null -w '%{http_code} %{size_download}' --max-time 2 "$url" || true)
        [[ $got == "200 $want" ]] && return 0
        sleep 0.1
    done
    die "$url never answered 200 with $want bytes (last: '$got'); logs in $RUN"
}

for _ in $(seq 10); do
    BACKEND_PORT=$(free_port) NGINX_PORT=$(free_port) SIDEWIRE_PORT=$(free_port) ADMIN_PORT=$(free_port)
    B_PORT=$(free_port) B_ADMIN_PORT=$(free_port) PLAIN_PORT=$(free_port) B_PLAIN_PORT=$(free_port)
    [[ $(printf '%s\n' "$BACKEND_PORT" "$NGINX_PORT" "$SIDEWIRE_PORT" "$ADMIN_PORT" "$B_PORT" "$B_ADMIN_PORT" \
        "$PLAIN_PORT" "$B_PLAIN_PORT" | sort -u | wc -l) == 8 ]] && break
done

# Workers run as the invoking user (root here: its files are in a root-owned dir).
NGINX_USER=""
[[ $EUID -eq 0 ]] && NGINX_USER="user root;"

nginx_common() { # $1 = dir
    cat <<EOF
$NGINX_USER
daemon off;
master_process on;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
EOF
}
nginx_http_common() { # $1 = dir
    cat <<EOF
    access_log off;
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
EOF
}

start_nginx() { # $1 = dir, $2 = name
    nginx -t -q -p "$1" -e "$1/error.log" -c "$1/nginx.conf" || die "$2 nginx config invalid ($1)"
    nginx -p "$1" -e "$1/error.log" -c "$1/nginx.conf" >"$1/stdout.log" 2>&1 &
    PIDS+=($!)
}

# ---------------------------------------------------------------- backend (nginx, 1 worker)
B="$RUN/backend"
mkdir -p "$B/html"
printf 'sidewire pass-through benchmark: a small response body of one hundred bytes, padded to length......\n' >"$B/html/small"
head -c 65536 /dev/zero | tr '\0' 'x' >"$B/html/large"
SMALL_BYTES=$(stat -c %s "$B/html/small")
LARGE_BYTES=$(stat -c %s "$B/html/large")
chmod -R a+rX "$B"
{
    nginx_common "$B"
    echo "worker_processes 1;"
    cat <<EOF
http {
$(nginx_http_common "$B")
    sendfile on;
    tcp_nopush on;
    open_file_cache max=16;
    default_type text/plain;
    server {
        listen 127.0.0.1:$BACKEND_PORT;
        root $B/html;
        location / { }
    }
}
EOF
} >"$B/nginx.conf"
start_nginx "$B" backend
BACKEND_PID=${PIDS[-1]}

# ---------------------------------------------------------------- TLS (TLS=1)
NGINX_TLS=""
if [[ $TLS == 1 ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
        -keyout "$RUN/key.pem" -out "$RUN/cert.pem" 2>/dev/null || die "openssl could not make a certificate"
    NGINX_TLS=" ssl;
        ssl_certificate $RUN/cert.pem;
        ssl_certificate_key $RUN/key.pem;
        ssl_protocols TLSv1.3"
fi

# ---------------------------------------------------------------- nginx reverse proxy (2 workers)
N="$RUN/nginx-proxy"
mkdir -p "$N"
{
    nginx_common "$N"
    echo "worker_processes 2;"
    cat <<EOF
http {
$(nginx_http_common "$N")
    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT$NGINX_TLS;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            # 64 KiB bodies stay in memory (the default 8 x 4k/8k would spill to temp files).
            proxy_buffers 16 8k;
        }
    }
}
EOF
} >"$N/nginx.conf"
start_nginx "$N" proxy
NGINX_PID=${PIDS[-1]}

# ---------------------------------------------------------------- sidewire
S="$RUN/sidewire"
mkdir -p "$S"
# $1 = public port (the TLS one when TLS=1), $2 = admin port, $3 = plain port when TLS=1.
sw_config() {
    if [[ $TLS == 1 ]]; then
        printf 'listen: "127.0.0.1:%s"\ntls:\n  listen: "127.0.0.1:%s"\n  cert: "%s"\n  key: "%s"\n' \
            "$3" "$1" "$RUN/cert.pem" "$RUN/key.pem"
    else
        printf 'listen: "127.0.0.1:%s"\n' "$1"
    fi
    printf 'admin:\n  listen: "127.0.0.1:%s"\nbackend:\n  url: "http://127.0.0.1:%s"\n' "$2" "$BACKEND_PORT"
}
sw_config "$SIDEWIRE_PORT" "$ADMIN_PORT" "$PLAIN_PORT" >"$S/config.yaml"
"$BIN" --check --config "$S/config.yaml" >/dev/null || die "generated sidewire config rejected ($S/config.yaml)"
RUST_LOG=warn "$BIN" --config "$S/config.yaml" >"$S/stdout.log" 2>"$S/stderr.log" &
PIDS+=($!)
SIDEWIRE_PID=${PIDS[-1]}
if [[ -n $BIN_B ]]; then
    mkdir -p "$S/b"
    sw_config "$B_PORT" "$B_ADMIN_PORT" "$B_PLAIN_PORT" >"$S/b/config.yaml"
    RUST_LOG=warn "$BIN_B" --config "$S/b/config.yaml" >"$S/b/stdout.log" 2>"$S/b/stderr.log" &
    PIDS+=($!)
    B_PID=${PIDS[-1]}
fi

for path in small large; do
    want=$SMALL_BYTES; [[ $path == large ]] && want=$LARGE_BYTES
    wait_ready "http://127.0.0.1:$BACKEND_PORT/$path" "$want" "$BACKEND_PID"
    wait_ready "$SCHEME://127.0.0.1:$NGINX_PORT/$path" "$want" "$NGINX_PID"
    wait_ready "$SCHEME://127.0.0.1:$SIDEWIRE_PORT/$path" "$want" "$SIDEWIRE_PID"
    [[ -z $BIN_B ]] || wait_ready "$SCHEME://127.0.0.1:$B_PORT/$path" "$want" "$B_PID"
done

# ---------------------------------------------------------------- measuring
# CPU ticks (user+system) of a process and its direct children (nginx workers).
cpu_ticks() {
    local pid=$1 total=0 p stat
    for p in "$pid" $(ps -o pid= --ppid "$pid" 2>/dev/null); do
        stat=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        stat=${stat##*) }             # drop "pid (comm) "; fields now start at 3 (state)
        read -r -a f <<<"$stat"
        total=$(( total + f[11] + f[12] ))   # utime, stime (fields 14, 15)
    done
    echo "$total"
}
TCK=$(getconf CLK_TCK)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# wrk prints 1.23us / 4.56ms / 1.20s / 1.00m: normalise to ms.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000;
        else if (u == "h") n *= 3600000; else if (u != "ms") { print "NaN"; exit }
        printf "%.3f", n }'
}

RESULTS="$RUN/results.tsv"   # round, target, size, rps, p50, p99, cpu_us_per_req, errors
: >"$RESULTS"
run_one() { # $1 = round, $2 = label, $3 = url, $4 = pid whose CPU is counted, $5 = size label
    local round=$1 label=$2 url=$3 pid=$4 size=$5 log t0 t1 rps p50 p99 reqs errs cpu
    log="$RUN/wrk-r$round-${label// /_}-$size.txt"
    timeout $(( $(secs "$WARMUP") + 30 )) wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "$url" >/dev/null \
        || { check_alive "$label" "$pid"; die "warm-up against $url failed"; }
    t0=$(cpu_ticks "$pid")
    timeout $(( $(secs "$DURATION") + 30 )) wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$url" >"$log" \
        || { check_alive "$label" "$pid"; die "wrk against $url failed (see $log)"; }
    check_alive "$label" "$pid"
    t1=$(cpu_ticks "$pid")
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$log")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$log")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$log")")
    reqs=$(awk '/requests in/ {print $1}' "$log")
    errs=$(awk '/Non-2xx or 3xx responses:/ {n += $NF}
                /Socket errors:/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10}
                END {print n + 0}' "$log")
    [[ -n $rps && -n $reqs && $reqs -gt 0 && $p50 != NaN && $p99 != NaN ]] || die "could not parse $log"
    cpu=$(awk -v d=$(( t1 - t0 )) -v t="$TCK" -v r="$reqs" 'BEGIN {printf "%.1f", d / t * 1e6 / r}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$label" "$size" "$rps" "$p50" "$p99" "$cpu" "$errs" >>"$RESULTS"
    printf '    round %s  %-16s %-6s %10s req/s  p50 %8s ms  p99 %8s ms  cpu %6s us/req  errors %s\n' \
        "$round" "$label" "$size" "$rps" "$p50" "$p99" "$cpu" "$errs" >&2
}

# Rounds interleave the targets so that a change in the machine's background load
# during the run hits all of them alike; the table shows each figure's median.
echo "==> wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, $ROUNDS round(s), warm-up $WARMUP before each" >&2
for round in $(seq "$ROUNDS"); do
    for size in small large; do
        run_one "$round" "backend direct" "http://127.0.0.1:$BACKEND_PORT/$size" "$BACKEND_PID" "$size"
        run_one "$round" "nginx proxy" "$SCHEME://127.0.0.1:$NGINX_PORT/$size" "$NGINX_PID" "$size"
        [[ -z $BIN_B ]] || run_one "$round" "sidewire_b" "$SCHEME://127.0.0.1:$B_PORT/$size" "$B_PID" "$size"
        run_one "$round" "sidewire" "$SCHEME://127.0.0.1:$SIDEWIRE_PORT/$size" "$SIDEWIRE_PID" "$size"
    done
done

# ---------------------------------------------------------------- report
python3 - "$RESULTS" "$SMALL_BYTES" "$LARGE_BYTES" "$RUN/rounds.txt" >"$RUN/table.md" <<'PYEOF'
# Figures: the median over rounds. Ratios: the median over rounds of the ratio to the
# nginx proxy *of the same round* (adjacent runs see the same background load).
import statistics, sys
path, small, large, rounds_out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
runs, order = {}, []
for line in open(path):
    rnd, target, size, rps, p50, p99, cpu, errs = line.rstrip("\n").split("\t")
    if (size, target) not in order:
        order.append((size, target))
    runs[(rnd, size, target)] = (float(rps), float(p50), float(p99), float(cpu), int(errs))
rounds = sorted({k[0] for k in runs}, key=int)
med = statistics.median
label = {"small": f"{small} B", "large": f"{large // 1024} KiB"}
print("| target | size | req/s | p50 ms | p99 ms | req/s vs nginx proxy | p99 vs nginx proxy "
      "| server CPU µs/req | CPU vs nginx proxy | errors |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for size, target in order:
    mine = [runs[(r, size, target)] for r in rounds]
    ref = [runs[(r, size, "nginx proxy")] for r in rounds]
    rps, p50, p99, cpu = (med([x[i] for x in mine]) for i in range(4))
    ratio = lambda i: med([m[i] / n[i] for m, n in zip(mine, ref)])
    errs = sum(x[4] for x in mine)
    print(f"| {target} | {label[size]} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {ratio(0):.2f}× "
          f"| {ratio(2):.2f}× | {cpu:.1f} | {ratio(3):.2f}× | {errs} |")
with open(rounds_out, "w") as f:
    for size, target in order:
        for r in rounds:
            rps, p50, p99, cpu, errs = runs[(r, size, target)]
            n = runs[(r, size, "nginx proxy")]
            f.write(f"round {r}  {target:<15} {size:<6} {rps:>9.0f} req/s ({rps / n[0]:.2f}x)  "
                    f"p50 {p50:7.2f} ms  p99 {p99:7.2f} ms ({p99 / n[2]:.2f}x)  "
                    f"cpu {cpu:5.1f} us/req ({cpu / n[3]:.2f}x)  errors {errs}\n")
PYEOF

{
    echo "# Pass-through benchmark"
    echo
    echo "Command: \`TLS=$TLS DURATION=$DURATION ROUNDS=$ROUNDS bench/passthrough.sh\`"
    [[ $TLS != 1 ]] || echo "Clients speak HTTPS (TLS 1.3, P-256 certificate) to both proxies; the backend hop is plain HTTP."
    echo "wrk: \`wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency\`, a $WARMUP warm-up before each run;"
    echo "$ROUNDS round(s) over all targets, interleaved. Each figure is its median over the rounds; each"
    echo "ratio is the median over the rounds of the ratio to the nginx proxy measured in the same round."
    echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'); host: $(nproc) cores, $(uname -r); load average before: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo "sidewire: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown); $(nginx -v 2>&1)."
    echo
    echo "Targets: req/s ≥ 1.00× and p99 ≤ 1.00× the nginx proxy's. Server CPU is the user + system"
    echo "time of the measured server's own processes only (for the proxies, the backend's is"
    echo "excluded) per request served: the figure least disturbed by other load on the machine."
    echo
    cat "$RUN/table.md"
    echo
    echo "Per round (ratios to the nginx proxy of the same round in brackets):"
    echo
    echo '```'
    cat "$RUN/rounds.txt"
    echo '```'
} >"$OUT"

echo >&2
cat "$RUN/table.md"
echo >&2
echo "written to $OUT (raw wrk output in $RUN)" >&2
