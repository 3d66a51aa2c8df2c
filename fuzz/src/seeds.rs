//! The seed corpora, made from the fixtures and proto's own types, so that they follow the
//! formats as they change. `tests/replay.rs` writes them to `fuzz/seeds/<target>/` (with
//! `AGENIX_FUZZ_WRITE_SEEDS=1`) and otherwise checks that the files there are current.

use std::collections::{BTreeMap, BTreeSet};

use agenix_proto::job::{
    Capabilities, Declined, JobId, JobOutput, JobRecord, JobState, Lease, LeaseEpoch, LeaseRef,
    Reports, Requirements, WorkerRecord,
};
use agenix_proto::wire::{
    ClientRole, ErrorCode, JobFilter, MAX_FRAME, PROTOCOL_VERSION, QueueStats, Request, Response,
};
use agenix_proto::{Digest, Envelope, InputRef, KeyId, Limits, Outcome, TaskReport};

use crate::fixtures;
use crate::targets::signed_input;

/// One seed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// The fuzz target it is for.
    pub target: &'static str,
    /// Its file name.
    pub name: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

fn seed(target: &'static str, name: &str, bytes: Vec<u8>) -> Seed {
    Seed { target, name: name.to_owned(), bytes }
}

/// Every seed of every target. `examples` holds the repository's example plans, by name.
pub fn all(examples: &[(String, Vec<u8>)]) -> Vec<Seed> {
    let mut out = Vec::new();

    // plan: the example plans, the fixture plan and action, and near misses.
    for (name, bytes) in examples {
        out.push(seed("plan", &format!("example-{name}"), bytes.clone()));
    }
    let plan = fixtures::plan_json().into_bytes();
    let action = fixtures::action().to_payload();
    out.push(seed("plan", "signed-form.json", plan.clone()));
    out.push(seed("plan", "payload.json", fixtures::plan().to_payload()));
    out.push(seed("plan", "action.json", action.clone()));
    out.push(seed(
        "plan",
        "forward-reference.json",
        br#"{"schema":"agenix.plan/v1","name":"fwd","tasks":[
{"id":"a","run":{"native":{"tool":"cat"}},"stdin":{"task":"b"}},
{"id":"b","run":{"native":{"tool":"cat"}},"stdin":{"input":true}}],"output":"a"}"#
            .to_vec(),
    ));
    out.push(seed(
        "plan",
        "duplicate-key.json",
        br#"{"schema":"agenix.plan/v1","name":"dup","name":"dup2","tasks":[],"output":"a"}"#
            .to_vec(),
    ));

    // frame: one stream of every request, one of every response, and bare length prefixes.
    let mut requests = Vec::new();
    for req in requests_of_every_kind() {
        requests.extend(frame_bytes(&req));
    }
    out.push(seed("frame", "requests.bin", requests));
    let mut responses = Vec::new();
    for resp in responses_of_every_kind() {
        responses.extend(frame_bytes(&resp));
    }
    out.push(seed("frame", "responses.bin", responses));
    let mut submit = Vec::new();
    for req in requests_of_every_kind().into_iter().filter(|r| r.name() == "submit") {
        submit.extend(frame_bytes(&req));
    }
    out.push(seed("frame", "submit.bin", submit));
    out.push(seed("frame", "max-frame-prefix.bin", prefix(MAX_FRAME)));
    out.push(seed("frame", "over-max-prefix.bin", prefix(MAX_FRAME + 1)));

    // envelope: the signed fixtures as they travel.
    out.push(seed("envelope", "plan.json", fixtures::signed_plan()));
    out.push(seed("envelope", "action.json", fixtures::signed_action()));
    out.push(seed("envelope", "result.json", fixtures::signed_result()));

    // envelope_signed: clean headers over the fixture payloads.
    out.push(seed(
        "envelope_signed",
        "plan.bin",
        signed_input(false, &fixtures::plan().to_payload()),
    ));
    out.push(seed("envelope_signed", "plan-pretty.bin", signed_input(false, &plan)));
    out.push(seed("envelope_signed", "action.bin", signed_input(true, &action)));
    out
}

fn prefix(len: usize) -> Vec<u8> {
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    len.to_be_bytes().to_vec()
}

