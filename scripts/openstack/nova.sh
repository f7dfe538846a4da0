#!/usr/bin/env bash
# Start a real Nova 30.3 (OpenStack 2024.2, from PyPI) on loopback for the synchronizer's
# Nova plugin tests (Debian 12, as root), without Keystone, with two fake compute hosts in
# two availability zones and servers in two projects.
#
# - a Python venv ($OPENSTACK_STATE/nova-venv) with nova 30.3.0, openstack-placement
#   12.0.2, glance 29.0.0 and gunicorn, installed with the stable/2024.2 upper-constraints
#   of openstack/requirements (tag 2024.2-eol, vendored beside this script);
# - sqlite (WAL mode, 30 s busy timeout) for nova_api, cell0, cell1, placement and glance
#   (several processes write them: without both, heartbeats fail with "database is
#   locked" on a busy machine); a RabbitMQ vhost of
#   its own (the broker from scripts/rabbitmq/ensure.sh);
# - nova-api (127.0.0.1:8774) and placement (127.0.0.1:8778) with `[api] auth_strategy =
#   noauth2`: a request sends `X-Auth-Token: user:project`, the user `admin` is admin;
#   `[oslo_policy] enforce_new_defaults = False`; a small paste filter copies the token
#   into the request context, so that nova passes it on to glance and neutron;
# - glance-api (127.0.0.1:9292) without Keystone (its anonymous admin may publicize an
#   image), one tiny public raw image;
# - a stub on 127.0.0.1:9696 answering neutron's list calls with empty lists (nova asks
#   neutron for ports even for servers booted with `networks: none`);
# - nova-conductor, nova-scheduler and two nova-compute (fake virt driver) named compute1
#   and compute2, each with its own state_path, my_ip 127.0.0.1 and 127.0.0.2 (the
#   hypervisors' host_ip) and no database options; host aggregates
#   make the zones az1 (compute1) and az2 (compute2);
# - flavor m1.tiny and servers vm-a1, vm-a2 (projA) and vm-b1 (projB), ACTIVE;
# - notifications as the operator guide asks for them (docs/operator-guide.md): both forms
#   (`[notifications] notification_format = both`), an `instance.update` on every vm or
#   task state change (`notify_on_state_change = vm_and_task_state`), legacy ones also on
#   the topic `vitrage_notifications`, all on exchange `nova` of the vhost `nova`
#   ($NOVA_AMQP below, printed for the tests); and `[DEFAULT] instance_delete_interval =
#   15` s instead of 300, so that the compute's periodic `_run_pending_deletes` saves each
#   deleted server once more (one more `instance.update` with state `deleted`) within
#   seconds of its deletion, which the bus tests wait for.
#
# Readiness is checked by polling with deadlines (no fixed sleeps). Idempotent: run it
# again while everything is up and it only re-checks. `stop.sh` stops what it started.
# Prints `export ...` lines for the tests on stdout.
#
# Environment: OPENSTACK_STATE (default <repo>/target/openstack), OPENSTACK_READY_TIMEOUT
# seconds (default 240).
set -euo pipefail
LOG_TAG=nova
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ $EUID -eq 0 ]] || die "run as root"
READY_TIMEOUT="${OPENSTACK_READY_TIMEOUT:-240}"
VENV="$STATE/nova-venv"
NV="$STATE/nova"
# Nova's fake driver keeps its instances in memory: servers in the database of an earlier
# run are unknown to a restarted compute (every action on them fails with
# InstanceNotFound), and it draws new node uuids at every start. So when no Nova service
# is running, the lab starts from empty databases (about 30 s); when they run, it is left
# as it is.
#
# The settings below change what the services send: services started with other settings
# are stopped (all of them: the lab then starts from empty databases, as above).
NOVA_SERVICES=(nova-api nova-conductor nova-scheduler nova-compute1 nova-compute2
    placement-api glance-api neutron-stub)
LAB_SETTINGS="notification_format=both notify_on_state_change=vm_and_task_state instance_delete_interval=15 my_ip=127.0.0.n"
if [[ -f "$NV/.settings" && "$(cat "$NV/.settings")" != "$LAB_SETTINGS" ]] ||
    [[ ! -f "$NV/.settings" && -d "$NV" ]]; then
    log "the running Nova was set up with other settings; restarting it"
    for name in "${NOVA_SERVICES[@]}"; do stop "$name"; done
