//! agx at its edges, as users hit them: every read capped while reading (devices, FIFOs,
//! regular files at and past the cap), input that never ends bounded by the timeout, a
//! reader that closes stdout early, and terminal controls in what others wrote.
//!
//! Timeouts here only detect hangs; nothing asserts how long anything took.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod common;

use common::*;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use agenix_proto::envelope::MAX_ENVELOPE_BYTES;
use agenix_proto::plan::MAX_PLAN_BYTES;
use agenix_proto::trust::MAX_TRUST_BYTES;
use agenix_runtime::store::MAX_COMPONENT_BYTES;
use agenix_test_programs as programs;

/// How long a test waits for agx before calling it hung: far beyond any honest run.
const HANG: Duration = Duration::from_secs(120);

/// The exit code for a closed stdout.
const STDOUT_CLOSED: i32 = 141;

/// Most input `agx run` and stdin `agx au run` read.
const MAX_INPUT: u64 = 1 << 30;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// agx in `t`'s directory, with its own store and cache, stdout and stderr piped.
fn agx_cmd(t: &TestDir, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agx"));
    cmd.args(args)
        .current_dir(t.path(""))
        .env("AGX_STORE", t.path("store"))
        .env("AGX_CACHE", t.path("cache"))
        .env_remove("AGX_KEY")
        .env_remove("AGX_TRUST")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Waits for `child`, collecting its stderr (and stdout, if still piped); kills it and fails
/// the test if it has not ended within [`HANG`].
fn finish(mut child: Child, what: &str) -> (ExitStatus, String, Vec<u8>) {
    let mut stderr = child.stderr.take().unwrap();
    let err = thread::spawn(move || {
        let mut b = Vec::new();
        stderr.read_to_end(&mut b).unwrap();
        b
    });
    let out = child.stdout.take().map(|mut stdout| {
        thread::spawn(move || {
            let mut b = Vec::new();
            stdout.read_to_end(&mut b).unwrap();
            b
        })
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > HANG {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("agx hung: {what}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let stdout = out.map(|h| h.join().unwrap()).unwrap_or_default();
    (status, text(&err.join().unwrap()), stdout)
}

/// Runs agx with stdin from `stdin` and returns its exit code and stderr.
fn agx_with_stdin(t: &TestDir, args: &[&str], stdin: Stdio) -> (Option<i32>, String) {
    let child = agx_cmd(t, args).stdin(stdin).spawn().unwrap();
    let (status, err, _) = finish(child, &format!("{args:?}"));
    (status.code(), err)
}

/// Runs agx with empty stdin, expecting exit 1 and `message` in its error.
fn refuses(t: &TestDir, args: &[&str], message: &str) {
    let (code, err) = agx_with_stdin(t, args, Stdio::null());
    assert_eq!(code, Some(1), "agx {args:?}\nstderr: {err}");
    assert!(err.contains(message), "agx {args:?}: expected {message:?} in\n{err}");
}

/// The error for a file holding more than `max` bytes.
fn over(path: &str, max: impl std::fmt::Display) -> String {
    format!("{path}: over the limit of {max} bytes")
}

/// A plan (unsigned, every AU pinned by digest, so no store is needed) whose one task may
/// run for `timeout_ms`.
fn pinned_plan(timeout_ms: u64) -> String {
    format!(
        r#"{{"schema":"agenix.plan/v1","name":"edge","tasks":[
        {{"id":"echo","run":{{"wasm":{{"name":"echo","digest":"{DIGEST}"}}}},
          "stdin":{{"input":true}},"limits":{{"timeout_ms":{timeout_ms}}}}}],"output":"echo"}}"#
    )
}

/// A FIFO in `t`'s directory.
fn fifo(t: &TestDir, name: &str) -> PathBuf {
    let path = t.path(name);
    let made = Command::new("mkfifo").arg(&path).status().unwrap();
    assert!(made.success(), "mkfifo {}", path.display());
    path
}

/// Floods the FIFO at `path` from a thread until its reader goes away. Returns a handle
/// that, when finished, unblocks a writer still waiting for a reader and joins it.
fn flood(path: &Path) -> impl FnOnce() {
    let p = path.to_path_buf();
    let writer = thread::spawn(move || {
        let mut w = OpenOptions::new().write(true).open(&p).unwrap();
        let chunk = vec![b'{'; 1 << 16];
        while w.write_all(&chunk).is_ok() {}
    });
    let p = path.to_path_buf();
    move || {
        // If agx never opened the FIFO, the writer still waits in open: be its reader for
        // a moment (opening read-write never blocks on Linux).
        if !writer.is_finished() {
            drop(OpenOptions::new().read(true).write(true).open(&p).unwrap());
        }
        writer.join().unwrap();
    }
}

/// A file of exactly `len` bytes: `head`, then `fill` to the end (sparse when `fill` is 0).
fn file_of(t: &TestDir, name: &str, head: &[u8], fill: u8, len: u64) -> String {
    let path = t.path(name);
    let mut f = File::create(&path).unwrap();
    f.write_all(head).unwrap();
    if fill == 0 {
        f.set_len(len).unwrap();
    } else {
        let rest = usize::try_from(len).unwrap() - head.len();
        f.write_all(&vec![fill; rest]).unwrap();
    }
    assert_eq!(f.metadata().unwrap().len(), len);
    name.to_string()
}

#[test]
fn every_file_read_refuses_dev_zero_at_its_cap() {
    let t = TestDir::new();
    t.signer("k");
    // The input may take up to the longest timeout there is: only its cap can stop it.
    t.write("plan.json", &pinned_plan(3_600_000));
    let z = "/dev/zero";
    let component = over(z, MAX_COMPONENT_BYTES);
    for args in [
        &["au", "run", z][..],
        &["au", "check", z],
        &["au", "describe", z],
        &["au", "push", z, "--name", "zero"],
    ] {
        refuses(&t, args, &component);
    }
    refuses(&t, &["plan", "validate", z], &over(z, MAX_PLAN_BYTES));
    refuses(&t, &["plan", "sign", z, "--key", "k.key", "--out", "x.env"], &over(z, MAX_PLAN_BYTES));
    refuses(&t, &["plan", "verify", z, "--trust", "trust.json"], &over(z, MAX_ENVELOPE_BYTES));
    refuses(&t, &["plan", "show", z], &over(z, MAX_ENVELOPE_BYTES));
    refuses(&t, &["run", z, "--unsigned"], &over(z, MAX_ENVELOPE_BYTES));
    refuses(&t, &["trust", "list", "--trust", z], &over(z, MAX_TRUST_BYTES));
    refuses(&t, &["run", "plan.json", "--unsigned", "--input", z], &over(z, MAX_INPUT));
    let native = r#"{"schema":"agenix.plan/v1","name":"n","tasks":[
        {"id":"s","run":{"native":{"tool":"sort"}},"stdin":{"input":true}}],"output":"s"}"#;
    t.write("native.json", native);
    refuses(&t, &["run", "native.json", "--unsigned", "--tools", z], &over(z, 1 << 20));
    // What connects to a queue: the token file and the config file.
    let queue = ["--queue", "127.0.0.1:9", "--fingerprint", DIGEST];
    refuses(&t, &[&["jobs", "list"][..], &queue, &["--token-file", z]].concat(), &over(z, 4096));
    refuses(&t, &["jobs", "list", "--config", z], &over(z, 1 << 20));
    // A directory is still refused by name.
    fs::create_dir(t.path("dir")).unwrap();
    refuses(&t, &["plan", "validate", "dir"], "agx: dir is a directory");
    refuses(&t, &["au", "check", "dir"], "agx: dir is a directory");
}

