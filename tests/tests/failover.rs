//! Two agq nodes on one PostgreSQL database: one serves, the other stands by (`--standby`)
//! and takes over when the first is SIGKILLed under load; workers and agx, given both
//! addresses, move to it; PostgreSQL is restarted once afterwards. Real processes, a real
//! PostgreSQL.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::process::Command;
use std::time::Duration;

use agenix_harness::postgres;
use common::*;

#[test]
fn pg10_a_standby_node_takes_over_under_load_and_no_job_is_lost_or_run_twice() {
    if !postgres::available(
        "pg10_a_standby_node_takes_over_under_load_and_no_job_is_lost_or_run_twice",
    ) {
        return;
    }
    let args = ["--lease-ms", "3000", "--heartbeat-ms", "500", "--store-lease-ms", "2000"];
    // Both nodes stand by: the first takes the database at once, nobody serving it.
    let with_standby: Vec<&str> = args.iter().copied().chain(["--standby"]).collect();
    let mut c = Cluster::start_postgres(&with_standby);
    let pg = c.agq().postgres.as_ref().unwrap();
    let store = (pg.url(), pg.password_file().unwrap());
    let mut serve = agenix_harness::Serve::new(bin("agq"), c.path("queue"), c.path("standby.log"));
    serve.postgres = false;
    serve.store = Some(store);
    serve.ready = Some(c.path("standby.ready"));
    serve.log_level = "info".into();
    serve.args = ["--standby"].iter().chain(&args).map(|s| s.to_string()).collect();
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut standby = agenix_harness::Agq::launch(serve, ([127, 0, 0, 1], port).into()).unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while !c.log("standby").contains("stands by") {
        assert!(std::time::Instant::now() < until, "{}", c.log("standby"));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Workers and agx are given both nodes' addresses.
    let second = format!("127.0.0.1:{port}");
    c.addr = format!("{},{second}", c.addr);
    c.push_aus();
    for i in 0..4 {
        c.worker(&format!("w{i}"), &[]);
    }
    let inputs: Vec<String> = (0..200)
        .map(|i| {
            let p = c.path(&format!("in{i}.txt"));
            std::fs::write(&p, format!("input {i}\n")).unwrap();
            p.to_str().unwrap().to_string()
        })
        .collect();
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let jobs = c.submit(&nap_plan(&c, 200), &refs);
    assert_eq!(jobs.len(), 200);
    // Under load: some done, some running, most queued.
    c.wait_job(&jobs[10], Duration::from_secs(120), |j| state(j) == "succeeded");
    c.kill_agq();
    standby.wait_serving().unwrap();
    assert!(c.log("standby").contains("taking over"), "{}", c.log("standby"));
    // The first comes back as a standby; the database restarts once under both. Either
    // may serve after it (the second's lease may run out meanwhile); neither gives up.
    c.agq().relaunch().unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while !c.log("agq").contains("stands by") {
        assert!(std::time::Instant::now() < until, "{}", c.log("agq"));
        std::thread::sleep(Duration::from_millis(100));
    }
    c.wait_job_through_faults(&jobs[60], Duration::from_secs(120), |j| state(j) == "succeeded");
    c.agq().postgres.as_mut().unwrap().restart().unwrap();
    for (i, id) in jobs.iter().enumerate() {
        let j =
            c.wait_job_through_faults(id, Duration::from_secs(300), |j| state(j) == "succeeded");
        assert!(j["attempts"].as_u64().unwrap() <= 3, "{j}");
        assert_eq!(c.ok_through_faults(&["jobs", "result", id]), format!("input {i}\n"), "{j}");
    }
    // Each job succeeded once: one completion in its history.
    for id in jobs.iter().step_by(10) {
        let history = c.ok_through_faults(&["jobs", "history", id]);
        assert_eq!(history.matches("completed").count(), 1, "{history}");
    }
    let moved = (0..4).filter(|i| c.log(&format!("w{i}")).contains(&second)).count();
    assert!(moved == 4, "{moved} of 4 workers reached the second node");
    // The first node stood by through the outage (or took over after it): it runs.
    assert!(c.agq().is_running(), "{}", c.log("agq"));
    if !standby.is_running() {
        assert!(c.log("standby").contains("another agq took over"), "{}", c.log("standby"));
    }
}

/// N7, through the binaries: agw and agx take a queue's 16 addresses, and refuse 17 by
/// name before connecting anywhere.
#[test]
fn n07_agw_and_agx_take_sixteen_queue_addresses_and_refuse_seventeen() {
    let list =
        |n: usize| (0..n).map(|i| format!("q{i}.example.net:7411")).collect::<Vec<_>>().join(",");
    for (program, args) in [("agw", vec![]), ("agx", vec!["jobs", "list"])] {
        let run = |n: usize| {
            let out = Command::new(bin(program))
                .args(&args)
                .args(["--queue", &list(n)])
                .env_remove("AGW_CONFIG")
                .env_remove("AGW_FINGERPRINT")
                .env_remove("AGX_CONFIG")
                .env_remove("AGX_FINGERPRINT")
                .env("HOME", "/nonexistent")
                .output()
                .unwrap();
            assert!(!out.status.success());
            String::from_utf8_lossy(&out.stderr).into_owned()
        };
        // Sixteen pass; what stops it next is the missing fingerprint.
        let err = run(16);
        assert!(err.contains("fingerprint"), "{program}: {err}");
        let err = run(17);
        assert!(err.contains("17 queue addresses: at most 16"), "{program}: {err}");
    }
}
