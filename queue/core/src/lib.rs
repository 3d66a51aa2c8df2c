//! The queue's scheduling core: a pure state machine. Every operation takes the time (Unix
//! milliseconds) and, where it needs one, a random number as arguments, updates the
//! in-memory state, and returns the [`Change`]s the caller must make durable before it
//! acknowledges anything.
//!
//! Jobs go queued → leased → succeeded | (queued again after a backoff while attempts
//! remain) | dead; cancelled from queued, or from leased once the worker stops. A lease has
//! an epoch and a deadline; heartbeats extend it; [`Scheduler::tick`] re-queues expired
//! leases; results carrying a stale epoch are refused (fencing).
//!
//! What this crate does not do: no I/O, no clock, no randomness of its own, no threads. The
//! queue's storage and network are adapters around it (`queue/`), so every rule here is
//! tested without sockets or disks.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use agenix_proto::action::InputRef;
use agenix_proto::job::{
    ActionRecord, Capabilities, JobId, JobOutput, JobRecord, JobState, LeaseEpoch, LeaseRef,
    Requirements, WorkerRecord,
};
use agenix_proto::wire::{JobFilter, QueueStats};
use agenix_proto::{ActionId, Digest, Outcome};

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
    /// When a worker (by name, as leases record it) last let a lease expire.
    unresponsive: BTreeMap<String, u64>,
    counts: BTreeMap<&'static str, u64>,
    next_job: u64,
    next_worker: u64,
    submitted: VecDeque<u64>,
    finished: VecDeque<u64>,
}

