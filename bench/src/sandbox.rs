//! The wasm sandbox: compiling and loading AUs, the per-task overhead of a warm AU against
//! `wasmtime run` and a native spawn, and AU compute against native builds and GNU tools.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agenix_host::WasmTask;
use agenix_host::wasm::{Allocator, Metering, PrepareError, Prepared, WasmConfig, WasmHost};
use agenix_proto::{Digest, Limits, UNMETERED};
use agenix_test_programs as programs;
use anyhow::{Context as _, Result, bail};
use bytes::Bytes;

use crate::report::{Figure, Section, Unit};
use crate::util::{json_lines, log_lines, per_call, run, show, sibling, tool};

fn host(cache: Option<&Path>, scratch: &Path) -> Result<WasmHost> {
    Ok(WasmHost::new(WasmConfig {
        ceilings: Limits::ABSOLUTE,
        max_concurrent: 4,
        cache_dir: cache.map(Path::to_path_buf),
        scratch_dir: scratch.to_path_buf(),
        allocator: Allocator::Auto,
    })?)
}

async fn prepare(h: &WasmHost, path: &str, metering: Metering) -> Result<Arc<Prepared>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    Ok(h.prepare(Digest::of(&bytes), metering, || async { Ok(bytes) }).await?)
}

/// A task for AU `name`, with a scratch `/tmp` as plans have by default.
fn task(name: &str, args: &[&str], stdin: Bytes, limits: Limits) -> WasmTask {
    WasmTask {
        program: name.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        stdin,
        grants: vec![],
        limits,
        scratch: true,
    }
}

async fn run_wasm(h: &WasmHost, p: &Prepared, task: WasmTask) -> Result<Bytes> {
    let name = task.program.clone();
    let r = h.run(p, task).await?;
    if !r.outcome.is_success() {
        bail!("{name} in the sandbox: {:?}: {}", r.outcome, String::from_utf8_lossy(&r.stderr));
    }
    Ok(r.stdout)
}

/// Compile time per standard AU, and the load of its cached artifact by a fresh host.
pub(crate) async fn compile(runs: usize, dir: &Path) -> Result<Section> {
    let mut s = Section::new(
        "Compiling AUs",
        "Cranelift compile of each standard AU (wasm32-wasip2, `au` profile; `csvstat` is \
         CPython through componentize-py, `reshape` SpiderMonkey through componentize-js), \
         then the load of its precompiled artifact from the on-disk cache by a fresh \
         `WasmHost` (what a worker pays after a restart).",
    );
    s.command("# in process: WasmHost::compile_unchecked, then WasmHost::prepare by a fresh host");
    let cache = dir.join("cache");
    let compiler = host(Some(&cache), dir)?;
    let lang = [("csvstat", programs::AU_CSVSTAT), ("reshape", programs::AU_RESHAPE)];
    for &(name, path) in programs::ALL_AUS.iter().chain(&lang) {
        let bytes = std::fs::read(path)?;
        let mut compile = vec![];
        for _ in 0..runs {
            let b = bytes.clone();
            let t = Instant::now();
            compiler.compile_unchecked(b).await?;
            compile.push(t.elapsed());
        }
        prepare(&compiler, path, Metering::Fuel).await?;
        let digest = Digest::of(&bytes);
        let mut load = vec![];
        for _ in 0..runs {
            let fresh = host(Some(&cache), dir)?;
            let t = Instant::now();
            fresh
                .prepare(digest, Metering::Fuel, || async {
                    Err(PrepareError::Fetch("not in the artifact cache".into()))
                })
                .await?;
            load.push(t.elapsed());
        }
        s.add(Figure::ms(format!("`{name}` ({} KiB): compile", bytes.len() / 1024), &compile));
        s.add(Figure::ms(format!("`{name}`: load the cached artifact"), &load));
    }
    Ok(s)
}

