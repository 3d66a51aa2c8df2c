//! A hostile queue: a test server speaking the real protocol that alters, swaps and replays
//! plans, actions and blobs. A real agw (whose trust file trusts the signer) must run zero
//! tasks: every lease fails non-retryably with the reason, or, where only a component blob
//! was swapped, the task is refused before it is compiled.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agenix_proto::action::ACTION_SCHEMA;
use agenix_proto::envelope::{sign_action, sign_plan};
use agenix_proto::job::{JobId, JobOutput, Lease, LeaseEpoch, LeaseRef};
use agenix_proto::keys::{SigningKey, signing_key_from_seed};
use agenix_proto::wire::{Request, Response, read_frame, write_frame};
use agenix_proto::{Action, ActionId, Digest, Envelope, Fingerprint, InputRef, Plan, Role, Trust};
use agenix_test_programs as programs;
use base64::Engine as _;
use common::bin;

const NOW_SKEW: u64 = 5;

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// What the hostile queue heard back.
#[derive(Debug, Clone)]
enum Verdict {
    Completed(JobOutput),
    Failed { reason: String, retryable: bool },
}

struct Hostile {
    leases: Mutex<Vec<Lease>>,
    blobs: HashMap<Digest, Vec<u8>>,
    verdicts: Mutex<HashMap<JobId, Verdict>>,
    fingerprint: Fingerprint,
}

async fn serve_stream(h: Arc<Hostile>, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let Ok(req) = read_frame::<Request>(&mut recv).await else { return };
    let resp = match req {
        Request::Hello { .. } => Response::HelloOk { version: 1, queue: h.fingerprint },
        Request::Register { .. } => {
            Response::Registered { worker: 1, lease_ms: 60_000, heartbeat_ms: 1_000 }
        }
        Request::Claim { .. } => {
            let next = h.leases.lock().unwrap().pop();
            if next.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Response::Leases { leases: next.into_iter().collect() }
        }
        Request::Heartbeat { leases, .. } => {
            Response::HeartbeatOk { extended: leases, cancelled: vec![], lost: vec![] }
        }
        Request::GetBlob { digest } => {
            let Some(bytes) = h.blobs.get(&digest) else {
                let _ = write_frame(
                    &mut send,
                    &Response::Error {
                        code: agenix_proto::wire::ErrorCode::NotFound,
                        message: "no".into(),
                    },
                )
                .await;
                let _ = send.finish();
                return;
            };
            let _ =
                write_frame(&mut send, &Response::Blob { digest, size: bytes.len() as u64 }).await;
            let _ = send.write_all(bytes).await;
            let _ = send.finish();
            return;
        }
        Request::PutBlob { digest, size } => {
            let mut sink = vec![0u8; usize::try_from(size).unwrap()];
            let _ = tokio::io::AsyncReadExt::read_exact(&mut recv, &mut sink).await;
            Response::BlobStored { digest, size, existed: false }
        }
        Request::Complete { lease, output, .. } => {
            h.verdicts.lock().unwrap().insert(lease.job, Verdict::Completed(output));
            Response::Recorded { job: lease.job, state: agenix_proto::job::JobState::Succeeded }
        }
        Request::Fail { lease, reason, retryable, .. } => {
            h.verdicts.lock().unwrap().insert(lease.job, Verdict::Failed { reason, retryable });
            Response::Recorded {
                job: lease.job,
                state: agenix_proto::job::JobState::Dead { reason: "x".into() },
            }
        }
        other => Response::Error {
            code: agenix_proto::wire::ErrorCode::BadRequest,
            message: other.name().into(),
        },
    };
    let _ = write_frame(&mut send, &resp).await;
    let _ = send.finish();
}

