//! Durable state behind a narrow trait: the redb store the queue runs on, and an in-memory
//! one for tests of the adapters.
//!
//! Layout (redb tables; job and action records in `crate::record`'s encoding):
//!
//! ```text
//! jobs:    u64 job id        -> JobRecord
//! actions: action id         -> ActionRecord (names its envelopes, which are blobs)
//! kept:    "sha256:<hex>"    -> ()   blobs kept until removed explicitly
//! blobs:   32-byte digest    -> u64 BE (Unix ms stored or renewed) ++ the blob's bytes
//! meta:    "next_job"        -> u64
//!          "blob_bytes"      -> u64  bytes of the blobs in `blobs`
//! state:   "trust"           -> the trust file as the audit log last recorded it
//! ```
//!
//! and the audit log's tables (`crate::audit`).
//!
//! Small blobs (`crate::blobs::INLINE_MAX` and under) live in the `blobs` table when the
//! store [`Store::holds_blobs`]: a batch of them is one commit, where as files each cost a
//! write of its own to the disk. Larger ones are files (`crate::blobs`).
//!
//! A batch is one write transaction with `Durability::Immediate`: it is on disk when
//! `apply` returns, all of it or none of it, audit entries included. The queue is the
//! database's one writer; `agq audit` opens it read-only beside it (redb's
//! `ConcurrencyMode::SingleWriter`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use agenix_proto::audit::{self, Entry, Hashes, TreeHead};
use agenix_proto::job::{ActionRecord, JobId, JobRecord};
use agenix_proto::{ActionId, Digest};
use agenix_queue_core::Change;
use redb::{ConcurrencyMode, Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::audit as log;

const JOBS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("jobs");
const ACTIONS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("actions");
const KEPT: TableDefinition<'_, &str, ()> = TableDefinition::new("kept");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const STATE: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("state");
const BLOBS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("blobs");
/// The META key of the bytes held in BLOBS.
const BLOB_BYTES: &str = "blob_bytes";

/// One durable write.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "writes are consumed by the next commit, never stored in bulk"
)]
pub enum Write {
    /// A scheduler change.
    Change(Change),
    /// Keep this blob until removed explicitly.
    Keep(Digest),
    /// Stop keeping this blob.
    Unkeep(Digest),
    /// The trust file as the audit log last recorded it (what the next reading is
    /// compared with).
    TrustSeen(Vec<u8>),
    /// Keep this signed checkpoint of the audit log's first `size` entries.
    Checkpoint {
        /// The tree size it signs.
        size: u64,
        /// The signed note.
        note: String,
    },
    /// Store a small blob, checked against its digest already; if it is stored, only
    /// renew it (collection counts its age from `at`). Only for a store that
    /// [`Store::holds_blobs`].
    Blob {
        /// Its digest.
        digest: Digest,
        /// Its bytes.
        bytes: Arc<[u8]>,
        /// Unix milliseconds.
        at: u64,
    },
    /// Renew a small blob if it is stored.
    Renew {
        /// Its digest.
        digest: Digest,
        /// Unix milliseconds.
        at: u64,
    },
    /// Remove a small blob, unless it was stored or renewed at or after `before` (Unix
    /// milliseconds): decided in the transaction, so a renewal committed first keeps it.
    Forget {
        /// Its digest.
        digest: Digest,
        /// Unix milliseconds.
        before: u64,
    },
}

/// A job's audit entries with their inclusion proofs.
#[derive(Debug, Default)]
pub struct History {
    /// Each entry's number, its bytes, and its proof in the checkpoint's tree (empty for
    /// entries the checkpoint does not cover).
    pub entries: Vec<(u64, Vec<u8>, Vec<Digest>)>,
    /// The latest signed checkpoint: its size and note.
    pub checkpoint: Option<(u64, String)>,
}

/// Everything storage kept.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every job ([`Store::load`]; empty from [`Store::load_with`]).
    pub jobs: Vec<JobRecord>,
    /// Every action still remembered.
    pub actions: Vec<(ActionId, ActionRecord)>,
    /// Blobs kept until removed explicitly.
    pub kept: Vec<Digest>,
    /// The next job id.
    pub next_job: u64,
    /// The trust file as the audit log last recorded it.
    pub trust_seen: Option<Vec<u8>>,
    /// Bytes of the small blobs stored ([`Store::holds_blobs`]).
    pub blob_bytes: u64,
}

