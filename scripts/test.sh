#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this). Debian 12, as root.
#
# 1. Real components, installed when missing and started when down, each waiting on a
#    readiness check: a Nagios 4 on loopback, RabbitMQ on 127.0.0.1:5672, Debian's
#    Prometheus 2 (promtool and the server, started by the tests), a Python venv
#    with oslo.messaging (the real publisher), and — in the background while the tests
#    run — real Keystone + Heat, Nova, Cinder (with a private MariaDB) and Neutron from
#    PyPI on loopback.
# 2. cargo fmt --check; every plugin .so built once into target/debug, plus a plugin built
#    against an incompatible plugin-api (scripts/build-test-plugins.sh); clippy -D warnings;
#    rustdoc -D warnings;
#    the library built without default features (scripts/check-light-embed.sh).
# 3. cargo test for the whole workspace, the replay of the fuzz targets' saved inputs
#    (fuzz/, scripts/fuzz.sh replay), then the tests against the real OpenStack services
#    (marked #[ignore] in a plain `cargo test`, run here with --ignored).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Incremental compilation state (gigabytes) only pays off in an edit-compile loop.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
mkdir -p "$CARGO_TARGET_DIR"

step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }

step "real components: Nagios 4, RabbitMQ, Prometheus (promtool), oslo.messaging"
bash scripts/nagios/setup.sh
bash scripts/rabbitmq/ensure.sh
bash scripts/prometheus/ensure.sh
OSLO_PYTHON="$(bash scripts/oslo/setup-venv.sh)"
export OSLO_PYTHON

step "formatting"
cargo fmt --all -- --check

step "build plugins and tests"
bash scripts/build-test-plugins.sh

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "docs: every crate's documentation builds without a warning (broken links included)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

step "the library without default features (no axum, lapin, redb)"
bash scripts/check-light-embed.sh

# The OpenStack services start only now: while the Rust code compiles they would compete
# for the same two cores, and nova-compute misses its readiness deadline.
step "real components: Keystone + Heat, Nova, Cinder and Neutron (background, while the tests run)"
os_log="$CARGO_TARGET_DIR/openstack-setup.log"
os_env="$CARGO_TARGET_DIR/openstack-setup.env"
# Keystone first (the others use it); then Nova, Cinder and Neutron side by side: Cinder
# and Neutron start their services at once and wait for Nova's vm-a1 only to seed the
# volume and the port that name it. Each script's own log: $os_log.<name>.
(
    set -e
    bash scripts/openstack/keystone-heat.sh > "$os_env.kh" 2> "$os_log.kh"
    bash scripts/openstack/nova.sh > "$os_env.nova" 2> "$os_log.nova" & nova=$!
    bash scripts/openstack/cinder.sh > "$os_env.cinder" 2> "$os_log.cinder" & cinder=$!
    bash scripts/openstack/neutron.sh > "$os_env.neutron" 2> "$os_log.neutron" & neutron=$!
    failed=0
    for pid in "$nova" "$cinder" "$neutron"; do wait "$pid" || failed=1; done
    cat "$os_log.kh" "$os_log.nova" "$os_log.cinder" "$os_log.neutron"
    [ "$failed" = 0 ]
    cat "$os_env.kh" "$os_env.nova" "$os_env.cinder" "$os_env.neutron" > "$os_env"
) > "$os_log" 2>&1 &
os_pid=$!
# However the run ends, the OpenStack services stop again (their state stays in
# target/openstack, so the next run starts them quickly).
trap 'wait "$os_pid" 2>/dev/null || true; bash scripts/openstack/stop.sh >/dev/null 2>&1 || true' EXIT

step "tests"
cargo test --workspace

# The fuzz crate is its own workspace, built without libFuzzer in target/<host triple>/
# (its build scripts and proc macros shared with the main build; see scripts/fuzz.sh).
step "fuzz corpus replay: every saved input of every fuzz target"
bash scripts/fuzz.sh replay
# SIGTERM during the catch-up of a 50,000-notification backlog (about a minute in a
# debug build, so #[ignore]d in a plain `cargo test`).
cargo test -p synchronizer-bus --test shutdown_backlog -- --ignored

step "tests against real Keystone, Heat, Nova, Cinder and Neutron"
if ! wait "$os_pid"; then
    tail -n 30 "$os_log".*
    echo "the OpenStack services did not start; the logs above say why" >&2
    exit 1
fi
# shellcheck disable=SC1090
source "$os_env"
cargo test -p synchronizer-heat --test real -- --ignored
cargo test -p synchronizer-nova --test real -- --ignored
# The Nova collector and the bus plugin against the lab Nova and its notifications.
cargo test -p synchronizer-bus --test real_nova_deletes -- --ignored
# Cinder and Neutron: their collectors, with the bus (and, in the combined graph, Nova)
# loaded from the .so files build-test-plugins.sh built.
cargo test -p synchronizer-cinder --test real -- --ignored
cargo test -p synchronizer-neutron --test real -- --ignored
step "all passed"
