//! What an operator scrapes: `agq serve --metrics` and `agw --metrics` while a real worker
//! runs real jobs, read over HTTP and checked by Prometheus's own `promtool`.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;

/// The queue's metrics address, as its ready file names it.
fn queue_metrics(c: &Cluster) -> String {
    let ready: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.path("queue.ready")).unwrap()).unwrap();
    ready["metrics"].as_str().expect("the ready file names the metrics address").to_string()
}

/// `GET /metrics` from `at`.
fn scrape(at: &str) -> String {
    let mut s = std::net::TcpStream::connect(at).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: agq\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

/// The value of the sample `name` (labels included, as printed), if present.
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_count_what_the_queue_did_and_pass_promtool() {
    let mut c = Cluster::start(&["--metrics", "127.0.0.1:0"]);
    c.push_aus();
    // A free port for the worker's metrics (agw has no ready file; its log names it too).
    let worker_at =
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let tools = ["grep", "cut", "sort", "uniq"].map(|t| ["--allow-tool", t]).concat();
    let mut args = vec!["--metrics", worker_at.as_str()];
    args.extend(tools);
    c.worker("w1", &args);
    let log = example("data/app.log");
    let mut jobs = c.submit(&example("log-errors.json"), &[&log, &log, &log]);
    jobs.extend(c.submit(&example("log-errors-native.json"), &[&log]));
    for id in &jobs {
        c.wait_job(id, Duration::from_secs(60), |j| state(j) == "succeeded");
    }
    // A planner with a wrong token is refused and counted.
    let wrong = c
        .agx_cmd(&["jobs", "list"])
        .env("AGX_TOKEN_FILE", c.path("signer.key.pub"))
        .output()
        .unwrap();
    assert!(!wrong.status.success());

    let page = scrape(&queue_metrics(&c));
    assert_eq!(sample(&page, r#"agenix_queue_jobs{state="succeeded"}"#), Some(4.0), "{page}");
    assert_eq!(sample(&page, r#"agenix_queue_jobs{state="queued"}"#), Some(0.0), "{page}");
    assert_eq!(sample(&page, "agenix_queue_workers"), Some(1.0), "{page}");
    assert_eq!(
        sample(&page, r#"agenix_queue_requests_total{outcome="ok",request="submit"}"#),
        Some(2.0),
        "{page}"
    );
    assert!(
        sample(&page, r#"agenix_queue_requests_total{outcome="ok",request="complete"}"#)
            >= Some(4.0),
        "{page}"
    );
    assert!(
        sample(&page, r#"agenix_queue_requests_total{outcome="unauthenticated",request="hello"}"#)
            >= Some(1.0),
        "{page}"
    );
    // Each job's steps, once each: no lease expired, none failed.
    for (step, n) in [("submitted", 4.0), ("leased", 4.0), ("completed", 4.0), ("expired", 0.0)] {
        let name = format!("agenix_queue_job_steps_total{{step=\"{step}\"}}");
        assert_eq!(sample(&page, &name), Some(n), "{name}: {page}");
    }
    let commits = sample(&page, "agenix_queue_commit_duration_seconds_count").unwrap();
    assert!(commits >= 4.0, "{page}");
    assert_eq!(sample(&page, "agenix_queue_commit_writes_count"), Some(commits));
    assert_eq!(sample(&page, "agenix_queue_commit_failures_total"), Some(0.0));
    // Counts only: no digest, key or job identity is ever a label.
    assert!(!page.contains("sha256:") && !page.contains(&c.fingerprint), "{page}");

    // The worker's: every task of the three jobs, each lease, nothing that names them.
    let worker = scrape(&worker_at);
    assert_eq!(
        sample(&worker, r#"agenix_worker_tasks_total{kind="wasm",outcome="succeeded"}"#),
        Some(12.0),
        "{worker}"
    );
    assert_eq!(
        sample(&worker, r#"agenix_worker_leases_total{verdict="completed"}"#),
        Some(4.0),
        "{worker}"
    );
    assert_eq!(
        sample(&worker, r#"agenix_worker_tasks_total{kind="native",outcome="succeeded"}"#),
        Some(4.0),
        "{worker}"
    );
    // Each native task's jail, timed from asking for it to the tool's start.
    assert_eq!(sample(&worker, "agenix_worker_jail_setup_seconds_count"), Some(4.0), "{worker}");
    assert!(sample(&worker, "agenix_worker_jail_setup_seconds_sum") > Some(0.0), "{worker}");
    assert_eq!(
        sample(&worker, r#"agenix_worker_task_duration_seconds_count{kind="wasm"}"#),
        Some(12.0),
        "{worker}"
    );
    assert_eq!(
        sample(&worker, r#"agenix_worker_task_fuel_count{kind="wasm"}"#),
        Some(12.0),
        "{worker}"
    );
    assert!(!worker.contains("sha256:") && !worker.contains("grep"), "{worker}");
    promtool_check(&page);
    promtool_check(&worker);
}

/// `promtool check metrics` on `page`, when promtool is installed (required under
/// scripts/test.sh).
fn promtool_check(page: &str) {
    match which("promtool") {
        Some(promtool) => {
            let mut child = std::process::Command::new(promtool)
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        None if std::env::var("AGENIX_REQUIRE_PROMTOOL").as_deref() == Ok("1") => {
            panic!("promtool is not installed (scripts/setup.sh installs it: Debian's prometheus)")
        }
        None => {
            #[allow(clippy::print_stdout, reason = "a skipped check says so, with the reason")]
            {
                println!("metrics: promtool check skipped: promtool is not installed");
            }
        }
    }
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.is_file())
}
