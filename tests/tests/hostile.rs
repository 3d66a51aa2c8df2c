//! A hostile queue: a test server speaking the real protocol that alters, swaps and replays
//! plans, actions and blobs, hands out the same lease twice, more leases than asked for, and
//! jobs the worker has already run. A real agw (whose trust file trusts the signer) must run
//! nothing it should not: forgeries fail non-retryably with the reason, causes of the
//! worker's own are declined (released), and a job runs at most once per worker, also
//! across a restart. And a queue that alters what a worker signed it produced (its output,
//! success, reports, the statement itself, or whose job it was) is caught by
//! `agx jobs result --verify`.

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
use agenix_proto::job::{
    JobId, JobOutput, JobRecord, JobState, Lease, LeaseEpoch, LeaseRef, Reports, Requirements,
};
use agenix_proto::keys::{SigningKey, signing_key_from_seed, verifying_key_from_pem};
use agenix_proto::result::{ResultStatement, TaskStatement, sign_result, verify_result};
use agenix_proto::wire::{ErrorCode, Request, Response};
use agenix_proto::{
    Action, ActionId, Digest, Envelope, Fingerprint, InputRef, KeyId, Outcome, Plan, Role, Trust,
};
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
/// asked for, whatever the bytes; blobs a worker uploads are added under the digest it
/// announced, unless one is scripted there), blob sizes to claim instead of the real ones,
/// job records to show.
#[derive(Default)]
struct Hostile {
    answers: Mutex<Vec<Vec<Lease>>>,
    blobs: Mutex<HashMap<Digest, Vec<u8>>>,
    jobs: Mutex<HashMap<JobId, JobRecord>>,
    claimed_sizes: HashMap<Digest, u64>,
    verdicts: Mutex<Vec<(JobId, Verdict)>>,
    fingerprint: Option<Fingerprint>,
    /// Leases to answer results with, in order (popped from the end), and how many jobs
    /// each result asked for.
    with_results: Mutex<Vec<Vec<Lease>>>,
    asked: Mutex<Vec<u32>>,
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
            receive(&h, &blobs, &mut recv).await;
            Response::BlobsStored { existed: 0 }
        }
        Request::ShowJob { job } => match h.jobs.lock().unwrap().get(&job).cloned() {
            Some(job) => Response::Job { job },
            None => Response::Error { code: ErrorCode::NotFound, message: format!("no job {job}") },
        },
        Request::Complete { lease, output, blobs, claim } => {
            receive(&h, &blobs, &mut recv).await;
            h.asked.lock().unwrap().push(claim);
            let leases = h.with_results.lock().unwrap().pop().unwrap_or_default();
            h.verdicts.lock().unwrap().push((lease.job, Verdict::Completed(output)));
            Response::Recorded { job: lease.job, state: JobState::Succeeded, leases }
        }
        Request::Fail { lease, reason, retryable } => {
            h.verdicts.lock().unwrap().push((lease.job, Verdict::Failed { reason, retryable }));
            Response::Recorded {
                job: lease.job,
                state: JobState::Dead { reason: "x".into() },
                leases: vec![],
            }
        }
        Request::Release { lease, reason } => {
            h.verdicts.lock().unwrap().push((lease.job, Verdict::Released(reason)));
            Response::Recorded {
                job: lease.job,
                state: JobState::Queued { not_before: 0 },
                leases: vec![],
            }
        }
        other => Response::Error { code: ErrorCode::BadRequest, message: other.name().into() },
    };
    let _ = write_frame(&mut send, &resp).await;
    let _ = send.finish();
}

