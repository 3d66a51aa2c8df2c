//! What agq checks at submission and upload (docs/test-matrix.md rows P2, P4, P11 at the queue,
//! and the blob store), against a real agq on loopback.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod common;

use agenix_link::Client;
use agenix_proto::envelope::{sign_action, sign_plan};
use agenix_proto::job::{JobOutput, JobState};
use agenix_proto::keys::{KeyId, signing_key_from_seed};
use agenix_proto::wire::{ClientRole, ErrorCode, JobFilter, Request, Response};
use agenix_proto::{Action, Digest, Fingerprint, InputRef};
use common::*;

/// Nothing was enqueued: no job in any state.
async fn assert_empty(c: &Client) {
    assert_eq!(stats(c).await.jobs, Default::default());
    assert!(list(c, JobFilter::default()).await.is_empty());
}

async fn upload(c: &Client, blobs: &[&[u8]]) {
    c.put_many(blobs, false).await.unwrap();
}

/// Sends a `put_blobs` header announcing one blob of `digest` and `size`, then `bytes`, on a
/// raw stream (finished when `finish`), and returns the answer.
async fn put_raw(c: &Client, digest: Digest, size: u64, bytes: &[u8], finish: bool) -> Response {
    let (mut send, mut recv) = c.connection().open_bi().await.unwrap();
    let req = Request::PutBlobs { blobs: vec![InputRef { digest, size }], keep: false };
    agenix_link::write_frame(&mut send, &req).await.unwrap();
    send.write_all(bytes).await.unwrap();
    if finish {
        send.finish().unwrap();
    }
    tokio::time::timeout(std::time::Duration::from_secs(5), agenix_link::read_frame(&mut recv))
        .await
        .expect("no answer")
        .unwrap()
}

fn error(code: ErrorCode, message: String) -> Response {
    Response::Error { code, message }
}

