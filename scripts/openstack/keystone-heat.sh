#!/usr/bin/env bash
# Start a real Keystone 27.1 + Heat 24.1 (OpenStack 2025.1, from PyPI) on loopback for the
# synchronizer's Heat plugin tests (Debian 12, as root), with a few stacks in two projects.
#
# - a Python venv ($OPENSTACK_STATE/kh-venv) with keystone 27.1.0, openstack-heat 24.1.2,
#   python-openstackclient 7.5.0, python-heatclient 4.1.0 and gunicorn, installed with
#   the stable/2025.1 upper-constraints of openstack/requirements (vendored beside this
#   script), setuptools < 80 (heat-engine needs pkg_resources);
# - Keystone on 127.0.0.1:5000 (gunicorn; sqlite in WAL mode; fernet tokens;
#   `keystone-manage bootstrap`: user admin / $OS_ADMIN_PASSWORD, project admin,
#   region RegionOne);
# - Heat: heat-api on 127.0.0.1:8004 (gunicorn) and one heat-engine on a RabbitMQ vhost of
#   its own (the broker from scripts/rabbitmq/ensure.sh); the stack domain `heat` with
#   `heat_domain_admin`; roles heat_stack_owner / heat_stack_user; Heat's DEFAULT policy
#   (so `global_tenant=True` is refused with 403 even to admin, as in production);
# - projects demo-a and demo-b, user demo ($OS_DEMO_PASSWORD) owning stacks basic-a
#   (CREATE_COMPLETE), failing-a (CREATE_FAILED) in demo-a and basic-b in demo-b.
#
# Readiness is checked by polling with deadlines (no fixed sleeps). Idempotent: run it
# again while everything is up and it only re-checks. `stop.sh` stops what it started.
# Prints `export ...` lines for the tests on stdout (scripts/openstack/test-real.sh uses
# them).
#
# Environment: OPENSTACK_STATE (default <repo>/target/openstack), OS_ADMIN_PASSWORD
# (default synchronizer-admin), OS_DEMO_PASSWORD (default synchronizer-demo),
# OPENSTACK_READY_TIMEOUT seconds (default 180).
set -euo pipefail
LOG_TAG=keystone-heat
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ $EUID -eq 0 ]] || die "run as root"
ADMIN_PASSWORD="${OS_ADMIN_PASSWORD:-synchronizer-admin}"
DEMO_PASSWORD="${OS_DEMO_PASSWORD:-synchronizer-demo}"
SERVICE_PASSWORD="synchronizer-service"
READY_TIMEOUT="${OPENSTACK_READY_TIMEOUT:-180}"
VENV="$STATE/kh-venv"
KS="$STATE/keystone"
HT="$STATE/heat"
mkdir -p "$KS" "$HT"
need curl

# --- 1. venv ---------------------------------------------------------------------------
make_venv "$VENV" "$HERE/upper-constraints-2025.1.txt" \
    keystone==27.1.0 openstack-heat==24.1.2 python-openstackclient==7.5.0 \
    python-heatclient==4.1.0 gunicorn
B="$VENV/bin"

# --- 2. RabbitMQ vhost for heat ------------------------------------------------------------
bash "$REPO/scripts/rabbitmq/ensure.sh" >&2
if ! rabbitmqctl -q list_vhosts | grep -qx heat; then rabbitmqctl -q add_vhost heat >&2; fi
if ! rabbitmqctl -q list_users | awk '{print $1}' | grep -qx heat; then
    rabbitmqctl -q add_user heat heat >&2
fi
rabbitmqctl -q set_permissions -p heat heat '.*' '.*' '.*' >&2

# --- 3. Keystone ---------------------------------------------------------------------------
cat >"$KS/keystone.conf" <<CONF
[DEFAULT]
log_file = $STATE/log/keystone-app.log
[database]
connection = sqlite:///$KS/keystone.db
[token]
provider = fernet
expiration = 3600
[fernet_tokens]
key_repository = $KS/fernet-keys
[fernet_receipts]
key_repository = $KS/fernet-keys
[credential]
key_repository = $KS/credential-keys
CONF
# The WSGI apps read sys.argv for their configuration: load them through a module that
# resets it.
cat >"$STATE/kh_wsgi.py" <<PYEOF
import os
import sys

