//! How the embedded store writes job and action records: one version byte, then the record
//! in postcard (the compact binary serde format wasmtime keeps its own metadata in), with
//! digests as their 32 bytes and ids as numbers. A queued job takes about 150 bytes
//! against some 1,300 as JSON, and a million of them read back in a fraction of the time.
//!
//! A job's result stays JSON inside the record: it is read only for finished jobs, and its
//! reports change shape with the protocol. Records written as JSON by earlier releases
//! (they begin with `{`) are still read; each is written anew in this form when it next
//! changes.

use agenix_proto::action::InputRef;
use agenix_proto::job::{
    ActionRecord, Declined, JobId, JobOutput, JobRecord, JobState, LeaseEpoch, Requirements,
};
use agenix_proto::{ActionId, Digest};
use serde::{Deserialize, Serialize};

use crate::store::StoreError;

/// The first byte of a record in this encoding (JSON begins with `{`).
const V1: u8 = 1;

#[derive(Serialize, Deserialize)]
struct Job<'a> {
    id: u64,
    action: &'a str,
    plan: [u8; 32],
    input: Option<([u8; 32], u64)>,
    index: u32,
    priority: i32,
    max_attempts: u32,
    attempts: u32,
    epoch: u64,
    state: State<'a>,
    cancel_requested: bool,
    requirements: Requirements,
    submitted_at: u64,
    updated_at: u64,
    last_error: Option<&'a str>,
    declined: Vec<Declined>,
    /// The result's JSON.
    output: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
enum State<'a> {
    Queued { not_before: u64 },
    Leased { epoch: u64, worker: &'a str, worker_id: u64, deadline: u64 },
    Succeeded,
    Dead { reason: &'a str },
    Cancelled,
}

#[derive(Serialize, Deserialize)]
struct Action {
    payload: [u8; 32],
    envelope: [u8; 32],
    plan_envelope: [u8; 32],
    blobs: Vec<[u8; 32]>,
    expires_at: u64,
    jobs: Vec<u64>,
}

fn bad(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{what}: {e}"))
}

/// `bytes` with the version byte in front.
fn versioned(v: &impl Serialize, what: &str) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(v, vec![V1]).map_err(|e| bad(what, e))
}

/// The record's body in this encoding, or `None` for JSON.
fn body<'a>(bytes: &'a [u8], what: &str) -> Result<Option<&'a [u8]>, StoreError> {
    match bytes.split_first() {
        Some((&V1, rest)) => Ok(Some(rest)),
        Some((b'{', _)) => Ok(None),
        Some((v, _)) => Err(bad(what, format!("unknown record version {v}"))),
        None => Err(bad(what, "empty record")),
    }
}

/// `job` as stored.
pub(crate) fn encode_job(job: &JobRecord) -> Result<Vec<u8>, StoreError> {
    let state = match &job.state {
        JobState::Queued { not_before } => State::Queued { not_before: *not_before },
        JobState::Leased { epoch, worker, worker_id, deadline } => {
            State::Leased { epoch: epoch.0, worker, worker_id: *worker_id, deadline: *deadline }
        }
        JobState::Succeeded => State::Succeeded,
        JobState::Dead { reason } => State::Dead { reason },
        JobState::Cancelled => State::Cancelled,
    };
    let output =
        job.output.as_ref().map(serde_json::to_vec).transpose().map_err(|e| bad("job", e))?;
    let row = Job {
        id: job.id.0,
        action: job.action.as_str(),
        plan: *job.plan.as_bytes(),
        input: job.input.as_ref().map(|i| (*i.digest.as_bytes(), i.size)),
        index: job.index,
        priority: job.priority,
        max_attempts: job.max_attempts,
        attempts: job.attempts,
        epoch: job.epoch.0,
        state,
        cancel_requested: job.cancel_requested,
        requirements: job.requirements.clone(),
        submitted_at: job.submitted_at,
        updated_at: job.updated_at,
        last_error: job.last_error.as_deref(),
        declined: job.declined.clone(),
        output,
    };
    versioned(&row, "job")
}

