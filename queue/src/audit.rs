//! The audit log in the queue's store: entries appended in the same redb transaction as
//! the changes they record (so the log holds exactly what storage does, numbered by the
//! store), the Merkle tree's stored hashes beside them, an index by job, and the signed
//! checkpoints. `agq audit verify` and `agq audit export` read it from a read-only handle
//! while the queue runs.
//!
//! Tables (values as described in `agenix_proto::audit`):
//!
//! ```text
//! audit:        u64 seq            -> entry JSON (the bytes that are hashed)
//! audit_hashes: u64 stored index   -> [u8; 32]   every complete subtree's hash
//! audit_jobs:   (u64 job, u64 seq) -> ()
//! checkpoints:  u64 tree size      -> signed note (C2SP tlog-checkpoint)
//! ```

use std::collections::BTreeMap;

use agenix_proto::Digest;
use agenix_proto::audit::{self, Entry, Event, Frontier, Hashes, TreeHead};
use agenix_proto::job::JobId;
use agenix_proto::keys::VerifyingKey;
use redb::{ReadableTable, TableDefinition};

use crate::store::StoreError;

pub(crate) const AUDIT: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("audit");
pub(crate) const HASHES: TableDefinition<'_, u64, [u8; 32]> = TableDefinition::new("audit_hashes");
pub(crate) const BY_JOB: TableDefinition<'_, (u64, u64), ()> = TableDefinition::new("audit_jobs");
pub(crate) const CHECKPOINTS: TableDefinition<'_, u64, &str> = TableDefinition::new("checkpoints");

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// Entries read at once by `verify` and `export`.
const CHUNK: usize = 1024;

/// A whole log to read, in whichever store holds it (what `verify` and `export` read).
pub trait Log: Hashes {
    /// Every signed checkpoint (size, note), smallest first.
    fn checkpoints(&self) -> Result<Vec<(u64, String)>, String>;
    /// At most `max` entries numbered `from` or more (seq, bytes), in order.
    fn entries(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, String>;
}

/// The log in a redb read transaction.
pub struct RedbLog {
    audit: redb::ReadOnlyTable<u64, &'static [u8]>,
    hashes: redb::ReadOnlyTable<u64, [u8; 32]>,
    checkpoints: redb::ReadOnlyTable<u64, &'static str>,
}

impl std::fmt::Debug for RedbLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbLog").finish_non_exhaustive()
    }
}

impl RedbLog {
    /// The log as `tx` sees it.
    pub fn open(tx: &redb::ReadTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            audit: tx.open_table(AUDIT).map_err(err)?,
            hashes: tx.open_table(HASHES).map_err(err)?,
            checkpoints: tx.open_table(CHECKPOINTS).map_err(err)?,
        })
    }
}

impl Hashes for RedbLog {
    fn stored(&self, index: u64) -> Result<Option<Digest>, String> {
        Stored(&self.hashes).stored(index)
    }
}

impl Log for RedbLog {
    fn checkpoints(&self) -> Result<Vec<(u64, String)>, String> {
        let rows = self.checkpoints.iter().map_err(|e| e.to_string())?;
        rows.map(|r| {
            let (k, v) = r.map_err(|e| e.to_string())?;
            Ok((k.value(), v.value().to_string()))
        })
        .collect()
    }

    fn entries(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, String> {
        let rows = self.audit.range(from..).map_err(|e| e.to_string())?;
        rows.take(max)
            .map(|r| {
                let (k, v) = r.map_err(|e| e.to_string())?;
                Ok((k.value(), v.value().to_vec()))
            })
            .collect()
    }
}

/// The stored tree, read through any redb table handle.
struct Stored<'a, T>(&'a T);

impl<T: ReadableTable<u64, [u8; 32]>> Hashes for Stored<'_, T> {
    fn stored(&self, index: u64) -> Result<Option<Digest>, String> {
        self.0
            .get(index)
            .map(|v| v.map(|v| Digest::from_bytes(v.value())))
            .map_err(|e| e.to_string())
    }
}

