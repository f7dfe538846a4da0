#!/usr/bin/env bash
# Start the real OpenStack services on loopback (keystone-heat.sh, nova.sh, cinder.sh,
# neutron.sh) and run the plugin tests that drive them (plugins/heat/tests/real.rs,
# plugins/nova/tests/real.rs, plugins/bus/tests/real_nova_deletes.rs,
# plugins/cinder/tests/real.rs, plugins/neutron/tests/real.rs).
# Debian 12, as root. From nothing: about 5 minutes (venvs) + 3 minutes (services).
#
# Environment: CARGO_TARGET_DIR as for any cargo run; the scripts' own variables (see
# keystone-heat.sh). Leaves the services running; stop.sh stops them.
set -euo pipefail
LOG_TAG=test-real
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

exports="$(bash "$HERE/keystone-heat.sh")"
eval "$exports"
exports="$(bash "$HERE/nova.sh")"
eval "$exports"
exports="$(bash "$HERE/cinder.sh")"
eval "$exports"
exports="$(bash "$HERE/neutron.sh")"
eval "$exports"
cd "$REPO"
cargo test -p synchronizer-heat --test real -- --ignored --nocapture
cargo test -p synchronizer-nova --test real -- --ignored --nocapture
# Both plugins' .so files, loaded by the host in this test.
cargo build -p synchronizer-nova -p synchronizer-bus
cargo test -p synchronizer-bus --test real_nova_deletes -- --ignored --nocapture
# Cinder and Neutron, with the bus and (combined graph) the Nova plugin's .so files.
cargo build -p synchronizer-nova -p synchronizer-cinder -p synchronizer-neutron -p synchronizer-bus
cargo test -p synchronizer-cinder --test real -- --ignored --nocapture
cargo test -p synchronizer-neutron --test real -- --ignored --nocapture
