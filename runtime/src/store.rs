//! A local content-addressed store of components and their names: what `agx au push
//! --store` writes and `agx run` and `agx plan sign --store` read.
//!
//! Layout (design notes):
//!
//! ```text
//! DIR/blobs/sha256/<64 hex>     the component bytes, named by their digest
//! DIR/aus/<name>.json           {"digest": "sha256:…", "card": {…}}: the AU last pushed
//!                               under that name
//! ```
//!
//! Every file is written to a temporary file, synced and renamed into place, so a reader
//! sees a whole file or none. Every read of a blob re-checks its digest: the store is a
//! cache, never a source of trust.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use agenix_proto::card::Card;
use agenix_proto::{AuName, Digest};
use serde::{Deserialize, Serialize};

/// Largest component the store accepts.
pub const MAX_COMPONENT_BYTES: u64 = 256 << 20;

/// A directory of content-addressed blobs and AU names.
#[derive(Debug, Clone)]
pub struct LocalStore {
    dir: PathBuf,
}

/// What a name points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameEntry {
    /// The component's digest.
    pub digest: Digest,
    /// Its model card, if it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<Card>,
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No blob with that digest.
    #[error("{digest} is not in the store {dir}")]
    Missing {
        /// The digest asked for.
        digest: Digest,
        /// The store.
        dir: PathBuf,
    },
    /// No AU with that name.
    #[error(
        "AU \"{name}\" is not in the store {dir} (add it with `agx au push --store {dir} FILE.wasm`)"
    )]
    UnknownName {
        /// The name asked for.
        name: AuName,
        /// The store.
        dir: PathBuf,
    },
    /// A stored blob no longer matches its name.
    #[error("{path} is damaged: its content has digest {found}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What its bytes hash to.
        found: Digest,
    },
    /// Too big to store.
    #[error("component is {0} bytes, over the limit of {MAX_COMPONENT_BYTES}")]
    TooLarge(u64),
    /// A name file is not valid.
    #[error("{path} is not a valid name entry: {message}")]
    BadEntry {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The file system failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { what: what.into(), source }
}

impl LocalStore {
    /// The store at `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    fn name_path(&self, name: &AuName) -> PathBuf {
        self.dir.join("aus").join(format!("{name}.json"))
    }

    /// Adds `bytes`, returning their digest; storing the same bytes twice is a no-op.
    pub fn put(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        if bytes.len() as u64 > MAX_COMPONENT_BYTES {
            return Err(StoreError::TooLarge(bytes.len() as u64));
        }
        let digest = Digest::of(bytes);
        // Write unless an intact copy is already there (a damaged one is replaced).
        if self.get(&digest).is_err() {
            write_atomic(&self.blob_path(&digest), bytes)?;
        }
        Ok(digest)
    }

    /// The bytes with `digest`, checked.
    pub fn get(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Missing { digest: *digest, dir: self.dir.clone() });
            }
            Err(e) => return Err(io(format!("cannot read {}", path.display()))(e)),
        };
        let found = Digest::of(&bytes);
        if found != *digest {
            return Err(StoreError::Damaged { path, found });
        }
        Ok(bytes)
    }

    /// Points `name` at `entry`.
    pub fn set_name(&self, name: &AuName, entry: &NameEntry) -> Result<(), StoreError> {
        let mut json = serde_json::to_vec_pretty(entry).map_err(|e| StoreError::BadEntry {
            path: self.name_path(name),
            message: e.to_string(),
        })?;
        json.push(b'\n');
        write_atomic(&self.name_path(name), &json)
    }

    /// What `name` points at.
    pub fn name(&self, name: &AuName) -> Result<NameEntry, StoreError> {
        let path = self.name_path(name);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::UnknownName { name: name.clone(), dir: self.dir.clone() });
            }
            Err(e) => return Err(io(format!("cannot read {}", path.display()))(e)),
        };
        agenix_proto::json::from_slice(&bytes, 1 << 20)
            .map_err(|e| StoreError::BadEntry { path, message: e.to_string() })
    }

    /// Every valid name in the store, sorted (entries that do not parse are skipped, with a
    /// warning).
    pub fn names(&self) -> Result<Vec<(AuName, NameEntry)>, StoreError> {
        let dir = self.dir.join("aus");
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io(format!("cannot list {}", dir.display()))(e)),
        };
        let mut out = vec![];
        for entry in rd.flatten() {
            let file = entry.file_name();
            let Some(stem) = file.to_str().and_then(|f| f.strip_suffix(".json")) else { continue };
            let Ok(name) = stem.parse::<AuName>() else { continue };
            match self.name(&name) {
                Ok(entry) => out.push((name, entry)),
                Err(e) => tracing::warn!(error = %e, "skipping a store entry"),
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io(format!("cannot write in {}", dir.display())))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io(format!("cannot write {}", path.display())))?;
    tmp.persist(path).map_err(|e| io(format!("cannot write {}", path.display()))(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let d = store.put(b"component").unwrap();
        assert_eq!(store.put(b"component").unwrap(), d);
        assert_eq!(store.get(&d).unwrap(), b"component");
        let name: AuName = "grep".parse().unwrap();
        assert!(matches!(store.name(&name), Err(StoreError::UnknownName { .. })));
        store.set_name(&name, &NameEntry { digest: d, card: None }).unwrap();
        assert_eq!(store.name(&name).unwrap().digest, d);
        assert_eq!(store.names().unwrap().len(), 1);
    }

    #[test]
    fn damaged_blobs_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let d = store.put(b"component").unwrap();
        fs::write(store.blob_path(&d), b"swapped").unwrap();
        let err = store.get(&d).unwrap_err();
        assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
        let missing = Digest::of(b"other");
        assert!(matches!(store.get(&missing), Err(StoreError::Missing { .. })));
    }
}
