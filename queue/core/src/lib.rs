//! The queue's scheduling core: a pure state machine. Every operation takes the time (Unix
//! milliseconds) and, where it needs one, a random number as arguments, updates the
//! in-memory state, and returns the [`Change`]s the caller must make durable before it
//! acknowledges anything.
//!
//! Jobs go queued → leased → succeeded | (queued again after a backoff while attempts
//! remain) | dead; cancelled from queued, or from leased once the worker stops. A lease has
//! an epoch, a deadline and an owner: heartbeats from its owner extend it; only its owner
//! completes, fails or releases it; [`Scheduler::tick`] re-queues expired leases; anything
//! carrying a stale epoch is refused (fencing). A worker that cannot run a job for a cause
//! of its own releases it: the attempt is not counted and the job goes to other workers
//! first. Jobs whose action expired before they ran are dead.
//!
//! Every step of a job (submitted, leased, completed, failed, released, expired, taken
//! back, cancelled, forgotten; not heartbeats) also yields a [`Change::Audit`]: the audit
//! log records exactly the transitions storage does, in the same transaction.
//!
//! What this crate does not do: no I/O, no clock, no randomness of its own, no threads. The
//! queue's storage and network are adapters around it (`queue/`), so every rule here is
//! tested without sockets or disks.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use agenix_proto::action::InputRef;
use agenix_proto::audit::{Event, JobEvent, Step};
use agenix_proto::job::{
    ActionRecord, Capabilities, Declined, JobId, JobOutput, JobRecord, JobState, Lease, LeaseEpoch,
    LeaseRef, MAX_DECLINED, Requirements, StateKind, WorkerRecord,
};
use agenix_proto::wire::{JobFilter, QueueStats, json_len};
use agenix_proto::{ActionId, Digest, KeyId};

/// Timing and retry settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// How long a lease lasts without a heartbeat.
    pub lease_ms: u64,
    /// How often workers should heartbeat.
    pub heartbeat_ms: u64,
    /// The first retry's backoff bound.
    pub backoff_base_ms: u64,
    /// The largest backoff bound.
    pub backoff_cap_ms: u64,
    /// How long finished jobs are kept.
    pub retention_ms: u64,
    /// Most queued jobs one claim looks at (bounds the cost of skipping jobs this worker
    /// cannot run).
    pub claim_scan: usize,
    /// How long a job a worker declined is offered to other workers before that worker
    /// may be offered it again.
    pub decline_cooldown_ms: u64,
    /// How long a worker that holds no lease is remembered after it was last seen.
    pub worker_ttl_ms: u64,
    /// Most workers remembered at once.
    pub max_workers: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            lease_ms: 30_000,
            heartbeat_ms: 10_000,
            backoff_base_ms: 1_000,
            backoff_cap_ms: 300_000,
            retention_ms: 7 * 24 * 3600 * 1000,
            claim_scan: 10_000,
            decline_cooldown_ms: 60_000,
            worker_ttl_ms: 10 * 60_000,
            max_workers: 10_000,
        }
    }
}

/// Something the caller must make durable.
#[allow(
    clippy::large_enum_variant,
    reason = "nearly every change is a `Job`: boxing it would only add an allocation per change"
)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Store this job (insert or replace).
    Job(JobRecord),
    /// Forget this job.
    DeleteJob(JobId),
    /// Store this action.
    Action(ActionId, ActionRecord),
    /// Forget this action.
    DeleteAction(ActionId),
    /// The next job id to assign.
    NextJob(u64),
    /// Append this to the audit log (the store numbers it and chains it to the entry
    /// before, in the same transaction as the changes it records).
    Audit {
        /// When it happened (Unix ms).
        at: u64,
        /// What happened.
        event: Event,
    },
}

/// A verified action, ready to become jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// The action's id.
    pub action: ActionId,
    /// The digest of its signed payload.
    pub payload: Digest,
    /// The blob holding its signed envelope.
    pub envelope: Digest,
    /// The blob holding its plan's signed envelope.
    pub plan_envelope: Digest,
    /// The plan's components (blobs its jobs need while they may run).
    pub components: Vec<Digest>,
    /// When it expires (Unix ms).
    pub expires_at: u64,
    /// Its plan's digest.
    pub plan: Digest,
    /// Its inputs (none: one job with empty stdin).
    pub inputs: Vec<InputRef>,
    /// Its priority.
    pub priority: i32,
    /// Its attempt budget.
    pub max_attempts: u32,
    /// What a worker needs to run it.
    pub requirements: Requirements,
    /// The key that signed the action (for the audit log).
    pub signer: Option<KeyId>,
}

