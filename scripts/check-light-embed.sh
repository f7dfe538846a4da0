#!/usr/bin/env bash
# The library embeds light: built with no default features, the host crate pulls in no
# HTTP server (axum, hyper), no AMQP client (lapin) and no redb, and the embedding
# example (which asks for no features) compiles that way. Fails naming what leaked in.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
for pkg in "synchronizer --no-default-features" "synchronizer-embed-example"; do
    # shellcheck disable=SC2086
    leaked="$(cargo tree -e normal --prefix none -p $pkg | grep -oE '^(axum|hyper|lapin|redb|amq-protocol)[^ ]* v[^ ]+' | sort -u || true)"
    if [ -n "$leaked" ]; then
        echo "cargo tree -p $pkg pulls in what it must not:" >&2
        echo "$leaked" >&2
        exit 1
    fi
done
cargo check -p synchronizer-embed-example
cargo check -p synchronizer --no-default-features --all-targets
# A configuration asking for a part left out is refused, naming the feature.
cargo test -p synchronizer --no-default-features --lib a_part_left_out_of_the_build
echo "the library embeds light: no axum, hyper, lapin or redb without default features"
