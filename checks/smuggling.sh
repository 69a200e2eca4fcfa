#!/usr/bin/env bash
# Request smuggling and hygiene probes (docs/reliability.md): sidewire in pass-through
# mode in front of a raw TCP backend (tools/smuggle.py) that records the exact bytes it
# gets. Each probe goes out on its own connection over a raw socket (HTTP/1.1) or h2c
# (the `h2` Python package); the table shows sidewire's answer, how many probe requests
# reached the backend, and whether anything was smuggled past it. Exits 1 on any failure.
#
#   checks/smuggling.sh            # about 30 s
#   KEEP_TMP=1 checks/smuggling.sh # keep the config and sidewire's log
source "$(dirname "$0")/lib.sh"

need curl curl
need_py h2 h2
sw_build
sw_ports
sw_start "listen: \"127.0.0.1:$PUBLIC_PORT\"
admin: { listen: \"127.0.0.1:$ADMIN_PORT\" }
backend: { url: \"http://127.0.0.1:$BACKEND_PORT\", timeout: 5s }"

say "sidewire $(git describe --always --dirty 2>/dev/null) on 127.0.0.1:$PUBLIC_PORT, raw backend on 127.0.0.1:$BACKEND_PORT"
rc=0
timeout 120 python3 tools/smuggle.py --public "$PUBLIC_PORT" --backend-port "$BACKEND_PORT" || rc=$?
sw_alive || { say "FAIL: sidewire exited"; rc=1; }
if [ "$rc" = 0 ]; then say "smuggling: PASS"; else say "smuggling: FAIL"; fi
exit "$rc"