#[test]
fn a_flooded_fifo_is_refused_past_the_cap() {
    let t = TestDir::new();
    for (name, args, max) in [
        ("plan.fifo", &["plan", "validate", "plan.fifo"][..], MAX_PLAN_BYTES as u64),
        ("au.fifo", &["au", "check", "au.fifo"], MAX_COMPONENT_BYTES),
    ] {
        let path = fifo(&t, name);
        let done = flood(&path);
        refuses(&t, args, &over(name, max));
        done();
    }
    // The input, with as long as there is to arrive: only its cap can stop it.
    t.write("plan.json", &pinned_plan(3_600_000));
    let path = fifo(&t, "input.fifo");
    let done = flood(&path);
    refuses(
        &t,
        &["run", "plan.json", "--unsigned", "--input", "input.fifo"],
        &over("input.fifo", MAX_INPUT),
    );
    done();
}

#[test]
fn regular_files_at_the_cap_are_read_and_a_byte_more_is_refused() {
    let t = TestDir::new();
    // A plan padded with whitespace to exactly the plan cap is a valid plan.
    let plan = pinned_plan(1000);
    let max = MAX_PLAN_BYTES as u64;
    let at = file_of(&t, "at.json", plan.as_bytes(), b' ', max);
    let past = file_of(&t, "past.json", plan.as_bytes(), b' ', max + 1);
    let shown = t.ok(&["plan", "validate", &at]);
    assert!(shown.contains("valid plan \"edge\""), "{shown}");
    refuses(&t, &["plan", "validate", &past], &over(&past, max));

    // `agx run` reads a plan file up to the envelope cap: at it, the plan's own limit
    // speaks; past it, the file's.
    let max = MAX_ENVELOPE_BYTES as u64;
    let at = file_of(&t, "at-env.json", plan.as_bytes(), b' ', max);
    let past = file_of(&t, "past-env.json", plan.as_bytes(), b' ', max + 1);
    let err = t.fails(&["run", &at, "--unsigned"]);
    assert!(!err.contains(&over(&at, max)), "{err}");
    assert!(err.contains(&format!("over the limit of {MAX_PLAN_BYTES}")), "{err}");
    refuses(&t, &["run", &past, "--unsigned"], &over(&past, max));

    // A component at the cap is read (and is no AU); a byte more is refused unread.
    let at = file_of(&t, "at.wasm", b"\0asm", 0, MAX_COMPONENT_BYTES);
    let past = file_of(&t, "past.wasm", b"\0asm", 0, MAX_COMPONENT_BYTES + 1);
    let err = t.fails(&["au", "check", &at]);
    assert!(err.contains("at.wasm is not an AU"), "{err}");
    refuses(&t, &["au", "check", &past], &over(&past, MAX_COMPONENT_BYTES));
}

