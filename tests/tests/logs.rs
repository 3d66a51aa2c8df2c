//! What an operator's log collector receives: `--log-format json` from agq and agw through
//! a full run (wasm and native tasks, a failing job, a refused planner), every line one JSON
//! object with the same fields, each job's and task's lines in their spans — and no secret
//! anywhere, even at the most verbose level.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// A string no log line may hold: it is in the job's input, and so in its output.
const PAYLOAD_CANARY: &str = "payload-canary-7f3a9c41e2";

/// Every log line of `text`, parsed; panics on one that is not a JSON object.
fn lines(who: &str, text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{who}: a line that is not JSON ({e}): {l}"));
            assert!(v.is_object(), "{who}: {l}");
            for field in ["timestamp", "level", "target"] {
                assert!(v.get(field).is_some(), "{who}: no {field}: {l}");
            }
            v
        })
        .collect()
}

/// The lines of a log an assertion shows: our own, not the libraries' trace.
fn brief(log: &str) -> String {
    log.lines().filter(|l| l.contains("\"target\":\"ag")).collect::<Vec<_>>().join("\n")
}

/// The spans a line happened in, by name.
fn span<'a>(line: &'a Value, name: &str) -> Option<&'a Value> {
    line["spans"].as_array()?.iter().find(|s| s["name"] == name)
}

/// What no log may hold: each role token, every private key (whole, and each line of its
/// PEM body), and the job's payload.
fn secrets(c: &Cluster) -> Vec<(String, String)> {
    let mut found = vec![("payload".to_string(), PAYLOAD_CANARY.to_string())];
    for file in [
        "queue/planner.token",
        "queue/observer.token",
        "queue/identity.key",
        "signer.key",
        "w1-key/worker.key",
    ] {
        let text = std::fs::read_to_string(c.path(file)).unwrap();
        let text = text.trim();
        assert!(text.len() >= 32, "{file} is not a secret: {text:?}");
        found.push((file.to_string(), text.to_string()));
        for line in text.lines().filter(|l| !l.starts_with("-----") && l.len() >= 16) {
            found.push((format!("{file} (a line of it)"), line.to_string()));
        }
    }
    found
}

/// Everything at `trace` but the compiler's own steps (which see code, never data, and
/// would slow each compilation by minutes).
const TRACE: &str = "trace,cranelift_codegen=info,cranelift_frontend=info,regalloc2=info,\
                     wasmtime_internal_cranelift=info,wasmtime_environ=info";

