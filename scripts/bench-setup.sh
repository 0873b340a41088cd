#!/usr/bin/env bash
# Installs what the comparisons need: the etcd server (the peer of `compare`,
# and Patroni's store in `pg-failover`), protoc (the etcd-client crate
# compiles etcd's .proto files at build time), PostgreSQL 15 and Patroni 3.0
# (the peer of `pg-failover`).
set -euo pipefail
if ! command -v etcd >/dev/null || ! command -v protoc >/dev/null || ! command -v patroni >/dev/null \
    || [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server protobuf-compiler postgresql-15 patroni
fi
etcd --version | head -1
patroni --version