/// Per-task overhead of a warm AU against `wasmtime run` and a plain spawn of its native
/// build.
pub(crate) async fn overhead(runs: usize, dir: &Path) -> Result<Section> {
    let mut s = Section::new(
        "Per-task overhead of a warm AU",
        "The `wc` AU on one line of stdin, time per task (mean of each run's tasks): in the \
         sandbox, precompiled and warm (a fresh store, instance, WASI context, limits and \
         captured stdio per task); as one whole `agx au run` process with its compiled \
         artifact cached (an AU author's loop); under `wasmtime run` with its compilation \
         cache enabled and warm (a process per task, as the CLI is used); and a plain spawn \
         of the same AU built natively.",
    );
    let h = host(None, dir)?;
    s.note(format!(
        "The sandbox used the {} allocator{}.",
        if h.is_pooled() { "pooling" } else { "on-demand" },
        if h.keeps_pages_resident() {
            ", keeping the pages a task touched resident for the next (PAGEMAP_SCAN)"
        } else {
            ""
        }
    ));
    let p = prepare(&h, programs::AU_WC, Metering::Fuel).await?;
    let line = Bytes::from_static(b"the quick brown fox\n");
    let wc = |scratch| WasmTask { scratch, ..task("wc", &[], line.clone(), Limits::DEFAULT) };
    let expected = run_wasm(&h, &p, wc(true)).await?;
    for (label, scratch) in [
        ("AGEniX sandbox, warm", true),
        ("AGEniX sandbox, warm, no `/tmp` (`\"scratch\": false`)", false),
    ] {
        let mut warm = Vec::with_capacity(runs);
        for _ in 0..runs {
            let n = 2000;
            let t = Instant::now();
            for _ in 0..n {
                run_wasm(&h, &p, wc(scratch)).await?;
            }
            warm.push(t.elapsed() / n);
        }
        s.add(Figure::ms(label, &warm));
    }
    s.command("# in process: WasmHost::run of the prepared `wc` AU, one line on stdin");
    // The same for the AUs whose guests carry a language runtime.
    let lang: [(&str, &str, &[&str], &[u8]); 2] = [
        ("csvstat", programs::AU_CSVSTAT, &[], b"n\n1\n"),
        ("reshape", programs::AU_RESHAPE, &["n"], b"{\"n\":1}\n"),
    ];
    for (name, path, args, input) in lang {
        let p = prepare(&h, path, Metering::Fuel).await?;
        let input = Bytes::from_static(input);
        let mut warm = Vec::with_capacity(runs);
        for _ in 0..runs {
            let n = 50;
            let t = Instant::now();
            for _ in 0..n {
                run_wasm(&h, &p, task(name, args, input.clone(), Limits::DEFAULT)).await?;
            }
            warm.push(t.elapsed() / n);
        }
        s.add(Figure::ms(format!("AGEniX sandbox, warm: `{name}` (one row)"), &warm));
    }

    match tool("wasmtime", Some("AGENIX_BENCH_WASMTIME")) {
        None => {
            s.skip("`wasmtime run`", "wasmtime-cli is not installed (scripts/bench.sh installs it)")
        }
        Some(wasmtime) => {
            let version = run(Command::new(&wasmtime).arg("--version"), Bytes::new(), &[])?;
            let cache_dir = dir.join("wasmtime-cache");
            let config = dir.join("wasmtime-cache.toml");
            std::fs::write(
                &config,
                format!("[cache]\ndirectory = {:?}\n", cache_dir.display().to_string()),
            )?;
            let cmd = || {
                let mut c = Command::new(&wasmtime);
                c.arg("run")
                    .arg("-C")
                    .arg("cache=y")
                    .arg("-C")
                    .arg(format!("cache-config={}", config.display()))
                    .arg(programs::AU_WC);
                c
            };
            // The first run compiles and fills the cache.
            let out = run(&mut cmd(), line.clone(), &[])?;
            if out != expected {
                bail!("wasmtime run printed {out:?}, the sandbox {expected:?}");
            }
            let times = per_call(runs, 50, || run(&mut cmd(), line.clone(), &[]).map(drop))?;
            s.command(format!("{} < one-line.txt", show(&cmd())));
            s.command(format!(
                "# {}: [cache] directory = \"$SCRATCH/wasmtime-cache\"",
                show(&Command::new(&config))
            ));
            s.add(Figure::ms(
                format!(
                    "`wasmtime run`, cache warm ({})",
                    String::from_utf8_lossy(&version).trim()
                ),
                &times,
            ));
        }
    }

    // An AU author's loop: one whole `agx au run` process, its compiled artifact cached.
    let agx = sibling("agx")?;
    let agx_cache = dir.join("agx-cache");
    let au_run = || {
        let mut c = Command::new(&agx);
        c.env("AGX_CACHE", &agx_cache).args(["au", "run", programs::AU_WC]);
        c
    };
    // The first run compiles and fills the cache.
    let out = run(&mut au_run(), line.clone(), &[])?;
    if out != expected {
        bail!("agx au run printed {out:?}, the sandbox {expected:?}");
    }
    let times = per_call(runs, 50, || run(&mut au_run(), line.clone(), &[]).map(drop))?;
    s.command(format!("{} < one-line.txt", show(&au_run())));
    s.add(Figure::ms("`agx au run`, one process, artifact cached", &times));

    let native = sibling("au-wc")?;
    let out = run(&mut Command::new(&native), line.clone(), &[])?;
    if out != expected {
        bail!("the native wc printed {out:?}, the sandbox {expected:?}");
    }
    let times =
        per_call(runs, 200, || run(&mut Command::new(&native), line.clone(), &[]).map(drop))?;
    s.command(format!("{} < one-line.txt", show(&Command::new(&native))));
    s.add(Figure::ms("plain spawn of the native build", &times));
    Ok(s)
}

/// One compute comparison: the AU in the sandbox, its native build, the usual tool.
struct Job {
    name: &'static str,
    wasm: &'static str,
    args: &'static [&'static str],
    gnu: &'static str,
    json: bool,
}

