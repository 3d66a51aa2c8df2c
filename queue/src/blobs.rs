//! Content-addressed blobs (envelopes, components, inputs, outputs, large reports). An upload
//! is hashed while it streams in, refused past the size cap, past the store's quota, or on a
//! digest mismatch, and made durable before it is acknowledged. Identical uploads are stored
//! once; uploading a stored blob again renews it, so collection leaves it alone for a while.
//!
//! Two tiers. Blobs of [`INLINE_MAX`] bytes and under go into the queue's store when it holds
//! blobs ([`Store::holds_blobs`]): a put hands back a [`Write::Blob`] for the caller to commit,
//! so a batch of them is one transaction and their bytes one write to the disk. (As files, each
//! cost a data write and a journal commit of its own: some 1 ms apiece on a virtual disk.)
//! Larger blobs, and every blob beside a store that holds none, are files,
//! `DIR/blobs/sha256/<hex>`, made durable by fsync and rename; a renewal sets the file's
//! modification time. Lookups try the store first, then the files, so a blob stored as a file
//! by an earlier release is still found.
//!
//! Collection ([`Blobs::collect`]) removes blobs nothing refers to once they are older than
//! a grace period: a blob uploaded for a submission that has not arrived yet is kept.
//!
//! Several queue nodes may share the directory (one serving, the others standing by), and a
//! node may lose its place while it collects (a freeze, a slow filesystem). So a blob is
//! first renamed aside (`<hex>.collecting`), then checked again (still old, and the caller
//! still serving), and only then unlinked under that name; whoever looks the blob up while
//! it is aside renames it back first. A node that took over therefore finds every blob it
//! relies on, and what a stale node unlinks afterwards is a name nobody uses any more.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use agenix_proto::Digest;
use agenix_proto::digest::Hasher;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::store::{Store, Write};

/// The largest blob kept in the queue's store rather than as a file (when the store holds
/// blobs).
pub const INLINE_MAX: u64 = 64 << 10;

/// The blob store.
#[derive(Clone)]
pub struct Blobs {
    dir: PathBuf,
    max: u64,
    quota: u64,
    /// Bytes of files stored plus bytes reserved by uploads under way.
    used: Arc<AtomicU64>,
    /// Where small blobs are kept, when the queue's store holds them.
    inline: Option<Inline>,
}

/// The small blobs' tier.
#[derive(Clone)]
struct Inline {
    store: Arc<dyn Store>,
    /// Bytes of the blobs in it, as of the last commit that changed them.
    bytes: Arc<AtomicU64>,
    /// Blobs a collection is removing: until that commit, a submission naming one is
    /// refused (it could be accepted, and then find its blob gone).
    forgetting: Arc<std::sync::Mutex<BTreeSet<Digest>>>,
    /// Removals committed so far: a submission that looked at its blobs before one must
    /// look again ([`Blobs::removed_since`]).
    removals: Arc<AtomicU64>,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs")
            .field("dir", &self.dir)
            .field("max", &self.max)
            .field("quota", &self.quota)
            .field("used", &self.used())
            .field("inline", &self.inline.is_some())
            .finish()
    }
}

/// What an upload did.
#[derive(Debug)]
pub enum Put {
    /// It was stored already (as a file; now renewed).
    Existed,
    /// It is stored now, as a file.
    Stored,
    /// A small blob: durable once the write [`Pending::split`] gives is committed
    /// ([`Blobs::committed`] after).
    Pending(Box<Pending>),
}

/// A small blob waiting for its commit.
#[derive(Debug)]
pub struct Pending {
    /// The blob.
    pub digest: Digest,
    /// Its bytes, checked against the digest.
    pub bytes: Arc<[u8]>,
    /// Whether it was stored already.
    pub existed: bool,
    /// The room it takes until the commit has counted it.
    room: Reservation,
}

impl Pending {
    /// The write that stores it (or renews it, when it is there already: stored again, a
    /// collection committed in between cannot take it away), and the room it takes until
    /// the store's count includes it.
    pub fn split(self) -> (Write, Reservation) {
        (Write::Blob { digest: self.digest, bytes: self.bytes, at: now_ms() }, self.room)
    }
}

