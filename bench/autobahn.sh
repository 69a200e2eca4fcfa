#!/usr/bin/env bash
# Autobahn WebSocket conformance for sidewire's frame layer (docs/conformance.md).
#
# Builds examples/ws_echo.rs (the production handshake, config and close handling from
# src/ws/frames.rs, echoing instead of speaking JSON), starts it on 127.0.0.1, runs
# kosoku's Autobahn fuzzingclient against it, prints a summary, and exits non-zero when
# any case FAILED. kosoku (the Autobahn cases on Python 3; the original testsuite is
# Python 2 only) is installed into a venv under bench/out/ (git-ignored).
#
#   bench/autobahn.sh                 # cases 1-11 (12.*/13.* need permessage-deflate)
#   PORT=9001 bench/autobahn.sh       # a fixed port instead of a free one
#   MAX_MESSAGE_BYTES=65536 bench/autobahn.sh -i '9.*'   # production's default limit
#   SERVER=/tmp/deflate-eval/x/target/release/echo EXCLUDE= bench/autobahn.sh   # 1-13, another server
#
# Arguments are passed on to kosoku. Env: PYTHON (default python3, needs >= 3.10), PORT,
# OUT (reports dir), RUN_TIMEOUT (seconds for the kosoku run), MAX_MESSAGE_BYTES,
# SERVER (an echo server binary run as `$SERVER <port>` instead of building ws_echo;
# MAX_MESSAGE_BYTES does not apply to it), EXCLUDE (space-separated case patterns passed
# as `-x`; default '12.* 13.*'; set it empty to run every case).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
OUT=${OUT:-bench/out/autobahn}
RUN_TIMEOUT=${RUN_TIMEOUT:-600}
VENV=bench/out/venv
SERVER=${SERVER:-}
# `-` not `:-`: an empty EXCLUDE means exclude nothing.
EXCLUDE=${EXCLUDE-12.* 13.*}
exclude_args=()
set -f  # the patterns are kosoku's, not the shell's
for pattern in $EXCLUDE; do exclude_args+=(-x "$pattern"); done
set +f
# Autobahn's 9.* cases send messages of up to 16 MiB, the most production accepts.
MAX_MESSAGE_BYTES=${MAX_MESSAGE_BYTES:-$((16 << 20))}

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
  { echo "autobahn: kosoku needs Python >= 3.10 (set PYTHON)" >&2; exit 2; }
if ! "$VENV/bin/python" -c 'import importlib.metadata as m; assert m.version("kosoku") == "0.1.0"' 2>/dev/null; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check kosoku==0.1.0
fi

if [ -z "$SERVER" ]; then
  cargo build --release --example ws_echo
  SERVER=target/release/examples/ws_echo
  server_args=(--max-message-bytes "$MAX_MESSAGE_BYTES")
else
  server_args=()
fi

if [ -z "${PORT:-}" ]; then
  # A free port, so parallel worktrees and a stray server on 9001 do not collide.
  PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi

server_pid=
cleanup() { if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi; }
trap cleanup EXIT INT TERM

mkdir -p "$OUT"
"$SERVER" "$PORT" ${server_args[@]+"${server_args[@]}"} 2>"$OUT/server.log" &
server_pid=$!
# Ready when the port accepts; give up after 10 s (the server may have failed to bind).
ready=
for _ in $(seq 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then ready=1; break; fi
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
[ -n "$ready" ] || { echo "autobahn: $SERVER is not listening on $PORT" >&2; cat "$OUT/server.log" >&2; exit 1; }

rm -f "$OUT/index.json"
started=$(date +%s)
set +e
timeout "$RUN_TIMEOUT" "$VENV/bin/kosoku" -m fuzzingclient -p 4 ${exclude_args[@]+"${exclude_args[@]}"} -o "$OUT" "$@" "127.0.0.1:$PORT"
kosoku_rc=$?
set -e
echo "kosoku exited $kosoku_rc after $(($(date +%s) - started)) s"

# The summary (also written to $OUT/summary.md); exits 1 on any FAILED.
summary_rc=0
"$VENV/bin/python" - "$OUT" <<'PY' || summary_rc=$?
import collections, json, os, sys

out = sys.argv[1]
path = os.path.join(out, "index.json")
if not os.path.exists(path):
    sys.exit(f"autobahn: no {path}: kosoku did not finish")
with open(path) as f:
    cases = {cid: c for agent in json.load(f).values() for cid, c in agent.items()}

def key(cid):
    return [int(p) for p in cid.split(".")]

results = ["OK", "NON-STRICT", "INFORMATIONAL", "FAILED", "UNIMPLEMENTED"]
reports = {}
for cid, c in cases.items():
    with open(os.path.join(out, c["reportfile"])) as f:
        reports[cid] = json.load(f)
behavior = collections.Counter(c["behavior"] for c in cases.values())
close = collections.Counter(c["behaviorClose"] for c in cases.values())
lines = [f"{len(cases)} cases", "", "| result | behavior | behaviorClose |", "|---|---:|---:|"]
for r in results + sorted((set(behavior) | set(close)) - set(results)):
    lines.append(f"| {r} | {behavior.get(r, 0)} | {close.get(r, 0)} |")
# Who started the close, with which code, and whether the handshake completed cleanly.
for title, by_server in (("Closes started by the server", True), ("Closes started by kosoku", False)):
    mine = [r for r in reports.values() if r["closedByMe"] != by_server]
    codes = collections.Counter(str(r["remoteCloseCode"]) for r in mine)
    clean = sum(1 for r in mine if r["wasClean"])
    listed = ", ".join(f"{k} x{v}" for k, v in sorted(codes.items()))
    lines += ["", f"{title}: {len(mine)}, clean {clean}; server's code: {listed}"]
odd = [cid for cid in sorted(cases, key=key) if cases[cid]["behavior"] != "OK" or cases[cid]["behaviorClose"] != "OK"]
lines += ["", f"Not OK: {len(odd)}"]
for cid in odd:
    c, result = cases[cid], reports[cid].get("result") or ""
    lines.append(f"- {cid}: {c['behavior']} / close {c['behaviorClose']} (code {c['remoteCloseCode']}): {result[:160]}")
summary = "\n".join(lines)
print(summary)
with open(os.path.join(out, "summary.md"), "w") as f:
    f.write(summary + "\n")
sys.exit(1 if behavior["FAILED"] or close["FAILED"] else 0)
PY
[ "$kosoku_rc" -eq 0 ] && [ "$summary_rc" -eq 0 ]
