//! One lease, from the digests the queue names to a verdict: fetch and verify the envelopes,
//! find the input the action signed, check this worker can run every task and has not run
//! the job before, record that it runs it, fetch the input, run it, store its results.
//!
//! Every failure is classified. A cause of this worker's own (its trust file, its clock, a
//! tool, mount or ceiling it lacks, a job it already ran) declines the job; a proof that
//! the queue or a signer lied (bytes that do not match their digest, a bad signature by a
//! trusted key, an input the action does not name, a plan no worker accepts) fails it for
//! good; a failure of the link or of storage is retried.

use std::sync::Arc;

use agenix_proto::envelope::MAX_ENVELOPE_BYTES;
use agenix_proto::job::{JobOutput, Lease, Reports, bounded_reason};
use agenix_proto::report::first_failure;
use agenix_proto::result::{RESULT_SCHEMA, ResultStatement, TaskStatement, sign_result};
use agenix_proto::{
    Digest, InputRef, KeyId, Limits, Trust, VerifiedAction, VerifiedPlan, VerifyError,
    verify_action, verify_plan,
};
use bytes::Bytes;
use tracing::{info, warn};

use super::ledger::{JobKey, Ran};
use super::verify::Lack;
use super::{Verdict, Worker, lock, now_s};
use crate::exec::{Executable, FetchError, execute};
use agenix_host::native::Unfit;

/// The largest result blob carried with a job's result rather than uploaded before it (the
/// size the queue keeps in its store).
const CARRY_MAX: usize = 64 << 10;

/// Removes a job from the set of jobs running here when its run ends, however it ends.
struct Active<'a> {
    worker: &'a Worker,
    key: JobKey,
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        lock(&self.worker.active).remove(&self.key);
    }
}

/// What a verification failure means for the job.
fn classify(what: &'static str, e: &VerifyError) -> Verdict {
    super::metrics::verification_failed(what, e.kind());
    if e.is_local() {
        Verdict::Decline(format!("{what}: {e}"))
    } else {
        Verdict::permanent(format!("{what}: {e}"))
    }
}

/// A failed fetch of something signed: bytes that are not what was signed, or that the
/// queue does not have, are final; a failing link is not.
fn fetch_failure(what: &str, e: FetchError) -> Verdict {
    match e {
        FetchError::Unavailable(m) => Verdict::permanent(format!("{what}: {m}")),
        FetchError::Transient(m) => Verdict::transient(format!("{what}: {m}")),
    }
}

impl Worker {
    /// Verifies and runs one lease.
    pub(super) async fn run_lease(&self, lease: &Lease) -> Verdict {
        match self.try_lease(lease).await {
            Ok(v) | Err(v) => v,
        }
    }

