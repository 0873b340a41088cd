#!/usr/bin/env bash
# Everything that decides pass or fail, in one command: formatting, lints with
# warnings denied, the binaries the real-process tests start, and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build --bins (the tests start interlockd and interlockctl as processes)"
cargo build --workspace --bins --locked
echo "== doc tests"
cargo test --workspace --doc --locked
echo "== cargo nextest run"
cargo nextest run --workspace --locked --no-fail-fast