fn plan(signer: &SigningKey, component: &[u8], arg: &str) -> (Envelope, Digest) {
    let json = format!(
        r#"{{"schema":"agenix.plan/v1","plan_id":"{}","name":"h","issued_at":{},"expires_at":{},
        "tasks":[{{"id":"t","run":{{"wasm":{{"name":"echo","digest":"{}"}}}},"args":["{arg}"],"stdin":{{"input":true}}}}],"output":"t"}}"#,
        "ab".repeat(16),
        now() - NOW_SKEW,
        now() + 3600,
        Digest::of(component)
    );
    let p = Plan::from_json(json.as_bytes()).unwrap();
    (sign_plan(&p, signer).unwrap(), Digest::of(&p.to_payload()))
}

fn action(
    signer: &SigningKey,
    plan: Digest,
    input: &InputRef,
    audience: Fingerprint,
    issued: u64,
    expires: u64,
) -> Envelope {
    let a = Action {
        schema: ACTION_SCHEMA.into(),
        action_id: ActionId::from_random(rand16()),
        plan,
        inputs: vec![input.clone()],
        issued_at: issued,
        expires_at: expires,
        max_attempts: 3,
        priority: 0,
        audience,
    };
    sign_action(&a, signer).unwrap()
}

fn rand16() -> [u8; 16] {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).unwrap();
    b
}

