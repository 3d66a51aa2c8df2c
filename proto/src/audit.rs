//! The queue's audit log: what happened to every job and every key, as entries that each
//! name the hash of the one before and are the leaves of a Merkle tree, the tree of
//! Certificate Transparency (RFC 6962: `tlog_tiles`, a port of the tree Go's checksum
//! database keeps). The queue signs checkpoints of the tree (origin, size, root) as C2SP
//! signed notes (`signed_note`) with its identity key, so anyone holding a checkpoint can
//! check that an entry is in the log (an inclusion proof) without reading the rest.
//!
//! Entries hold ids, digests, states and key names; never secrets, payloads or free text
//! a peer chose (a failure's reason is kept as its digest).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::pkcs8::EncodePublicKey as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use tlog_tiles::{Hash, HashReader};

use crate::action::Fingerprint;
use crate::digest::Digest;
use crate::ids::ActionId;
use crate::job::{JobId, LeaseEpoch, StateKind};
use crate::keys::KeyId;
use crate::trust::{Role, Signer, Trust};

/// Largest entry, in bytes (an entry holds ids and digests only).
pub const MAX_ENTRY_BYTES: usize = 4096;
/// Largest signed checkpoint, in bytes.
pub const MAX_CHECKPOINT_BYTES: usize = 4096;

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Its position: 0 for the first entry, one more for each after.
    pub seq: u64,
    /// When the queue recorded it (Unix ms, the queue's clock).
    pub at: u64,
    /// The leaf hash of the entry before it ([`genesis`] for the first).
    pub prev: Digest,
    /// What happened.
    pub event: Event,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A job moved.
    Job(JobEvent),
    /// A key entered, changed in or left the queue's trust file.
    Key(KeyEvent),
    /// The queue read a new version of its trust file.
    Trust {
        /// The sha256 of the trust as the queue read it, in its canonical form
        /// (`Trust::to_json`: a file edited by hand has other bytes).
        file: Digest,
    },
}

/// What happened to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Submitted: one job of a verified action.
    Submitted,
    /// Leased to a worker.
    Leased,
    /// Its worker recorded a result.
    Completed,
    /// Its worker reported that it could not run it.
    Failed,
    /// Its worker gave it back (a cause of the worker's own).
    Released,
    /// Its lease expired: the worker stopped heartbeating.
    Expired,
    /// Its lease was taken back: the answer carrying it was lost, or its worker's key is
    /// no longer accepted.
    Reclaimed,
    /// A planner asked to cancel it while it was leased.
    CancelRequested,
    /// Cancelled.
    Cancelled,
    /// Its action expired before it could run.
    ActionExpired,
    /// Forgotten after its retention.
    Forgotten,
}

impl Step {
    /// Every step.
    pub const ALL: [Self; 11] = [
        Self::Submitted,
        Self::Leased,
        Self::Completed,
        Self::Failed,
        Self::Released,
        Self::Expired,
        Self::Reclaimed,
        Self::CancelRequested,
        Self::Cancelled,
        Self::ActionExpired,
        Self::Forgotten,
    ];

    /// The step's name, as in the audit log.
    pub fn name(self) -> &'static str {
        match self {
            Self::Submitted => "submitted",
            Self::Leased => "leased",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Released => "released",
            Self::Expired => "expired",
            Self::Reclaimed => "reclaimed",
            Self::CancelRequested => "cancel_requested",
            Self::Cancelled => "cancelled",
            Self::ActionExpired => "action_expired",
            Self::Forgotten => "forgotten",
        }
    }
}

/// One step of one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobEvent {
    /// The job.
    pub job: JobId,
    /// What happened.
    pub step: Step,
    /// Its state after.
    pub state: StateKind,
    /// Its action (on submission).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionId>,
    /// Its plan's digest (on submission).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Digest>,
    /// Its input's digest (on submission, when it has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Digest>,
    /// The key that signed its action (on submission).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<KeyId>,
    /// The lease this step concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<LeaseEpoch>,
    /// The key of the worker holding that lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<KeyId>,
    /// The output's digest (on completion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Digest>,
    /// The digest of the worker's signed statement (on completion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Digest>,
    /// The digest of the reason the worker gave (on failure or release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Digest>,
}

