#!/usr/bin/env python3
"""A Python client generated from proto/ talks to a running Interlock cluster.

    python3 tests/python/client_check.py 127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7003

Generates stubs for every proto/interlock/v1/*.proto with grpc_tools.protoc
(into a temporary directory), then over gRPC (mTLS with --cacert, --cert and
--key; plaintext without): Kv Put and a
linearizable Get of a unique key, Cluster.Status, and server reflection
(v1alpha) listing the public services with the methods proto/ declares.
A call that returns UNAVAILABLE (no leader yet, an election) is retried on
the next endpoint for a few seconds. Exits 0 when every check passed, 1 with
the failed check named otherwise, 2 when the Python modules are missing.
"""

import argparse
import importlib
import itertools
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

try:
    import grpc
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
except ImportError as e:
    print(f"missing Python module ({e}): pip install -r tests/python/requirements.txt", file=sys.stderr)
    sys.exit(2)

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"
PUBLIC_SERVICES = ["interlock.v1.Kv", "interlock.v1.Cluster", "interlock.v1.Controller", "interlock.v1.Admin"]
# How long UNAVAILABLE is retried, and the deadline of each call.
RETRY_FOR_S = 10.0
CALL_TIMEOUT_S = 5.0


class CheckFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def generate_stubs(out_dir):
    """Compiles every public .proto to Python and returns {stem: (pb2, pb2_grpc)}."""
    protos = sorted((PROTO_ROOT / "interlock" / "v1").glob("*.proto"))
    check(protos, f"no .proto files under {PROTO_ROOT / 'interlock' / 'v1'}")
    command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}",
               f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *map(str, protos)]
    run = subprocess.run(command, capture_output=True, text=True)
    check(run.returncode == 0, f"grpc_tools.protoc failed ({run.returncode}):\n{run.stdout}{run.stderr}")
    sys.path.insert(0, str(out_dir))
    return {p.stem: (importlib.import_module(f"interlock.v1.{p.stem}_pb2"),
                     importlib.import_module(f"interlock.v1.{p.stem}_pb2_grpc")) for p in protos}


class Endpoints:
    """One channel per endpoint; calls move to the next one on UNAVAILABLE
    and start from the last one that answered."""

    def __init__(self, addresses, credentials=None):
        self.addresses = addresses
        if credentials is None:
            self.channels = [grpc.insecure_channel(a) for a in addresses]
        else:
            self.channels = [grpc.secure_channel(a, credentials) for a in addresses]
        self.current = 0

    def call(self, what, fn):
        deadline = time.monotonic() + RETRY_FOR_S
        for attempt in itertools.count():
            i = (self.current + attempt) % len(self.channels)
            address = self.addresses[i]
            try:
                reply = fn(self.channels[i])
                self.current = i
                return reply
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise CheckFailed(f"{what} via {address}: {e.code().name}: {e.details()}") from e
                if attempt == 0:
                    print(f"  {what} via {address}: UNAVAILABLE ({e.details()}); retrying on the endpoints in turn")
                time.sleep(0.2)

    def close(self):
        for channel in self.channels:
            channel.close()


def check_kv(endpoints, kv_pb2, kv_grpc):
    key = f"python-client/{uuid.uuid4()}"
    value = f"written by client_check.py at {time.time()}".encode()
    put = endpoints.call("Kv.Put", lambda ch: kv_grpc.KvStub(ch).Put(
        kv_pb2.PutRequest(key=key, value=value), timeout=CALL_TIMEOUT_S))
    check(put.revision > 0, f"Kv.Put {key}: revision {put.revision}, expected > 0")
    got = endpoints.call("Kv.Get", lambda ch: kv_grpc.KvStub(ch).Get(
        kv_pb2.GetRequest(key=key, linearizable=True), timeout=CALL_TIMEOUT_S))
    check(got.found, f"Kv.Get {key} (linearizable): not found after Put at revision {put.revision}")
    check(got.value == value, f"Kv.Get {key}: value {got.value!r}, expected {value!r}")
    # >=, not ==: a Put retried after UNAVAILABLE may have been applied twice.
    check(got.mod_revision >= put.revision > 0,
          f"Kv.Get {key}: mod_revision {got.mod_revision}, expected >= the Put's revision {put.revision}")
    check(got.revision >= got.mod_revision,
          f"Kv.Get {key}: read at revision {got.revision}, before the key's mod_revision {got.mod_revision}")
    print(f"ok: Kv.Put {key} at revision {put.revision}; linearizable Get read it back at revision {got.revision}")


def check_status(endpoints, members, cluster_pb2, cluster_grpc):
    status = endpoints.call("Cluster.Status", lambda ch: cluster_grpc.ClusterStub(ch).Status(
        cluster_pb2.StatusRequest(), timeout=CALL_TIMEOUT_S))
    check(status.leader != 0, f"Cluster.Status: no leader: {status}")
    ids = sorted(m.id for m in status.members)
    check(len(ids) == members, f"Cluster.Status: members {ids}, expected {members}")
    leaders = [m.id for m in status.members if m.role == "leader"]
    check(leaders == [status.leader], f"Cluster.Status: leader {status.leader} but members with role leader: {leaders}")
    print(f"ok: Cluster.Status: leader {status.leader}, term {status.term}, members {ids}")


def check_reflection(endpoints, stubs):
    """Reflection lists the public services, each with the methods proto/ declares."""
    def reflect(channel):
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = DescriptorPool(database)
        listed = set(database.get_services())
        return listed, {name: sorted(m.name for m in pool.FindServiceByName(name).methods)
                        for name in PUBLIC_SERVICES if name in listed}

    listed, reflected = endpoints.call("reflection v1alpha", reflect)
    missing = [name for name in PUBLIC_SERVICES if name not in listed]
    check(not missing, f"reflection v1alpha: {missing} not listed (listed: {sorted(listed)})")
    declared = {s.full_name: sorted(s.methods_by_name) for pb2, _ in stubs.values()
                for s in pb2.DESCRIPTOR.services_by_name.values()}
    for name in PUBLIC_SERVICES:
        check(reflected[name] == declared.get(name),
              f"reflection v1alpha: {name} has methods {reflected[name]}, proto/ declares {declared.get(name)}")
    print(f"ok: reflection v1alpha lists {', '.join(PUBLIC_SERVICES)} with the methods proto/ declares")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("endpoints", nargs="+", help="HOST:PORT of interlockd gRPC listeners")
    parser.add_argument("--members", type=int, default=3, help="expected cluster size (default 3)")
    parser.add_argument("--cacert", help="CA certificate (PEM): mTLS when given with --cert and --key")
    parser.add_argument("--cert", help="client certificate (PEM)")
    parser.add_argument("--key", help="client private key (PEM)")
    args = parser.parse_args()
    credentials = None
    if args.cacert or args.cert or args.key:
        if not (args.cacert and args.cert and args.key):
            parser.error("--cacert, --cert and --key go together")
        read = lambda path: Path(path).read_bytes()
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(args.cacert), private_key=read(args.key), certificate_chain=read(args.cert))
    endpoints = Endpoints(args.endpoints, credentials)
    try:
        with tempfile.TemporaryDirectory(prefix="interlock-pyclient-") as out_dir:
            stubs = generate_stubs(out_dir)
            print(f"ok: generated Python stubs for {', '.join(sorted(stubs))}")
            check_kv(endpoints, *stubs["kv"])
            check_status(endpoints, args.members, *stubs["cluster"])
            check_reflection(endpoints, stubs)
    except CheckFailed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        endpoints.close()
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
