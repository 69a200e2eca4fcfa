#!/usr/bin/env bash
# TLS (docs/reliability.md): a self-signed certificate (openssl), sidewire's TLS
# listener, and testssl.sh (Debian's `testssl.sh` package: the `testssl` command) run
# with protocols (-p), cipher categories (-s) and every cipher per protocol (-E).
# PASS when SSLv2, SSLv3, TLS 1.0 and TLS 1.1 are refused, TLS 1.2 and 1.3 offered, and
# no NULL / anonymous / EXPORT / LOW / RC4 / 3DES / CBC cipher is offered. About 1-2 min.
#
#   checks/testssl.sh
#   KEEP_TMP=1 checks/testssl.sh     # keep testssl's JSON and log
source "$(dirname "$0")/lib.sh"

need testssl testssl.sh
need openssl openssl
need curl curl
need jq jq
sw_build
sw_ports
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$SW_TMP/key.pem" -out "$SW_TMP/cert.pem" 2>/dev/null
sw_spawn python3 tools/plain_backend.py "$BACKEND_PORT" 2>/dev/null
sw_start "listen: \"127.0.0.1:$PUBLIC_PORT\"
tls: { listen: \"127.0.0.1:$TLS_PORT\", cert: \"$SW_TMP/cert.pem\", key: \"$SW_TMP/key.pem\" }
admin: { listen: \"127.0.0.1:$ADMIN_PORT\" }
backend: { url: \"http://127.0.0.1:$BACKEND_PORT\" }"
wait_port "$TLS_PORT" || die "TLS listener not up"

say "sidewire $(git describe --always --dirty 2>/dev/null) TLS on 127.0.0.1:$TLS_PORT; testssl.sh $(dpkg-query -W -f '${Version}' testssl.sh 2>/dev/null || echo '(version unknown)')"
timeout 170 testssl --quiet --color 0 --warnings off --ip one -p -s -E --jsonfile "$SW_TMP/testssl.json" \
  "127.0.0.1:$TLS_PORT" >"$SW_TMP/testssl.log" 2>&1 || true
[ -s "$SW_TMP/testssl.json" ] || { cat "$SW_TMP/testssl.log" >&2; die "testssl produced no JSON"; }

J="$SW_TMP/testssl.json"
fail=0
check() { # check DESCRIPTION OK(0/1) DETAIL
  if [ "$2" = 1 ]; then say "PASS  $1: $3"; else say "FAIL  $1: $3"; fail=1; fi
}
finding() { jq -r --arg id "$1" '[.[] | select(.id == $id) | .finding] | first // "absent"' "$J"; }
for p in SSLv2 SSLv3 TLS1 TLS1_1; do
  f=$(finding "$p")
  check "$p refused" "$([[ $f == "not offered"* ]] && echo 1 || echo 0)" "$f"
done
for p in TLS1_2 TLS1_3; do
  f=$(finding "$p")
  check "$p offered" "$([[ $f == offered* ]] && echo 1 || echo 0)" "$f"
done
for c in cipherlist_NULL cipherlist_aNULL cipherlist_EXPORT cipherlist_LOW cipherlist_3DES_IDEA cipherlist_AVERAGE; do
  f=$(finding "$c")
  check "$c" "$([[ $f == "not offered"* ]] && echo 1 || echo 0)" "$f"
done
# Every cipher -E found (ids "cipher-tls1_2_x..." / "cipher-tls1_3_x..."): none weak.
jq -r '.[] | select(.id | test("^cipher-tls|^cipher_x|^cipher-x")) | .finding' "$J" >"$SW_TMP/ciphers"
weak=$(grep -Eic 'NULL|EXP|RC4|DES|CBC|MD5|anon' "$SW_TMP/ciphers" || true)
check "offered ciphers" "$([ "$weak" = 0 ] && [ -s "$SW_TMP/ciphers" ] && echo 1 || echo 0)" "$(wc -l <"$SW_TMP/ciphers") offered, $weak weak"
sed 's/^/      /' "$SW_TMP/ciphers"
if [ "$fail" = 0 ]; then say "testssl: PASS"; else say "testssl: FAIL"; fi
exit "$fail"
