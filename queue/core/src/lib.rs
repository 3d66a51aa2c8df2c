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
//! What this crate does not do: no I/O, no clock, no randomness of its own, no threads. The
//! queue's storage and network are adapters around it (`queue/`), so every rule here is
//! tested without sockets or disks.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use agenix_proto::action::InputRef;
use agenix_proto::job::{
    ActionRecord, Capabilities, Declined, JobId, JobOutput, JobRecord, JobState, Lease, LeaseEpoch,
    LeaseRef, MAX_DECLINED, MAX_REASON, Requirements, WorkerRecord,
};
use agenix_proto::wire::{JobFilter, QueueStats, json_len};
use agenix_proto::{ActionId, Digest};

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
    jobs: BTreeMap<JobId, JobRecord>,
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

/// `reason` as the queue keeps it: terminal controls removed, at most [`MAX_REASON`] bytes.
fn bounded(reason: &str) -> String {
    let clean = agenix_proto::text::clean(reason);
    agenix_proto::text::truncate(&clean, MAX_REASON).into_owned()
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            jobs: BTreeMap::new(),
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
        let grace = now.saturating_add(config.lease_ms);
        for mut job in jobs {
            s.next_job = s.next_job.max(job.id.0 + 1);
            if let JobState::Leased { deadline, .. } = &mut job.state {
                *deadline = (*deadline).max(grace);
            }
            s.index(&job);
            s.jobs.insert(job.id, job);
        }
        s.next_job = s.next_job.max(next_job);
        for (id, a) in actions {
            s.action_expiry.insert((a.expires_at, id.clone()));
            s.actions.insert(id, a);
        }
        s
    }

    /// Replaces jobs and actions with what storage holds, at `now` (after a commit failed,
    /// so that memory keeps nothing storage does not); registered workers stay.
    pub fn reload(
        &mut self,
        now: u64,
        jobs: impl IntoIterator<Item = JobRecord>,
        actions: impl IntoIterator<Item = (ActionId, ActionRecord)>,
        next_job: u64,
    ) {
        let mut fresh = Self::load(self.config, now, jobs, actions, next_job);
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

    /// Moves `id` to `state` (keeping every index true) and returns the change to store.
    fn transition(
        &mut self,
        id: JobId,
        now: u64,
        edit: impl FnOnce(&mut JobRecord),
    ) -> Option<Change> {
        let mut job = self.jobs.remove(&id)?;
        self.unindex(&job);
        let was_terminal = job.state.is_terminal();
        edit(&mut job);
        job.updated_at = now;
        if job.state.is_terminal() && !was_terminal {
            self.finished.push_back(now);
        }
        self.index(&job);
        let change = Change::Job(job.clone());
        self.jobs.insert(id, job);
        Some(change)
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
        let inputs: Vec<Option<InputRef>> = if sub.inputs.is_empty() {
            vec![None]
        } else {
            sub.inputs.iter().cloned().map(Some).collect()
        };
        let mut changes = Vec::with_capacity(inputs.len() + 2);
        let mut ids = Vec::with_capacity(inputs.len());
        for (index, input) in (0u32..).zip(inputs) {
            let id = JobId(self.next_job);
            self.next_job += 1;
            let job = JobRecord {
                id,
                action: sub.action.clone(),
                plan: sub.plan,
                input,
                index,
                priority: sub.priority,
                max_attempts: sub.max_attempts.max(1),
                attempts: 0,
                epoch: LeaseEpoch(0),
                state: JobState::Queued { not_before: 0 },
                cancel_requested: false,
                requirements: sub.requirements.clone(),
                submitted_at: now,
                updated_at: now,
                last_error: None,
                declined: vec![],
                output: None,
            };
            self.index(&job);
            changes.push(Change::Job(job.clone()));
            self.jobs.insert(id, job);
            self.submitted.push_back(now);
            ids.push(id);
        }
        let mut blobs = sub.components;
        blobs.extend(sub.inputs.iter().map(|i| i.digest));
        blobs.sort();
        blobs.dedup();
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

    /// Registers the worker `id` (the queue derives it from the worker's secret instance)
    /// with what it offers; a worker registering again keeps its leases.
    pub fn register(
        &mut self,
        now: u64,
        id: u64,
        capabilities: Capabilities,
    ) -> Result<u64, Refusal> {
        capabilities.check().map_err(Refusal::BadWorker)?;
        if let Some(w) = self.workers.get_mut(&id) {
            w.capabilities = capabilities;
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
        self.leases.iter().filter_map(|(_, id)| match self.jobs.get(id)?.state {
            JobState::Leased { worker_id, .. } => Some(worker_id),
            _ => None,
        })
    }

    /// Whether `job`'s action is still remembered, so its jobs may run.
    fn runnable(&self, job: &JobRecord, now: u64) -> bool {
        self.actions.get(&job.action).is_some_and(|a| now < action_gone_at(a.expires_at))
    }

    /// Buries a job that can no longer run because its action expired.
    fn bury_expired(&mut self, id: JobId, now: u64) -> Option<Change> {
        self.transition(id, now, |j| {
            j.state = JobState::Dead {
                reason: "its action expired before it could run (submit it again)".into(),
            };
        })
    }

    /// Moves delayed jobs whose backoff is over to the ready set.
    fn promote(&mut self, now: u64) -> Vec<Change> {
        let due: Vec<JobId> =
            self.delayed.range(..=(now, JobId(u64::MAX))).map(|(_, id)| *id).collect();
        due.into_iter()
            .filter_map(|id| {
                self.transition(id, now, |j| j.state = JobState::Queued { not_before: 0 })
            })
            .collect()
    }

    /// Leases up to `max` ready jobs that `worker` can run, highest priority first, oldest
    /// first within a priority, as long as their leases together take at most `budget`
    /// bytes on the wire. Jobs the worker declined lately are left for others; jobs whose
    /// action has expired are buried.
    pub fn claim(
        &mut self,
        now: u64,
        worker: u64,
        max: u32,
        budget: usize,
    ) -> Result<(Vec<Lease>, Vec<Change>), Refusal> {
        let Some(w) = self.workers.get_mut(&worker) else { return Err(Refusal::NoWorker(worker)) };
        w.last_seen = now;
        let caps = w.capabilities.clone();
        let mut changes = self.promote(now);
        let cooldown = self.config.decline_cooldown_ms;
        let mut expired = Vec::new();
        let mut picked = Vec::new();
        for (_, id) in self.ready.iter().take(self.config.claim_scan) {
            if picked.len() >= max as usize {
                break;
            }
            let Some(j) = self.jobs.get(id) else { continue };
            if !self.runnable(j, now) {
                expired.push(*id);
            } else if j.requirements.met_by(&caps)
                && !j
                    .declined
                    .iter()
                    .any(|d| d.worker_id == worker && d.at.saturating_add(cooldown) > now)
            {
                picked.push(*id);
            }
        }
        for id in expired {
            changes.extend(self.bury_expired(id, now));
        }
        let deadline = now + self.config.lease_ms;
        let mut leases = Vec::with_capacity(picked.len());
        let mut used = 0;
        for id in picked {
            let Some(job) = self.jobs.get(&id) else { continue };
            let Some(action) = self.actions.get(&job.action) else { continue };
            let lease = Lease {
                lease: LeaseRef { job: id, epoch: LeaseEpoch(job.epoch.0 + 1) },
                attempt: job.attempts + 1,
                deadline,
                plan: action.plan_envelope,
                action: action.envelope,
                input: job.index,
            };
            // The separator between leases counts too.
            let size = json_len(&lease).saturating_add(1);
            if !leases.is_empty() && used + size > budget {
                break;
            }
            used += size;
            let name = caps.name.clone();
            changes.extend(self.transition(id, now, |j| {
                j.attempts += 1;
                j.epoch = lease.lease.epoch;
                j.state =
                    JobState::Leased { epoch: j.epoch, worker: name, worker_id: worker, deadline };
            }));
            leases.push(lease);
        }
        Ok((leases, changes))
    }

    /// The job of `lease`, if the lease is current and held by `worker`.
    fn owned(&self, worker: u64, lease: LeaseRef) -> Result<&JobRecord, Refusal> {
        let job = self.current(lease)?;
        match job.state {
            JobState::Leased { worker_id, .. } if worker_id == worker => Ok(job),
            _ => Err(Refusal::NotYours(lease.job)),
        }
    }

    fn current(&self, lease: LeaseRef) -> Result<&JobRecord, Refusal> {
        let job = self.jobs.get(&lease.job).ok_or(Refusal::NoJob(lease.job))?;
        match &job.state {
            JobState::Leased { epoch, .. } if *epoch == lease.epoch => Ok(job),
            s if s.is_terminal() => Err(Refusal::Finished(lease.job)),
            _ => Err(Refusal::Stale { job: lease.job, epoch: lease.epoch }),
        }
    }

    /// Extends the worker's current leases; reports cancelled and lost ones.
    pub fn heartbeat(
        &mut self,
        now: u64,
        worker: u64,
        leases: &[LeaseRef],
    ) -> Result<(Beat, Vec<Change>), Refusal> {
        let Some(w) = self.workers.get_mut(&worker) else { return Err(Refusal::NoWorker(worker)) };
        w.last_seen = now;
        let mut beat = Beat::default();
        let mut changes = vec![];
        let deadline = now + self.config.lease_ms;
        for &lease in leases {
            match self.owned(worker, lease).map(|j| j.cancel_requested) {
                Ok(true) => beat.cancelled.push(lease),
                Ok(false) => {
                    if let Some(c) = self.transition(lease.job, now, |j| {
                        if let JobState::Leased { deadline: d, .. } = &mut j.state {
                            *d = deadline;
                        }
                    }) {
                        changes.push(c);
                    }
                    beat.extended.push(lease);
                }
                Err(_) => beat.lost.push(lease),
            }
        }
        Ok((beat, changes))
    }

    /// Records a job's result, if `lease` is current.
    pub fn complete(
        &mut self,
        now: u64,
        worker: u64,
        lease: LeaseRef,
        output: JobOutput,
    ) -> Result<(JobState, Vec<Change>), Refusal> {
        let cancelled = self.owned(worker, lease)?.cancel_requested;
        let mut output = output;
        output.failure = output.failure.as_deref().map(bounded);
        let change = self.transition(lease.job, now, |j| {
            j.state = if cancelled {
                JobState::Cancelled
            } else if output.succeeded {
                JobState::Succeeded
            } else {
                // The job ran: the same signed inputs would fail the same way, so it is not
                // retried. Its result says what happened to every task.
                let reason = output.failure.clone();
                JobState::Dead { reason: reason.unwrap_or_else(|| "a task did not succeed".into()) }
            };
            j.output = Some(output);
        });
        Ok(self.state_and(lease.job, change))
    }

    fn state_and(&self, job: JobId, change: Option<Change>) -> (JobState, Vec<Change>) {
        let state = self.jobs.get(&job).map(|j| j.state.clone()).unwrap_or(JobState::Cancelled);
        (state, change.into_iter().collect())
    }

    /// Full-jitter exponential backoff for the `attempts`-th failure: uniform in
    /// `0..=min(cap, base * 2^(attempts-1))`.
    fn backoff(&self, attempts: u32, rand: u64) -> u64 {
        let shift = attempts.saturating_sub(1).min(40);
        let bound = self
            .config
            .backoff_base_ms
            .saturating_mul(1u64 << shift)
            .min(self.config.backoff_cap_ms);
        rand % (bound + 1)
    }

    /// Records that a job could not be run, if `lease` is current: re-queued after a
    /// backoff while attempts remain and the failure is retryable, else dead.
    pub fn fail(
        &mut self,
        now: u64,
        worker: u64,
        lease: LeaseRef,
        reason: &str,
        retryable: bool,
        rand: u64,
    ) -> Result<(JobState, Vec<Change>), Refusal> {
        let job = self.owned(worker, lease)?;
        let (cancelled, attempts, max) = (job.cancel_requested, job.attempts, job.max_attempts);
        let delay = self.backoff(attempts, rand);
        let reason = bounded(reason);
        let change = self.transition(lease.job, now, |j| {
            j.last_error = Some(reason.clone());
            j.state = if cancelled {
                JobState::Cancelled
            } else if retryable && attempts < max {
                JobState::Queued { not_before: now + delay.max(1) }
            } else if retryable {
                JobState::Dead { reason: format!("failed {attempts} of {max} attempts: {reason}") }
            } else {
                JobState::Dead { reason }
            };
        });
        Ok(self.state_and(lease.job, change))
    }

    /// Takes back a job `worker` could not run for a cause of its own (its trust file, its
    /// clock, a tool or mount it lacks, a job it already ran): the attempt is not counted,
    /// the worker is remembered as having declined it, and other workers are offered it
    /// first.
    pub fn release(
        &mut self,
        now: u64,
        worker: u64,
        lease: LeaseRef,
        reason: &str,
    ) -> Result<(JobState, Vec<Change>), Refusal> {
        self.owned(worker, lease)?;
        let reason = bounded(reason);
        let name = self.workers.get(&worker).map(|w| w.capabilities.name.clone());
        if let Some(w) = self.workers.get_mut(&worker) {
            w.declined += 1;
            w.last_declined = Some(reason.clone());
        }
        let declined = Declined {
            worker: name.unwrap_or_default(),
            worker_id: worker,
            reason: reason.clone(),
            at: now,
        };
        let change = self.requeue(lease.job, now, Some(declined));
        Ok(self.state_and(lease.job, change))
    }

    /// Takes back leases that never reached `worker` (the answer carrying them could not be
    /// sent): the attempts are not counted.
    pub fn unclaim(&mut self, now: u64, worker: u64, leases: &[LeaseRef]) -> Vec<Change> {
        let mut changes = Vec::new();
        for &lease in leases {
            if self.owned(worker, lease).is_ok() {
                changes.extend(self.requeue(lease.job, now, None));
            }
        }
        changes
    }

    /// Puts a leased job back in the queue as if this lease had not been granted (a
    /// cancelled one ends cancelled).
    fn requeue(&mut self, job: JobId, now: u64, declined: Option<Declined>) -> Option<Change> {
        self.transition(job, now, |j| {
            j.attempts = j.attempts.saturating_sub(1);
            j.state = if j.cancel_requested {
                JobState::Cancelled
            } else {
                JobState::Queued { not_before: 0 }
            };
            if let Some(d) = declined {
                j.last_error = Some(format!("declined by worker {}: {}", d.worker, d.reason));
                j.declined.retain(|old| old.worker_id != d.worker_id);
                if j.declined.len() >= MAX_DECLINED {
                    j.declined.remove(0);
                }
                j.declined.push(d);
            }
        })
    }

    /// Cancels a job: a queued one at once; a leased one once its worker stops (or its lease
    /// expires).
    pub fn cancel(&mut self, now: u64, job: JobId) -> Result<(JobState, Vec<Change>), Refusal> {
        let state = self.jobs.get(&job).ok_or(Refusal::NoJob(job))?.state.clone();
        let change = match state {
            JobState::Queued { .. } => self.transition(job, now, |j| j.state = JobState::Cancelled),
            JobState::Leased { .. } => self.transition(job, now, |j| j.cancel_requested = true),
            _ => return Err(Refusal::Finished(job)),
        };
        Ok(self.state_and(job, change))
    }

    /// The reaper: re-queues (or buries) jobs whose lease expired, promotes jobs whose
    /// backoff is over, forgets finished jobs past retention and actions past expiry.
    pub fn tick(&mut self, now: u64) -> Vec<Change> {
        let mut changes = self.promote(now);
        let expired: Vec<JobId> = self.leases.range(..(now, JobId(0))).map(|(_, id)| *id).collect();
        for id in expired {
            let Some(job) = self.jobs.get(&id) else { continue };
            let (cancelled, attempts, max) = (job.cancel_requested, job.attempts, job.max_attempts);
            if let JobState::Leased { worker_id, .. } = job.state {
                self.unresponsive.insert(worker_id, now);
            }
            changes.extend(self.transition(id, now, |j| {
                j.last_error = Some("lease expired: the worker stopped heartbeating".into());
                j.state = if cancelled {
                    JobState::Cancelled
                } else if attempts < max {
                    JobState::Queued { not_before: 0 }
                } else {
                    JobState::Dead {
                        reason: format!("lease expired on attempt {attempts} of {max}"),
                    }
                };
            }));
        }
        // Retention of finished jobs.
        let old: Vec<JobId> = self
            .jobs
            .values()
            .filter(|j| {
                j.state.is_terminal() && j.updated_at.saturating_add(self.config.retention_ms) < now
            })
            .map(|j| j.id)
            .collect();
        for id in old {
            if let Some(job) = self.jobs.remove(&id) {
                self.unindex(&job);
                changes.push(Change::DeleteJob(id));
            }
        }
        // Actions past expiry (and the skew) can no longer be replayed: verification refuses
        // them anyway. Their jobs that have not run never will.
        let gone: Vec<(u64, ActionId)> = self
            .action_expiry
            .iter()
            .take_while(|(expires_at, _)| action_gone_at(*expires_at) <= now)
            .cloned()
            .collect();
        for key in gone {
            self.action_expiry.remove(&key);
            if let Some(action) = self.actions.remove(&key.1) {
                for id in action.jobs {
                    let waiting = self
                        .jobs
                        .get(&id)
                        .is_some_and(|j| matches!(j.state, JobState::Queued { .. }));
                    if waiting {
                        changes.extend(self.bury_expired(id, now));
                    }
                }
            }
            changes.push(Change::DeleteAction(key.1));
        }
        self.forget_idle_workers(now);
        while self.submitted.front().is_some_and(|t| *t + MINUTE_MS < now) {
            self.submitted.pop_front();
        }
        while self.finished.front().is_some_and(|t| *t + MINUTE_MS < now) {
            self.finished.pop_front();
        }
        changes
    }

    /// Every blob something remembered refers to: the envelopes, components and inputs of
    /// actions that may still run, and the results of remembered jobs.
    pub fn blobs_in_use(&self) -> BTreeSet<Digest> {
        let mut used = BTreeSet::new();
        for a in self.actions.values() {
            used.extend([a.envelope, a.plan_envelope]);
            used.extend(a.blobs.iter().copied());
        }
        for j in self.jobs.values() {
            if let Some(o) = &j.output {
                used.extend(o.blobs().map(|b| b.digest));
            }
        }
        used
    }

    /// When [`Scheduler::tick`] next has work: the earliest backoff end or lease deadline.
    pub fn next_wakeup(&self) -> Option<u64> {
        let a = self.delayed.first().map(|(t, _)| *t);
        let b = self.leases.first().map(|(t, _)| *t);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether any job is ready to claim now.
    pub fn has_ready(&self, now: u64) -> bool {
        !self.ready.is_empty() || self.delayed.first().is_some_and(|(t, _)| *t <= now)
    }

    /// One job.
    pub fn job(&self, id: JobId) -> Option<&JobRecord> {
        self.jobs.get(&id)
    }

    /// A page of jobs after `after`, oldest first, matching `filter`: at most `limit` of
    /// them, together at most `budget` bytes on the wire (always at least one); and where
    /// the next page starts.
    pub fn list(
        &self,
        filter: &JobFilter,
        after: Option<JobId>,
        limit: u32,
        budget: usize,
    ) -> (Vec<JobRecord>, Option<JobId>) {
        let start = after.map_or(0, |a| a.0.saturating_add(1));
        let jobs = self.jobs.range(JobId(start)..).map(|(_, j)| j).filter(|job| {
            filter.state.is_none_or(|s| s == job.state.kind())
                && filter.action.as_ref().is_none_or(|a| *a == job.action)
        });
        let (page, more) = page(jobs.cloned(), limit, budget);
        let next = if more { page.last().map(|j| j.id) } else { None };
        (page, next)
    }

    /// Whether `worker` let a lease expire at or after `since`: a claim it made before then
    /// may be from a process that is gone (killed, its connection not yet timed out), and
    /// must be leased nothing; a worker that is alive claims again.
    pub fn unresponsive_since(&self, worker: u64, since: u64) -> bool {
        self.unresponsive.get(&worker).is_some_and(|&at| at >= since)
    }

    /// A page of registered workers after `after`, by id, paged like [`Scheduler::list`].
    pub fn workers(
        &self,
        after: Option<u64>,
        limit: u32,
        budget: usize,
    ) -> (Vec<WorkerRecord>, Option<u64>) {
        let mut held: BTreeMap<u64, u32> = BTreeMap::new();
        for id in self.holders() {
            *held.entry(id).or_default() += 1;
        }
        let start = after.map_or(0, |a| a.saturating_add(1));
        let workers = self.workers.range(start..).map(|(id, w)| WorkerRecord {
            leases: held.get(id).copied().unwrap_or(0),
            ..w.clone()
        });
        let (page, more) = page(workers, limit, budget);
        let next = if more { page.last().map(|w| w.id) } else { None };
        (page, next)
    }

    /// Counts by state and the last minute's throughput.
    pub fn stats(&self, now: u64) -> QueueStats {
        let recent = |q: &VecDeque<u64>| q.iter().filter(|t| **t + MINUTE_MS >= now).count() as u64;
        QueueStats {
            jobs: self
                .counts
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            submitted_last_minute: recent(&self.submitted),
            finished_last_minute: recent(&self.finished),
            workers: self.workers.values().filter(|w| w.last_seen + MINUTE_MS >= now).count()
                as u64,
        }
    }

    /// Checks every index against the jobs (for tests: the invariants the scheduler keeps).
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
        for job in self.jobs.values() {
            *counts.entry(job.state.name()).or_default() += 1;
            let (r, d, l) = (
                self.ready.contains(&(Reverse(job.priority), job.id)),
                matches!(job.state, JobState::Queued { not_before } if self.delayed.contains(&(not_before, job.id))),
                matches!(&job.state, JobState::Leased { deadline, .. } if self.leases.contains(&(*deadline, job.id))),
            );
            let ok = match &job.state {
                JobState::Queued { not_before: 0 } => r && !d && !l,
                JobState::Queued { .. } => d && !r && !l,
                JobState::Leased { epoch, .. } => l && !r && !d && *epoch == job.epoch,
                _ => !r && !d && !l,
            };
            if !ok {
                return Err(format!("job {} is indexed wrongly for {:?}", job.id, job.state));
            }
            if job.attempts > job.max_attempts {
                return Err(format!(
                    "job {} has {} attempts of {}",
                    job.id, job.attempts, job.max_attempts
                ));
            }
        }
        let indexed = self.ready.len() + self.delayed.len() + self.leases.len();
        let live = self.jobs.values().filter(|j| !j.state.is_terminal()).count();
        if indexed != live {
            return Err(format!("{indexed} indexed, {live} live"));
        }
        let kept: BTreeMap<&'static str, u64> =
            self.counts.iter().filter(|(_, n)| **n > 0).map(|(k, v)| (*k, *v)).collect();
        if kept != counts {
            return Err(format!("counts {kept:?} != {counts:?}"));
        }
        Ok(())
    }
}

/// Up to `limit` items that together take at most `budget` bytes of JSON (at least one,
/// whatever its size), and whether more were left.
fn page<T: serde::Serialize>(
    items: impl Iterator<Item = T>,
    limit: u32,
    budget: usize,
) -> (Vec<T>, bool) {
    let mut page = Vec::new();
    let mut used = 0usize;
    for item in items {
        // The separator between items counts too.
        let size = json_len(&item).saturating_add(1);
        if page.len() as u32 >= limit || (!page.is_empty() && used.saturating_add(size) > budget) {
            return (page, true);
        }
        used = used.saturating_add(size);
        page.push(item);
    }
    (page, false)
}

#[cfg(test)]
mod tests;
