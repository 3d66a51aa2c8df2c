//! Every message a worker or the queue sends fits a frame, whatever users put at the limits:
//! plans of 1 MiB, 100 tasks, 1000 inputs, 10,000 bytes of stderr per task made of what JSON
//! escapes worst. The reports come from the host's own stderr sanitizer, as in a real run.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

use agenix_host::report::{Captured, report};
use agenix_proto::action::{ACTION_SCHEMA, MAX_INPUTS};
use agenix_proto::job::{
    Declined, JobId, JobOutput, JobRecord, JobState, Lease, LeaseEpoch, LeaseRef, MAX_DECLINED,
    MAX_REASON, Reports, Requirements,
};
use agenix_proto::plan::{MAX_PLAN_BYTES, MAX_TASKS};
use agenix_proto::wire::{MAX_FRAME, PAGE_BYTES, Request, Response, json_len};
use agenix_proto::{Action, ActionId, Digest, Fingerprint, InputRef, Outcome, Plan};
use proptest::prelude::*;

/// Raw stderr of up to `len` bytes drawn from what JSON escapes (quotes, backslashes,
/// newlines, tabs, controls the sanitizer drops) and plain text.
fn raw_stderr(len: usize) -> impl Strategy<Value = Vec<u8>> {
    let byte =
        prop_oneof![Just(b'"'), Just(b'\\'), Just(b'\n'), Just(b'\t'), Just(1u8), Just(b'x')];
    proptest::collection::vec(byte, 0..=len)
}

fn reports(stderrs: &[Vec<u8>]) -> Vec<agenix_proto::TaskReport> {
    stderrs
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let outcome = Outcome::Exited { code: i32::from(i % 2 == 1) };
            let c = Captured {
                outcome: &outcome,
                stdout: b"",
                stderr: raw,
                fuel_consumed: Some(u64::MAX),
                wall: std::time::Duration::from_secs(3600),
                peak_memory: u64::MAX,
            };
            report(format!("task-{i:03}-with-a-long-name").parse().unwrap(), c)
        })
        .collect()
}

fn output(stderrs: &[Vec<u8>]) -> JobOutput {
    let r = reports(stderrs);
    let failure = agenix_proto::report::first_failure(&r);
    let (reports, _blob) = Reports::split(r);
    let out = InputRef { digest: Digest::of(b"o"), size: u64::MAX };
    JobOutput { succeeded: failure.is_none(), failure, reports, output: Some(out), result: None }
}

