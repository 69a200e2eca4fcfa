# Shared helpers for checks/*.sh (sourced, not run). Each check starts its own sidewire
# from a temp config on free loopback ports and kills everything it started on exit.
#
#   source "$(dirname "$0")/lib.sh"
#   sw_build                        # release binary, built if missing (BUILD=1 forces cargo)
#   sw_ports                        # sets PUBLIC_PORT ADMIN_PORT TLS_PORT BACKEND_PORT
#   sw_start "$yaml"                # writes $SW_TMP/sidewire.yaml, starts, waits for /healthz; sets SW_PID
#   sw_rss_kb "$SW_PID"; sw_cpu_ticks "$SW_PID"
#   sw_spawn cmd args...            # a background helper killed on exit (its pid in $!)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SW_BIN=${SW_BIN:-target/release/sidewire}
SW_TMP=$(mktemp -d /tmp/sidewire-check.XXXXXX)
SW_PIDS=()
SW_PID=
CLK_TCK=$(getconf CLK_TCK)

sw_cleanup() {
  local pid
  for pid in "${SW_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${SW_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "${KEEP_TMP:-}" ]; then echo "logs kept in $SW_TMP" >&2; else rm -rf "$SW_TMP"; fi
}
trap sw_cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '%s\n' "$*"; }
die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 2; }

# need CMD DEBIAN_PACKAGE: installs the package when the command is missing and we are root.
need() {
  command -v "$1" >/dev/null && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing $2 (for $1)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1 ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1; } || true
  fi
  command -v "$1" >/dev/null || die "needs $1: apt-get install -y $2"
}

# need_py MODULE PIP_PACKAGE
need_py() {
  python3 -c "import $1" 2>/dev/null && return
  say "installing $2 (python module $1)"
  python3 -m pip install --quiet --disable-pip-version-check "$2" 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$2" 2>/dev/null || true
  python3 -c "import $1" 2>/dev/null || die "needs the python module $1: pip install $2"
}

# The release binary; a fast local profile (no LTO) so a check does not wait for a fat-LTO link.
sw_build() {
  if [ ! -x "$SW_BIN" ] || [ "${BUILD:-0}" = 1 ]; then
    say "building $SW_BIN"
    CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 cargo build --release --quiet --bin sidewire
  fi
}

# free_port: a port free on 127.0.0.1 right now (the kernel's choice).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

sw_ports() {
  PUBLIC_PORT=$(free_port) ADMIN_PORT=$(free_port) TLS_PORT=$(free_port) BACKEND_PORT=$(free_port)
}

# sw_spawn CMD...: run in the background, killed on exit.
sw_spawn() {
  "$@" &
  SW_PIDS+=($!)
}

# wait_port PORT [SECONDS]: until something accepts on 127.0.0.1:PORT.
wait_port() {
  local i
  for i in $(seq $((${2:-10} * 10))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# sw_start YAML: starts sidewire with that config (log in $SW_TMP/sidewire.log) and waits
# until its admin /healthz answers.
sw_start() {
  printf '%s\n' "$1" >"$SW_TMP/sidewire.yaml"
  "$SW_BIN" --check --config "$SW_TMP/sidewire.yaml" >/dev/null || die "config refused: $SW_TMP/sidewire.yaml"
  RUST_LOG=${RUST_LOG:-warn} "$SW_BIN" --config "$SW_TMP/sidewire.yaml" >"$SW_TMP/sidewire.log" 2>&1 &
  SW_PID=$!
  SW_PIDS+=("$SW_PID")
  local i
  for i in $(seq 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN_PORT/healthz" 2>/dev/null && return 0
    kill -0 "$SW_PID" 2>/dev/null || break
    sleep 0.1
  done
  cat "$SW_TMP/sidewire.log" >&2
  die "sidewire did not become ready"
}

# sw_alive: is the sidewire we started still running?
sw_alive() { kill -0 "$SW_PID" 2>/dev/null; }

# sw_rss_kb PID: resident set size in KiB.
sw_rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# sw_cpu_ticks PID: user + system CPU time in clock ticks (1/CLK_TCK s).
sw_cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# sw_threads PID; sw_fds PID
sw_threads() { awk '/^Threads:/ { print $2 }' "/proc/$1/status"; }
sw_fds() { ls "/proc/$1/fd" | wc -l; }

# Sampler: sw_sample_start PID writes "rss_kb cpu_ticks" every 0.2 s to $SW_TMP/samples
# until sw_sample_stop; sw_sample_stop prints "max_rss_kb cpu_seconds wall_seconds".
sw_sample_start() {
  local pid=$1
  : >"$SW_TMP/samples"
  SAMPLE_T0=$(date +%s.%N)
  SAMPLE_C0=$(sw_cpu_ticks "$pid")
  (while kill -0 "$pid" 2>/dev/null; do
    echo "$(sw_rss_kb "$pid") $(sw_cpu_ticks "$pid")" >>"$SW_TMP/samples"
    sleep 0.2
  done) &
  SAMPLER_PID=$!
  SW_PIDS+=("$SAMPLER_PID")
}
sw_sample_stop() {
  kill "$SAMPLER_PID" 2>/dev/null || true
  wait "$SAMPLER_PID" 2>/dev/null || true
  local c1 t1
  c1=$(sw_cpu_ticks "$1")
  t1=$(date +%s.%N)
  awk -v c0="$SAMPLE_C0" -v c1="$c1" -v t0="$SAMPLE_T0" -v t1="$t1" -v hz="$CLK_TCK" \
    'BEGIN { m = 0 } { if ($1 > m) m = $1 } END { printf "%d %.2f %.1f\n", m, (c1 - c0) / hz, t1 - t0 }' "$SW_TMP/samples"
}
