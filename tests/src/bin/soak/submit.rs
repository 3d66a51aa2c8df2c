//! Submitting: `agx --json submit` for each planned action, through the faults. A
//! submission that printed job ids is acknowledged; one that failed is not, and the same
//! inputs go again later as a new submission (a new action).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use agenix_proto::Digest;
use agenix_proto::job::JobId;
use anyhow::{Context as _, Result};

use crate::cluster::Agx;
use crate::workload::{self, Expected, Kind, Plans, Rng, Size};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One action to submit.
#[derive(Debug, Clone)]
pub(crate) struct ActionPlan {
    pub(crate) seq: usize,
    pub(crate) kind: Kind,
    /// One per input: its size, or `None` for an input of the queue's largest blob size.
    pub(crate) sizes: Vec<Option<Size>>,
    /// Submit the plan file (agx locks, signs and uploads the AUs) rather than the copy
    /// signed beforehand.
    pub(crate) plan_file: bool,
    pub(crate) seed: u64,
}

/// An input on disk and what its job must output.
#[derive(Debug, Clone)]
pub(crate) struct InputInfo {
    pub(crate) digest: Digest,
    pub(crate) expected: Expected,
}

/// An acknowledged submission.
#[derive(Debug, Clone)]
pub(crate) struct Submission {
    pub(crate) seq: usize,
    pub(crate) kind: Kind,
    pub(crate) plan: Digest,
    pub(crate) jobs: Vec<JobId>,
    pub(crate) inputs: Vec<InputInfo>,
}

/// How long after its database is back the queue is given to reconnect.
pub(crate) const DB_GRACE: Duration = Duration::from_secs(5);

/// What the submitters and the fault loop share.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) pending: Mutex<VecDeque<ActionPlan>>,
    pub(crate) acked: Mutex<Vec<Submission>>,
    /// Inputs of every submission that failed (their jobs may exist all the same, if
    /// the queue stored them and only its answer was lost), to check those jobs too.
    pub(crate) unacked_inputs: Mutex<Vec<(Kind, InputInfo)>>,
    pub(crate) acked_jobs: AtomicU64,
    /// Jobs of every submission made, acknowledged or not.
    pub(crate) submitted_jobs: AtomicU64,
    pub(crate) submissions: AtomicU64,
    /// Submissions that failed while agq was being killed or restarted.
    pub(crate) failed_in_faults: AtomicU64,
    /// Submissions that failed with agq and its database up the whole time.
    pub(crate) failed_otherwise: Mutex<Vec<String>>,
    /// Actions given up on after too many failures.
    pub(crate) gave_up: Mutex<Vec<String>>,
    /// Odd while agq is down: bumped when it is killed and again once it serves.
    pub(crate) agq_generation: AtomicU64,
    /// Odd from a database restart until the queue has had time to reconnect ([`DB_GRACE`]
    /// after the database is back): a submission then may fail as "not stored".
    pub(crate) db_generation: AtomicU64,
    pub(crate) stop: AtomicBool,
    pub(crate) submitters_left: AtomicUsize,
}

/// How one submitter submits.
#[derive(Debug, Clone)]
pub(crate) struct Submitter {
    pub(crate) agx: Agx,
    pub(crate) plans: Plans,
    pub(crate) inputs_dir: PathBuf,
    pub(crate) max_attempts: u32,
    pub(crate) max_blob: u64,
    pub(crate) keep: bool,
    pub(crate) verbose_failures: usize,
}

/// Most times one action is submitted before the soak gives up on it.
const MAX_TRIES: u32 = 20;

