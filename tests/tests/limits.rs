//! Ordinary use at the documented limits, through real agq, agw and agx processes: an action
//! of 1000 inputs at a worker concurrency of 16, a plan near 1 MiB at the default
//! concurrency, a result far larger than a frame, listings of 1000 jobs, and a worker the
//! queue throttles. Every job runs once and succeeds; none is lost.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;

use common::*;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Writes `n` input files of one line each and returns their paths.
fn inputs(c: &Cluster, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let p = c.path(&format!("in-{i}.txt"));
            std::fs::write(&p, format!("2026-12-05 info fine\n2026-12-05 app ERROR job {i}\n"))
                .unwrap();
            p.to_str().unwrap().to_string()
        })
        .collect()
}

/// Every job record `agx --json jobs list` gives, following its pages.
fn all_jobs(c: &Cluster, limit: usize) -> Vec<serde_json::Value> {
    let out = c.ok(&["--json", "jobs", "list", "--limit", &limit.to_string()]);
    out.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["data"].clone())
        .collect()
}

/// A one-task plan: `wc -l` of the input, with `env` padding to make it big.
fn wc_plan(c: &Cluster, name: &str, tasks: usize, pad: usize) -> String {
    let env: serde_json::Map<String, serde_json::Value> =
        (0..pad).map(|i| (format!("PAD_{i}"), "x".repeat(4000).into())).collect();
    let tasks: Vec<serde_json::Value> = (0..tasks)
        .map(|i| {
            serde_json::json!({
                "id": format!("t{i}"),
                "run": { "wasm": { "name": "wc" } },
                "args": ["-l"],
                "stdin": { "input": true },
                "env": env,
            })
        })
        .collect();
    let plan = serde_json::json!({
        "schema": "agenix.plan/v1", "name": "wc", "tasks": tasks, "output": "t0",
    });
    let path = c.path(name);
    std::fs::write(&path, serde_json::to_vec(&plan).unwrap()).unwrap();
    path.to_str().unwrap().to_string()
}

/// Before, the claim answer for 16 leases of this action passed the frame cap, could not be
/// sent, and 992 of 1000 jobs died of expired leases.
#[test]
fn an_action_of_1000_inputs_at_a_concurrency_of_16_runs_every_job_once() {
    let mut c = Cluster::start(&[]);
    c.push_aus();
    c.worker("w", &["--concurrency", "16"]);
    let inputs = inputs(&c, 1000);
    let mut args = vec!["--json", "submit", "--watch"];
    let plan = example("log-errors.json");
    args.push(&plan);
    for i in &inputs {
        args.extend(["--input", i.as_str()]);
    }
    let out = c.agx(&args);
    assert!(out.status.success(), "agx submit --watch: {}", text(&out.stderr));
    let results: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["type"] == "result")
        .collect();
    assert_eq!(results.len(), 1000, "one result per input");
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["data"]["succeeded"], true, "{r}");
        let output = r["data"]["output"].as_str().unwrap();
        assert!(output.trim_start().starts_with("1 ERROR job"), "job {i}: {output:?}");
        assert!(output.ends_with(&format!("ERROR job {i}\n")), "job {i}: {output:?}");
    }
    // A listing of 1000 jobs comes back whole, over several pages.
    let jobs = all_jobs(&c, 1000);
    assert_eq!(jobs.len(), 1000);
    for j in &jobs {
        assert_eq!((state(j), j["attempts"].as_u64()), ("succeeded", Some(1)), "{j}");
    }
    let listing = c.ok(&["jobs", "list", "--limit", "1000"]);
    assert_eq!(listing.lines().filter(|l| l.contains("succeeded")).count(), 1000);
    let log = c.log("w");
    assert!(!log.contains("could not be sent"), "{log}");
}

