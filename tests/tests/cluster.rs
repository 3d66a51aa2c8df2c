//! agx → agq → agw over QUIC with real processes: the examples, fan-out across workers,
//! a worker killed mid-job, a queue restarted mid-run, cancellation, revocation.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod common;

use agenix_test_programs as programs;
use std::path::Path;
use std::time::Duration;

use common::*;

const LOG_ERRORS: &str = "      1 auth: token expired\n      3 db: connection refused\n      2 payments: card declined\n";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn example_plans_run_through_the_queue_and_a_worker() {
    let mut c = Cluster::start(&[]);
    c.push_aus();
    c.worker(
        "w1",
        &[
            "--allow-tool",
            "grep",
            "--allow-tool",
            "cut",
            "--allow-tool",
            "sort",
            "--allow-tool",
            "uniq",
        ],
    );
    let out = c.agx(&[
        "submit",
        &example("log-errors.json"),
        "--input",
        &example("data/app.log"),
        "--watch",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), LOG_ERRORS);
    let table = text(&out.stderr);
    for task in ["errors", "messages", "sorted", "counted"] {
        assert!(table.lines().any(|l| l.starts_with(task) && l.contains("exit 0")), "{table}");
    }
    let out = c.agx(&[
        "submit",
        &example("orders-report.json"),
        "--input",
        &example("data/orders.csv"),
        "--watch",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "{\"orders\":6,\"revenue\":835.84,\"largest\":{\"id\":\"1003\",\"customer\":\"initech\",\"amount\":\"310.25\"}}\n"
    );
    // AUs in Python and JavaScript beside one in Rust, signed and run by the worker.
    c.ok(&["au", "push", programs::AU_CSVSTAT]);
    c.ok(&["au", "push", programs::AU_RESHAPE]);
    let out = c.agx(&[
        "submit",
        &example("orders-columns.json"),
        "--input",
        &example("data/orders.csv"),
        "--watch",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "[{\"column\":\"id\",\"distinct\":6,\"min\":1001,\"max\":1006,\"mean\":1003.5},\
         {\"column\":\"amount\",\"distinct\":6,\"min\":42,\"max\":310.25,\"mean\":139.3066666667}]\n"
    );
    // The native variant, through the worker's jail (where this kernel has one).
    let doctor = std::process::Command::new(bin("agw")).arg("doctor").output().unwrap();
    if doctor.status.success() {
        let out = c.agx(&[
            "submit",
            &example("log-errors-native.json"),
            "--input",
            &example("data/app.log"),
            "--watch",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), LOG_ERRORS);
    } else {
        let why = text(&doctor.stdout).lines().last().unwrap_or("").to_owned();
        programs::skip_without_jail("the native example", &why);
    }
    // agx result gives the same output again.
    let out = c.agx(&["jobs", "result", "1"]);
    assert_eq!(text(&out.stdout), LOG_ERRORS);
    // The same without a /tmp for any task (a plan's `"scratch": false`).
    let mut plans = vec!["log-errors.json"];
    if doctor.status.success() {
        plans.push("log-errors-native.json");
    }
    for name in plans {
        let plan = std::fs::read_to_string(example(name)).unwrap();
        let plan = plan.replace(r#""run":"#, r#""scratch": false, "run":"#);
        assert_eq!(plan.matches("scratch").count(), 4, "{plan}");
        let path = c.path(&format!("no-tmp-{name}"));
        std::fs::write(&path, plan).unwrap();
        let p = path.to_str().unwrap();
        let out = c.agx(&["submit", p, "--input", &example("data/app.log"), "--watch"]);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), LOG_ERRORS, "{name}");
    }
}

#[test]
fn a_hundred_jobs_fan_out_across_three_workers() {
    let mut c = Cluster::start(&[]);
    c.push_aus();
    let mut inputs = vec![];
    for i in 0..100 {
        let p = c.path(&format!("in{i}.log"));
        std::fs::write(&p, format!("t1 ERROR x: {i}\nt2 info y\nt3 error x: {i}\n")).unwrap();
        inputs.push(p.to_str().unwrap().to_string());
    }
    for w in ["a", "b", "c"] {
        c.worker(w, &["--concurrency", "2"]);
    }
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let mut args = vec!["submit", &*Box::leak(example("log-errors.json").into_boxed_str())];
    for r in &refs {
        args.extend(["--input", r]);
    }
    args.push("--watch");
    let out = c.agx(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for i in 0..100 {
        assert!(stdout.contains(&format!("      2 x: {i}\n")), "job {i} missing from {stdout}");
    }
    let stats = c.ok(&["queue", "stats"]);
    assert!(stats.starts_with("jobs: 100 succeeded"), "{stats}");
    // Every worker took part.
    for w in ["a", "b", "c"] {
        let ran = c.log(w).matches("running").count();
        assert!(ran > 0, "worker {w} ran nothing:\n{}", c.log(w));
    }
}

#[test]
fn a_worker_killed_mid_job_lets_the_job_finish_elsewhere() {
    let mut c = Cluster::start(&["--lease-ms", "1500", "--heartbeat-ms", "400"]);
    c.push_aus();
    c.worker("doomed", &[]);
    let input = c.path("in.txt");
    std::fs::write(&input, "still here\n").unwrap();
    let jobs = c.submit(&nap_plan(&c, 3000), &[input.to_str().unwrap()]);
    c.wait_job(&jobs[0], Duration::from_secs(30), |j| state(j) == "leased");
    c.kill_worker("doomed");
    c.worker("rescuer", &[]);
    let j = c.wait_job(&jobs[0], Duration::from_secs(60), |j| state(j) == "succeeded");
    assert_eq!(j["attempts"], 2, "{j}\n{}", c.log("rescuer"));
    let out = c.agx(&["jobs", "result", &jobs[0]]);
    assert_eq!(text(&out.stdout), "still here\n");
}

/// A result is labelled unverified until `agx jobs result --verify` checks the worker's
/// signed statement against the worker keys the planner itself trusts (never keys the
/// queue hands it): verified with the worker's key trusted for the `worker` role, refused
/// with nothing printed when the planner does not trust that worker, or trusts its key for
/// plans only.
#[test]
fn a_result_is_verified_against_the_worker_keys_the_planner_trusts() {
    let mut c = Cluster::start(&["--checkpoint-every", "200ms"]);
    c.push_aus();
    c.worker("w1", &[]);
    let input = c.path("in.txt");
    std::fs::write(&input, "signed\n").unwrap();
    let jobs = c.submit(&nap_plan(&c, 0), &[input.to_str().unwrap()]);
    c.wait_job(&jobs[0], Duration::from_secs(60), |j| state(j) == "succeeded");
    let plain = c.agx(&["jobs", "result", &jobs[0]]);
    assert!(plain.status.success(), "{}", text(&plain.stderr));
    assert_eq!(text(&plain.stdout), "signed\n");
    assert!(
        text(&plain.stderr).contains("(unverified: --verify checks the worker's signature)"),
        "{}",
        text(&plain.stderr)
    );
    // --verify needs the planner's own trust file.
    let out = c
        .agx_cmd(&["jobs", "result", &jobs[0], "--verify"])
        .env_remove("AGX_TRUST")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--verify needs the trust file"), "{}", text(&out.stderr));
    // Not trusted: refused, nothing printed.
    let key = c.worker_dir("w1").join("worker.pub");
    let key = key.to_str().unwrap();
    c.ok(&["trust", "add", "signer.key.pub", "--name", "me", "--trust", "planner-trust.json"]);
    let out = c.agx(&["jobs", "result", &jobs[0], "--verify", "--trust", "planner-trust.json"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "an unverified output was printed");
    assert!(
        text(&out.stderr).contains("the signed result does not verify"),
        "{}",
        text(&out.stderr)
    );
    // Trusted for plans only: no worker.
    c.ok(&[
        "trust",
        "add",
        key,
        "--name",
        "w1-plans",
        "--role",
        "plan",
        "--trust",
        "plans-only.json",
    ]);
    let out = c.agx(&["jobs", "result", &jobs[0], "--verify", "--trust", "plans-only.json"]);
    assert!(!out.status.success());
    let said = "signer \"w1-plans\" is not trusted to sign results";
    assert!(text(&out.stderr).contains(said), "{}", text(&out.stderr));
    // Trusted as a worker: verified, naming it.
    c.ok(&[
        "trust",
        "add",
        key,
        "--name",
        "w1",
        "--role",
        "worker",
        "--trust",
        "planner-trust.json",
    ]);
    let out = c.agx(&["jobs", "result", &jobs[0], "--verify", "--trust", "planner-trust.json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "signed\n");
    let keyid = text(
        &std::process::Command::new(bin("agw"))
            .args(["id", "--data"])
            .arg(c.worker_dir("w1"))
            .output()
            .unwrap()
            .stdout,
    );
    let said = format!("(verified: signed by worker \"w1\", {}, at ", keyid.trim());
    assert!(text(&out.stderr).contains(&said), "{}", text(&out.stderr));
    let json =
        c.ok(&["--json", "jobs", "result", &jobs[0], "--verify", "--trust", "planner-trust.json"]);
    let rec: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(
        (rec["data"]["verified"].as_bool(), rec["data"]["worker"].as_str()),
        (Some(true), Some(keyid.trim()))
    );
    // A1: the job's history, each entry proven in the queue's signed checkpoint.
    let mut history = String::new();
    for _ in 0..100 {
        history = c.ok(&["jobs", "history", &jobs[0]]);
        if history.contains("all proven in the queue's signed checkpoint") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(history.contains("all proven in the queue's signed checkpoint"), "{history}");
    let steps: Vec<&str> =
        history.lines().skip(3).filter_map(|l| l.split_whitespace().nth(2)).collect();
    assert_eq!(steps, ["submitted", "leased", "completed"], "{history}");
    assert!(history.contains(&format!("worker {}", keyid.trim())), "{history}");
    let json = c.ok(&["--json", "jobs", "history", &jobs[0]]);
    let recs: Vec<serde_json::Value> =
        json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(recs.len(), 3, "{json}");
    assert!(recs.iter().all(|r| r["type"] == "audit_entry" && r["data"]["proven_in"].is_u64()));
}

/// A worker whose key is revoked while it runs a job is refused from its next request and
/// disconnected, saying which key; the queue takes its lease back at once, and the job runs
/// on another worker without costing an attempt.
#[test]
fn a_revoked_worker_is_refused_at_its_next_request_and_its_job_runs_elsewhere() {
    let mut c = Cluster::start(&["--heartbeat-ms", "300"]);
    c.push_aus();
    c.worker("revoked", &[]);
    let input = c.path("in.txt");
    std::fs::write(&input, "rescued\n").unwrap();
    let jobs = c.submit(&nap_plan(&c, 4000), &[input.to_str().unwrap()]);
    c.wait_job(&jobs[0], Duration::from_secs(30), |j| state(j) == "leased");
    let data = c.path("queue");
    let agq = |args: &[&str]| {
        let out = std::process::Command::new(bin("agq"))
            .args(args)
            .arg("--data")
            .arg(&data)
            .output()
            .unwrap();
        assert!(out.status.success(), "agq {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let listed = agq(&["worker", "list", "--json"]);
    let row: serde_json::Value = serde_json::from_str(listed.lines().next().unwrap()).unwrap();
    assert_eq!((row["name"].as_str(), row["revoked"].as_bool()), (Some("revoked"), Some(false)));
    let keyid = row["keyid"].as_str().unwrap().to_owned();
    assert!(agq(&["worker", "revoke", &keyid]).contains("refused from its next request"));
    // Taken back within the reaper's second, not at the lease's expiry (30 s).
    let j = c.wait_job(&jobs[0], Duration::from_secs(10), |j| state(j) == "queued");
    assert_eq!(j["attempts"], 0, "the revoked worker's attempt is not counted: {j}");
    c.worker("rescuer", &[]);
    let j = c.wait_job(&jobs[0], Duration::from_secs(60), |j| state(j) == "succeeded");
    assert_eq!(j["attempts"], 1, "{j}");
    assert_eq!(text(&c.agx(&["jobs", "result", &jobs[0]]).stdout), "rescued\n");
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while !c.log("revoked").contains(&format!("worker key {keyid} (\"revoked\") is revoked")) {
        assert!(std::time::Instant::now() < until, "{}", c.log("revoked"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(agq(&["worker", "list"]).contains(&format!("{keyid}  REVOKED   revoked")));
    let listed = text(&c.agx(&["--json", "workers", "list"]).stdout);
    assert!(!listed.contains(&keyid), "a revoked worker is no longer listed: {listed}");
    // Its drain is not held up by the result the queue will not take.
    let revoked = c.terminate_worker("revoked");
    let status = c.wait_exit("revoked", revoked, Duration::from_secs(30));
    assert!(status.code().is_some(), "{status}\n{}", c.log("revoked"));
}

#[test]
fn a_worker_stopped_with_sigterm_finishes_its_job_and_takes_no_more() {
    let mut c = Cluster::start(&[]);
    c.push_aus();
    c.worker("leaving", &["--concurrency", "2"]);
    let input = c.path("in.txt");
    std::fs::write(&input, "finished\n").unwrap();
    let running = c.submit(&nap_plan(&c, 3000), &[input.to_str().unwrap()]);
    c.wait_job(&running[0], Duration::from_secs(30), |j| state(j) == "leased");
    // Its free slot has a claim waiting at the queue when the signal arrives.
    std::thread::sleep(Duration::from_millis(300));
    let leaving = c.terminate_worker("leaving");
    // A job submitted while it drains is not leased to it.
    let next = c.submit(&nap_plan(&c, 0), &[input.to_str().unwrap()]);
    let status = c.wait_exit("leaving", leaving, Duration::from_secs(60));
    assert!(status.success(), "{status}\n{}", c.log("leaving"));
    let j = c.job(&running[0]);
    assert_eq!(state(&j), "succeeded", "the worker did not finish its job: {j}");
    assert_eq!(text(&c.agx(&["jobs", "result", &running[0]]).stdout), "finished\n");
    let j = c.job(&next[0]);
    assert_eq!(state(&j), "queued", "leased to a worker that was leaving: {j}");
    // The next worker runs it on its first attempt.
    c.worker("next", &[]);
    let j = c.wait_job(&next[0], Duration::from_secs(60), |j| state(j) == "succeeded");
    assert_eq!(j["attempts"], 1, "{j}");
}

#[test]
fn a_queue_restart_mid_run_loses_nothing() {
    let mut c = Cluster::start(&["--heartbeat-ms", "300"]);
    c.push_aus();
    c.worker("steady", &[]);
    let input = c.path("in.txt");
    std::fs::write(&input, "survived\n").unwrap();
    let jobs = c.submit(&nap_plan(&c, 2500), &[input.to_str().unwrap()]);
    c.wait_job(&jobs[0], Duration::from_secs(30), |j| state(j) == "leased");
    c.restart_agq();
    let j = c.wait_job(&jobs[0], Duration::from_secs(60), |j| state(j) == "succeeded");
    assert_eq!(
        j["attempts"],
        1,
        "the worker kept its lease across the restart: {j}\n{}",
        c.log("steady")
    );
    assert_eq!(text(&c.agx(&["jobs", "result", &jobs[0]]).stdout), "survived\n");
}

#[test]
fn cancelling_a_running_job_stops_its_sandbox() {
    let mut c = Cluster::start(&["--heartbeat-ms", "300"]);
    c.push_aus();
    c.worker("w", &[]);
    let jobs = c.submit(&nap_plan(&c, 60_000), &[]);
    c.wait_job(&jobs[0], Duration::from_secs(30), |j| state(j) == "leased");
    let out = c.ok(&["jobs", "cancel", &jobs[0]]);
    assert!(out.contains("cancel requested"), "{out}");
    let j = c.wait_job(&jobs[0], Duration::from_secs(20), |j| state(j) == "cancelled");
    assert_eq!(state(&j), "cancelled");
    let log = c.log("w");
    assert!(log.contains("cancelled: sandboxes stopped"), "{log}");
}

#[test]
fn a_signer_revoked_in_one_workers_trust_file_is_declined_there_and_run_elsewhere() {
    let mut c = Cluster::start(&[]);
    c.push_aus();
    c.worker("w", &[]);
    let out = c.agx(&[
        "submit",
        &example("log-errors.json"),
        "--input",
        &example("data/app.log"),
        "--watch",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The worker's own trust file revokes the signer; the queue's still trusts it.
    let keyid = text(&c.agx(&["--json", "trust", "list", "--trust", "worker-trust.json"]).stdout);
    let keyid: serde_json::Value = serde_json::from_str(keyid.lines().next().unwrap()).unwrap();
    c.ok(&[
        "trust",
        "revoke",
        keyid["data"]["keyid"].as_str().unwrap(),
        "--trust",
        "worker-trust.json",
    ]);
    let jobs = c.submit(&example("log-errors.json"), &[&example("data/app.log")]);
    // Declined at that worker: no attempt counted, the reason shown on the job and the
    // worker, and nothing dead.
    let j = c.wait_job(&jobs[0], Duration::from_secs(30), |j| {
        j["declined"].as_array().is_some_and(|d| !d.is_empty())
    });
    assert_eq!(state(&j), "queued", "{j}");
    assert_eq!(j["attempts"], 0, "declining costs no attempt: {j}");
    let reason = j["declined"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("signer \"e2e\"") && reason.contains("is revoked"), "{reason}");
    let shown = c.ok(&["jobs", "show", &jobs[0]]);
    assert!(shown.contains("declined by w") && shown.contains("is revoked"), "{shown}");
    let workers = c.ok(&["workers", "list"]);
    assert!(workers.contains("last declined:") && workers.contains("is revoked"), "{workers}");
    // Each row says how long ago its worker was last heard from (a dead one grows old).
    assert!(workers.lines().next().unwrap().contains("seen"), "{workers}");
    assert!(workers.lines().skip(1).any(|l| l.contains("s ago")), "{workers}");
    // And which key it proved.
    assert!(workers.lines().any(|l| l.trim_start().starts_with("key sha256:")), "{workers}");
    // A worker whose trust file is right runs it, as its first attempt.
    std::fs::copy(c.path("queue/trust.json"), c.path("good-trust.json")).unwrap();
    c.worker_trusting("good", "good-trust.json", &[]);
    let j = c.wait_job(&jobs[0], Duration::from_secs(60), |j| state(j) == "succeeded");
    assert_eq!(j["attempts"], 1, "{j}");
}

/// Twenty jobs for a pool where one worker's trust file is stale: none is dead, every one
/// runs on the worker that can verify it, each on its first attempt.
#[test]
fn a_worker_with_a_stale_trust_file_loses_no_job() {
    let mut c = Cluster::start(&[]);
    c.push_aus();
    // The stale worker trusts nobody.
    let empty = c.path("stale-trust.json");
    std::fs::write(&empty, agenix_proto::Trust::new().to_json()).unwrap();
    c.worker_trusting("stale", "stale-trust.json", &["--concurrency", "4"]);
    let inputs: Vec<String> = (0..20)
        .map(|i| {
            let p = c.path(&format!("in-{i}.log"));
            std::fs::write(&p, format!("ERROR job {i}\n")).unwrap();
            p.to_str().unwrap().to_string()
        })
        .collect();
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let jobs = c.submit(&example("log-errors.json"), &refs);
    // The stale worker declines everything it is offered; nothing dies meanwhile.
    c.wait_job(&jobs[0], Duration::from_secs(30), |j| {
        j["declined"].as_array().is_some_and(|d| !d.is_empty())
    });
    std::thread::sleep(Duration::from_secs(2));
    let listing = c.ok(&["--json", "jobs", "list", "--state", "dead"]);
    assert_eq!(listing.lines().count(), 0, "jobs died at a misconfigured worker:\n{listing}");
    c.worker("good", &[]);
    for id in &jobs {
        let j = c.wait_job(id, Duration::from_secs(120), |j| state(j) == "succeeded");
        assert_eq!(j["attempts"], 1, "{j}");
    }
}

/// Two workers sharing one cache directory would rewrite each other's record of the jobs
/// they ran: the second refuses to start, naming the directory, and the first runs on.
#[test]
fn a_second_worker_on_the_same_cache_directory_refuses_to_start() {
    let mut c = Cluster::start(&[]);
    c.push_aus();
    c.worker("first", &[]);
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while !c.log("first").contains("registered") {
        assert!(std::time::Instant::now() < until, "{}", c.log("first"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let cache = c.path("first-cache");
    let out = std::process::Command::new(bin("agw"))
        .args(["--queue", &c.addr, "--fingerprint", &c.fingerprint])
        .arg("--data")
        .arg(c.worker_dir("second"))
        .arg("--trust")
        .arg(c.path("worker-trust.json"))
        .arg("--cache-dir")
        .arg(&cache)
        .args(["--name", "second"])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("another worker is using {}", cache.display())), "{err}");
    // The first still works.
    let jobs = c.submit(&example("log-errors.json"), &[&example("data/app.log")]);
    let j = c.wait_job(&jobs[0], Duration::from_secs(120), |j| state(j) == "succeeded");
    assert_eq!(j["attempts"], 1);
}

/// A worker the queue refuses (a key it never enrolled, a name past its bound) stops at once
/// with the reason, naming its key id, rather than retrying forever as if the queue were
/// down; and its refused attempts never lock the correctly configured clients on the same
/// address out.
#[test]
fn a_worker_the_queue_refuses_stops_with_the_reason_and_locks_nobody_out() {
    let mut c = Cluster::start(&[]);
    // agw pinning `fingerprint`, with its key in `dir`, run to its end.
    let agw = |c: &Cluster, fingerprint: &str, dir: &Path, name: &str| {
        std::process::Command::new(bin("agw"))
            .args(["--queue", &c.addr, "--fingerprint", fingerprint])
            .arg("--data")
            .arg(dir)
            .arg("--trust")
            .arg(c.path("worker-trust.json"))
            .arg("--cache-dir")
            .arg(c.path(&format!("cache-{}", name.len())))
            .args(["--name", name])
            .output()
            .unwrap()
    };
    let stranger = c.path("stranger-key");
    let out = std::process::Command::new(bin("agw"))
        .args(["init", "--data"])
        .arg(&stranger)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let keyid = text(&out.stdout).trim().to_owned();
    assert!(keyid.starts_with("sha256:") && keyid.len() == 71, "{keyid}");
    // Six times, past the five failed logins a minute an address is allowed.
    for attempt in 0..6 {
        let out = agw(&c, &c.fingerprint, &stranger, "stranger");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "attempt {attempt}: {err}");
        assert!(err.contains("the queue refuses this worker"), "attempt {attempt}: {err}");
        assert!(
            err.contains(&format!("worker key {keyid} is not enrolled here"))
                || err.contains("too many failed logins from this address"),
            "attempt {attempt}: {err}"
        );
    }
    assert!(c.log("agq").contains(&keyid), "the queue's log names the refused key");
    // The right credentials from the same address are still served.
    let out = c.agx(&["queue", "stats"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A worker pinning another queue's key stops too, naming both.
    let other = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    let enrolled = c.worker_dir("enrolled");
    let out = agw(&c, other, &enrolled, "pinned-elsewhere");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("is {}, not the pinned {other}", c.fingerprint)), "{err}");

    let long = "n".repeat(agenix_proto::job::MAX_WORKER_NAME + 1);
    let out = agw(&c, &c.fingerprint, &enrolled, &long);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot register: the worker name must be 1 to 64 bytes, not 65"),
        "{err}"
    );
    let at = "n".repeat(agenix_proto::job::MAX_WORKER_NAME);
    c.worker(&at, &[]);
    let until = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let listed = c.ok(&["--json", "workers", "list"]);
        if listed.contains(&at) {
            break;
        }
        assert!(std::time::Instant::now() < until, "a 64-byte name registers: {listed}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A job that no registered worker can run (it asks a longer timeout than any allows) is
/// not waited for in silence: `agx jobs show` and `agx jobs watch` say which worker lacks
/// what; it runs as soon as a worker that can run it registers.
#[test]
fn a_job_no_worker_can_run_says_why_it_waits() {
    let mut c = Cluster::start(&[]);
    c.push_aus();
    std::fs::write(c.path("small.toml"), "[ceilings]\ntimeout_ms = 1000\n").unwrap();
    let small = c.path("small.toml");
    c.worker("small", &["--config", small.to_str().unwrap()]);
    let plan = std::fs::read_to_string(example("log-errors.json"))
        .unwrap()
        .replace(r#""args": ["-c"],"#, r#""args": ["-c"], "limits": {"timeout_ms": 2000},"#);
    assert!(plan.contains("2000"));
    std::fs::write(c.path("slow.json"), plan).unwrap();
    let jobs = c.submit(c.path("slow.json").to_str().unwrap(), &[&example("data/app.log")]);
    let says = "no registered worker can run it (small: limits.timeout_ms 2000 is over its \
                ceiling of 1000)";
    wait_until_it_waits(&c, &jobs[0], says);
    // With --json, a `waiting` record follows the job.
    let json = c.ok(&["--json", "jobs", "show", &jobs[0]]);
    let waiting: serde_json::Value = serde_json::from_str(json.lines().nth(1).unwrap()).unwrap();
    assert_eq!(waiting["type"], "waiting", "{json}");
    assert_eq!(waiting["data"]["reason"], says, "{json}");
    // `jobs watch` says it too, on stderr, while it waits.
    let mut watch = std::process::Command::new(bin("agx"))
        .args(["jobs", "watch", &jobs[0]])
        .current_dir(c.path(""))
        .env("AGX_QUEUE", &c.addr)
        .env("AGX_FINGERPRINT", &c.fingerprint)
        .env("AGX_TOKEN_FILE", c.path("queue/planner.token"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(watch.stderr.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(line.trim_end(), format!("agx: job {} waits: {says}", jobs[0]));
    // A worker that allows it runs it.
    c.worker("big", &[]);
    let j = c.wait_job(&jobs[0], Duration::from_secs(120), |j| state(j) == "succeeded");
    assert_eq!(j["attempts"], 1);
}

/// A task that opts out of fuel runs only on a worker that keeps the format's fuel maximum,
/// without fuel metering; the queue says why a worker with a fuel ceiling cannot take it.
#[test]
fn an_unmetered_task_waits_for_a_worker_without_a_fuel_ceiling_and_counts_no_fuel() {
    let mut c = Cluster::start(&[]);
    c.push_aus();
    std::fs::write(c.path("capped.toml"), "[ceilings]\nfuel = 1000000000\n").unwrap();
    let capped = c.path("capped.toml");
    c.worker("capped", &["--config", capped.to_str().unwrap()]);
    let plan = std::fs::read_to_string(example("log-errors.json"))
        .unwrap()
        .replace(r#""args": ["-c"],"#, r#""args": ["-c"], "limits": {"fuel": "unmetered"},"#);
    assert!(plan.contains("unmetered"));
    std::fs::write(c.path("unmetered.json"), plan).unwrap();
    let jobs = c.submit(c.path("unmetered.json").to_str().unwrap(), &[&example("data/app.log")]);
    let says = "no registered worker can run it (capped: limits.fuel unmetered is over its \
                ceiling of 1000000000)";
    wait_until_it_waits(&c, &jobs[0], says);
    c.worker("open", &[]);
    let j = c.wait_job(&jobs[0], Duration::from_secs(120), |j| state(j) == "succeeded");
    assert_eq!(j["attempts"], 1);
    let out = c.agx(&["jobs", "result", &jobs[0]]);
    assert_eq!(text(&out.stdout), LOG_ERRORS);
    // The task table: the unmetered task counted no fuel, the others did.
    let out = c.agx(&["jobs", "show", &jobs[0]]);
    let shown = text(&out.stdout) + &text(&out.stderr);
    let fuel = |task: &str| {
        let row = shown.lines().find(|l| l.split_whitespace().next() == Some(task));
        let row = row.unwrap_or_else(|| panic!("no row for {task}: {shown}"));
        row.split_whitespace().nth(4).unwrap_or_default().to_owned()
    };
    assert_eq!(fuel("counted"), "-", "{shown}");
    assert!(fuel("sorted").parse::<u64>().is_ok_and(|f| f > 0), "{shown}");
}

/// A worker killed outright cannot remove its temporary directory (its tasks' scratch, its
/// jails' roots): the next worker on the machine does.
#[test]
fn a_killed_workers_temporary_directory_is_removed_by_the_next_worker() {
    let mut c = Cluster::start(&[]);
    c.worker("first", &[]);
    let pid = c.worker_pid("first");
    let find =
        || {
            std::fs::read_dir(std::env::temp_dir()).unwrap().flatten().map(|e| e.path()).find(|p| {
                p.file_name().unwrap().to_string_lossy().starts_with(&format!("agw-{pid}-"))
            })
        };
    let until = std::time::Instant::now() + Duration::from_secs(60);
    let dir = loop {
        if let Some(dir) = find() {
            break dir;
        }
        assert!(std::time::Instant::now() < until, "worker {pid} made no agw-{pid}-* directory");
        std::thread::sleep(Duration::from_millis(50));
    };
    c.kill_worker("first");
    assert!(dir.is_dir(), "SIGKILL leaves {} behind", dir.display());
    c.worker("second", &[]);
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while dir.exists() {
        assert!(std::time::Instant::now() < until, "{} was not removed", dir.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (up to a minute) until `agx jobs show JOB` says the job waits because `says`.
fn wait_until_it_waits(c: &Cluster, job: &str, says: &str) {
    let until = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let shown = text(&c.agx(&["jobs", "show", job]).stdout);
        if shown.contains(&format!("waits: {says}")) {
            return;
        }
        assert!(std::time::Instant::now() < until, "{shown}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `agx submit --input -` submits standard input as a job's input, as `agx run` does.
#[test]
fn submit_takes_an_input_from_standard_input() {
    let mut c = Cluster::start(&[]);
    c.push_aus();
    c.worker("w", &[]);
    let out = c.agx_in(
        &["--json", "submit", &example("log-errors.json"), "--input", "-"],
        b"2026-12-05 app ERROR disk full\n2026-12-05 app info fine\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rec: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap();
    let job = rec["data"]["jobs"][0].to_string();
    c.wait_job(&job, Duration::from_secs(120), |j| state(j) == "succeeded");
    let result = c.agx(&["jobs", "result", &job]);
    assert_eq!(text(&result.stdout).trim(), "1 ERROR disk full");
    let twice = c.agx(&["submit", &example("log-errors.json"), "--input", "-", "--input", "-"]);
    assert!(text(&twice.stderr).contains("--input - (standard input) may be given once"));
}

/// A variable a worker does not pass to a tool is that worker's own lack: it declines the
/// job (no attempt burned, the variable and the rule named) and a worker whose tool entry
/// allows the variable runs it, with the variable set.
#[test]
fn a_variable_one_worker_does_not_pass_is_declined_there_and_run_where_allowed() {
    let doctor = std::process::Command::new(bin("agw")).arg("doctor").output().unwrap();
    if !doctor.status.success() {
        let why = text(&doctor.stdout).lines().last().unwrap_or("").to_owned();
        programs::skip_without_jail("native env", &why);
        return;
    }
    let mut c = Cluster::start(&[]);
    let plan = c.path("greet.json");
    std::fs::write(
        &plan,
        r#"{"schema": "agenix.plan/v1", "name": "greet",
            "tasks": [{"id": "greet", "run": {"native": {"tool": "printenv"}},
                       "args": ["GREETING", "LANG"],
                       "env": {"GREETING": "hello", "LANG": "C"}}],
            "output": "greet"}"#,
    )
    .unwrap();
    let config = |name: &str, entry: &str| {
        let f = c.path(&format!("{name}.toml"));
        std::fs::write(&f, format!("[tools]\nprintenv = {entry}\n")).unwrap();
        f.to_str().unwrap().to_owned()
    };
    let strict = config("strict", "\"/usr/bin/printenv\"");
    let open = config("open", "{ path = \"/usr/bin/printenv\", env = [\"GREETING\"] }");
    c.worker("strict", &["--config", &strict]);
    let jobs = c.submit(plan.to_str().unwrap(), &[]);
    let j = c.wait_job(&jobs[0], Duration::from_secs(30), |j| {
        j["declined"].as_array().is_some_and(|d| !d.is_empty())
    });
    assert_eq!((state(&j), &j["attempts"]), ("queued", &serde_json::json!(0)), "{j}");
    let reason = j["declined"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("env GREETING") && reason.contains("LANG, LC_*, TZ"), "{reason}");
    c.worker("open", &["--config", &open]);
    let j = c.wait_job(&jobs[0], Duration::from_secs(60), |j| state(j) == "succeeded");
    assert_eq!(j["attempts"], 1, "{j}");
    assert_eq!(text(&c.agx(&["jobs", "result", &jobs[0]]).stdout), "hello\nC\n");
}

/// The queue reads its trust file again when it changes: a signer revoked there is refused
/// at the next submission, one added is accepted, and a broken file refuses submissions
/// naming it, all without a restart.
#[test]
fn the_queue_follows_its_trust_file_without_a_restart() {
    let c = Cluster::start(&[]);
    c.push_aus();
    let plan = example("log-errors.json");
    let input = example("data/app.log");
    let submit = || c.agx(&["submit", &plan, "--input", &input]);
    assert!(submit().status.success());
    let trust = c.path("queue/trust.json");
    let good = std::fs::read(&trust).unwrap();
    let list = text(&c.agx(&["--json", "trust", "list", "--trust", "queue/trust.json"]).stdout);
    let signer: serde_json::Value = serde_json::from_str(list.lines().next().unwrap()).unwrap();
    let keyid = signer["data"]["keyid"].as_str().unwrap().to_owned();
    c.ok(&["trust", "revoke", &keyid, "--trust", "queue/trust.json"]);
    let out = submit();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("is revoked"), "{}", text(&out.stderr));
    std::fs::write(&trust, b"{ not json").unwrap();
    let out = submit();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("trust file") && err.contains("is invalid"), "{err}");
    std::fs::write(&trust, &good).unwrap();
    assert!(submit().status.success(), "{}", text(&submit().stderr));
    // Other contents with the same size and modification time (a signer's key swapped for
    // another, the time set back): read again all the same.
    let before = std::fs::metadata(&trust).unwrap().modified().unwrap();
    c.ok(&["keygen", "--out", "other.key"]);
    c.ok(&["trust", "add", "other.key.pub", "--name", "e2e", "--trust", "other-trust.json"]);
    let key_of = |file: &str| {
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(c.path(file)).unwrap()).unwrap();
        doc["signers"][0]["key"].as_str().unwrap().to_owned()
    };
    let swapped = String::from_utf8(good.clone())
        .unwrap()
        .replace(&key_of("queue/trust.json"), &key_of("other-trust.json"));
    assert_eq!(swapped.len(), good.len());
    std::fs::write(&trust, &swapped).unwrap();
    std::fs::File::options().write(true).open(&trust).unwrap().set_modified(before).unwrap();
    let out = submit();
    assert!(
        text(&out.stderr).contains("no signature is by a trusted key"),
        "{}",
        text(&out.stderr)
    );
    // A FIFO in its place is refused at once, not waited on, and the queue goes on serving.
    std::fs::remove_file(&trust).unwrap();
    let made = std::process::Command::new("mkfifo").arg(&trust).status().unwrap();
    assert!(made.success());
    let out = submit();
    assert!(text(&out.stderr).contains("not a regular file"), "{}", text(&out.stderr));
    std::fs::remove_file(&trust).unwrap();
    std::fs::write(&trust, &good).unwrap();
    assert!(submit().status.success(), "{}", text(&submit().stderr));
}
