#!/usr/bin/env bash
# Start a loopback-only Nagios 4 for the synchronizer's tests (Debian 12, as root).
#
# - installs nagios4, nagios4-cgi, monitoring-plugins-basic, apache2, curl and jq with
#   apt-get, only those that are missing;
# - configures Nagios with the test objects of nagios-test.cfg (beside this script):
#   hosts and services driven by passive checks only, so a test sets their states by
#   writing PROCESS_SERVICE_CHECK_RESULT / PROCESS_HOST_CHECK_RESULT lines to the
#   external command file (see README.md and set-state.sh);
# - makes Apache listen on 127.0.0.1 only and serve the CGIs at
#   http://127.0.0.1:${NAGIOS_HTTP_PORT}/cgi-bin/nagios4/ (no auth) and the same CGIs
#   behind basic auth at /cgi-bin/nagios4-auth/ (user nagiostest, password nagiostest);
# - starts `nagios4 -d` and `apachectl start` when they are not running (reloads them when
#   this script changed their configuration), then puts every test service and host
#   in OK / UP when Nagios was (re)started, and waits until statusjson.cgi lists every
#   configured service with a check result. No fixed sleeps: it polls with a deadline.
#
# Idempotent: run it again while everything is up and it only re-checks readiness.
# Environment: NAGIOS_HTTP_PORT (default 80), NAGIOS_READY_TIMEOUT seconds (default 60).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PORT="${NAGIOS_HTTP_PORT:-80}"
READY_TIMEOUT="${NAGIOS_READY_TIMEOUT:-60}"
NAGIOS_CFG=/etc/nagios4/nagios.cfg
CGI_CFG=/etc/nagios4/cgi.cfg
OBJECTS_SRC="$HERE/nagios-test.cfg"
OBJECTS_DST=/etc/nagios4/conf.d/synchronizer-test.cfg
FIDELITY_SRC="$HERE/nagios-fidelity.cfg"
FIDELITY_DST=/etc/nagios4/conf.d/synchronizer-fidelity.cfg
CMD_FILE=/var/lib/nagios4/rw/nagios.cmd
LOCK_FILE=/run/nagios4/nagios4.pid
BASE_URL="http://127.0.0.1:${PORT}/cgi-bin/nagios4"