impl JobEvent {
    /// A step with no details yet.
    pub fn new(job: JobId, step: Step, state: StateKind) -> Self {
        Self {
            job,
            step,
            state,
            action: None,
            plan: None,
            input: None,
            signer: None,
            epoch: None,
            worker: None,
            output: None,
            result: None,
            reason: None,
        }
    }
}

/// What happened to a key in the queue's trust file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEvent {
    /// The key.
    pub key: KeyId,
    /// What happened.
    pub change: KeyChange,
    /// Its name in the trust file.
    pub name: String,
    /// Its roles.
    pub roles: Vec<Role>,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyChange {
    /// It was added (a worker enrolled, a signer trusted).
    Added,
    /// Its roles, period or labels changed.
    Changed,
    /// It was revoked.
    Revoked,
    /// It was taken off the revoked list (by an edit of the file by hand: no command
    /// does it).
    Unrevoked,
    /// It was removed from the file.
    Removed,
}

/// What changed between two readings of a trust file, key by key: added, changed (roles,
/// period, labels or name), revoked, taken off the revoked list, removed.
pub fn trust_changes(old: &Trust, new: &Trust) -> Vec<KeyEvent> {
    let event = |key: &KeyId, change, s: Option<&Signer>| KeyEvent {
        key: *key,
        change,
        name: s.map(|s| s.name.clone()).unwrap_or_default(),
        roles: s.map(|s| s.roles.clone()).unwrap_or_default(),
    };
    let mut out = Vec::new();
    for (key, s) in new.signers() {
        match old.signer(key) {
            None => out.push(event(key, KeyChange::Added, Some(s))),
            Some(was) if was != s => out.push(event(key, KeyChange::Changed, Some(s))),
            Some(_) => {}
        }
    }
    for key in new.revoked() {
        if !old.is_revoked(key) {
            out.push(event(key, KeyChange::Revoked, new.signer(key)));
        }
    }
    for key in old.revoked() {
        if !new.is_revoked(key) {
            out.push(event(key, KeyChange::Unrevoked, new.signer(key).or(old.signer(key))));
        }
    }
    for (key, s) in old.signers() {
        if new.signer(key).is_none() {
            out.push(event(key, KeyChange::Removed, Some(s)));
        }
    }
    out
}

impl Entry {
    /// The entry's bytes, as stored and hashed.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Ids, digests and numbers only: serialization cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses an entry strictly.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crate::json::JsonError> {
        crate::json::from_slice(bytes, MAX_ENTRY_BYTES)
    }

    /// The job it concerns, if any.
    pub fn job(&self) -> Option<JobId> {
        match &self.event {
            Event::Job(j) => Some(j.job),
            _ => None,
        }
    }
}

/// An entry as a queue hands it out: its bytes (exactly those hashed) and its proof in the
/// latest checkpoint's tree (empty when the checkpoint does not cover it yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proven {
    /// Its number.
    pub seq: u64,
    /// The entry's JSON, as stored.
    pub entry: String,
    /// Its inclusion proof, leaf end first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proof: Vec<Digest>,
}

/// One page of a job's history as a queue answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// The entries with their proofs.
    pub entries: Vec<Proven>,
    /// The latest signed checkpoint.
    pub checkpoint: Option<String>,
    /// The key that signs checkpoints (base64).
    pub key: String,
}

/// One entry, checked: proven in a checkpoint signed by the pinned queue, or not yet
/// covered by one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The entry.
    pub entry: Entry,
    /// The size of the checkpoint it was proven in (none: after the latest checkpoint).
    pub proven_in: Option<u64>,
}

