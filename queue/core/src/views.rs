//! What the scheduler shows: the blobs in use, when to wake, jobs and workers page by
//! page, stats, and its own invariants (for tests).

use super::*;

impl Scheduler {
    /// Every blob something remembered refers to: the envelopes, components and inputs of
    /// actions that may still run, and the results of remembered jobs.
    pub fn blobs_in_use(&self) -> BTreeSet<Digest> {
        let mut used = BTreeSet::new();
        for a in self.actions.values() {
            used.extend([a.envelope, a.plan_envelope]);
            used.extend(a.blobs.iter().copied());
        }
        for j in self.jobs.iter() {
            if let Some(o) = j.output() {
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

    /// One job, whole.
    pub fn job(&self, id: JobId) -> Option<JobRecord> {
        self.jobs.get(id).map(|j| j.record())
    }

    /// One job, borrowed.
    pub fn job_ref(&self, id: JobId) -> Option<JobRef<'_>> {
        self.jobs.get(id)
    }

    /// One accepted action.
    pub fn action(&self, id: &ActionId) -> Option<&ActionRecord> {
        self.actions.get(id)
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
        let jobs = self.jobs.from(JobId(start)).filter(|job| matches(filter, job));
        let (page, more) = page(jobs.map(|j| j.record()), limit, budget);
        let next = if more { page.last().map(|j| j.id) } else { None };
        (page, next)
    }

    /// The newest jobs before `before` (all when `None`), newest first, matching `filter`:
    /// at most `limit` of them, looking at no more than `scan` jobs (the caller holds the
    /// scheduler meanwhile). What the dashboard shows. The second value is where to go on
    /// from when the scan stopped short of `limit` with older jobs left.
    pub fn newest(
        &self,
        filter: &JobFilter,
        before: Option<JobId>,
        limit: usize,
        scan: usize,
    ) -> (Vec<JobRecord>, Option<JobId>) {
        let end = before.map_or(u64::MAX, |b| b.0);
        let mut found = Vec::new();
        let mut last = None;
        for (n, job) in self.jobs.before(JobId(end)).enumerate() {
            if found.len() >= limit {
                return (found, None);
            }
            if n >= scan {
                return (found, last);
            }
            last = Some(job.id());
            if matches(filter, &job) {
                found.push(job.record());
            }
        }
        (found, None)
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
        for job in self.jobs.iter().map(|j| j.record()) {
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
        let live = self.jobs.iter().filter(|j| !j.is_terminal()).count();
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

/// Whether `job` passes `filter`.
fn matches(filter: &JobFilter, job: &JobRef<'_>) -> bool {
    filter.state.is_none_or(|s| s == job.kind())
        && filter.action.as_ref().is_none_or(|a| a == job.action())
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