/// Storage failed.
#[derive(Debug, thiserror::Error)]
#[error("storage: {0}")]
pub struct StoreError(pub String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// Durable state.
pub trait Store: Send + Sync + 'static {
    /// Everything stored but the jobs, which are handed to `job` one at a time as they are
    /// read, by id: a million of them are never all in memory as records at once.
    fn load_with(&self, job: &mut (dyn FnMut(JobRecord) + Send)) -> Result<Loaded, StoreError>;
    /// Everything stored, the jobs in [`Loaded::jobs`].
    fn load(&self) -> Result<Loaded, StoreError> {
        let mut jobs = Vec::new();
        let mut loaded = self.load_with(&mut |j| jobs.push(j))?;
        loaded.jobs = jobs;
        Ok(loaded)
    }
    /// Applies `writes` atomically and durably.
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError>;
    /// The audit log's size and root.
    fn audit_head(&self) -> Result<TreeHead, StoreError>;
    /// The root of the audit log's first `size` entries, from its stored tree.
    fn audit_root(&self, size: u64) -> Result<Digest, StoreError>;
    /// The latest signed checkpoint: its size and note.
    fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError>;
    /// `job`'s audit entries after entry `after`, oldest first, at most `max`, with their
    /// proofs in the latest checkpoint, all read at one instant.
    fn history(&self, job: JobId, after: Option<u64>, max: usize) -> Result<History, StoreError>;
    /// The audit log's last `max` entries, newest first: (seq, entry JSON).
    fn audit_tail(&self, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    /// Whether this queue still serves its storage (asked every second, and before each
    /// blob it collects).
    fn hold(&self) -> Hold {
        Hold::Serving
    }
    /// Whether small blobs are stored here ([`Write::Blob`]) rather than as files.
    fn holds_blobs(&self) -> bool {
        false
    }
    /// A small blob's bytes, if stored here.
    fn blob(&self, _digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }
    /// A small blob's size, if stored here (its bytes are not copied).
    fn blob_len(&self, _digest: &Digest) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
    /// Every small blob stored here: its digest and when it was stored or last renewed
    /// (Unix milliseconds), in digest order, from one instant.
    fn blob_ages(&self, _each: &mut dyn FnMut(Digest, u64)) -> Result<(), StoreError> {
        Ok(())
    }
    /// Bytes of the small blobs stored here.
    fn blob_bytes(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
}

/// How a queue holds its storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// It serves it.
    Serving,
    /// It cannot tell (its lease could not be renewed in time): it acts on nothing until it
    /// can, and its clients go elsewhere meanwhile.
    Lapsed(String),
    /// Another queue serves it now: this one must stop.
    Lost(String),
}

/// redb's page cache: enough for the B-trees' upper levels and a commit's worth of pages
/// (the rest is in the kernel's page cache anyway). With a million jobs, 16 MiB started as
/// fast as 64 MiB, which cost 80 MiB more resident memory.
const CACHE_BYTES: usize = 32 << 20;

/// How the queue's database is opened: its page cache, and one writer process with
/// read-only processes beside it.
fn builder() -> redb::Builder {
    let mut b = Database::builder();
    b.set_cache_size(CACHE_BYTES).set_concurrency_mode(ConcurrencyMode::SingleWriter);
    b
}

fn poisoned() -> StoreError {
    StoreError("the store's lock is poisoned".into())
}

/// The redb store.
#[derive(Debug)]
pub struct RedbStore {
    path: std::path::PathBuf,
    /// `None` only while it is reopened, or when reopening failed (tried again at the next
    /// use).
    db: std::sync::RwLock<Option<Database>>,
    /// A write failed. After an I/O error (a full disk) redb refuses everything until the
    /// database is reopened, so it is, before its next use: once the disk has room again
    /// the queue goes on by itself.
    failed: std::sync::atomic::AtomicBool,
}

impl RedbStore {
    /// Creates the database at `path` (`agq init`); refuses a file already there.
    pub fn create(path: &Path) -> Result<Self, StoreError> {
        if path.exists() {
            return Err(StoreError(format!("{} already exists", path.display())));
        }
        Self::open_at(path, true)
    }

    /// Opens the database at `path`. A missing or empty file is refused, never made anew:
    /// the queue's jobs and its audit log would be gone without a word.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        match std::fs::metadata(path) {
            Ok(m) if m.len() > 0 => Self::open_at(path, false),
            Ok(_) | Err(_) => Err(StoreError(format!(
                "the queue's store {} is missing or empty: its jobs and audit log are gone \
                 (restore it from a backup, or make a new queue directory with agq init)",
                path.display()
            ))),
        }
    }

    fn open_at(path: &Path, create: bool) -> Result<Self, StoreError> {
        Ok(Self {
            path: path.to_path_buf(),
            db: std::sync::RwLock::new(Some(Self::database(path, create)?)),
            failed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn database(path: &Path, create: bool) -> Result<Database, StoreError> {
        let builder = builder();
        let db = match if create { builder.create(path) } else { builder.open(path) } {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError(format!(
                    "{} is open in another process: is another agq serving this directory?",
                    path.display()
                )));
            }
            Err(e) => return Err(err(e)),
        };
        // Create every table, so reads never meet a missing one. The commit records where the
        // free pages are (as every commit does, `apply`): a queue killed before it writes
        // anything starts again as fast as one killed later.
        let mut tx = db.begin_write().map_err(err)?;
        tx.set_quick_repair(true);
        {
            tx.open_table(JOBS).map_err(err)?;
            tx.open_table(ACTIONS).map_err(err)?;
            tx.open_table(KEPT).map_err(err)?;
            tx.open_table(META).map_err(err)?;
            tx.open_table(STATE).map_err(err)?;
            tx.open_table(BLOBS).map_err(err)?;
            tx.open_table(log::AUDIT).map_err(err)?;
            tx.open_table(log::HASHES).map_err(err)?;
            tx.open_table(log::BY_JOB).map_err(err)?;
            tx.open_table(log::CHECKPOINTS).map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(db)
    }

    /// Runs `f` on the database, reopening it first if a write failed.
    fn with<T>(&self, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.failed.load(SeqCst) {
            let mut db = self.db.write().map_err(|_| poisoned())?;
            if self.failed.load(SeqCst) {
                // Closed first: redb refuses a second open of the same file.
                drop(db.take());
                *db = Some(Self::database(&self.path, false).map_err(|e| {
                    StoreError(format!("reopening the database after a failed write: {}", e.0))
                })?);
                self.failed.store(false, SeqCst);
                tracing::warn!(path = %self.path.display(), "database reopened after a failed write");
            }
        }
        let db = self.db.read().map_err(|_| poisoned())?;
        f(db.as_ref().ok_or_else(|| StoreError("the database is closed".into()))?)
    }

    /// Writes `writes` in one durable transaction.
    fn write(db: &Database, writes: &[Write]) -> Result<(), StoreError> {
        let mut tx = db.begin_write().map_err(err)?;
        // Each commit also records where the free pages are, so that a queue killed mid-run
        // starts again without walking the whole file to find them (0.7 s instead of 1.6 s
        // for a million jobs; each commit takes some 0.15 ms longer).
        tx.set_quick_repair(true);
        {
            let mut jobs = tx.open_table(JOBS).map_err(err)?;
            let mut actions = tx.open_table(ACTIONS).map_err(err)?;
            let mut kept = tx.open_table(KEPT).map_err(err)?;
            let mut meta = tx.open_table(META).map_err(err)?;
            let mut checkpoints = tx.open_table(log::CHECKPOINTS).map_err(err)?;
            let mut state = tx.open_table(STATE).map_err(err)?;
            let mut blobs = tx.open_table(BLOBS).map_err(err)?;
            let mut blob_bytes = None;
            let mut appender = log::Appender::open(&tx)?;
            for w in writes {
                match w {
                    Write::Change(Change::Job(j)) => {
                        let bytes = crate::record::encode_job(j)?;
                        jobs.insert(j.id.0, bytes.as_slice()).map_err(err)?;
                    }
                    Write::Change(Change::DeleteJob(id)) => {
                        jobs.remove(id.0).map_err(err)?;
                    }
                    Write::Change(Change::Action(id, a)) => {
                        let bytes = crate::record::encode_action(a)?;
                        actions.insert(id.as_str(), bytes.as_slice()).map_err(err)?;
                    }
                    Write::Change(Change::DeleteAction(id)) => {
                        actions.remove(id.as_str()).map_err(err)?;
                    }
                    Write::Change(Change::NextJob(n)) => {
                        meta.insert("next_job", n).map_err(err)?;
                    }
                    Write::Keep(d) => {
                        kept.insert(d.to_string().as_str(), ()).map_err(err)?;
                    }
                    Write::Unkeep(d) => {
                        kept.remove(d.to_string().as_str()).map_err(err)?;
                    }
                    Write::Change(Change::Audit { at, event }) => appender.push(*at, event)?,
                    Write::Checkpoint { size, note } => {
                        checkpoints.insert(size, note.as_str()).map_err(err)?;
                    }
                    Write::TrustSeen(bytes) => {
                        state.insert("trust", bytes.as_slice()).map_err(err)?;
                    }
                    Write::Blob { digest, bytes, at } => {
                        let key = digest.as_bytes().as_slice();
                        let stored = blobs.get(key).map_err(err)?.map(|v| v.value().to_vec());
                        let value = match stored {
                            // Renewed: the bytes are the same (same digest).
                            Some(mut v) if v.len() >= 8 => {
                                v[..8].copy_from_slice(&at.to_be_bytes());
                                v
                            }
                            _ => {
                                let total = stored_total(&meta, blob_bytes)?;
                                blob_bytes = Some(total.saturating_add(bytes.len() as u64));
                                [&at.to_be_bytes()[..], bytes].concat()
                            }
                        };
                        blobs.insert(key, value.as_slice()).map_err(err)?;
                    }
                    Write::Renew { digest, at } => {
                        let key = digest.as_bytes().as_slice();
                        let stored = blobs.get(key).map_err(err)?.map(|v| v.value().to_vec());
                        if let Some(mut v) = stored.filter(|v| v.len() >= 8) {
                            v[..8].copy_from_slice(&at.to_be_bytes());
                            blobs.insert(key, v.as_slice()).map_err(err)?;
                        }
                    }
                    Write::Forget { digest, before } => {
                        let key = digest.as_bytes().as_slice();
                        let old = blobs
                            .get(key)
                            .map_err(err)?
                            .map(|v| (stamp(v.value()), v.value().len()))
                            .filter(|(at, _)| *at < *before);
                        if let Some((_, len)) = old {
                            blobs.remove(key).map_err(err)?;
                            let total = stored_total(&meta, blob_bytes)?;
                            blob_bytes = Some(total.saturating_sub(len.saturating_sub(8) as u64));
                        }
                    }
                }
            }
            if let Some(total) = blob_bytes {
                meta.insert(BLOB_BYTES, total).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// Opens the database at `path` read-only, beside the queue that writes it. A database
    /// left by a queue that was killed needs the recovery `agq serve` makes when it starts
    /// (redb rebuilds its allocator state from the last commit; nothing committed
    /// changes): with no queue running, it is made first, and the second value says so.
    pub fn read_only(path: &Path) -> Result<(redb::ReadOnlyDatabase, bool), StoreError> {
        let open = || builder().open_read_only(path);
        match open() {
            Ok(db) => Ok((db, false)),
            Err(redb::DatabaseError::RepairAborted) => {
                let writer = builder()
                    .open(path)
                    .map_err(|e| StoreError(format!("it needs recovery, which failed: {e}")))?;
                drop(writer);
                Ok((open().map_err(err)?, true))
            }
            Err(e) => Err(err(e)),
        }
    }
}

/// The bytes held in BLOBS: `cached` when this commit changed it already, else as stored.
fn stored_total(meta: &redb::Table<'_, &str, u64>, cached: Option<u64>) -> Result<u64, StoreError> {
    match cached {
        Some(t) => Ok(t),
        None => Ok(meta.get(BLOB_BYTES).map_err(err)?.map_or(0, |v| v.value())),
    }
}

/// When a stored blob row was stored or renewed (Unix milliseconds).
fn stamp(row: &[u8]) -> u64 {
    row.first_chunk::<8>().map_or(0, |b| u64::from_be_bytes(*b))
}

impl Store for RedbStore {
    fn load_with(&self, job: &mut (dyn FnMut(JobRecord) + Send)) -> Result<Loaded, StoreError> {
        let tx = self.with(|db| db.begin_read().map_err(err))?;
        let mut out = Loaded { next_job: 1, ..Loaded::default() };
        for row in tx.open_table(JOBS).map_err(err)?.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            job(crate::record::decode_job(k.value(), v.value())?);
        }
        for row in tx.open_table(ACTIONS).map_err(err)?.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            let id: ActionId = k.value().parse().map_err(err)?;
            let record = crate::record::decode_action(&id, v.value())?;
            out.actions.push((id, record));
        }
        for row in tx.open_table(KEPT).map_err(err)?.iter().map_err(err)? {
            let (k, _) = row.map_err(err)?;
            out.kept.push(k.value().parse().map_err(err)?);
        }
        if let Some(n) = tx.open_table(META).map_err(err)?.get("next_job").map_err(err)? {
            out.next_job = n.value();
        }
        if let Some(t) = tx.open_table(STATE).map_err(err)?.get("trust").map_err(err)? {
            out.trust_seen = Some(t.value().to_vec());
        }
        out.blob_bytes = tx
            .open_table(META)
            .map_err(err)?
            .get(BLOB_BYTES)
            .map_err(err)?
            .map_or(0, |v| v.value());
        Ok(out)
    }

    fn holds_blobs(&self) -> bool {
        true
    }

    fn blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.with(|db| db.begin_read().map_err(err))?;
        let table = tx.open_table(BLOBS).map_err(err)?;
        let row = table.get(digest.as_bytes().as_slice()).map_err(err)?;
        Ok(row.and_then(|v| v.value().get(8..).map(<[u8]>::to_vec)))
    }

    fn blob_len(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        let tx = self.with(|db| db.begin_read().map_err(err))?;
        let table = tx.open_table(BLOBS).map_err(err)?;
        let row = table.get(digest.as_bytes().as_slice()).map_err(err)?;
        Ok(row.and_then(|v| v.value().len().checked_sub(8)).map(|n| n as u64))
    }

    fn blob_ages(&self, each: &mut dyn FnMut(Digest, u64)) -> Result<(), StoreError> {
        let tx = self.with(|db| db.begin_read().map_err(err))?;
        for row in tx.open_table(BLOBS).map_err(err)?.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            if let Ok(d) = <[u8; 32]>::try_from(k.value()) {
                each(Digest::from_bytes(d), stamp(v.value()));
            }
        }
        Ok(())
    }

    fn blob_bytes(&self) -> Result<u64, StoreError> {
        let tx = self.with(|db| db.begin_read().map_err(err))?;
        let meta = tx.open_table(META).map_err(err)?;
        Ok(meta.get(BLOB_BYTES).map_err(err)?.map_or(0, |v| v.value()))
    }

    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        let written = self.with(|db| Self::write(db, writes));
        if written.is_err() {
            self.failed.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        written
    }

    fn audit_head(&self) -> Result<TreeHead, StoreError> {
        log::head(&self.with(|db| db.begin_read().map_err(err))?)
    }

    fn audit_root(&self, size: u64) -> Result<Digest, StoreError> {
        log::root(&self.with(|db| db.begin_read().map_err(err))?, size)
    }

    fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        log::latest_checkpoint(&self.with(|db| db.begin_read().map_err(err))?)
    }

    fn audit_tail(&self, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let tx = self.with(|db| db.begin_read().map_err(err))?;
        log::tail(&tx, max)
    }

    fn history(&self, job: JobId, after: Option<u64>, max: usize) -> Result<History, StoreError> {
        let tx = self.with(|db| db.begin_read().map_err(err))?;
        let checkpoint = log::latest_checkpoint(&tx)?;
        let size = checkpoint.as_ref().map_or(0, |(s, _)| *s);
        let mut entries = Vec::new();
        for (seq, bytes) in log::of_job(&tx, job, after, max)? {
            let proof = if seq < size { log::proof(&tx, seq, size)? } else { vec![] };
            entries.push((seq, bytes, proof));
        }
        Ok(History { entries, checkpoint })
    }
}