/// Checks a page of `job`'s history from the queue pinned by `queue`: the key must be the
/// queue's own, the checkpoint signed by it, every entry about `job`, and every entry the
/// checkpoint covers proven in it. An entry the checkpoint does not cover yet is returned
/// unproven; anything else that does not hold is an error, not a warning.
pub fn check_history(
    queue: &Fingerprint,
    job: JobId,
    page: &History,
) -> Result<Vec<Checked>, AuditError> {
    let key = key_from_base64(&page.key)
        .ok_or_else(|| AuditError::Checkpoint("the queue sent no valid key".into()))?;
    if fingerprint_of(&key).as_ref() != Some(queue) {
        return Err(AuditError::Checkpoint(format!(
            "the key that signs checkpoints is not the key of the queue pinned ({queue})"
        )));
    }
    let head = match &page.checkpoint {
        Some(note) => Some(open_checkpoint(note.as_bytes(), &origin(queue), &key)?),
        None => None,
    };
    let mut out = Vec::with_capacity(page.entries.len());
    for p in &page.entries {
        let entry = Entry::from_bytes(p.entry.as_bytes())
            .map_err(|e| AuditError::Tree(format!("entry {} is not an entry: {e}", p.seq)))?;
        if out.last().is_some_and(|c: &Checked| c.entry.seq >= entry.seq) {
            return Err(AuditError::Tree(format!(
                "the queue answered entry {} out of order",
                entry.seq
            )));
        }
        if entry.seq != p.seq || entry.job() != Some(job) {
            return Err(AuditError::Tree(format!(
                "the queue answered with entry {} as entry {} of job {job}",
                entry.seq, p.seq
            )));
        }
        let proven_in = match head {
            Some(h) if entry.seq < h.size => {
                check_inclusion(
                    entry.seq,
                    &leaf_hash(p.entry.as_bytes()),
                    &p.proof,
                    h.size,
                    &h.root,
                )?;
                Some(h.size)
            }
            _ => None,
        };
        out.push(Checked { entry, proven_in });
    }
    Ok(out)
}

/// What the first entry names as the one before it: the root of the empty tree.
pub fn genesis() -> Digest {
    digest(tlog_tiles::EMPTY_HASH)
}

/// The leaf hash of an entry's bytes: `sha256(0x00 || bytes)`.
pub fn leaf_hash(bytes: &[u8]) -> Digest {
    digest(tlog_tiles::record_hash(bytes))
}

fn digest(h: Hash) -> Digest {
    Digest::from_bytes(h.0)
}

fn hash(d: &Digest) -> Hash {
    Hash(*d.as_bytes())
}

/// Why the log's tree could not be read or a proof checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// A stored subtree hash is missing or could not be read.
    #[error("the log's tree cannot be read: {0}")]
    Tree(String),
    /// An inclusion proof does not lead to the checkpoint's root.
    #[error("entry {seq} is not in the tree of {size} entries the checkpoint signs")]
    NotIncluded {
        /// The entry.
        seq: u64,
        /// The checkpoint's tree size.
        size: u64,
    },
    /// A checkpoint could not be read or its signature does not verify.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
}

/// Where a log keeps its tree: the hash of every complete subtree, at the dense index
/// `tlog_tiles::stored_hash_index` gives it.
pub trait Hashes {
    /// The stored hash at `index`, if there is one.
    fn stored(&self, index: u64) -> Result<Option<Digest>, String>;

    /// The stored hashes at `indexes`, in their order (a store across a network reads them
    /// in one round trip).
    fn stored_many(&self, indexes: &[u64]) -> Result<Vec<Option<Digest>>, String> {
        indexes.iter().map(|&i| self.stored(i)).collect()
    }
}

struct Reader<'a, H: ?Sized>(&'a H);

impl<H: Hashes + ?Sized> HashReader for Reader<'_, H> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        let found = self.0.stored_many(indexes).map_err(tlog_tiles::Error::InvalidInput)?;
        if found.len() != indexes.len() {
            return Err(tlog_tiles::Error::InvalidInput(format!(
                "asked for {} stored hashes, read {}",
                indexes.len(),
                found.len()
            )));
        }
        indexes
            .iter()
            .zip(found)
            .map(|(i, d)| match d {
                Some(d) => Ok(hash(&d)),
                None => Err(tlog_tiles::Error::InvalidInput(format!("no stored hash {i}"))),
            })
            .collect()
    }
}

fn tree_err(e: tlog_tiles::Error) -> AuditError {
    AuditError::Tree(e.to_string())
}

/// Where an entry's own (leaf) hash is stored.
pub fn leaf_index(seq: u64) -> u64 {
    tlog_tiles::stored_hash_index(0, seq)
}