log() { printf '[nagios-setup] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $EUID -eq 0 ]] || die "run as root"
[[ -f "$OBJECTS_SRC" ]] || die "missing $OBJECTS_SRC"
[[ -f "$FIDELITY_SRC" ]] || die "missing $FIDELITY_SRC"

start_ts=$(date +%s)

# --- 1. packages ---------------------------------------------------------------------
packages=(nagios4 nagios4-cgi monitoring-plugins-basic apache2 curl jq)
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    log "installing: ${missing[*]}"
    # Keep the packages' maintainer scripts from starting the daemons with their stock
    # configuration (which would, among others, let Nagios check for updates over the
    # network): Debian's docker images already ship a policy-rc.d that does this.
    created_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
    if ((created_policy)); then rm -f /usr/sbin/policy-rc.d; fi
fi

# --- 2. configuration ----------------------------------------------------------------
nagios_changed=0
apache_changed=0

# write_if_changed DEST: writes stdin to DEST when its content differs; returns 0 when it wrote.
write_if_changed() {
    local dest=$1 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [[ -f "$dest" ]] && cmp -s "$tmp" "$dest"; then
        rm -f "$tmp"
        return 1
    fi
    install -m 0644 "$tmp" "$dest"
    rm -f "$tmp"
    return 0
}

# set_option FILE KEY VALUE: KEY=VALUE in a Nagios config file (replaces or appends).
set_option() {
    local file=$1 key=$2 value=$3
    if grep -qxF "${key}=${value}" "$file"; then
        return 1
    fi
    if grep -q "^${key}=" "$file"; then
        sed -i "s|^${key}=.*|${key}=${value}|" "$file"
    else
        printf '%s=%s\n' "$key" "$value" >>"$file"
    fi
    return 0
}

# The test objects replace the stock localhost checks, whose states depend on the
# machine (SSH refused, no swap): every state a test sees is one it set.
if grep -q '^cfg_file=/etc/nagios4/objects/localhost.cfg' "$NAGIOS_CFG"; then
    sed -i 's|^cfg_file=/etc/nagios4/objects/localhost.cfg|#&|' "$NAGIOS_CFG"
    nagios_changed=1
fi
declare -A nagios_options=(
    [check_external_commands]=1         # read the external command file
    [accept_passive_service_checks]=1
    [accept_passive_host_checks]=1
    [passive_host_checks_are_soft]=0
    [status_update_interval]=1          # the CGIs read status.dat: rewrite it every second
    [check_for_updates]=0               # no traffic to the outside
    [enable_notifications]=0            # no mail on this machine
    [use_syslog]=0
    [log_passive_checks]=1
    [date_format]=us                    # the stock format, as in the captured fixtures
)
for key in "${!nagios_options[@]}"; do
    if set_option "$NAGIOS_CFG" "$key" "${nagios_options[$key]}"; then nagios_changed=1; fi
done
# Nagios 4 reads external commands as they arrive; command_check_interval is obsolete
# there (it only logs a warning), so it is not set.
if set_option "$CGI_CFG" result_limit 0; then :; fi   # status.cgi lists everything by default
mkdir -p /etc/nagios4/conf.d
if write_if_changed "$OBJECTS_DST" <"$OBJECTS_SRC"; then nagios_changed=1; fi
if write_if_changed "$FIDELITY_DST" <"$FIDELITY_SRC"; then nagios_changed=1; fi

# The CGIs read status.dat and friends under /var/lib/nagios4.
if ! id -nG www-data | tr ' ' '\n' | grep -qx nagios; then
    usermod -a -G nagios www-data
    apache_changed=1
fi

# Apache: loopback only, CGIs on, the Debian nagios4 site plus a basic-auth twin.
if write_if_changed /etc/apache2/ports.conf <<EOF
# Written by synchronizer scripts/nagios/setup.sh: loopback only.
Listen 127.0.0.1:${PORT}
ServerName 127.0.0.1
EOF
then apache_changed=1; fi
if ! [[ -f /etc/apache2/nagios4-test.htpasswd ]] || ! grep -q '^nagiostest:' /etc/apache2/nagios4-test.htpasswd; then
    htpasswd -bcB /etc/apache2/nagios4-test.htpasswd nagiostest nagiostest 2>/dev/null
    chmod 0644 /etc/apache2/nagios4-test.htpasswd
    apache_changed=1
fi
if write_if_changed /etc/apache2/conf-available/nagios4-test-auth.conf <<'EOF'
# Written by synchronizer scripts/nagios/setup.sh: the Nagios CGIs behind basic auth,
# for tests of a collector's credentials (user nagiostest, password nagiostest).
ScriptAlias /cgi-bin/nagios4-auth /usr/lib/cgi-bin/nagios4
<Location /cgi-bin/nagios4-auth>
    AuthType Basic
    AuthName "Nagios4 test"
    AuthBasicProvider file
    AuthUserFile /etc/apache2/nagios4-test.htpasswd
    Require valid-user
</Location>
EOF
then apache_changed=1; fi
for mod in cgi auth_digest authz_groupfile auth_basic authn_file; do
    # a2enmod picks cgid instead of cgi under a threaded MPM.
    if a2query -q -m "$mod" 2>/dev/null || { [[ $mod == cgi ]] && a2query -q -m cgid 2>/dev/null; }; then
        continue
    fi
    a2enmod -q "$mod" >/dev/null
    apache_changed=1
done
for conf in nagios4-cgi nagios4-test-auth; do
    if ! a2query -q -c "$conf" 2>/dev/null; then
        a2enconf -q "$conf" >/dev/null
        apache_changed=1
    fi
done
apachectl configtest 2>/dev/null || { apachectl configtest; die "apache configuration is invalid"; }

# --- 3. processes --------------------------------------------------------------------
nagios_pid() {
    local pid
    [[ -r $LOCK_FILE ]] || return 1
    pid=$(tr -dc '0-9' <"$LOCK_FILE")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == nagios4 ]] || return 1
    echo "$pid"
}
nagios_up() { nagios_pid >/dev/null; }
apache_running() {
    local pid
    [[ -r /run/apache2/apache2.pid ]] || return 1
    pid=$(tr -dc '0-9' </run/apache2/apache2.pid)
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

# wait_for DESCRIPTION TIMEOUT COMMAND...: polls COMMAND until it succeeds or TIMEOUT s pass.
wait_for() {
    local what=$1 timeout=$2 deadline
    shift 2
    deadline=$(($(date +%s) + timeout))
    until "$@"; do
        if (($(date +%s) >= deadline)); then
            die "timed out after ${timeout}s waiting for $what"
        fi
        sleep 0.2
    done
}

nagios4 -v "$NAGIOS_CFG" >/tmp/nagios4-verify.log 2>&1 || { cat /tmp/nagios4-verify.log >&2; die "nagios4 -v failed"; }

mkdir -p /run/nagios4 /var/lib/nagios4/rw /var/log/nagios4
chown nagios:nagios /run/nagios4 /var/log/nagios4
nagios_restarted=0
if pid=$(nagios_pid) && ((nagios_changed)); then
    # A full restart rather than a SIGHUP reload: its end is easy to see (a new pid).
    log "restarting nagios (pid $pid): configuration changed"
    kill -TERM "$pid"
    wait_for "nagios4 (pid $pid) to exit" 30 bash -c "! kill -0 $pid 2>/dev/null"
fi
if ! nagios_pid >/dev/null; then
    log "starting nagios4"
    rm -f "$LOCK_FILE"
    nagios4 -d "$NAGIOS_CFG"
    wait_for "nagios4 to write its pid file" 30 nagios_up
    nagios_restarted=1
fi
# The command pipe exists once Nagios listens on it.
wait_for "the external command file $CMD_FILE" 30 test -p "$CMD_FILE"

if apache_running; then
    if ((apache_changed)); then
        log "reloading apache: configuration changed"
        apachectl graceful
    fi
else
    log "starting apache"
    apachectl start
fi
wait_for "apache to answer" 30 curl -fsS -o /dev/null "http://127.0.0.1:${PORT}/nagios4/"

# --- 4. initial states and readiness -------------------------------------------------
# Configured services and hosts, from the object file: "host;service" lines and host names.
mapfile -t services < <(awk '
    /^[[:space:]]*define[[:space:]]+service/ { in_svc = 1; h = ""; d = ""; p = 0; next }
    in_svc && tolower($1) == "_synchronizer_pending" { p = 1 }
    in_svc && $1 == "host_name" { h = $2 }
    in_svc && $1 == "service_description" { $1 = ""; sub(/^[[:space:]]+/, ""); d = $0 }
    in_svc && /^[[:space:]]*}/ { if (h != "" && d != "" && !p) print h ";" d; in_svc = 0 }' "$OBJECTS_SRC" "$FIDELITY_SRC")
mapfile -t hosts < <(awk '
    /^[[:space:]]*define[[:space:]]+host[[:space:]]*{/ { in_host = 1; next }
    in_host && $1 == "host_name" { print $2 }
    in_host && /^[[:space:]]*}/ { in_host = 0 }' "$OBJECTS_SRC" "$FIDELITY_SRC")
((${#services[@]})) || die "no services found in $OBJECTS_SRC"

if ((nagios_restarted)); then
    # Fresh start: every test service OK and every test host UP, so tests start from a
    # known state. (A re-run while running keeps whatever states the tests set.)
    now=$(date +%s)
    {
        for h in "${hosts[@]}"; do
            printf '[%s] PROCESS_HOST_CHECK_RESULT;%s;0;UP: set by setup.sh\n' "$now" "$h"
        done
        for s in "${services[@]}"; do
            printf '[%s] PROCESS_SERVICE_CHECK_RESULT;%s;0;OK: set by setup.sh\n' "$now" "$s"
        done
    } | timeout 10 tee "$CMD_FILE" >/dev/null || die "could not write to $CMD_FILE"
fi

# Ready when statusjson.cgi lists every configured service, each with a check result.
services_json=$(printf '%s\n' "${services[@]}" | jq -R 'split(";") | {host: .[0], service: .[1]}' | jq -s .)
ready() {
    curl -fsS --max-time 5 "${BASE_URL}/statusjson.cgi?query=servicelist&details=true" 2>/dev/null |
        jq -e --argjson want "$services_json" '
            .result.type_code == 0 and
            ([$want[] as $w | .data.servicelist[$w.host][$w.service].has_been_checked] | all)
        ' >/dev/null 2>&1
}
wait_for "statusjson.cgi to list the ${#services[@]} test services with results" "$READY_TIMEOUT" ready

log "ready in $(($(date +%s) - start_ts))s: ${BASE_URL}/status.cgi?host=all&limit=0 and ${BASE_URL}/statusjson.cgi (${#services[@]} services on ${#hosts[@]} hosts; command file $CMD_FILE)"
