#!/usr/bin/env bash
# Capture what the test Nagios (setup.sh) answers while late, back-dated passive results
# drive one service, for the replay tests of clock skew (tests/tests/nagios_skew.rs):
#
#   0-ok                   replay-0 "CPU load" OK, checked now
#   1-raised               WARNING, checked now
#   2-backdated-critical   CRITICAL, checked 120 s ago (a result NSCA/NRDP kept back)
#   3-cleared              OK, checked now
#   4-reraised-backdated   WARNING, checked 120 s ago
#
# After each step (set-state.sh waits until statusjson.cgi shows the result) it saves
# statusjson.cgi's servicelist and hostlist (details=true) and status.cgi?host=all&limit=0
# as <step>.servicelist.json, <step>.hostlist.json and <step>.status.html.
#
#   capture-late.sh [DIR]   DIR defaults to plugins/nagios/tests/fixtures/nagios4-late
#
# Only replay-0 is driven; every other host is captured as it is, so run it right after
# setup.sh (re)started Nagios (everything OK / UP) and while no test uses the Nagios.
# Environment: NAGIOS_HTTP_PORT (default 80).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="${1:-$HERE/../../plugins/nagios/tests/fixtures/nagios4-late}"
BASE_URL="http://127.0.0.1:${NAGIOS_HTTP_PORT:-80}/cgi-bin/nagios4"
HOST=replay-0
SERVICE="CPU load"

mkdir -p "$DIR"

# step NAME STATE OUTPUT AGE: sets the service, checked AGE seconds ago, then captures.
step() {
    local name=$1 state=$2 output=$3 age=$4
    NAGIOS_CHECK_TIME=$(($(date +%s) - age)) "$HERE/set-state.sh" "$HOST" "$SERVICE" "$state" "$output"
    curl -fsS --max-time 5 -o "$DIR/$name.servicelist.json" "$BASE_URL/statusjson.cgi?query=servicelist&details=true"
    curl -fsS --max-time 5 -o "$DIR/$name.hostlist.json" "$BASE_URL/statusjson.cgi?query=hostlist&details=true"
    curl -fsS --max-time 5 -o "$DIR/$name.status.html" "$BASE_URL/status.cgi?host=all&limit=0"
    echo "capture-late: $name: $state ($output), checked ${age}s ago" >&2
}

"$HERE/set-state.sh" "$HOST" - UP "PING OK"
"$HERE/set-state.sh" "$HOST" "Disk usage" OK "OK: 40% full"
step 0-ok OK "OK: load average 0.2" 0
step 1-raised WARNING "WARNING: load average 7.1" 0
step 2-backdated-critical CRITICAL "CRITICAL: load average 42" 120
step 3-cleared OK "OK: load average 0.3" 0
step 4-reraised-backdated WARNING "WARNING: load average 6.5" 120
echo "capture-late: wrote $DIR" >&2
