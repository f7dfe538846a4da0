#!/usr/bin/env bash
# Start a real Neutron 25.2 (OpenStack 2024.2, from PyPI) on loopback for the synchronizer's
# Neutron plugin tests (Debian 12, as root), behind the Keystone of keystone-heat.sh, with
# networks and ports in two projects.
#
# - a Python venv ($OPENSTACK_STATE/neutron-venv) with neutron 25.2.3, installed with the
#   2024.2 upper-constraints vendored beside this script (as for nova.sh);
# - neutron-server on 127.0.0.1:19696 (9696 is nova.sh's stub), `auth_strategy = keystone`
#   (keystonemiddleware against the Keystone on 127.0.0.1:5000, service user `neutron`),
#   `api_workers = 1`, no RPC workers and no agents: ML2 with type drivers flat, vlan and
#   vxlan (tenant networks vxlan), mechanism driver openvswitch without any agent (ports
#   stay DOWN, `binding:vif_type` unbound), the router service plugin without an L3 agent;
#   the catalog's `network` endpoint `http://127.0.0.1:19696` in RegionOne;
# - sqlite: `neutron-db-manage upgrade heads` fails on sqlite (ALTER of constraints), so the
#   schema is built from the models (`neutron.db.migration.models.head`, as Neutron's own
#   unit tests do) and stamped `heads`. One writer process (the API worker);
# - notifications (`messagingv2`, topic `vitrage_notifications`) on exchange `neutron` of
#   the RabbitMQ vhost `neutron` (scripts/rabbitmq/ensure.sh), printed as
#   $SYNCHRONIZER_REAL_NEUTRON_AMQP; Nova is not notified of port changes;
# - seed, created by the admin for the projects demo-a and demo-b (Keystone's ids): net-a
#   with subnet-a and ports port-a1 (`device_owner compute:nova`, `device_id` = the lab
#   Nova's vm-a1, waited for with a deadline) and port-a2 (no owner) in demo-a; net-b with
#   subnet-b and port-b1 (no owner) in demo-b. When the lab Nova was restarted since (new
#   server ids), port-a1's device_id is set to the new vm-a1.
#
# Readiness is checked by polling with deadlines (no fixed sleeps). Idempotent: run it
# again while everything is up and it only re-checks. `stop.sh` stops what it started.
# Prints `export ...` lines for the tests on stdout.
#
# Environment: OPENSTACK_STATE (default <repo>/target/openstack), OS_ADMIN_PASSWORD (as for
# keystone-heat.sh), OPENSTACK_READY_TIMEOUT seconds (default 240), OPENSTACK_NOVA_TIMEOUT
# seconds to wait for the lab Nova's vm-a1 (default 900: nova.sh may run beside it).
set -euo pipefail
LOG_TAG=neutron
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ $EUID -eq 0 ]] || die "run as root"
READY_TIMEOUT="${OPENSTACK_READY_TIMEOUT:-240}"
# How long to wait for the lab Nova's vm-a1 (nova.sh may be starting beside this script).
NOVA_TIMEOUT="${OPENSTACK_NOVA_TIMEOUT:-900}"
ADMIN_PASSWORD="${OS_ADMIN_PASSWORD:-synchronizer-admin}"
SERVICE_PASSWORD="synchronizer-service"
VENV="$STATE/neutron-venv"
NT="$STATE/neutron"
API=http://127.0.0.1:19696
mkdir -p "$NT/locks"
need curl jq

# --- 1. Keystone (keystone-heat.sh's) and the venv -----------------------------------------
http_is http://127.0.0.1:5000/v3 200 ||
    die "no Keystone on 127.0.0.1:5000: run scripts/openstack/keystone-heat.sh first"
OSC="$STATE/kh-venv/bin/openstack"
[[ -x "$OSC" ]] || die "$OSC missing: run scripts/openstack/keystone-heat.sh first"
export OS_AUTH_URL=http://127.0.0.1:5000/v3 OS_IDENTITY_API_VERSION=3 OS_USERNAME=admin \
    OS_PASSWORD="$ADMIN_PASSWORD" OS_PROJECT_NAME=admin OS_USER_DOMAIN_ID=default \
    OS_PROJECT_DOMAIN_ID=default OS_REGION_NAME=RegionOne OS_INTERFACE=public