/// What `encode_frame` makes of `msg` (the big-endian `u32` length, then the JSON), but
/// without its cap, so seeds can be over it.
fn frame_bytes<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    let body = serde_json::to_vec(msg).unwrap_or_default();
    let mut out = prefix(body.len());
    out.extend(body);
    out
}

fn lease_ref() -> LeaseRef {
    LeaseRef { job: JobId(3), epoch: LeaseEpoch(2) }
}

fn input() -> InputRef {
    InputRef { digest: Digest::of(b"input one"), size: 9 }
}

fn capabilities() -> Capabilities {
    let tools = ["cat", "sort"].iter().filter_map(|t| t.parse().ok()).collect();
    let mounts = ["data"].iter().filter_map(|m| m.parse().ok()).collect();
    Capabilities {
        name: "worker-1".into(),
        wasm: true,
        tools,
        mounts,
        ceilings: Limits::DEFAULT,
        concurrency: 2,
        labels: BTreeSet::from(["zone-a".to_owned()]),
    }
}

fn output() -> JobOutput {
    let task = |id: &str| match id.parse() {
        Ok(id) => id,
        Err(e) => panic!("fixture task id: {e}"),
    };
    let reports = vec![
        TaskReport {
            task: task("errors"),
            outcome: Outcome::Exited { code: 0 },
            stdout_digest: Digest::of(b"out"),
            stdout_bytes: 3,
            stderr: String::new(),
            fuel_consumed: Some(12345),
            wall_ms: 4,
            peak_memory_bytes: 1 << 20,
        },
        TaskReport::not_run(task("sorted"), Outcome::Trapped { message: "unreachable".into() }),
    ];
    JobOutput {
        succeeded: false,
        failure: agenix_proto::report::first_failure(&reports),
        reports: Reports::Inline(reports),
        output: Some(input()),
        result: None,
    }
}

fn requests_of_every_kind() -> Vec<Request> {
    vec![
        Request::Hello {
            version: PROTOCOL_VERSION,
            role: ClientRole::Planner,
            token: Some("t0k".into()),
        },
        Request::Hello { version: PROTOCOL_VERSION, role: ClientRole::Worker, token: None },
        Request::PutBlobs {
            blobs: vec![InputRef { digest: Digest::of(b"blob"), size: 4 }],
            keep: true,
        },
        Request::GetBlob { digest: Digest::of(b"blob") },
        Request::Unkeep { digest: Digest::of(b"blob") },
        Request::Submit {
            plan: Digest::of(&fixtures::signed_plan()),
            action: Digest::of(&fixtures::signed_action()),
            blobs: vec![],
        },
        Request::Submit {
            plan: Digest::of(&fixtures::signed_plan()),
            action: Digest::of(&fixtures::signed_action()),
            blobs: vec![agenix_proto::InputRef {
                digest: Digest::of(&fixtures::signed_action()),
                size: fixtures::signed_action().len() as u64,
            }],
        },
        Request::Cancel { job: JobId(3) },
        Request::ListJobs {
            filter: JobFilter {
                state: Some(agenix_proto::job::StateKind::Queued),
                action: Some(fixtures::action().action_id),
            },
            after: Some(JobId(1)),
            limit: 50,
        },
        Request::ShowJob { job: JobId(3) },
        Request::ListWorkers { after: Some(3), limit: 20 },
        Request::Stats {},
        Request::Register { capabilities: capabilities(), instance: "secret".into() },
        Request::Claim { max: 2, wait_ms: 1000 },
        Request::Heartbeat { leases: vec![lease_ref()] },
        Request::Complete { lease: lease_ref(), output: output(), blobs: vec![], claim: 0 },
        Request::Complete { lease: lease_ref(), output: output(), blobs: vec![], claim: 1 },
        Request::Fail { lease: lease_ref(), reason: "fetch failed".into(), retryable: true },
        Request::Release { lease: lease_ref(), reason: "unknown signer".into() },
    ]
}

