//! Storage for openraft: where the Raft log, the vote and the state machine live.
//!
//! Map of the crate:
//! - [`TypeConfig`]: Interlock's openraft type configuration.
//! - [`sled_log`]: the durable log store on sled (production).
//! - [`mem_log`]: the in-memory log store (simulation, tests).
//! - [`runtime`]: openraft's runtime: tokio with a seedable RNG.
//! - [`state_machine`]: the state-machine store shared by both, around
//!   [`interlock_core::State`], with snapshots kept in a [`SnapshotVault`].
//!
//! Both log stores pass `openraft::testing::Suite` (see `tests/suite.rs`).
//! Durability rule: nothing is acknowledged to openraft (append callback,
//! `save_vote`, `truncate`, `purge`) before it is flushed. The committed log
//! id is the exception: openraft treats it as an optional hint, so it rides
//! along with the next flush instead of paying its own fsync.

pub mod mem_log;
pub mod runtime;
pub mod sled_log;
pub mod state_machine;

use interlock_core::{NodeId, NodeInfo, Request, Response};
use openraft::{AnyError, StorageError, StorageIOError};
use std::io::Cursor;

pub use mem_log::MemLogStore;
pub use sled_log::{OpenError, SledLogStore};
pub use state_machine::{SnapshotVault, StateMachineStore, StateReader};

openraft::declare_raft_types!(
    /// Interlock's openraft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = runtime::InterlockRuntime,
);

/// The openraft types, specialised to Interlock.
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StoreError = StorageError<NodeId>;

/// Callbacks through which the node observes storage latency without the
/// store knowing about metrics libraries.
pub trait StoreObserver: Send + Sync + 'static {
    /// An append became durable `seconds` after openraft handed it over.
    fn append_seconds(&self, seconds: f64);
    /// A batch of entries was applied in `seconds`.
    fn apply_seconds(&self, seconds: f64);
}

/// An observer that ignores everything.
pub struct NoObserver;

impl StoreObserver for NoObserver {
    fn append_seconds(&self, _: f64) {}
    fn apply_seconds(&self, _: f64) {}
}

fn read_err(e: impl std::fmt::Display) -> StoreError {
    StorageIOError::read(AnyError::error(e.to_string())).into()
}

fn write_err(e: impl std::fmt::Display) -> StoreError {
    StorageIOError::write(AnyError::error(e.to_string())).into()
}
