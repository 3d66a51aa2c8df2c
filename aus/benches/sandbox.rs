//! Figures for the wasm sandbox (run with `cargo bench -p agenix-aus --bench sandbox`):
//! compile time per AU, cached-artifact load time, per-task overhead of a trivial guest,
//! and wasm-vs-native throughput of grep, wc and sort on 100 MB of generated log lines.
//! Prints medians with min–max; asserts nothing (these machines are noisy).

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "a benchmark program")]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agenix_host::wasm::{Allocator, WasmConfig, WasmHost, WasmTask};
use agenix_proto::{Digest, Limits, Outcome};
use agenix_test_programs as programs;
use bytes::Bytes;

const RUNS: usize = 5;

fn host(cache: Option<&std::path::Path>, scratch: &std::path::Path) -> WasmHost {
    WasmHost::new(WasmConfig {
        ceilings: Limits::ABSOLUTE,
        max_concurrent: 4,
        cache_dir: cache.map(|p| p.to_path_buf()),
        scratch_dir: scratch.to_path_buf(),
        allocator: Allocator::Auto,
    })
    .unwrap()
}

fn stats(mut xs: Vec<Duration>) -> String {
    xs.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!("{:9.3} ms  ({:.3}–{:.3})", ms(xs[xs.len() / 2]), ms(xs[0]), ms(xs[xs.len() - 1]))
}

/// Deterministic, shuffled log lines (sorted input would flatter sort).
fn generate(bytes: usize) -> Vec<u8> {
    let levels = ["INFO", "WARN", "ERROR", "DEBUG"];
    let parts = ["db", "http", "auth", "cache", "payments", "queue"];
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = Vec::with_capacity(bytes + 128);
    while out.len() < bytes {
        let r = next();
        let _ = writeln!(
            out,
            "2026-11-25T{:02}:{:02}:{:02}Z {} {}: request {} took {} ms",
            r % 24,
            (r >> 8) % 60,
            (r >> 16) % 60,
            levels[(r >> 24) as usize % 4],
            parts[(r >> 32) as usize % 6],
            (r >> 40) % 100_000,
            (r >> 20) % 5000
        );
    }
    out
}

fn native(bin: &str, args: &[&str], input: &[u8]) -> (Duration, usize) {
    let start = Instant::now();
    let mut child =
        Command::new(bin).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    (start.elapsed(), out.stdout.len())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().join("scratch");
    let cache = dir.path().join("cache");

    println!("## compile (cranelift) per AU, then load of the cached artifact");
    let compiler = host(Some(&cache), &scratch);
    for (name, path) in programs::ALL_AUS {
        let bytes = std::fs::read(path).unwrap();
        let mut compile = vec![];
        for _ in 0..RUNS {
            let b = bytes.clone();
            let t = Instant::now();
            compiler.compile_unchecked(b).await.unwrap();
            compile.push(t.elapsed());
        }
        // Populate the artifact cache once, then time fresh hosts loading it.
        let b = bytes.clone();
        compiler.prepare(Digest::of(&bytes), || async { Ok(b) }).await.unwrap();
        let mut load = vec![];
        for _ in 0..RUNS {
            let fresh = host(Some(&cache), &scratch);
            let t = Instant::now();
            fresh
                .prepare(Digest::of(&bytes), || async { panic!("must load from the cache") })
                .await
                .unwrap();
            load.push(t.elapsed());
        }
        println!(
            "{name:<10} {:>8} B  compile {}  cached load {}",
            bytes.len(),
            stats(compile),
            stats(load)
        );
    }

    println!("\n## per-task overhead: instantiate + run + drop of a trivial guest (exit 0)");
    let h = host(None, &scratch);
    println!("pooling allocator: {}", h.is_pooled());
    let bytes = std::fs::read(programs::GUEST_EXIT).unwrap();
    let p = h.prepare(Digest::of(&bytes), || async { Ok(bytes) }).await.unwrap();
    let mut per = vec![];
    for _ in 0..RUNS {
        let n = 1000;
        let t = Instant::now();
        for _ in 0..n {
            let task = WasmTask {
                program: "exit".into(),
                args: vec!["0".into()],
                env: vec![],
                stdin: Bytes::new(),
                grants: vec![],
                limits: Limits::DEFAULT,
            };
            let r = h.run(&p, task).await.unwrap();
            assert_eq!(r.outcome, Outcome::Exited { code: 0 });
        }
        per.push(t.elapsed() / n);
    }
    println!("trivial task {}", stats(per));

    println!(
        "\n## throughput on 100 MB of shuffled log lines: wasm (au profile) vs native (release)"
    );
    let input = Bytes::from(generate(100 << 20));
    let limits = Limits {
        memory_bytes: 2 << 30,
        output_bytes: 512 << 20,
        timeout_ms: 600_000,
        ..Limits::ABSOLUTE
    };
    for (name, wasm, bin, args) in [
        ("grep", programs::AU_GREP, env!("CARGO_BIN_EXE_grep"), &["-i", "error"][..]),
        ("wc", programs::AU_WC, env!("CARGO_BIN_EXE_wc"), &[][..]),
        ("sort", programs::AU_SORT, env!("CARGO_BIN_EXE_sort"), &[][..]),
    ] {
        let bytes = std::fs::read(wasm).unwrap();
        let p = h.prepare(Digest::of(&bytes), || async { Ok(bytes) }).await.unwrap();
        let (mut w, mut n) = (vec![], vec![]);
        let (mut w_out, mut n_out) = (0, 0);
        for _ in 0..RUNS {
            let task = WasmTask {
                program: name.into(),
                args: args.iter().map(|s| s.to_string()).collect(),
                env: vec![],
                stdin: input.clone(),
                grants: vec![],
                limits,
            };
            let t = Instant::now();
            let r = h.run(&p, task).await.unwrap();
            w.push(t.elapsed());
            assert!(r.outcome.is_success(), "{name}: {:?}", r.outcome);
            w_out = r.stdout.len();
            let (d, len) = native(bin, args, &input);
            n.push(d);
            n_out = len;
        }
        assert_eq!(w_out, n_out, "{name}: wasm and native outputs differ in size");
        let mbps = |xs: &[Duration]| {
            let mut v = xs.to_vec();
            v.sort();
            100.0 / v[v.len() / 2].as_secs_f64()
        };
        println!(
            "{name:<5} wasm {}  {:6.1} MB/s | native {}  {:6.1} MB/s | wasm/native {:.2}x",
            stats(w.clone()),
            mbps(&w),
            stats(n.clone()),
            mbps(&n),
            mbps(&n) / mbps(&w)
        );
    }
}