def keystone():
    sys.argv = ["keystone"]
    os.environ["OS_KEYSTONE_CONFIG_FILES"] = "$KS/keystone.conf"
    from keystone.server import wsgi
    return wsgi.initialize_public_application()

def heat_api():
    sys.argv = ["heat-api", "--config-file", "$HT/heat.conf"]
    from heat.api.openstack import wsgi
    return wsgi.init_application()
PYEOF
KM=("$B/keystone-manage" --config-file "$KS/keystone.conf")
if [[ ! -f "$KS/.bootstrapped" ]]; then
    log "initializing Keystone"
    "${KM[@]}" db_sync >&2
    sqlite_wal "$KS/keystone.db"
    mkdir -p "$KS/fernet-keys" "$KS/credential-keys"
    "${KM[@]}" fernet_setup --keystone-user root --keystone-group root >&2
    "${KM[@]}" credential_setup --keystone-user root --keystone-group root >&2
    "${KM[@]}" bootstrap --bootstrap-password "$ADMIN_PASSWORD" \
        --bootstrap-admin-url http://127.0.0.1:5000/v3 \
        --bootstrap-internal-url http://127.0.0.1:5000/v3 \
        --bootstrap-public-url http://127.0.0.1:5000/v3 \
        --bootstrap-region-id RegionOne >&2
    touch "$KS/.bootstrapped"
fi
start keystone "$B/gunicorn" --chdir "$STATE" --bind 127.0.0.1:5000 --workers 2 \
    --timeout 120 'kh_wsgi:keystone()'
wait_until "Keystone on 127.0.0.1:5000" "$READY_TIMEOUT" http_is http://127.0.0.1:5000/v3 200

export OS_AUTH_URL=http://127.0.0.1:5000/v3 OS_IDENTITY_API_VERSION=3 OS_USERNAME=admin \
    OS_PASSWORD="$ADMIN_PASSWORD" OS_PROJECT_NAME=admin OS_USER_DOMAIN_ID=default \
    OS_PROJECT_DOMAIN_ID=default OS_REGION_NAME=RegionOne OS_INTERFACE=public
OSC="$B/openstack"

# --- 4. Heat's identities, catalog entry, demo projects ------------------------------------
if [[ ! -f "$HT/.identities" ]]; then
    log "creating Heat's users, roles, domain, endpoints and the demo projects"
    "$OSC" project create --or-show --domain default service >/dev/null
    "$OSC" user create --or-show --domain default --password "$SERVICE_PASSWORD" heat >/dev/null
    "$OSC" role add --project service --user heat admin
    for role in heat_stack_owner heat_stack_user member; do "$OSC" role create --or-show "$role" >/dev/null; done
    "$OSC" domain create --or-show --description "Stack projects and users" heat >/dev/null
    "$OSC" user create --or-show --domain heat --password "$SERVICE_PASSWORD" heat_domain_admin >/dev/null
    "$OSC" role add --domain heat --user-domain heat --user heat_domain_admin admin
    "$OSC" role add --project admin --user admin heat_stack_owner
    if ! "$OSC" service show orchestration >/dev/null 2>&1; then
        "$OSC" service create --name heat orchestration >/dev/null
    fi
    if [[ -z "$("$OSC" endpoint list --service orchestration -f value -c ID)" ]]; then
        for i in public internal admin; do
            "$OSC" endpoint create --region RegionOne orchestration "$i" 'http://127.0.0.1:8004/v1/%(tenant_id)s' >/dev/null
        done
    fi
    "$OSC" user create --or-show --domain default --password "$DEMO_PASSWORD" demo >/dev/null
    for p in demo-a demo-b; do
        "$OSC" project create --or-show --domain default "$p" >/dev/null
        "$OSC" role add --project "$p" --user demo member
        "$OSC" role add --project "$p" --user demo heat_stack_owner
    done
    touch "$HT/.identities"
fi