/// Appends entries inside one write transaction.
pub(crate) struct Appender<'tx> {
    audit: redb::Table<'tx, u64, &'static [u8]>,
    hashes: redb::Table<'tx, u64, [u8; 32]>,
    by_job: redb::Table<'tx, (u64, u64), ()>,
    size: u64,
    prev: Digest,
}

impl<'tx> Appender<'tx> {
    pub(crate) fn open(tx: &'tx redb::WriteTransaction) -> Result<Self, StoreError> {
        let audit = tx.open_table(AUDIT).map_err(err)?;
        let hashes = tx.open_table(HASHES).map_err(err)?;
        let by_job = tx.open_table(BY_JOB).map_err(err)?;
        let size = size_of(&audit)?;
        let prev = match size {
            0 => audit::genesis(),
            n => Stored(&hashes).stored(audit::leaf_index(n - 1)).map_err(StoreError)?.ok_or_else(
                || StoreError(format!("the audit log has no hash for entry {}", n - 1)),
            )?,
        };
        Ok(Self { audit, hashes, by_job, size, prev })
    }

    pub(crate) fn push(&mut self, at: u64, event: &Event) -> Result<(), StoreError> {
        let entry = Entry { seq: self.size, at, prev: self.prev, event: event.clone() };
        let bytes = entry.to_bytes();
        for (index, hash) in audit::append(self.size, &bytes, &Stored(&self.hashes)).map_err(err)? {
            self.hashes.insert(index, hash.as_bytes()).map_err(err)?;
        }
        self.audit.insert(self.size, bytes.as_slice()).map_err(err)?;
        if let Some(job) = entry.job() {
            self.by_job.insert((job.0, self.size), ()).map_err(err)?;
        }
        self.prev = audit::leaf_hash(&bytes);
        self.size += 1;
        Ok(())
    }
}

/// The log's size and root.
pub(crate) fn head(tx: &redb::ReadTransaction) -> Result<TreeHead, StoreError> {
    let size = size_of(&tx.open_table(AUDIT).map_err(err)?)?;
    Ok(TreeHead { size, root: root(tx, size)? })
}

/// How many entries the log holds: one more than the last entry's number.
fn size_of(entries: &impl ReadableTable<u64, &'static [u8]>) -> Result<u64, StoreError> {
    Ok(entries.last().map_err(err)?.map_or(0, |(k, _)| k.value() + 1))
}

/// The root of the first `size` entries, from the stored tree.
pub(crate) fn root(tx: &redb::ReadTransaction, size: u64) -> Result<Digest, StoreError> {
    let hashes = tx.open_table(HASHES).map_err(err)?;
    audit::root(size, &Stored(&hashes)).map_err(err)
}

/// `job`'s entries after `after`, oldest first, at most `max`.
pub(crate) fn of_job(
    tx: &redb::ReadTransaction,
    job: JobId,
    after: Option<u64>,
    max: usize,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let by_job = tx.open_table(BY_JOB).map_err(err)?;
    let entries = tx.open_table(AUDIT).map_err(err)?;
    let from = after.map_or(0, |a| a.saturating_add(1));
    let mut out = Vec::new();
    for row in by_job.range((job.0, from)..=(job.0, u64::MAX)).map_err(err)?.take(max) {
        let seq = row.map_err(err)?.0.value().1;
        if let Some(bytes) = entries.get(seq).map_err(err)? {
            out.push((seq, bytes.value().to_vec()));
        }
    }
    Ok(out)
}

/// The inclusion proof of entry `seq` in the tree of `size` entries.
pub(crate) fn proof(
    tx: &redb::ReadTransaction,
    seq: u64,
    size: u64,
) -> Result<Vec<Digest>, StoreError> {
    let hashes = tx.open_table(HASHES).map_err(err)?;
    audit::inclusion_proof(seq, size, &Stored(&hashes)).map_err(err)
}