#[test]
fn au_run_times_out_when_stdin_stays_open() {
    let t = TestDir::new();
    // A FIFO whose writer never writes or closes.
    let path = fifo(&t, "silent.fifo");
    let writer = OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let stdin = File::open(&path).unwrap();
    let (code, err) = agx_with_stdin(
        &t,
        &["au", "run", programs::GUEST_ECHO, "--timeout", "300ms"],
        Stdio::from(stdin),
    );
    drop(writer);
    assert_eq!(code, Some(124), "{err}");
    assert!(err.contains("agx: echo: timed-out (fuel 0, "), "{err}");
    assert!(err.contains("the timeout of 300 ms passed while reading stdin"), "{err}");
    assert!(!err.contains("arg "), "the AU must not have run: {err}");

    // With --json, the outcome record says so.
    let path = fifo(&t, "silent2.fifo");
    let writer = OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let stdin = File::open(&path).unwrap();
    let (code, err) = agx_with_stdin(
        &t,
        &["--json", "au", "run", programs::GUEST_ECHO, "--timeout", "300ms"],
        Stdio::from(stdin),
    );
    drop(writer);
    assert_eq!(code, Some(124), "{err}");
    let rec: serde_json::Value = serde_json::from_str(err.trim()).unwrap();
    assert_eq!(rec["data"]["outcome"]["kind"], "timed_out");
    assert_eq!(rec["data"]["stdin_timed_out"], true);
}

#[test]
fn au_run_refuses_stdin_past_the_cap() {
    let t = TestDir::new();
    let (code, err) = agx_with_stdin(
        &t,
        &["au", "run", programs::GUEST_ECHO, "--timeout", "1h"],
        Stdio::from(File::open("/dev/zero").unwrap()),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("agx: stdin: over the limit of {MAX_INPUT} bytes")), "{err}");
    assert!(!err.contains("arg "), "the AU must not have run: {err}");
}