/// The stored hashes to write when the entry `bytes` becomes leaf number `size`: pairs of
/// index and hash (the leaf, then each subtree it completes).
pub fn append(
    size: u64,
    bytes: &[u8],
    hashes: &(impl Hashes + ?Sized),
) -> Result<Vec<(u64, Digest)>, AuditError> {
    let new = tlog_tiles::stored_hashes(size, bytes, &Reader(hashes)).map_err(tree_err)?;
    let first = tlog_tiles::stored_hash_index(0, size);
    Ok(new.into_iter().zip(first..).map(|(h, i)| (i, digest(h))).collect())
}

/// The root of the tree of the first `size` entries.
pub fn root(size: u64, hashes: &(impl Hashes + ?Sized)) -> Result<Digest, AuditError> {
    tlog_tiles::tree_hash(size, &Reader(hashes)).map(digest).map_err(tree_err)
}

/// The proof that entry `seq` is in the tree of `size` entries.
pub fn inclusion_proof(
    seq: u64,
    size: u64,
    hashes: &(impl Hashes + ?Sized),
) -> Result<Vec<Digest>, AuditError> {
    let proof = tlog_tiles::prove_record(size, seq, &Reader(hashes)).map_err(tree_err)?;
    Ok(proof.into_iter().map(digest).collect())
}

/// Checks that the entry whose bytes hash to `leaf` is entry `seq` of the tree of `size`
/// entries with root `root`.
pub fn check_inclusion(
    seq: u64,
    leaf: &Digest,
    proof: &[Digest],
    size: u64,
    root: &Digest,
) -> Result<(), AuditError> {
    let proof: Vec<Hash> = proof.iter().map(hash).collect();
    tlog_tiles::check_record(&proof, size, hash(root), seq, hash(leaf))
        .map_err(|_| AuditError::NotIncluded { seq, size })
}

/// The right edge of a tree built from leaves alone: its root at every size in
/// `O(log n)` memory, trusting nothing stored (what `agq audit verify` recomputes with).
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    size: u64,
    /// The roots of the complete subtrees, leftmost (largest) first.
    stack: Vec<Digest>,
}

impl Frontier {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many leaves it has.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Adds a leaf.
    pub fn push(&mut self, leaf: Digest) {
        let mut h = hash(&leaf);
        let mut size = self.size;
        while size & 1 == 1 {
            let Some(left) = self.stack.pop() else { break };
            h = tlog_tiles::node_hash(hash(&left), h);
            size >>= 1;
        }
        self.stack.push(digest(h));
        self.size += 1;
    }

    /// The root of the leaves added so far.
    pub fn root(&self) -> Digest {
        let mut right = self.stack.iter().rev();
        let Some(first) = right.next() else { return genesis() };
        let mut acc = hash(first);
        for left in right {
            acc = tlog_tiles::node_hash(hash(left), acc);
        }
        digest(acc)
    }
}

/// The name of a queue's log, as its checkpoints state it: `agenix-queue/<fingerprint hex>`.
pub fn origin(queue: &Fingerprint) -> String {
    format!("agenix-queue/{}", queue.0.hex())
}

/// A queue's fingerprint from its identity key: the sha256 of the key's
/// SubjectPublicKeyInfo, as TLS pins it.
pub fn fingerprint_of(key: &VerifyingKey) -> Option<Fingerprint> {
    key.to_public_key_der().ok().map(|der| Fingerprint(Digest::of(der.as_bytes())))
}

/// A checkpoint's tree: its size and root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeHead {
    /// How many entries it holds.
    pub size: u64,
    /// Its root.
    pub root: Digest,
}

const ALG_ED25519: u8 = 1;

fn note_key_id(name: &str, key: &VerifyingKey) -> u32 {
    let mut k = vec![ALG_ED25519];
    k.extend_from_slice(key.as_bytes());
    signed_note::key_id(name, &k)
}

struct NoteSigner<'a> {
    name: &'a str,
    key: &'a SigningKey,
}

