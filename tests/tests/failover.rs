//! Two agq on one PostgreSQL database: one serves, the other stands by (`--standby`) and
//! takes over when the first is SIGKILLed under load; workers given both addresses move to
//! it. Real processes, a real PostgreSQL.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agenix_harness::postgres;
use common::*;

/// Kills the standby when the test ends, however it ends.
struct Standby(std::process::Child);

impl Drop for Standby {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_standby_queue_takes_over_under_load_and_no_job_is_lost_or_run_twice() {
    if !postgres::available("a_standby_queue_takes_over_under_load_and_no_job_is_lost_or_run_twice")
    {
        return;
    }
    let mut c = Cluster::start_postgres(&["--lease-ms", "2000", "--heartbeat-ms", "500"]);
    let pg = c.agq().postgres.as_ref().unwrap();
    let (url, pass) = (pg.url(), pg.password_file().unwrap());
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let second = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(c.path("standby.log")).unwrap();
    // The same queue directory: its identity (so clients' pins hold), tokens and blobs.
    let standby = Standby(
        Command::new(bin("agq"))
            .args(["serve", "--data"])
            .arg(c.path("queue"))
            .args(["--store", &url, "--standby", "--listen", &second])
            .args(["--lease-ms", "2000", "--heartbeat-ms", "500"])
            .arg("--ready-file")
            .arg(c.path("standby.ready"))
            .env("AGQ_STORE_PASSWORD_FILE", &pass)
            .env("AGQ_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + Duration::from_secs(30);
    while !c.log("standby").contains("stands by") {
        assert!(Instant::now() < until, "{}", c.log("standby"));
        std::thread::sleep(Duration::from_millis(100));
    }
    c.push_aus();
    for i in 0..4 {
        c.worker(&format!("w{i}"), &["--queue", &second]);
    }
    let inputs: Vec<String> = (0..100)
        .map(|i| {
            let p = c.path(&format!("in{i}.txt"));
            std::fs::write(&p, format!("input {i}\n")).unwrap();
            p.to_str().unwrap().to_string()
        })
        .collect();
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let jobs = c.submit(&nap_plan(&c, 300), &refs);
    assert_eq!(jobs.len(), 100);
    // Under load: some done, some running, most queued.
    c.wait_job(&jobs[5], Duration::from_secs(120), |j| state(j) == "succeeded");
    c.kill_agq();
    let until = Instant::now() + Duration::from_secs(60);
    while !c.path("standby.ready").exists() {
        assert!(Instant::now() < until, "the standby never took over: {}", c.log("standby"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(c.log("standby").contains("taking over"), "{}", c.log("standby"));
    c.addr = second;
    for (i, id) in jobs.iter().enumerate() {
        let j = c.wait_job(id, Duration::from_secs(300), |j| state(j) == "succeeded");
        assert!(j["attempts"].as_u64().unwrap() <= 3, "{j}");
        assert_eq!(c.ok(&["jobs", "result", id]), format!("input {i}\n"), "{j}");
    }
    // Each job succeeded once: one completion in its history.
    for id in jobs.iter().take(10) {
        let history = c.ok(&["jobs", "history", id]);
        assert_eq!(history.matches("completed").count(), 1, "{history}");
    }
    let moved =
        (0..4).filter(|i| c.log(&format!("w{i}")).contains(&format!("queue={}", c.addr))).count();
    assert!(moved > 0, "no worker reached the standby");
    drop(standby);
}
