//! Content-addressed blobs (envelopes, components, inputs, outputs, large reports) as files:
//! `DIR/blobs/sha256/<hex>`. An upload is hashed while it streams in, refused past the size
//! cap, past the store's quota, or on a digest mismatch, and made durable (fsync, rename)
//! before it is acknowledged. Identical uploads are stored once; uploading a stored blob
//! again renews it (its modification time), so collection leaves it alone for a while.
//!
//! Collection ([`Blobs::collect`]) removes blobs nothing refers to once they are older than
//! a grace period: a blob uploaded for a submission that has not arrived yet is kept.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use agenix_proto::Digest;
use agenix_proto::digest::Hasher;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The blob store.
#[derive(Debug, Clone)]
pub struct Blobs {
    dir: PathBuf,
    max: u64,
    quota: u64,
    /// Bytes stored plus bytes reserved by uploads under way.
    used: Arc<AtomicU64>,
}

/// An upload was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Over the size cap.
    #[error("blob of {size} bytes is over the limit of {max}")]
    TooLarge {
        /// What was announced.
        size: u64,
        /// The cap.
        max: u64,
    },
    /// The store's quota would be passed.
    #[error(
        "the queue's blob store is full: {used} bytes used and {size} more asked for, \
         over its quota of {quota} bytes (agq serve --blob-quota); blobs of finished jobs \
         are removed when their retention ends"
    )]
    Quota {
        /// Bytes in use.
        used: u64,
        /// Bytes asked for.
        size: u64,
        /// The quota.
        quota: u64,
    },
    /// The bytes do not hash to the announced digest.
    #[error("blob announced as {expected} hashes to {found}")]
    Mismatch {
        /// Announced.
        expected: Digest,
        /// Found.
        found: Digest,
    },
    /// The stream ended before `size` bytes.
    #[error("blob ended after {got} of {size} bytes")]
    Short {
        /// Bytes received.
        got: u64,
        /// Bytes announced.
        size: u64,
    },
    /// Storage failed.
    #[error("blob storage: {0}")]
    Io(#[from] std::io::Error),
}

/// Room set aside for an upload; given back when dropped unless the blob was stored.
#[derive(Debug)]
pub struct Reservation {
    used: Arc<AtomicU64>,
    size: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.used.fetch_sub(self.size, Ordering::SeqCst);
    }
}

/// What one collection did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    /// Blobs removed.
    pub removed: u64,
    /// Bytes freed.
    pub bytes: u64,
}

