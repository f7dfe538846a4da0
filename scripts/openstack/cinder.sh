#!/usr/bin/env bash
# Start a real Cinder 25.3 (OpenStack 2024.2, from PyPI) on loopback for the synchronizer's
# Cinder plugin tests (Debian 12, as root), behind the Keystone of keystone-heat.sh, with
# volumes in two projects.
#
# - a Python venv ($OPENSTACK_STATE/cinder-venv) with cinder 25.3.1, `fixtures` (the fake
#   driver's module imports cinder.tests.unit, which needs it) and PyMySQL, installed with
#   the 2024.2 upper-constraints vendored beside this script (as for nova.sh);
# - a private MariaDB (Debian's mariadb-server, installed with apt-get when missing):
#   datadir and unix socket in $OPENSTACK_STATE/cinder, `--skip-networking` (no TCP port).
#   Cinder cannot run on sqlite reliably: with three writer processes cinder-volume dies at
#   start with `database is locked`; scripts/openstack/README.md);
# - cinder-api on 127.0.0.1:18776 (`auth_strategy = keystone`, keystonemiddleware against
#   the Keystone on 127.0.0.1:5000, service user `cinder`), cinder-scheduler and
#   cinder-volume (host lab-cinder, backend `fake`: Cinder's own
#   `cinder.tests.fake_driver.FakeLoggingVolumeDriver`, the LVM driver with its LVM calls
#   faked; no storage, no device-mapper needed); the catalog's `volumev3` endpoint
#   `http://127.0.0.1:18776/v3/%(project_id)s` in RegionOne;
# - notifications (`messagingv2`, topic `vitrage_notifications`) and RPC on the RabbitMQ
#   vhost `cinder` (scripts/rabbitmq/ensure.sh): Cinder publishes on exchange `openstack`
#   (it never sets its control exchange), printed as $SYNCHRONIZER_REAL_CINDER_AMQP;
# - seed, as user demo in demo-a / demo-b: vol-a1 (1 GB, attached through the attachments
#   API to the lab Nova's server vm-a1, as Nova does: create with a connector, complete),
#   vol-a2 (2 GB, available) in demo-a; vol-b1 (1 GB, available) and vol-b2-err (type
#   `nowhere`, whose backend does not exist: status error) in demo-b. vm-a1's id comes
#   from the Nova of nova.sh (waited for, with a deadline); when the lab Nova was
#   restarted since (new server ids), vol-a1 is detached and attached to the new vm-a1.
#
# Readiness is checked by polling with deadlines (no fixed sleeps). Idempotent: run it
# again while everything is up and it only re-checks. `stop.sh` stops what it started.
# Prints `export ...` lines for the tests on stdout.
#
# Environment: OPENSTACK_STATE (default <repo>/target/openstack), OS_ADMIN_PASSWORD and
# OS_DEMO_PASSWORD (as for keystone-heat.sh), OPENSTACK_READY_TIMEOUT seconds (default 240),
# OPENSTACK_NOVA_TIMEOUT seconds to wait for the lab Nova's vm-a1 (default 900: nova.sh may
# run beside it).
set -euo pipefail
LOG_TAG=cinder
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ $EUID -eq 0 ]] || die "run as root"
READY_TIMEOUT="${OPENSTACK_READY_TIMEOUT:-240}"
# How long to wait for the lab Nova's vm-a1 (nova.sh may be starting beside this script).
NOVA_TIMEOUT="${OPENSTACK_NOVA_TIMEOUT:-900}"
ADMIN_PASSWORD="${OS_ADMIN_PASSWORD:-synchronizer-admin}"
DEMO_PASSWORD="${OS_DEMO_PASSWORD:-synchronizer-demo}"
SERVICE_PASSWORD="synchronizer-service"
VENV="$STATE/cinder-venv"
CV="$STATE/cinder"
SOCK="$CV/mysql.sock"
API=http://127.0.0.1:18776
mkdir -p "$CV/locks"
need curl jq
if ! command -v mariadbd >/dev/null && [[ ! -x /usr/sbin/mariadbd ]]; then
    log "installing mariadb-server"
    created_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        # Keep the maintainer scripts from starting the system's server: this lab runs its own.
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mariadb-server >&2
    if ((created_policy)); then rm -f /usr/sbin/policy-rc.d; fi
fi
MARIADBD="$(command -v mariadbd || echo /usr/sbin/mariadbd)"

# --- 1. Keystone (keystone-heat.sh's) and the venv -----------------------------------------
http_is http://127.0.0.1:5000/v3 200 ||
    die "no Keystone on 127.0.0.1:5000: run scripts/openstack/keystone-heat.sh first"
