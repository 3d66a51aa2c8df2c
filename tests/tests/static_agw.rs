//! The static worker (`cargo build --profile static --target x86_64-unknown-linux-musl -p
//! agenix-runtime --bin agw`): one file, at most 40 MB, that runs with nothing else from the
//! machine (no libc, no loader), and runs AUs and jailed native tools like any other agw.
//!
//! `scripts/test.sh` builds it first and sets `AGENIX_REQUIRE_STATIC`, so CI never passes
//! with this test skipped; run alone without the build, the test says it skipped and why.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

const LOG_ERRORS: &str = "      1 auth: token expired\n      3 db: connection refused\n      2 payments: card declined\n";

/// The largest the static agw may be.
const MAX_BYTES: u64 = 40_000_000;

const BUILD: &str =
    "cargo build --profile static --target x86_64-unknown-linux-musl -p agenix-runtime --bin agw";

/// The static agw, beside this build's target directory; `None` (having said why) when it
/// is not built and not required.
#[allow(clippy::print_stderr, reason = "a skipped test says why on the test's stderr")]
fn static_agw() -> Option<PathBuf> {
    let debug_agw = bin("agw");
    let target = debug_agw.parent().and_then(|d| d.parent()).unwrap();
    let agw = target.join("x86_64-unknown-linux-musl/static/agw");
    if agw.exists() {
        return Some(agw);
    }
    let required = std::env::var_os("AGENIX_REQUIRE_STATIC").is_some_and(|v| v != "0");
    assert!(!required, "{} is not built (AGENIX_REQUIRE_STATIC is set): {BUILD}", agw.display());
    eprintln!("the static agw: skipped: {} is not built ({BUILD})", agw.display());
    None
}

#[test]
fn the_static_worker_is_one_small_file_that_runs_alone() {
    let Some(agw) = static_agw() else { return };
    let size = std::fs::metadata(&agw).unwrap().len();
    assert!(size <= MAX_BYTES, "{} is {size} bytes, over {MAX_BYTES}", agw.display());
    // A root holding nothing but the binary: no libc, no loader, no /proc.
    let root = tempfile::tempdir().unwrap();
    std::fs::copy(&agw, root.path().join("agw")).unwrap();
    let in_root = |bin: &str| {
        Command::new("unshare")
            .args(["--user", "--map-root-user", "--root"])
            .arg(root.path())
            .args([bin, "--version"])
            .output()
            .unwrap()
    };
    let alone = in_root("/agw");
    assert!(alone.status.success(), "{}", String::from_utf8_lossy(&alone.stderr));
    let dynamic = Command::new(bin("agw")).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&alone.stdout), String::from_utf8_lossy(&dynamic.stdout));
    // The same binary where a dynamic one is refused: the root has no loader.
    std::fs::copy(bin("agw"), root.path().join("dynamic")).unwrap();
    let refused = in_root("/dynamic");
    assert!(
        !refused.status.success(),
        "a dynamic agw ran without its loader: the check proves nothing"
    );
}

#[test]
fn the_static_worker_runs_aus_and_jailed_tools() {
    let Some(agw) = static_agw() else { return };
    let mut c = Cluster::start(&[]);
    c.push_aus();
    let tools = ["grep", "cut", "sort", "uniq"];
    let extra: Vec<&str> = tools.iter().flat_map(|t| ["--allow-tool", t]).collect();
    c.worker_from(&agw, "static", &extra);
    let log = example("data/app.log");
    let out = c.agx(&["submit", &example("log-errors.json"), "--input", &log, "--watch"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), LOG_ERRORS);
    let doctor = Command::new(&agw).arg("doctor").output().unwrap();
    if !doctor.status.success() {
        let why = String::from_utf8_lossy(&doctor.stdout).lines().last().unwrap_or("").to_owned();
        agenix_test_programs::skip_without_jail("the static worker's jail", &why);
        return;
    }
    let out = c.agx(&["submit", &example("log-errors-native.json"), "--input", &log, "--watch"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), LOG_ERRORS);
}