/// The latest signed checkpoint: its size and note.
pub(crate) fn latest_checkpoint(
    tx: &redb::ReadTransaction,
) -> Result<Option<(u64, String)>, StoreError> {
    let table = tx.open_table(CHECKPOINTS).map_err(err)?;
    Ok(table.last().map_err(err)?.map(|(k, v)| (k.value(), v.value().to_string())))
}

/// What `agq audit verify` found in an intact log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Entries checked.
    pub entries: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// The latest checkpoint's tree size (0: none yet).
    pub signed: u64,
    /// The root of the whole log.
    pub root: Digest,
}

/// Where and how a log is broken: the first fault, in log order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Broken {
    /// An entry's number is absent.
    #[error("entry {seq} is missing: the next entry present is entry {next}")]
    Missing {
        /// The first number absent.
        seq: u64,
        /// The next number present.
        next: u64,
    },
    /// An entry sits where another belongs.
    #[error("entry {seq} holds entry {holds}: entries were reordered")]
    Reordered {
        /// Where it sits.
        seq: u64,
        /// The number it carries.
        holds: u64,
    },
    /// An entry's bytes changed since it was appended.
    #[error("entry {seq} was edited: {why}")]
    Edited {
        /// The entry.
        seq: u64,
        /// What shows it.
        why: String,
    },
    /// Entries a signed checkpoint covers are gone from the end of the log.
    #[error(
        "the log ends after {entries} entries, but a checkpoint signed by this queue covers {signed}: entries {entries} to {last} were removed",
        last = signed - 1
    )]
    Truncated {
        /// Entries present.
        entries: u64,
        /// The checkpoint's size.
        signed: u64,
    },
    /// The entries do not give the root a checkpoint signed.
    #[error(
        "the first {size} entries do not match the checkpoint signed for them: the log was rewritten"
    )]
    Rewritten {
        /// The checkpoint's size.
        size: u64,
    },
    /// A checkpoint does not verify.
    #[error("the checkpoint of {size} entries is not valid: {why}")]
    BadCheckpoint {
        /// Its size.
        size: u64,
        /// Why.
        why: String,
    },
    /// The stored tree does not match the entries (its inclusion proofs would fail).
    #[error(
        "the stored tree does not match the entries at size {size}: inclusion proofs from it would fail"
    )]
    Tree {
        /// The size checked.
        size: u64,
    },
    /// The store could not be read.
    #[error("{0}")]
    Store(String),
}