/// Before, four leases of a plan this big passed the frame cap at the default concurrency.
#[test]
fn a_plan_near_its_size_limit_runs_at_the_default_concurrency() {
    let mut c = Cluster::start(&[]);
    c.push_aus();
    c.worker("w", &[]);
    // 4 tasks of 64 variables of 4000 bytes: about 1 MB once signed.
    let plan = wc_plan(&c, "big.json", 4, 64);
    assert!(std::fs::metadata(&plan).unwrap().len() > 1_000_000);
    let inputs = inputs(&c, 8);
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let jobs = c.submit(&plan, &refs);
    for id in &jobs {
        let j = c.wait_job(id, Duration::from_secs(120), |j| {
            state(j) != "queued" && state(j) != "leased"
        });
        assert_eq!((state(&j), j["attempts"].as_u64()), ("succeeded", Some(1)), "{j}");
    }
}

/// A plan of `full` environment variables of 4000 bytes and one of `last` bytes, 64 to a
/// task (each task `wc -l` of the input), signed: the signed plan's size in bytes.
fn sign_padded(c: &Cluster, name: &str, full: usize, last: usize) -> Result<usize, String> {
    let mut lengths = vec![4000; full];
    lengths.push(last);
    let tasks: Vec<serde_json::Value> = lengths
        .chunks(agenix_proto::plan::MAX_ENV)
        .enumerate()
        .map(|(t, vars)| {
            let env: serde_json::Map<String, serde_json::Value> = vars
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("PAD_{i}"), "x".repeat(*n).into()))
                .collect();
            serde_json::json!({
                "id": format!("t{t}"),
                "run": { "wasm": { "name": "wc" } },
                "args": ["-l"],
                "stdin": { "input": true },
                "env": env,
            })
        })
        .collect();
    let plan = serde_json::json!({
        "schema": "agenix.plan/v1", "name": "edge", "tasks": tasks, "output": "t0",
    });
    let (draft, signed) = (format!("{name}.json"), format!("{name}.env"));
    std::fs::write(c.path(&draft), serde_json::to_vec(&plan).unwrap()).unwrap();
    let out = c.agx(&["plan", "sign", &draft, "--out", &signed]);
    if !out.status.success() {
        return Err(text(&out.stderr));
    }
    let envelope: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.path(&signed)).unwrap()).unwrap();
    let payload = base64::engine::general_purpose::STANDARD
        .decode(envelope["payload"].as_str().unwrap())
        .unwrap();
    Ok(payload.len())
}

/// A signed plan of exactly the size limit is submitted (its envelope is a third larger)
/// and runs; one byte more is refused at signing, the limit named.
#[test]
fn a_signed_plan_of_exactly_the_size_limit_runs_and_a_byte_more_is_refused() {
    use agenix_proto::plan::MAX_PLAN_BYTES;
    let mut c = Cluster::start(&[]);
    c.push_aus();
    c.worker("w", &[]);
    // Full variables until the last one can make up the difference (at most 4096 bytes);
    // each full one costs a little over 4000 bytes, so the plan never passes the limit.
    let (mut full, mut last) = (200, 0);
    loop {
        let size = sign_padded(&c, "edge", full, last).unwrap();
        let gap = MAX_PLAN_BYTES - size;
        if gap == 0 {
            break;
        }
        assert_eq!(last, 0, "the last variable should have made it exact ({size} bytes)");
        if gap <= 4096 {
            last = gap;
        } else {
            full += ((gap - 3000) / 4020).max(1);
        }
    }
    let err = sign_padded(&c, "past", full, last + 1).unwrap_err();
    assert!(
        err.contains(&format!("{} bytes, over the limit of {MAX_PLAN_BYTES}", MAX_PLAN_BYTES + 1)),
        "{err}"
    );
    // `plan validate` tells the same before anyone signs: it counts what signing adds.
    let ok = c.agx(&["plan", "validate", "edge.json"]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let past = c.agx(&["plan", "validate", "past.json"]);
    let err = text(&past.stderr);
    assert_eq!(past.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "it would be {} bytes, over the limit of {MAX_PLAN_BYTES}",
            MAX_PLAN_BYTES + 1
        )),
        "{err}"
    );
    let inputs = inputs(&c, 4);
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let signed = c.path("edge.env").to_str().unwrap().to_string();
    let jobs = c.submit(&signed, &refs);
    for id in &jobs {
        let j = c.wait_job(id, Duration::from_secs(120), |j| {
            state(j) != "queued" && state(j) != "leased"
        });
        assert_eq!((state(&j), j["attempts"].as_u64()), ("succeeded", Some(1)), "{j}");
    }
}