#[test]
fn run_gives_up_on_input_that_stays_open() {
    let t = TestDir::new();
    t.write("plan.json", &pinned_plan(300));
    // stdin: a pipe this test holds open and never writes to.
    let mut child = agx_cmd(&t, &["run", "plan.json", "--unsigned", "--input", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let held = child.stdin.take();
    let (status, err, _) = finish(child, "run --input -");
    drop(held);
    assert_eq!(status.code(), Some(124), "{err}");
    assert!(err.contains("agx: stdin: still open when 300 ms passed"), "{err}");

    // A FIFO as --input, its writer silent.
    let path = fifo(&t, "silent.fifo");
    let writer = OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let (code, err) = agx_with_stdin(
        &t,
        &["run", "plan.json", "--unsigned", "--input", "silent.fifo"],
        Stdio::null(),
    );
    drop(writer);
    assert_eq!(code, Some(124), "{err}");
    assert!(err.contains("agx: silent.fifo: still open when 300 ms passed"), "{err}");
}

/// Runs agx with `stdin` written from a thread, reads a few bytes of its stdout and closes
/// it; returns the exit code and stderr.
fn cut_off(t: &TestDir, args: &[&str], stdin: Vec<u8>) -> (Option<i32>, String) {
    let mut child = agx_cmd(t, args).stdin(Stdio::piped()).spawn().unwrap();
    let mut w = child.stdin.take().unwrap();
    let feeder = thread::spawn(move || {
        let _ = w.write_all(&stdin);
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 10];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let (status, err, _) = finish(child, &format!("{args:?}"));
    feeder.join().unwrap();
    (status.code(), err)
}

/// Lines enough to overflow any pipe buffer several times over.
fn big_input() -> Vec<u8> {
    b"a line of output that nobody will read\n".repeat(100_000)
}

#[test]
fn au_run_reports_a_closed_stdout_with_its_outcome() {
    let t = TestDir::new();
    let input = big_input();
    let (code, err) = cut_off(&t, &["au", "run", programs::GUEST_ECHO], input.clone());
    assert_eq!(code, Some(STDOUT_CLOSED), "{err}");
    assert!(err.contains(&format!("stdin {}\n", input.len())), "the AU's stderr is kept: {err}");
    assert!(err.contains("agx: echo: exit 0 (fuel "), "{err}");
    assert!(err.contains("agx: stdout was closed before all of the AU's output was written"));

    let (code, err) = cut_off(&t, &["--json", "au", "run", programs::GUEST_ECHO], input);
    assert_eq!(code, Some(STDOUT_CLOSED), "{err}");
    let rec: serde_json::Value = serde_json::from_str(err.trim()).unwrap();
    assert_eq!(rec["data"]["outcome"], serde_json::json!({"kind": "exited", "code": 0}));
    assert_eq!(rec["data"]["stdout_closed"], true);
}

#[test]
fn run_reports_a_closed_stdout_with_its_table() {
    let t = TestDir::new();
    t.ok(&["au", "push", programs::GUEST_ECHO, "--name", "echo"]);
    let plan = r#"{"schema":"agenix.plan/v1","name":"cat","tasks":[
        {"id":"copy","run":{"wasm":{"name":"echo"}},"stdin":{"input":true}}],"output":"copy"}"#;
    t.write("plan.json", plan);
    for json in [false, true] {
        let mut args = vec!["run", "plan.json", "--unsigned", "--input", "-"];
        if json {
            args.insert(0, "--json");
        }
        let (code, err) = cut_off(&t, &args, big_input());
        assert_eq!(code, Some(STDOUT_CLOSED), "{args:?}: {err}");
        assert!(err.lines().any(|l| l.starts_with("copy") && l.contains("exit 0")), "{err}");
        assert!(err.contains("agx: stdout was closed before all of the output was written"));
    }
}

#[test]
fn listings_do_not_exit_0_after_dropping_output() {
    let t = TestDir::new();
    t.signer("k");
    // 100 tasks with long arguments: plan show prints far more than a pipe holds.
    let arg = "x".repeat(4000);
    let tasks: Vec<String> = (0..100)
        .map(|i| {
            format!(
                r#"{{"id":"t{i}","run":{{"wasm":{{"name":"echo","digest":"{DIGEST}"}}}},
                   "args":["{arg}","{arg}"],"stdin":{{"input":true}}}}"#
            )
        })
        .collect();
    let plan = format!(
        r#"{{"schema":"agenix.plan/v1","name":"wide","tasks":[{}],"output":"t0"}}"#,
        tasks.join(",")
    );
    t.write("wide.json", &plan);
    t.ok(&["plan", "sign", "wide.json", "--key", "k.key", "--out", "wide.env"]);
    for args in [&["plan", "show", "wide.env"][..], &["--json", "plan", "show", "wide.env"]] {
        let (code, err) = cut_off(&t, args, Vec::new());
        assert_eq!(code, Some(STDOUT_CLOSED), "{args:?}: {err}");
    }
}