/// Why an operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The same action id arrived with different bytes.
    #[error("action {0} was already submitted with different content")]
    Conflict(ActionId),
    /// No such job.
    #[error("no job {0}")]
    NoJob(JobId),
    /// No such worker (register first).
    #[error("no worker {0}: register first")]
    NoWorker(u64),
    /// The lease is not the job's current one.
    #[error("lease {epoch:?} of job {job} is not current")]
    Stale {
        /// The job.
        job: JobId,
        /// The epoch presented.
        epoch: LeaseEpoch,
    },
    /// The job is already finished.
    #[error("job {0} is already finished")]
    Finished(JobId),
    /// The lease is held by another worker.
    #[error("the lease of job {0} is held by another worker")]
    NotYours(JobId),
    /// The worker announced something out of bounds.
    #[error("cannot register: {0}")]
    BadWorker(String),
    /// Too many workers are registered.
    #[error("cannot register: {0} workers are registered, the most this queue keeps")]
    TooManyWorkers(usize),
    /// Storage cannot be reached: nothing is decided until the state is read back.
    #[error("storage is unavailable: {0}")]
    Unavailable(String),
    /// The submission's jobs would need ids past the last one (only a damaged store gets
    /// near it: ids are 64-bit and never reused).
    #[error("no job ids are left for {0} more jobs after {1}")]
    NoIds(usize, u64),
}

/// What a heartbeat learned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Beat {
    /// Leases extended.
    pub extended: Vec<LeaseRef>,
    /// Leases whose jobs were cancelled: the worker should stop them and report.
    pub cancelled: Vec<LeaseRef>,
    /// Leases the worker no longer holds.
    pub lost: Vec<LeaseRef>,
}

/// The scheduler's state.
#[derive(Debug, Clone)]
pub struct Scheduler {
    config: Config,
    jobs: table::Jobs,
    ready: BTreeSet<(Reverse<i32>, JobId)>,
    delayed: BTreeSet<(u64, JobId)>,
    leases: BTreeSet<(u64, JobId)>,
    actions: BTreeMap<ActionId, ActionRecord>,
    action_expiry: BTreeSet<(u64, ActionId)>,
    workers: BTreeMap<u64, WorkerRecord>,
    /// When a worker last let a lease expire.
    unresponsive: BTreeMap<u64, u64>,
    counts: BTreeMap<&'static str, u64>,
    next_job: u64,
    submitted: VecDeque<u64>,
    finished: VecDeque<u64>,
}

const MINUTE_MS: u64 = 60_000;
/// Clock skew tolerated around an action's expiry, in ms.
const SKEW_MS: u64 = agenix_proto::envelope::CLOCK_SKEW_SECS * 1000;

/// The first millisecond at which no verifier accepts an action expiring at `expires_at`
/// (Unix ms): verification compares whole seconds, so the action is accepted through the
/// last millisecond of the second `expires_at + skew`.
pub fn action_gone_at(expires_at: u64) -> u64 {
    (expires_at / 1000).saturating_add(SKEW_MS / 1000 + 1).saturating_mul(1000)
}

