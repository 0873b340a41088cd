#!/usr/bin/env bash
# Everything that decides pass or fail, in one command: formatting, lints with
# warnings denied, the binaries the real-process tests start, and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== protoc compiles every .proto"
# The build compiles proto/ with protox; clients in other languages use the
# official protoc, which is stricter (SPEC §8). Python's grpc_tools bundles one.
mapfile -t protos < <(find proto -name '*.proto' | sort)
[ "${#protos[@]}" -gt 0 ] || { echo "no .proto files under proto/" >&2; exit 1; }
if command -v protoc >/dev/null; then
    protoc=(protoc)
elif python3 -c 'import grpc_tools.protoc' 2>/dev/null; then
    protoc=(python3 -m grpc_tools.protoc)
else
    echo "no protoc: apt-get install protobuf-compiler (or pip install -r tests/python/requirements.txt)" >&2
    exit 1
fi
descriptors=$(mktemp)
trap 'rm -f "$descriptors"' EXIT
"${protoc[@]}" -I proto --descriptor_set_out="$descriptors" "${protos[@]}"
echo "${#protos[@]} files compiled with ${protoc[*]} ($("${protoc[@]}" --version))"
echo "== cargo clippy (warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build --bins (the tests start interlockd and interlockctl as processes)"
cargo build --workspace --bins --locked
echo "== doc tests"
cargo test --workspace --doc --locked
echo "== cargo nextest run"
cargo nextest run --workspace --locked --no-fail-fast
