//! The state-machine store: [`interlock_core::State`] in memory, made durable
//! by snapshots kept in a [`SnapshotVault`].
//!
//! The state itself is not written on every apply. After a restart openraft
//! gets the latest snapshot from here and re-applies the committed log after
//! it (the log store keeps the committed log id for that purpose).

use crate::{
    read_err, write_err, Entry, LogId, Snapshot, SnapshotMeta, StoreError, StoreObserver, StoredMembership, TypeConfig,
};
use interlock_core::changes::ChangeJournal;
use interlock_core::{codec, Response, State};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use std::io::{Cursor, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

/// File name of the current snapshot inside a [`SnapshotVault::Dir`].
pub const SNAPSHOT_FILE: &str = "snapshot.bin";

/// What the applied state is, as of which log entry.
#[derive(Debug, Default, Clone)]
pub struct Applied {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub state: State,
    /// What the entries this node applied lately touched (watchers resend
    /// only that); knows nothing before the snapshot it started from.
    pub changes: ChangeJournal,
}

/// A snapshot as persisted: its openraft metadata and the encoded [`State`].
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// Where the latest snapshot is kept.
#[derive(Clone)]
pub enum SnapshotVault {
    /// A directory on disk; the snapshot is replaced atomically (write, fsync, rename).
    Dir(PathBuf),
    /// Memory shared with whoever made the vault (simulation, tests).
    Memory(Arc<Mutex<Option<Vec<u8>>>>),
}

impl SnapshotVault {
    pub fn memory() -> Self {
        SnapshotVault::Memory(Arc::default())
    }

    async fn save(&self, blob: Vec<u8>) -> Result<(), StoreError> {
        match self {
            SnapshotVault::Dir(dir) => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || write_atomically(&dir, &blob))
                    .await
                    .map_err(write_err)?
                    .map_err(write_err)
            }
            SnapshotVault::Memory(slot) => {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(blob);
                Ok(())
            }
        }
    }

    fn load(&self) -> Result<Option<StoredSnapshot>, StoreError> {
        let blob = match self {
            SnapshotVault::Dir(dir) => match std::fs::read(dir.join(SNAPSHOT_FILE)) {
                Ok(blob) => blob,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(read_err(format!("{}: {e}", dir.join(SNAPSHOT_FILE).display()))),
            },
            SnapshotVault::Memory(slot) => match slot.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                Some(blob) => blob,
                None => return Ok(None),
            },
        };
        codec::decode(&blob).map(Some).map_err(|e| read_err(format!("snapshot: {e}")))
    }
}

/// Offline access to the snapshot of a stopped node's data directory: for
/// inspection and for tests that tamper with a stored copy (the audit
/// trail's must be found out). Never while the node runs.
pub mod offline {
    use super::*;

    /// The state in the snapshot under `dir`, if there is one.
    pub fn read_state(dir: &std::path::Path) -> Result<Option<State>, StoreError> {
        match SnapshotVault::Dir(dir.to_path_buf()).load()? {
            None => Ok(None),
            Some(stored) => codec::decode(&stored.data).map(Some).map_err(|e| read_err(format!("snapshot state: {e}"))),
        }
    }

    /// Replaces the state in the snapshot under `dir` (metadata unchanged).
    pub fn rewrite_state(dir: &std::path::Path, state: &State) -> Result<(), StoreError> {
        let vault = SnapshotVault::Dir(dir.to_path_buf());
        let Some(stored) = vault.load()? else { return Err(read_err("no snapshot to rewrite".to_string())) };
        let data = codec::encode(state).map_err(read_err)?;
        let blob = codec::encode(&StoredSnapshot { meta: stored.meta, data }).map_err(read_err)?;
        write_atomically(dir, &blob).map_err(write_err)
    }
}

