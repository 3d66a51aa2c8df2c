//! Signed results (docs/test-matrix.md rows R1–R4) against a real agq on loopback: the
//! queue records a result only with its worker's signed statement, signed by the key the
//! connection proved, bound to this queue, job, lease, action, plan and input, and saying
//! what the result says.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod common;

use agenix_proto::job::{JobState, LeaseEpoch, Reports};
use agenix_proto::wire::{ClientRole, ErrorCode, MAX_CLAIM, Request, Response};
use agenix_proto::{Digest, InputRef, KeyId, Outcome, TaskReport};
use base64::Engine as _;
use common::*;

/// One leased job and its worker, enrolled as `name`.
async fn leased(q: &Agq, name: &str) -> (TestWorker, agenix_proto::job::Lease) {
    let planner = q.client(ClientRole::Planner).await;
    q.submit(&planner, &[b"results"], 3).await;
    let w = q.worker(name).await;
    register(&w, name).await;
    let lease = claim(&w, 1, 1000).await.remove(0);
    (w, lease)
}

/// R1: a result whose signature no longer matches its statement (altered after signing) is
/// refused, and the job stays leased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_a_result_altered_after_signing_is_refused() {
    let q = Agq::start(&[]);
    let (w, lease) = leased(&q, "w").await;
    let statement = w.statement(&lease, &no_output()).await;
    let mut env = agenix_proto::sign_result(&statement, &w.key).unwrap();
    let mut changed = statement.clone();
    changed.succeeded = false;
    env.payload = base64::engine::general_purpose::STANDARD.encode(changed.to_payload());
    let bytes = env.to_json();
    w.put_blob(&bytes).await.unwrap();
    let output = agenix_proto::job::JobOutput {
        succeeded: false,
        result: Some(InputRef { digest: Digest::of(&bytes), size: bytes.len() as u64 }),
        ..no_output()
    };
    let (code, message) =
        refused(&w, &Request::Complete { lease: lease.lease, output, blobs: vec![], claim: 0 })
            .await;
    assert_eq!(code, ErrorCode::Invalid, "{message}");
    assert!(message.starts_with("signed result: ") && message.contains("signature"), "{message}");
    let obs = q.client(ClientRole::Observer).await;
    assert!(matches!(job(&obs, lease.lease.job).await.state, JobState::Leased { .. }));
}

/// R2: a result signed by another worker's key is refused: sent on this worker's
/// connection (forbidden, naming the key), or naming this worker while signed by another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2_a_result_signed_by_another_worker_is_refused() {
    let q = Agq::start(&[]);
    let (w, lease) = leased(&q, "a").await;
    let b = q.worker("b").await;
    let theirs = b.statement(&lease, &no_output()).await;
    let output = b.attach(&theirs, no_output()).await;
    let (code, message) =
        refused(&w, &Request::Complete { lease: lease.lease, output, blobs: vec![], claim: 0 })
            .await;
    assert_eq!(code, ErrorCode::Forbidden, "{message}");
    let b_id = KeyId::of(&b.key.verifying_key());
    assert_eq!(
        message,
        format!("the result is signed by worker key {b_id}, not by this connection's")
    );
    // A's statement, signed by B.
    let mine = w.statement(&lease, &no_output()).await;
    let output = b.attach(&mine, no_output()).await;
    let (code, message) =
        refused(&w, &Request::Complete { lease: lease.lease, output, blobs: vec![], claim: 0 })
            .await;
    assert_eq!(code, ErrorCode::Invalid, "{message}");
    assert!(message.contains(&format!("is signed by {b_id}")), "{message}");
    // An unenrolled key's signature is no worker's.
    let stranger = TestWorker {
        client: w.client.clone(),
        key: agenix_proto::keys::signing_key_from_seed(&[9; 32]),
        queue: q.fingerprint,
    };
    let output = stranger.signed(&lease, no_output()).await;
    let (code, message) =
        refused(&w, &Request::Complete { lease: lease.lease, output, blobs: vec![], claim: 0 })
            .await;
    assert_eq!(code, ErrorCode::Invalid, "{message}");
    assert!(message.contains("no signature is by a trusted key"), "{message}");
    // The worker's own is recorded.
    let r = w.complete_signed(&lease, no_output()).await;
    assert_eq!(recorded(r), JobState::Succeeded);
}

