#!/usr/bin/env bash
# Make sure a RabbitMQ broker is running on this machine for the bus plugin's tests
# (Debian 12, as root).
#
# - installs Debian's rabbitmq-server with apt-get when it is missing (apt-get update
#   first), keeping the package from starting the daemon on its own;
# - generates a throw-away test CA and a server certificate for 127.0.0.1/localhost in
#   /etc/rabbitmq/synchronizer-tls/ (once) and configures a TLS listener on
#   127.0.0.1:5671 beside the plain one on 127.0.0.1:5672, so that tests can check
#   amqps:// with a custom CA (the CA is /etc/rabbitmq/synchronizer-tls/ca.pem);
# - starts the broker with `rabbitmq-server -detached` when it is down (restarts it when
#   this script changed its configuration) and waits with `rabbitmqctl await_startup`;
# - checks that guest/guest can use the default vhost.
#
# Idempotent: run it again while the broker is up and it only re-checks readiness.
# Environment: RABBITMQ_READY_TIMEOUT seconds (default 120).
set -euo pipefail

READY_TIMEOUT="${RABBITMQ_READY_TIMEOUT:-120}"
TLS_DIR=/etc/rabbitmq/synchronizer-tls
CONF=/etc/rabbitmq/rabbitmq.conf
ENV_CONF=/etc/rabbitmq/rabbitmq-env.conf

log() { printf '[rabbitmq-ensure] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $EUID -eq 0 ]] || die "run as root"

# --- 1. package ------------------------------------------------------------------------
if ! dpkg-query -W -f='${Status}' rabbitmq-server 2>/dev/null | grep -q "install ok installed"; then
    log "installing rabbitmq-server"
    created_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        # Keep the maintainer scripts from starting the broker: we start it ourselves.
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y rabbitmq-server
    if ((created_policy)); then rm -f /usr/sbin/policy-rc.d; fi
fi
command -v rabbitmqctl >/dev/null || die "rabbitmqctl not found after installing rabbitmq-server"

# --- 2. TLS material (test-only CA) ------------------------------------------------------
mkdir -p "$TLS_DIR"
if [[ ! -s "$TLS_DIR/ca.pem" || ! -s "$TLS_DIR/server.pem" || ! -s "$TLS_DIR/server.key" ]]; then
    log "generating a test CA and server certificate in $TLS_DIR"
    tmp=$(mktemp -d)
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=synchronizer test CA" \
        -keyout "$tmp/ca.key" -out "$tmp/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$tmp/server.key" -out "$tmp/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$tmp/ext.cnf"
    openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" \
        -CAcreateserial -days 3650 -extfile "$tmp/ext.cnf" -out "$tmp/server.pem" 2>/dev/null
    install -m 0644 "$tmp/ca.pem" "$TLS_DIR/ca.pem"
    install -m 0644 "$tmp/server.pem" "$TLS_DIR/server.pem"
    install -m 0640 "$tmp/server.key" "$TLS_DIR/server.key"
    rm -rf "$tmp"
fi
chown -R rabbitmq:rabbitmq "$TLS_DIR" 2>/dev/null || true

# --- 3. configuration ------------------------------------------------------------------
want_conf=$(cat <<EOF
# Written by synchronizer scripts/rabbitmq/ensure.sh: loopback only, plain and TLS.
listeners.tcp.default = 127.0.0.1:5672
listeners.ssl.default = 127.0.0.1:5671
ssl_options.cacertfile = $TLS_DIR/ca.pem
ssl_options.certfile = $TLS_DIR/server.pem
ssl_options.keyfile = $TLS_DIR/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
loopback_users.guest = true
EOF
)
conf_changed=0
if [[ ! -f "$CONF" ]] || [[ "$(cat "$CONF")" != "$want_conf" ]]; then
    log "writing $CONF"
    printf '%s\n' "$want_conf" >"$CONF"
    conf_changed=1
fi
# No scheduler busy-waiting: on a small machine shared with the tests (2 cores here) the
# Erlang schedulers' spinning takes the CPU the consumers need (RabbitMQ's runtime tuning
# guide recommends +sbwt none for such hosts). Debian's default file only has comments.
want_env=$(cat <<'EOF2'
# Written by synchronizer scripts/rabbitmq/ensure.sh.
SERVER_ADDITIONAL_ERL_ARGS="+sbwt none +sbwtdcpu none +sbwtdio none"
EOF2
)
if [[ ! -f "$ENV_CONF" ]] || [[ "$(cat "$ENV_CONF")" != "$want_env" ]]; then
    log "writing $ENV_CONF"
    printf '%s\n' "$want_env" >"$ENV_CONF"
    conf_changed=1
fi

# --- 4. start --------------------------------------------------------------------------
running() { rabbitmqctl -q status >/dev/null 2>&1; }

if running && ((conf_changed)); then
    log "configuration changed: restarting the broker"
    # `shutdown` waits until the node has stopped.
    rabbitmqctl shutdown >/dev/null 2>&1 || true
fi

if ! running; then
    log "starting rabbitmq-server -detached"
    rabbitmq-server -detached
fi

# `await_startup` needs the node's Erlang distribution to be reachable; right after
# -detached it may not be yet and then fails at once, so retry it (each attempt blocks
# while the node boots, and each rabbitmqctl run takes a moment itself) until a deadline.
deadline=$(( $(date +%s) + READY_TIMEOUT ))
until rabbitmqctl -q --timeout 30 await_startup >/dev/null 2>&1; do
    if (( $(date +%s) >= deadline )); then
        log "the broker did not start within ${READY_TIMEOUT}s; last log lines:"
        tail -n 40 /var/log/rabbitmq/*.log >&2 2>/dev/null || true
        die "rabbitmq-server is not running"
    fi
done

# --- 5. check --------------------------------------------------------------------------
rabbitmqctl -q list_permissions -p / | grep -q '^guest' \
    || rabbitmqctl set_permissions -p / guest '.*' '.*' '.*' >/dev/null
log "rabbitmq is up: amqp://guest:***@127.0.0.1:5672/ and amqps://127.0.0.1:5671 (CA $TLS_DIR/ca.pem)"