#[test]
fn json_logs_carry_spans_and_no_secret_even_at_trace() {
    let mut c = Cluster::start_logging(&["--log-format", "json"], TRACE);
    c.push_aus();
    c.agw_log = TRACE.into();
    let tools = ["grep", "cut", "sort", "uniq"].map(|t| ["--allow-tool", t]).concat();
    let mut args = vec!["--log-format", "json"];
    args.extend(tools);
    c.worker("w1", &args);

    let input = c.path("secret.log");
    std::fs::write(
        &input,
        format!("2026-11-25T09:00:02Z ERROR db: {PAYLOAD_CANARY}\n2026-11-25T09:00:03Z INFO ok\n"),
    )
    .unwrap();
    let input = input.to_str().unwrap();
    let native = c.submit(&example("log-errors-native.json"), &[input]);
    let wasm = c.submit(&example("log-errors.json"), &[input]);
    for id in native.iter().chain(&wasm) {
        c.wait_job(id, Duration::from_secs(60), |j| state(j) == "succeeded");
    }
    let out = c.ok(&["jobs", "result", &native[0]]);
    assert!(out.contains(PAYLOAD_CANARY), "the canary reached the output: {out}");
    // A job that fails: no line matches, so grep exits 1.
    let clean = c.path("clean.log");
    std::fs::write(&clean, "2026-11-25T09:00:03Z INFO all well\n").unwrap();
    let dead = c.submit(&example("log-errors-native.json"), &[clean.to_str().unwrap()]);
    c.wait_job(&dead[0], Duration::from_secs(60), |j| state(j) == "dead");
    // A planner with a wrong token.
    let wrong = c
        .agx_cmd(&["jobs", "list"])
        .env("AGX_TOKEN_FILE", c.path("signer.key.pub"))
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    // Stop the worker cleanly, so its last lines are written.
    let w = c.terminate_worker("w1");
    assert!(c.wait_exit("w1", w, Duration::from_secs(30)).success());

    let queue_log = c.log("agq");
    let worker_log = c.log("w1");
    let queue = lines("agq", &queue_log);
    let worker = lines("agw", &worker_log);

    for (what, secret) in secrets(&c) {
        assert!(!queue_log.contains(&secret), "agq's log holds {what}");
        assert!(!worker_log.contains(&secret), "agw's log holds {what}");
    }

    // The worker: each native task's end, in its task span inside its job's span.
    let ended: Vec<&Value> = worker
        .iter()
        .filter(|l| {
            l["message"] == "task ended"
                && span(l, "job").is_some_and(|s| s["job"] == native[0].as_str())
        })
        .collect();
    assert_eq!(ended.len(), 4, "one line per task of the native job:\n{}", brief(&worker_log));
    for l in &ended {
        let task = span(l, "task").unwrap();
        assert_eq!(task["kind"], "native", "{l}");
        assert_eq!(l["outcome"], "succeeded", "{l}");
        assert_eq!(l["exit"], 0, "{l}");
        assert!(l["wall_ms"].is_u64() && l["peak_memory_bytes"].is_u64(), "{l}");
        assert_eq!(span(l, "job").unwrap()["attempt"], 1, "{l}");
    }
    let tasks: Vec<&str> =
        ended.iter().map(|l| span(l, "task").unwrap()["task"].as_str().unwrap()).collect();
    for t in ["errors", "messages", "sorted", "counted"] {
        assert!(tasks.contains(&t), "{tasks:?}");
    }
    // Wasm tasks say their fuel.
    assert!(
        worker.iter().any(|l| l["message"] == "task ended"
            && span(l, "task").is_some_and(|t| t["kind"] == "wasm")
            && l["fuel"].as_u64().is_some_and(|f| f > 0)),
        "{}",
        brief(&worker_log)
    );
    // The failed job's lines name it: its first task's exit, the state recorded.
    let of_dead = |l: &&Value| span(l, "job").is_some_and(|s| s["job"] == dead[0].as_str());
    assert!(
        worker.iter().filter(of_dead).any(|l| l["message"] == "task ended"
            && l["outcome"] == "exited_nonzero"
            && l["exit"] == 1),
        "{}",
        brief(&worker_log)
    );
    assert!(
        worker
            .iter()
            .filter(of_dead)
            .any(|l| l["message"] == "result recorded" && l["state"] == "dead"),
        "{}",
        brief(&worker_log)
    );

    // The queue: each submission, each job's steps with its id, the refused planner.
    assert_eq!(
        queue.iter().filter(|l| l["message"] == "submitted").count(),
        3,
        "{}",
        brief(&queue_log)
    );
    for id in native.iter().chain(&wasm) {
        for step in ["submitted", "leased", "completed"] {
            assert!(
                queue.iter().any(|l| l["message"] == "job step"
                    && l["job"] == id.as_str()
                    && l["step"] == step),
                "no {step} step for job {id}:\n{}",
                brief(&queue_log)
            );
        }
    }
    assert!(
        queue.iter().any(|l| l["message"] == "job step"
            && l["job"] == dead[0].as_str()
            && l["state"] == "dead"
            && l["level"] == "WARN"),
        "{}",
        brief(&queue_log)
    );
    // Requests are logged in their client's span: address and role.
    assert!(
        queue.iter().any(|l| span(l, "client").is_some_and(|s| s["role"] == "worker"
            && s["ip"] == "127.0.0.1"
            && s["key"].as_str().is_some_and(|k| k.starts_with("sha256:")))),
        "{}",
        brief(&queue_log)
    );
}

#[test]
fn a_log_format_that_is_not_one_is_refused_with_the_choices() {
    for (bin, args) in [("agq", vec!["fingerprint", "--data", "x"]), ("agw", vec!["doctor"])] {
        let out = std::process::Command::new(common::bin(bin))
            .args(&args)
            .args(["--log-format", "xml"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bin}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("xml") && err.contains("text") && err.contains("json"), "{err}");
    }
}