fn responses_of_every_kind() -> Vec<Response> {
    let record = JobRecord {
        id: JobId(3),
        action: fixtures::action().action_id,
        plan: Digest::of(&fixtures::plan().to_payload()),
        input: Some(input()),
        index: 0,
        priority: 10,
        max_attempts: 3,
        attempts: 1,
        epoch: LeaseEpoch(2),
        state: JobState::Leased {
            epoch: LeaseEpoch(2),
            worker: "w".into(),
            worker_id: 7,
            deadline: 99,
        },
        cancel_requested: false,
        requirements: Requirements::of(fixtures::plan()),
        submitted_at: 1,
        updated_at: 2,
        last_error: Some("lost".into()),
        declined: vec![Declined {
            worker: "w".into(),
            worker_id: 7,
            reason: "no tool".into(),
            at: 1,
        }],
        output: Some(output()),
    };
    vec![
        Response::HelloOk {
            version: PROTOCOL_VERSION,
            queue: fixtures::audience(),
            max_blob: 256 << 20,
        },
        Response::BlobsStored { existed: 1 },
        Response::Blob { digest: Digest::of(b"blob"), size: 4 },
        Response::Unkept { was_kept: true },
        Response::Submitted { jobs: vec![JobId(3), JobId(4)], duplicate: false },
        Response::Cancel { job: JobId(3), state: JobState::Cancelled },
        Response::Jobs { jobs: vec![record.clone()], next: Some(JobId(4)) },
        Response::Job { job: record },
        Response::Workers {
            workers: vec![WorkerRecord {
                id: 7,
                key: KeyId::of(
                    &agenix_proto::keys::signing_key_from_seed(&[7; 32]).verifying_key(),
                ),
                capabilities: capabilities(),
                last_seen: 5,
                leases: 1,
                declined: 2,
                last_declined: Some("no tool".into()),
            }],
            next: Some(7),
        },
        Response::Stats {
            stats: QueueStats {
                jobs: BTreeMap::from([("queued".to_owned(), 2), ("dead".to_owned(), 1)]),
                submitted_last_minute: 3,
                finished_last_minute: 1,
                workers: 1,
            },
        },
        Response::Registered { worker: 7, lease_ms: 30_000, heartbeat_ms: 10_000 },
        Response::Leases {
            leases: vec![Lease {
                lease: lease_ref(),
                attempt: 1,
                deadline: 99,
                plan: Digest::of(&fixtures::signed_plan()),
                action: Digest::of(&fixtures::signed_action()),
                input: 0,
            }],
        },
        Response::HeartbeatOk { extended: vec![lease_ref()], cancelled: vec![], lost: vec![] },
        Response::Recorded {
            job: JobId(3),
            state: JobState::Queued { not_before: 0 },
            leases: vec![],
        },
        Response::Error { code: ErrorCode::StaleLease, message: "stale lease".into() },
    ]
}

