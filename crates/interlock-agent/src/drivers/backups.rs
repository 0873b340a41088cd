//! Where drivers keep backups and how they check them: a [`BackupStore`]
//! (a directory, `file://` URIs, which every region's restorers must be
//! able to read — a shared mount; or memory shared by the agents of one
//! process, `mem://` URIs, for the simulation), and the SHA-256 checksum
//! the catalogue records (`sha256:<hex>`).

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The catalogue's checksum of `bytes`.
pub fn checksum(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The catalogue's checksum of the file at `path`, read in chunks.
pub fn file_checksum(path: &Path) -> Result<(String, u64), String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(|e| format!("reading {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buffer[..n]);
    }
    let digest = hasher.finalize();
    Ok((format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>()), size))
}

/// The local path of a `file://` URI.
pub fn file_path(uri: &str) -> Result<PathBuf, String> {
    match uri.strip_prefix("file://") {
        Some(path) if path.starts_with('/') => Ok(PathBuf::from(path)),
        _ => Err(format!("location {uri:?} is not a file:/// URI this agent can read")),
    }
}

/// Where the demo database puts its backups.
#[derive(Clone)]
pub enum BackupStore {
    /// A directory (shared between regions in a real deployment).
    Dir(PathBuf),
    /// Memory shared by every agent of this process (the simulation).
    Memory(Arc<Mutex<BTreeMap<String, Vec<u8>>>>),
}

impl BackupStore {
    /// A fresh in-memory store.
    pub fn memory() -> Self {
        BackupStore::Memory(Arc::default())
    }

    /// Stores `bytes` as `name`; its URI.
    pub fn put(&self, name: &str, bytes: &[u8]) -> Result<String, String> {
        match self {
            BackupStore::Dir(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
                let path = dir.join(name);
                let partial = dir.join(format!(".{name}.partial"));
                std::fs::write(&partial, bytes).map_err(|e| format!("writing {}: {e}", partial.display()))?;
                std::fs::rename(&partial, &path).map_err(|e| format!("renaming to {}: {e}", path.display()))?;
                Ok(format!("file://{}", path.display()))
            }
            BackupStore::Memory(objects) => {
                objects.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), bytes.to_vec());
                Ok(format!("mem://backups/{name}"))
            }
        }
    }

    /// The bytes at `uri`.
    pub fn get(&self, uri: &str) -> Result<Vec<u8>, String> {
        match self {
            BackupStore::Dir(_) => {
                let path = file_path(uri)?;
                std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))
            }
            BackupStore::Memory(objects) => {
                let name = uri.strip_prefix("mem://backups/").ok_or_else(|| format!("{uri:?} is not in memory"))?;
                let objects = objects.lock().unwrap_or_else(|p| p.into_inner());
                objects.get(name).cloned().ok_or_else(|| format!("{uri}: no such backup"))
            }
        }
    }

    /// Removes `name` (a test's scratch copy); absent is fine.
    pub fn remove(&self, name: &str) {
        match self {
            BackupStore::Dir(dir) => {
                let _ = std::fs::remove_file(dir.join(name));
            }
            BackupStore::Memory(objects) => {
                objects.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_is_sha256_in_the_catalogue_format() {
        // The SHA-256 of "abc" (FIPS 180-2, appendix B.1).
        assert_eq!(checksum(b"abc"), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let dir = std::env::temp_dir().join(format!("interlock-backups-{}", std::process::id()));
        let store = BackupStore::Dir(dir.clone());
        let uri = store.put("b1", b"abc").expect("put");
        assert_eq!(file_checksum(&file_path(&uri).expect("path")).expect("sum"), (checksum(b"abc"), 3));
        assert_eq!(store.get(&uri).expect("get"), b"abc");
        assert!(file_path("s3://bucket/b1").is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
