//! The data directory and its identity record: which node it belongs to and
//! the initial peers it was bootstrapped with. Checked before anything in
//! the directory is opened for writing, so a mismatched configuration
//! changes nothing on disk.

use super::config::{format_peers, NodeConfig};
use super::StartError;
use interlock_core::{codec, NodeId, NodeInfo};
use interlock_store::Raft;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Who this data directory belongs to, written once on the first start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredIdentity {
    pub node_id: NodeId,
    /// The initial peer list this node was first started with (empty for a
    /// node that joined an existing cluster).
    pub initial_peers: BTreeMap<NodeId, NodeInfo>,
}

/// Creates the data directory if needed and proves it is writable.
pub(super) fn prepare_data_dir(dir: &Path) -> Result<(), StartError> {
    let err = |reason: String| StartError::DataDir { path: dir.display().to_string(), reason };
    if dir.exists() && !dir.is_dir() {
        return Err(err("exists and is not a directory".to_string()));
    }
    std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create: {e}")))?;
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"").map_err(|e| err(format!("not writable: {e}")))?;
    std::fs::remove_file(&probe).map_err(|e| err(format!("not writable: {e}")))?;
    Ok(())
}

/// File in the data directory that records whose it is.
pub const IDENTITY_FILE: &str = "identity";

fn read_identity(config: &NodeConfig) -> Result<Option<StoredIdentity>, StartError> {
    let path = config.data_dir.join(IDENTITY_FILE);
    let err = |reason: String| StartError::DataDir { path: path.display().to_string(), reason };
    match std::fs::read(&path) {
        Ok(bytes) => codec::decode(&bytes).map(Some).map_err(|e| err(format!("unreadable identity record: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(e.to_string())),
    }
}

pub(super) fn write_identity(config: &NodeConfig, identity: &StoredIdentity) -> Result<(), StartError> {
    let err = |reason: String| StartError::DataDir { path: config.data_dir.display().to_string(), reason };
    let bytes = codec::encode(identity).map_err(err)?;
    let tmp = config.data_dir.join(format!("{IDENTITY_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, &bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, config.data_dir.join(IDENTITY_FILE))?;
        std::fs::File::open(&config.data_dir)?.sync_all()
    };
    write().map_err(|e| err(format!("writing the identity record: {e}")))
}

/// Checks the data directory's identity record against the config, before
/// anything in the directory is opened for writing. `Ok(true)` on first start.
pub(super) fn check_identity(config: &NodeConfig) -> Result<bool, StartError> {
    let Some(stored) = read_identity(config)? else { return Ok(true) };
    if stored.node_id != config.id {
        return Err(StartError::Identity {
            field: "id",
            reason: format!(
                "is {}, but data_dir {} belongs to node {}",
                config.id,
                config.data_dir.display(),
                stored.node_id
            ),
        });
    }
    if !config.initial_peers.is_empty() && config.initial_peers != stored.initial_peers {
        return Err(StartError::Identity {
            field: "initial_peers",
            reason: format!(
                "[{}] disagrees with the membership this data directory was bootstrapped with: [{}]. \
                 initial_peers is only read on the first start; restore the original list, leave it empty, \
                 or change membership with `interlockctl cluster add/remove`",
                format_peers(&config.initial_peers).join(","),
                format_peers(&stored.initial_peers).join(",")
            ),
        });
    }
    Ok(false)
}

/// Checks that the membership on disk lists this node where the config says it is.
pub(super) fn check_stored_address(raft: &Raft, config: &NodeConfig) -> Result<(), StartError> {
    let metrics = raft.metrics().borrow().clone();
    match metrics.membership_config.membership().get_node(&config.id) {
        Some(stored) if stored.grpc_addr != config.grpc_advertise => Err(StartError::Identity {
            field: "grpc_advertise",
            reason: format!(
                "is {}, but the stored membership lists node {} at {}; other members would not find it. \
                 Use the old address, or remove and re-add the node",
                config.grpc_advertise, config.id, stored.grpc_addr
            ),
        }),
        _ => Ok(()),
    }
}