/// An in-memory store (for tests).
#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<MemInner>,
}

#[derive(Debug, Default)]
struct MemInner {
    jobs: BTreeMap<JobId, JobRecord>,
    actions: BTreeMap<ActionId, ActionRecord>,
    kept: std::collections::BTreeSet<Digest>,
    next_job: u64,
    audit: Vec<Vec<u8>>,
    hashes: BTreeMap<u64, Digest>,
    checkpoints: BTreeMap<u64, String>,
    trust_seen: Option<Vec<u8>>,
    /// Small blobs: when stored or renewed, and their bytes.
    blobs: BTreeMap<Digest, (u64, Arc<[u8]>)>,
}

impl Hashes for MemInner {
    fn stored(&self, index: u64) -> Result<Option<Digest>, String> {
        Ok(self.hashes.get(&index).copied())
    }
}

impl MemInner {
    fn blob_bytes(&self) -> u64 {
        self.blobs.values().map(|(_, b)| b.len() as u64).sum()
    }

    fn append(&mut self, at: u64, event: audit::Event) -> Result<(), StoreError> {
        let seq = self.audit.len() as u64;
        let prev = self.audit.last().map_or_else(audit::genesis, |b| audit::leaf_hash(b));
        let bytes = Entry { seq, at, prev, event }.to_bytes();
        let new = audit::append(seq, &bytes, self).map_err(err)?;
        self.hashes.extend(new);
        self.audit.push(bytes);
        Ok(())
    }
}