make_venv "$VENV" "$HERE/upper-constraints-2024.2.txt" neutron==25.2.3
B="$VENV/bin"

# --- 2. identities and the catalog (once per Keystone) ------------------------------------
if [[ ! -f "$STATE/keystone/.neutron-identities" ]]; then
    log "creating Neutron's user and endpoints in Keystone"
    "$OSC" user create --or-show --domain default --password "$SERVICE_PASSWORD" neutron >/dev/null
    "$OSC" role add --project service --user neutron admin
    if ! "$OSC" service show network >/dev/null 2>&1; then
        "$OSC" service create --name neutron network >/dev/null
    fi
    if [[ -z "$("$OSC" endpoint list --service network -f value -c ID)" ]]; then
        for i in public internal admin; do
            "$OSC" endpoint create --region RegionOne network "$i" "$API" >/dev/null
        done
    fi
    touch "$STATE/keystone/.neutron-identities"
fi

# --- 3. RabbitMQ vhost ---------------------------------------------------------------------
bash "$REPO/scripts/rabbitmq/ensure.sh" >&2
if ! rabbitmqctl -q list_vhosts | grep -qx neutron; then rabbitmqctl -q add_vhost neutron >&2; fi
if ! rabbitmqctl -q list_users | awk '{print $1}' | grep -qx neutron; then
    rabbitmqctl -q add_user neutron neutron >&2
fi
rabbitmqctl -q set_permissions -p neutron neutron '.*' '.*' '.*' >&2
NEUTRON_AMQP=amqp://neutron:neutron@127.0.0.1:5672/neutron

# --- 4. configuration ----------------------------------------------------------------------
cat >"$NT/neutron.conf" <<CONF
[DEFAULT]
bind_host = 127.0.0.1
bind_port = 19696
core_plugin = ml2
service_plugins = router
auth_strategy = keystone
api_workers = 1
rpc_workers = 0
rpc_state_report_workers = 0
transport_url = rabbit://neutron:neutron@127.0.0.1:5672/neutron
notify_nova_on_port_status_changes = False
notify_nova_on_port_data_changes = False
host = lab-neutron
state_path = $NT
log_file = $STATE/log/neutron-app.log
api_paste_config = $VENV/etc/neutron/api-paste.ini
[database]
connection = sqlite:///$NT/neutron.db?timeout=30
[keystone_authtoken]
www_authenticate_uri = http://127.0.0.1:5000/v3
auth_url = http://127.0.0.1:5000/v3
auth_type = password
username = neutron
password = $SERVICE_PASSWORD
project_name = service
user_domain_id = default
project_domain_id = default
[oslo_concurrency]
lock_path = $NT/locks
[oslo_messaging_notifications]
driver = messagingv2
topics = vitrage_notifications
[agent]
root_helper = true
CONF
cat >"$NT/ml2_conf.ini" <<CONF
[ml2]
type_drivers = flat,vlan,vxlan
tenant_network_types = vxlan
mechanism_drivers = openvswitch
extension_drivers = port_security
[ml2_type_flat]
flat_networks = physnet1
[ml2_type_vlan]
network_vlan_ranges = physnet1
[ml2_type_vxlan]
vni_ranges = 1000:1999
CONF
CONFS=(--config-file "$NT/neutron.conf" --config-file "$NT/ml2_conf.ini")
if [[ ! -f "$NT/.db" ]]; then
    log "creating the database from the models (upgrade heads fails on sqlite) and stamping heads"
    rm -f "$NT/neutron.db"
    "$B/python" - "$NT/neutron.db" <<'PYEOF'
import sys
import sqlalchemy as sa
from neutron.db.migration.models import head
engine = sa.create_engine("sqlite:///" + sys.argv[1])
head.get_metadata().create_all(engine)
PYEOF
    "$B/neutron-db-manage" "${CONFS[@]}" stamp heads >&2
    sqlite_wal "$NT/neutron.db"
    touch "$NT/.db"