/// Whether `s` holds a terminal control or a bidirectional control.
fn has_controls(s: &str) -> bool {
    s.chars().any(|c| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    })
}

#[test]
fn au_run_strips_bidi_controls_from_the_aus_stderr() {
    let t = TestDir::new();
    // The echo guest writes its arguments to stderr.
    let out = t.agx(&["au", "run", programs::GUEST_ECHO, "--", "x\u{202e}y\u{2066}z\x1b[2K!"]);
    assert_eq!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(err.contains("arg xyz!\n"), "{err}");
    assert!(!has_controls(&err), "{err:?}");
}

#[test]
fn plan_show_strips_terminal_controls_from_what_others_wrote() {
    let t = TestDir::new();
    t.signer("k");
    let plan = pinned_plan(1000).replace(
        r#""name":"edge","#,
        r#""name":"edge","description":"safe\u202e \u001b]0;owned\u0007text\u001b[2A","#,
    );
    t.write("plan.json", &plan);
    t.ok(&["plan", "sign", "plan.json", "--key", "k.key", "--out", "plan.env"]);
    let shown = t.ok(&["plan", "show", "plan.env", "--trust", "trust.json"]);
    assert!(shown.contains("  safe text\n"), "{shown}");
    assert!(!has_controls(&shown), "{shown:?}");
}

/// A FIFO nobody writes to, named where agx expects a file (a plan, a key, a token), is given
/// up on after 30 s with the reason, instead of blocking agx forever in `open`; a pipe that
/// does carry the file (as `<(command)` gives) is read.
#[test]
fn a_fifo_nobody_writes_to_is_given_up_on_and_a_written_one_is_read() {
    let t = TestDir::new();
    let silent = fifo(&t, "silent.fifo");
    let started = Instant::now();
    refuses(
        &t,
        &["plan", "validate", silent.to_str().unwrap()],
        "silent.fifo: a pipe nobody wrote to or closed within 30 s",
    );
    assert!(started.elapsed() >= Duration::from_secs(29), "it waited: {:?}", started.elapsed());

    let written = fifo(&t, "written.fifo");
    let plan = pinned_plan(1000);
    let p = written.clone();
    let writer = thread::spawn(move || {
        let mut w = OpenOptions::new().write(true).open(&p).unwrap();
        w.write_all(plan.as_bytes()).unwrap();
    });
    let (code, err) =
        agx_with_stdin(&t, &["plan", "validate", written.to_str().unwrap()], Stdio::null());
    writer.join().unwrap();
    assert_eq!(code, Some(0), "{err}");
}

/// Odd files where a key or a token belongs get a message that names what is wrong with
/// them, not a parser's complaint or advice that cannot help.
#[test]
fn empty_and_odd_key_and_token_files_are_named_for_what_they_are() {
    let t = TestDir::new();
    t.write("plan.json", &pinned_plan(1000));
    let empty = t.write("empty.key", "");
    fs::set_permissions(&empty, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    fs::create_dir(t.path("keydir")).unwrap();
    for (key, says) in [
        ("empty.key", "key empty.key is empty"),
        ("keydir", "key keydir is not a file"),
        ("/dev/zero", "key /dev/zero is not a file"),
    ] {
        refuses(&t, &["plan", "sign", "plan.json", "--key", key, "--out", "o.env"], says);
    }

    t.write("empty.token", "\n");
    refuses(
        &t,
        &[
            "jobs",
            "list",
            "--queue",
            "127.0.0.1:9",
            "--fingerprint",
            DIGEST,
            "--token-file",
            "empty.token",
        ],
        "the token file empty.token is empty",
    );
}
