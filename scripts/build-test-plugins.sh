#!/usr/bin/env bash
# Builds every plugin .so the tests load, into target/debug:
# - the workspace's plugins (cargo build --workspace);
# - four real plugins built against other plugin-apis (see `variant` below), which the
#   loader must refuse or accept: the faulty test plugin against an incompatible 0.2.0,
#   and tests/abi's 0.1.0 plugin against the frozen 0.1.0, against the next patch
#   release, and against a modified copy of today's version.
# It reuses target/ so that dependencies compile once.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

cargo build --workspace --all-targets

# variant NAME API_DIR PLUGIN_DIR PACKAGE [API_EDIT...]: builds PLUGIN_DIR, renamed PACKAGE,
# against a copy of API_DIR edited by the sed expressions API_EDIT (applied to
# `version:V` for plugin-api's version, `FILE::EXPR` for a sed -E expression on one of
# its files; each must change something), in a workspace of
# their own under target/abi-variants/NAME that shares target/ (dependencies compile
# once) and the workspace's lock file.
variant() {
  local name="$1" api="$2" plugin="$3" package="$4"
  shift 4
  local work="$CARGO_TARGET_DIR/abi-variants/$name"
  rm -rf "$work"
  mkdir -p "$work"
  cp -r "$api" "$work/plugin-api"
  cp -r "$plugin" "$work/plugin"
  rm -rf "$work/plugin/target"
  local edit file expr before
  for edit in "$@"; do
    case "$edit" in
      version:*) file=Cargo.toml expr="s/^version = \"[0-9.]+\"/version = \"${edit#version:}\"/" ;;
      *::*) file="${edit%%::*}" expr="${edit#*::}" ;;
      *) echo "build-test-plugins: variant $name: bad edit '$edit'" >&2; exit 1 ;;
    esac
    before="$(md5sum < "$work/plugin-api/$file")"
    sed -i -E "$expr" "$work/plugin-api/$file"
    if [ "$before" = "$(md5sum < "$work/plugin-api/$file")" ]; then
      echo "build-test-plugins: variant $name: the edit '$expr' changed nothing in $file" >&2
      exit 1
    fi
  done
  sed -i -E "s/^name = \"[^\"]+\"/name = \"$package\"/" "$work/plugin/Cargo.toml"
  sed -i -E 's|path = "[./]*(plugin-api[^"]*)"|path = "../plugin-api"|' "$work/plugin/Cargo.toml"
  {
    printf '[workspace]\nresolver = "3"\nmembers = ["plugin-api", "plugin"]\n\n'
    sed -n '/^\[workspace.package\]/,$p' Cargo.toml
  } > "$work/Cargo.toml"
  cp Cargo.lock "$work/Cargo.lock"
  cargo build --quiet --manifest-path "$work/Cargo.toml" -p "$package"
  ls "$CARGO_TARGET_DIR/debug/lib${package//-/_}.so" >/dev/null
}

api_version="$(sed -n -E 's/^version = "([0-9.]+)"/\1/p' plugin-api/Cargo.toml)"
next_patch="${api_version%.*}.$(( ${api_version##*.} + 1 ))"

# A plugin built against an incompatible interface version (0.2.0).
variant incompatible plugin-api tests/plugins/faulty synchronizer-test-incompatible version:0.2.0
# A plugin built against the frozen plugin-api 0.1.0 (tests/abi): today's host loads it.
variant api-0.1.0 tests/abi/plugin-api-0.1.0 tests/abi/plugin-0.1.0 synchronizer-test-api-0-1-0
# The same plugin built against the next patch release, which appends a field to
# FfiPluginInfo: today's host refuses it, naming both versions.
variant api-next plugin-api tests/abi/plugin-0.1.0 synchronizer-test-api-next \
  "version:$next_patch" \
  'src/abi.rs::s|^(    pub sample_config: RStr<.static>,)$|\1\n    /// Appended by the evolution test.\n    pub probe: u64,|' \
  'src/sdk.rs::s|^(            sample_config: RStr::from_str\(sample_config\),)$|\1\n            probe: 7,|'
# The same plugin built against a plugin-api of today's version whose FfiCounter differs
# (a modified copy): refused, naming the type and the field.
variant layout plugin-api tests/abi/plugin-0.1.0 synchronizer-test-layout \
  'src/abi.rs::s|^(    pub value: )u64,$|\1u32,|' \
  'src/sdk/glue.rs::s|^(                    )value,$|\1value: value as u32,|'
