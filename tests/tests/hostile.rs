//! A hostile queue: a test server speaking the real protocol that alters, swaps and replays
//! plans, actions and blobs, hands out the same lease twice, more leases than asked for, and
//! jobs the worker has already run. A real agw (whose trust file trusts the signer) must run
//! nothing it should not: forgeries fail non-retryably with the reason, causes of the
//! worker's own are declined (released), and a job runs at most once per worker, also
//! across a restart.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agenix_link::{read_frame, write_frame};
use agenix_proto::action::ACTION_SCHEMA;
use agenix_proto::envelope::{sign_action, sign_plan};
use agenix_proto::job::{JobId, JobOutput, JobState, Lease, LeaseEpoch, LeaseRef};
use agenix_proto::keys::{SigningKey, signing_key_from_seed};
use agenix_proto::wire::{ErrorCode, Request, Response};
use agenix_proto::{Action, ActionId, Digest, Envelope, Fingerprint, InputRef, Plan, Role, Trust};
use agenix_test_programs as programs;
use base64::Engine as _;
use common::bin;
use tokio::io::AsyncReadExt;

const NOW_SKEW: u64 = 5;

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// What the hostile queue heard back.
#[derive(Debug, Clone)]
enum Verdict {
    Completed(JobOutput),
    Failed { reason: String, retryable: bool },
    Released(String),
}

/// The queue's script: claim answers to hand out in order, blobs to serve (by the digest
/// asked for, whatever the bytes), blob sizes to claim instead of the real ones.
#[derive(Default)]
struct Hostile {
    answers: Mutex<Vec<Vec<Lease>>>,
    blobs: Mutex<HashMap<Digest, Vec<u8>>>,
    claimed_sizes: HashMap<Digest, u64>,
    verdicts: Mutex<Vec<(JobId, Verdict)>>,
    fingerprint: Option<Fingerprint>,
}

impl Hostile {
    /// Serves `bytes` under their own digest; returns it.
    fn blob(&self, bytes: Vec<u8>) -> Digest {
        let d = Digest::of(&bytes);
        self.blobs.lock().unwrap().insert(d, bytes);
        d
    }

    fn verdicts_of(&self, job: u64) -> Vec<Verdict> {
        let v = self.verdicts.lock().unwrap();
        v.iter().filter(|(j, _)| *j == JobId(job)).map(|(_, v)| v.clone()).collect()
    }
}