/// Checks the whole log: every entry's number, its hash against the one stored when it was
/// appended, its link to the entry before, every checkpoint's signature by `key` (the
/// queue's identity) and root, and that no signed entry is gone. `saved` are checkpoints
/// kept elsewhere (a copy of `agq audit checkpoint`): the log must still hold their trees.
pub fn verify(
    log: &(impl Log + ?Sized),
    origin: &str,
    key: &VerifyingKey,
    saved: &[String],
) -> Result<Verified, Broken> {
    let mut heads = BTreeMap::new();
    for (size, note) in log.checkpoints().map_err(Broken::Store)? {
        let head = audit::open_checkpoint(note.as_bytes(), origin, key)
            .map_err(|e| Broken::BadCheckpoint { size, why: e.to_string() })?;
        if head.size != size {
            return Err(Broken::BadCheckpoint {
                size,
                why: format!("it signs {} entries", head.size),
            });
        }
        heads.insert(size, head.root);
    }
    let checkpoints = heads.len() as u64;
    for note in saved {
        let head = audit::open_checkpoint(note.as_bytes(), origin, key).map_err(|e| {
            Broken::BadCheckpoint { size: 0, why: format!("the saved checkpoint: {e}") }
        })?;
        if heads.get(&head.size).is_some_and(|r| *r != head.root) {
            return Err(Broken::Rewritten { size: head.size });
        }
        heads.insert(head.size, head.root);
    }
    let signed = heads.last_key_value().map_or(0, |(s, _)| *s);
    let mut frontier = Frontier::new();
    let mut prev = audit::genesis();
    let check_head = |frontier: &Frontier| -> Result<(), Broken> {
        let size = frontier.size();
        if heads.get(&size).is_some_and(|r| *r != frontier.root()) {
            return Err(Broken::Rewritten { size });
        }
        Ok(())
    };
    check_head(&frontier)?;
    let mut from = 0;
    loop {
        let chunk = log.entries(from, CHUNK).map_err(Broken::Store)?;
        let Some(last) = chunk.last().map(|(seq, _)| *seq) else { break };
        // Each entry's hash as stored when it was appended, read in one go.
        let leaves: Vec<u64> = chunk.iter().map(|(seq, _)| audit::leaf_index(*seq)).collect();
        let kept = log.stored_many(&leaves).map_err(Broken::Store)?;
        for ((seq, bytes), kept) in chunk.iter().zip(kept) {
            let (seq, bytes) = (*seq, bytes.as_slice());
            let expected = frontier.size();
            if seq != expected {
                return Err(Broken::Missing { seq: expected, next: seq });
            }
            let entry = Entry::from_bytes(bytes)
                .map_err(|e| Broken::Edited { seq, why: format!("it is not an entry ({e})") })?;
            let leaf = audit::leaf_hash(bytes);
            if entry.seq != seq {
                // Moved here if it is, byte for byte, the entry appended at the number it
                // carries; edited if not.
                let there = log.stored(audit::leaf_index(entry.seq)).map_err(Broken::Store)?;
                if there == Some(leaf) {
                    return Err(Broken::Reordered { seq, holds: entry.seq });
                }
                return Err(Broken::Edited {
                    seq,
                    why: format!("it carries the number {}", entry.seq),
                });
            }
            if kept.is_some_and(|k| k != leaf) {
                return Err(Broken::Edited {
                    seq,
                    why: "its hash differs from the one stored when it was appended".into(),
                });
            }
            if entry.prev != prev {
                return Err(Broken::Edited {
                    seq: seq.saturating_sub(1),
                    why: format!("entry {seq} links to another version of it"),
                });
            }
            // Every entry's own hash is stored when it is appended: one gone would make the
            // inclusion proofs through it fail.
            if kept.is_none() {
                return Err(Broken::Tree { size: seq });
            }
            frontier.push(leaf);
            prev = leaf;
            check_head(&frontier)?;
        }
        match last.checked_add(1) {
            Some(next) => from = next,
            None => break,
        }
    }
    let size = frontier.size();
    if signed > size {
        return Err(Broken::Truncated { entries: size, signed });
    }
    // The stored tree, which inclusion proofs are made from, must give the same roots.
    let root = frontier.root();
    if audit::root(size, log).ok() != Some(root) {
        return Err(Broken::Tree { size });
    }
    Ok(Verified { entries: size, checkpoints, signed, root })
}

