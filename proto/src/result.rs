//! Signed results: what a worker says it did with one lease, signed with its own key in a
//! DSSE envelope of its own payload type, so a result's origin can be checked by anyone who
//! trusts the worker's key (the queue, which enrolled it; a planner, with `agx trust add
//! worker.pub --role worker`), and never by the word of whoever stored it.
//!
//! The statement binds the queue (its fingerprint), the job and the lease's epoch, the
//! digest of the action's signed payload, the plan's digest, the job's input, each task's
//! outcome and measurements (the digests of its stdout and stderr among them), the output,
//! the worker's key id and the worker's clock. [`ResultStatement::check`] compares a
//! statement with the result it accompanies, field by field.

use serde::{Deserialize, Serialize};

use crate::action::{Fingerprint, InputRef};
use crate::digest::Digest;
use crate::envelope::{Envelope, VerifyError};
use crate::ids::TaskId;
use crate::job::{JobId, JobOutput, LeaseEpoch};
use crate::keys::{KeyId, SigningKey};
use crate::plan::MAX_TASKS;
use crate::report::{Outcome, TaskReport};
use crate::trust::{Role, Trust};

/// The payload type of a signed result.
pub const RESULT_PAYLOAD_TYPE: &str = "application/vnd.agenix.result.v1+json";
/// The `schema` value of a v1 result statement.
pub const RESULT_SCHEMA: &str = "agenix.result/v1";
/// Largest result statement, in bytes: 100 tasks with every text at its bound fit.
pub const MAX_RESULT_BYTES: usize = 1 << 20;

/// One task, as the result statement holds it: its report without the stderr text, whose
/// digest stands for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskStatement {
    /// The task.
    pub task: TaskId,
    /// How it ended.
    pub outcome: Outcome,
    /// The digest of its stdout.
    pub stdout_digest: Digest,
    /// How many bytes it wrote to stdout.
    pub stdout_bytes: u64,
    /// The digest of its stderr as reported (capped and cleaned).
    pub stderr_digest: Digest,
    /// Wasm fuel consumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel_consumed: Option<u64>,
    /// Wall-clock time, in milliseconds.
    pub wall_ms: u64,
    /// The most memory it held at once, in bytes.
    pub peak_memory_bytes: u64,
}

impl TaskStatement {
    /// What `report` says, as a statement.
    pub fn of(report: &TaskReport) -> Self {
        Self {
            task: report.task.clone(),
            outcome: report.outcome.clone(),
            stdout_digest: report.stdout_digest,
            stdout_bytes: report.stdout_bytes,
            stderr_digest: Digest::of(report.stderr.as_bytes()),
            fuel_consumed: report.fuel_consumed,
            wall_ms: report.wall_ms,
            peak_memory_bytes: report.peak_memory_bytes,
        }
    }
}

/// What a worker signs about one lease it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultStatement {
    /// [`RESULT_SCHEMA`].
    pub schema: String,
    /// The queue it reports to.
    pub queue: Fingerprint,
    /// The job.
    pub job: JobId,
    /// The epoch of the lease it ran under.
    pub epoch: LeaseEpoch,
    /// The digest of the action's signed payload.
    pub action: Digest,
    /// The plan's digest.
    pub plan: Digest,
    /// The job's input (none for an action without inputs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<InputRef>,
    /// Whether every task exited 0.
    pub succeeded: bool,
    /// Why not, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// One statement per task, in plan order.
    pub tasks: Vec<TaskStatement>,
    /// The output task's stdout (absent when it did not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<InputRef>,
    /// The key id of the worker that signs it.
    pub worker: KeyId,
    /// The worker's clock when it signed (Unix ms).
    pub at: u64,
}

/// Why a signed result is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResultError {
    /// The envelope or its signature.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The statement breaks a rule of its format.
    #[error("invalid result statement: {0}")]
    Invalid(String),
    /// Signed by one key, naming another as its worker.
    #[error("the result names worker {named} but is signed by {signer}")]
    Signer {
        /// The key id the statement names.
        named: KeyId,
        /// The key that signed it.
        signer: KeyId,
    },
    /// The statement says something other than what it must.
    #[error("the signed result's {what} is {found}, not {expected}")]
    Mismatch {
        /// Which field.
        what: &'static str,
        /// What it should be.
        expected: String,
        /// What the statement says.
        found: String,
    },
}

impl ResultError {
    fn mismatch(
        what: &'static str,
        expected: impl std::fmt::Debug,
        found: impl std::fmt::Debug,
    ) -> Self {
        Self::Mismatch { what, expected: format!("{expected:?}"), found: format!("{found:?}") }
    }
}

