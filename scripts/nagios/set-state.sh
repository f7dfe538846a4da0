#!/usr/bin/env bash
# Set the state of a service or host of the test Nagios (started by setup.sh) by writing a
# passive check result to its external command file, and wait until statusjson.cgi shows it.
#
#   set-state.sh HOST SERVICE STATE [OUTPUT]   STATE: OK | WARNING | CRITICAL | UNKNOWN
#   set-state.sh HOST -       STATE [OUTPUT]   the host itself; STATE: UP | DOWN | UNREACHABLE
#
# OUTPUT defaults to "<STATE>: set by set-state.sh". Environment: NAGIOS_HTTP_PORT (default
# 80), NAGIOS_CHECK_TIME (Unix seconds, default now: when the check ran, as NSCA or NRDP
# pass on a buffered result; Nagios makes it the last check time, even when older than the
# one it had), NAGIOS_NO_WAIT=1 to return as soon as the line is written,
# NAGIOS_WAIT_TIMEOUT seconds (default 30).
set -euo pipefail

CMD_FILE=/var/lib/nagios4/rw/nagios.cmd
BASE_URL="http://127.0.0.1:${NAGIOS_HTTP_PORT:-80}/cgi-bin/nagios4"

usage() { sed -n '2,12p' "$0" >&2; exit 2; }
(($# >= 3 && $# <= 4)) || usage
host=$1 service=$2 state=${3^^}
output=${4:-"$state: set by set-state.sh"}
case "$host$service" in *';'*)
    echo "set-state.sh: ';' cannot appear in a host or service name" >&2
    exit 2 ;;
esac
case "$host$service$output" in *$'\n'*)
    echo "set-state.sh: newlines cannot appear in host, service or output" >&2
    exit 2 ;;
esac

if [[ $service == - ]]; then
    case $state in UP) code=0 bit=2 ;; DOWN) code=1 bit=4 ;; UNREACHABLE) code=2 bit=8 ;; *) usage ;; esac
    line="PROCESS_HOST_CHECK_RESULT;$host;$code;$output"
    query="query=host&hostname=$(jq -rn --arg v "$host" '$v|@uri')"
    path='.data.host'
else
    case $state in OK) code=0 bit=2 ;; WARNING) code=1 bit=4 ;; CRITICAL) code=2 bit=16 ;; UNKNOWN) code=3 bit=8 ;; *) usage ;; esac
    line="PROCESS_SERVICE_CHECK_RESULT;$host;$service;$code;$output"
    query="query=service&hostname=$(jq -rn --arg v "$host" '$v|@uri')&servicedescription=$(jq -rn --arg v "$service" '$v|@uri')"
    path='.data.service'
fi

check_time=${NAGIOS_CHECK_TIME:-$(date +%s)}
[[ $check_time =~ ^[0-9]+$ ]] || { echo "set-state.sh: NAGIOS_CHECK_TIME must be Unix seconds" >&2; exit 2; }

[[ -p $CMD_FILE ]] || { echo "set-state.sh: $CMD_FILE is not there: is Nagios running? (setup.sh)" >&2; exit 1; }
# Opening a FIFO blocks until Nagios reads it: bound the wait.
printf '[%s] %s\n' "$check_time" "$line" | timeout 10 tee "$CMD_FILE" >/dev/null ||
    { echo "set-state.sh: could not write to $CMD_FILE within 10s" >&2; exit 1; }

[[ ${NAGIOS_NO_WAIT:-0} == 1 ]] && exit 0
# Nagios keeps what precedes a '|' as the output (the rest is performance data), trimmed.
# The check time tells this result from an earlier one with the same state and output.
expected=${output%%|*}
expected=${expected%"${expected##*[![:space:]]}"}
deadline=$(($(date +%s) + ${NAGIOS_WAIT_TIMEOUT:-30}))
until curl -fsS --max-time 5 "$BASE_URL/statusjson.cgi?$query" 2>/dev/null |
    jq -e --argjson bit "$bit" --arg out "$expected" --argjson ms "$((check_time * 1000))" "$path | .status == \$bit and .plugin_output == \$out and .last_check == \$ms" >/dev/null 2>&1; do
    if (($(date +%s) >= deadline)); then
        echo "set-state.sh: statusjson.cgi does not show $host/$service as $state yet" >&2
        exit 1
    fi
    sleep 0.2
done