impl Store for MemStore {
    fn load_with(&self, job: &mut (dyn FnMut(JobRecord) + Send)) -> Result<Loaded, StoreError> {
        let m = self.inner.lock().map_err(|_| StoreError("poisoned".into()))?;
        m.jobs.values().cloned().for_each(job);
        Ok(Loaded {
            jobs: vec![],
            actions: m.actions.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            kept: m.kept.iter().copied().collect(),
            next_job: m.next_job.max(1),
            trust_seen: m.trust_seen.clone(),
            blob_bytes: m.blob_bytes(),
        })
    }

    fn holds_blobs(&self) -> bool {
        true
    }

    fn blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        let m = self.inner.lock().map_err(|_| StoreError("poisoned".into()))?;
        Ok(m.blobs.get(digest).map(|(_, b)| b.to_vec()))
    }

    fn blob_len(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        let m = self.inner.lock().map_err(|_| StoreError("poisoned".into()))?;
        Ok(m.blobs.get(digest).map(|(_, b)| b.len() as u64))
    }

    fn blob_ages(&self, each: &mut dyn FnMut(Digest, u64)) -> Result<(), StoreError> {
        let m = self.inner.lock().map_err(|_| StoreError("poisoned".into()))?;
        m.blobs.iter().for_each(|(d, (at, _))| each(*d, *at));
        Ok(())
    }

    fn blob_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.inner.lock().map_err(|_| StoreError("poisoned".into()))?.blob_bytes())
    }

    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        let mut m = self.inner.lock().map_err(|_| StoreError("poisoned".into()))?;
        // All or nothing, as a transaction.
        let before = (m.audit.len(), m.hashes.clone());
        let mut staged = Vec::new();
        for w in writes {
            if let Write::Change(Change::Audit { at, event }) = w {
                if let Err(e) = m.append(*at, event.clone()) {
                    m.audit.truncate(before.0);
                    m.hashes = before.1;
                    return Err(e);
                }
            } else {
                staged.push(w);
            }
        }
        for w in staged {
            match w.clone() {
                Write::Change(Change::Job(j)) => {
                    m.jobs.insert(j.id, j);
                }
                Write::Change(Change::DeleteJob(id)) => {
                    m.jobs.remove(&id);
                }
                Write::Change(Change::Action(id, a)) => {
                    m.actions.insert(id, a);
                }
                Write::Change(Change::DeleteAction(id)) => {
                    m.actions.remove(&id);
                }
                Write::Change(Change::NextJob(n)) => m.next_job = n,
                Write::Keep(d) => {
                    m.kept.insert(d);
                }
                Write::Unkeep(d) => {
                    m.kept.remove(&d);
                }
                Write::Checkpoint { size, note } => {
                    m.checkpoints.insert(size, note);
                }
                Write::TrustSeen(bytes) => m.trust_seen = Some(bytes),
                Write::Change(Change::Audit { .. }) => {}
                Write::Blob { digest, bytes, at } => {
                    m.blobs.entry(digest).or_insert((at, bytes)).0 = at;
                }
                Write::Renew { digest, at } => {
                    if let Some(b) = m.blobs.get_mut(&digest) {
                        b.0 = at;
                    }
                }
                Write::Forget { digest, before } => {
                    if m.blobs.get(&digest).is_some_and(|(at, _)| *at < before) {
                        m.blobs.remove(&digest);
                    }
                }
            }
        }
        Ok(())
    }

    fn audit_head(&self) -> Result<TreeHead, StoreError> {
        let size = self.inner.lock().map_err(|_| StoreError("poisoned".into()))?.audit.len();
        Ok(TreeHead { size: size as u64, root: self.audit_root(size as u64)? })
    }

    fn audit_root(&self, size: u64) -> Result<Digest, StoreError> {
        let m = self.inner.lock().map_err(|_| StoreError("poisoned".into()))?;
        audit::root(size, &*m).map_err(err)
    }

    fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        let m = self.inner.lock().map_err(|_| StoreError("poisoned".into()))?;
        Ok(m.checkpoints.last_key_value().map(|(s, n)| (*s, n.clone())))
    }

    fn audit_tail(&self, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let m = self.inner.lock().map_err(|_| StoreError("poisoned".into()))?;
        Ok(m.audit.iter().enumerate().rev().take(max).map(|(i, e)| (i as u64, e.clone())).collect())
    }

    fn history(&self, job: JobId, after: Option<u64>, max: usize) -> Result<History, StoreError> {
        let m = self.inner.lock().map_err(|_| StoreError("poisoned".into()))?;
        let checkpoint = m.checkpoints.last_key_value().map(|(s, n)| (*s, n.clone()));
        let size = checkpoint.as_ref().map_or(0, |(s, _)| *s);
        let mut entries = Vec::new();
        for (seq, bytes) in (0u64..).zip(&m.audit) {
            if after.is_some_and(|a| seq <= a) || entries.len() >= max {
                continue;
            }
            if Entry::from_bytes(bytes).ok().and_then(|e| e.job()) == Some(job) {
                let proof = if seq < size {
                    audit::inclusion_proof(seq, size, &*m).map_err(err)?
                } else {
                    vec![]
                };
                entries.push((seq, bytes.clone(), proof));
            }
        }
        Ok(History { entries, checkpoint })
    }
}

