#!/usr/bin/env bash
# Stop the OpenStack services the scripts in this directory started (by their pid files).
# Their state ($OPENSTACK_STATE) is kept, so a restart is quick; `--wipe` removes it too.
set -euo pipefail
LOG_TAG=openstack-stop
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# Cinder's services before its MariaDB; Keystone after the services that use it.
for name in heat-api heat-engine cinder-api cinder-scheduler cinder-volume cinder-mariadb \
    neutron-server keystone nova-api nova-compute1 nova-compute2 nova-conductor \
    nova-scheduler placement-api glance-api neutron-stub; do
    stop "$name"
done
if [[ "${1:-}" == "--wipe" ]]; then
    log "removing $STATE"
    rm -rf "$STATE"
fi
