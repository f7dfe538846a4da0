# Shared helpers of the OpenStack test scripts (sourced, not run).
# State lives in $OPENSTACK_STATE (default <repo>/target/openstack).

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
STATE="${OPENSTACK_STATE:-$REPO/target/openstack}"
PY="${PYTHON:-python3}"
mkdir -p "$STATE/log" "$STATE/run"

log() { printf '[%s] %s\n' "${LOG_TAG:-openstack}" "$*" >&2; }
# need CMD...: installs the Debian package of each command that is missing (same name).
need() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null || { apt-get update >&2; apt-get install -y "$c" >&2; }
    done
}
die() { log "ERROR: $*"; exit 1; }

# wait_until DESCRIPTION TIMEOUT_SECONDS COMMAND...: runs COMMAND until it succeeds or
# the deadline passes (a readiness check: polls, never a fixed sleep).
wait_until() {
    local what="$1" timeout="$2"; shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${timeout}s waiting for $what"
            return 1
        fi
        sleep 0.5
    done
    log "$what: ready"
}

# http_status URL: prints the HTTP status of GET URL (000 when nothing answers).
http_status() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$1" || true; }

# http_is URL STATUS...: succeeds when GET URL answers one of the statuses.
http_is() {
    local url="$1"; shift
    local got; got="$(http_status "$url")"
    local s; for s in "$@"; do [[ "$got" == "$s" ]] && return 0; done
    return 1
}

# running NAME: whether the process of pidfile run/NAME.pid is alive.
running() { [[ -f "$STATE/run/$1.pid" ]] && kill -0 "$(cat "$STATE/run/$1.pid")" 2>/dev/null; }

# start NAME COMMAND...: starts COMMAND in the background (own session), logging to
# log/NAME.log, unless it is already running.
start() {
    local name="$1"; shift
    if running "$name"; then log "$name already running (pid $(cat "$STATE/run/$name.pid"))"; return 0; fi
    log "starting $name"
    setsid nohup "$@" >>"$STATE/log/$name.log" 2>&1 </dev/null &
    echo $! >"$STATE/run/$name.pid"
}

# stop NAME: stops the process of pidfile run/NAME.pid (its whole session).
stop() {
    local name="$1" pid
    [[ -f "$STATE/run/$name.pid" ]] || return 0
    pid="$(cat "$STATE/run/$name.pid")"
    if kill -0 "$pid" 2>/dev/null; then
        log "stopping $name (pid $pid)"
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 20))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$STATE/run/$name.pid"
}

# make_venv DIR CONSTRAINTS PACKAGE...: a venv with PACKAGEs installed under CONSTRAINTS
# (once: a marker file remembers what was installed).
make_venv() {
    local dir="$1" constraints="$2"; shift 2
    local want="$*"
    if [[ -f "$dir/.installed" && "$(cat "$dir/.installed")" == "$want" ]]; then
        return 0
    fi
    log "creating venv $dir: $want (constraints $(basename "$constraints"))"
    "$PY" -m venv "$dir"
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "pip<25" >&2
    # setuptools < 80: heat-engine (and others) still import pkg_resources.
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "setuptools<80" wheel >&2
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -c "$constraints" "$@" >&2
    echo "$want" >"$dir/.installed"
}

# sqlite_wal FILE: switches an sqlite database to WAL mode (persistent), otherwise
# concurrent WSGI workers and engines get "database is locked" 500s.
sqlite_wal() {
    "$PY" - "$1" <<'PYEOF'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("PRAGMA journal_mode=WAL")
c.close()
PYEOF
}