impl signed_note::Signer for NoteSigner<'_> {
    fn name(&self) -> &str {
        self.name
    }
    fn key_id(&self) -> u32 {
        note_key_id(self.name, &self.key.verifying_key())
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, ed25519_dalek::SignatureError> {
        Ok(self.key.sign(msg).to_vec())
    }
}

/// Verifies with `verify_strict`, as every signature here is checked.
struct NoteVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl signed_note::Verifier for NoteVerifier {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        Signature::from_slice(sig).is_ok_and(|s| self.key.verify_strict(msg, &s).is_ok())
    }
}

impl signed_note::Verifiers for NoteVerifier {
    fn verifier(
        &self,
        name: &str,
        id: u32,
    ) -> Result<&dyn signed_note::Verifier, signed_note::VerificationError> {
        if name == self.name && id == self.id {
            Ok(self)
        } else {
            Err(signed_note::VerificationError::UnknownKey { name: name.into(), id })
        }
    }
}

fn note_err(e: impl std::fmt::Display) -> AuditError {
    AuditError::Checkpoint(e.to_string())
}

/// Signs a checkpoint of `head` for the log `origin` with `key`, named `origin`.
pub fn sign_checkpoint(
    origin: &str,
    head: TreeHead,
    key: &SigningKey,
) -> Result<String, AuditError> {
    let cp = tlog_tiles::Checkpoint::new(origin, head.size, hash(&head.root), "")
        .map_err(|_| AuditError::Checkpoint(format!("invalid log name {origin:?}")))?;
    let mut note = signed_note::Note::new(&cp.to_bytes(), &[]).map_err(note_err)?;
    note.add_sigs(&[&NoteSigner { name: origin, key }]).map_err(note_err)?;
    String::from_utf8(note.to_bytes()).map_err(note_err)
}

/// Reads a signed checkpoint of the log `origin` and checks that `key` signed it (other
/// signatures, a witness's for example, are ignored).
pub fn open_checkpoint(
    note: &[u8],
    origin: &str,
    key: &VerifyingKey,
) -> Result<TreeHead, AuditError> {
    if note.len() > MAX_CHECKPOINT_BYTES {
        return Err(AuditError::Checkpoint(format!("over {MAX_CHECKPOINT_BYTES} bytes")));
    }
    let note = signed_note::Note::from_bytes(note).map_err(note_err)?;
    let verifier = NoteVerifier { name: origin.into(), id: note_key_id(origin, key), key: *key };
    note.verify(&verifier).map_err(|e| match e {
        signed_note::NoteError::UnverifiedNote => {
            AuditError::Checkpoint(format!("not signed by the key of {origin}"))
        }
        e => note_err(e),
    })?;
    let cp = tlog_tiles::Checkpoint::from_bytes(note.text())
        .map_err(|_| AuditError::Checkpoint("not a checkpoint".into()))?;
    if cp.origin() != origin {
        return Err(AuditError::Checkpoint(format!(
            "it is for the log {:?}, not {origin:?}",
            cp.origin()
        )));
    }
    Ok(TreeHead { size: cp.size(), root: digest(*cp.hash()) })
}

/// A public key in the form a checkpoint carries it beside an answer: base64 of its 32
/// bytes.
pub fn key_to_base64(key: &VerifyingKey) -> String {
    B64.encode(key.as_bytes())
}

