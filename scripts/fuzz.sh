#!/usr/bin/env bash
# Builds and runs the fuzz targets of fuzz/ (cargo-fuzz, libFuzzer), on the stable
# toolchain (RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags; no sanitizer: the code
# is safe Rust, and without ASan a run is several times faster).
#
#   scripts/fuzz.sh TARGET|all SECONDS   fuzz each target for SECONDS, one after another,
#                                        with one libFuzzer process: new inputs go to
#                                        fuzz/corpus/TARGET, crashes to fuzz/artifacts/TARGET
#   scripts/fuzz.sh cmin TARGET|all [DIR...]  minimize fuzz/corpus/TARGET (with DIRs merged
#                                        in): what adds coverage, inputs of 8 KiB at most;
#                                        regress-* and seed-* are always kept
#   scripts/fuzz.sh list                 the targets
#   scripts/fuzz.sh replay               every saved input of every target, without
#                                        libFuzzer (`cargo test`; what scripts/test.sh runs)
#   scripts/fuzz.sh seed                 (re)write the generated seeds, corpus/*/seed-*
#
# Each run also reads the repository's real fixtures for its input (fuzz/seed-dirs),
# so the corpus needs to hold only what adds to them. libFuzzer's output of each run is in
# fuzz/target/logs/TARGET.log; one line per target sums it up (seconds, executions from
# libFuzzer's final stats, corpus size). Environment: FUZZ_ARGS (more libFuzzer options,
# e.g. "-max_len=65536"); FUZZ_SKIP (checks of known, unfixed findings to skip, see
# fuzz/src/check.rs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The replay builds without libFuzzer, in the main target directory, with the main
# workspace's dependency versions: the fuzz workspace's lock starts from the main one
# (cargo adds the fuzz-only crates to it). The explicit --target puts its build in
# target/<host triple>/: the plugins are cdylibs, whose files carry no hash in their
# names, so a build in target/debug/ would overwrite the main workspace's (and its .so
# files). Build scripts and proc macros stay shared.
without_libfuzzer() {
    local command=$1
    shift
    cp Cargo.lock fuzz/Cargo.lock
    CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}" cargo "$command" \
        --manifest-path fuzz/Cargo.toml --target "$(rustc -vV | sed -n 's/^host: //p')" "$@"
}
case "${1:-}" in
    replay)
        cargo fmt --manifest-path fuzz/Cargo.toml -- --check
        without_libfuzzer test --test replay
        exit 0
        ;;
    seed)
        without_libfuzzer test --test seeds -- --ignored
        exit 0
        ;;
esac

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
build_flags=(--fuzz-dir fuzz --sanitizer none --debug-assertions --features libfuzzer)
bin=fuzz/target/x86_64-unknown-linux-gnu/release
# The largest input the saved corpus keeps (scripts/fuzz.sh cmin).
MAX_INPUT=8192

targets() { sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^synchronizer-fuzz$'; }

# Directories of real inputs each target also reads (never written to): fuzz/seed-dirs.
seeds() { sed -n "s|^$1 ||p" fuzz/seed-dirs; }

usage() {
    sed -n '6,15p' "$0" >&2
    exit 2
}

[ $# -ge 1 ] || usage
case "$1" in
    list)
        targets
        exit 0
        ;;
    cmin)
        # The saved corpus is kept small: the inputs of at most MAX_INPUT bytes that add
        # coverage (edges, not hit counts), on top of the regression and seed inputs,
        # which are always kept. DIRs (other corpora) are merged in too.
        [ $# -ge 2 ] || usage
        selected=$([ "$2" = all ] && targets || echo "$2")
        shift 2
        cargo +stable fuzz build "${build_flags[@]}"
        for t in $selected; do
            dir="fuzz/corpus/$t"
            work=$(mktemp -d)
            mkdir -p "$dir" "$work/in" "$work/out"
            for from in "$dir" "$@"; do
                find "$from" -maxdepth 1 -type f -size "-$((MAX_INPUT + 1))c" -exec cp {} "$work/in/" \;
            done
            find "$dir" -maxdepth 1 -type f \( -name 'regress-*' -o -name 'seed-*' \) -exec cp {} "$work/out/" \;
            before=$(find "$dir" -type f | wc -l)
            "$bin/$t" -merge=1 -use_counters=0 -timeout=30 -artifact_prefix="$work/" "$work/out" "$work/in" > "$work/log" 2>&1 ||
                { tail -n 20 "$work/log"; exit 1; }
            rm -rf "$dir"
            mv "$work/out" "$dir"
            if ls "$work"/crash-* > /dev/null 2>&1; then
                mkdir -p "fuzz/artifacts/$t"
                mv "$work"/crash-* "fuzz/artifacts/$t/"
                echo "$t: inputs that crash, left out: fuzz/artifacts/$t" >&2
            fi
            rm -rf "$work"
            echo "$t: corpus $before -> $(find "$dir" -type f | wc -l) files, $(du -sb "$dir" | cut -f1) bytes"
        done
        exit 0
        ;;
esac

[ $# -eq 2 ] || usage
selected=$([ "$1" = all ] && targets || echo "$1")
seconds=$2
targets | grep -qx "${selected%% *}" || { echo "no fuzz target ${selected%% *} (scripts/fuzz.sh list)" >&2; exit 2; }

mkdir -p fuzz/target/logs
cargo +stable fuzz build "${build_flags[@]}"
status=0
for t in $selected; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    log="fuzz/target/logs/$t.log"
    # shellcheck disable=SC2046,SC2086
    if cargo +stable fuzz run "${build_flags[@]}" "$t" "fuzz/corpus/$t" $(seeds "$t") -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        ${FUZZ_ARGS:-} > "$log" 2>&1; then
        outcome=ok
    else
        outcome="FAILED (see $log and fuzz/artifacts/$t)"
        status=1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
    echo "$t: ${secs:-?} s, ${runs:-?} executions, corpus $(find "fuzz/corpus/$t" -type f | wc -l) files: $outcome"
done
exit "$status"