/// R3: a statement bound to anything else (another queue, job, lease epoch, plan, input or
/// action) is refused, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_a_statement_about_another_job_or_lease_is_refused() {
    let q = Agq::start(&[]);
    let (w, lease) = leased(&q, "w").await;
    let good = w.statement(&lease, &no_output()).await;
    let other = Digest::of(b"elsewhere");
    let cases: Vec<(&str, agenix_proto::ResultStatement)> = vec![
        (
            "queue",
            agenix_proto::ResultStatement {
                queue: agenix_proto::Fingerprint(other),
                ..good.clone()
            },
        ),
        (
            "job",
            agenix_proto::ResultStatement {
                job: agenix_proto::job::JobId(lease.lease.job.0 + 1),
                ..good.clone()
            },
        ),
        (
            "lease epoch",
            agenix_proto::ResultStatement {
                epoch: LeaseEpoch(lease.lease.epoch.0 + 1),
                ..good.clone()
            },
        ),
        ("plan", agenix_proto::ResultStatement { plan: other, ..good.clone() }),
        ("input", agenix_proto::ResultStatement { input: None, ..good.clone() }),
        ("action", agenix_proto::ResultStatement { action: other, ..good.clone() }),
    ];
    for (what, statement) in cases {
        let output = w.attach(&statement, no_output()).await;
        let (code, message) =
            refused(&w, &Request::Complete { lease: lease.lease, output, blobs: vec![], claim: 0 })
                .await;
        assert_eq!(code, ErrorCode::Invalid, "{what}: {message}");
        assert!(message.starts_with(&format!("the signed result's {what} is ")), "{message}");
    }
    let r = w.complete_signed(&lease, no_output()).await;
    assert_eq!(recorded(r), JobState::Succeeded);
}

/// R4: a result that says other than its statement (success, output, a task's report,
/// the stderr of one) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r4_a_result_other_than_its_statement_is_refused() {
    let q = Agq::start(&[]);
    let (w, lease) = leased(&q, "w").await;
    let report = TaskReport {
        task: "t".parse().unwrap(),
        outcome: Outcome::Exited { code: 0 },
        stdout_digest: Digest::of(b"out"),
        stdout_bytes: 3,
        stderr: "said\n".into(),
        fuel_consumed: Some(1),
        wall_ms: 1,
        peak_memory_bytes: 1,
    };
    let out: &[u8] = b"out";
    w.put_blob(out).await.unwrap();
    let real = agenix_proto::job::JobOutput {
        reports: Reports::Inline(vec![report.clone()]),
        output: Some(InputRef { digest: Digest::of(out), size: 3 }),
        ..no_output()
    };
    let signed = w.signed(&lease, real.clone()).await;
    let mut stderr = report.clone();
    stderr.stderr = "other\n".into();
    let lies = [
        ("success", agenix_proto::job::JobOutput { succeeded: false, ..signed.clone() }),
        ("output", agenix_proto::job::JobOutput { output: None, ..signed.clone() }),
        (
            "report of a task",
            agenix_proto::job::JobOutput {
                reports: Reports::Inline(vec![stderr]),
                ..signed.clone()
            },
        ),
        (
            "task count",
            agenix_proto::job::JobOutput { reports: Reports::Inline(vec![]), ..signed.clone() },
        ),
    ];
    for (what, output) in lies {
        let (code, message) =
            refused(&w, &Request::Complete { lease: lease.lease, output, blobs: vec![], claim: 0 })
                .await;
        assert_eq!(code, ErrorCode::Invalid, "{what}: {message}");
        assert!(message.starts_with(&format!("the signed result's {what} is ")), "{message}");
    }
    // A failure the queue would keep otherwise than sent (terminal controls, too long) is
    // refused: what it keeps must be what was signed.
    for failure in ["\u{1b}[31mred".to_string(), "f".repeat(agenix_proto::job::MAX_REASON + 1)] {
        let output = agenix_proto::job::JobOutput { failure: Some(failure), ..real.clone() };
        let output = w.signed(&lease, output).await;
        let (code, message) =
            refused(&w, &Request::Complete { lease: lease.lease, output, blobs: vec![], claim: 0 })
                .await;
        assert_eq!(code, ErrorCode::Invalid, "{message}");
        assert!(message.starts_with("the failure must be at most 4096 bytes"), "{message}");
    }
    let r = w
        .request(&Request::Complete { lease: lease.lease, output: signed, blobs: vec![], claim: 0 })
        .await
        .unwrap();
    assert_eq!(recorded(r), JobState::Succeeded);
}