const JOBS: &[Job] = &[
    Job { name: "grep", wasm: programs::AU_GREP, args: &["-i", "error"], gnu: "grep", json: false },
    Job { name: "wc", wasm: programs::AU_WC, args: &[], gnu: "wc", json: false },
    Job { name: "sort", wasm: programs::AU_SORT, args: &[], gnu: "sort", json: false },
    Job {
        name: "jq",
        wasm: programs::AU_JQ,
        args: &["-c", r#"select(.level == "ERROR") | .ms"#],
        gnu: "jq",
        json: true,
    },
];

const MB: usize = 100;

/// Writes the compute section's inputs, as the report's commands name them, into `dir`.
pub(crate) fn write_inputs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, bytes) in [("100mb.log", log_lines(MB << 20)), ("100mb.jsonl", json_lines(MB << 20))]
    {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// AU compute on 100 MB: the wasm AU, its native build and the GNU tool (or jq).
pub(crate) async fn compute(runs: usize, dir: &Path) -> Result<Section> {
    let mut s = Section::new(
        "AU compute on 100 MB",
        "Wall time for 100 MB of generated input (shuffled log lines; JSON Lines for the JSON \
         filter), stdin to stdout, as throughput: the wasm AU in the sandbox (warm), metered \
         (fuel one below the maximum, which never runs out) and unmetered, the same \
         source built natively (release), and the GNU tool (jq 1.6 for the JSON filter), all \
         with `LC_ALL=C`. `grep -i error`; `wc`; `sort`; \
         `jq -c 'select(.level == \"ERROR\") | .ms'`.",
    );
    let h = host(None, dir)?;
    let logs = Bytes::from(log_lines(MB << 20));
    let json = Bytes::from(json_lines(MB << 20));
    let unmetered = Limits {
        memory_bytes: 4 << 30,
        output_bytes: 512 << 20,
        timeout_ms: 600_000,
        ..Limits::ABSOLUTE
    };
    let metered = Limits { fuel: UNMETERED - 1, ..unmetered };
    let mbps = |runs: &[Duration]| runs.iter().map(|d| MB as f64 / d.as_secs_f64()).collect();
    s.command("# in process: WasmHost::run of each prepared AU, the input on stdin");
    for job in JOBS {
        let input = if job.json { json.clone() } else { logs.clone() };
        let file = if job.json { "100mb.jsonl" } else { "100mb.log" };
        let p = prepare(&h, job.wasm, Metering::Fuel).await?;
        let pu = prepare(&h, job.wasm, Metering::Unmetered).await?;
        let native = sibling(&format!("au-{}", job.name))?;
        let gnu = tool(job.gnu, None);
        let (mut w, mut u, mut n, mut g) = (vec![], vec![], vec![], vec![]);
        let mut same_as_gnu = true;
        for _ in 0..runs {
            let t = Instant::now();
            let wout = run_wasm(&h, &p, task(job.name, job.args, input.clone(), metered)).await?;
            w.push(t.elapsed());
            let t = Instant::now();
            let uout =
                run_wasm(&h, &pu, task(job.name, job.args, input.clone(), unmetered)).await?;
            u.push(t.elapsed());
            if uout != wout {
                bail!("{}: metered and unmetered runs printed different output", job.name);
            }
            let t = Instant::now();
            let mut cmd = Command::new(&native);
            cmd.args(job.args).env("LC_ALL", "C");
            s.command(format!("{} < {file}", show(&cmd)));
            let nout = run(&mut cmd, input.clone(), &[])?;
            n.push(t.elapsed());
            if nout != wout {
                bail!("{}: the native build and the sandbox printed different output", job.name);
            }
            if let Some(gnu) = &gnu {
                let t = Instant::now();
                let mut cmd = Command::new(gnu);
                cmd.args(job.args).env("LC_ALL", "C");
                s.command(format!("{} < {file}", show(&cmd)));
                let gout = run(&mut cmd, input.clone(), &[])?;
                g.push(t.elapsed());
                same_as_gnu &= gout == wout;
            }
        }
        s.add(Figure::rate(format!("`{}`: wasm AU", job.name), mbps(&w), Unit::MbPerSec));
        s.add(Figure::rate(
            format!("`{}`: wasm AU, unmetered", job.name),
            mbps(&u),
            Unit::MbPerSec,
        ));
        s.add(Figure::rate(format!("`{}`: native build", job.name), mbps(&n), Unit::MbPerSec));
        match gnu {
            Some(_) => {
                s.add(Figure::rate(
                    format!("`{}`: {}", job.name, job.gnu),
                    mbps(&g),
                    Unit::MbPerSec,
                ));
                if !same_as_gnu {
                    s.note(format!("`{}`: its output differs from {}'s.", job.name, job.gnu));
                }
            }
            None => s.skip(format!("`{}`: {}", job.name, job.gnu), "not installed"),
        }
    }
    Ok(s)
}