/// Calls `each` with the bytes of every entry recorded at or after `since` (Unix ms), in
/// log order.
pub fn export(
    log: &(impl Log + ?Sized),
    since: u64,
    mut each: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> anyhow::Result<u64> {
    let (mut n, mut from) = (0, 0);
    loop {
        let chunk = log.entries(from, CHUNK).map_err(anyhow::Error::msg)?;
        let Some(last) = chunk.last().map(|(seq, _)| *seq) else { break };
        for (seq, bytes) in &chunk {
            let entry = Entry::from_bytes(bytes)
                .map_err(|e| anyhow::anyhow!("entry {seq} is not an entry: {e}"))?;
            if entry.at >= since {
                each(bytes)?;
                n += 1;
            }
        }
        match last.checked_add(1) {
            Some(next) => from = next,
            None => break,
        }
    }
    Ok(n)
}

/// The last `max` entries, newest first: (seq, entry JSON).
pub(crate) fn tail(
    tx: &redb::ReadTransaction,
    max: usize,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let entries = tx.open_table(AUDIT).map_err(err)?;
    let mut out = Vec::new();
    for row in entries.iter().map_err(err)?.rev().take(max) {
        let (seq, bytes) = row.map_err(err)?;
        out.push((seq.value(), bytes.value().to_vec()));
    }
    Ok(out)
}

/// The log in the queue directory `data`, opened read-only (beside a running queue).
fn open_dir(data: &std::path::Path) -> anyhow::Result<redb::ReadOnlyDatabase> {
    use anyhow::Context as _;
    let path = data.join("queue.redb");
    if !path.is_file() {
        anyhow::bail!(
            "{} holds no queue store (queue.redb): is it a queue directory?",
            data.display()
        );
    }
    let (db, recovered) = crate::store::RedbStore::read_only(&path)
        .with_context(|| format!("cannot open {} read-only", path.display()))?;
    if recovered {
        tracing::warn!(
            store = %path.display(),
            "the queue stopped without closing its store: recovered it first, as agq serve does"
        );
    }
    Ok(db)
}

/// `agq audit verify`: checks the log in `data` against the queue's identity key.
pub fn verify_dir(data: &std::path::Path, saved: &[String]) -> anyhow::Result<Verified> {
    use redb::ReadableDatabase as _;
    let db = open_dir(data)?;
    let tx = db.begin_read()?;
    verify_log(&RedbLog::open(&tx)?, data, saved)
}

/// `agq audit verify` of `log` (in whichever store), against the identity key in `data`.
pub fn verify_log(
    log: &(impl Log + ?Sized),
    data: &std::path::Path,
    saved: &[String],
) -> anyhow::Result<Verified> {
    let key = crate::identity::signing_key(data)?.verifying_key();
    let fp = audit::fingerprint_of(&key)
        .ok_or_else(|| anyhow::anyhow!("the identity key has no public key encoding"))?;
    verify(log, &audit::origin(&fp), &key, saved).map_err(|e| match e {
        Broken::Store(e) => anyhow::anyhow!("cannot read the audit log: {e}"),
        e => anyhow::anyhow!("audit log broken: {e}"),
    })
}

/// Checks that `note` is a checkpoint of the queue in `data`, signed by its key.
pub fn check_saved(data: &std::path::Path, note: &str) -> anyhow::Result<()> {
    let key = crate::identity::signing_key(data)?.verifying_key();
    let fp = audit::fingerprint_of(&key)
        .ok_or_else(|| anyhow::anyhow!("the identity key has no public key encoding"))?;
    audit::open_checkpoint(note.as_bytes(), &audit::origin(&fp), &key)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("is not a checkpoint of this queue: {e}"))
}

/// `agq audit export`: writes the entries recorded since `since` (Unix ms) to `out`, one
/// per line; returns how many.
pub fn export_dir(
    data: &std::path::Path,
    since: u64,
    out: &mut impl std::io::Write,
) -> anyhow::Result<u64> {
    use redb::ReadableDatabase as _;
    let db = open_dir(data)?;
    let tx = db.begin_read()?;
    export_log(&RedbLog::open(&tx)?, since, out)
}

/// `agq audit export` of `log` (in whichever store).
pub fn export_log(
    log: &(impl Log + ?Sized),
    since: u64,
    out: &mut impl std::io::Write,
) -> anyhow::Result<u64> {
    let n = export(log, since, |bytes| {
        out.write_all(bytes)?;
        out.write_all(b"\n")
    })?;
    out.flush()?;
    Ok(n)
}

/// `agq audit checkpoint`: the latest signed checkpoint.
pub fn latest_checkpoint_dir(data: &std::path::Path) -> anyhow::Result<Option<String>> {
    use redb::ReadableDatabase as _;
    let db = open_dir(data)?;
    let tx = db.begin_read()?;
    Ok(latest_checkpoint(&tx)?.map(|(_, note)| note))
}
