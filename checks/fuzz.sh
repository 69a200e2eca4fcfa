#!/usr/bin/env bash
# Fuzzing check (issue 9 §6, docs/reliability.md "Fuzzing"): runs every libFuzzer target
# of fuzz/ for a bounded time and fails on the first crash, panic, stack overflow, leak,
# timeout or out-of-memory.
#
# The targets are a cargo-fuzz crate (fuzz/Cargo.toml, libfuzzer-sys), outside the main
# workspace. This script builds them with plain cargo and the flags cargo-fuzz uses
# (SanitizerCoverage, `--cfg fuzzing`, debug assertions, AddressSanitizer), so it needs
# no cargo-fuzz and no nightly: `-Zsanitizer` is accepted by the stable compiler under
# RUSTC_BOOTSTRAP=1, whose sysroot ships the ASan runtime. With cargo-fuzz installed,
# `RUSTC_BOOTSTRAP=1 cargo fuzz run <target>` in the top directory runs the same targets.
#
#   checks/fuzz.sh                       # every target, 30 s each
#   FUZZ_TIME=300 checks/fuzz.sh sse     # one target, 5 minutes
# Env: FUZZ_TIME (seconds per target, 30), FUZZ_SANITIZER (address | none),
# FUZZ_RSS_MB (2048), FUZZ_TIMEOUT (seconds one input may take, 10).
# A crash leaves its input in fuzz/artifacts/<target>/; replay it with
#   fuzz/target/x86_64-unknown-linux-gnu/release/<target> fuzz/artifacts/<target>/crash-…
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

FUZZ_TIME=${FUZZ_TIME:-30}
FUZZ_SANITIZER=${FUZZ_SANITIZER:-address}
FUZZ_RSS_MB=${FUZZ_RSS_MB:-2048}
FUZZ_TIMEOUT=${FUZZ_TIMEOUT:-10}
TARGET=x86_64-unknown-linux-gnu
ALL=(config publish channels cursor webhook ws_frame sse chunked)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL[@]}")

flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table"
flags+=" -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
[ "$FUZZ_SANITIZER" = none ] || flags+=" -Zsanitizer=$FUZZ_SANITIZER"
# --target keeps these flags off build scripts and proc macros.
RUSTC_BOOTSTRAP=1 RUSTFLAGS="$flags" cargo build --release --quiet --target "$TARGET" \
  $(printf -- '--bin %s ' "${targets[@]}")

failed=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  echo "fuzz: $t for ${FUZZ_TIME}s" >&2
  log="artifacts/$t/last.log"
  # Seeds the corpus from the committed examples (fuzz/seeds/<target>/), when any.
  seeds=()
  [ -d "seeds/$t" ] && seeds=("seeds/$t")
  if ASAN_OPTIONS=detect_leaks=1 "target/$TARGET/release/$t" "corpus/$t" "${seeds[@]}" \
    -max_total_time="$FUZZ_TIME" -rss_limit_mb="$FUZZ_RSS_MB" -timeout="$FUZZ_TIMEOUT" \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
    runs=$(awk '/^stat::number_of_executed_units:/ {print $2}' "$log")
    echo "fuzz: $t ok, ${runs:-?} runs" >&2
  else
    echo "fuzz: $t FAILED (log: fuzz/$log)" >&2
    grep -E -m 20 'panicked|ERROR|SUMMARY|Test unit written|deadly signal' "$log" >&2 || tail -20 "$log" >&2
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -eq 0 ]; then
  echo "PASS: ${targets[*]} (${FUZZ_TIME}s each)"
else
  echo "FAIL: ${failed[*]}"
  exit 1
fi