fi
if ! running nova-api && ! running nova-compute1 && ! running nova-compute2; then
    rm -rf "$NV"
fi
mkdir -p "$NV/glance-images" "$NV/locks" "$NV/compute1" "$NV/compute2"
echo "$LAB_SETTINGS" >"$NV/.settings"
need curl jq

# --- 1. venv -------------------------------------------------------------------------------
make_venv "$VENV" "$HERE/upper-constraints-2024.2.txt" \
    nova==30.3.0 openstack-placement==12.0.2 glance==29.0.0 gunicorn
B="$VENV/bin"

# --- 2. RabbitMQ vhost ---------------------------------------------------------------------
bash "$REPO/scripts/rabbitmq/ensure.sh" >&2
if ! rabbitmqctl -q list_vhosts | grep -qx nova; then rabbitmqctl -q add_vhost nova >&2; fi
if ! rabbitmqctl -q list_users | awk '{print $1}' | grep -qx nova; then
    rabbitmqctl -q add_user nova nova >&2
fi
rabbitmqctl -q set_permissions -p nova nova '.*' '.*' '.*' >&2
TRANSPORT=rabbit://nova:nova@127.0.0.1:5672/nova
NOVA_AMQP=amqp://nova:nova@127.0.0.1:5672/nova

# --- 3. configuration ----------------------------------------------------------------------
# What every Nova service sends (most notifications come from the computes; the API and
# the conductor send some too).
notifications() {
    cat <<CONF
[notifications]
notification_format = both
notify_on_state_change = vm_and_task_state
[oslo_messaging_notifications]
driver = messagingv2
topics = vitrage_notifications
CONF
}
# Services nova calls, without Keystone: a fixed admin token and explicit endpoints.
service_auth() {
    cat <<CONF
[placement]
auth_type = admin_token
endpoint = http://127.0.0.1:8778
token = admin:admin
region_name = RegionOne
[glance]
auth_type = admin_token
endpoint = http://127.0.0.1:9292
endpoint_override = http://127.0.0.1:9292
token = admin:admin
[neutron]
auth_type = admin_token
endpoint = http://127.0.0.1:9696
endpoint_override = http://127.0.0.1:9696
token = admin:admin
[oslo_policy]
enforce_new_defaults = False
enforce_scope = False
[vnc]
enabled = False
[os_vif_ovs]
[cinder]
catalog_info = volumev3::publicURL
CONF
}
cat >"$NV/nova.conf" <<CONF
[DEFAULT]
transport_url = $TRANSPORT
compute_driver = fake.FakeDriver
state_path = $NV
log_file = $STATE/log/nova-app.log
my_ip = 127.0.0.1
instance_delete_interval = 15
[api]
auth_strategy = noauth2
[wsgi]
api_paste_config = $NV/api-paste.ini
[api_database]
connection = sqlite:///$NV/nova_api.db?timeout=30
sqlite_synchronous = False
[database]
connection = sqlite:///$NV/nova_cell1.db?timeout=30
sqlite_synchronous = False
[oslo_concurrency]
lock_path = $NV/locks
[scheduler]
discover_hosts_in_cells_interval = 2
$(notifications)
$(service_auth)
CONF
for n in 1 2; do
    cat >"$NV/compute$n.conf" <<CONF
[DEFAULT]
transport_url = $TRANSPORT
compute_driver = fake.FakeDriver
host = compute$n
state_path = $NV/compute$n
log_file = $STATE/log/nova-compute$n-app.log
my_ip = 127.0.0.$n
instance_delete_interval = 15
[oslo_concurrency]
lock_path = $NV/compute$n/locks
$(notifications)
$(service_auth)
CONF
done
mkdir -p "$NV/compute1/locks" "$NV/compute2/locks"
# nova's api-paste.ini (30.3.0, etc/nova/api-paste.ini) reduced to the v2.1 API with
# noauth2, plus `tokencontext`: noauth2 does not keep the token in the context, so nova
# would call glance and neutron without one.
cat >"$NV/api-paste.ini" <<'INI'
[composite:osapi_compute]
use = call:nova.api.openstack.urlmap:urlmap_factory
/: oscomputeversions
/v2.1: oscomputeversion_v2
/v2.1/+: openstack_compute_api_v21

