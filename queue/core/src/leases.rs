//! The scheduler's lease life: which jobs may run, claims routed by capability, heartbeats,
//! results, failures with backoff, releases, cancellation, and the reaper (`tick`).

use super::*;

impl Scheduler {
    /// Whether `job`'s action is still remembered, so its jobs may run.
    fn runnable(&self, job: JobRef<'_>, now: u64) -> bool {
        self.actions.get(job.action()).is_some_and(|a| now < action_gone_at(a.expires_at))
    }

    /// Buries a job that can no longer run because its action expired.
    fn bury_expired(&mut self, id: JobId, now: u64) -> Vec<Change> {
        self.transition(id, now, Some(Step::ActionExpired), |j| {
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
            .flat_map(|id| {
                self.transition(id, now, None, |j| j.state = JobState::Queued { not_before: 0 })
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
            let Some(j) = self.jobs.get(*id) else { continue };
            if !self.runnable(j, now) {
                expired.push(*id);
            } else if j.requirements().met_by(&caps)
                && !j
                    .declined()
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
            let Some(job) = self.jobs.get(id) else { continue };
            let Some(action) = self.actions.get(job.action()) else { continue };
            let lease = Lease {
                lease: LeaseRef { job: id, epoch: LeaseEpoch(job.epoch().0 + 1) },
                attempt: job.attempts() + 1,
                deadline,
                plan: action.plan_envelope,
                action: action.envelope,
                input: job.index(),
            };
            // The separator between leases counts too.
            let size = json_len(&lease).saturating_add(1);
            if !leases.is_empty() && used + size > budget {
                break;
            }
            used += size;
            let name = caps.name.clone();
            changes.extend(self.transition(id, now, Some(Step::Leased), |j| {
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
    pub fn owned(&self, worker: u64, lease: LeaseRef) -> Result<JobRef<'_>, Refusal> {
        let job = self.current(lease)?;
        match job.lease() {
            Some((_, worker_id)) if worker_id == worker => Ok(job),
            _ => Err(Refusal::NotYours(lease.job)),
        }
    }

    fn current(&self, lease: LeaseRef) -> Result<JobRef<'_>, Refusal> {
        let job = self.jobs.get(lease.job).ok_or(Refusal::NoJob(lease.job))?;
        match job.lease() {
            Some((epoch, _)) if epoch == lease.epoch => Ok(job),
            _ if job.is_terminal() => Err(Refusal::Finished(lease.job)),
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
            match self.owned(worker, lease).map(|j| j.cancel_requested()) {
                Ok(true) => beat.cancelled.push(lease),
                Ok(false) => {
                    changes.extend(self.transition(lease.job, now, None, |j| {
                        if let JobState::Leased { deadline: d, .. } = &mut j.state {
                            *d = deadline;
                        }
                    }));
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
        let cancelled = self.owned(worker, lease)?.cancel_requested();
        let mut output = output;
        output.failure = output.failure.as_deref().map(bounded);
        let change = self.transition(lease.job, now, Some(Step::Completed), |j| {
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

    fn state_and(&self, job: JobId, changes: Vec<Change>) -> (JobState, Vec<Change>) {
        let state = self.jobs.get(job).map(|j| j.state()).unwrap_or(JobState::Cancelled);
        (state, changes)
    }

    /// Full-jitter exponential backoff for the `attempts`-th failure: uniform in
    /// `0..=min(cap, base * 2^(attempts-1))`.
    pub(crate) fn backoff(&self, attempts: u32, rand: u64) -> u64 {
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
        let (cancelled, attempts, max) =
            (job.cancel_requested(), job.attempts(), job.max_attempts());
        let delay = self.backoff(attempts, rand);
        let reason = bounded(reason);
        let change = self.transition(lease.job, now, Some(Step::Failed), |j| {
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
        let change = self.requeue(lease.job, now, Step::Released, Some(declined));
        Ok(self.state_and(lease.job, change))
    }

    /// Takes back leases that never reached `worker` (the answer carrying them could not be
    /// sent): the attempts are not counted.
    pub fn unclaim(&mut self, now: u64, worker: u64, leases: &[LeaseRef]) -> Vec<Change> {
        let mut changes = Vec::new();
        for &lease in leases {
            if self.owned(worker, lease).is_ok() {
                changes.extend(self.requeue(lease.job, now, Step::Reclaimed, None));
            }
        }
        changes
    }

    /// Forgets every worker whose key `allowed` refuses (a revoked key) and takes back its
    /// leases: their jobs go to other workers, the attempts not counted (what such a worker
    /// would report is refused anyway). Returns the workers forgotten and the changes.
    pub fn disown(
        &mut self,
        now: u64,
        allowed: impl Fn(&KeyId) -> bool,
    ) -> (Vec<u64>, Vec<Change>) {
        let gone: Vec<u64> =
            self.workers.iter().filter(|(_, w)| !allowed(&w.key)).map(|(id, _)| *id).collect();
        if gone.is_empty() {
            return (gone, vec![]);
        }
        let held: Vec<JobId> = self
            .leases
            .iter()
            .filter_map(|(_, id)| match self.jobs.get(*id)?.lease() {
                Some((_, worker_id)) if gone.contains(&worker_id) => Some(*id),
                _ => None,
            })
            .collect();
        let mut changes = Vec::new();
        for job in held {
            changes.extend(self.requeue(job, now, Step::Reclaimed, None));
        }
        for id in &gone {
            self.workers.remove(id);
            self.unresponsive.remove(id);
        }
        (gone, changes)
    }

    /// Puts a leased job back in the queue as if this lease had not been granted (a
    /// cancelled one ends cancelled).
    fn requeue(
        &mut self,
        job: JobId,
        now: u64,
        step: Step,
        declined: Option<Declined>,
    ) -> Vec<Change> {
        self.transition(job, now, Some(step), |j| {
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
        let state = self.jobs.get(job).ok_or(Refusal::NoJob(job))?.kind();
        let change = match state {
            StateKind::Queued => self.transition(job, now, Some(Step::Cancelled), |j| {
                j.state = JobState::Cancelled;
            }),
            StateKind::Leased => self.transition(job, now, Some(Step::CancelRequested), |j| {
                j.cancel_requested = true;
            }),
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
            let Some(job) = self.jobs.get(id) else { continue };
            let (cancelled, attempts, max) =
                (job.cancel_requested(), job.attempts(), job.max_attempts());
            if let Some((_, worker_id)) = job.lease() {
                self.unresponsive.insert(worker_id, now);
            }
            changes.extend(self.transition(id, now, Some(Step::Expired), |j| {
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
            .iter()
            .filter(|j| {
                j.is_terminal() && j.updated_at().saturating_add(self.config.retention_ms) < now
            })
            .map(|j| j.id())
            .collect();
        for id in old {
            if let Some(job) = self.jobs.remove(id) {
                self.unindex(&job);
                changes.push(Change::DeleteJob(id));
                let event = Event::Job(JobEvent::new(id, Step::Forgotten, job.state.kind()));
                changes.push(Change::Audit { at: now, event });
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
                    let waiting = self.jobs.get(id).is_some_and(|j| j.kind() == StateKind::Queued);
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
}