    async fn try_lease(&self, lease: &Lease) -> Result<Verdict, Verdict> {
        let (generation, trust) = lock(&self.trust).current();
        let trust =
            trust.map_err(|e| Verdict::Decline(format!("this worker's trust file: {e}")))?;
        let now = now_s();
        let plan = self.verified_plan(lease.plan, generation, &trust).await?;
        plan.check_time(now).map_err(|e| classify("plan", &e))?;
        let action = self.verified_action(lease.action, generation, &trust).await?;
        action.check_time(now).map_err(|e| classify("action", &e))?;
        action.check_plan(&plan).map_err(|e| Verdict::permanent(e.to_string()))?;
        let input = input_of(&action, lease.input).map_err(Verdict::permanent)?;

        let key = (Digest::of(action.payload()), lease.input);
        // A job without a read-write mount changes nothing outside its sandbox.
        let pure = plan
            .plan()
            .tasks
            .iter()
            .all(|t| t.mounts.iter().all(|m| m.access == agenix_proto::plan::Access::ReadOnly));
        let _active = self.mark_active(key, pure)?;
        let native = |task: &agenix_proto::Task| -> Result<(), (Lack, String)> {
            let agenix_proto::Run::Native(n) = &task.run else { return Ok(()) };
            let Some(host) = &self.native else {
                return Err((
                    Lack::Tool,
                    format!("native tool \"{}\": this worker runs no native tools", n.tool),
                ));
            };
            // Limits over this worker's ceilings are named by the preflight's own check.
            let Ok(limits) = self.settings.resources.limits(task) else { return Ok(()) };
            let env = task.env.keys().map(String::as_str);
            let mounts: Vec<&str> = task.mounts.iter().map(|m| m.path.as_str()).collect();
            host.fits(&n.tool, env, &mounts, &limits, task.scratch).map_err(|u| {
                let lack = match u {
                    Unfit::Env(_) => Lack::Env,
                    Unfit::Mounts(_) => Lack::Mount,
                    Unfit::Limits(_) => Lack::Limit,
                    _ => Lack::Tool,
                };
                (lack, u.to_string())
            })
        };
        super::verify::preflight(&plan, &self.settings.resources, &native)
            .map_err(|e| Verdict::Decline(format!("this worker cannot run it: {e}")))?;

        let stdin = match &input {
            None => Bytes::new(),
            // Capped at the size the action signed: the queue cannot make the worker hold
            // more than the signer meant.
            Some(i) => Bytes::from(
                self.fetch(i.digest, i.size).await.map_err(|e| fetch_failure("input", e))?,
            ),
        };
        let runner = self
            .runner
            .get()
            .cloned()
            .ok_or_else(|| Verdict::transient("the worker is starting"))?;
        // Remembered (durably) before anything runs, until no verifier accepts the action.
        let until =
            action.action().expires_at.saturating_add(agenix_proto::envelope::CLOCK_SKEW_SECS);
        let cannot = |e: &dyn std::fmt::Display| {
            Verdict::transient(format!("cannot record the job as run: {e}"))
        };
        let durable = lock(&self.ledger).append(key, until, now).map_err(|e| cannot(&e))?;
        // The sync blocks: off the runtime's threads, and shared with the jobs starting now.
        tokio::task::spawn_blocking(move || durable.wait())
            .await
            .map_err(|e| cannot(&e))?
            .map_err(|e| cannot(&e))?;
        info!("running");
        let result = execute(Executable::verified(&plan), stdin, runner).await;
        if let Err(e) = lock(&self.ledger).finish(key) {
            warn!(error = %e, "cannot record the job as run to its end");
        }
        let result = result.map_err(|e| Verdict::transient(e.to_string()))?;
        for r in &result.reports {
            let wasm = plan
                .plan()
                .tasks
                .iter()
                .find(|t| t.id == r.task)
                .is_some_and(|t| matches!(t.run, agenix_proto::Run::Wasm(_)));
            super::metrics::task(wasm, r);
        }

        let output_ran =
            result.reports.iter().any(|r| r.task == plan.plan().output && r.outcome.is_success());
        // As the queue keeps it, so that what it keeps is what is signed.
        let failure = first_failure(&result.reports).map(|f| bounded_reason(&f));
        let tasks = result.reports.iter().map(TaskStatement::of).collect();
        let (reports, reports_blob) = Reports::split(result.reports);
        let output = output_ran.then(|| InputRef {
            digest: Digest::of(&result.output),
            size: result.output.len() as u64,
        });
        // What this worker says it did, signed with its own key.
        let statement = ResultStatement {
            schema: RESULT_SCHEMA.into(),
            queue: self.settings.fingerprint,
            job: lease.lease.job,
            epoch: lease.lease.epoch,
            action: Digest::of(action.payload()),
            plan: plan.digest(),
            input,
            succeeded: result.succeeded,
            failure: failure.clone(),
            tasks,
            output: output.clone(),
            worker: KeyId::of(&self.settings.key.verifying_key()),
            at: super::now_ms(),
        };
        let signed = sign_result(&statement, &self.settings.key)
            .map_err(|e| Verdict::transient(format!("cannot sign the result: {e}")))?
            .to_json();
        let result_ref = InputRef { digest: Digest::of(&signed), size: signed.len() as u64 };
        let mut blobs: Vec<&[u8]> = vec![&signed];
        if output_ran {
            blobs.push(&result.output);
        }
        if let Some(r) = &reports_blob {
            blobs.push(r);
        }
        // Small blobs travel with the result (one round trip, stored in the commit that
        // records it); larger ones are uploaded first.
        let (carried, large): (Vec<&[u8]>, Vec<&[u8]>) =
            blobs.into_iter().partition(|b| b.len() <= CARRY_MAX);
        let carried = carried.into_iter().map(<[u8]>::to_vec).collect();
        if !large.is_empty() {
            self.upload(&large)
                .await
                .map_err(|e| Verdict::transient(format!("cannot store the results: {e}")))?;
        }
        let output = JobOutput {
            succeeded: result.succeeded,
            failure,
            reports,
            output,
            result: Some(result_ref),
        };
        Ok(Verdict::Done(Box::new((output, carried))))
    }