impl ResultStatement {
    /// The statement's bytes, as signed.
    pub fn to_payload(&self) -> Vec<u8> {
        // Plain data with string keys always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The rules of the format: its schema and at most [`MAX_TASKS`] tasks (its size is
    /// bounded when signed and parsed: [`MAX_RESULT_BYTES`]).
    pub fn validate(&self) -> Result<(), ResultError> {
        if self.schema != RESULT_SCHEMA {
            return Err(ResultError::Invalid(format!(
                "schema must be \"{RESULT_SCHEMA}\", found {:?}",
                crate::text::truncate(&self.schema, 80)
            )));
        }
        if self.tasks.len() > MAX_TASKS {
            return Err(ResultError::Invalid(format!(
                "{} tasks, over the limit of {MAX_TASKS}",
                self.tasks.len()
            )));
        }
        Ok(())
    }

    /// Checks that this statement is about `output` and says what it says: the same
    /// success, failure, output and, when given, per-task reports.
    pub fn check(
        &self,
        output: &JobOutput,
        reports: Option<&[TaskReport]>,
    ) -> Result<(), ResultError> {
        if self.succeeded != output.succeeded {
            return Err(ResultError::mismatch("success", output.succeeded, self.succeeded));
        }
        if self.failure != output.failure {
            return Err(ResultError::mismatch("failure", &output.failure, &self.failure));
        }
        if self.output != output.output {
            return Err(ResultError::mismatch("output", &output.output, &self.output));
        }
        if let Some(reports) = reports {
            if reports.len() != self.tasks.len() {
                return Err(ResultError::mismatch("task count", reports.len(), self.tasks.len()));
            }
            for (report, signed) in reports.iter().zip(&self.tasks) {
                let said = TaskStatement::of(report);
                if &said != signed {
                    return Err(ResultError::Mismatch {
                        what: "report of a task",
                        expected: format!("{said:?}"),
                        found: format!("{signed:?}"),
                    });
                }
            }
        }
        Ok(())
    }
}

/// A result whose signature, signer and format have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedResult {
    statement: ResultStatement,
    signer: KeyId,
}

impl VerifiedResult {
    /// What the worker signed.
    pub fn statement(&self) -> &ResultStatement {
        &self.statement
    }
    /// The worker's key id.
    pub fn signer(&self) -> KeyId {
        self.signer
    }
}

/// Signs a result statement with the worker's key, after checking its rules and size.
pub fn sign_result(statement: &ResultStatement, key: &SigningKey) -> Result<Envelope, ResultError> {
    statement.validate()?;
    let payload = statement.to_payload();
    if payload.len() > MAX_RESULT_BYTES {
        return Err(ResultError::Invalid(format!(
            "{} bytes, over the limit of {MAX_RESULT_BYTES}",
            payload.len()
        )));
    }
    Ok(Envelope::sign(RESULT_PAYLOAD_TYPE, &payload, key))
}

