#!/usr/bin/env bash
# Builds every plugin .so the tests load, into target/debug:
# - the workspace's plugins (cargo build --workspace);
# - libsynchronizer_test_incompatible.so: the faulty test plugin built against a copy of
#   plugin-api whose version is bumped to 0.2.0, i.e. a real plugin built against an
#   incompatible interface version, which the loader must refuse.
# It reuses target/ so that dependencies compile once.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

cargo build --workspace --all-targets

work="$CARGO_TARGET_DIR/abi-mismatch"
rm -rf "$work"
mkdir -p "$work"
cp -r plugin-api "$work/plugin-api"
cp -r tests/plugins/faulty "$work/faulty"
sed -i 's/^version = "0.1.0"/version = "0.2.0"/' "$work/plugin-api/Cargo.toml"
sed -i 's/^name = "synchronizer-test-faulty"/name = "synchronizer-test-incompatible"/' "$work/faulty/Cargo.toml"
sed -i 's|path = "../../../plugin-api"|path = "../plugin-api"|' "$work/faulty/Cargo.toml"
{
  printf '[workspace]\nresolver = "3"\nmembers = ["plugin-api", "faulty"]\n\n'
  sed -n '/^\[workspace.package\]/,$p' Cargo.toml
} > "$work/Cargo.toml"
cp Cargo.lock "$work/Cargo.lock"
cargo build --manifest-path "$work/Cargo.toml" -p synchronizer-test-incompatible
ls "$CARGO_TARGET_DIR/debug/libsynchronizer_test_incompatible.so" >/dev/null