    /// Marks the job as running here, unless it is already running or has run here. A job
    /// an earlier process of this worker was running when it stopped runs again only when
    /// it is `pure` (no read-write mount: it changes nothing outside its sandbox).
    fn mark_active(&self, key: JobKey, pure: bool) -> Result<Active<'_>, Verdict> {
        let mut active = lock(&self.active);
        if active.contains(&key) {
            return Err(Verdict::Decline(format!(
                "this worker is already running this job (action {}, input {})",
                key.0, key.1
            )));
        }
        match lock(&self.ledger).ran(&key) {
            Ran::No => {}
            Ran::Interrupted if pure => info!(
                action = %key.0,
                input = key.1,
                "running again a job this worker stopped in: it changes nothing outside its sandbox"
            ),
            Ran::Interrupted => {
                return Err(Verdict::Decline(format!(
                    "this worker stopped while running this job (action {}, input {}), which \
                     can change files outside its sandbox (a read-write mount): it is not run \
                     twice here",
                    key.0, key.1
                )));
            }
            Ran::Yes => {
                return Err(Verdict::Decline(format!(
                    "this worker already ran this job (action {}, input {}) and runs a job at \
                     most once",
                    key.0, key.1
                )));
            }
        }
        active.insert(key);
        Ok(Active { worker: self, key })
    }

    /// The plan in the envelope blob `digest`, verified against the trust file of
    /// `generation` (kept, so that many jobs of one plan fetch and verify it once).
    async fn verified_plan(
        &self,
        digest: Digest,
        generation: u64,
        trust: &Trust,
    ) -> Result<Arc<VerifiedPlan>, Verdict> {
        if let Some(p) = lock(&self.plans).get(&(digest, generation)) {
            return Ok(p);
        }
        let bytes = self
            .fetch(digest, MAX_ENVELOPE_BYTES as u64)
            .await
            .map_err(|e| fetch_failure("plan envelope", e))?;
        // Limits are checked against this worker's ceilings in the preflight (a cause of its
        // own), and the validity period again for every lease.
        let p = verify_plan(&bytes, trust, now_s(), &Limits::ABSOLUTE)
            .map_err(|e| classify("plan", &e))?;
        let p = Arc::new(p);
        lock(&self.plans).insert((digest, generation), p.clone(), bytes.len());
        Ok(p)
    }

    /// The action in the envelope blob `digest`, verified like [`Worker::verified_plan`],
    /// and for this worker's queue.
    async fn verified_action(
        &self,
        digest: Digest,
        generation: u64,
        trust: &Trust,
    ) -> Result<Arc<VerifiedAction>, Verdict> {
        if let Some(a) = lock(&self.actions).get(&(digest, generation)) {
            return Ok(a);
        }
        let bytes = self
            .fetch(digest, MAX_ENVELOPE_BYTES as u64)
            .await
            .map_err(|e| fetch_failure("action envelope", e))?;
        let a = verify_action(&bytes, trust, now_s(), &self.settings.fingerprint)
            .map_err(|e| classify("action", &e))?;
        let a = Arc::new(a);
        lock(&self.actions).insert((digest, generation), a.clone(), bytes.len());
        Ok(a)
    }
}

/// The input a lease's index names in the verified action: none for an action without
/// inputs (index 0), else the one at that index.
pub(super) fn input_of(action: &VerifiedAction, index: u32) -> Result<Option<InputRef>, String> {
    let inputs = &action.action().inputs;
    if inputs.is_empty() && index == 0 {
        return Ok(None);
    }
    usize::try_from(index).ok().and_then(|i| inputs.get(i)).cloned().map(Some).ok_or_else(|| {
        format!("the queue named input {index}, but the action has {} input(s)", inputs.len())
    })
}
