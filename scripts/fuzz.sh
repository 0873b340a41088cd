#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60).
# Stable Rust, no sanitizer (`-s none`); for AddressSanitizer on nightly-less
# machines: RUSTC_BOOTSTRAP=1 with `-s address` (see STACK.md).
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). Crashes land in
# fuzz/artifacts/<target>/ with the command that reproduces them.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
# Fuzz builds use their own flags: keep them apart from the workspace's builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
targets=$(cargo fuzz list)
for target in $targets; do
    echo "== fuzz $target for ${seconds}s"
    mkdir -p "corpus/$target"
    cargo fuzz run -s none "$target" "corpus/$target" -- -max_total_time="$seconds" -max_len=4096
done
