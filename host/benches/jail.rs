//! Spawn-to-exit time of /bin/true: in the native jail, as a plain spawn, and under
//! `bwrap --unshare-all` (Debian's bubblewrap, if installed; for comparison only). Run with
//! `cargo bench -p agenix-host --bench jail`. Prints medians with min–max; asserts nothing.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "a benchmark program")]

use std::process::Command;
use std::time::{Duration, Instant};

use agenix_host::native::{
    Allowlist, Helper, NativeConfig, NativeHost, NativeTask, ToolEntry, jail,
};
use agenix_proto::{Limits, Outcome};
use bytes::Bytes;

const RUNS: usize = 200;

fn stats(mut xs: Vec<Duration>) -> String {
    xs.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "median {:7.3} ms  (min {:.3}, max {:.3}, n={})",
        ms(xs[xs.len() / 2]),
        ms(xs[0]),
        ms(xs[xs.len() - 1]),
        xs.len()
    )
}

fn time(mut f: impl FnMut()) -> Vec<Duration> {
    (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let truth = "/usr/bin/true";
    println!("## spawn-to-exit of {truth}");
    let plain = time(|| assert!(Command::new(truth).status().unwrap().success()));
    println!("plain spawn        {}", stats(plain));

    let bwrap = Command::new("bwrap").arg("--version").output().is_ok();
    if bwrap {
        let args = [
            "--unshare-all",
            "--die-with-parent",
            "--ro-bind",
            "/usr",
            "/usr",
            "--symlink",
            "usr/lib",
            "/lib",
            "--symlink",
            "usr/lib64",
            "/lib64",
            "--symlink",
            "usr/bin",
            "/bin",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            truth,
        ];
        let b = time(|| assert!(Command::new("bwrap").args(args).status().unwrap().success()));
        println!("bwrap --unshare-all {}", stats(b));
    } else {
        println!("bwrap: not installed (apt-get install bubblewrap) — skipped");
    }

    let dir = tempfile::tempdir().unwrap();
    let mut allow = Allowlist::new();
    allow.allow("true".parse().unwrap(), ToolEntry { path: truth.into(), sha256: None }).unwrap();
    let host = NativeHost::new(NativeConfig {
        helper: Helper {
            program: env!("CARGO_BIN_EXE_agenix-jail").into(),
            args: vec![jail::HELPER_ARG.into()],
        },
        allowlist: allow,
        danger_degraded: false,
        scratch_dir: dir.path().into(),
        disabled: vec![],
    })
    .await
    .unwrap();
    if let Some(reason) = host.refusal() {
        println!("agenix jail: skipped: {reason}");
        return;
    }
    let mut jailed = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let task = NativeTask {
            tool: "true".parse().unwrap(),
            args: vec![],
            env: vec![],
            stdin: Bytes::new(),
            grants: vec![],
            limits: Limits::DEFAULT,
        };
        let t = Instant::now();
        let r = host.run(task).await.unwrap();
        jailed.push(t.elapsed());
        assert_eq!(r.outcome, Outcome::Exited { code: 0 });
    }
    println!("agenix jail        {}", stats(jailed));
}
