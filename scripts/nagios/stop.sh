#!/usr/bin/env bash
# Stop the test Nagios and Apache started by setup.sh (as root). Waits, with a deadline,
# until both processes are gone. Does nothing for what is not running.
set -euo pipefail

LOCK_FILE=/run/nagios4/nagios4.pid
APACHE_PID_FILE=/run/apache2/apache2.pid

log() { printf '[nagios-stop] %s\n' "$*" >&2; }

# wait_gone PID NAME: polls until PID has exited (30 s at most).
wait_gone() {
    local pid=$1 name=$2 deadline=$(($(date +%s) + 30))
    while kill -0 "$pid" 2>/dev/null; do
        if (($(date +%s) >= deadline)); then
            log "ERROR: $name (pid $pid) still running after 30s"
            return 1
        fi
        sleep 0.1
    done
}

status=0
if [[ -r $LOCK_FILE ]]; then
    pid=$(tr -dc '0-9' <"$LOCK_FILE")
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == nagios4 ]]; then
        log "stopping nagios4 (pid $pid)"
        kill -TERM "$pid"
        wait_gone "$pid" nagios4 || status=1
    fi
fi

if [[ -r $APACHE_PID_FILE ]]; then
    pid=$(tr -dc '0-9' <"$APACHE_PID_FILE")
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        log "stopping apache (pid $pid)"
        apachectl stop
        wait_gone "$pid" apache2 || status=1
    fi
fi
exit $status