/// A store that fails on request, around another (for tests of what a failed commit
/// leaves behind).
#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: S,
    fail: std::sync::atomic::AtomicU32,
}

impl<S: Store> FaultyStore<S> {
    /// `inner`, failing nothing yet.
    pub fn new(inner: S) -> Self {
        Self { inner, fail: std::sync::atomic::AtomicU32::new(0) }
    }

    /// Makes the next `n` batches fail, writing nothing.
    pub fn fail_next(&self, n: u32) {
        self.fail.store(n, std::sync::atomic::Ordering::SeqCst);
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn load_with(&self, job: &mut (dyn FnMut(JobRecord) + Send)) -> Result<Loaded, StoreError> {
        self.inner.load_with(job)
    }

    fn audit_head(&self) -> Result<TreeHead, StoreError> {
        self.inner.audit_head()
    }

    fn audit_root(&self, size: u64) -> Result<Digest, StoreError> {
        self.inner.audit_root(size)
    }

    fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.inner.latest_checkpoint()
    }

    fn history(&self, job: JobId, after: Option<u64>, max: usize) -> Result<History, StoreError> {
        self.inner.history(job, after, max)
    }

    fn audit_tail(&self, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.inner.audit_tail(max)
    }

    fn holds_blobs(&self) -> bool {
        self.inner.holds_blobs()
    }