[composite:openstack_compute_api_v21]
use = call:nova.api.auth:pipeline_factory_v21
keystone = compute_req_id faultwrap request_log sizelimit noauth2 tokencontext osapi_compute_app_v21
noauth2 = compute_req_id faultwrap request_log sizelimit noauth2 tokencontext osapi_compute_app_v21

[filter:request_log]
paste.filter_factory = nova.api.openstack.requestlog:RequestLog.factory
[filter:compute_req_id]
paste.filter_factory = nova.api.compute_req_id:ComputeReqIdMiddleware.factory
[filter:faultwrap]
paste.filter_factory = nova.api.openstack:FaultWrapper.factory
[filter:noauth2]
paste.filter_factory = nova.api.openstack.auth:NoAuthMiddleware.factory
[filter:tokencontext]
paste.filter_factory = nova_lab:TokenContext.factory
[filter:sizelimit]
paste.filter_factory = oslo_middleware:RequestBodySizeLimiter.factory
[app:osapi_compute_app_v21]
paste.app_factory = nova.api.openstack.compute:APIRouterV21.factory
[pipeline:oscomputeversions]
pipeline = faultwrap request_log oscomputeversionapp
[pipeline:oscomputeversion_v2]
pipeline = compute_req_id faultwrap request_log oscomputeversionapp_v2
[app:oscomputeversionapp]
paste.app_factory = nova.api.openstack.compute.versions:Versions.factory
[app:oscomputeversionapp_v2]
paste.app_factory = nova.api.openstack.compute.versions:VersionsV2.factory
INI
cat >"$NV/placement.conf" <<CONF
[DEFAULT]
log_file = $STATE/log/placement-app.log
[api]
auth_strategy = noauth2
[placement_database]
connection = sqlite:///$NV/placement.db?timeout=30
[oslo_policy]
enforce_new_defaults = False
enforce_scope = False
CONF
cat >"$NV/glance-api.conf" <<CONF
[DEFAULT]
bind_host = 127.0.0.1
bind_port = 9292
workers = 1
log_file = $STATE/log/glance-app.log
enabled_backends = fs:file
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = $NV/glance-images
[database]
connection = sqlite:///$NV/glance.db?timeout=30
[paste_deploy]
config_file = $VENV/etc/glance/glance-api-paste.ini
[oslo_policy]
enforce_new_defaults = False
enforce_scope = False
policy_file = $NV/glance-policy.yaml
CONF
# Glance without Keystone: its anonymous admin context has no roles; let it publicize.
cat >"$NV/glance-policy.yaml" <<'YAML'
"publicize_image": ""
"communitize_image": ""
YAML
# WSGI entry points: nova-api and placement read sys.argv for their configuration.
cat >"$STATE/nova_lab.py" <<PYEOF
import os
import sys


def nova_api():
    sys.argv = ["nova-api"]
    os.environ["OS_NOVA_CONFIG_DIR"] = "$NV"  # api-paste.ini and nova.conf
    from nova.api.openstack.compute import wsgi
    return wsgi.init_application()


def placement():
    sys.argv = ["placement-api"]
    os.environ["OS_PLACEMENT_CONFIG_DIR"] = "$NV"
    from placement import wsgi
    return wsgi.init_application()


class TokenContext(object):
    """After noauth2: keep the request's token in nova's context."""

    def __init__(self, app):
        self.app = app

    @classmethod
    def factory(cls, global_config, **local_config):
        return cls

    def __call__(self, environ, start_response):
        ctx = environ.get("nova.context")
        token = environ.get("HTTP_X_AUTH_TOKEN")
        if ctx is not None and token and not getattr(ctx, "auth_token", None):
            ctx.auth_token = token
        return self.app(environ, start_response)