/// Inputs at their format's size cap, each built to make one allocation as large as the
/// format allows: the evidence for the limits in `targets`. Too large to be useful as fuzz
/// seeds; `tests/replay.rs` runs them under the limits. (Inputs that break the limits are
/// not here but in `fuzz/regressions/`.)
pub fn worst_cases() -> Vec<Seed> {
    use agenix_proto::envelope::{MAX_ENVELOPE_BYTES, PLAN_PAYLOAD_TYPE};
    use agenix_proto::plan::MAX_PLAN_BYTES;
    use base64::Engine as _;

    let mut out = Vec::new();
    // Fills `head [item, item, ...] tail` with as many copies of `item` as fit in `cap`.
    let fill = |head: &str, item: &str, tail: &str, cap: usize| -> Vec<u8> {
        let mut doc = head.as_bytes().to_vec();
        let room = cap - head.len() - tail.len();
        let n = (room + 1) / (item.len() + 1);
        for i in 0..n {
            if i > 0 {
                doc.push(b',');
            }
            doc.extend_from_slice(item.as_bytes());
        }
        doc.extend_from_slice(tail.as_bytes());
        doc
    };
    let plan_head = r#"{"schema":"agenix.plan/v1","name":"w","output":"a","tasks":[{"id":"a","run":{"native":{"tool":"a"}},"#;

    // plan: a Vec<String> of empty arguments (24 bytes per 3 input bytes, then doubling).
    let args = fill(&format!("{plan_head}\"args\":["), r#""""#, "]}]}", MAX_PLAN_BYTES);
    out.push(seed("plan", "args.json", args.clone()));
    // plan: as many tasks as fit, all with the same id (a violation each).
    let task = r#"{"id":"a","run":{"native":{"tool":"a"}}}"#;
    let tasks = fill(
        r#"{"schema":"agenix.plan/v1","name":"w","output":"a","tasks":["#,
        task,
        "]}",
        MAX_PLAN_BYTES,
    );
    out.push(seed("plan", "tasks.json", tasks));
    // plan: one argument of escapes, decoded through serde_json's scratch buffer.
    let mut escaped = format!("{plan_head}\"args\":[\"").into_bytes();
    let tail = b"\"]}]}";
    while escaped.len() + 2 + tail.len() <= MAX_PLAN_BYTES {
        escaped.extend_from_slice(br"\n");
    }
    escaped.extend_from_slice(tail);
    out.push(seed("plan", "escaped-arg.json", escaped));
    // plan: an action with as many inputs as fit in its cap.
    let a = fixtures::action();
    let action_head = format!(
        r#"{{"schema":"agenix.action/v1","action_id":"{}","plan":"{}","issued_at":1,"expires_at":2,"audience":"{}","inputs":["#,
        a.action_id, a.plan, a.audience
    );
    let input = format!(r#"{{"digest":"{}","size":0}}"#, Digest::of(b""));
    let inputs = fill(&action_head, &input, "]}", agenix_proto::action::MAX_ACTION_BYTES);
    out.push(seed("plan", "action-inputs.json", inputs));

    // frame: serde buffers an internally tagged message as `Content` values before it
    // looks at the variant: 2 input bytes per element of a sequence.
    let framed = |body: Vec<u8>| {
        let mut f = prefix(body.len());
        f.extend(body);
        f
    };
    let zeros = fill(r#"{"type":"submitted","duplicate":false,"jobs":["#, "0", "]}", MAX_FRAME);
    out.push(seed("frame", "submitted-jobs.bin", framed(zeros)));
    let unknown = fill(r#"{"type":"stats","x":["#, "[]", "]}", MAX_FRAME);
    out.push(seed("frame", "nested-unknown.bin", framed(unknown)));
    let leases_head = r#"{"type":"heartbeat","worker":1,"leases":["#;
    let leases = fill(leases_head, r#"{"job":0,"epoch":0}"#, "]}", MAX_FRAME);
    out.push(seed("frame", "heartbeat-leases.bin", framed(leases)));

    // envelope: a payload as large as the envelope cap allows, signed or not.
    let body = fill(&format!("{plan_head}\"args\":["), r#""""#, "]}]}", MAX_PLAN_BYTES);
    let env = Envelope::sign(PLAN_PAYLOAD_TYPE, &body, fixtures::trusted_key()).to_json();
    assert!(env.len() <= MAX_ENVELOPE_BYTES);
    out.push(seed("envelope", "max-plan.json", env));
    let sigs = fill(
        r#"{"payloadType":"x","payload":"","signatures":["#,
        &format!(r#"{{"keyid":"{}","sig":""}}"#, Digest::of(b"")),
        "]}",
        MAX_ENVELOPE_BYTES,
    );
    out.push(seed("envelope", "signatures.json", sigs));
    let raw =
        base64::engine::general_purpose::STANDARD
            .encode(vec![0u8; (MAX_ENVELOPE_BYTES - 200) / 4 * 3]);
    let big =
        format!(r#"{{"payloadType":"{PLAN_PAYLOAD_TYPE}","payload":"{raw}","signatures":[]}}"#);
    out.push(seed("envelope", "payload.json", big.into_bytes()));

    // envelope_signed: the largest plans, signed, so the verifier parses them.
    out.push(seed("envelope_signed", "args.bin", signed_input(false, &args)));
    let action_inputs =
        out.iter().find(|s| s.name == "action-inputs.json").map(|s| s.bytes.clone());
    out.push(seed(
        "envelope_signed",
        "action-inputs.bin",
        signed_input(true, &action_inputs.unwrap_or_default()),
    ));
    out
}