const MINUTE_MS: u64 = 60_000;
/// Clock skew tolerated around an action's expiry, in ms.
const SKEW_MS: u64 = agenix_proto::envelope::CLOCK_SKEW_SECS * 1000;

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
            next_worker: 1,
            submitted: VecDeque::new(),
            finished: VecDeque::new(),
        }
    }

    /// A scheduler holding what storage kept.
    pub fn load(
        config: Config,
        jobs: impl IntoIterator<Item = JobRecord>,
        actions: impl IntoIterator<Item = (ActionId, ActionRecord)>,
        next_job: u64,
    ) -> Self {
        let mut s = Self::new(config);
        for job in jobs {
            s.next_job = s.next_job.max(job.id.0 + 1);
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
        for input in inputs {
            let id = JobId(self.next_job);
            self.next_job += 1;
            let job = JobRecord {
                id,
                action: sub.action.clone(),
                plan: sub.plan,
                input,
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
                output: None,
            };
            self.index(&job);
            changes.push(Change::Job(job.clone()));
            self.jobs.insert(id, job);
            self.submitted.push_back(now);
            ids.push(id);
        }
        let record =
            ActionRecord { payload: sub.payload, expires_at: sub.expires_at, jobs: ids.clone() };
        self.action_expiry.insert((record.expires_at, sub.action.clone()));
        changes.push(Change::Action(sub.action.clone(), record.clone()));
        self.actions.insert(sub.action, record);
        changes.push(Change::NextJob(self.next_job));
        Ok((ids, false, changes))
    }

    /// Registers a worker; returns its id.
    pub fn register(&mut self, now: u64, capabilities: Capabilities) -> u64 {
        let id = self.next_worker;
        self.next_worker += 1;
        self.workers.insert(id, WorkerRecord { id, capabilities, last_seen: now, leases: 0 });
        id
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
    /// first within a priority.
    pub fn claim(
        &mut self,
        now: u64,
        worker: u64,
        max: u32,
    ) -> Result<(Vec<JobRecord>, Vec<Change>), Refusal> {
        let Some(w) = self.workers.get_mut(&worker) else { return Err(Refusal::NoWorker(worker)) };
        w.last_seen = now;
        let caps = w.capabilities.clone();
        let mut changes = self.promote(now);
        let picked: Vec<JobId> = self
            .ready
            .iter()
            .take(self.config.claim_scan)
            .filter_map(|(_, id)| self.jobs.get(id))
            .filter(|j| j.requirements.met_by(&caps))
            .take(max as usize)
            .map(|j| j.id)
            .collect();
        let deadline = now + self.config.lease_ms;
        let mut leased = Vec::with_capacity(picked.len());
        for id in picked {
            let name = caps.name.clone();
            if let Some(c) = self.transition(id, now, |j| {
                j.attempts += 1;
                j.epoch = LeaseEpoch(j.epoch.0 + 1);
                j.state = JobState::Leased { epoch: j.epoch, worker: name, deadline };
            }) {
                if let Change::Job(j) = &c {
                    leased.push(j.clone());
                }
                changes.push(c);
            }
        }
        if let Some(w) = self.workers.get_mut(&worker) {
            w.leases += leased.len() as u32;
        }
        Ok((leased, changes))
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
            match self.current(lease).map(|j| j.cancel_requested) {
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

    fn release(&mut self, worker: u64) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.leases = w.leases.saturating_sub(1);
        }
    }

    /// Records a job's result, if `lease` is current.
    pub fn complete(
        &mut self,
        now: u64,
        worker: u64,
        lease: LeaseRef,
        output: JobOutput,
    ) -> Result<(JobState, Vec<Change>), Refusal> {
        let cancelled = self.current(lease)?.cancel_requested;
        self.release(worker);
        let change = self.transition(lease.job, now, |j| {
            j.state = if cancelled {
                JobState::Cancelled
            } else if output.succeeded {
                JobState::Succeeded
            } else {
                // The job ran: the same signed inputs would fail the same way, so it is not
                // retried. Its result says what happened to every task.
                JobState::Dead { reason: task_failure(&output) }
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
        let job = self.current(lease)?;
        let (cancelled, attempts, max) = (job.cancel_requested, job.attempts, job.max_attempts);
        self.release(worker);
        let delay = self.backoff(attempts, rand);
        let reason = reason.to_owned();
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
            if let JobState::Leased { worker, .. } = &job.state {
                let worker = worker.clone();
                if let Some(w) = self.workers.values_mut().find(|w| w.capabilities.name == worker) {
                    w.leases = w.leases.saturating_sub(1);
                }
                self.unresponsive.insert(worker, now);
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
        // them anyway.
        let gone: Vec<(u64, ActionId)> = self
            .action_expiry
            .range(..(now.saturating_sub(SKEW_MS), ActionId::from_random([0; 16])))
            .cloned()
            .collect();
        for key in gone {
            self.action_expiry.remove(&key);
            self.actions.remove(&key.1);
            changes.push(Change::DeleteAction(key.1));
        }
        while self.submitted.front().is_some_and(|t| *t + MINUTE_MS < now) {
            self.submitted.pop_front();
        }
        while self.finished.front().is_some_and(|t| *t + MINUTE_MS < now) {
            self.finished.pop_front();
        }
        changes
    }

    /// The plans some remembered job runs.
    pub fn plans_in_use(&self) -> BTreeSet<Digest> {
        self.jobs.values().map(|j| j.plan).collect()
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

    /// A page of jobs after `after`, oldest first, matching `filter`; and where the next page
    /// starts.
    pub fn list(
        &self,
        filter: &JobFilter,
        after: Option<JobId>,
        limit: u32,
    ) -> (Vec<JobRecord>, Option<JobId>) {
        let start = after.map_or(0, |a| a.0 + 1);
        let mut page = Vec::new();
        let mut next = None;
        for job in self.jobs.range(JobId(start)..).map(|(_, j)| j) {
            if filter.state.as_deref().is_some_and(|s| s != job.state.name())
                || filter.action.as_ref().is_some_and(|a| *a != job.action)
            {
                continue;
            }
            if page.len() as u32 >= limit {
                next = page.last().map(|j: &JobRecord| j.id);
                break;
            }
            page.push(job.clone());
        }
        (page, next)
    }

    /// Whether `worker` let a lease expire at or after `since`: a claim it made before then
    /// may be from a process that is gone (killed, its connection not yet timed out), and
    /// must be leased nothing; a worker that is alive claims again.
    pub fn unresponsive_since(&self, worker: u64, since: u64) -> bool {
        self.workers
            .get(&worker)
            .and_then(|w| self.unresponsive.get(&w.capabilities.name))
            .is_some_and(|&at| at >= since)
    }

    /// Registered workers.
    pub fn workers(&self) -> Vec<WorkerRecord> {
        self.workers.values().cloned().collect()
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

/// Why a job that ran did not succeed: its first task that failed by itself (not one skipped
/// or cancelled because of another).
fn task_failure(output: &JobOutput) -> String {
    output
        .reports
        .iter()
        .find(|r| {
            !r.outcome.is_success()
                && !matches!(r.outcome, Outcome::Skipped { .. } | Outcome::Cancelled)
        })
        .map_or_else(
            || "a task did not succeed".to_string(),
            |r| match &r.outcome {
                Outcome::Trapped { message } | Outcome::Refused { reason: message } => {
                    format!("task {}: {}: {message}", r.task, r.outcome.label())
                }
                other => format!("task {}: {}", r.task, other.label()),
            },
        )
}

#[cfg(test)]
mod tests;