async fn serve_stream(h: Arc<Hostile>, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let Ok(req) = read_frame::<Request>(&mut recv).await else { return };
    let resp = match req {
        Request::Hello { .. } => {
            Response::HelloOk { version: 1, queue: h.fingerprint.unwrap(), max_blob: 1 << 30 }
        }
        Request::Register { .. } => {
            Response::Registered { worker: 1, lease_ms: 60_000, heartbeat_ms: 1_000 }
        }
        Request::Claim { .. } => {
            let next = h.answers.lock().unwrap().pop();
            if next.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Response::Leases { leases: next.unwrap_or_default() }
        }
        Request::Heartbeat { leases } => {
            Response::HeartbeatOk { extended: leases, cancelled: vec![], lost: vec![] }
        }
        Request::GetBlob { digest } => {
            let Some(bytes) = h.blobs.lock().unwrap().get(&digest).cloned() else {
                let no = Response::Error { code: ErrorCode::NotFound, message: "no".into() };
                let _ = write_frame(&mut send, &no).await;
                let _ = send.finish();
                return;
            };
            let size = h.claimed_sizes.get(&digest).copied().unwrap_or(bytes.len() as u64);
            let _ = write_frame(&mut send, &Response::Blob { digest, size }).await;
            let _ = send.write_all(&bytes).await;
            let _ = send.finish();
            return;
        }
        Request::PutBlobs { blobs, .. } => {
            let total: u64 = blobs.iter().map(|b| b.size).sum();
            let mut sink = Vec::new();
            let _ = (&mut recv).take(total).read_to_end(&mut sink).await;
            Response::BlobsStored { existed: 0 }
        }
        Request::Complete { lease, output } => {
            h.verdicts.lock().unwrap().push((lease.job, Verdict::Completed(output)));
            Response::Recorded { job: lease.job, state: JobState::Succeeded }
        }
        Request::Fail { lease, reason, retryable } => {
            h.verdicts.lock().unwrap().push((lease.job, Verdict::Failed { reason, retryable }));
            Response::Recorded { job: lease.job, state: JobState::Dead { reason: "x".into() } }
        }
        Request::Release { lease, reason } => {
            h.verdicts.lock().unwrap().push((lease.job, Verdict::Released(reason)));
            Response::Recorded { job: lease.job, state: JobState::Queued { not_before: 0 } }
        }
        other => Response::Error { code: ErrorCode::BadRequest, message: other.name().into() },
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
    inputs: &[InputRef],
    audience: Fingerprint,
    issued: u64,
    expires: u64,
) -> Envelope {
    let a = Action {
        schema: ACTION_SCHEMA.into(),
        action_id: ActionId::from_random(rand16()),
        plan,
        inputs: inputs.to_vec(),
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

fn rand16x2() -> [u8; 32] {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).unwrap();
    b
}

/// A lease naming the envelope blobs `plan` and `action`.
fn lease(job: u64, epoch: u64, plan: Digest, action: Digest, input: u32) -> Lease {
    Lease {
        lease: LeaseRef { job: JobId(job), epoch: LeaseEpoch(epoch) },
        attempt: 1,
        deadline: u64::MAX,
        plan,
        action,
        input,
    }
}

/// A hostile queue on loopback: its endpoint, identity and directory.
struct Stage {
    dir: tempfile::TempDir,
    fingerprint: Fingerprint,
    endpoint: quinn::Endpoint,
    signer: SigningKey,
}

fn stage() -> Stage {
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
    let signer = signing_key_from_seed(&rand16x2());
    let mut trust = Trust::new();
    trust.add("planner", signer.verifying_key(), &Role::SIGNING).unwrap();
    std::fs::write(dir.path().join("trust.json"), trust.to_json()).unwrap();
    // The hostile queue takes any key; the worker still needs one of its own.
    let made =
        Command::new(bin("agw")).args(["init", "--data"]).arg(dir.path().join("key")).output();
    assert!(made.unwrap().status.success());
    Stage { dir, fingerprint, endpoint, signer }
}

fn serve(endpoint: quinn::Endpoint, h: Arc<Hostile>) -> tokio::task::JoinHandle<()> {
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
}

/// A real agw against the hostile queue, with its cache (and its memory of jobs run) in
/// `dir/cache`.
fn agw(dir: &Path, addr: std::net::SocketAddr, fingerprint: Fingerprint) -> Child {
    Command::new(bin("agw"))
        .args(["--queue", &addr.to_string(), "--fingerprint", &fingerprint.to_string()])
        .arg("--data")
        .arg(dir.join("key"))
        .arg("--trust")
        .arg(dir.join("trust.json"))
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .args(["--concurrency", "1"])
        .env("AGW_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("agw.log")).unwrap())
        .spawn()
        .unwrap()
}

async fn wait_for(h: &Hostile, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.verdicts.lock().unwrap().len() < n {
        assert!(Instant::now() < deadline, "{what}: {:#?}", h.verdicts.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stop(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_queue_gets_zero_tasks_run() {
    let s = stage();
    let (fingerprint, signer) = (s.fingerprint, &s.signer);
    let stranger = signing_key_from_seed(&rand16x2());
    let addr = s.endpoint.local_addr().unwrap();
    let mut h = Hostile { fingerprint: Some(fingerprint), ..Hostile::default() };

    // A real component: if anything were run, its tasks would exit 0.
    let echo = std::fs::read(programs::GUEST_ECHO).unwrap();
    let exit = std::fs::read(programs::GUEST_EXIT).unwrap();
    let input_bytes = b"data".to_vec();
    let input = InputRef { digest: Digest::of(&input_bytes), size: 4 };
    let (good_plan, good_digest) = plan(signer, &echo, "-i");
    let (other_plan, _) = plan(signer, &echo, "-v");
    let action_for = |plan: Digest, inputs: &[InputRef]| {
        action(signer, plan, inputs, fingerprint, now() - NOW_SKEW, now() + 600)
    };
    let good_plan_blob = h.blob(good_plan.to_json());
    let good_action = h.blob(action_for(good_digest, std::slice::from_ref(&input)).to_json());

    // 1: a byte of the plan's payload altered after signing.
    let mut altered = good_plan.clone();
    let mut payload = base64::engine::general_purpose::STANDARD.decode(&altered.payload).unwrap();
    let at = payload.windows(4).position(|w| w == b"\"-i\"").unwrap();
    payload[at + 2] = b'v';
    altered.payload = base64::engine::general_purpose::STANDARD.encode(payload);
    let altered = h.blob(altered.to_json());
    // 2: another (validly signed) plan than the action names.
    let other_plan = h.blob(other_plan.to_json());
    // 3: an expired action; 4: one for another queue; 5: one by a key the worker does not
    // trust.
    let expired = h.blob(
        action(
            signer,
            good_digest,
            std::slice::from_ref(&input),
            fingerprint,
            now() - 7200,
            now() - 3600,
        )
        .to_json(),
    );
    let elsewhere = Fingerprint(Digest::of(b"another queue"));
    let foreign = h.blob(
        action(
            signer,
            good_digest,
            std::slice::from_ref(&input),
            elsewhere,
            now() - NOW_SKEW,
            now() + 600,
        )
        .to_json(),
    );
    let unknown = h.blob(
        action(
            &stranger,
            good_digest,
            std::slice::from_ref(&input),
            fingerprint,
            now() - 5,
            now() + 600,
        )
        .to_json(),
    );
    // 7 and 8: valid leases whose blobs the queue swaps: the component (job 7, own plan)
    // and the input (job 8).
    let (swap_plan, swap_digest) = plan(signer, &exit, "-x");
    let swap_plan = h.blob(swap_plan.to_json());
    let swap_action = h.blob(action_for(swap_digest, std::slice::from_ref(&input)).to_json());
    let real_input = InputRef { digest: Digest::of(b"real input"), size: 10 };
    let forged_input_action =
        h.blob(action_for(good_digest, std::slice::from_ref(&real_input)).to_json());
    // 9: the plan envelope's blob served with other bytes than its digest.
    let swapped_envelope = Digest::of(b"the plan envelope the worker asks for");
    // 10: an input the queue claims is far larger than the action signed (and never sends).
    let big_input = InputRef { digest: Digest::of(b"wee"), size: 3 };
    let big_input_action =
        h.blob(action_for(good_digest, std::slice::from_ref(&big_input)).to_json());
    h.claimed_sizes.insert(big_input.digest, 100 << 20);
    {
        let mut blobs = h.blobs.lock().unwrap();
        blobs.insert(Digest::of(&echo), echo.clone());
        blobs.insert(input.digest, input_bytes.clone());
        // Swapped: the exit guest's digest serves the echo guest; the "real input" digest
        // serves something else; the envelope digest serves another plan.
        blobs.insert(Digest::of(&exit), echo.clone());
        blobs.insert(real_input.digest, b"forged!!!!".to_vec());
        blobs.insert(swapped_envelope, good_plan.to_json());
        blobs.insert(big_input.digest, b"wee".to_vec());
    }
    let leases = vec![
        lease(1, 1, altered, good_action, 0),
        lease(2, 1, other_plan, good_action, 0),
        lease(3, 1, good_plan_blob, expired, 0),
        lease(4, 1, good_plan_blob, foreign, 0),
        lease(5, 1, good_plan_blob, unknown, 0),
        // 6: an input the action does not name.
        lease(6, 1, good_plan_blob, good_action, 1),
        lease(7, 1, swap_plan, swap_action, 0),
        lease(8, 1, good_plan_blob, forged_input_action, 0),
        lease(9, 1, swapped_envelope, good_action, 0),
        lease(10, 1, good_plan_blob, big_input_action, 0),
    ];
    let expected = leases.len();
    *h.answers.lock().unwrap() = leases.into_iter().rev().map(|l| vec![l]).collect();
    let h = Arc::new(h);
    let server = serve(s.endpoint.clone(), h.clone());
    let agw = agw(s.dir.path(), addr, fingerprint);
    wait_for(&h, expected, "every lease answered").await;
    stop(agw);
    server.abort();

    let one = |job: u64| {
        let v = h.verdicts_of(job);
        assert_eq!(v.len(), 1, "job {job}: {v:?}");
        v[0].clone()
    };
    let failed = |job: u64, needle: &str| match one(job) {
        Verdict::Failed { reason, retryable } => {
            assert!(!retryable, "job {job}: a forgery is not retried");
            assert!(reason.contains(needle), "job {job}: {reason:?} does not say {needle:?}");
        }
        other => panic!("job {job} was not failed: {other:?}"),
    };
    let released = |job: u64, needle: &str| match one(job) {
        Verdict::Released(reason) => {
            assert!(reason.contains(needle), "job {job}: {reason:?} does not say {needle:?}");
        }
        other => panic!("job {job} was not declined: {other:?}"),
    };
    failed(1, "does not verify: the envelope was altered");
    failed(2, "the action is for plan");
    // The worker's clock or trust file may be what is wrong: another worker may run these.
    released(3, "expired");
    failed(4, "the action is for queue");
    released(5, "no signature is by a trusted key");
    failed(6, "the queue named input 1, but the action has 1 input(s)");
    failed(8, "arrived with digest");
    failed(9, "arrived with digest");
    // Refused on the blob's header: the signed size caps the fetch.
    failed(10, "is 104857600 bytes, over the limit of 3");
    // The swapped component: the job ran no task (refused before compiling).
    match one(7) {
        Verdict::Completed(out) => {
            assert!(!out.succeeded);
            let reports = out.reports.inline();
            for r in reports {
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
            let agenix_proto::Outcome::Refused { reason } = &reports[0].outcome else {
                unreachable!()
            };
            assert!(reason.contains("arrived with digest"), "{reason}");
        }
        other => panic!("job 7: {other:?}"),
    }
    // Nothing exited anywhere: zero tasks ran.
    for (_, v) in h.verdicts.lock().unwrap().iter() {
        if let Verdict::Completed(out) = v {
            assert!(out.reports.inline().iter().all(|r| r.outcome.exit_code().is_none()));
        }
    }
}

/// The queue hands out the same lease twice in one answer, a hundred leases when the worker
/// asked for one, and later the same job again under new leases, before and after the
/// worker restarts: the job runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_queue_cannot_make_a_job_run_twice_or_past_the_concurrency() {
    let s = stage();
    let (fingerprint, signer) = (s.fingerprint, &s.signer);
    let addr = s.endpoint.local_addr().unwrap();
    let h = Hostile { fingerprint: Some(fingerprint), ..Hostile::default() };
    let nap = std::fs::read(programs::GUEST_NAP).unwrap();
    h.blob(nap.clone());
    let input = InputRef { digest: h.blob(b"200".to_vec()), size: 3 };
    let (p, digest) = plan(signer, &nap, "-i");
    let p = h.blob(p.to_json());
    let inputs = vec![input.clone(); 101];
    let a = h.blob(
        action(signer, digest, &inputs, fingerprint, now() - NOW_SKEW, now() + 600).to_json(),
    );
    // The first answer: job 1 twice, then jobs 2..=100 (other inputs of the same action).
    let mut first = vec![lease(1, 1, p, a, 0), lease(1, 1, p, a, 0)];
    first.extend((2..=100).map(|j| lease(j, 1, p, a, u32::try_from(j).unwrap())));
    // Then job 1's input again, as a new job and as a new lease of job 1.
    let second = vec![lease(1000, 1, p, a, 0)];
    let third = vec![lease(1, 2, p, a, 0)];
    *h.answers.lock().unwrap() = vec![third, second, first];
    let h = Arc::new(h);
    let server = serve(s.endpoint.clone(), h.clone());
    let worker = agw(s.dir.path(), addr, fingerprint);
    // Job 1 once, 99 jobs given back, then the two replays.
    wait_for(&h, 1 + 99 + 2, "claims answered").await;
    stop(worker);

    let runs = h.verdicts_of(1);
    let completed = runs.iter().filter(|v| matches!(v, Verdict::Completed(_))).count();
    assert_eq!(completed, 1, "job 1 ran {completed} times: {runs:?}");
    for j in 2..=100 {
        match h.verdicts_of(j).as_slice() {
            [Verdict::Released(r)] => {
                assert!(r.contains("over this worker's concurrency of 1"), "job {j}: {r}")
            }
            other => panic!("job {j}: {other:?}"),
        }
    }
    let already =
        |v: &Verdict| matches!(v, Verdict::Released(r) if r.contains("already ran this job"));
    assert!(h.verdicts_of(1000).iter().all(already), "{:?}", h.verdicts_of(1000));
    assert_eq!(runs.iter().filter(|v| already(v)).count(), 1, "{runs:?}");

    // After a restart the worker still remembers.
    *h.answers.lock().unwrap() = vec![vec![lease(2000, 1, p, a, 0)]];
    let before = h.verdicts.lock().unwrap().len();
    let worker = agw(s.dir.path(), addr, fingerprint);
    wait_for(&h, before + 1, "the replay after a restart").await;
    stop(worker);
    server.abort();
    assert!(
        h.verdicts_of(2000).iter().all(already) && h.verdicts_of(2000).len() == 1,
        "{:?}",
        h.verdicts_of(2000)
    );
}