/// Files in the blob store, upload temporaries included.
fn stored_files(q: &Agq) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(q.data().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p04_replayed_action_is_recognised_after_a_queue_restart() {
    let mut q = Agq::start(&[]);
    let planner = q.client(ClientRole::Planner).await;
    let inputs: [&[u8]; 2] = [b"p04 one", b"p04 two"];
    upload(&planner, &[COMPONENT, inputs[0], inputs[1]]).await;
    let (plan, digest) = q.plan(COMPONENT, &[]);
    let action = q.unsigned_action(digest, &inputs, 3);
    let submit = submit_of(&planner, &plan, &q.sign(&action)).await;
    let Response::Submitted { jobs, duplicate: false } = planner.request(&submit).await.unwrap()
    else {
        panic!()
    };
    // One of its jobs runs to completion before the restart.
    let w = q.worker("w").await;
    register(&w, "w").await;
    let lease = claim(&w, 1, 1000).await.remove(0);
    let r = w.complete_signed(&lease, no_output()).await;
    assert!(matches!(r, Response::Recorded { .. }), "{r:?}");

    q.restart();
    drop((planner, w));
    let planner = q.client(ClientRole::Planner).await;
    // The identical action is recognised: its jobs, nothing new, nothing re-run.
    let again = planner.request(&submit).await.unwrap();
    assert_eq!(again, Response::Submitted { jobs: jobs.clone(), duplicate: true });
    assert_eq!(job(&planner, lease.lease.job).await.state, JobState::Succeeded);
    // The same id with other bytes is refused.
    let changed = Action { inputs: action.inputs[..1].to_vec(), ..action.clone() };
    let (code, message) =
        refused(&planner, &submit_of(&planner, &plan, &q.sign(&changed)).await).await;
    assert_eq!(code, ErrorCode::Conflict);
    assert_eq!(
        message,
        format!("action {} was already submitted with different content", action.action_id)
    );
    let s = stats(&planner).await;
    assert_eq!(s.jobs.get("succeeded"), Some(&1));
    assert_eq!(s.jobs.get("queued"), Some(&1));
    assert_eq!(s.jobs.values().sum::<u64>(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p11_action_for_another_queue_is_invalid_and_nothing_is_enqueued() {
    let q = Agq::start(&[]);
    let planner = q.client(ClientRole::Planner).await;
    upload(&planner, &[COMPONENT]).await;
    let (plan, digest) = q.plan(COMPONENT, &[]);
    let other = Fingerprint(Digest::of(b"another queue's key"));
    let action = Action { audience: other, ..q.unsigned_action(digest, &[], 3) };
    let req = submit_of(&planner, &plan, &q.sign(&action)).await;
    let (code, message) = refused(&planner, &req).await;
    assert_eq!(code, ErrorCode::Invalid);
    assert_eq!(
        message,
        format!("action: the action is for queue {other}, not this one ({})", q.fingerprint)
    );
    assert_empty(&planner).await;
    // The refused action left no trace: the same id, addressed to this queue, is new.
    let fixed = Action { audience: q.fingerprint, ..action };
    let req = submit_of(&planner, &plan, &q.sign(&fixed)).await;
    let resp = planner.request(&req).await.unwrap();
    assert!(matches!(resp, Response::Submitted { duplicate: false, .. }), "{resp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p02_plan_or_action_signed_by_an_unknown_key_is_invalid_at_submit() {
    let q = Agq::start(&[]);
    let planner = q.client(ClientRole::Planner).await;
    upload(&planner, &[COMPONENT]).await;
    let stranger = signing_key_from_seed(&[7; 32]);
    let stranger_id = KeyId::of(&stranger.verifying_key());
    let untrusted = format!("no signature is by a trusted key (signed by {stranger_id})");

    // A plan signed by a key the queue does not trust.
    let plan = plan_value(COMPONENT, &[]);
    let digest = Digest::of(&plan.to_payload());
    let (action, _) = q.action(digest, &[], 3);
    let req = submit_of(&planner, &sign_plan(&plan, &stranger).unwrap(), &action).await;
    let (code, message) = refused(&planner, &req).await;
    assert_eq!((code, message), (ErrorCode::Invalid, format!("plan: {untrusted}")));

    // An action signed by it, for a trusted plan.
    let (plan, digest) = q.plan(COMPONENT, &[]);
    let action = sign_action(&q.unsigned_action(digest, &[], 3), &stranger).unwrap();
    let (code, message) = refused(&planner, &submit_of(&planner, &plan, &action).await).await;
    assert_eq!((code, message), (ErrorCode::Invalid, format!("action: {untrusted}")));
    assert_empty(&planner).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_naming_a_blob_not_uploaded_is_invalid_naming_the_digest() {
    let q = Agq::start(&[]);
    let planner = q.client(ClientRole::Planner).await;
    let (stored, missing): (&[u8], &[u8]) = (b"uploaded", b"never uploaded");
    upload(&planner, &[COMPONENT, stored]).await;
    let (plan, digest) = q.plan(COMPONENT, &[]);

    // An input that was never uploaded.
    let (action, _) = q.action(digest, &[stored, missing], 3);
    let req = submit_of(&planner, &plan, &action).await;
    let (code, message) = refused(&planner, &req).await;
    assert_eq!(code, ErrorCode::Invalid);
    assert_eq!(message, format!("blobs not stored (upload them first): {}", Digest::of(missing)));

    // An input stored with another size than the action says.
    let mut action = q.unsigned_action(digest, &[stored], 3);
    action.inputs = vec![InputRef { digest: Digest::of(stored), size: 999 }];
    let req = submit_of(&planner, &plan, &q.sign(&action)).await;
    let (code, message) = refused(&planner, &req).await;
    assert_eq!(code, ErrorCode::Invalid);
    assert_eq!(
        message,
        format!(
            "blobs not stored (upload them first): {} (stored with 8 bytes, the action says 999)",
            Digest::of(stored)
        )
    );

    // A plan whose component was never uploaded.
    let component: &[u8] = b"a component nobody uploaded";
    let (plan, digest) = q.plan(component, &[]);
    let (action, _) = q.action(digest, &[], 3);
    let (code, message) = refused(&planner, &submit_of(&planner, &plan, &action).await).await;
    assert_eq!(code, ErrorCode::Invalid);
    assert_eq!(message, format!("blobs not stored (upload them first): {}", Digest::of(component)));
    assert_empty(&planner).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_whose_bytes_do_not_match_the_announced_digest_is_invalid() {
    let q = Agq::start(&[]);
    let c = q.client(ClientRole::Planner).await;
    let (announced, sent): (&[u8], &[u8]) = (b"what I announce", b"what I send 123");
    assert_eq!(announced.len(), sent.len());
    let answer = put_raw(&c, Digest::of(announced), 15, sent, true).await;
    let message =
        format!("blob announced as {} hashes to {}", Digest::of(announced), Digest::of(sent));
    assert_eq!(answer, error(ErrorCode::Invalid, message));
    // A stream that ends early.
    let answer = put_raw(&c, Digest::of(announced), 15, &announced[..4], true).await;
    assert_eq!(answer, error(ErrorCode::Invalid, "blob ended after 4 of 15 bytes".into()));
    // Nothing is stored under either digest, and no upload temporary is left behind.
    for d in [Digest::of(announced), Digest::of(sent)] {
        let (code, message) = remote(c.get_blob(d, 1 << 20).await.unwrap_err());
        assert_eq!((code, message), (ErrorCode::NotFound, format!("no blob {d}")));
    }
    // A blob over 64 KiB is a file: no temporary of it is left either.
    let (big, wrong) = (vec![1u8; 70 << 10], vec![2u8; 70 << 10]);
    let answer = put_raw(&c, Digest::of(&big), big.len() as u64, &wrong, true).await;
    let message =
        format!("blob announced as {} hashes to {}", Digest::of(&big), Digest::of(&wrong));
    assert_eq!(answer, error(ErrorCode::Invalid, message));
    assert_eq!(stored_files(&q), Vec::<String>::new());
    // The connection is fine.
    c.put_blob(announced).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_over_max_blob_is_too_large() {
    let q = Agq::start(&["--max-blob", "1024"]);
    let c = q.client(ClientRole::Worker).await;
    // Refused on the header, before any byte is read.
    let big = vec![7u8; 1025];
    let answer = put_raw(&c, Digest::of(&big), 1025, &[], false).await;
    let message = "blob of 1025 bytes is over the limit of 1024".to_string();
    assert_eq!(answer, error(ErrorCode::TooLarge, message));
    // The connection is fine.
    assert!(matches!(c.request(&Request::Stats {}).await.unwrap(), Response::Stats { .. }));
    // At the limit is fine.
    let fits = vec![7u8; 1024];
    assert_eq!(c.put_many(&[&fits], false).await.unwrap(), 0, "stored, new");
    assert_eq!(c.get_blob(Digest::of(&fits), 1024).await.unwrap(), fits);
    // Small: kept in the embedded store, not as a file (on PostgreSQL, a file).
    let files =
        if agenix_harness::postgres::wanted() { vec![Digest::of(&fits).hex()] } else { vec![] };
    assert_eq!(stored_files(&q), files);
}

/// agq refuses a blob far over the cap on its header and stops reading; the client still
/// reports the queue's reason, not a bare "sending stopped by peer".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_far_over_max_blob_is_reported_as_too_large_by_the_client() {
    let q = Agq::start(&["--max-blob", "1024"]);
    let c = q.client(ClientRole::Worker).await;
    let big = vec![7u8; 4 << 20];
    let (code, message) = remote(c.put_blob(&big).await.unwrap_err());
    assert_eq!(code, ErrorCode::TooLarge);
    assert_eq!(message, "blob of 4194304 bytes is over the limit of 1024");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_uploaded_twice_is_stored_once() {
    let q = Agq::start(&[]);
    let planner = q.client(ClientRole::Planner).await;
    let worker = q.client(ClientRole::Worker).await;
    let bytes: &[u8] = b"the same bytes twice";
    let d = Digest::of(bytes);
    assert_eq!(planner.put_many(&[bytes], false).await.unwrap(), 0);
    for c in [&planner, &worker] {
        assert_eq!(c.put_many(&[bytes], false).await.unwrap(), 1, "already stored");
    }
    // Twice in one batch, too, and new twice in one batch: the second is the first.
    assert_eq!(planner.put_many(&[bytes, bytes], false).await.unwrap(), 2);
    let fresh: &[u8] = b"new, twice in one batch";
    assert_eq!(planner.put_many(&[fresh, fresh], false).await.unwrap(), 1);
    assert_eq!(worker.get_blob(d, 1 << 20).await.unwrap(), bytes);
    assert_eq!(worker.get_blob(Digest::of(fresh), 1 << 20).await.unwrap(), fresh);
    // The same for a blob stored as a file (over 64 KiB).
    let big = vec![3u8; 70 << 10];
    assert_eq!(planner.put_many(&[&big, &big], false).await.unwrap(), 1);
    assert_eq!(worker.put_many(&[&big], false).await.unwrap(), 1);
    let files = stored_files(&q);
    assert!(files.contains(&Digest::of(&big).hex()), "{files:?}");
    let small_are_files = agenix_harness::postgres::wanted();
    assert_eq!(files.len(), if small_are_files { 3 } else { 1 }, "{files:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_naming_an_output_blob_not_uploaded_is_invalid() {
    let q = Agq::start(&[]);
    let planner = q.client(ClientRole::Planner).await;
    let jobs = q.submit(&planner, &[b"input"], 3).await;
    let w = q.worker("w").await;
    register(&w, "w").await;
    let held = claim(&w, 1, 1000).await.remove(0);
    let lease = held.lease;
    let out: &[u8] = b"an output never uploaded";
    let output = JobOutput {
        succeeded: true,
        failure: None,
        reports: agenix_proto::job::Reports::Inline(vec![]),
        output: Some(InputRef { digest: Digest::of(out), size: out.len() as u64 }),
        result: None,
    };
    let output = w.signed(&held, output).await;
    let req = Request::Complete { lease, output: output.clone(), blobs: vec![], claim: 0 };
    let (code, message) = refused(&w, &req).await;
    assert_eq!(code, ErrorCode::Invalid);
    assert_eq!(
        message,
        format!("blob {} ({} bytes) is not stored: upload it first", Digest::of(out), out.len())
    );
    // The job is still the worker's; after the upload the same report is recorded.
    assert!(matches!(job(&planner, jobs[0]).await.state, JobState::Leased { .. }));
    w.put_blob(out).await.unwrap();
    let r = w.request(&req).await.unwrap();
    assert_eq!(r, Response::Recorded { job: jobs[0], state: JobState::Succeeded, leases: vec![] });
}

/// A submission may carry its envelopes: stored in the commit that records it, so they
/// survive a kill with it. Only its own two envelopes, each once and within the envelope's
/// size limit, with bytes that hash to their digests; anything else is refused on the
/// header or as it arrives, and nothing is enqueued or stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_carrying_its_envelopes_stores_them_with_it() {
    let mut q = Agq::start(&[]);
    let planner = q.client(ClientRole::Planner).await;
    upload(&planner, &[COMPONENT, b"carried"]).await;
    let (plan, digest) = q.plan(COMPONENT, &[]);
    let (action, _) = q.action(digest, &[b"carried"], 3);
    let (plan, action) = (plan.to_json(), action.to_json());
    let refs = |blobs: &[&[u8]]| -> Vec<InputRef> {
        blobs.iter().map(|b| InputRef { digest: Digest::of(b), size: b.len() as u64 }).collect()
    };
    let submit = |blobs: Vec<InputRef>| Request::Submit {
        plan: Digest::of(&plan),
        action: Digest::of(&action),
        blobs,
    };
    let stray: &[u8] = b"neither envelope";
    let lie = vec![b'x'; action.len()];
    let cap = agenix_proto::envelope::MAX_ENVELOPE_BYTES as u64;
    let too_big = InputRef { digest: Digest::of(&action), size: cap + 1 };
    // What is announced, what is sent, and the answer.
    type Case<'a> = (Vec<InputRef>, Vec<&'a [u8]>, ErrorCode, &'a str);
    let refused: [Case<'_>; 5] = [
        (refs(&[stray]), vec![stray], ErrorCode::Invalid, "neither the plan's nor the action's"),
        (refs(&[&action, &action]), vec![&action, &action], ErrorCode::BadRequest, "at most once"),
        (
            refs(&[&plan, &action, &plan]),
            vec![&plan, &action, &plan],
            ErrorCode::BadRequest,
            "at most once",
        ),
        (refs(&[&action]), vec![&lie], ErrorCode::Invalid, "hashes to"),
        (vec![too_big], vec![&action], ErrorCode::TooLarge, "over the limit"),
    ];
    for (blobs, bytes, code, says) in refused {
        let answer = send_with_blobs(&planner, &submit(blobs), &bytes).await;
        let Response::Error { code: got, message } = answer else { panic!("accepted: {answer:?}") };
        assert_eq!(got, code, "{message}");
        assert!(message.contains(says), "{message}");
        assert_empty(&planner).await;
    }
    for d in [Digest::of(stray), Digest::of(&plan), Digest::of(&action)] {
        let e = planner.get_blob(d, 1 << 20).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::NotFound), "{d}: {e}");
    }
    // Without the envelope it names and does not carry: refused as not stored.
    let answer = send_with_blobs(&planner, &submit(refs(&[&plan])), &[&plan]).await;
    let Response::Error { code, message } = answer else { panic!("accepted: {answer:?}") };
    assert_eq!(code, ErrorCode::Invalid, "{message}");
    assert!(message.starts_with("action envelope: "), "{message}");
    assert_empty(&planner).await;

    // Both carried: submitted, and stored with the submission.
    let done = planner
        .submit_carrying(Digest::of(&plan), Digest::of(&action), &[&plan, &action])
        .await
        .unwrap();
    assert_eq!(done.jobs.len(), 1);
    assert!(!done.duplicate);
    q.kill();
    q.restart();
    let planner = q.client(ClientRole::Planner).await;
    assert_eq!(job(&planner, done.jobs[0]).await.state, JobState::Queued { not_before: 0 });
    for blob in [&plan, &action] {
        assert_eq!(&planner.get_blob(Digest::of(blob), 1 << 20).await.unwrap(), blob);
    }
    // The same submission again, carrying what is stored already: the same jobs.
    let again =
        planner.submit_carrying(Digest::of(&plan), Digest::of(&action), &[&action]).await.unwrap();
    assert_eq!((again.jobs, again.duplicate), (done.jobs, true));
}
