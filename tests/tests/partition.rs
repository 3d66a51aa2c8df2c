//! Hosts on real interfaces: agq and each agw in a network namespace of its own, joined by
//! veth links on a private subnet (`agenix_harness::netns`), so QUIC crosses real
//! interfaces and a test can cut one worker's link as a network would.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::time::{Duration, Instant};

use agenix_harness::netns::{self, Net};
use common::*;

/// N6: a worker's link goes down for longer than its lease while it runs a job. The queue
/// takes the lease back and another host runs the job; when the link comes back, the cut
/// worker learns its lease is gone (fenced by the lease's epoch), drops its late result,
/// and nothing it did changes the job.
#[test]
fn n06_a_partitioned_worker_loses_its_lease_and_its_late_result_is_fenced() {
    if !netns::available("n06_a_partitioned_worker_loses_its_lease_and_its_late_result_is_fenced") {
        return;
    }
    let mut c =
        Cluster::start_net(&["--lease-ms", "2000", "--heartbeat-ms", "500"], Net::new(2).unwrap());
    c.push_aus();
    c.worker_on(0, "cut", &[]);
    let input = c.path("in.txt");
    std::fs::write(&input, "across the wire\n").unwrap();
    let jobs = c.submit(&nap_plan(&c, 6000), &[input.to_str().unwrap()]);
    c.wait_job(&jobs[0], Duration::from_secs(60), |j| state(j) == "leased");
    assert!(c.log("cut").contains("running"), "{}", c.log("cut"));
    c.net.as_ref().unwrap().cut(0).unwrap();
    c.worker_on(1, "rescuer", &[]);
    let j = c.wait_job(&jobs[0], Duration::from_secs(60), |j| state(j) == "succeeded");
    assert_eq!(j["attempts"], 2, "{j}");
    c.net.as_ref().unwrap().heal(0).unwrap();
    // The cut worker finishes its nap and reconnects: the queue tells it the lease is gone
    // (a heartbeat says it is lost, or its late result is refused as stale, whichever
    // reaches the queue first), and its result is never recorded.
    let until = Instant::now() + Duration::from_secs(60);
    let told = |log: &str| log.contains("lease lost") || log.contains("StaleLease");
    while !told(&c.log("cut")) {
        assert!(Instant::now() < until, "the cut worker never heard:\n{}", c.log("cut"));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!c.log("cut").contains("result recorded"), "{}", c.log("cut"));
    assert!(c.log("rescuer").contains("result recorded"), "{}", c.log("rescuer"));
    let after = c.job(&jobs[0]);
    assert_eq!(after["state"], j["state"], "{after}");
    assert_eq!(after["attempts"], 2, "{after}");
    assert_eq!(c.ok(&["jobs", "result", &jobs[0]]), "across the wire\n");
    // The audit log holds the expiry and one completion, by the second lease.
    let history = c.ok(&["jobs", "history", &jobs[0]]);
    assert!(history.contains("expired"), "{history}");
    assert_eq!(history.matches("completed").count(), 1, "{history}");
}
