#!/usr/bin/env bash
# The demo: builds the host and the example static plugin, then runs the synchronizer on
# examples/demo/demo.toml. Change notifications are printed as JSON lines; edit
# examples/demo/static/rack-1.yaml in another terminal to see `updated` and `deleted`.
# Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -p synchronizer -p synchronizer-static
exec ./target/release/synchronizer run --config examples/demo/demo.toml "$@"