impl Submitter {
    /// Takes actions from `shared.pending` until none is left (or the soak stops).
    pub(crate) fn run(&self, shared: &Shared, id: usize) -> Result<()> {
        let mut rng = Rng::new(0x5eed ^ id as u64);
        loop {
            if shared.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let Some(plan) = lock(&shared.pending).pop_front() else { return Ok(()) };
            let files = self.prepare(&plan)?;
            let mut tries = 0;
            loop {
                if shared.stop.load(Ordering::SeqCst) {
                    return Ok(());
                }
                tries += 1;
                match self.submit_once(shared, &plan, &files)? {
                    Some(sub) => {
                        shared.acked_jobs.fetch_add(sub.jobs.len() as u64, Ordering::SeqCst);
                        lock(&shared.acked).push(sub);
                        break;
                    }
                    None if tries >= MAX_TRIES => {
                        lock(&shared.gave_up).push(format!(
                            "action {} ({}, {} inputs): not acknowledged after {tries} submissions",
                            plan.seq,
                            plan.kind.name(),
                            files.len()
                        ));
                        break;
                    }
                    None => {
                        // Later, as a new submission: a deliberate pause while agq comes
                        // back, not a wait for anything in particular.
                        std::thread::sleep(Duration::from_millis(rng.range(200, 1500)));
                    }
                }
            }
            if !self.keep {
                for (path, _) in &files {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }

    /// Writes the action's inputs.
    fn prepare(&self, plan: &ActionPlan) -> Result<Vec<(PathBuf, InputInfo)>> {
        let mut rng = Rng::new(plan.seed);
        let mut files = Vec::with_capacity(plan.sizes.len());
        for (i, size) in plan.sizes.iter().enumerate() {
            let path = self.inputs_dir.join(format!("a{}-{i}.in", plan.seq));
            let uniq = (plan.seq as u64) << 20 | i as u64;
            let info = match size {
                None => {
                    let (digest, expected) = workload::huge(&path, self.max_blob, uniq, &mut rng)?;
                    InputInfo { digest, expected }
                }
                Some(size) => {
                    // Under the queue's limit even with the line generated inputs end with.
                    let size = match *size {
                        Size::Bytes(n) => Size::Bytes(n.min(self.max_blob.saturating_sub(256))),
                        Size::Empty => Size::Empty,
                    };
                    let (input, expected) = workload::generate(plan.kind, size, uniq, &mut rng);
                    std::fs::write(&path, &input)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    InputInfo { digest: Digest::of(&input), expected }
                }
            };
            files.push((path, info));
        }
        Ok(files)
    }

    /// One `agx submit`; the submission when acknowledged.
    fn submit_once(
        &self,
        shared: &Shared,
        plan: &ActionPlan,
        files: &[(PathBuf, InputInfo)],
    ) -> Result<Option<Submission>> {
        let (plan_path, store) = if plan.plan_file {
            (self.plans.file(plan.kind).to_path_buf(), "store")
        } else {
            (self.plans.signed(plan.kind), "store-empty")
        };
        let mut args: Vec<std::ffi::OsString> = vec![
            "--json".into(),
            "submit".into(),
            plan_path.into(),
            "--max-attempts".into(),
            self.max_attempts.to_string().into(),
        ];
        for (path, _) in files {
            args.push("--input".into());
            args.push(path.into());
        }
        let huge = plan.sizes.iter().any(Option::is_none);
        // Long enough for agx to wait out throttling (a minute per request) and to upload
        // the largest blobs.
        let limit = Duration::from_secs(if huge { 900 } else { 300 });
        let generations = || {
            (
                shared.agq_generation.load(Ordering::SeqCst),
                shared.db_generation.load(Ordering::SeqCst),
            )
        };
        let before = generations();
        shared.submissions.fetch_add(1, Ordering::SeqCst);
        shared.submitted_jobs.fetch_add(files.len() as u64, Ordering::SeqCst);
        let start = Instant::now();
        let ran = self.agx.run(&args, store, limit)?;
        let answer = ran.records().into_iter().find(|r| r["type"] == "submitted");
        if let (true, Some(answer)) = (ran.ok(), answer) {
            let jobs: Vec<JobId> = serde_json::from_value(answer["data"]["jobs"].clone())
                .context("agx submit printed no job ids")?;
            let digest: Digest = answer["data"]["plan"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .context("agx submit printed no plan digest")?;
            anyhow::ensure!(
                jobs.len() == files.len(),
                "agx submit printed {} job ids for {} inputs",
                jobs.len(),
                files.len()
            );
            return Ok(Some(Submission {
                seq: plan.seq,
                kind: plan.kind,
                plan: digest,
                jobs,
                inputs: files.iter().map(|(_, i)| i.clone()).collect(),
            }));
        }
        lock(&shared.unacked_inputs).extend(files.iter().map(|(_, i)| (plan.kind, i.clone())));
        if generations() != before || before.0 % 2 == 1 || before.1 % 2 == 1 {
            shared.failed_in_faults.fetch_add(1, Ordering::SeqCst);
        } else {
            let what = format!(
                "action {} ({}, {} inputs) after {:.1} s: {}",
                plan.seq,
                plan.kind.name(),
                files.len(),
                start.elapsed().as_secs_f64(),
                ran.why()
            );
            let mut failed = lock(&shared.failed_otherwise);
            if failed.len() < self.verbose_failures {
                println!("  submission failed with agq and its database up: {what}");
            }
            failed.push(what);
        }
        Ok(None)
    }
}