fn write_atomically(dir: &std::path::Path, blob: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(blob)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// A read handle on the applied state, for serving reads and watches.
#[derive(Clone)]
pub struct StateReader {
    applied: Arc<RwLock<Applied>>,
    applied_rx: tokio::sync::watch::Receiver<u64>,
}

impl StateReader {
    /// Locks the applied state for reading. Keep the guard short-lived and
    /// never hold it across an `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.applied.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver that changes whenever the state's revision does.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied_rx.clone()
    }

    /// Waits until the state has applied `index` (or the store is gone).
    pub async fn wait_applied(&self, index: u64) -> bool {
        let mut rx = self.applied_rx.clone();
        let reached = rx.wait_for(|revision| *revision >= index).await.is_ok();
        reached
    }
}

/// The openraft state machine. Clones share the same state.
#[derive(Clone)]
pub struct StateMachineStore {
    applied: Arc<RwLock<Applied>>,
    vault: SnapshotVault,
    observer: Arc<dyn StoreObserver>,
    /// Distinguishes snapshots built at the same log id.
    snapshot_seq: Arc<std::sync::atomic::AtomicU64>,
    /// Tells watchers the revision of the state after every change.
    applied_tx: Arc<tokio::sync::watch::Sender<u64>>,
}

impl StateMachineStore {
    /// Opens the state machine, restoring the vault's snapshot if there is one.
    pub fn open(vault: SnapshotVault, observer: Arc<dyn StoreObserver>) -> Result<Self, StoreError> {
        let mut applied = Applied::default();
        if let Some(stored) = vault.load()? {
            let state: State = codec::decode(&stored.data).map_err(|e| read_err(format!("snapshot state: {e}")))?;
            applied = Applied {
                last_applied: stored.meta.last_log_id,
                membership: stored.meta.last_membership.clone(),
                changes: ChangeJournal::starting_at(state.revision),
                state,
            };
        }
        let (applied_tx, _) = tokio::sync::watch::channel(applied.state.revision);
        Ok(StateMachineStore {
            applied: Arc::new(RwLock::new(applied)),
            vault,
            observer,
            snapshot_seq: Arc::default(),
            applied_tx: Arc::new(applied_tx),
        })
    }

    pub fn reader(&self) -> StateReader {
        StateReader { applied: self.applied.clone(), applied_rx: self.applied_tx.subscribe() }
    }

    fn write(&self) -> RwLockWriteGuard<'_, Applied> {
        self.applied.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.applied.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StoreError> {
        let (meta, data) = {
            let applied = self.read();
            let data = codec::encode(&applied.state).map_err(write_err)?;
            let seq = self.snapshot_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let snapshot_id = match applied.last_applied {
                Some(id) => format!("{}-{}-{seq}", id.leader_id, id.index),
                None => format!("empty-{seq}"),
            };
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
                snapshot_id,
            };
            (meta, data)
        };
        let stored = StoredSnapshot { meta: meta.clone(), data };
        self.vault.save(codec::encode(&stored).map_err(write_err)?).await?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(stored.data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StoreError> {
        let applied = self.read();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StoreError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = Instant::now();
        let mut responses = Vec::new();
        let revision = {
            let mut applied = self.write();
            for entry in entries {
                let index = entry.log_id.index;
                applied.last_applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => {
                        applied.state.apply_marker(index);
                        Response::Applied { revision: index }
                    }
                    EntryPayload::Normal(request) => {
                        let response = applied.state.apply(index, &request);
                        let touched = applied.state.touched_by(&request.command);
                        applied.changes.record(index, touched);
                        response
                    }
                    EntryPayload::Membership(membership) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                        applied.state.apply_marker(index);
                        Response::Applied { revision: index }
                    }
                };
                responses.push(response);
            }
            applied.state.revision
        };
        self.applied_tx.send_replace(revision);
        self.observer.apply_seconds(started.elapsed().as_secs_f64());
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StoreError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StoreError> {
        let data = snapshot.into_inner();
        let state: State = codec::decode(&data).map_err(|e| read_err(format!("received snapshot: {e}")))?;
        let stored = StoredSnapshot { meta: meta.clone(), data };
        self.vault.save(codec::encode(&stored).map_err(write_err)?).await?;
        let revision = state.revision;
        *self.write() = Applied {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            changes: ChangeJournal::starting_at(revision),
            state,
        };
        self.applied_tx.send_replace(revision);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StoreError> {
        Ok(self
            .vault
            .load()?
            .map(|stored| Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) }))
    }
}
