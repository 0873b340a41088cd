#!/usr/bin/env bash
# Installs what the etcd comparison needs: the etcd server (the peer) and
# protoc (the etcd-client crate compiles etcd's .proto files at build time).
set -euo pipefail
if ! command -v etcd >/dev/null || ! command -v protoc >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server protobuf-compiler
fi
etcd --version | head -1