fi

# --- 5. the server -------------------------------------------------------------------------
start neutron-server "$B/neutron-server" "${CONFS[@]}"
wait_until "neutron-server on 127.0.0.1:19696" "$READY_TIMEOUT" http_is "$API/" 200

TOKEN="$("$OSC" token issue -f value -c id)"
[[ -n "$TOKEN" ]] || die "Keystone gave no token"
PROJ_A="$("$OSC" project show demo-a -f value -c id)"
PROJ_B="$("$OSC" project show demo-b -f value -c id)"
api() { # api METHOD PATH [BODY]
    curl -sf --max-time 60 -X "$1" -H "X-Auth-Token: $TOKEN" -H "Content-Type: application/json" \
        ${3:+-d "$3"} "$API/v2.0$2"
}
wait_until "neutron-server answers the admin's token" "$READY_TIMEOUT" api GET /networks

# --- 6. seed -------------------------------------------------------------------------------
id_of() { # id_of COLLECTION NAME
    api GET "/$1?name=$2" | jq -r ".$1[0].id // empty"
}
ensure_network() { # ensure_network NAME PROJECT
    [[ -n "$(id_of networks "$1")" ]] && return 0
    log "creating network $1 in $2"
    api POST /networks "{\"network\": {\"name\": \"$1\", \"project_id\": \"$2\"}}" >/dev/null
}
ensure_subnet() { # ensure_subnet NAME NETWORK CIDR PROJECT
    [[ -n "$(id_of subnets "$1")" ]] && return 0
    log "creating subnet $1"
    api POST /subnets "{\"subnet\": {\"name\": \"$1\", \"network_id\": \"$(id_of networks "$2")\", \"cidr\": \"$3\", \"ip_version\": 4, \"project_id\": \"$4\"}}" >/dev/null
}
ensure_port() { # ensure_port NAME NETWORK PROJECT [DEVICE_OWNER DEVICE_ID]
    local id body
    id="$(id_of ports "$1")"
    body="{\"name\": \"$1\"${4:+, \"device_owner\": \"$4\", \"device_id\": \"$5\"}}"
    if [[ -n "$id" ]]; then
        if [[ -n "${5:-}" && "$(api GET "/ports/$id" | jq -r .port.device_id)" != "$5" ]]; then
            log "port $1: device_id of an earlier lab Nova's server; now $5"
            api PUT "/ports/$id" "{\"port\": {\"device_id\": \"$5\"}}" >/dev/null
        fi
        return 0
    fi
    log "creating port $1"
    api POST /ports "{\"port\": $(jq -c --arg n "$(id_of networks "$2")" --arg p "$3" \
        '. + {network_id: $n, project_id: $p}' <<<"$body")}" >/dev/null
}
nova_server() {
    curl -sf --max-time 10 -H "X-Auth-Token: admin:admin" \
        "http://127.0.0.1:8774/v2.1/servers/detail?all_tenants=1&name=^$1\$" |
        jq -er ".servers[] | select(.status == \"ACTIVE\") | .id"
}
ensure_network net-a "$PROJ_A"
ensure_subnet subnet-a net-a 10.10.1.0/24 "$PROJ_A"
ensure_port port-a2 net-a "$PROJ_A"
ensure_network net-b "$PROJ_B"
ensure_subnet subnet-b net-b 10.10.2.0/24 "$PROJ_B"
ensure_port port-b1 net-b "$PROJ_B"
wait_until "the lab Nova's vm-a1 ACTIVE (scripts/openstack/nova.sh)" "$NOVA_TIMEOUT" nova_server vm-a1 ||
    die "no ACTIVE vm-a1 in the lab Nova: start scripts/openstack/nova.sh"
ensure_port port-a1 net-a "$PROJ_A" compute:nova "$(nova_server vm-a1)"

log "ready: Neutron $API (Keystone catalog: network)"
cat <<OUT
export SYNCHRONIZER_REAL_NEUTRON=$API
export SYNCHRONIZER_REAL_NEUTRON_AMQP=$NEUTRON_AMQP
OUT
