#!/usr/bin/env bash
# Memory under hostile input (issue 9, SPEC §9): builds the release binary, then runs four
# probes against sidewire on the shipped config.yaml (free 127.0.0.1 ports, one fresh
# process per probe) and prints its RSS before and after each, and the peak:
#   - 30 anonymous WebSockets publishing 60 kB each to a new room:<random> for 10 s;
#   - a long-poll with a cursor at the start of 10 channels x 100 x 60 kB of history;
#   - one admin publish to 2,000 channels x 60 kB;
#   - 40 idempotency keys of 900 kB (each refused with 400).
# Loopback only; stops by itself (hard limit: 180 s after the build); every process it
# starts is stopped on exit. Results and the commit measured: docs/reliability.md.
#
#   checks/memory.sh                          # build, then probe target/release/sidewire
#   SIDEWIRE_BIN=/path/to/sidewire checks/memory.sh   # probe a given binary, no build
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${SIDEWIRE_BIN:-}
if [[ -z $BIN ]]; then
  # Memory, not CPU, is measured: skip fat LTO and one codegen unit (minutes on 2 cores).
  (cd "$ROOT" && CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    cargo build --release --bin sidewire) >&2
  BIN=$ROOT/target/release/sidewire
fi
# The probes clients bind 127.0.0.2-31 (one anonymous identity each): Linux routes all
# of 127.0.0.0/8 to loopback.
exec timeout --kill-after=10 180 python3 "$ROOT/checks/memory.py" "$BIN"
