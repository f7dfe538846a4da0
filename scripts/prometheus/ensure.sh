#!/usr/bin/env bash
# Make sure Debian's Prometheus 2 (the `prometheus` package: the `prometheus` server and
# `promtool`) is installed, for tests/tests/prometheus.rs: promtool checks /metrics in
# the classic format and the alert rules in packaging/prometheus/, and a real Prometheus
# server on loopback scrapes the host in OpenMetrics and evaluates the rules.
# And Debian's Alertmanager (`prometheus-alertmanager`, 0.25 in bookworm), for
# plugins/prometheus/tests/real_alertmanager.rs, which starts its own on loopback.
#
# Installs the package with apt-get when it is missing (apt-get update first), keeping
# its maintainer scripts from starting the packaged service: the test starts its own
# server on a free port, with its own configuration and storage. Idempotent.
set -euo pipefail

log() { printf '[prometheus-ensure] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

packages=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || packages+=(prometheus)
command -v prometheus-alertmanager >/dev/null || packages+=(prometheus-alertmanager)
if ((${#packages[@]} == 0)); then
    exit 0
fi
[[ $EUID -eq 0 ]] || die "${packages[*]} missing, and not root to install them"
log "installing ${packages[*]}"
created_policy=0
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    created_policy=1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${packages[@]}"
if ((created_policy)); then rm -f /usr/sbin/policy-rc.d; fi
command -v promtool >/dev/null || die "promtool not found after installing prometheus"
command -v prometheus-alertmanager >/dev/null || die "prometheus-alertmanager not found after installing it"
promtool --version >&2
prometheus-alertmanager --version >&2