impl Blobs {
    /// The store under `dir`, refusing blobs over `max` bytes and uploads that would take
    /// it past `quota` bytes.
    pub fn new(dir: &Path, max: u64, quota: u64) -> std::io::Result<Self> {
        let dir = dir.join("blobs/sha256");
        fs::create_dir_all(&dir)?;
        let mut used = 0u64;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(".upload-") {
                // Left by an upload that never finished.
                let _ = fs::remove_file(entry.path());
                continue;
            }
            used = used.saturating_add(entry.metadata()?.len());
        }
        Ok(Self { dir, max, quota, used: Arc::new(AtomicU64::new(used)) })
    }

    fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    /// The size cap.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Bytes stored (and reserved by uploads under way).
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// Whether the blob is stored.
    pub fn has(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    /// The blob's size, if stored.
    pub fn size(&self, d: &Digest) -> Option<u64> {
        fs::metadata(self.path(d)).ok().map(|m| m.len())
    }

    /// Opens a stored blob.
    pub fn open(&self, d: &Digest) -> std::io::Result<(tokio::fs::File, u64)> {
        let file = fs::File::open(self.path(d))?;
        let size = file.metadata()?.len();
        Ok((tokio::fs::File::from_std(file), size))
    }

    /// Reads a stored blob whole, if it is at most `max` bytes.
    pub async fn read(&self, d: &Digest, max: u64) -> Result<Vec<u8>, String> {
        let (file, size) = self.open(d).map_err(|e| format!("blob {d}: {e}"))?;
        if size > max {
            return Err(format!("blob {d} is {size} bytes, over the limit of {max}"));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        file.take(max).read_to_end(&mut bytes).await.map_err(|e| format!("blob {d}: {e}"))?;
        Ok(bytes)
    }

    /// Sets aside room for `size` more bytes, or refuses with the quota named.
    pub fn reserve(&self, size: u64) -> Result<Reservation, BlobError> {
        if size > self.max {
            return Err(BlobError::TooLarge { size, max: self.max });
        }
        let quota = self.quota;
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(size).filter(|total| *total <= quota)
            })
            .map_err(|used| BlobError::Quota { used, size, quota })?;
        Ok(Reservation { used: self.used.clone(), size })
    }

    /// Reads exactly `size` bytes from `from`, hashing them, and stores them under `digest`
    /// in the room `room` set aside. Returns whether the blob was already stored.
    pub async fn put(
        &self,
        digest: Digest,
        size: u64,
        room: Reservation,
        from: &mut (impl AsyncRead + Unpin),
    ) -> Result<bool, BlobError> {
        let tmp = tempfile::Builder::new().prefix(".upload-").tempfile_in(&self.dir)?;
        let (file, tmp_path) = tmp.into_parts();
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut h = Hasher::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut got = 0u64;
        while got < size {
            let want = usize::try_from((size - got).min(buf.len() as u64)).unwrap_or(buf.len());
            let n = from.read(&mut buf[..want]).await?;
            if n == 0 {
                return Err(BlobError::Short { got, size });
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            got += n as u64;
        }
        let found = h.finish();
        if found != digest {
            return Err(BlobError::Mismatch { expected: digest, found });
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        let path = self.path(&digest);
        let (dir, used) = (self.dir.clone(), self.used.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
            if let Ok(existing) = fs::File::options().write(true).open(&path) {
                // Renewed: collection counts its age from now.
                existing.set_modified(SystemTime::now())?;
                return Ok(true);
            }
            file.sync_all()?;
            match tmp_path.persist_noclobber(&path) {
                Ok(()) => {}
                // The same blob, stored by a concurrent upload.
                Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => return Ok(true),
                Err(e) => return Err(e.error),
            }
            fs::File::open(&dir)?.sync_all()?;
            // The room set aside is now taken by the blob.
            used.fetch_add(size, Ordering::SeqCst);
            Ok(false)
        })
        .await
        .map_err(std::io::Error::other)?
        .inspect(|_| drop(room))
        .map_err(BlobError::Io)
    }

    /// Renews a stored blob (collection counts its age from now); false if it is not stored.
    pub fn renew(&self, d: &Digest) -> bool {
        fs::File::options()
            .write(true)
            .open(self.path(d))
            .and_then(|f| f.set_modified(SystemTime::now()))
            .is_ok()
    }

    /// Removes every blob not in `keep` that is older than `grace` (by modification time).
    pub fn collect(&self, keep: &BTreeSet<Digest>, grace: Duration) -> std::io::Result<Collected> {
        let now = SystemTime::now();
        let mut done = Collected::default();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(digest) = name.to_str().and_then(|n| format!("sha256:{n}").parse().ok())
            else {
                continue;
            };
            if keep.contains(&digest) {
                continue;
            }
            let meta = entry.metadata()?;
            let age = meta.modified().ok().and_then(|m| now.duration_since(m).ok());
            if age.is_none_or(|a| a < grace) {
                continue;
            }
            match fs::remove_file(entry.path()) {
                Ok(()) => {
                    self.used.fetch_sub(meta.len(), Ordering::SeqCst);
                    done.removed += 1;
                    done.bytes += meta.len();
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn put(b: &Blobs, bytes: &[u8]) -> Result<bool, BlobError> {
        let room = b.reserve(bytes.len() as u64)?;
        b.put(Digest::of(bytes), bytes.len() as u64, room, &mut &bytes[..]).await
    }

    #[tokio::test]
    async fn the_quota_is_kept_and_named_and_room_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blobs::new(dir.path(), 100, 10).unwrap();
        assert!(!put(&b, b"12345").await.unwrap());
        assert!(put(&b, b"12345").await.unwrap(), "stored once");
        assert_eq!(b.used(), 5);
        let err = put(&b, b"abcdef").await.unwrap_err();
        assert!(err.to_string().contains("quota of 10 bytes"), "{err}");
        // A failed upload gives its room back.
        let room = b.reserve(5).unwrap();
        let bad = b.put(Digest::of(b"other"), 5, room, &mut &b"wrong"[..]).await;
        assert!(matches!(bad, Err(BlobError::Mismatch { .. })));
        assert_eq!(b.used(), 5);
        assert_eq!(Blobs::new(dir.path(), 100, 10).unwrap().used(), 5, "counted again at start");
    }

    #[tokio::test]
    async fn collection_keeps_what_is_used_and_what_is_young() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blobs::new(dir.path(), 100, 1000).unwrap();
        for x in [&b"a"[..], b"b", b"c"] {
            put(&b, x).await.unwrap();
        }
        let keep: BTreeSet<Digest> = [Digest::of(b"a")].into();
        assert_eq!(b.collect(&keep, Duration::from_secs(3600)).unwrap().removed, 0, "young");
        let old = SystemTime::now() - Duration::from_secs(7200);
        for x in [&b"a"[..], b"b", b"c"] {
            fs::File::options()
                .write(true)
                .open(b.path(&Digest::of(x)))
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        assert!(b.renew(&Digest::of(b"c")), "c was uploaded again");
        let done = b.collect(&keep, Duration::from_secs(3600)).unwrap();
        assert_eq!(done, Collected { removed: 1, bytes: 1 });
        assert!(b.has(&Digest::of(b"a")) && !b.has(&Digest::of(b"b")) && b.has(&Digest::of(b"c")));
        assert_eq!(b.used(), 2);
    }
}
