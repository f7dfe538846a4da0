#!/usr/bin/env bash
# Checks the test Nagios end to end (as root): setup.sh, then a state written to the
# external command file shows in statusjson.cgi and in status.cgi, for a service and for a
# host, and basic auth guards /cgi-bin/nagios4-auth/. Puts the states it changed back to
# OK / UP. Exits non-zero on the first failure.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PORT="${NAGIOS_HTTP_PORT:-80}"
BASE="http://127.0.0.1:${PORT}/cgi-bin/nagios4"
AUTH_BASE="http://127.0.0.1:${PORT}/cgi-bin/nagios4-auth"

fail() { echo "selftest: FAIL: $*" >&2; exit 1; }
ok() { echo "selftest: ok: $*" >&2; }

t0=$(date +%s%N)
bash "$HERE/setup.sh"
ok "setup.sh in $((($(date +%s%N) - t0) / 1000000)) ms"

marker="selftest $(date +%s%N)"
t0=$(date +%s%N)
"$HERE/set-state.sh" compute-1 "Disk usage" CRITICAL "CRITICAL: $marker"
ok "statusjson.cgi shows the new service state after $((($(date +%s%N) - t0) / 1000000)) ms"
page=$(curl -fsS "$BASE/status.cgi?host=all&limit=0")
grep -qF "CRITICAL: $marker&nbsp;" <<<"$page" || fail "status.cgi does not show the service output"
curl -fsS "$BASE/statusjson.cgi?query=servicelist&details=true" |
    jq -e --arg m "CRITICAL: $marker" '.data.servicelist["compute-1"]["Disk usage"] | .status == 16 and .plugin_output == $m' >/dev/null ||
    fail "servicelist does not show the service state"
ok "status.cgi and statusjson.cgi servicelist show it"

"$HERE/set-state.sh" compute-1 - DOWN "DOWN: $marker"
page=$(curl -fsS "$BASE/status.cgi?host=all&limit=0")
grep -qF "class='statusHOSTDOWN'" <<<"$page" || fail "status.cgi does not colour the DOWN host"
curl -fsS "$BASE/statusjson.cgi?query=hostlist&details=true" |
    jq -e '.data.hostlist["compute-1"].status == 4' >/dev/null || fail "hostlist does not show DOWN"
ok "a DOWN host shows in status.cgi and hostlist"

code=$(curl -s -o /dev/null -w '%{http_code}' "$AUTH_BASE/statusjson.cgi?query=hostlist")
[[ $code == 401 ]] || fail "no credentials: HTTP $code, expected 401"
code=$(curl -s -o /dev/null -w '%{http_code}' -u nagiostest:wrong "$AUTH_BASE/statusjson.cgi?query=hostlist")
[[ $code == 401 ]] || fail "wrong password: HTTP $code, expected 401"
curl -fsS -u nagiostest:nagiostest "$AUTH_BASE/statusjson.cgi?query=hostlist" | jq -e '.result.type_code == 0' >/dev/null ||
    fail "basic auth with the right password"
ok "basic auth on /cgi-bin/nagios4-auth/"

"$HERE/set-state.sh" compute-1 - UP "UP: set by selftest.sh"
"$HERE/set-state.sh" compute-1 "Disk usage" OK "OK: set by selftest.sh"
ok "states restored"
echo "selftest: 5 passed, 0 failed"