/// The inverse of [`key_to_base64`].
pub fn key_from_base64(s: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = B64.decode(s).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn step_names_are_their_audit_log_names() {
        for step in Step::ALL {
            let wire = serde_json::to_string(&step).unwrap();
            assert_eq!(wire, format!("\"{}\"", step.name()));
        }
    }

    struct Mem(BTreeMap<u64, Digest>);

    impl Hashes for Mem {
        fn stored(&self, index: u64) -> Result<Option<Digest>, String> {
            Ok(self.0.get(&index).copied())
        }
    }

    fn log(n: u64) -> (Vec<Vec<u8>>, Mem) {
        let mut mem = Mem(BTreeMap::new());
        let mut entries = Vec::new();
        let mut prev = genesis();
        for seq in 0..n {
            let e = Entry {
                seq,
                at: 1000 + seq,
                prev,
                event: Event::Job(JobEvent::new(JobId(seq), Step::Submitted, StateKind::Queued)),
            };
            let bytes = e.to_bytes();
            prev = leaf_hash(&bytes);
            for (i, h) in append(seq, &bytes, &mem).unwrap() {
                mem.0.insert(i, h);
            }
            entries.push(bytes);
        }
        (entries, mem)
    }

    #[test]
    fn entries_round_trip_strictly() {
        let mut ev = JobEvent::new(JobId(3), Step::Completed, StateKind::Succeeded);
        ev.worker = Some(KeyId::of(&SigningKey::from_bytes(&[1; 32]).verifying_key()));
        ev.output = Some(Digest::of(b"out"));
        let e = Entry { seq: 4, at: 5, prev: genesis(), event: Event::Job(ev) };
        let bytes = e.to_bytes();
        assert_eq!(Entry::from_bytes(&bytes).unwrap(), e);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains(r#""kind":"job""#), "{text}");
        let extra = text.replacen(r#""seq":4"#, r#""seq":4,"secret":"x""#, 1);
        assert!(Entry::from_bytes(extra.as_bytes()).is_err());
        let trust =
            Entry { seq: 0, at: 0, prev: genesis(), event: Event::Trust { file: genesis() } };
        assert_eq!(Entry::from_bytes(&trust.to_bytes()).unwrap(), trust);
    }

    #[test]
    fn trust_changes_name_each_key_added_changed_revoked_and_removed() {
        let k = |n: u8| SigningKey::from_bytes(&[n; 32]).verifying_key();
        let mut old = Trust::new();
        old.add("a", k(1), &Role::SIGNING).unwrap();
        old.add("b", k(2), &[Role::Worker]).unwrap();
        old.add("c", k(3), &[Role::Worker]).unwrap();
        let mut new = Trust::from_json(&old.to_json()).unwrap();
        assert!(trust_changes(&old, &new).is_empty());
        new.add("d", k(4), &[Role::Worker]).unwrap();
        new.revoke(KeyId::of(&k(2)));
        let labels = ["gpu".to_string()].into_iter().collect();
        new.set_labels(&KeyId::of(&k(1)), labels).unwrap();
        let mut json: serde_json::Value = serde_json::from_slice(&new.to_json()).unwrap();
        let signers = json["signers"].as_array_mut().unwrap();
        signers.retain(|s| s["name"] != "c");
        let new = Trust::from_json(&serde_json::to_vec(&json).unwrap()).unwrap();
        // A revocation undone by hand is recorded as such.
        let mut undone: serde_json::Value = serde_json::from_slice(&new.to_json()).unwrap();
        undone["revoked"] = serde_json::json!([]);
        let undone = Trust::from_json(&serde_json::to_vec(&undone).unwrap()).unwrap();
        let back: Vec<KeyChange> = trust_changes(&new, &undone).iter().map(|e| e.change).collect();
        assert_eq!(back, vec![KeyChange::Unrevoked]);
        let got: Vec<(KeyId, KeyChange)> =
            trust_changes(&old, &new).iter().map(|e| (e.key, e.change)).collect();
        assert_eq!(
            got,
            vec![
                (KeyId::of(&k(1)), KeyChange::Changed),
                (KeyId::of(&k(4)), KeyChange::Added),
                (KeyId::of(&k(2)), KeyChange::Revoked),
                (KeyId::of(&k(3)), KeyChange::Removed),
            ]
        );
    }

    #[test]
    fn the_frontier_agrees_with_the_stored_tree_at_every_size() {
        let (entries, mem) = log(67);
        let mut f = Frontier::new();
        assert_eq!(root(0, &mem).unwrap(), f.root());
        for (n, bytes) in entries.iter().enumerate() {
            f.push(leaf_hash(bytes));
            assert_eq!(root(n as u64 + 1, &mem).unwrap(), f.root(), "size {}", n + 1);
        }
    }

    #[test]
    fn inclusion_proofs_verify_and_others_do_not() {
        let (entries, mem) = log(23);
        for size in 1..=23u64 {
            let r = root(size, &mem).unwrap();
            for seq in 0..size {
                let leaf = leaf_hash(&entries[seq as usize]);
                let proof = inclusion_proof(seq, size, &mem).unwrap();
                check_inclusion(seq, &leaf, &proof, size, &r).unwrap();
                let other = leaf_hash(b"edited");
                assert!(check_inclusion(seq, &other, &proof, size, &r).is_err());
                if size > 1 {
                    let moved = (seq + 1) % size;
                    assert!(check_inclusion(moved, &leaf, &proof, size, &r).is_err());
                }
            }
        }
        // A tree with a hash missing says so.
        let mut broken = mem;
        broken.0.remove(&tlog_tiles::stored_hash_index(1, 2));
        assert!(matches!(root(7, &broken), Err(AuditError::Tree(_))));
    }

    #[test]
    fn a_history_checks_only_when_every_part_holds() {
        let (entries, mem) = log(9);
        let key = SigningKey::from_bytes(&[9; 32]);
        let fp = fingerprint_of(&key.verifying_key()).unwrap();
        let head = TreeHead { size: 8, root: root(8, &mem).unwrap() };
        let note = sign_checkpoint(&origin(&fp), head, &key).unwrap();
        // Entries 2 and 8 (job 2 and job 8 in `log`): one proven, one after the checkpoint.
        let proven = |seq: u64| Proven {
            seq,
            entry: String::from_utf8(entries[seq as usize].clone()).unwrap(),
            proof: if seq < 8 { inclusion_proof(seq, 8, &mem).unwrap() } else { vec![] },
        };
        let page = History {
            entries: vec![proven(2)],
            checkpoint: Some(note.clone()),
            key: key_to_base64(&key.verifying_key()),
        };
        let got = check_history(&fp, JobId(2), &page).unwrap();
        assert_eq!(got[0].proven_in, Some(8));
        let later = History { entries: vec![proven(8)], ..page.clone() };
        assert_eq!(check_history(&fp, JobId(8), &later).unwrap()[0].proven_in, None);
        // Another queue's key, an entry twice, a proof of another entry: refused.
        let other = SigningKey::from_bytes(&[10; 32]);
        let foreign = History { key: key_to_base64(&other.verifying_key()), ..page.clone() };
        assert!(check_history(&fp, JobId(2), &foreign).is_err());
        let twice = History { entries: vec![proven(2), proven(2)], ..page.clone() };
        assert!(check_history(&fp, JobId(2), &twice).is_err());
        let mut swapped = proven(2);
        swapped.proof = inclusion_proof(3, 8, &mem).unwrap();
        let wrong = History { entries: vec![swapped], ..page.clone() };
        assert!(check_history(&fp, JobId(2), &wrong).is_err());
        // An entry the checkpoint covers must come with its proof.
        let mut bare = proven(2);
        bare.proof.clear();
        assert!(check_history(&fp, JobId(2), &History { entries: vec![bare], ..page }).is_err());
    }

    #[test]
    fn checkpoints_sign_open_and_refuse_tampering() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let fp = fingerprint_of(&key.verifying_key()).unwrap();
        let o = origin(&fp);
        let head = TreeHead { size: 12, root: leaf_hash(b"r") };
        let note = sign_checkpoint(&o, head, &key).unwrap();
        assert!(note.starts_with(&format!("{o}\n12\n")), "{note}");
        assert!(note.contains(&format!("\n\n\u{2014} {o} ")), "{note}");
        assert_eq!(open_checkpoint(note.as_bytes(), &o, &key.verifying_key()), Ok(head));
        let bigger = note.replacen("\n12\n", "\n13\n", 1);
        assert!(open_checkpoint(bigger.as_bytes(), &o, &key.verifying_key()).is_err());
        let other = SigningKey::from_bytes(&[8; 32]);
        assert!(open_checkpoint(note.as_bytes(), &o, &other.verifying_key()).is_err());
        let other_origin = origin(&fingerprint_of(&other.verifying_key()).unwrap());
        assert!(open_checkpoint(note.as_bytes(), &other_origin, &key.verifying_key()).is_err());
        assert!(open_checkpoint(b"x", &o, &key.verifying_key()).is_err());
        let k = key_to_base64(&key.verifying_key());
        assert_eq!(key_from_base64(&k), Some(key.verifying_key()));
    }
}
