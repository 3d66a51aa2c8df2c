//! What the queue writes to its audit log itself, beside the scheduler's job steps: each
//! change to its trust file, key by key (enrollments, revocations, removals, changes), and
//! checkpoints of the log signed with its identity key; and the answer to `history`.
//!
//! With several queue nodes on one store, entries are numbered by the store's transaction,
//! so the log stays one log, and checkpoints are signed by the identity the nodes serve.

use std::sync::{Arc, Mutex};

use agenix_proto::audit::{self, Event, Proven, TreeHead};
use agenix_proto::job::JobId;
use agenix_proto::keys::SigningKey;
use agenix_proto::wire::{ErrorCode, PAGE_BYTES, Response, json_len};
use agenix_proto::{Digest, Trust};
use agenix_queue_core::Change;
use tracing::{debug, info, warn};

use crate::limits::lock;
use crate::server::{Queue, error, now_ms};
use crate::store::Write;

/// Most entries in one page of a job's history.
const HISTORY_PAGE: usize = 64;

/// The queue's own audit state.
pub(crate) struct Auditor {
    identity: SigningKey,
    origin: String,
    state: Mutex<State>,
    /// Held while a trust change is recorded, so concurrent requests record it once.
    recording: tokio::sync::Mutex<()>,
}

struct State {
    /// The trust file as last recorded in the log, and its digest.
    trust: Option<(Digest, Arc<Trust>)>,
    /// The size of the last checkpoint signed.
    signed: u64,
}

impl Auditor {
    /// `seen` is the trust file as the log last recorded it (from storage).
    pub(crate) fn new(identity: SigningKey, origin: String, seen: Option<Vec<u8>>) -> Self {
        let trust = seen.and_then(|bytes| {
            let digest = Digest::of(&bytes);
            Trust::from_json(&bytes).ok().map(|t| (digest, Arc::new(t)))
        });
        Self {
            identity,
            origin,
            state: Mutex::new(State { trust, signed: 0 }),
            recording: tokio::sync::Mutex::new(()),
        }
    }
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor").field("origin", &self.origin).finish_non_exhaustive()
    }
}

/// What the queue checks of its audit log when it starts, in `O(log n)`: the latest
/// checkpoint must be its own (else the store is another queue's, and it refuses to
/// start), and the log must still hold that checkpoint's tree (else it says, loudly, that
/// the log was changed; `agq audit verify` names the first fault).
pub(crate) fn check_at_start(
    store: &dyn crate::store::Store,
    origin: &str,
    key: &agenix_proto::keys::VerifyingKey,
) -> anyhow::Result<()> {
    let Some((size, note)) = store.latest_checkpoint()? else { return Ok(()) };
    let head = audit::open_checkpoint(note.as_bytes(), origin, key).map_err(|e| {
        anyhow::anyhow!(
            "the store's audit log was not signed by this queue ({e}): is its queue.redb \
             another queue's?"
        )
    })?;
    let now = store.audit_head()?;
    if now.size < size {
        tracing::error!(
            entries = now.size,
            signed = size,
            "the audit log ends before its latest checkpoint: entries were removed (agq audit verify names them)"
        );
    } else if head.size != size || store.audit_root(size)? != head.root {
        tracing::error!(
            signed = size,
            "the audit log no longer gives the root its latest checkpoint signed: it was changed (agq audit verify names the first fault)"
        );
    }
    Ok(())
}

impl Queue {
    /// Makes sure `trust` is recorded in the audit log before anything is decided by it:
    /// a trust file that changed takes effect only once its change is durable in the log.
    pub(crate) async fn audited(&self, trust: &Arc<Trust>) -> Result<(), Response> {
        let seen = |q: &Self| {
            let state = lock(&q.auditor.state);
            state.trust.as_ref().is_some_and(|(_, t)| Arc::ptr_eq(t, trust))
        };
        if seen(self) {
            return Ok(());
        }
        let _one = self.auditor.recording.lock().await;
        if seen(self) || self.audit_trust(trust).await {
            return Ok(());
        }
        Err(error(
            ErrorCode::Unavailable,
            "the queue's trust file changed, and the change could not be recorded in its \
             audit log yet: try again",
        ))
    }

