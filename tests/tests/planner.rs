//! From one sentence to a finished job, as a newcomer does it: `agx plan chat` against a
//! chat-completions server on loopback playing a recorded answer drafts the plan, runs it
//! here on a sample, signs it and submits it to a real queue, where a real worker runs it.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod common;

#[path = "../../planner/tests/common/llm.rs"]
mod llm;

use common::*;
use llm::{LlmServer, Reply};

const LOG_ERRORS: &str = "      1 auth: token expired\n      3 db: connection refused\n      2 payments: card declined\n";

#[test]
fn one_sentence_is_drafted_reviewed_run_signed_and_submitted() {
    let mut c = Cluster::start(&[]);
    c.push_aus();
    c.worker("w1", &[]);
    let llm = LlmServer::start(vec![Reply::recorded("good")]);
    let log = example("data/app.log");
    let script = format!(
        "count the distinct error messages in this log\n\
         /run --input {log}\n\
         /sign --out plan.env\n\
         /submit --input {log} --watch\n"
    );
    let out = c
        .agx_cmd(&["plan", "chat", "--input-sample", &log])
        .env("AGX_LLM_URL", llm.url())
        .env("AGX_LLM_MODEL", "m")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(script.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let (shown, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{shown}\n{err}");
    // Reviewed, then run here: the output once from /run and once from the job.
    assert!(shown.starts_with("Say what the plan should do"), "{shown}");
    assert!(shown.contains("plan \"log-errors\" (4 tasks)"), "{shown}");
    assert_eq!(shown.matches(LOG_ERRORS).count(), 2, "{shown}\n{err}");
    assert!(c.path("plan.env").exists());
    // The job ran on the worker and is done.
    let jobs = c.ok(&["--json", "jobs", "list"]);
    assert!(jobs.contains(r#""state":{"state":"succeeded"}"#), "{jobs}");
}

#[test]
fn the_tools_workers_advertise_can_be_offered_to_the_model() {
    let mut c = Cluster::start(&[]);
    c.push_aus();
    c.worker("w1", &["--allow-tool", "sort", "--allow-tool", "uniq"]);
    c.worker("w2", &["--allow-tool", "sort", "--allow-tool", "cut"]);
    // Wait until both have registered with their tools.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while c.ok(&["workers", "list"]).matches("sort").count() < 2 {
        assert!(std::time::Instant::now() < until, "{}", c.ok(&["workers", "list"]));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let llm = LlmServer::start(vec![Reply::recorded("good")]);
    let out = c
        .agx_cmd(&["plan", "draft", "count the errors", "--tools-from-queue", "--tool", "wc"])
        .env("AGX_LLM_URL", llm.url())
        .env("AGX_LLM_MODEL", "m")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let offered = &llm.received()[0].data()["tools"];
    assert_eq!(offered, &serde_json::json!(["cut", "sort", "uniq", "wc"]));
}