OSC="$STATE/kh-venv/bin/openstack"
[[ -x "$OSC" ]] || die "$OSC missing: run scripts/openstack/keystone-heat.sh first"
export OS_AUTH_URL=http://127.0.0.1:5000/v3 OS_IDENTITY_API_VERSION=3 OS_USERNAME=admin \
    OS_PASSWORD="$ADMIN_PASSWORD" OS_PROJECT_NAME=admin OS_USER_DOMAIN_ID=default \
    OS_PROJECT_DOMAIN_ID=default OS_REGION_NAME=RegionOne OS_INTERFACE=public
make_venv "$VENV" "$HERE/upper-constraints-2024.2.txt" cinder==25.3.1 fixtures PyMySQL
B="$VENV/bin"

# --- 2. identities and the catalog (once per Keystone) ------------------------------------
if [[ ! -f "$STATE/keystone/.cinder-identities" ]]; then
    log "creating Cinder's user and endpoints in Keystone"
    "$OSC" user create --or-show --domain default --password "$SERVICE_PASSWORD" cinder >/dev/null
    "$OSC" role add --project service --user cinder admin
    if ! "$OSC" service show volumev3 >/dev/null 2>&1; then
        "$OSC" service create --name cinderv3 volumev3 >/dev/null
    fi
    if [[ -z "$("$OSC" endpoint list --service volumev3 -f value -c ID)" ]]; then
        for i in public internal admin; do
            "$OSC" endpoint create --region RegionOne volumev3 "$i" "$API/v3/%(project_id)s" >/dev/null
        done
    fi
    touch "$STATE/keystone/.cinder-identities"
fi
# The role `service` on user cinder: a request carrying its token as X-Service-Token is a
# service's (Nova sends one), which Cinder requires before it deletes an attachment that is
# connected to a server without asking Nova (bug #2004555; the lab Nova has no Keystone).
if [[ ! -f "$STATE/keystone/.cinder-service-role" ]]; then
    "$OSC" role create --or-show service >/dev/null
    "$OSC" role add --project service --user cinder service
    touch "$STATE/keystone/.cinder-service-role"
fi

# --- 3. RabbitMQ vhost ---------------------------------------------------------------------
bash "$REPO/scripts/rabbitmq/ensure.sh" >&2
if ! rabbitmqctl -q list_vhosts | grep -qx cinder; then rabbitmqctl -q add_vhost cinder >&2; fi
if ! rabbitmqctl -q list_users | awk '{print $1}' | grep -qx cinder; then
    rabbitmqctl -q add_user cinder cinder >&2
fi
rabbitmqctl -q set_permissions -p cinder cinder '.*' '.*' '.*' >&2
CINDER_AMQP=amqp://cinder:cinder@127.0.0.1:5672/cinder

# --- 4. MariaDB ----------------------------------------------------------------------------
if [[ ! -d "$CV/mysql/mysql" ]]; then
    log "initializing MariaDB in $CV/mysql"
    rm -rf "$CV/mysql"
    mariadb-install-db --no-defaults --datadir="$CV/mysql" --user=root --skip-test-db \
        --auth-root-authentication-method=socket >"$STATE/log/cinder-mariadb-install.log" 2>&1 ||
        { tail -n 20 "$STATE/log/cinder-mariadb-install.log" >&2; die "mariadb-install-db failed"; }
fi
start cinder-mariadb "$MARIADBD" --no-defaults --datadir="$CV/mysql" --socket="$SOCK" \
    --skip-networking --user=root --pid-file="$CV/mysql.pid" \
    --log-error="$STATE/log/cinder-mariadb-app.log" --innodb-buffer-pool-size=64M
wait_until "MariaDB on $SOCK" 60 mariadb-admin --no-defaults --socket="$SOCK" -uroot ping
mariadb --no-defaults --socket="$SOCK" -uroot -e "
CREATE DATABASE IF NOT EXISTS cinder;
CREATE USER IF NOT EXISTS 'cinder'@'localhost' IDENTIFIED BY 'cinder';
GRANT ALL PRIVILEGES ON cinder.* TO 'cinder'@'localhost';"

