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

    // The job is forgotten after its retention; its output goes with it, and the stray
    // blob after its grace period.
    let stored = |b: &[u8]| q.data().join("blobs/sha256").join(Digest::of(b).hex()).exists();
    let until = Instant::now() + Duration::from_secs(30);
    while stored(out) || stored(stray) {
        assert!(
            Instant::now() < until,
            "not collected: output {}, stray {}",
            stored(out),
            stored(stray)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(refused(&planner, &Request::ShowJob { job: jobs[0] }).await.0 == ErrorCode::NotFound);
    // The action is still live (it dedups replays until it expires): its component and
    // input stay, as does the blob kept on purpose.
    assert!(stored(COMPONENT) && stored(input) && stored(kept));
    // Kept until removed explicitly: then it goes too.
    let unkeep = Request::Unkeep { digest: Digest::of(kept) };
    assert_eq!(planner.request(&unkeep).await.unwrap(), Response::Unkept { was_kept: true });
    assert_eq!(planner.request(&unkeep).await.unwrap(), Response::Unkept { was_kept: false });
    while stored(kept) {
        assert!(Instant::now() < until + Duration::from_secs(30), "the unkept blob stayed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The quota: what is stored plus what is asked may not pass it.
    let used: u64 = std::fs::read_dir(q.data().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let too_big = vec![7u8; usize::try_from(100_000 - used + 1).unwrap()];
    let (code, message) = remote(planner.put_blob(&too_big).await.unwrap_err());
    assert_eq!(code, ErrorCode::TooLarge);
    assert!(
        message.contains("quota of 100000 bytes") && message.contains("--blob-quota"),
        "{message}"
    );
    planner.put_blob(&too_big[1..]).await.unwrap();
}
