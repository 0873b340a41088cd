//! interlockd: the coordinator node.
//!
//! Map of the crate:
//! - [`config`]: the node's configuration (file, flags, env) and its validation.
//! - [`node`]: assembly and lifecycle of a running node.
//! - [`network`]: Raft's transport over gRPC (client and server side).
//! - [`channels`]: reused gRPC channels to peers, made by an injected maker.
//! - [`ctx`]: what request handlers share; proposing and forwarding.
//! - [`proposer`]: the leader batches concurrent key-value writes into one entry.
//! - [`kv`], [`cluster`], [`controller`], [`admin_api`]: the public gRPC services.
//! - [`leases`]: the leader's lease deadlines, expiry loop and keepalive batcher.
//! - [`watch`]: resumable watch streams read from the applied state.
//! - [`admin`]: `/livez`, `/readyz`, `/metrics`.
//! - [`metrics`]: the Prometheus metrics.
//! - [`dev`]: `interlockd dev`, a local three-region cluster.

pub mod admin;
pub mod admin_api;
pub mod agent;
pub mod channels;
pub mod cluster;
pub mod config;
pub mod controller;
pub mod ctx;
pub mod dev;
pub mod failover;
pub mod kv;
pub mod leases;
pub mod metrics;
pub mod network;
pub mod node;
pub mod proposer;
pub mod routing;
pub mod watch;
