//! `agx submit --watch` and `agx jobs watch` against a real queue and worker, as a person at
//! a terminal sees them (a progress bar counting the jobs by state, on the terminal only)
//! and as a pipe, a file, `--json` or `TERM=dumb` gets them (the results alone, with no
//! bar and no escape code).
//!
//! The terminal is a pseudo-terminal made by script(1) from util-linux, which every Linux
//! this suite runs on has.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;

const LOG_ERRORS: &str = "      1 auth: token expired\n      3 db: connection refused\n      2 payments: card declined\n";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `s` quoted for a POSIX shell.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// agx on a pseudo-terminal: what is drawn there, as it is drawn.
struct Terminal {
    child: Child,
    seen: Arc<Mutex<Vec<u8>>>,
    reading: Option<JoinHandle<()>>,
}

impl Terminal {
    /// Runs agx with `args` (and `env`) for the cluster, with stdin, stdout and stderr on a
    /// terminal, or stdout sent to the file `stdout` when given.
    fn start(c: &Cluster, args: &[&str], env: &[(&str, &str)], stdout: Option<&Path>) -> Self {
        let agx = c.agx_cmd(args);
        let mut line: Vec<String> = std::iter::once(agx.get_program())
            .chain(agx.get_args())
            .map(|a| quoted(a.to_str().unwrap()))
            .collect();
        if let Some(path) = stdout {
            line.extend([">".to_string(), quoted(path.to_str().unwrap())]);
        }
        let mut cmd = Command::new("script");
        cmd.args(["--quiet", "--return", "--flush", "--command", &line.join(" "), "/dev/null"]);
        for (k, v) in agx.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let mut child = cmd
            .current_dir(agx.get_current_dir().unwrap())
            .env("SHELL", "/bin/sh")
            .env("TERM", "xterm")
            .env_remove("NO_COLOR")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("script(1) from util-linux runs agx on a pseudo-terminal");
        let mut from = child.stdout.take().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let reading = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Self { child, seen, reading: Some(reading) }
    }

    fn seen(&self) -> String {
        text(&self.seen.lock().unwrap())
    }

    fn wait_for(&self, what: &str) {
        let until = Instant::now() + Duration::from_secs(60);
        while !self.seen().contains(what) {
            assert!(Instant::now() < until, "never saw {what:?} in {:?}", self.seen());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the exit; the exit code and everything shown.
    fn finish(mut self) -> (Option<i32>, String) {
        let status = self.child.wait().unwrap();
        let _ = self.reading.take().unwrap().join();
        (status.code(), self.seen())
    }
}

#[test]
fn watching_draws_a_bar_on_a_terminal_and_nothing_else_anywhere() {
    let mut c = Cluster::start(&[]);
    c.push_aus();
    let log = example("data/app.log");
    let plan = example("log-errors.json");
    let results = c.path("results.txt");
    let args = ["submit", &plan, "--input", &log, "--input", &log, "--input", &log, "--watch"];

    // No worker yet: the bar shows the three jobs queued, and the reason above it.
    let term = Terminal::start(&c, &args, &[], Some(&results));
    term.wait_for("0/3 finished");
    term.wait_for("· 3 queued");
    term.wait_for("agx: job 1 waits: no worker is registered\r\n");
    c.worker("w1", &[]);
    let (code, seen) = term.finish();
    assert_eq!(code, Some(0), "{seen:?}");
    assert!(seen.contains("\r\x1b[2K"), "the bar is redrawn in place: {seen:?}");
    // In the end the bar is cleared, and a line says where the jobs ended.
    let end = seen.find("3/3 finished in ").unwrap();
    assert!(seen[end..].contains(" · 3 succeeded\r\njob 1: succeeded"), "{seen:?}");
    // The results, in the file stdout went to, exactly as without a terminal.
    let shown = std::fs::read_to_string(&results).unwrap();
    assert_eq!(shown, LOG_ERRORS.repeat(3));
    let ids: Vec<String> = seen
        .lines()
        .find_map(|l| l.strip_prefix("submitted 3 job(s): "))
        .unwrap()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let watch: Vec<&str> =
        ["jobs", "watch"].into_iter().chain(ids.iter().map(String::as_str)).collect();

    // Through pipes: the same results on stdout, the job lines on stderr, no bar on either.
    let out = c.agx(&watch);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), shown);
    let err = text(&out.stderr);
    assert!(err.contains("job 1: succeeded"), "{err}");
    for plain in [text(&out.stdout), err] {
        assert!(!plain.contains('\x1b') && !plain.contains('\r'), "{plain:?}");
        assert!(!plain.contains("finished"), "{plain:?}");
    }

    // On a terminal with --json, or one TERM says is dumb: no bar either.
    let json: Vec<&str> = ["--json"].into_iter().chain(watch.iter().copied()).collect();
    let (code, seen) = Terminal::start(&c, &json, &[], None).finish();
    assert_eq!(code, Some(0), "{seen:?}");
    assert!(!seen.contains('\x1b') && !seen.contains("finished"), "{seen:?}");
    for line in seen.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.is_empty()) {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(record["type"], "result", "{line}");
    }
    let (code, seen) = Terminal::start(&c, &watch, &[("TERM", "dumb")], None).finish();
    assert_eq!(code, Some(0), "{seen:?}");
    assert!(!seen.contains('\x1b') && !seen.contains("finished"), "{seen:?}");
    assert!(seen.contains("job 3: succeeded"), "{seen:?}");
}