/// Verifies a result envelope: payload type, a signature by a key `trust` holds for the
/// `worker` role (unrevoked, inside its period at `now`, Unix seconds), the statement's
/// format, and that the statement names the key that signed it.
pub fn verify_result(
    envelope: &[u8],
    trust: &Trust,
    now: u64,
) -> Result<VerifiedResult, ResultError> {
    let env = Envelope::from_json(envelope)?;
    let (payload, signer) = env.verify(RESULT_PAYLOAD_TYPE, trust, Role::Worker, now)?;
    let statement: ResultStatement = crate::json::from_slice(&payload, MAX_RESULT_BYTES)
        .map_err(|e| ResultError::Invalid(e.to_string()))?;
    statement.validate()?;
    if statement.worker != signer {
        return Err(ResultError::Signer { named: statement.worker, signer });
    }
    Ok(VerifiedResult { statement, signer })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{MAX_REASON, Reports};
    use crate::keys::signing_key_from_seed;

    fn report(task: &str) -> TaskReport {
        TaskReport {
            task: task.parse().unwrap(),
            outcome: Outcome::Exited { code: 0 },
            stdout_digest: Digest::of(b"out"),
            stdout_bytes: 3,
            stderr: "warn\n".into(),
            fuel_consumed: Some(7),
            wall_ms: 2,
            peak_memory_bytes: 1 << 20,
        }
    }

    fn statement(worker: &SigningKey, reports: &[TaskReport]) -> ResultStatement {
        ResultStatement {
            schema: RESULT_SCHEMA.into(),
            queue: Fingerprint(Digest::of(b"queue")),
            job: JobId(4),
            epoch: LeaseEpoch(2),
            action: Digest::of(b"action"),
            plan: Digest::of(b"plan"),
            input: Some(InputRef { digest: Digest::of(b"in"), size: 2 }),
            succeeded: true,
            failure: None,
            tasks: reports.iter().map(TaskStatement::of).collect(),
            output: Some(InputRef { digest: Digest::of(b"out"), size: 3 }),
            worker: KeyId::of(&worker.verifying_key()),
            at: 1_700_000_000_000,
        }
    }

    fn trusting(keys: &[&SigningKey]) -> Trust {
        let mut t = Trust::new();
        for (i, k) in keys.iter().enumerate() {
            t.add(&format!("w{i}"), k.verifying_key(), &[Role::Worker]).unwrap();
        }
        t
    }

    #[test]
    fn a_signed_result_verifies_and_matches_what_it_accompanies() {
        let w = signing_key_from_seed(&[1; 32]);
        let reports = vec![report("a"), report("b")];
        let s = statement(&w, &reports);
        let env = sign_result(&s, &w).unwrap().to_json();
        let v = verify_result(&env, &trusting(&[&w]), 0).unwrap();
        assert_eq!((v.statement(), v.signer()), (&s, KeyId::of(&w.verifying_key())));
        let output = JobOutput {
            succeeded: true,
            failure: None,
            reports: Reports::Inline(reports.clone()),
            output: s.output,
            result: None,
        };
        v.statement().check(&output, Some(&reports)).unwrap();
        // Each field the statement binds is checked.
        let mut stderr = reports.clone();
        stderr[1].stderr = "something else\n".into();
        assert!(matches!(
            v.statement().check(&output, Some(&stderr)),
            Err(ResultError::Mismatch { what: "report of a task", .. })
        ));
        let other = JobOutput {
            output: Some(InputRef { digest: Digest::of(b"x"), size: 1 }),
            ..output.clone()
        };
        assert!(matches!(
            v.statement().check(&other, None),
            Err(ResultError::Mismatch { what: "output", .. })
        ));
        let failed = JobOutput { succeeded: false, ..output };
        assert!(matches!(
            v.statement().check(&failed, None),
            Err(ResultError::Mismatch { what: "success", .. })
        ));
    }

    /// The attacks: a statement altered after signing; signed by another worker (not
    /// trusted, or trusted but naming the first); a plan signer's key, which is no worker.
    #[test]
    fn altered_or_misattributed_results_are_refused() {
        let a = signing_key_from_seed(&[1; 32]);
        let b = signing_key_from_seed(&[2; 32]);
        let s = statement(&a, &[report("a")]);
        let env = sign_result(&s, &a).unwrap();
        let mut altered = env.clone();
        let mut changed = s.clone();
        changed.succeeded = false;
        altered.payload = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            changed.to_payload(),
        );
        let err = verify_result(&altered.to_json(), &trusting(&[&a]), 0).unwrap_err();
        assert!(matches!(err, ResultError::Verify(VerifyError::BadSignature { .. })), "{err}");
        // B signs a statement naming A: refused, naming both.
        let forged = sign_result(&s, &b).unwrap().to_json();
        let err = verify_result(&forged, &trusting(&[&a, &b]), 0).unwrap_err();
        assert_eq!(
            err,
            ResultError::Signer {
                named: KeyId::of(&a.verifying_key()),
                signer: KeyId::of(&b.verifying_key())
            }
        );
        // B unknown to the verifier.
        let err = verify_result(&forged, &trusting(&[&a]), 0).unwrap_err();
        assert!(matches!(err, ResultError::Verify(VerifyError::UnknownSigner { .. })), "{err}");
        // A trusted for plans only is no worker.
        let mut plans = Trust::new();
        plans.add("planner", a.verifying_key(), &Role::SIGNING).unwrap();
        let err = verify_result(&env.to_json(), &plans, 0).unwrap_err();
        assert!(matches!(err, ResultError::Verify(VerifyError::NotPermitted { .. })), "{err}");
        // A plan envelope is not a result.
        let err = verify_result(
            &Envelope::sign(crate::envelope::PLAN_PAYLOAD_TYPE, &s.to_payload(), &a).to_json(),
            &trusting(&[&a]),
            0,
        )
        .unwrap_err();
        assert!(matches!(err, ResultError::Verify(VerifyError::PayloadType { .. })), "{err}");
    }

    /// At the format's limits and past them: 100 tasks with texts of 4096 bytes sign and
    /// verify; a 101st task, or a statement past [`MAX_RESULT_BYTES`], is refused at
    /// signing, and an envelope carrying one is refused at verification.
    #[test]
    fn statements_at_their_limits_sign_and_past_them_are_refused() {
        let w = signing_key_from_seed(&[3; 32]);
        let mut reports: Vec<TaskReport> =
            (0..MAX_TASKS).map(|i| report(&format!("t{i}"))).collect();
        for r in &mut reports {
            r.outcome = Outcome::Trapped { message: "m".repeat(MAX_REASON) };
        }
        let mut s = statement(&w, &reports);
        s.failure = Some("f".repeat(MAX_REASON));
        let env = sign_result(&s, &w).unwrap().to_json();
        assert!(env.len() <= crate::envelope::MAX_ENVELOPE_BYTES, "{}", env.len());
        assert!(verify_result(&env, &trusting(&[&w]), 0).is_ok());
        let mut many = s.clone();
        many.tasks.push(TaskStatement::of(&report("one-more")));
        assert!(matches!(sign_result(&many, &w), Err(ResultError::Invalid(_))));
        let mut huge = s;
        huge.failure = Some("f".repeat(MAX_RESULT_BYTES));
        assert!(matches!(sign_result(&huge, &w), Err(ResultError::Invalid(_))));
        let env = Envelope::sign(RESULT_PAYLOAD_TYPE, &huge.to_payload(), &w).to_json();
        assert!(verify_result(&env, &trusting(&[&w]), 0).is_err());
    }
}