fn lease(job: u64, plan: Envelope, action: Envelope, input: &InputRef) -> Lease {
    Lease {
        lease: LeaseRef { job: JobId(job), epoch: LeaseEpoch(1) },
        attempt: 1,
        deadline: u64::MAX,
        plan,
        action,
        input: Some(input.clone()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_queue_gets_zero_tasks_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("hostile");
    let fingerprint = agenix_queue::identity::init(&data).unwrap();
    let (cert, key) = agenix_queue::identity::load_identity(&data).unwrap();
    let endpoint = agenix_queue::server::endpoint(
        "127.0.0.1:0".parse().unwrap(),
        cert,
        key,
        &agenix_queue::server::Settings::default(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();

    // The signer the worker trusts, and one it does not.
    let signer = signing_key_from_seed(&rand16x2());
    let stranger = signing_key_from_seed(&rand16x2());
    let mut trust = Trust::new();
    trust.add("planner", signer.verifying_key(), &Role::ALL).unwrap();
    std::fs::write(dir.path().join("trust.json"), trust.to_json()).unwrap();

    // A real component: if anything were run, its tasks would exit 0.
    let echo = std::fs::read(programs::GUEST_ECHO).unwrap();
    let exit = std::fs::read(programs::GUEST_EXIT).unwrap();
    let input_bytes = b"data".to_vec();
    let input = InputRef { digest: Digest::of(&input_bytes), size: 4 };
    let other_input = InputRef { digest: Digest::of(b"other"), size: 5 };
    let (good_plan, good_digest) = plan(&signer, &echo, "-i");
    let (other_plan, _) = plan(&signer, &echo, "-v");
    let good_action =
        || action(&signer, good_digest, &input, fingerprint, now() - NOW_SKEW, now() + 600);

    // 1: a byte of the plan's payload altered after signing.
    let mut altered = good_plan.clone();
    let mut payload = base64::engine::general_purpose::STANDARD.decode(&altered.payload).unwrap();
    let at = payload.windows(4).position(|w| w == b"\"-i\"").unwrap();
    payload[at + 2] = b'v';
    altered.payload = base64::engine::general_purpose::STANDARD.encode(payload);
    // 6: an input the action does not name.
    let mut swapped_input = lease(6, good_plan.clone(), good_action(), &input);
    swapped_input.input = Some(other_input.clone());
    // 7 and 8 are valid leases whose blobs the queue swaps: the component (job 7, own plan)
    // and the input (job 8).
    let (swap_plan, swap_digest) = plan(&signer, &exit, "-x");
    let swapped_input_bytes = InputRef { digest: Digest::of(b"real input"), size: 10 };
    let leases = vec![
        lease(1, altered, good_action(), &input),
        lease(2, other_plan, good_action(), &input),
        lease(
            3,
            good_plan.clone(),
            action(&signer, good_digest, &input, fingerprint, now() - 7200, now() - 3600),
            &input,
        ),
        lease(
            4,
            good_plan.clone(),
            action(
                &signer,
                good_digest,
                &input,
                Fingerprint(Digest::of(b"another queue")),
                now() - NOW_SKEW,
                now() + 600,
            ),
            &input,
        ),
        lease(
            5,
            good_plan.clone(),
            action(&stranger, good_digest, &input, fingerprint, now() - NOW_SKEW, now() + 600),
            &input,
        ),
        swapped_input,
        lease(
            7,
            swap_plan,
            action(&signer, swap_digest, &input, fingerprint, now() - NOW_SKEW, now() + 600),
            &input,
        ),
        lease(
            8,
            good_plan.clone(),
            action(
                &signer,
                good_digest,
                &swapped_input_bytes,
                fingerprint,
                now() - NOW_SKEW,
                now() + 600,
            ),
            &swapped_input_bytes,
        ),
    ];
    let mut blobs = HashMap::new();
    blobs.insert(Digest::of(&echo), echo.clone());
    blobs.insert(input.digest, input_bytes.clone());
    blobs.insert(other_input.digest, b"other".to_vec());
    // Swapped: the exit guest's digest serves the echo guest; the "real input" digest serves
    // something else.
    blobs.insert(Digest::of(&exit), echo.clone());
    blobs.insert(swapped_input_bytes.digest, b"forged!!!!".to_vec());
    let expected = leases.len();
    let h = Arc::new(Hostile {
        leases: Mutex::new(leases.into_iter().rev().collect()),
        blobs,
        verdicts: Mutex::new(HashMap::new()),
        fingerprint,
    });
    let server = {
        let h = h.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let h = h.clone();
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((send, recv)) = conn.accept_bi().await {
                        tokio::spawn(serve_stream(h.clone(), send, recv));
                    }
                });
            }
        })
    };

    std::fs::write(dir.path().join("token"), "anything").unwrap();
    let mut agw = Command::new(bin("agw"))
        .args(["--queue", &addr.to_string(), "--fingerprint", &fingerprint.to_string()])
        .arg("--token-file")
        .arg(dir.path().join("token"))
        .arg("--trust")
        .arg(dir.path().join("trust.json"))
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .args(["--concurrency", "1"])
        .env("AGW_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while h.verdicts.lock().unwrap().len() < expected && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = agw.kill();
    let _ = agw.wait();
    server.abort();

    let verdicts = h.verdicts.lock().unwrap().clone();
    assert_eq!(verdicts.len(), expected, "{verdicts:#?}");
    let failed = |job: u64, needle: &str| match &verdicts[&JobId(job)] {
        Verdict::Failed { reason, retryable } => {
            assert!(!retryable, "job {job}: a verification failure is not retried");
            assert!(reason.contains(needle), "job {job}: {reason:?} does not say {needle:?}");
        }
        other => panic!("job {job} was not refused: {other:?}"),
    };
    failed(1, "does not verify: the envelope was altered");
    failed(2, "the action is for plan");
    failed(3, "expired");
    failed(4, "the action is for queue");
    failed(5, "no signature is by a trusted key");
    failed(6, "an input the action does not name");
    failed(8, "arrived with digest");
    // The swapped component: the job ran no task (refused before compiling).
    match &verdicts[&JobId(7)] {
        Verdict::Completed(out) => {
            assert!(!out.succeeded);
            for r in &out.reports {
                assert!(
                    matches!(
                        r.outcome,
                        agenix_proto::Outcome::Refused { .. }
                            | agenix_proto::Outcome::Skipped { .. }
                    ),
                    "task {} ran: {:?}",
                    r.task,
                    r.outcome
                );
            }
            let agenix_proto::Outcome::Refused { reason } = &out.reports[0].outcome else {
                unreachable!()
            };
            assert!(reason.contains("arrived with digest"), "{reason}");
        }
        other => panic!("job 7: {other:?}"),
    }
    // Nothing exited anywhere: zero tasks ran.
    for v in verdicts.values() {
        if let Verdict::Completed(out) = v {
            assert!(out.reports.iter().all(|r| r.outcome.exit_code().is_none()));
        }
    }
}

fn rand16x2() -> [u8; 32] {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).unwrap();
    b
}