# --- 5. Heat ---------------------------------------------------------------------------------
cat >"$HT/heat.conf" <<CONF
[DEFAULT]
log_file = $STATE/log/heat-app.log
transport_url = rabbit://heat:heat@127.0.0.1:5672/heat
num_engine_workers = 1
stack_domain_admin = heat_domain_admin
stack_domain_admin_password = $SERVICE_PASSWORD
stack_user_domain_name = heat
heat_metadata_server_url = http://127.0.0.1:8000
heat_waitcondition_server_url = http://127.0.0.1:8000/v1/waitcondition
[database]
connection = sqlite:///$HT/heat.db
[paste_deploy]
api_paste_config = $VENV/etc/heat/api-paste.ini
[heat_api]
bind_host = 127.0.0.1
bind_port = 8004
[keystone_authtoken]
www_authenticate_uri = http://127.0.0.1:5000/v3
auth_url = http://127.0.0.1:5000/v3
auth_type = password
username = heat
password = $SERVICE_PASSWORD
project_name = service
user_domain_id = default
project_domain_id = default
[trustee]
auth_type = password
auth_url = http://127.0.0.1:5000/v3
username = heat
password = $SERVICE_PASSWORD
user_domain_id = default
[clients_keystone]
auth_uri = http://127.0.0.1:5000
[ec2authtoken]
auth_uri = http://127.0.0.1:5000/v3
[oslo_messaging_notifications]
driver = messagingv2
topics = vitrage_notifications
CONF
if [[ ! -f "$HT/.db" ]]; then
    "$B/heat-manage" --config-file "$HT/heat.conf" db_sync >&2
    sqlite_wal "$HT/heat.db"
    touch "$HT/.db"
fi
start heat-engine "$B/heat-engine" --config-file "$HT/heat.conf"
start heat-api "$B/gunicorn" --chdir "$STATE" --bind 127.0.0.1:8004 --workers 2 \
    --timeout 120 'kh_wsgi:heat_api()'
wait_until "heat-api on 127.0.0.1:8004" "$READY_TIMEOUT" http_is http://127.0.0.1:8004/ 300 200
engine_up() { "$OSC" orchestration service list -f value -c Status | grep -q '^up$'; }
wait_until "heat-engine (orchestration service list: up)" "$READY_TIMEOUT" engine_up

# --- 6. stacks ---------------------------------------------------------------------------
cat >"$HT/basic.yaml" <<'YAML'
heat_template_version: 2021-04-16
description: a stack of resources that need no other service
resources:
  secret:
    type: OS::Heat::RandomString
    properties: {length: 8}
  marker:
    type: OS::Heat::None
YAML
cat >"$HT/failing.yaml" <<'YAML'
heat_template_version: 2021-04-16
description: a stack that fails
resources:
  ok:
    type: OS::Heat::None
  boom:
    type: OS::Heat::TestResource
    depends_on: ok
    properties: {fail: true}
YAML
demo() {
    local project="$1"; shift
    OS_USERNAME=demo OS_PASSWORD="$DEMO_PASSWORD" OS_PROJECT_NAME="$project" "$OSC" "$@"
}
ensure_stack() {
    local project="$1" name="$2" template="$3"
    if demo "$project" stack show "$name" >/dev/null 2>&1; then return 0; fi
    log "creating stack $name in $project"
    demo "$project" stack create --wait -t "$template" "$name" >/dev/null 2>&1 || true
    demo "$project" stack show "$name" -f value -c stack_status >&2
}
ensure_stack demo-a basic-a "$HT/basic.yaml"
ensure_stack demo-a failing-a "$HT/failing.yaml"
ensure_stack demo-b basic-b "$HT/basic.yaml"

log "ready: Keystone http://127.0.0.1:5000/v3, Heat http://127.0.0.1:8004"
cat <<OUT
export SYNCHRONIZER_REAL_KEYSTONE=http://127.0.0.1:5000/v3
export SYNCHRONIZER_REAL_ADMIN_PASSWORD=$ADMIN_PASSWORD
export SYNCHRONIZER_REAL_DEMO_PASSWORD=$DEMO_PASSWORD
OUT