/// Sixty native tasks each write 10,000 quotes to stderr: their reports are 1.2 MB of JSON,
/// over a frame. Before, the worker could never deliver the result and retried forever.
#[test]
fn a_result_larger_than_a_frame_is_delivered() {
    let mut c = Cluster::start(&[]);
    c.push_aus();
    c.worker("w", &["--allow-tool", "awk"]);
    let tasks: Vec<serde_json::Value> = (0..60)
        .map(|i| {
            serde_json::json!({
                "id": format!("t{i}"),
                "run": { "native": { "tool": "awk" } },
                "args": [r#"{ printf "%s", $0 > "/dev/stderr"; print "ok" }"#],
                "stdin": { "input": true },
            })
        })
        .collect();
    let plan = serde_json::json!({
        "schema": "agenix.plan/v1", "name": "quotes", "tasks": tasks, "output": "t0",
    });
    std::fs::write(c.path("quotes.json"), serde_json::to_vec(&plan).unwrap()).unwrap();
    std::fs::write(c.path("quotes.txt"), "\"".repeat(10_000)).unwrap();
    let path = |p: &str| c.path(p).to_str().unwrap().to_string();
    let jobs = c.submit(&path("quotes.json"), &[&path("quotes.txt")]);
    let j = c.wait_job(&jobs[0], Duration::from_secs(120), |j| {
        state(j) != "queued" && state(j) != "leased"
    });
    assert_eq!(state(&j), "succeeded", "{j}\n{}", c.log("w"));
    assert!(j["output"]["reports"]["blob"].is_object(), "the reports went as a blob: {j}");
    // agx fetches them to show the table.
    let shown = c.ok(&["jobs", "show", &jobs[0]]);
    assert_eq!(shown.lines().filter(|l| l.contains("exit 0")).count(), 60, "{shown}");
    let out = c.agx(&["jobs", "result", &jobs[0]]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ok\n");
}

/// A worker the queue throttles waits and goes on: no job pays an attempt for it.
#[test]
fn a_worker_the_queue_throttles_loses_no_attempt() {
    // 120 requests a minute per slot: a burst of 120, then two a second.
    let mut c = Cluster::start(&["--worker-requests-per-minute", "120"]);
    c.push_aus();
    c.worker("w", &["--concurrency", "1"]);
    let plan = wc_plan(&c, "wc.json", 1, 0);
    let inputs = inputs(&c, 40);
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let jobs = c.submit(&plan, &refs);
    for id in &jobs {
        let j = c.wait_job(id, Duration::from_secs(180), |j| {
            state(j) != "queued" && state(j) != "leased"
        });
        assert_eq!((state(&j), j["attempts"].as_u64()), ("succeeded", Some(1)), "{j}");
    }
}

/// agw runs 1 to 256 jobs at once: at both bounds it starts and registers with that
/// concurrency; past them, or given a device or an oversized file as its key, or a device as
/// its configuration file, it refuses
/// to start and says why.
#[test]
fn a_worker_starts_at_its_concurrency_bounds_and_refuses_past_them() {
    let mut c = Cluster::start(&[]);
    c.worker("one", &["--concurrency", "1"]);
    c.worker("most", &["--concurrency", "256"]);
    let until = Instant::now() + Duration::from_secs(60);
    let registered = loop {
        let out = c.ok(&["--json", "workers", "list"]);
        let mut seen: Vec<(String, u64)> = out
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["type"] == "worker")
            .map(|r| {
                let caps = &r["data"]["capabilities"];
                (caps["name"].as_str().unwrap().to_string(), caps["concurrency"].as_u64().unwrap())
            })
            .collect();
        seen.sort();
        if seen.len() == 2 || Instant::now() > until {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(registered, [("most".to_string(), 256), ("one".to_string(), 1)]);

    let agw = |args: &[&str]| {
        let out = Command::new(bin("agw"))
            .args(["--queue", "127.0.0.1:9", "--fingerprint", &c.fingerprint])
            .args(["--trust", "worker-trust.json", "--cache-dir", "cache-past"])
            .args(args)
            .current_dir(c.path(""))
            .output()
            .unwrap();
        (out.status.code(), text(&out.stderr))
    };
    let key = c.worker_dir("past").to_str().unwrap().to_string();
    for n in ["0", "257"] {
        let (code, err) = agw(&["--data", &key, "--concurrency", n]);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains(&format!("concurrency {n} is outside 1..=256")), "{err}");
    }
    // A key file that is a device, or far too large, is refused with the reason.
    use std::os::unix::fs::PermissionsExt as _;
    let device = c.path("device-key");
    std::fs::create_dir(&device).unwrap();
    std::os::unix::fs::symlink("/dev/zero", device.join("worker.key")).unwrap();
    let (code, err) = agw(&["--data", device.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("may be read by others (mode 666): chmod 600 it"), "{err}");
    let huge = c.path("huge-key");
    std::fs::create_dir(&huge).unwrap();
    std::fs::write(huge.join("worker.key"), vec![b'A'; (16 << 10) + 1]).unwrap();
    std::fs::set_permissions(huge.join("worker.key"), std::fs::Permissions::from_mode(0o600))
        .unwrap();
    let (code, err) = agw(&["--data", huge.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("over the limit of 16384 bytes"), "{err}");
    let (code, err) = agw(&["--data", &key, "--config", "/dev/zero"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot read /dev/zero: over the limit of 1048576 bytes"), "{err}");
}

/// An input exactly the queue's largest blob is submitted and runs; one byte more, or a
/// device that never ends, is refused by agx before it reads past the queue's limit (it
/// learns the limit when it connects), naming where the limit comes from. Nothing is
/// submitted for a refused batch.
#[test]
fn inputs_at_the_queues_blob_limit_run_and_past_it_are_refused_by_agx() {
    const MAX: usize = 4 << 20;
    let mut c = Cluster::start(&["--max-blob", &MAX.to_string()]);
    c.push_aus();
    c.worker("w", &[]);
    // Lines grep finds (8 bytes each), so the job succeeds.
    let at = b"x error\n".repeat(MAX / 8);
    assert_eq!(at.len(), MAX);
    std::fs::write(c.path("at.txt"), &at).unwrap();
    std::fs::write(c.path("past.txt"), [at.as_slice(), b"x"].concat()).unwrap();
    let plan = example("log-errors.json");
    let jobs = c.submit(&plan, &[c.path("at.txt").to_str().unwrap()]);
    c.wait_job(&jobs[0], Duration::from_secs(120), |j| state(j) == "succeeded");
    let said =
        format!("over the limit of {MAX} bytes (the queue's largest blob: agq serve --max-blob)");
    for input in [c.path("past.txt").to_str().unwrap().to_owned(), "/dev/zero".to_owned()] {
        let out = c.agx(&["submit", &plan, "--input", &input]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(&format!("{input}: {said}")), "{err}");
    }
    let listed = c.ok(&["--json", "jobs", "list"]);
    assert_eq!(listed.lines().count(), 1, "only the first job was submitted: {listed}");
}
