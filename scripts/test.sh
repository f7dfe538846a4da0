#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this).
#
# 1. Starts the real components the tests talk to, installing them when missing
#    (Debian packages; needs root): a Nagios 4 on loopback.
# 2. Builds every plugin .so once into target/debug, plus a plugin built against an
#    incompatible plugin-api (scripts/build-test-plugins.sh).
# 3. cargo fmt --check, cargo clippy -D warnings, cargo test for the whole workspace.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n== %s\n' "$*"; }

step "real components"
bash scripts/nagios/setup.sh

step "formatting"
cargo fmt --all -- --check

step "build plugins and tests"
bash scripts/build-test-plugins.sh

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "tests"
cargo test --workspace