/// A result may carry its blobs (its signed statement and output) after its frame: they are
/// stored in the commit that records it, and served after a SIGKILL. A carried blob whose
/// bytes are not its digest's refuses the result and stores nothing; more than
/// `MAX_COMPLETE_BLOBS` are refused as too large; a large output (a file at the queue)
/// travels the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_carrying_its_blobs_is_stored_with_them() {
    use agenix_proto::wire::{MAX_COMPLETE_BLOBS, Response};
    let mut q = Agq::start(&[]);
    let planner = q.client(ClientRole::Planner).await;
    q.submit(&planner, &[b"carried one", b"carried two"], 3).await;
    let w = q.worker("w").await;
    register(&w, "w").await;
    let mut leases = claim(&w, 2, 1000).await;
    assert_eq!(leases.len(), 2);
    let (first, second) = (leases.remove(0), leases.remove(0));
    let obs = q.client(ClientRole::Observer).await;
    let leased = |s: &JobState| matches!(s, JobState::Leased { .. });

    // A small output with its signed statement, carried.
    let out: &[u8] = b"the output, carried";
    let (output, env) = signed_with_output(&w, &first, out, Reports::Inline(vec![])).await;
    // Bytes that are not the output's refuse the result; nothing is stored.
    let lie: &[u8] = b"NOT the output, ok!";
    assert_eq!(lie.len(), out.len());
    let req = Request::Complete {
        lease: first.lease,
        output: output.clone(),
        blobs: vec![
            InputRef { digest: Digest::of(&env), size: env.len() as u64 },
            InputRef { digest: Digest::of(out), size: lie.len() as u64 },
        ],
        claim: 0,
    };
    let answer = send_with_blobs(&w, &req, &[&env, lie]).await;
    let Response::Error { code, message } = answer else { panic!("accepted: {answer:?}") };
    assert_eq!(code, ErrorCode::Invalid, "{message}");
    assert!(message.contains("hashes to"), "{message}");
    assert!(leased(&job(&obs, first.lease.job).await.state));
    // The failing blob is not stored; on the embedded store, the small blob carried before it
    // is not either (it would have been stored with the result). (As a file, on PostgreSQL,
    // it stays until collected.)
    let mut gone = vec![Digest::of(out)];
    if !agenix_harness::postgres::wanted() {
        gone.push(Digest::of(&env));
    }
    for d in gone {
        assert_eq!(remote(w.get_blob(d, 1 << 20).await.unwrap_err()).0, ErrorCode::NotFound);
    }
    // A blob the result does not name, or names with another size: refused on the header.
    let stray: &[u8] = b"a blob the result does not name";
    for b in [
        InputRef { digest: Digest::of(stray), size: stray.len() as u64 },
        InputRef { digest: Digest::of(out), size: out.len() as u64 + 1 },
    ] {
        let req = Request::Complete {
            lease: first.lease,
            output: output.clone(),
            blobs: vec![b.clone()],
            claim: 0,
        };
        let answer = send_with_blobs(&w, &req, &[stray]).await;
        let message = format!(
            "carried blob {} ({} bytes) is not one the result names with that size",
            b.digest, b.size
        );
        assert_eq!(answer, Response::Error { code: ErrorCode::Invalid, message });
    }
    assert_eq!(remote(w.get_blob(Digest::of(stray), 64).await.unwrap_err()).0, ErrorCode::NotFound);
    // Too many blobs: refused on the header.
    let many = vec![InputRef { digest: Digest::of(out), size: out.len() as u64 }; 4];
    let req =
        Request::Complete { lease: first.lease, output: output.clone(), blobs: many, claim: 0 };
    let answer = send_with_blobs(&w, &req, &[out, out, out, out]).await;
    let too_many = format!("4 blobs carried by a result, over the limit of {MAX_COMPLETE_BLOBS}");
    assert_eq!(answer, Response::Error { code: ErrorCode::TooLarge, message: too_many });
    // Carried whole: recorded, and the blobs served.
    let state =
        w.complete_carrying(first.lease, output.clone(), &[&env, out], 0).await.unwrap().state;
    assert_eq!(state, JobState::Succeeded);

    // At the limit: three blobs, a large output (over 64 KiB: a file at the queue) among them.
    let big = vec![5u8; 70 << 10];
    let reports: &[u8] = b"[]";
    let reports_ref = InputRef { digest: Digest::of(reports), size: reports.len() as u64 };
    let (output, env2) = signed_with_output(&w, &second, &big, Reports::Blob(reports_ref)).await;
    let carried: [&[u8]; MAX_COMPLETE_BLOBS] = [&env2, &big, reports];
    let state = w.complete_carrying(second.lease, output, &carried, 0).await.unwrap().state;
    assert_eq!(state, JobState::Succeeded);

    q.kill();
    q.restart();
    let obs = q.client(ClientRole::Observer).await;
    for (blob, job_id) in [(out, first.lease.job), (&big[..], second.lease.job)] {
        assert_eq!(obs.get_blob(Digest::of(blob), 1 << 20).await.unwrap(), blob);
        assert_eq!(job(&obs, job_id).await.state, JobState::Succeeded);
    }
    for blob in [&env[..], &env2, reports] {
        assert_eq!(obs.get_blob(Digest::of(blob), 1 << 20).await.unwrap(), blob);
    }
}

