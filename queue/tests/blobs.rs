//! The blob store's quota and collection, against a real agq: blobs nothing refers to go
//! after their grace period; a job's results go with the job; what a live action needs and
//! what was kept on purpose stay; an upload past the quota is refused with the quota named.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod common;

use std::time::{Duration, Instant};

use agenix_proto::job::JobOutput;
use agenix_proto::wire::{ClientRole, ErrorCode, Request, Response};
use agenix_proto::{Digest, InputRef};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_nothing_refers_to_are_collected_and_the_quota_is_named() {
    let q = Agq::start(&["--retention", "1s", "--blob-grace", "1s", "--blob-quota", "100000"]);
    let planner = q.client(ClientRole::Planner).await;
    let kept: &[u8] = b"a component pushed to stay";
    planner.put_many(&[kept], true).await.unwrap();
    let stray: &[u8] = b"uploaded, never used";
    planner.put_blob(stray).await.unwrap();
    let big_stray = vec![9u8; 70 << 10];
    planner.put_blob(&big_stray).await.unwrap();
    let input: &[u8] = b"the job's input";
    let jobs = q.submit(&planner, &[input], 3).await;
    let w = q.worker("w").await;
    register(&w, "w").await;
    let lease = claim(&w, 1, 1000).await.remove(0);
    let out: &[u8] = b"the job's output";
    w.put_blob(out).await.unwrap();
    let output = JobOutput {
        output: Some(InputRef { digest: Digest::of(out), size: out.len() as u64 }),
        ..no_output()
    };
    w.complete_signed(&lease, output).await;

    // Small blobs are kept in the embedded store, not as files (on PostgreSQL every blob is
    // a file in the shared directory); one over 64 KiB is a file.
    let file = |b: &[u8]| q.data().join("blobs/sha256").join(Digest::of(b).hex()).exists();
    assert!(file(&big_stray));
    let small_are_files = agenix_harness::postgres::wanted();
    for b in [COMPONENT, input, out, stray] {
        assert_eq!(file(b), small_are_files, "{}", Digest::of(b));
    }

    // The job is forgotten after its retention; its output goes with it, and the stray
    // blob after its grace period.
    let until = Instant::now() + Duration::from_secs(30);
    while stored(&planner, out).await
        || stored(&planner, stray).await
        || stored(&planner, &big_stray).await
    {
        assert!(Instant::now() < until, "not collected: the output or a stray blob");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(refused(&planner, &Request::ShowJob { job: jobs[0] }).await.0 == ErrorCode::NotFound);
    // The action is still live (it dedups replays until it expires): its component and
    // input stay, as does the blob kept on purpose.
    for b in [COMPONENT, input, kept] {
        assert!(stored(&planner, b).await, "{} was collected", Digest::of(b));
    }
    // Kept until removed explicitly: then it goes too.
    let unkeep = Request::Unkeep { digest: Digest::of(kept) };
    assert_eq!(planner.request(&unkeep).await.unwrap(), Response::Unkept { was_kept: true });
    assert_eq!(planner.request(&unkeep).await.unwrap(), Response::Unkept { was_kept: false });
    while stored(&planner, kept).await {
        assert!(Instant::now() < until + Duration::from_secs(30), "the unkept blob stayed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The quota: what is stored (in both tiers) plus what is asked may not pass it. The
    // refusal names what is used.
    let (code, message) = remote(planner.put_blob(&vec![6u8; 100_000]).await.unwrap_err());
    assert_eq!(code, ErrorCode::TooLarge, "{message}");
    let used: u64 = message
        .split_once(": ")
        .and_then(|(_, m)| m.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of bytes used in: {message}"));
    // The component, the envelopes and the input, at the least.
    assert!(used > COMPONENT.len() as u64 + input.len() as u64, "{used} bytes used");
    let too_big = vec![7u8; usize::try_from(100_000 - used + 1).unwrap()];
    let (code, message) = remote(planner.put_blob(&too_big).await.unwrap_err());
    assert_eq!(code, ErrorCode::TooLarge);
    assert!(
        message.contains("quota of 100000 bytes") && message.contains("--blob-quota"),
        "{message}"
    );
    planner.put_blob(&too_big[1..]).await.unwrap();
}

/// Whether the queue serves the blob `b`.
async fn stored(c: &agenix_link::Client, b: &[u8]) -> bool {
    match c.get_blob(Digest::of(b), b.len() as u64).await {
        Ok(got) => got == b,
        Err(e) => {
            assert_eq!(remote(e).0, ErrorCode::NotFound);
            false
        }
    }
}

/// A full batch of small blobs (the most one request may carry) is stored as one commit and
/// is durable when acknowledged: after a SIGKILL every blob is served byte for byte. One more
/// blob than the limit is refused. A blob an earlier release stored as a file is still found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_batch_of_small_blobs_survives_a_kill() {
    use agenix_proto::wire::MAX_BATCH_BLOBS;
    let legacy: &[u8] = b"stored as a file before small blobs moved into the store";
    let mut q = Agq::start_prepared(&[], agenix_harness::postgres::wanted(), |data| {
        let dir = data.join("blobs/sha256");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(Digest::of(legacy).hex()), legacy).unwrap();
    });
    let planner = q.client(ClientRole::Planner).await;
    let blobs: Vec<Vec<u8>> =
        (0..MAX_BATCH_BLOBS).map(|i| format!("small blob {i}\n").into_bytes()).collect();
    let refs: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
    assert_eq!(planner.put_many(&refs, false).await.unwrap(), 0, "all new");
    let over: Vec<&[u8]> = refs.iter().copied().chain([&b"one more"[..]]).collect();
    let (code, message) = remote(planner.put_many(&over, false).await.unwrap_err());
    assert_eq!(code, ErrorCode::TooLarge);
    assert_eq!(message, format!("{} blobs in one batch, over the limit of 1000", over.len()));
    // 40 blobs of exactly 64 KiB (the most kept in the store; 2.5 MiB, committed a MiB at
    // a time) and one a byte over (a file), in one batch.
    let mut sized: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 64 << 10]).collect();
    sized.push(vec![41; (64 << 10) + 1]);
    let sized_refs: Vec<&[u8]> = sized.iter().map(Vec::as_slice).collect();
    assert_eq!(planner.put_many(&sized_refs, false).await.unwrap(), 0);
    let file = |b: &[u8]| q.data().join("blobs/sha256").join(Digest::of(b).hex()).exists();
    let small_are_files = agenix_harness::postgres::wanted();
    assert!(sized[..40].iter().all(|b| file(b) == small_are_files) && file(&sized[40]));
    q.kill();
    q.restart();
    let planner = q.client(ClientRole::Planner).await;
    for b in &blobs {
        assert_eq!(&planner.get_blob(Digest::of(b), 64).await.unwrap(), b);
    }
    for b in &sized {
        assert_eq!(&planner.get_blob(Digest::of(b), 1 << 20).await.unwrap(), b);
    }
    assert!(!stored(&planner, b"one more").await, "a refused batch stores nothing");
    assert_eq!(planner.put_many(&refs, false).await.unwrap(), 1000, "all stored already");
    assert!(stored(&planner, legacy).await);
    assert_eq!(planner.put_many(&[legacy], false).await.unwrap(), 1, "the file is found");
}