/// Job `id` as stored (in this encoding or as JSON); a record of another id is refused.
pub(crate) fn decode_job(id: u64, bytes: &[u8]) -> Result<JobRecord, StoreError> {
    let what = format!("job {id}");
    let job = decode_job_record(&what, bytes)?;
    if job.id.0 != id {
        return Err(bad(&what, format!("the record is of job {}", job.id)));
    }
    Ok(job)
}

fn decode_job_record(what: &str, bytes: &[u8]) -> Result<JobRecord, StoreError> {
    let Some(body) = body(bytes, what)? else {
        return serde_json::from_slice(bytes).map_err(|e| bad(what, e));
    };
    let row: Job<'_> = postcard::from_bytes(body).map_err(|e| bad(what, e))?;
    let state = match row.state {
        State::Queued { not_before } => JobState::Queued { not_before },
        State::Leased { epoch, worker, worker_id, deadline } => JobState::Leased {
            epoch: LeaseEpoch(epoch),
            worker: worker.to_owned(),
            worker_id,
            deadline,
        },
        State::Succeeded => JobState::Succeeded,
        State::Dead { reason } => JobState::Dead { reason: reason.to_owned() },
        State::Cancelled => JobState::Cancelled,
    };
    let output: Option<JobOutput> = row
        .output
        .map(|o| serde_json::from_slice(&o))
        .transpose()
        .map_err(|e| bad(&format!("{what}: its result"), e))?;
    Ok(JobRecord {
        id: JobId(row.id),
        action: row.action.parse().map_err(|e| bad(what, e))?,
        plan: Digest::from_bytes(row.plan),
        input: row.input.map(|(d, size)| InputRef { digest: Digest::from_bytes(d), size }),
        index: row.index,
        priority: row.priority,
        max_attempts: row.max_attempts,
        attempts: row.attempts,
        epoch: LeaseEpoch(row.epoch),
        state,
        cancel_requested: row.cancel_requested,
        requirements: row.requirements,
        submitted_at: row.submitted_at,
        updated_at: row.updated_at,
        last_error: row.last_error.map(str::to_owned),
        declined: row.declined,
        output,
    })
}

/// `action` as stored.
pub(crate) fn encode_action(action: &ActionRecord) -> Result<Vec<u8>, StoreError> {
    let row = Action {
        payload: *action.payload.as_bytes(),
        envelope: *action.envelope.as_bytes(),
        plan_envelope: *action.plan_envelope.as_bytes(),
        blobs: action.blobs.iter().map(|d| *d.as_bytes()).collect(),
        expires_at: action.expires_at,
        jobs: action.jobs.iter().map(|j| j.0).collect(),
    };
    versioned(&row, "action")
}