/// The largest record the queue keeps for a job: every bounded field at its bound.
fn record(output: JobOutput) -> JobRecord {
    let plan = Plan::from_json(
        br#"{"schema":"agenix.plan/v1","name":"p","tasks":[{"id":"a","run":{"wasm":{"name":"x"}}}],"output":"a"}"#,
    )
    .unwrap();
    let long = "\"".repeat(MAX_REASON);
    JobRecord {
        id: JobId(u64::MAX),
        action: ActionId::from_random([7; 16]),
        plan: Digest::of(b"p"),
        input: Some(InputRef { digest: Digest::of(b"i"), size: u64::MAX }),
        index: u32::MAX,
        priority: -1000,
        max_attempts: 20,
        attempts: 20,
        epoch: LeaseEpoch(u64::MAX),
        state: JobState::Dead { reason: long.clone() },
        cancel_requested: true,
        requirements: Requirements::of(&plan),
        submitted_at: u64::MAX,
        updated_at: u64::MAX,
        last_error: Some(long.clone()),
        declined: (0..MAX_DECLINED)
            .map(|i| Declined {
                worker: "\"".repeat(agenix_proto::job::MAX_WORKER_NAME),
                worker_id: u64::MAX - i as u64,
                reason: long.clone(),
                at: u64::MAX,
            })
            .collect(),
        output: Some(output),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// A result of up to 100 tasks, each with up to 10,000 kept bytes of stderr of any mix
    /// of what JSON escapes, goes in a frame; what goes inline stays under its bound, and a
    /// job record holding it fits a listing page.
    #[test]
    fn results_at_the_limits_fit_a_frame(
        tasks in 1..=MAX_TASKS,
        stderr in raw_stderr(40_000),
    ) {
        let stderrs = vec![stderr; tasks];
        let out = output(&stderrs);
        if let Reports::Inline(r) = &out.reports {
            prop_assert!(json_len(r) <= agenix_proto::job::MAX_INLINE_REPORTS);
        }
        let lease = LeaseRef { job: JobId(u64::MAX), epoch: LeaseEpoch(u64::MAX) };
        let complete = Request::Complete { lease, output: out.clone(), blobs: vec![], claim: 0 };
        prop_assert!(json_len(&complete) <= MAX_FRAME, "complete: {}", json_len(&complete));
        let job = record(out);
        prop_assert!(json_len(&job) < PAGE_BYTES, "a record of {} bytes", json_len(&job));
        let shown = Response::Job { job: job.clone() };
        prop_assert!(json_len(&shown) <= MAX_FRAME);
        let page = Response::Jobs { jobs: vec![job], next: Some(JobId(u64::MAX)) };
        prop_assert!(json_len(&page) <= MAX_FRAME);
    }
}

/// The worst case outright: 100 tasks of 10,000 quotes each is over a frame as inline JSON,
/// so it travels as a blob.
#[test]
fn a_hundred_tasks_of_quotes_travel_as_a_blob() {
    let stderrs = vec![vec![b'"'; 10_000]; MAX_TASKS];
    let r = reports(&stderrs);
    assert!(json_len(&r) > MAX_FRAME, "the case is the one that broke the frame");
    let out = output(&stderrs);
    assert!(matches!(out.reports, Reports::Blob(_)));
    let lease = LeaseRef { job: JobId(1), epoch: LeaseEpoch(1) };
    assert!(json_len(&Request::Complete { lease, output: out, blobs: vec![], claim: 0 }) < 4096);
}

/// A claim answer, a submission's answer and a submit request at the limits: 64 leases of
/// an action of 1000 inputs, 1000 job ids, a 1 MiB plan (its envelope is a blob).
#[test]
fn leases_submissions_and_envelopes_at_the_limits_fit() {
    let leases: Vec<Lease> = (0..64)
        .map(|i| Lease {
            lease: LeaseRef { job: JobId(u64::MAX - i), epoch: LeaseEpoch(u64::MAX) },
            attempt: 20,
            deadline: u64::MAX,
            plan: Digest::of(b"plan"),
            action: Digest::of(b"action"),
            input: u32::try_from(MAX_INPUTS - 1).unwrap(),
        })
        .collect();
    assert!(json_len(&Response::Leases { leases }) < 32 << 10);
    let jobs: Vec<JobId> = (0..MAX_INPUTS as u64).map(|i| JobId(u64::MAX - i)).collect();
    assert!(json_len(&Response::Submitted { jobs, duplicate: false }) < 32 << 10);
    // A signed plan of exactly the payload limit: its envelope is over a frame, and travels
    // as a blob of at most MAX_ENVELOPE_BYTES.
    let key = agenix_proto::keys::signing_key_from_seed(&[3; 32]);
    let payload = vec![b' '; MAX_PLAN_BYTES];
    let env =
        agenix_proto::Envelope::sign(agenix_proto::envelope::PLAN_PAYLOAD_TYPE, &payload, &key);
    let bytes = env.to_json();
    assert!(bytes.len() > MAX_FRAME);
    assert!(bytes.len() <= agenix_proto::envelope::MAX_ENVELOPE_BYTES, "{}", bytes.len());
    let submit =
        Request::Submit { plan: Digest::of(&bytes), action: Digest::of(b"a"), blobs: vec![] };
    assert!(json_len(&submit) < 256);
    // An action of 1000 inputs is well under its own limit.
    let action = Action {
        schema: ACTION_SCHEMA.into(),
        action_id: ActionId::from_random([1; 16]),
        plan: Digest::of(b"p"),
        inputs: vec![InputRef { digest: Digest::of(b"i"), size: u64::MAX }; MAX_INPUTS],
        issued_at: u64::MAX / 2,
        expires_at: u64::MAX / 2 + 1,
        max_attempts: 20,
        priority: 1000,
        audience: Fingerprint(Digest::of(b"q")),
    };
    assert!(action.to_payload().len() <= agenix_proto::action::MAX_ACTION_BYTES);
}