PYEOF
# A neutron that has nothing: every list is empty.
cat >"$STATE/neutron_stub.py" <<'PYEOF'
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Stub(BaseHTTPRequestHandler):
    def _answer(self):
        path = self.path.split("?")[0].rstrip("/")
        name = path.rsplit("/", 1)[-1].removesuffix(".json") or "versions"
        body = json.dumps({name: []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", 9696), Stub).serve_forever()
PYEOF

# --- 4. databases and cells ----------------------------------------------------------------
NM=("$B/nova-manage" --config-file "$NV/nova.conf")
if [[ ! -f "$NV/.db" ]]; then
    log "creating the databases and cells"
    "$B/placement-manage" --config-file "$NV/placement.conf" db sync >&2
    "$B/glance-manage" --config-file "$NV/glance-api.conf" db_sync >&2
    "${NM[@]}" api_db sync >&2
    "${NM[@]}" cell_v2 map_cell0 --database_connection "sqlite:///$NV/nova_cell0.db?timeout=30" >&2
    "${NM[@]}" cell_v2 create_cell --name cell1 --database_connection "sqlite:///$NV/nova_cell1.db?timeout=30" \
        --transport-url "$TRANSPORT" >&2 || true
    "${NM[@]}" db sync >&2
    for db in placement glance nova_api nova_cell0 nova_cell1; do sqlite_wal "$NV/$db.db"; done
    touch "$NV/.db"
fi

# --- 5. services ---------------------------------------------------------------------------
start neutron-stub "$PY" "$STATE/neutron_stub.py"
start placement-api "$B/gunicorn" --chdir "$STATE" --pythonpath "$STATE" --bind 127.0.0.1:8778 \
    --workers 1 --timeout 120 'nova_lab:placement()'
start glance-api "$B/glance-api" --config-file "$NV/glance-api.conf"
start nova-api "$B/gunicorn" --chdir "$STATE" --pythonpath "$STATE" --bind 127.0.0.1:8774 \
    --workers 1 --timeout 120 'nova_lab:nova_api()'
start nova-conductor "$B/nova-conductor" --config-file "$NV/nova.conf"
start nova-scheduler "$B/nova-scheduler" --config-file "$NV/nova.conf"
start nova-compute1 "$B/nova-compute" --config-file "$NV/compute1.conf"
start nova-compute2 "$B/nova-compute" --config-file "$NV/compute2.conf"

wait_until "neutron stub on 127.0.0.1:9696" 30 http_is http://127.0.0.1:9696/v2.0/ports 200
wait_until "placement on 127.0.0.1:8778" "$READY_TIMEOUT" http_is http://127.0.0.1:8778/ 200
wait_until "glance on 127.0.0.1:9292" "$READY_TIMEOUT" http_is http://127.0.0.1:9292/versions 200 300
wait_until "nova-api on 127.0.0.1:8774" "$READY_TIMEOUT" http_is http://127.0.0.1:8774/v2.1/ 200

NOVA=http://127.0.0.1:8774/v2.1
api() { # api METHOD PATH [BODY] [USER:PROJECT]
    local method="$1" path="$2" body="${3:-}" who="${4:-admin:admin}"
    curl -sf --max-time 60 -X "$method" -H "X-Auth-Token: $who" -H "Content-Type: application/json" \
        -H "OpenStack-API-Version: compute 2.53" ${body:+-d "$body"} "$NOVA$path"
}
computes_up() {
    [[ "$(api GET '/os-services?binary=nova-compute' | jq '[.services[] | select(.state == "up")] | length')" == 2 ]]
}
wait_until "both nova-compute services up" "$READY_TIMEOUT" computes_up
hypervisors() { [[ "$(api GET /os-hypervisors | jq '.hypervisors | length')" == 2 ]]; }
wait_until "both hypervisors mapped (discover_hosts_in_cells_interval)" "$READY_TIMEOUT" hypervisors

# --- 6. zones, flavor, image, servers ------------------------------------------------------
for n in 1 2; do
    if ! api GET /os-aggregates | jq -e ".aggregates[] | select(.name == \"agg$n\")" >/dev/null; then
        id="$(api POST /os-aggregates "{\"aggregate\": {\"name\": \"agg$n\", \"availability_zone\": \"az$n\"}}" | jq -r .aggregate.id)"
        api POST "/os-aggregates/$id/action" "{\"add_host\": {\"host\": \"compute$n\"}}" >/dev/null
    fi
done
if ! api GET /flavors | jq -e '.flavors[] | select(.name == "m1.tiny")' >/dev/null; then
    api POST /flavors '{"flavor": {"name": "m1.tiny", "ram": 512, "vcpus": 1, "disk": 1, "id": "1"}}' >/dev/null
fi
GLANCE=http://127.0.0.1:9292/v2
IMAGE="$(curl -sf "$GLANCE/images?name=tiny" | jq -r '.images[0].id // empty')"
if [[ -z "$IMAGE" ]]; then
    log "uploading the image"
    IMAGE="$(curl -sf -X POST -H "Content-Type: application/json" \
        -d '{"name": "tiny", "disk_format": "raw", "container_format": "bare", "visibility": "public"}' \
        "$GLANCE/images" | jq -r .id)"
    head -c 1024 /dev/zero | curl -sf -X PUT -H "Content-Type: application/octet-stream" \
        --data-binary @- "$GLANCE/images/$IMAGE/file" >/dev/null
fi
image_active() { [[ "$(curl -sf "$GLANCE/images/$IMAGE" | jq -r .status)" == active ]]; }
wait_until "image $IMAGE active" 60 image_active

# The computes' first inventory reports reach placement a little after the services are up.
candidates() {
    local n
    n="$(curl -sf -H "X-Auth-Token: admin:admin" -H "OpenStack-API-Version: placement 1.36" \
        "http://127.0.0.1:8778/allocation_candidates?resources=VCPU:1,MEMORY_MB:512,DISK_GB:1" |
        jq '.provider_summaries | length')"
    [[ "$n" == 2 ]]
}
wait_until "placement offers both computes" "$READY_TIMEOUT" candidates

server_field() { # server_field NAME FIELD
    api GET "/servers/detail?all_tenants=1&name=^$1\$" | jq -r ".servers[0].$2 // empty"
}
gone() { [[ -z "$(server_field "$1" id)" ]]; }
status_is() { [[ "$(server_field "$1" status)" == "$2" ]]; }
settled() { local s; s="$(server_field "$1" status)"; [[ "$s" == ACTIVE || "$s" == ERROR ]]; }
# boot NAME USER:PROJECT: one at a time (sqlite), waiting for ACTIVE; a server left in
# ERROR (or stuck in BUILD) by an earlier run is deleted and booted again.
boot() {
    local name="$1" who="$2" attempt id
    for attempt in 1 2 3; do
        id="$(server_field "$name" id)"
        if [[ -n "$id" ]]; then
            status_is "$name" ACTIVE && return 0
            if status_is "$name" ERROR || ! wait_until "$name ACTIVE or ERROR" 60 settled "$name" ||
                status_is "$name" ERROR; then
                log "$name is $(server_field "$name" status) ($(server_field "$name" 'fault.message')); deleting it"
                api DELETE "/servers/$id" >/dev/null || true
                wait_until "$name deleted" 120 gone "$name"
                continue
            fi
            return 0
        else
            log "booting $name as $who"
            api POST /servers "{\"server\": {\"name\": \"$name\", \"imageRef\": \"$IMAGE\", \"flavorRef\": \"1\", \"networks\": \"none\"}}" "$who" >/dev/null
        fi
        wait_until "$name ACTIVE or ERROR" "$READY_TIMEOUT" settled "$name"
        status_is "$name" ACTIVE && return 0
    done
    die "$name does not become ACTIVE: $(server_field "$name" 'fault.message')"
}
boot vm-a1 alice:projA
boot vm-a2 alice:projA
boot vm-b1 bob:projB

log "ready: Nova http://127.0.0.1:8774/v2.1 (noauth2: X-Auth-Token admin:admin)"
cat <<OUT
export SYNCHRONIZER_REAL_NOVA=http://127.0.0.1:8774/v2.1
export SYNCHRONIZER_REAL_NOVA_AMQP=$NOVA_AMQP
OUT