/// Reads the blobs announced (their bytes follow the frame one after another, in the order
/// announced) and keeps them.
async fn receive(h: &Hostile, blobs: &[InputRef], recv: &mut quinn::RecvStream) {
    let total: u64 = blobs.iter().map(|b| b.size).sum();
    let mut sink = Vec::new();
    let _ = recv.take(total).read_to_end(&mut sink).await;
    let mut rest = sink.as_slice();
    let mut stored = h.blobs.lock().unwrap();
    for b in blobs {
        let n = usize::try_from(b.size).unwrap().min(rest.len());
        let (bytes, tail) = rest.split_at(n);
        stored.entry(b.digest).or_insert_with(|| bytes.to_vec());
        rest = tail;
    }
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

/// A signed plan napping for the milliseconds its input names, and an action of `jobs`
/// jobs each with the input `ms`, served by `h`: the plan's and the action's digests.
fn naps(
    h: &Hostile,
    signer: &SigningKey,
    fingerprint: Fingerprint,
    ms: &str,
    jobs: usize,
) -> (Digest, Digest) {
    let nap = std::fs::read(programs::GUEST_NAP).unwrap();
    h.blob(nap.clone());
    let input = InputRef { digest: h.blob(ms.as_bytes().to_vec()), size: ms.len() as u64 };
    let (p, digest) = plan(signer, &nap, "-i");
    let inputs = vec![input; jobs];
    let a = action(signer, digest, &inputs, fingerprint, now() - NOW_SKEW, now() + 600);
    (h.blob(p.to_json()), h.blob(a.to_json()))
}

/// A real agw against the hostile queue, with its cache (and its memory of jobs run) in
/// `dir/cache`.
fn agw(dir: &Path, addr: std::net::SocketAddr, fingerprint: Fingerprint) -> Child {
    agw_logging(dir, addr, fingerprint, "warn")
}

/// [`agw`], logging at `level` into `dir/agw.log`.
fn agw_logging(
    dir: &Path,
    addr: std::net::SocketAddr,
    fingerprint: Fingerprint,
    level: &str,
) -> Child {
    Command::new(bin("agw"))
        .args(["--queue", &addr.to_string(), "--fingerprint", &fingerprint.to_string()])
        .arg("--data")
        .arg(dir.join("key"))
        .arg("--trust")
        .arg(dir.join("trust.json"))
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .args(["--concurrency", "1"])
        .env("AGW_LOG", level)
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
                    matches!(r.outcome, Outcome::Refused { .. } | Outcome::Skipped { .. }),
                    "task {} ran: {:?}",
                    r.task,
                    r.outcome
                );
            }
            let Outcome::Refused { reason } = &reports[0].outcome else { unreachable!() };
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
    let (p, a) = naps(&h, signer, fingerprint, "200", 101);
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

/// A result asks for one job more, and a queue answering it with more (the same job twice,
/// another beyond the concurrency) gets the first run and the rest declined or ignored, as
/// for a claim's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_queue_answering_a_result_with_extra_leases_gets_no_more_run() {
    let s = stage();
    let (fingerprint, signer) = (s.fingerprint, &s.signer);
    let addr = s.endpoint.local_addr().unwrap();
    let h = Hostile { fingerprint: Some(fingerprint), ..Hostile::default() };
    let (p, a) = naps(&h, signer, fingerprint, "200", 5);
    *h.answers.lock().unwrap() = vec![vec![lease(1, 1, p, a, 0)]];
    // Job 1's result is answered with job 2 twice and job 3; job 2's with job 4, job 4's
    // with job 5.
    let extra = vec![lease(2, 1, p, a, 1), lease(2, 1, p, a, 1), lease(3, 1, p, a, 2)];
    *h.with_results.lock().unwrap() =
        vec![vec![lease(5, 1, p, a, 4)], vec![lease(4, 1, p, a, 3)], extra];
    let h = Arc::new(h);
    let server = serve(s.endpoint.clone(), h.clone());
    let worker = agw_logging(s.dir.path(), addr, fingerprint, "info");
    // Jobs 1, 2, 4 and 5, and job 3 given back.
    wait_for(&h, 5, "results").await;
    // Nothing more comes: job 2 ran once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop(worker);
    server.abort();

    for j in [1, 2, 4, 5] {
        assert!(matches!(h.verdicts_of(j).as_slice(), [Verdict::Completed(_)]), "job {j}");
    }
    match h.verdicts_of(3).as_slice() {
        [Verdict::Released(r)] => assert!(r.contains("over this worker's concurrency of 1"), "{r}"),
        other => panic!("job 3: {other:?}"),
    }
    assert_eq!(h.verdicts.lock().unwrap().len(), 5);
    // Each result asked for one job: the slot it frees.
    assert_eq!(*h.asked.lock().unwrap(), [1, 1, 1, 1]);
    // Each job's lines name that job alone, though each started in the task of the one before.
    let log = std::fs::read_to_string(s.dir.path().join("agw.log")).unwrap();
    for j in 1..=5 {
        let mine = format!("job{{job={j} ");
        assert!(log.lines().any(|l| l.contains(&mine) && l.contains("result recorded")), "{log}");
    }
    for line in log.lines() {
        assert!(line.matches("job{").count() <= 1, "{line}");
    }
}

