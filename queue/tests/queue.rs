//! A real agq on loopback, driven through every job state by test clients in each role.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod common;

use agenix_proto::job::{JobOutput, JobState};
use agenix_proto::wire::{ClientRole, ErrorCode, Request, Response};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_goes_from_submission_to_success() {
    let q = Agq::start(&[]);
    let planner = q.client(ClientRole::Planner).await;
    let worker = q.worker("w1").await;
    let jobs = q.submit(&planner, &[b"input one"], 3).await;
    assert_eq!(jobs.len(), 1);
    assert!(matches!(job(&planner, jobs[0]).await.state, JobState::Queued { .. }));
    register(&worker, "w1").await;
    let leases = claim(&worker, 4, 1000).await;
    assert_eq!(leases.len(), 1);
    let lease = &leases[0];
    assert_eq!(lease.lease.job, jobs[0]);
    assert_eq!(lease.attempt, 1);
    // The worker can fetch everything it must verify: both envelopes, and the input the
    // action names at the lease's index.
    let action = worker.get_blob(lease.action, 1 << 20).await.unwrap();
    let action = agenix_proto::Envelope::from_json(&action).unwrap();
    let action = agenix_proto::Action::from_json(&action.payload_unverified().unwrap()).unwrap();
    let input = &action.inputs[lease.input as usize];
    assert_eq!(worker.get_blob(input.digest, 1 << 20).await.unwrap(), b"input one");
    let plan = worker.get_blob(lease.plan, 2 << 20).await.unwrap();
    assert!(agenix_proto::Envelope::from_json(&plan).is_ok());
    worker.put_blob(b"the output").await.unwrap();
    let output = JobOutput {
        succeeded: true,
        failure: None,
        reports: agenix_proto::job::Reports::Inline(vec![]),
        output: Some(agenix_proto::InputRef {
            digest: agenix_proto::Digest::of(b"the output"),
            size: 10,
        }),
        result: None,
    };
    // Without the worker's signed statement, the result is refused.
    let unsigned =
        Request::Complete { lease: lease.lease, output: output.clone(), blobs: vec![], claim: 0 };
    let (code, message) = refused(&worker, &unsigned).await;
    assert_eq!(code, ErrorCode::Invalid);
    assert_eq!(message, "the result carries no signed statement: it is refused");
    let r = worker.complete_signed(lease, output).await;
    assert!(matches!(r, Response::Recorded { state: JobState::Succeeded, .. }), "{r:?}");
    let done = job(&planner, jobs[0]).await;
    assert_eq!(done.state, JobState::Succeeded);
    let out = done.output.unwrap().output.unwrap();
    assert_eq!(planner.get_blob(out.digest, 1 << 20).await.unwrap(), b"the output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_is_refused_what_it_may_not_do() {
    let q = Agq::start(&[]);
    let planner = q.client(ClientRole::Planner).await;
    let worker = q.client(ClientRole::Worker).await;
    let observer = q.client(ClientRole::Observer).await;
    // A worker token can never submit or cancel.
    let (plan, d) = q.plan(b"c", &[]);
    let (action, _) = q.action(d, &[], 1);
    let err = worker.request(&submit_of(&planner, &plan, &action).await).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    assert!(err.to_string().contains("the worker role may not submit"), "{err}");
    // A planner token can never claim.
    let err = planner.request(&Request::Claim { max: 1, wait_ms: 0 }).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    // An observer only reads.
    let err =
        observer.request(&Request::Cancel { job: agenix_proto::job::JobId(1) }).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    assert!(matches!(observer.request(&Request::Stats {}).await.unwrap(), Response::Stats { .. }));
    let err = observer.put_blob(b"x").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_and_their_plans_are_forgotten_after_retention() {
    let mut q = Agq::start(&["--retention", "1s"]);
    let planner = q.client(ClientRole::Planner).await;
    let worker = q.worker("w1").await;
    let jobs = q.submit(&planner, &[], 1).await;
    register(&worker, "w1").await;
    let lease = claim(&worker, 1, 1000).await.remove(0);
    let r = worker.complete_signed(&lease, no_output()).await;
    assert!(matches!(r, Response::Recorded { state: JobState::Succeeded, .. }), "{r:?}");
    let gone = (ErrorCode::NotFound, format!("no job {}", jobs[0]));
    let mut waited = 0;
    while refused_or_none(&planner, jobs[0]).await != Some(gone.clone()) {
        assert!(waited < 100, "job {} still remembered after 10 s", jobs[0]);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        waited += 1;
    }
    // On disk too: no job left, while the action stays (it dedups resubmission until it
    // expires). The queue shows the forgetting before it is committed (it is harmless if
    // lost), and commits in order: a later submission, once acknowledged, is behind it.
    let later = q.submit(&planner, &[], 1).await;
    planner.close();
    worker.close();
    q.kill();
    let loaded = q.stored().load().unwrap();
    let kept: Vec<_> = loaded.jobs.iter().map(|j| j.id).collect();
    assert_eq!(kept, [later[0]], "{:?}", loaded.jobs);
    assert_eq!(loaded.actions.len(), 2);
}

/// The refusal `ShowJob` gets, or `None` when the job is still shown.
async fn refused_or_none(
    c: &agenix_link::Client,
    id: agenix_proto::job::JobId,
) -> Option<(ErrorCode, String)> {
    match c.request(&Request::ShowJob { job: id }).await {
        Ok(Response::Job { .. }) => None,
        Err(e) => Some(remote(e)),
        Ok(other) => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_has_gone_is_leased_nothing() {
    let q = Agq::start(&[]);
    let planner = q.client(ClientRole::Planner).await;
    // One worker gives up on its waiting claim but stays connected; another closes its
    // connection while its claim waits.
    let quitter = std::sync::Arc::new(q.client(ClientRole::Worker).await);
    register(&quitter, "quitter").await;
    let closer = std::sync::Arc::new(q.client(ClientRole::Worker).await);
    register(&closer, "closer").await;
    let claim_of = |c: &std::sync::Arc<agenix_link::Client>| {
        let c = c.clone();
        tokio::spawn(async move { c.request(&Request::Claim { max: 4, wait_ms: 20_000 }).await })
    };
    let given_up = claim_of(&quitter);
    let cut_off = claim_of(&closer);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Both claims are waiting at the queue (nothing to lease yet).
    assert!(!given_up.is_finished() && !cut_off.is_finished(), "a claim did not wait");
    given_up.abort();
    closer.close();
    let ended = cut_off.await.unwrap();
    assert!(ended.is_err(), "a claim on a closed connection answered: {ended:?}");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;

    let jobs = q.submit(&planner, &[b"one", b"two"], 3).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(count(&planner, "leased").await, 0, "a job was leased to a worker that had gone");
    assert_eq!(count(&planner, "queued").await, 2);
    // A worker that is there gets them at once.
    let present = q.worker("present").await;
    register(&present, "present").await;
    let mut leased: Vec<_> = claim(&present, 4, 0).await.iter().map(|l| l.lease.job).collect();
    leased.sort();
    let mut expected = jobs.clone();
    expected.sort();
    assert_eq!(leased, expected);
    drop(quitter);
}

/// `agq serve --ready-file F` writes where it serves and as whom, once it serves (what
/// scripts and harnesses wait for instead of reading its output), before it prints its
/// start-up line; a clean shutdown removes F, so a stale file never names a stopped queue.
#[test]
fn the_ready_file_says_where_agq_serves_and_goes_when_it_stops() {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_agq"));
    let data = dir.path().join("q");
    let fingerprint = agenix_harness::init(&bin, &data).unwrap();
    let ready = dir.path().join("ready.json");
    let mut child = Command::new(&bin)
        .args(["serve", "--data"])
        .arg(&data)
        .args(["--listen", "127.0.0.1:0", "--ready-file"])
        .arg(&ready)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let said: serde_json::Value = serde_json::from_slice(&std::fs::read(&ready).unwrap()).unwrap();
    let address = said["address"].as_str().unwrap();
    assert_eq!(said["fingerprint"], fingerprint.as_str());
    assert_eq!(line.trim_end(), format!("agq: serving on {address} as {fingerprint}"));
    assert!(address.starts_with("127.0.0.1:") && !address.ends_with(":0"), "{address}");

    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(!ready.exists(), "the ready file outlived the queue");
}

/// The ready file never replaces a file agq keeps, nor anything that is not a ready file:
/// one inside the queue directory, or an existing file of another kind, is refused before
/// anything serves, and the file is left as it was.
#[test]
fn the_ready_file_never_replaces_a_file_that_is_not_one() {
    use std::process::Command;

    let dir = tempfile::tempdir().unwrap();
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_agq"));
    let data = dir.path().join("q");
    let out = Command::new(&bin).args(["init", "--data"]).arg(&data).output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1, "only the fingerprint");
    let other = dir.path().join("notes.txt");
    std::fs::write(&other, "mine").unwrap();
    let cases = [
        (data.join("identity.key"), "is inside the queue directory"),
        (data.join("queue.redb"), "is inside the queue directory"),
        (data.join("new.ready"), "is inside the queue directory"),
        (other.clone(), "exists and is not a ready file: not replacing it"),
        (dir.path().to_path_buf(), "exists and is not a ready file: not replacing it"),
    ];
    for (file, says) in cases {
        let before = std::fs::read(&file).ok();
        let out = Command::new(&bin)
            .args(["serve", "--data"])
            .arg(&data)
            .args(["--listen", "127.0.0.1:0", "--ready-file"])
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {err}", file.display());
        assert!(err.contains(says), "{}: {err}", file.display());
        assert!(out.stdout.is_empty(), "it never served: {}", String::from_utf8_lossy(&out.stdout));
        assert_eq!(std::fs::read(&file).ok(), before, "{} changed", file.display());
    }
    assert!(!data.join("new.ready").exists());

    // An earlier run's ready file is removed first, so a start that then fails leaves no
    // file naming a queue that is not there.
    let stale = dir.path().join("stale.ready");
    std::fs::write(&stale, r#"{"address":"127.0.0.1:9","fingerprint":"sha256:00"}"#).unwrap();
    let out = Command::new(&bin)
        .args(["serve", "--data"])
        .arg(&data)
        .args(["--listen", "127.0.0.1:0", "--trust", "/nonexistent/trust.json", "--ready-file"])
        .arg(&stale)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stale.exists(), "the stale ready file is gone");
}

/// The number of durable commits agq has made, from its metrics at `at`.
fn commits(at: std::net::SocketAddr) -> u64 {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(at).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: agq\r\nConnection: close\r\n\r\n").unwrap();
    let mut page = String::new();
    s.read_to_string(&mut page).unwrap();
    page.lines()
        .find_map(|l| l.strip_prefix("agenix_queue_commit_duration_seconds_count "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no commit count in {page}"))
}

/// A submission leases its job to a claim waiting for work in the commit that records it:
/// one durable write for both, the lease as durable as the submission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_claim_is_leased_a_new_job_in_the_submissions_commit() {
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut q = Agq::start(&["--metrics", &metrics.to_string()]);
    let planner = q.client(ClientRole::Planner).await;
    planner.put_blob(COMPONENT).await.unwrap();
    let worker = q.worker("w").await;
    let id = register(&worker, "w").await;
    let (plan, digest) = q.plan(COMPONENT, &[]);
    let plan = plan.to_json();
    let mut one_commit = false;
    let mut leased = vec![];
    // Three rounds, so that a checkpoint of the audit log (every 10 s) cannot be in all.
    for _ in 0..3 {
        let waiting = {
            let w = worker.client.clone();
            tokio::spawn(async move { w.claim(4, 10_000).await.unwrap() })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let before = commits(metrics);
        let (action, _) = q.action(digest, &[], 3);
        let action = action.to_json();
        let jobs = planner
            .submit_carrying(
                agenix_proto::Digest::of(&plan),
                agenix_proto::Digest::of(&action),
                &[&plan, &action],
            )
            .await
            .unwrap()
            .jobs;
        let leases = waiting.await.unwrap();
        assert_eq!(leases.iter().map(|l| l.lease.job).collect::<Vec<_>>(), jobs);
        one_commit |= commits(metrics) - before == 1;
        leased.extend(leases);
    }
    assert!(one_commit, "every round took more than one commit");
    q.kill();
    q.restart();
    let obs = q.client(ClientRole::Observer).await;
    for l in leased {
        let state = job(&obs, l.lease.job).await.state;
        assert!(
            matches!(state, JobState::Leased { epoch, worker_id, .. } if epoch == l.lease.epoch && worker_id == id),
            "{state:?}"
        );
    }
}

/// Submissions made at once, with many claims waiting: each hand-over reaches its claim
/// (none is leased, taken back and leased again), and every job succeeds once, on its
/// first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_hand_their_jobs_to_waiting_claims() {
    let q = std::sync::Arc::new(Agq::start(&["--requests-per-minute", "10000000"]));
    let obs = q.client(ClientRole::Observer).await;
    let mut workers = vec![];
    for i in 0..8 {
        let w = q.worker(&format!("w{i}")).await;
        register(&w, &format!("w{i}")).await;
        workers.push(tokio::spawn(async move {
            let mut done = 0;
            loop {
                let leases = claim(&w, 1, 2000).await;
                if leases.is_empty() {
                    return done;
                }
                for l in leases {
                    let r = w.complete_signed(&l, no_output()).await;
                    assert!(matches!(r, Response::Recorded { .. }), "{r:?}");
                    done += 1;
                }
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut submitters = vec![];
    for s in 0..4 {
        let q = q.clone();
        submitters.push(tokio::spawn(async move {
            let planner = q.client(ClientRole::Planner).await;
            for i in 0..25 {
                let input = format!("submitter {s} job {i}");
                q.submit(&planner, &[input.as_bytes()], 1).await;
            }
        }));
    }
    for s in submitters {
        s.await.unwrap();
    }
    let mut ran = 0;
    for w in workers {
        ran += w.await.unwrap();
    }
    assert_eq!(ran, 100);
    assert_eq!(count(&obs, "succeeded").await, 100);
    let jobs = list(&obs, agenix_proto::wire::JobFilter::default()).await;
    assert!(jobs.iter().all(|j| j.attempts == 1), "{jobs:?}");
    assert!(!q.log().contains("took back"), "{}", q.log());
}