    fn blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.blob(digest)
    }

    fn blob_len(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        self.inner.blob_len(digest)
    }

    fn blob_ages(&self, each: &mut dyn FnMut(Digest, u64)) -> Result<(), StoreError> {
        self.inner.blob_ages(each)
    }

    fn blob_bytes(&self) -> Result<u64, StoreError> {
        self.inner.blob_bytes()
    }

    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.fail.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(StoreError("injected fault: the disk is full".into()));
        }
        self.inner.apply(writes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redb_round_trips_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.redb");
        assert!(RedbStore::open(&path).unwrap_err().0.contains("is missing or empty"));
        std::fs::write(&path, b"").unwrap();
        assert!(RedbStore::open(&path).unwrap_err().0.contains("is missing or empty"));
        std::fs::remove_file(&path).unwrap();
        let store = RedbStore::create(&path).unwrap();
        let id = ActionId::from_random([1; 16]);
        let rec = ActionRecord {
            payload: Digest::of(b"a"),
            envelope: Digest::of(b"e"),
            plan_envelope: Digest::of(b"p"),
            blobs: vec![Digest::of(b"c")],
            expires_at: 5,
            jobs: vec![JobId(1)],
        };
        store
            .apply(&[
                Write::Change(Change::Action(id.clone(), rec.clone())),
                Write::Change(Change::NextJob(9)),
                Write::Keep(Digest::of(b"k")),
            ])
            .unwrap();
        drop(store);
        let loaded = RedbStore::open(&path).unwrap().load().unwrap();
        assert_eq!(loaded.actions, vec![(id.clone(), rec)]);
        assert_eq!(loaded.next_job, 9);
        assert_eq!(loaded.kept, vec![Digest::of(b"k")]);
        let store = RedbStore::open(&path).unwrap();
        store.apply(&[Write::Change(Change::DeleteAction(id))]).unwrap();
        drop(store);
        let loaded = RedbStore::open(&path).unwrap().load().unwrap();
        assert!(loaded.actions.is_empty());
    }

    /// Small blobs: stored once, renewed, forgotten only when not renewed since the
    /// cut-off, counted, and all of it kept across a reopen; the in-memory store agrees.
    #[test]
    fn small_blobs_are_stored_renewed_and_forgotten_as_the_writes_say() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.redb");
        let redb = RedbStore::create(&path).unwrap();
        let mem = MemStore::default();
        let (a, b) = (Digest::of(b"aaaa"), Digest::of(b"bb"));
        let blob = |d: Digest, bytes: &[u8], at| Write::Blob { digest: d, bytes: bytes.into(), at };
        for store in [&redb as &dyn Store, &mem] {
            assert!(store.holds_blobs());
            store.apply(&[blob(a, b"aaaa", 10), blob(b, b"bb", 10), blob(a, b"aaaa", 20)]).unwrap();
            assert_eq!(store.blob_bytes().unwrap(), 6, "a stored once");
            assert_eq!(store.blob(&a).unwrap().as_deref(), Some(&b"aaaa"[..]));
            assert_eq!(store.blob_len(&a).unwrap(), Some(4));
            store.apply(&[Write::Renew { digest: b, at: 30 }]).unwrap();
            // Renewed at 20 and 30: a cut-off at 20 and at 30 keeps both.
            store
                .apply(&[
                    Write::Forget { digest: a, before: 20 },
                    Write::Forget { digest: b, before: 30 },
                ])
                .unwrap();
            let mut ages = vec![];
            store.blob_ages(&mut |d, at| ages.push((d, at))).unwrap();
            ages.sort();
            let mut want = vec![(a, 20), (b, 30)];
            want.sort();
            assert_eq!(ages, want);
            store.apply(&[Write::Forget { digest: a, before: 21 }]).unwrap();
            assert_eq!(store.blob(&a).unwrap(), None);
            assert_eq!(store.blob_len(&a).unwrap(), None);
            assert_eq!(store.blob_bytes().unwrap(), 2);
            // Renewing or forgetting what is not stored changes nothing.
            store
                .apply(&[
                    Write::Renew { digest: a, at: 40 },
                    Write::Forget { digest: a, before: 99 },
                ])
                .unwrap();
            assert_eq!(store.blob(&a).unwrap(), None);
            assert_eq!(store.blob_bytes().unwrap(), 2);
        }
        drop(redb);
        let reopened = RedbStore::open(&path).unwrap();
        assert_eq!(reopened.load().unwrap().blob_bytes, 2);
        assert_eq!(reopened.blob(&b).unwrap().as_deref(), Some(&b"bb"[..]));
    }

    fn queued(n: u64, action: &ActionId) -> JobRecord {
        serde_json::from_value(serde_json::json!({
            "id": n, "action": action.as_str(), "plan": Digest::of(b"plan").to_string(),
            "priority": 0, "max_attempts": 3, "attempts": 0, "epoch": 0,
            "state": {"state": "queued", "not_before": 0},
            "requirements": {"limits": {"fuel": 1, "memory_bytes": 1, "timeout_ms": 1,
                "output_bytes": 1, "pids": 1, "file_bytes": 1}},
            "submitted_at": 1, "updated_at": 1
        }))
        .unwrap()
    }

    /// A tmpfs of `size` mounted at a new directory, unmounted when dropped; `None` (having
    /// said why) where this process cannot mount one.
    struct Tmpfs(tempfile::TempDir);

    impl Tmpfs {
        #[allow(clippy::print_stderr, reason = "a skipped test says why")]
        fn mount(size: &str) -> Option<Self> {
            let dir = tempfile::tempdir().unwrap();
            let out = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .output();
            match out {
                Ok(o) if o.status.success() => Some(Self(dir)),
                Ok(o) => {
                    let why = String::from_utf8_lossy(&o.stderr);
                    eprintln!("skipped: cannot mount a tmpfs (needs root): {why}");
                    None
                }
                Err(e) => {
                    eprintln!("skipped: cannot run mount: {e}");
                    None
                }
            }
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(self.0.path()).status();
        }
    }

    #[test]
    fn a_full_disk_stops_writes_only_until_there_is_room_again() {
        let Some(fs) = Tmpfs::mount("4m") else { return };
        let path = fs.0.path().join("q.redb");
        let store = RedbStore::create(&path).unwrap();
        // Most of the room taken by something else.
        let filler = fs.0.path().join("filler");
        std::fs::write(&filler, vec![1u8; 3 << 20]).unwrap();
        let id = ActionId::from_random([3; 16]);
        let mut acked = Vec::new();
        let error = loop {
            let mut job = queued(acked.len() as u64 + 1, &id);
            job.last_error = Some("x".repeat(4096));
            match store.apply(&[Write::Change(Change::Job(job.clone()))]) {
                Ok(()) => acked.push(job),
                Err(e) => break e,
            }
            assert!(acked.len() < 10_000, "the disk never filled");
        };
        assert!(error.0.contains("No space left"), "{error}");
        // Still nearly full (the failed commit's pages may be free again after the reopen):
        // each write lands whole or not at all.
        for _ in 0..5 {
            let job = queued(acked.len() as u64 + 1, &id);
            if store.apply(&[Write::Change(Change::Job(job.clone()))]).is_ok() {
                acked.push(job);
            }
        }
        // Room again: the store takes writes without a restart, and kept everything acked.
        std::fs::remove_file(&filler).unwrap();
        let last = queued(acked.len() as u64 + 1, &id);
        store.apply(&[Write::Change(Change::Job(last.clone()))]).unwrap();
        acked.push(last);
        assert_eq!(store.load().unwrap().jobs, acked);
        drop(store);
        assert_eq!(RedbStore::open(&path).unwrap().load().unwrap().jobs, acked);
    }

    #[test]
    fn records_an_earlier_release_wrote_as_json_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.redb");
        let store = RedbStore::create(&path).unwrap();
        let id = ActionId::from_random([2; 16]);
        let rec = ActionRecord {
            payload: Digest::of(b"a"),
            envelope: Digest::of(b"e"),
            plan_envelope: Digest::of(b"p"),
            blobs: vec![],
            expires_at: 5,
            jobs: vec![JobId(1), JobId(2)],
        };
        let job = queued(1, &id);
        store
            .with(|db| {
                let tx = db.begin_write().map_err(err)?;
                {
                    let mut jobs = tx.open_table(JOBS).map_err(err)?;
                    jobs.insert(1, serde_json::to_vec(&job).unwrap().as_slice()).map_err(err)?;
                    let mut actions = tx.open_table(ACTIONS).map_err(err)?;
                    let bytes = serde_json::to_vec(&rec).unwrap();
                    actions.insert(id.as_str(), bytes.as_slice()).map_err(err)?;
                }
                tx.commit().map_err(err)
            })
            .unwrap();
        // A job written since, in the binary encoding, beside the JSON one.
        let mut second = job.clone();
        second.id = JobId(2);
        second.index = 1;
        store.apply(&[Write::Change(Change::Job(second.clone()))]).unwrap();
        drop(store);
        let loaded = RedbStore::open(&path).unwrap().load().unwrap();
        assert_eq!(loaded.jobs, vec![job, second]);
        assert_eq!(loaded.actions, vec![(id, rec)]);
    }
}