/// A worker stopping (SIGTERM) asks for no job with its last result, and a queue that
/// leases it one anyway gets it declined: the worker still stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_queue_cannot_keep_a_stopping_worker_busy() {
    let s = stage();
    let (fingerprint, signer) = (s.fingerprint, &s.signer);
    let addr = s.endpoint.local_addr().unwrap();
    let h = Hostile { fingerprint: Some(fingerprint), ..Hostile::default() };
    let (p, a) = naps(&h, signer, fingerprint, "1500", 2);
    *h.answers.lock().unwrap() = vec![vec![lease(1, 1, p, a, 0)]];
    *h.with_results.lock().unwrap() = vec![vec![lease(2, 1, p, a, 1)]];
    let h = Arc::new(h);
    let server = serve(s.endpoint.clone(), h.clone());
    let mut worker = agw(s.dir.path(), addr, fingerprint);
    // Job 1 naps; the worker is told to stop while it runs.
    let until = Instant::now() + Duration::from_secs(30);
    while !h.answers.lock().unwrap().is_empty() {
        assert!(Instant::now() < until, "job 1 was not claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(h.verdicts.lock().unwrap().is_empty(), "job 1 ended before the worker was stopped");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(worker.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_for(&h, 2, "job 1's result and job 2 declined").await;
    let exited = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = worker.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < exited, "the worker did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    server.abort();
    assert!(status.success(), "{status}");
    assert!(
        matches!(h.verdicts_of(1).as_slice(), [Verdict::Completed(_)]),
        "{:?}",
        h.verdicts_of(1)
    );
    match h.verdicts_of(2).as_slice() {
        [Verdict::Released(r)] => assert!(r.contains("this worker is stopping"), "{r}"),
        other => panic!("job 2: {other:?}"),
    }
    assert_eq!(*h.asked.lock().unwrap(), [0], "a stopping worker asks for no job");
}

/// `agx jobs result JOB` against the queue at `addr` pinned to `fingerprint`, with any token
/// (the hostile queue takes all); with `trust`, `--verify --trust TRUST`.
async fn agx_result(
    dir: &Path,
    addr: std::net::SocketAddr,
    fingerprint: Fingerprint,
    job: u64,
    trust: Option<&Path>,
) -> std::process::Output {
    let token = dir.join("planner.token");
    if !token.exists() {
        std::fs::write(&token, "any token will do\n").unwrap();
    }
    let mut cmd = Command::new(bin("agx"));
    cmd.args(["jobs", "result", &job.to_string()]);
    if let Some(t) = trust {
        cmd.arg("--verify").arg("--trust").arg(t);
    }
    cmd.current_dir(dir)
        .env("AGX_QUEUE", addr.to_string())
        .env("AGX_FINGERPRINT", fingerprint.to_string())
        .env("AGX_TOKEN_FILE", token)
        .env("HOME", dir)
        .env_remove("AGX_TRUST")
        .env_remove("AGX_CONFIG")
        .env_remove("AGX_ROLE")
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap()
}

/// A trust file in `dir` named `name` holding `keys` (name, key, roles).
fn trust_file(
    dir: &Path,
    name: &str,
    keys: &[(&str, agenix_proto::keys::VerifyingKey, &[Role])],
) -> std::path::PathBuf {
    let mut trust = Trust::new();
    for (n, k, roles) in keys {
        trust.add(n, *k, roles).unwrap();
    }
    let path = dir.join(name);
    std::fs::write(&path, trust.to_json()).unwrap();
    path
}

/// The document a signed envelope carries, unverified.
fn payload(env: &Envelope) -> Vec<u8> {
    env.payload_unverified().unwrap()
}

/// A real agw completes one honest lease and signs its result; the hostile queue keeps the
/// result and every blob uploaded, then shows agx the job's record, honest and altered
/// lie by lie. `agx jobs result --verify` accepts the honest record (the output on stdout,
/// the worker named on stderr) and refuses every lie with nothing on stdout and an error
/// naming it; without `--verify` the altered output is printed, labelled unverified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_that_alters_a_signed_result_is_caught_by_agx_verify() {
    let s = stage();
    let (fingerprint, signer) = (s.fingerprint, &s.signer);
    let dir = s.dir.path();
    let addr = s.endpoint.local_addr().unwrap();
    let h = Hostile { fingerprint: Some(fingerprint), ..Hostile::default() };

    // One honest lease: the echo guest copies its input to stdout.
    let echo = std::fs::read(programs::GUEST_ECHO).unwrap();
    h.blob(echo.clone());
    let input_bytes = b"what the planner asked to be echoed".to_vec();
    let input = InputRef { digest: h.blob(input_bytes.clone()), size: input_bytes.len() as u64 };
    let (plan_env, plan_digest) = plan(signer, &echo, "-i");
    let the_plan = Plan::from_json(&payload(&plan_env)).unwrap();
    let action_env = action(
        signer,
        plan_digest,
        std::slice::from_ref(&input),
        fingerprint,
        now() - NOW_SKEW,
        now() + 600,
    );
    let the_action = Action::from_json(&payload(&action_env)).unwrap();
    let plan_blob = h.blob(plan_env.to_json());
    let action_blob = h.blob(action_env.to_json());
    *h.answers.lock().unwrap() = vec![vec![lease(1, 1, plan_blob, action_blob, 0)]];
    let h = Arc::new(h);
    let server = serve(s.endpoint.clone(), h.clone());
    let worker = agw(dir, addr, fingerprint);
    wait_for(&h, 1, "the honest lease completed").await;
    stop(worker);

    // What the worker sent: its result, and the blobs it uploaded for it.
    let output = match h.verdicts_of(1).as_slice() {
        [Verdict::Completed(o)] => o.clone(),
        other => panic!(
            "job 1: {other:?}\n{}",
            std::fs::read_to_string(dir.join("agw.log")).unwrap_or_default()
        ),
    };
    assert!(output.succeeded && output.failure.is_none(), "{output:?}");
    let uploaded = |r: &InputRef| {
        let bytes = h.blobs.lock().unwrap().get(&r.digest).cloned();
        let bytes = bytes.unwrap_or_else(|| panic!("blob {} was not uploaded", r.digest));
        assert_eq!((Digest::of(&bytes), bytes.len() as u64), (r.digest, r.size));
        bytes
    };
    let out_ref = output.output.clone().expect("the output task ran");
    assert_eq!(uploaded(&out_ref), input_bytes, "echo copies its input");
    let statement_ref = output.result.clone().expect("the worker signs its result");
    let statement_blob = uploaded(&statement_ref);
    let reports = match &output.reports {
        Reports::Inline(r) => r.clone(),
        Reports::Blob(r) => panic!("one small task's report travels inline, not as {r:?}"),
    };
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].outcome, Outcome::Exited { code: 0 });

    // The planner's trust file: the worker's own public key, for results.
    let pem = std::fs::read_to_string(dir.join("key").join("worker.pub")).unwrap();
    let worker_key = verifying_key_from_pem(&pem).unwrap();
    let worker_id = KeyId::of(&worker_key);
    let trust = trust_file(dir, "planner-trust.json", &[("w1", worker_key, &[Role::Worker])]);
    // What the worker signed: this queue, job, plan, input, output and report.
    let signed = verify_result(
        &statement_blob,
        &Trust::from_json(&std::fs::read(&trust).unwrap()).unwrap(),
        now(),
    )
    .unwrap();
    let statement: ResultStatement = signed.statement().clone();
    assert_eq!(signed.signer(), worker_id);
    assert_eq!(
        (statement.queue, statement.job, statement.plan, &statement.input, &statement.output),
        (fingerprint, JobId(1), plan_digest, &Some(input.clone()), &Some(out_ref.clone()))
    );
    assert_eq!(statement.tasks, vec![TaskStatement::of(&reports[0])]);

    // The job as an honest queue shows it.
    let honest = JobRecord {
        id: JobId(1),
        action: the_action.action_id.clone(),
        plan: plan_digest,
        input: Some(input.clone()),
        index: 0,
        priority: the_action.priority,
        max_attempts: the_action.max_attempts,
        attempts: 1,
        epoch: LeaseEpoch(1),
        state: JobState::Succeeded,
        cancel_requested: false,
        requirements: Requirements::of(&the_plan),
        submitted_at: now() * 1000,
        updated_at: now() * 1000,
        last_error: None,
        declined: vec![],
        output: Some(output.clone()),
    };
    let show = |rec: JobRecord| {
        let mut jobs = h.jobs.lock().unwrap();
        jobs.clear();
        jobs.insert(rec.id, rec);
    };

    show(honest.clone());
    let out = agx_result(dir, addr, fingerprint, 1, Some(&trust)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the honest result: {stderr}");
    assert_eq!(out.stdout, input_bytes, "the honest result: {stderr}");
    assert!(
        stderr.contains(&format!(
            "job 1: succeeded (verified: signed by worker \"w1\", {worker_id}, at "
        )),
        "{stderr}"
    );

    // Each lie: the record shown for `job`, checked against `trust`, and what agx must say.
    let refused = |what: &str, out: &std::process::Output, says: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted\n{stderr}");
        assert!(
            out.stdout.is_empty(),
            "{what}: printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(stderr.contains(says), "{what}: {stderr:?} does not say {says:?}");
    };
    let with = |change: &dyn Fn(&mut JobOutput)| {
        let mut rec = honest.clone();
        change(rec.output.as_mut().unwrap());
        rec
    };
    let not_signed = "job 1: the result is not what its worker signed: ";

    // (a) The output swapped for other bytes, served under their own digest.
    let forged_bytes = b"what the queue would rather the planner believed".to_vec();
    let forged = InputRef { digest: h.blob(forged_bytes.clone()), size: forged_bytes.len() as u64 };
    let swapped = with(&|o| o.output = Some(forged.clone()));
    show(swapped.clone());
    refused(
        "output swapped",
        &agx_result(dir, addr, fingerprint, 1, Some(&trust)).await,
        &format!(
            "{not_signed}the signed result's output is {:?}, not {:?}",
            Some(&out_ref),
            Some(&forged)
        ),
    );
    // (f) Without --verify, the same lie is printed, labelled unverified.
    let out = agx_result(dir, addr, fingerprint, 1, None).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(out.stdout, forged_bytes, "{stderr}");
    assert!(
        stderr.contains("job 1: succeeded (unverified: --verify checks the worker's signature)"),
        "{stderr}"
    );
    assert!(!stderr.contains("(verified"), "{stderr}");

    // (b) Success flipped; a failure made up.
    show(with(&|o| o.succeeded = false));
    refused(
        "success flipped",
        &agx_result(dir, addr, fingerprint, 1, Some(&trust)).await,
        &format!("{not_signed}the signed result's success is true, not false"),
    );
    show(with(&|o| {
        o.succeeded = false;
        o.failure = Some("task t exited 1".into());
        o.output = None;
    }));
    refused(
        "made a failure",
        &agx_result(dir, addr, fingerprint, 1, Some(&trust)).await,
        &format!("{not_signed}the signed result's success is true, not false"),
    );
    show(with(&|o| o.failure = Some("task t exited 1".into())));
    refused(
        "failure changed",
        &agx_result(dir, addr, fingerprint, 1, Some(&trust)).await,
        &format!("{not_signed}the signed result's failure is None, not Some(\"task t exited 1\")"),
    );

    // (c) A task's report altered: its stderr, its exit code; dropped; altered and moved
    // into a blob.
    let report_lie = |what: &str, change: &dyn Fn(&mut agenix_proto::TaskReport)| {
        let mut altered = reports.clone();
        change(&mut altered[0]);
        let says = format!(
            "{not_signed}the signed result's report of a task is {:?}, not {:?}",
            statement.tasks[0],
            TaskStatement::of(&altered[0])
        );
        (what.to_string(), altered, says)
    };
    let report_lies = [
        report_lie("stderr altered", &|r| r.stderr = "nothing to see here\n".into()),
        report_lie("exit code altered", &|r| r.outcome = Outcome::Exited { code: 3 }),
        report_lie("stdout digest altered", &|r| r.stdout_digest = forged.digest),
    ];
    for (what, altered, says) in &report_lies {
        show(with(&|o| o.reports = Reports::Inline(altered.clone())));
        refused(what, &agx_result(dir, addr, fingerprint, 1, Some(&trust)).await, says);
    }
    let (_, altered, says) = &report_lies[0];
    let json = serde_json::to_vec(altered).unwrap();
    let blob = InputRef { digest: h.blob(json.clone()), size: json.len() as u64 };
    show(with(&|o| o.reports = Reports::Blob(blob.clone())));
    refused(
        "altered reports as a blob",
        &agx_result(dir, addr, fingerprint, 1, Some(&trust)).await,
        says,
    );
    show(with(&|o| o.reports = Reports::Inline(vec![])));
    refused(
        "report dropped",
        &agx_result(dir, addr, fingerprint, 1, Some(&trust)).await,
        &format!("{not_signed}the signed result's task count is 1, not 0"),
    );

    // (d) The statement replaced. By one the queue signed itself, about its forged output:
    // its key is not in the planner's trust file.
    let stranger = signing_key_from_seed(&rand16x2());
    let stranger_id = KeyId::of(&stranger.verifying_key());
    let own =
        ResultStatement { output: Some(forged.clone()), worker: stranger_id, ..statement.clone() };
    let own = sign_result(&own, &stranger).unwrap().to_json();
    let own = InputRef { digest: h.blob(own.clone()), size: own.len() as u64 };
    show(with(&|o| {
        o.output = Some(forged.clone());
        o.result = Some(own.clone());
    }));
    refused(
        "a statement by an untrusted key",
        &agx_result(dir, addr, fingerprint, 1, Some(&trust)).await,
        &format!(
            "job 1: the signed result does not verify: no signature is by a trusted key \
             (signed by {stranger_id})"
        ),
    );
    // By another worker the planner trusts, naming this one.
    let both = trust_file(
        dir,
        "two-workers.json",
        &[("w1", worker_key, &[Role::Worker]), ("w2", stranger.verifying_key(), &[Role::Worker])],
    );
    let named = ResultStatement { output: Some(forged.clone()), ..statement.clone() };
    let named = sign_result(&named, &stranger).unwrap().to_json();
    let named = InputRef { digest: h.blob(named.clone()), size: named.len() as u64 };
    show(with(&|o| {
        o.output = Some(forged.clone());
        o.result = Some(named.clone());
    }));
    refused(
        "a statement naming another worker than its signer",
        &agx_result(dir, addr, fingerprint, 1, Some(&both)).await,
        &format!(
            "job 1: the signed result does not verify: the result names worker {worker_id} but \
             is signed by {stranger_id}"
        ),
    );
    // The worker's own statement, its payload altered to name the forged output.
    let mut altered = Envelope::from_json(&statement_blob).unwrap();
    let changed = ResultStatement { output: Some(forged.clone()), ..statement.clone() };
    altered.payload = base64::engine::general_purpose::STANDARD.encode(changed.to_payload());
    let altered = altered.to_json();
    let altered = InputRef { digest: h.blob(altered.clone()), size: altered.len() as u64 };
    show(with(&|o| {
        o.output = Some(forged.clone());
        o.result = Some(altered.clone());
    }));
    refused(
        "the statement altered after signing",
        &agx_result(dir, addr, fingerprint, 1, Some(&trust)).await,
        &format!(
            "job 1: the signed result does not verify: signature by \"w1\" ({worker_id}) does \
             not verify: the envelope was altered after signing"
        ),
    );
    // No statement at all.
    show(with(&|o| o.result = None));
    refused(
        "no statement",
        &agx_result(dir, addr, fingerprint, 1, Some(&trust)).await,
        "job 1's result carries no signed statement: it cannot be verified",
    );
    // The worker's key, trusted by the planner to sign plans, not results.
    let plans_only = trust_file(dir, "plans-only.json", &[("w1", worker_key, &Role::SIGNING)]);
    show(honest.clone());
    refused(
        "a key not trusted for results",
        &agx_result(dir, addr, fingerprint, 1, Some(&plans_only)).await,
        "job 1: the signed result does not verify: signer \"w1\" is not trusted to sign results",
    );

    // (e) The statement reused for what it is not about: another job, another plan, another
    // input.
    show(JobRecord { id: JobId(2), ..honest.clone() });
    refused(
        "another job",
        &agx_result(dir, addr, fingerprint, 2, Some(&trust)).await,
        "job 2: the signed result's job is 1, not 2",
    );
    let other_plan = Digest::of(b"another plan");
    show(JobRecord { plan: other_plan, ..honest.clone() });
    refused(
        "another plan",
        &agx_result(dir, addr, fingerprint, 1, Some(&trust)).await,
        &format!("job 1: the signed result's plan is {plan_digest}, not {other_plan}"),
    );
    let other_input = InputRef { digest: h.blob(b"other input".to_vec()), size: 11 };
    show(JobRecord { input: Some(other_input.clone()), ..honest.clone() });
    refused(
        "another input",
        &agx_result(dir, addr, fingerprint, 1, Some(&trust)).await,
        &format!(
            "job 1: the signed result's input is {:?}, not {:?}",
            Some(&input),
            Some(&other_input)
        ),
    );
    server.abort();

    // And another queue (another identity, the one agx pins) replaying the honest record and
    // its blobs.
    let s2 = stage();
    let h2 = Hostile { fingerprint: Some(s2.fingerprint), ..Hostile::default() };
    h2.blobs.lock().unwrap().clone_from(&h.blobs.lock().unwrap());
    h2.jobs.lock().unwrap().insert(JobId(1), honest.clone());
    let h2 = Arc::new(h2);
    let addr2 = s2.endpoint.local_addr().unwrap();
    let server2 = serve(s2.endpoint.clone(), h2.clone());
    refused(
        "another queue",
        &agx_result(dir, addr2, s2.fingerprint, 1, Some(&trust)).await,
        &format!("job 1: the signed result's queue is {fingerprint}, not {}", s2.fingerprint),
    );
    server2.abort();
}