/// A stored blob, opened.
#[derive(Debug)]
pub enum Opened {
    /// A small blob's bytes.
    Bytes(Vec<u8>),
    /// A file.
    File(tokio::fs::File),
}

/// The Unix time in milliseconds.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
            let name = name.to_string_lossy();
            if name.starts_with(".upload-") {
                // Left by an upload that never finished.
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let len = entry.metadata()?.len();
            if let Some(hex) = name.strip_suffix(ASIDE) {
                // Left aside by a collection that did not finish: back, unless stored again.
                let back = dir.join(hex);
                if back.exists() || fs::rename(entry.path(), back).is_err() {
                    let _ = fs::remove_file(entry.path());
                    continue;
                }
            }
            used = used.saturating_add(len);
        }
        Ok(Self { dir, max, quota, used: Arc::new(AtomicU64::new(used)), inline: None })
    }

    /// Keeps small blobs in `store` from now on, which holds `stored` bytes of them.
    pub fn keep_small_in(&mut self, store: Arc<dyn Store>, stored: u64) {
        if store.holds_blobs() {
            self.inline = Some(Inline {
                store,
                bytes: Arc::new(AtomicU64::new(stored)),
                forgetting: Arc::default(),
                removals: Arc::default(),
            });
        }
    }

    /// `read` on the store, for a small blob. A store that cannot be read is logged and
    /// the blob looked for among the files.
    fn small<T>(
        &self,
        d: &Digest,
        read: impl FnOnce(&dyn Store) -> Result<Option<T>, crate::store::StoreError>,
    ) -> Option<T> {
        let inline = self.inline.as_ref()?;
        match read(inline.store.as_ref()) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(blob = %d, error = %e, "the store cannot be read for a blob");
                None
            }
        }
    }

    /// A small blob's size, from the store.
    fn small_len(&self, d: &Digest) -> Option<u64> {
        self.small(d, |s| s.blob_len(d))
    }

    /// After a commit of small blobs: counts what the store holds now.
    pub fn committed(&self) {
        if let Some(inline) = &self.inline {
            match inline.store.blob_bytes() {
                Ok(n) => inline.bytes.store(n, Ordering::SeqCst),
                Err(e) => tracing::warn!(error = %e, "the store cannot count its blobs"),
            }
        }
    }

    /// Removals of small blobs committed so far.
    pub fn removals(&self) -> u64 {
        self.inline.as_ref().map_or(0, |i| i.removals.load(Ordering::SeqCst))
    }

    /// Whether any of `digests` may be gone since [`Blobs::removals`] said `seen`: a
    /// collection is removing one now, or removed small blobs since and one is not stored.
    pub fn removed_since(&self, seen: u64, digests: &[Digest]) -> bool {
        let Some(inline) = &self.inline else { return false };
        {
            let forgetting =
                inline.forgetting.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if !forgetting.is_empty() && digests.iter().any(|d| forgetting.contains(d)) {
                return true;
            }
        }
        self.removals() != seen && digests.iter().any(|d| !self.has(d))
    }

    fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    /// Where a collection puts a blob aside before it removes it.
    fn aside(&self, d: &Digest) -> PathBuf {
        self.dir.join(format!("{}{ASIDE}", d.hex()))
    }

    /// `f` on the blob's path; when the blob is not there because a collection put it
    /// aside, it is renamed back and `f` runs again.
    fn at<T>(&self, d: &Digest, f: impl Fn(&Path) -> std::io::Result<T>) -> std::io::Result<T> {
        let path = self.path(d);
        match f(&path) {
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && fs::rename(self.aside(d), &path).is_ok() =>
            {
                tracing::info!(blob = %d, "a blob put aside for collection is needed: kept");
                f(&path)
            }
            done => done,
        }
    }

    /// The size cap.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Bytes stored (and reserved by uploads under way).
    pub fn used(&self) -> u64 {
        let inline = self.inline.as_ref().map_or(0, |i| i.bytes.load(Ordering::SeqCst));
        self.used.load(Ordering::SeqCst).saturating_add(inline)
    }

    /// Whether the blob is stored.
    pub fn has(&self, d: &Digest) -> bool {
        self.size(d).is_some()
    }

    /// The blob's size, if stored.
    pub fn size(&self, d: &Digest) -> Option<u64> {
        if let Some(n) = self.small_len(d) {
            return Some(n);
        }
        self.at(d, |p| fs::metadata(p)).ok().filter(fs::Metadata::is_file).map(|m| m.len())
    }

    /// Opens a stored blob.
    pub fn open(&self, d: &Digest) -> std::io::Result<(Opened, u64)> {
        if let Some(b) = self.small(d, |s| s.blob(d)) {
            let size = b.len() as u64;
            return Ok((Opened::Bytes(b), size));
        }
        let file = self.at(d, |p| fs::File::open(p))?;
        let size = file.metadata()?.len();
        Ok((Opened::File(tokio::fs::File::from_std(file)), size))
    }

    /// Reads a stored blob whole, if it is at most `max` bytes.
    pub async fn read(&self, d: &Digest, max: u64) -> Result<Vec<u8>, String> {
        let (opened, size) = self.open(d).map_err(|e| format!("blob {d}: {e}"))?;
        if size > max {
            return Err(format!("blob {d} is {size} bytes, over the limit of {max}"));
        }
        match opened {
            Opened::Bytes(b) => Ok(b),
            Opened::File(file) => {
                let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
                let read = file.take(max).read_to_end(&mut bytes).await;
                read.map_err(|e| format!("blob {d}: {e}"))?;
                Ok(bytes)
            }
        }
    }

    /// Sets aside room for `size` more bytes, or refuses with the quota named.
    pub fn reserve(&self, size: u64) -> Result<Reservation, BlobError> {
        if size > self.max {
            return Err(BlobError::TooLarge { size, max: self.max });
        }
        let quota = self.quota;
        let inline = self.inline.as_ref().map_or(0, |i| i.bytes.load(Ordering::SeqCst));
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(inline)
                    .and_then(|u| u.checked_add(size))
                    .filter(|total| *total <= quota)
                    .map(|_| used + size)
            })
            .map_err(|used| BlobError::Quota { used: used.saturating_add(inline), size, quota })?;
        Ok(Reservation { used: self.used.clone(), size })
    }

    /// Reads exactly `size` bytes from `from`, hashing them, and stores them under `digest`
    /// in the room `room` set aside: a small blob is handed back to be committed.
    pub async fn put(
        &self,
        digest: Digest,
        size: u64,
        room: Reservation,
        from: &mut (impl AsyncRead + Unpin),
    ) -> Result<Put, BlobError> {
        if self.inline.is_some() && size <= INLINE_MAX {
            return self.put_small(digest, size, room, from).await;
        }
        self.put_file(digest, size, room, from)
            .await
            .map(|existed| if existed { Put::Existed } else { Put::Stored })
    }

    async fn put_small(
        &self,
        digest: Digest,
        size: u64,
        room: Reservation,
        from: &mut (impl AsyncRead + Unpin),
    ) -> Result<Put, BlobError> {
        let mut bytes = vec![0u8; usize::try_from(size).unwrap_or(0)];
        let mut got = 0;
        while got < bytes.len() {
            let n = from.read(&mut bytes[got..]).await?;
            if n == 0 {
                return Err(BlobError::Short { got: got as u64, size });
            }
            got += n;
        }
        let found = Digest::of(&bytes);
        if found != digest {
            return Err(BlobError::Mismatch { expected: digest, found });
        }
        let existed = self.small_len(&digest).is_some();
        if !existed && self.renew_file(&digest) {
            // Stored as a file by an earlier release: renewed there.
            return Ok(Put::Existed);
        }
        Ok(Put::Pending(Box::new(Pending { digest, bytes: bytes.into(), existed, room })))
    }

    async fn put_file(
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
        // Back from being put aside, if it was: then it is renewed below, not stored again.
        let _ = self.at(&digest, |p| fs::metadata(p));
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

    /// Renews a stored blob (collection counts its age from now); false if it is not
    /// stored. A small blob is renewed by the write pushed onto `writes`, once committed.
    pub fn renew(&self, d: &Digest, writes: &mut Vec<Write>) -> bool {
        if self.small_len(d).is_some() {
            writes.push(Write::Renew { digest: *d, at: now_ms() });
            return true;
        }
        self.renew_file(d)
    }

    fn renew_file(&self, d: &Digest) -> bool {
        self.at(d, |p| fs::File::options().write(true).open(p))
            .and_then(|f| f.set_modified(SystemTime::now()))
            .is_ok()
    }

    /// The small blobs older than `grace` and not in `keep`, at most `max` of them, and the
    /// time before which a blob counts as that old (Unix milliseconds). Empty without a
    /// store that holds blobs.
    pub fn old_small(
        &self,
        keep: &BTreeSet<Digest>,
        grace: Duration,
        max: usize,
    ) -> Result<(Vec<Digest>, u64), String> {
        let Some(inline) = &self.inline else { return Ok((vec![], 0)) };
        let before = now_ms().saturating_sub(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX));
        let mut old = Vec::new();
        inline
            .store
            .blob_ages(&mut |d, at| {
                if at < before && old.len() < max && !keep.contains(&d) {
                    old.push(d);
                }
            })
            .map_err(|e| e.to_string())?;
        Ok((old, before))
    }

    /// Marks `digests` as being removed by a collection (or, `false`, no longer: the
    /// removal is over, committed or not, and counted first).
    pub fn forgetting(&self, digests: &[Digest], now: bool) {
        let Some(inline) = &self.inline else { return };
        if !now {
            inline.removals.fetch_add(1, Ordering::SeqCst);
        }
        let mut set = inline.forgetting.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for d in digests {
            if now {
                set.insert(*d);
            } else {
                set.remove(d);
            }
        }
    }

    /// Removes every blob not in `keep` that is older than `grace` (by modification time),
    /// while `may` says the caller still decides what is kept. Each is put aside first,
    /// then checked again (its age, and `may`) before it is unlinked.
    pub fn collect(
        &self,
        keep: &BTreeSet<Digest>,
        grace: Duration,
        may: impl Fn() -> bool,
    ) -> std::io::Result<Collected> {
        let old = |meta: &fs::Metadata| {
            let age = meta.modified().ok().and_then(|m| SystemTime::now().duration_since(m).ok());
            age.is_some_and(|a| a >= grace)
        };
        let mut done = Collected::default();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(digest) = name.to_str().and_then(|n| format!("sha256:{n}").parse().ok())
            else {
                continue;
            };
            if keep.contains(&digest) || !old(&entry.metadata()?) {
                continue;
            }
            if !may() {
                break;
            }
            let aside = self.aside(&digest);
            match fs::rename(entry.path(), &aside) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            // Renewed meanwhile (uploaded again, or named by a submission), or no longer
            // this caller's to decide: put back.
            let meta = match fs::metadata(&aside) {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if !old(&meta) || !may() {
                let _ = fs::rename(&aside, entry.path());
                if !may() {
                    break;
                }
                continue;
            }
            match fs::remove_file(&aside) {
                Ok(()) => {
                    self.used.fetch_sub(meta.len(), Ordering::SeqCst);
                    done.removed += 1;
                    done.bytes += meta.len();
                }
                // Taken back by whoever needed it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

/// The suffix of a blob put aside by a collection.
const ASIDE: &str = ".collecting";

#[cfg(test)]
mod tests {
    use super::*;

    /// A submission that looked at its blobs before a collection removed one of them
    /// learns it under the scheduler's lock: while the removal is under way, and after.
    #[tokio::test]
    async fn a_blob_removed_after_a_submission_looked_is_seen_as_gone() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::store::MemStore::default());
        let mut b = Blobs::new(dir.path(), 1 << 20, 1 << 30).unwrap();
        b.keep_small_in(store.clone(), 0);
        let (gone, stays) = (Digest::of(b"gone"), Digest::of(b"stays"));
        for (d, bytes) in [(gone, b"gone".as_slice()), (stays, b"stays")] {
            store.apply(&[Write::Blob { digest: d, bytes: bytes.into(), at: 1 }]).unwrap();
        }
        let looked = b.removals();
        assert!(!b.removed_since(looked, &[gone, stays]));
        b.forgetting(&[gone], true);
        assert!(b.removed_since(looked, &[gone]), "being removed");
        assert!(!b.removed_since(looked, &[stays]));
        store.apply(&[Write::Forget { digest: gone, before: 2 }]).unwrap();
        b.forgetting(&[gone], false);
        assert!(b.removed_since(looked, &[stays, gone]), "removed since it looked");
        assert!(!b.removed_since(looked, &[stays]), "still stored");
        // One that looks now sees it missing when it looks, not here.
        assert!(!b.removed_since(b.removals(), &[gone]));
    }

    async fn put(b: &Blobs, bytes: &[u8]) -> Result<bool, BlobError> {
        let room = b.reserve(bytes.len() as u64)?;
        let put = b.put(Digest::of(bytes), bytes.len() as u64, room, &mut &bytes[..]).await?;
        Ok(matches!(put, Put::Existed))
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
        assert_eq!(
            b.collect(&keep, Duration::from_secs(3600), || true).unwrap().removed,
            0,
            "young"
        );
        let old = SystemTime::now() - Duration::from_secs(7200);
        for x in [&b"a"[..], b"b", b"c"] {
            fs::File::options()
                .write(true)
                .open(b.path(&Digest::of(x)))
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        assert!(b.renew(&Digest::of(b"c"), &mut vec![]), "c was uploaded again");
        let done = b.collect(&keep, Duration::from_secs(3600), || true).unwrap();
        assert_eq!(done, Collected { removed: 1, bytes: 1 });
        assert!(b.has(&Digest::of(b"a")) && !b.has(&Digest::of(b"b")) && b.has(&Digest::of(b"c")));
        assert_eq!(b.used(), 2);
    }

    fn age(b: &Blobs, x: &[u8]) {
        let old = SystemTime::now() - Duration::from_secs(7200);
        let f = fs::File::options().write(true).open(b.path(&Digest::of(x))).unwrap();
        f.set_modified(old).unwrap();
    }

    #[tokio::test]
    async fn a_blob_put_aside_is_back_for_whoever_needs_it_and_the_late_unlink_misses() {
        let dir = tempfile::tempdir().unwrap();
        let stale = Blobs::new(dir.path(), 100, 1000).unwrap();
        put(&stale, b"x").await.unwrap();
        age(&stale, b"x");
        let d = Digest::of(b"x");
        // A collector put it aside, then stopped before its unlink (a freeze).
        fs::rename(stale.path(&d), stale.aside(&d)).unwrap();
        // The node serving now needs it: it is back at once.
        let serving = Blobs::new(dir.path(), 100, 1000).unwrap();
        assert!(serving.has(&d));
        assert_eq!(serving.used(), 1);
        // The stale collector's unlink of the aside name finds nothing.
        assert!(fs::remove_file(stale.aside(&d)).is_err());
        assert!(serving.has(&d) && serving.renew(&d, &mut vec![]));
        // Put aside again and found by a lookup rather than a start.
        fs::rename(serving.path(&d), serving.aside(&d)).unwrap();
        let (_, size) = serving.open(&d).unwrap();
        assert_eq!(size, 1);
    }

    #[tokio::test]
    async fn a_collector_that_stops_serving_midway_puts_back_what_it_put_aside() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blobs::new(dir.path(), 100, 1000).unwrap();
        for x in [&b"a"[..], b"b"] {
            put(&b, x).await.unwrap();
            age(&b, x);
        }
        // Serving when it starts on a blob, no longer when it checks again.
        let asked = std::sync::atomic::AtomicU32::new(0);
        let may = || asked.fetch_add(1, Ordering::SeqCst) == 0;
        let done = b.collect(&BTreeSet::new(), Duration::from_secs(3600), may).unwrap();
        assert_eq!(done.removed, 0);
        assert!(b.has(&Digest::of(b"a")) && b.has(&Digest::of(b"b")));
        let names: Vec<String> = fs::read_dir(&b.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(ASIDE)), "{names:?}");
        assert_eq!(b.used(), 2);
    }
}
