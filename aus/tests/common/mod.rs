//! Runs a native AU binary on fixed input and captures what it did.

#![allow(dead_code, unreachable_pub, reason = "each test binary uses a different part")]

use std::io::Write;
use std::process::{Command, Stdio};

/// What one run of an AU produced.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    /// Stdout as text (the tests' expectations are mostly text).
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs `bin` with `args`, feeding `stdin` from another thread (so large inputs cannot
/// deadlock, and an AU that stops reading early is fine).
pub fn run(bin: &str, args: &[&str], stdin: &[u8]) -> Run {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the AU");
    let mut pipe = child.stdin.take().expect("stdin pipe");
    let input = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        // The AU may exit before reading everything (head, grep -q): ignore EPIPE.
        let _ = pipe.write_all(&input);
    });
    let output = child.wait_with_output().expect("wait for the AU");
    feeder.join().expect("feeder thread");
    Run {
        code: output.status.code().expect("exited, not killed by a signal"),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Asserts exit code and exact stdout (as text), and returns the run for further checks.
#[track_caller]
pub fn check(bin: &str, args: &[&str], stdin: &str, code: i32, stdout: &str) -> Run {
    let r = run(bin, args, stdin.as_bytes());
    assert_eq!(
        (r.code, r.out().as_str()),
        (code, stdout),
        "{bin} {args:?} on {stdin:?}; stderr: {}",
        r.stderr
    );
    r
}

/// Asserts that the run is a usage / bad-input failure: exit 2, nothing on stdout, and a
/// diagnostic prefixed with the AU's name.
#[track_caller]
pub fn check_usage_error(bin: &str, name: &str, args: &[&str], stdin: &str) -> Run {
    let r = run(bin, args, stdin.as_bytes());
    assert_eq!(r.code, 2, "{name} {args:?}: stdout {:?} stderr {:?}", r.out(), r.stderr);
    assert!(r.stdout.is_empty(), "{name} {args:?} wrote {:?}", r.out());
    assert!(r.stderr.starts_with(&format!("{name}: ")), "{name} {args:?} stderr: {:?}", r.stderr);
    r
}

/// A small deterministic generator, so a failure repeats.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