# --- 5. configuration ----------------------------------------------------------------------
cat >"$CV/cinder.conf" <<CONF
[DEFAULT]
transport_url = rabbit://cinder:cinder@127.0.0.1:5672/cinder
auth_strategy = keystone
osapi_volume_listen = 127.0.0.1
osapi_volume_listen_port = 18776
osapi_volume_workers = 1
enabled_backends = fake
host = lab-cinder
state_path = $CV
my_ip = 127.0.0.1
log_dir = $STATE/log
glance_api_servers = http://127.0.0.1:9292
api_paste_config = $VENV/etc/cinder/api-paste.ini
[fake]
volume_driver = cinder.tests.fake_driver.FakeLoggingVolumeDriver
volume_backend_name = fake
target_helper = fake
[database]
connection = mysql+pymysql://cinder:cinder@localhost/cinder?unix_socket=$SOCK&charset=utf8
[keystone_authtoken]
www_authenticate_uri = http://127.0.0.1:5000/v3
auth_url = http://127.0.0.1:5000/v3
auth_type = password
username = cinder
password = $SERVICE_PASSWORD
project_name = service
user_domain_id = default
project_domain_id = default
[oslo_concurrency]
lock_path = $CV/locks
[oslo_messaging_notifications]
driver = messagingv2
topics = vitrage_notifications
CONF
if [[ ! -f "$CV/.db" ]]; then
    log "creating the database"
    "$B/cinder-manage" --config-file "$CV/cinder.conf" db sync >&2
    touch "$CV/.db"
fi

# --- 6. services ---------------------------------------------------------------------------
# Each with its own log file (log_dir): cinder-api.log, cinder-scheduler.log, cinder-volume.log.
start cinder-api "$B/cinder-api" --config-file "$CV/cinder.conf"
start cinder-scheduler "$B/cinder-scheduler" --config-file "$CV/cinder.conf"
start cinder-volume "$B/cinder-volume" --config-file "$CV/cinder.conf"
wait_until "cinder-api on 127.0.0.1:18776" "$READY_TIMEOUT" http_is "$API/" 300 200

# Tokens of the admin and of demo in each project, and the projects' ids.
token() { # token PROJECT [USER PASSWORD]
    local body
    body="$(jq -n --arg u "${2:-admin}" --arg pw "${3:-$ADMIN_PASSWORD}" --arg p "$1" \
        '{auth: {identity: {methods: ["password"], password: {user: {name: $u, domain: {id: "default"}, password: $pw}}},
          scope: {project: {name: $p, domain: {id: "default"}}}}}')"
    curl -sf -D - -o /dev/null -X POST -H "Content-Type: application/json" -d "$body" \
        http://127.0.0.1:5000/v3/auth/tokens | awk 'tolower($1) == "x-subject-token:" {print $2}' | tr -d '\r'
}
ADMIN_TOKEN="$(token admin)"
TOKEN_A="$(token demo-a demo "$DEMO_PASSWORD")"
TOKEN_B="$(token demo-b demo "$DEMO_PASSWORD")"
SERVICE_TOKEN="$(token service cinder "$SERVICE_PASSWORD")"
[[ -n "$ADMIN_TOKEN" && -n "$TOKEN_A" && -n "$TOKEN_B" && -n "$SERVICE_TOKEN" ]] || die "Keystone gave no token"
PROJ_ADMIN="$("$OSC" project show admin -f value -c id)"
PROJ_A="$("$OSC" project show demo-a -f value -c id)"
PROJ_B="$("$OSC" project show demo-b -f value -c id)"
api() { # api TOKEN PROJECT METHOD PATH [BODY] [MICROVERSION]
    local t="$1" p="$2" method="$3" path="$4" body="${5:-}" mv="${6:-3.71}"
    curl -sf --max-time 60 -X "$method" -H "X-Auth-Token: $t" -H "Content-Type: application/json" \
        -H "OpenStack-API-Version: volume $mv" ${body:+-d "$body"} "$API/v3/$p$path"
}
admin() { api "$ADMIN_TOKEN" "$PROJ_ADMIN" "$@"; }
pool_known() {
    admin GET /scheduler-stats/get_pools | jq -e '.pools[] | select(.name == "lab-cinder@fake#fake")'
}
wait_until "cinder-scheduler knows the pool lab-cinder@fake#fake" "$READY_TIMEOUT" pool_known
volume_up() {
    admin GET /os-services | jq -e '.services[] | select(.binary == "cinder-volume" and .state == "up")'
}
wait_until "cinder-volume up" "$READY_TIMEOUT" volume_up

# --- 7. seed -------------------------------------------------------------------------------
if ! admin GET /types | jq -e '.volume_types[] | select(.name == "nowhere")' >/dev/null; then
    id="$(admin POST /types '{"volume_type": {"name": "nowhere", "os-volume-type-access:is_public": true}}' | jq -r .volume_type.id)"
    admin POST "/types/$id/extra_specs" '{"extra_specs": {"volume_backend_name": "nowhere"}}' >/dev/null