/// A result of `lease` with `out` as its output and `reports`, and its signed statement (not
/// uploaded: the caller carries it).
async fn signed_with_output(
    w: &TestWorker,
    lease: &agenix_proto::job::Lease,
    out: &[u8],
    reports: Reports,
) -> (agenix_proto::job::JobOutput, Vec<u8>) {
    let output = agenix_proto::job::JobOutput {
        output: Some(InputRef { digest: Digest::of(out), size: out.len() as u64 }),
        reports,
        ..no_output()
    };
    let statement = w.statement(lease, &output).await;
    let env = agenix_proto::sign_result(&statement, &w.key).unwrap().to_json();
    let result = Some(InputRef { digest: Digest::of(&env), size: env.len() as u64 });
    (agenix_proto::job::JobOutput { result, ..output }, env)
}

/// A result asking for more jobs is leased them in the commit that records it: as many as
/// asked, up to the worker's concurrency and `MAX_CLAIM`, only jobs that were queued, and
/// durable with the result; a refused result leases nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_asking_for_more_jobs_is_leased_them_with_its_answer() {
    let mut q = Agq::start(&[]);
    let planner = q.client(ClientRole::Planner).await;
    let inputs: Vec<Vec<u8>> = (0..200).map(|i| format!("next {i}").into_bytes()).collect();
    let inputs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
    q.submit(&planner, &inputs[..4], 3).await;
    let w = q.worker("w").await;
    let id = register(&w, "w").await;
    let obs = q.client(ClientRole::Observer).await;
    let first = claim(&w, 1, 1000).await.remove(0);

    let out: &[u8] = b"first";
    let (output, env) = signed_with_output(&w, &first, out, Reports::Inline(vec![])).await;
    let r = w.complete_carrying(first.lease, output.clone(), &[&env, out], 2).await.unwrap();
    assert_eq!(r.state, JobState::Succeeded);
    assert_eq!(r.leases.len(), 2, "{r:?}");
    for l in &r.leases {
        assert_ne!(l.lease.job, first.lease.job);
        let JobState::Leased { worker_id, epoch, .. } = job(&obs, l.lease.job).await.state else {
            panic!("not leased: {l:?}")
        };
        assert_eq!((worker_id, epoch), (id, l.lease.epoch));
    }
    // The one job left goes to a claim; nothing is leased twice.
    let rest = claim(&w, 64, 0).await;
    assert_eq!(rest.len(), 1);
    assert!(r.leases.iter().all(|l| l.lease.job != rest[0].lease.job));

    // A refused result (its job finished already) leases nothing, though jobs wait.
    q.submit(&planner, &inputs[4..], 3).await;
    let again = Request::Complete { lease: first.lease, output, blobs: vec![], claim: 5 };
    let answer = w.request(&again).await.unwrap_err();
    assert!(answer.code().is_some(), "{answer}");
    assert_eq!(count(&obs, "queued").await, 196);

    // Asking for more than the worker's concurrency (4) is asking for its concurrency.
    let second = &r.leases[0];
    let (output, env) = signed_with_output(&w, second, b"", Reports::Inline(vec![])).await;
    let r = w.complete_carrying(second.lease, output, &[&env, b""], 1000).await.unwrap();
    assert_eq!(r.leases.len(), 4);
    assert_eq!(count(&obs, "queued").await, 192);
    // And for more than MAX_CLAIM, by a worker running more at once, MAX_CLAIM.
    let big = q.worker("big").await;
    let capabilities = agenix_proto::job::Capabilities { concurrency: 100, ..caps("big") };
    let req = Request::Register { capabilities, instance: "big".into() };
    assert!(matches!(big.request(&req).await.unwrap(), Response::Registered { .. }));
    let third = claim(&big, 1, 0).await.remove(0);
    let (output, env) = signed_with_output(&big, &third, b"", Reports::Inline(vec![])).await;
    let many = big.complete_carrying(third.lease, output, &[&env, b""], 1000).await.unwrap();
    assert_eq!(many.leases.len(), MAX_CLAIM as usize);
    assert_eq!(count(&obs, "queued").await, 191 - u64::from(MAX_CLAIM));

    // The leases were stored with the result: after a kill they are still this worker's.
    q.kill();
    q.restart();
    let obs = q.client(ClientRole::Observer).await;
    assert_eq!(job(&obs, second.lease.job).await.state, JobState::Succeeded);
    for l in &r.leases {
        let state = job(&obs, l.lease.job).await.state;
        assert!(
            matches!(state, JobState::Leased { epoch, .. } if epoch == l.lease.epoch),
            "{state:?}"
        );
    }
}