    /// Records a new reading of the trust file, if it differs from the one last recorded:
    /// one entry per key that changed, then the file's digest. False when it could not be
    /// stored (the reaper tries again).
    async fn audit_trust(&self, trust: &Arc<Trust>) -> bool {
        let bytes = trust.to_json();
        let digest = Digest::of(&bytes);
        let old = {
            let mut state = lock(&self.auditor.state);
            match &state.trust {
                Some((d, _)) if *d == digest => {
                    state.trust = Some((digest, trust.clone()));
                    return true;
                }
                Some((_, t)) => t.clone(),
                None => Arc::new(Trust::new()),
            }
        };
        let now = now_ms();
        let mut writes: Vec<Write> = audit::trust_changes(&old, trust)
            .into_iter()
            .map(|k| Write::Change(Change::Audit { at: now, event: Event::Key(k) }))
            .collect();
        let changed = writes.len();
        writes.push(Write::Change(Change::Audit { at: now, event: Event::Trust { file: digest } }));
        writes.push(Write::TrustSeen(bytes));
        let Ok(((), done)) = self.apply(|_| Ok(((), vec![])), writes) else { return false };
        match Self::durable(done).await {
            Ok(()) => {
                info!(keys = changed, file = %digest, "trust file change recorded in the audit log");
                lock(&self.auditor.state).trust = Some((digest, trust.clone()));
                true
            }
            Err(e) => {
                warn!(answer = ?e, "cannot record a trust file change in the audit log");
                false
            }
        }
    }

    /// Signs a checkpoint of the log as it is, if it grew since the last one.
    pub async fn checkpoint(&self) {
        let store = self.store.clone();
        let head = match tokio::task::spawn_blocking(move || store.audit_head()).await {
            Ok(Ok(head)) => head,
            Ok(Err(e)) => {
                return warn!(error = %e, "cannot read the audit log to sign a checkpoint");
            }
            Err(e) => return warn!(error = %e, "cannot read the audit log to sign a checkpoint"),
        };
        if head.size == 0 || head.size <= lock(&self.auditor.state).signed {
            return;
        }
        let note = match audit::sign_checkpoint(&self.auditor.origin, head, &self.auditor.identity)
        {
            Ok(note) => note,
            Err(e) => return warn!(error = %e, "cannot sign a checkpoint"),
        };
        let TreeHead { size, root } = head;
        let write = Write::Checkpoint { size, note };
        let Ok(((), done)) = self.apply(|_| Ok(((), vec![])), vec![write]) else { return };
        match Self::durable(done).await {
            Ok(()) => {
                debug!(size, %root, "audit checkpoint signed");
                let mut state = lock(&self.auditor.state);
                state.signed = state.signed.max(size);
            }
            Err(e) => warn!(answer = ?e, "cannot store an audit checkpoint"),
        }
    }

    /// One page of `job`'s audit entries, with their proofs in the latest checkpoint.
    pub(crate) async fn history(&self, job: JobId, after: Option<u64>) -> Response {
        let store = self.store.clone();
        let read = tokio::task::spawn_blocking(move || store.history(job, after, HISTORY_PAGE));
        let history = match read.await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                return error(ErrorCode::Unavailable, format!("cannot read the audit log: {e}"));
            }
            Err(e) => {
                return error(ErrorCode::Unavailable, format!("cannot read the audit log: {e}"));
            }
        };
        let known = match self.current() {
            Ok(s) => s.job(job).is_some(),
            Err(r) => return crate::server::refusal(r),
        };
        if history.entries.is_empty() && after.is_none() && !known {
            return error(ErrorCode::NotFound, format!("the audit log has no entry for job {job}"));
        }
        let fetched = history.entries.len();
        let mut entries = Vec::new();
        let mut used = 0;
        for (seq, bytes, proof) in history.entries {
            let Ok(entry) = String::from_utf8(bytes) else {
                return error(ErrorCode::Unavailable, format!("audit entry {seq} is not text"));
            };
            let e = Proven { seq, entry, proof };
            used += json_len(&e) + 1;
            if used > PAGE_BYTES && !entries.is_empty() {
                break;
            }
            entries.push(e);
        }
        // A page cut by bytes, or as long as the store was asked for, may have a sequel.
        let more = entries.len() < fetched || fetched >= HISTORY_PAGE;
        let next = entries.last().filter(|_| more).map(|last| last.seq);
        Response::History {
            entries,
            checkpoint: history.checkpoint.map(|(_, note)| note),
            key: audit::key_to_base64(&self.auditor.identity.verifying_key()),
            next,
        }
    }
}