fi
vol() { # vol NAME FIELD: of the volume named NAME (any project)
    admin GET "/volumes/detail?all_tenants=1&name=$1" | jq -r ".volumes[0].$2 // empty"
}
settled() { local s; s="$(vol "$1" status)"; [[ "$s" == available || "$s" == in-use || "$s" == error ]]; }
gone() { [[ -z "$(vol "$1" id)" ]]; }
# ensure NAME TOKEN PROJECT SIZE WANT [TYPE]: the volume exists and settled in state WANT
# (one left in another settled state by an earlier run is deleted and created again).
ensure() {
    local name="$1" t="$2" p="$3" size="$4" want="$5" type="${6:-}" id status
    id="$(vol "$name" id)"
    if [[ -n "$id" ]]; then
        wait_until "$name settled" 120 settled "$name" || true
        status="$(vol "$name" status)"
        if [[ "$status" == "$want" || ("$want" == available && "$status" == in-use) ]]; then return 0; fi
        log "$name is $status, not $want: deleting it"
        admin POST "/volumes/$id/action" '{"os-force_delete": null}' >/dev/null || true
        wait_until "$name deleted" 120 gone "$name"
    fi
    log "creating $name in $p"
    api "$t" "$p" POST /volumes "$(jq -n --arg n "$name" --argjson s "$size" --arg ty "$type" \
        '{volume: ({name: $n, size: $s} + (if $ty == "" then {} else {volume_type: $ty} end))}')" >/dev/null
    wait_until "$name settled" "$READY_TIMEOUT" settled "$name"
    [[ "$(vol "$name" status)" == "$want" ]] || die "$name is $(vol "$name" status), not $want"
}
ensure vol-a1 "$TOKEN_A" "$PROJ_A" 1 available
ensure vol-a2 "$TOKEN_A" "$PROJ_A" 2 available
ensure vol-b1 "$TOKEN_B" "$PROJ_B" 1 available
ensure vol-b2-err "$TOKEN_B" "$PROJ_B" 1 error nowhere

# vol-a1 attached to the lab Nova's vm-a1 (nova.sh: noauth2, X-Auth-Token admin:admin).
nova_server() {
    curl -sf --max-time 10 -H "X-Auth-Token: admin:admin" \
        "http://127.0.0.1:8774/v2.1/servers/detail?all_tenants=1&name=^$1\$" |
        jq -er ".servers[] | select(.status == \"ACTIVE\") | .id"
}
wait_until "the lab Nova's vm-a1 ACTIVE (scripts/openstack/nova.sh)" "$NOVA_TIMEOUT" nova_server vm-a1 ||
    die "no ACTIVE vm-a1 in the lab Nova: start scripts/openstack/nova.sh"
SERVER="$(nova_server vm-a1)"
A1="$(vol vol-a1 id)"
attached_to() { admin GET "/volumes/$A1" | jq -r '[.volume.attachments[].server_id] | join(" ")'; }
if [[ "$(attached_to)" != "$SERVER" ]]; then
    for att in $(admin GET "/volumes/$A1" | jq -r '.volume.attachments[].attachment_id'); do
        log "detaching vol-a1 from a server of an earlier lab Nova (attachment $att)"
        curl -sf --max-time 60 -X DELETE -H "X-Auth-Token: $ADMIN_TOKEN" -H "X-Service-Token: $SERVICE_TOKEN" \
            -H "OpenStack-API-Version: volume 3.71" "$API/v3/$PROJ_ADMIN/attachments/$att" >/dev/null
    done
    available() { [[ "$(vol vol-a1 status)" == available ]]; }
    wait_until "vol-a1 available" 120 available
    log "attaching vol-a1 to vm-a1 ($SERVER)"
    connector='{"initiator": "iqn.1993-08.org.debian:01:lab", "ip": "127.0.0.1", "platform": "x86_64", "host": "compute1", "os_type": "linux", "multipath": false, "mountpoint": "/dev/vdb"}'
    att="$(api "$TOKEN_A" "$PROJ_A" POST /attachments \
        "{\"attachment\": {\"volume_uuid\": \"$A1\", \"instance_uuid\": \"$SERVER\", \"connector\": $connector, \"mode\": \"rw\"}}" |
        jq -r .attachment.id)"
    api "$TOKEN_A" "$PROJ_A" POST "/attachments/$att/action" '{"os-complete": null}' >/dev/null
    in_use() { [[ "$(vol vol-a1 status)" == in-use && "$(attached_to)" == "$SERVER" ]]; }
    wait_until "vol-a1 in-use, attached to vm-a1" 120 in_use
fi

log "ready: Cinder $API/v3 (Keystone catalog: volumev3)"
cat <<OUT
export SYNCHRONIZER_REAL_CINDER=$API/v3
export SYNCHRONIZER_REAL_CINDER_AMQP=$CINDER_AMQP
OUT
