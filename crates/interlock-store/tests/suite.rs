//! openraft's storage conformance suite, on both log stores.
//!
//! The suite builds its own tokio runtime, so these are plain `#[test]`s.

use interlock_store::{MemLogStore, NoObserver, SledLogStore, SnapshotVault, StateMachineStore, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use std::sync::Arc;

struct MemBuilder;

impl StoreBuilder<TypeConfig, MemLogStore, StateMachineStore, ()> for MemBuilder {
    async fn build(&self) -> Result<((), MemLogStore, StateMachineStore), StorageError<u64>> {
        let sm = StateMachineStore::open(SnapshotVault::memory(), Arc::new(NoObserver))?;
        Ok(((), MemLogStore::new(), sm))
    }
}

struct SledBuilder;

impl StoreBuilder<TypeConfig, SledLogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, SledLogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = SledLogStore::open(&dir.path().join("raft"), Arc::new(NoObserver)).expect("open sled");
        let sm = StateMachineStore::open(SnapshotVault::Dir(dir.path().to_path_buf()), Arc::new(NoObserver))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn memory_store_passes_the_openraft_suite() -> Result<(), StorageError<u64>> {
    Suite::test_all(MemBuilder)
}

#[test]
fn sled_store_passes_the_openraft_suite() -> Result<(), StorageError<u64>> {
    Suite::test_all(SledBuilder)
}