/// `reason` as the queue keeps it (`agenix_proto::job::bounded_reason`).
fn bounded(reason: &str) -> String {
    agenix_proto::job::bounded_reason(reason)
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            jobs: table::Jobs::default(),
            ready: BTreeSet::new(),
            delayed: BTreeSet::new(),
            leases: BTreeSet::new(),
            actions: BTreeMap::new(),
            action_expiry: BTreeSet::new(),
            workers: BTreeMap::new(),
            unresponsive: BTreeMap::new(),
            counts: BTreeMap::new(),
            next_job: 1,
            submitted: VecDeque::new(),
            finished: VecDeque::new(),
        }
    }

    /// A scheduler holding what storage kept, at `now`. Every lease gets at least a full
    /// lease from `now`: its worker may have been heartbeating while the queue was down.
    pub fn load(
        config: Config,
        now: u64,
        jobs: impl IntoIterator<Item = JobRecord>,
        actions: impl IntoIterator<Item = (ActionId, ActionRecord)>,
        next_job: u64,
    ) -> Self {
        let mut s = Self::new(config);
        for job in jobs {
            s.restore(now, job);
        }
        s.restored(actions, next_job);
        s
    }

    /// Takes back one job storage kept, at `now` (read back one at a time, so that the
    /// records are never all in memory at once): its lease gets at least a full lease from
    /// `now`. Then [`Scheduler::restored`].
    pub fn restore(&mut self, now: u64, mut job: JobRecord) {
        self.next_job = self.next_job.max(job.id.0.saturating_add(1));
        if let JobState::Leased { deadline, .. } = &mut job.state {
            *deadline = (*deadline).max(now.saturating_add(self.config.lease_ms));
        }
        if let Some(old) = self.jobs.get(job.id).map(|j| j.record()) {
            self.unindex(&old);
        }
        self.index(&job);
        self.jobs.insert(job);
    }

    /// Takes back the actions and the next job id storage kept, after its jobs.
    pub fn restored(
        &mut self,
        actions: impl IntoIterator<Item = (ActionId, ActionRecord)>,
        next_job: u64,
    ) {
        self.next_job = self.next_job.max(next_job);
        for (id, a) in actions {
            self.action_expiry.insert((a.expires_at, id.clone()));
            self.actions.insert(id, a);
        }
    }

    /// Takes the jobs and actions of `fresh` (read back from storage after a commit failed,
    /// so that memory keeps nothing storage does not); registered workers stay.
    pub fn replace(&mut self, mut fresh: Self) {
        fresh.workers = std::mem::take(&mut self.workers);
        fresh.unresponsive = std::mem::take(&mut self.unresponsive);
        fresh.submitted = std::mem::take(&mut self.submitted);
        fresh.finished = std::mem::take(&mut self.finished);
        *self = fresh;
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn index(&mut self, job: &JobRecord) {
        match &job.state {
            JobState::Queued { not_before: 0 } => {
                self.ready.insert((Reverse(job.priority), job.id));
            }
            JobState::Queued { not_before } => {
                self.delayed.insert((*not_before, job.id));
            }
            JobState::Leased { deadline, .. } => {
                self.leases.insert((*deadline, job.id));
            }
            _ => {}
        }
        *self.counts.entry(job.state.name()).or_default() += 1;
    }

    fn unindex(&mut self, job: &JobRecord) {
        match &job.state {
            JobState::Queued { not_before: 0 } => {
                self.ready.remove(&(Reverse(job.priority), job.id));
            }
            JobState::Queued { not_before } => {
                self.delayed.remove(&(*not_before, job.id));
            }
            JobState::Leased { deadline, .. } => {
                self.leases.remove(&(*deadline, job.id));
            }
            _ => {}
        }
        if let Some(c) = self.counts.get_mut(job.state.name()) {
            *c = c.saturating_sub(1);
        }
    }

    /// Moves `id` to `state` (keeping every index true) and returns the changes to store:
    /// the job, and the audit entry of `step` (none for steps not audited: heartbeats,
    /// backoffs ending).
    fn transition(
        &mut self,
        id: JobId,
        now: u64,
        step: Option<Step>,
        edit: impl FnOnce(&mut JobRecord),
    ) -> Vec<Change> {
        let Some(mut job) = self.jobs.get(id).map(|j| j.record()) else { return vec![] };
        self.unindex(&job);
        let held = match job.state {
            JobState::Leased { epoch, worker_id, .. } => Some((epoch, worker_id)),
            _ => None,
        };
        let was_terminal = job.state.is_terminal();
        edit(&mut job);
        job.updated_at = now;
        if job.state.is_terminal() && !was_terminal {
            self.finished.push_back(now);
        }
        self.index(&job);
        let mut changes = vec![Change::Job(job.clone())];
        if let Some(step) = step {
            let event = Event::Job(self.job_event(step, held, &job));
            changes.push(Change::Audit { at: now, event });
        }
        self.jobs.insert(job);
        changes
    }

    /// The audit entry of `step` of `job`: the lease it concerns (the one held before, or
    /// the one granted) with its worker's key, and the digests the step produced.
    fn job_event(&self, step: Step, held: Option<(LeaseEpoch, u64)>, job: &JobRecord) -> JobEvent {
        let mut ev = JobEvent::new(job.id, step, job.state.kind());
        let lease = match (step, &job.state) {
            (Step::Leased, JobState::Leased { epoch, worker_id, .. }) => Some((*epoch, *worker_id)),
            _ => held,
        };
        if let Some((epoch, worker)) = lease {
            ev.epoch = Some(epoch);
            ev.worker = self.workers.get(&worker).map(|w| w.key);
        }
        match step {
            Step::Completed => {
                let output = job.output.as_ref();
                ev.output = output.and_then(|o| o.output.as_ref()).map(|i| i.digest);
                ev.result = output.and_then(|o| o.result.as_ref()).map(|i| i.digest);
            }
            Step::Failed | Step::Released => {
                ev.reason = job.last_error.as_deref().map(|r| Digest::of(r.as_bytes()));
            }
            _ => {}
        }
        ev
    }

    /// Turns a verified action into jobs (one per input; one for none). Submitting the same
    /// action again returns its jobs (`true`: a duplicate); the same id with other bytes is
    /// refused.
    pub fn submit(
        &mut self,
        now: u64,
        sub: Submission,
    ) -> Result<(Vec<JobId>, bool, Vec<Change>), Refusal> {
        if let Some(seen) = self.actions.get(&sub.action) {
            return if seen.payload == sub.payload {
                Ok((seen.jobs.clone(), true, vec![]))
            } else {
                Err(Refusal::Conflict(sub.action))
            };
        }
        let n = sub.inputs.len().max(1);
        // Ids are never reused, and a job with a larger one than `next_job` cannot exist.
        let Some(next_job) = self.next_job.checked_add(n as u64) else {
            return Err(Refusal::NoIds(n, self.next_job));
        };
        let mut changes = Vec::with_capacity(2 * n + 2);
        let mut blobs = sub.components;
        blobs.extend(sub.inputs.iter().map(|i| i.digest));
        blobs.sort();
        blobs.dedup();
        let ids = self.jobs.submit(
            self.next_job,
            sub.action.clone(),
            sub.plan,
            sub.requirements,
            sub.priority,
            sub.max_attempts.max(1),
            sub.inputs,
            now,
        );
        self.next_job = next_job;
        for &id in &ids {
            let Some(job) = self.jobs.get(id).map(|j| j.record()) else { continue };
            self.index(&job);
            let mut ev = JobEvent::new(id, Step::Submitted, job.state.kind());
            ev.action = Some(sub.action.clone());
            ev.plan = Some(sub.plan);
            ev.signer = sub.signer;
            ev.input = job.input.as_ref().map(|i| i.digest);
            changes.push(Change::Job(job));
            changes.push(Change::Audit { at: now, event: Event::Job(ev) });
            self.submitted.push_back(now);
        }
        let record = ActionRecord {
            payload: sub.payload,
            envelope: sub.envelope,
            plan_envelope: sub.plan_envelope,
            blobs,
            expires_at: sub.expires_at,
            jobs: ids.clone(),
        };
        self.action_expiry.insert((record.expires_at, sub.action.clone()));
        changes.push(Change::Action(sub.action.clone(), record.clone()));
        self.actions.insert(sub.action, record);
        changes.push(Change::NextJob(self.next_job));
        Ok((ids, false, changes))
    }

    /// Registers the worker `id` (the queue derives it from the worker's key and secret
    /// instance), authenticated by `key`, with what it offers; a worker registering again
    /// keeps its leases.
    pub fn register(
        &mut self,
        now: u64,
        id: u64,
        key: KeyId,
        capabilities: Capabilities,
    ) -> Result<u64, Refusal> {
        capabilities.check().map_err(Refusal::BadWorker)?;
        if let Some(w) = self.workers.get_mut(&id) {
            w.capabilities = capabilities;
            w.key = key;
            w.last_seen = now;
            return Ok(id);
        }
        if self.workers.len() >= self.config.max_workers {
            self.forget_idle_workers(now);
        }
        if self.workers.len() >= self.config.max_workers {
            return Err(Refusal::TooManyWorkers(self.workers.len()));
        }
        let record = WorkerRecord {
            id,
            key,
            capabilities,
            last_seen: now,
            leases: 0,
            declined: 0,
            last_declined: None,
        };
        self.workers.insert(id, record);
        Ok(id)
    }

    /// Forgets workers unseen for the worker TTL that hold no lease.
    fn forget_idle_workers(&mut self, now: u64) {
        let holding: BTreeSet<u64> = self.holders().collect();
        let ttl = self.config.worker_ttl_ms;
        self.workers.retain(|id, w| holding.contains(id) || w.last_seen.saturating_add(ttl) >= now);
        let workers = &self.workers;
        self.unresponsive.retain(|id, _| workers.contains_key(id));
    }

    /// The worker of every lease.
    fn holders(&self) -> impl Iterator<Item = u64> + '_ {
        self.leases.iter().filter_map(|(_, id)| self.jobs.get(*id)?.lease().map(|(_, w)| w))
    }
}

mod leases;
mod table;
mod views;

pub use table::JobRef;

#[cfg(test)]
mod tests;