/// An action as stored (in this encoding or as JSON).
pub(crate) fn decode_action(id: &ActionId, bytes: &[u8]) -> Result<ActionRecord, StoreError> {
    let what = format!("action {id}");
    let Some(body) = body(bytes, &what)? else {
        return serde_json::from_slice(bytes).map_err(|e| bad(&what, e));
    };
    let row: Action = postcard::from_bytes(body).map_err(|e| bad(&what, e))?;
    Ok(ActionRecord {
        payload: Digest::from_bytes(row.payload),
        envelope: Digest::from_bytes(row.envelope),
        plan_envelope: Digest::from_bytes(row.plan_envelope),
        blobs: row.blobs.into_iter().map(Digest::from_bytes).collect(),
        expires_at: row.expires_at,
        jobs: row.jobs.into_iter().map(JobId).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use agenix_proto::Limits;
    use agenix_proto::job::Reports;

    fn job(state: JobState) -> JobRecord {
        JobRecord {
            id: JobId(7),
            action: "0123456789abcdef0123456789abcdef".parse().unwrap(),
            plan: Digest::of(b"plan"),
            input: Some(InputRef { digest: Digest::of(b"in"), size: 12 }),
            index: 3,
            priority: -2,
            max_attempts: 4,
            attempts: 1,
            epoch: LeaseEpoch(9),
            state,
            cancel_requested: true,
            requirements: Requirements {
                tools: ["grep".parse().unwrap()].into(),
                mounts: ["data".parse().unwrap()].into(),
                wasm: true,
                limits: Limits {
                    fuel: 1,
                    memory_bytes: 2,
                    timeout_ms: 3,
                    output_bytes: 4,
                    pids: 5,
                    file_bytes: 6,
                },
            },
            submitted_at: 1_700_000_000_000,
            updated_at: 1_700_000_000_500,
            last_error: Some("boom".into()),
            declined: vec![Declined {
                worker: "w".into(),
                worker_id: 2,
                reason: "r".into(),
                at: 5,
            }],
            output: None,
        }
    }

    #[test]
    fn every_job_state_reads_back_as_written() {
        let mut done = job(JobState::Succeeded);
        done.output = Some(JobOutput {
            succeeded: true,
            failure: Some("f".into()),
            reports: Reports::Inline(vec![]),
            output: Some(InputRef { digest: Digest::of(b"out"), size: 3 }),
            result: None,
        });
        for j in [
            job(JobState::Queued { not_before: 44 }),
            job(JobState::Leased {
                epoch: LeaseEpoch(9),
                worker: "w1".into(),
                worker_id: 3,
                deadline: 8,
            }),
            done,
            job(JobState::Dead { reason: "why".into() }),
            job(JobState::Cancelled),
        ] {
            let bytes = encode_job(&j).unwrap();
            assert_eq!(decode_job(7, &bytes).unwrap(), j);
            // JSON written by earlier releases still reads.
            assert_eq!(decode_job(7, &serde_json::to_vec(&j).unwrap()).unwrap(), j);
        }
        let mut queued = job(JobState::Queued { not_before: 0 });
        queued.last_error = None;
        queued.declined.clear();
        queued.requirements.tools.clear();
        queued.requirements.mounts.clear();
        let bytes = encode_job(&queued).unwrap();
        assert!(bytes.len() < 200, "{} bytes", bytes.len());
    }

    #[test]
    fn actions_read_back_as_written() {
        let id: ActionId = "0123456789abcdef0123456789abcdef".parse().unwrap();
        let a = ActionRecord {
            payload: Digest::of(b"p"),
            envelope: Digest::of(b"e"),
            plan_envelope: Digest::of(b"pe"),
            blobs: vec![Digest::of(b"1"), Digest::of(b"2")],
            expires_at: 99,
            jobs: vec![JobId(1), JobId(2)],
        };
        assert_eq!(decode_action(&id, &encode_action(&a).unwrap()).unwrap(), a);
        assert_eq!(decode_action(&id, &serde_json::to_vec(&a).unwrap()).unwrap(), a);
    }

    #[test]
    fn a_damaged_record_is_named_not_misread() {
        let bytes = encode_job(&job(JobState::Cancelled)).unwrap();
        for cut in [0, 1, 10, bytes.len() - 1] {
            let e = decode_job(7, &bytes[..cut]).unwrap_err().to_string();
            assert!(e.contains("job 7"), "{e}");
        }
        let mut other = bytes.clone();
        other[0] = 2;
        assert!(
            decode_job(7, &other).unwrap_err().to_string().contains("unknown record version 2")
        );
        // A record stored under another job's key is refused, naming both.
        let e = decode_job(8, &bytes).unwrap_err().to_string();
        assert!(e.contains("job 8: the record is of job 7"), "{e}");
        // An id that is not one is refused when read, as in JSON.
        let mut j = job(JobState::Cancelled);
        j.action = "0123456789abcdef0123456789abcdef".parse().unwrap();
        let mut bytes = encode_job(&j).unwrap();
        let at = bytes.windows(4).position(|w| w == b"0123").unwrap();
        bytes[at] = b'X';
        assert!(decode_job(7, &bytes).unwrap_err().to_string().contains("job 7"));
    }
}