/// A submission carrying its envelopes is not refused because a collection removed
/// some other blob while the envelopes were on their way: what it carries is written by its own
/// commit, so no collection can have taken it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carried_submission_outlasts_a_collection_of_other_blobs() {
    let q = Agq::start(&["--blob-grace", "1s"]);
    let planner = q.client(ClientRole::Planner).await;
    // Kept: only the stray blob is collected.
    planner.put_many(&[COMPONENT], true).await.unwrap();
    let stray: &[u8] = b"uploaded, never used, collected mid-submission";
    planner.put_blob(stray).await.unwrap();
    let (plan, digest) = q.plan(COMPONENT, &[]);
    let (action, _) = q.action(digest, &[], 3);
    let (plan, action) = (plan.to_json(), action.to_json());
    let req = Request::Submit {
        plan: Digest::of(&plan),
        action: Digest::of(&action),
        blobs: [&plan, &action]
            .map(|b| InputRef { digest: Digest::of(b), size: b.len() as u64 })
            .to_vec(),
    };
    let (mut send, mut recv) = planner.connection().open_bi().await.unwrap();
    agenix_link::write_frame(&mut send, &req).await.unwrap();
    // The envelopes are held back until the stray blob has been collected.
    let until = Instant::now() + Duration::from_secs(30);
    while stored(&planner, stray).await {
        assert!(Instant::now() < until, "the stray blob was not collected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    send.write_all(&plan).await.unwrap();
    send.write_all(&action).await.unwrap();
    send.finish().unwrap();
    let answer: Response = agenix_link::read_frame(&mut recv).await.unwrap();
    assert!(
        matches!(answer, Response::Submitted { ref jobs, .. } if jobs.len() == 1),
        "{answer:?}"
    );
    assert!(stored(&planner, &action).await);
}
