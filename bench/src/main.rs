//! `agenix-bench`: measures AGEniX side by side with what users would pick instead, on one
//! machine in one run, and writes the figures as Markdown (BENCHMARKS.md).
//!
//! Each section measures one thing (see `--help`); every figure is the median with min–max
//! over the runs. Comparison tools (wasmtime-cli, bubblewrap, GNU tools, jq, Redis,
//! Celery) are used when present and reported as not measured, with the reason, when not;
//! `scripts/bench.sh` installs them and builds what this program runs. Nothing here runs in
//! CI, and nothing asserts a speed: outputs are checked, times only reported.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line program: the report on stdout, progress on stderr"
)]

mod cluster;
mod e2e;
mod jail;
mod queue;
mod report;
mod sandbox;
mod util;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, ValueEnum};

use crate::report::Section;

/// Measures AGEniX against its peers and writes the figures as Markdown.
#[derive(Debug, Parser)]
#[command(name = "agenix-bench", version)]
struct Cli {
    /// Sections to run (default: all, in this order).
    #[arg(value_enum)]
    sections: Vec<Which>,
    /// Runs per figure (at least 5 for BENCHMARKS.md).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    runs: u16,
    /// Write the report here (the analysis after `<!-- analysis -->` in an existing file is
    /// kept); without it, print it.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the generated 100 MB inputs (`100mb.log`, `100mb.jsonl`) into this directory
    /// and exit: to rerun a command from the report, or profile one.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["sections", "out"])]
    write_inputs: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    /// Per-task overhead of a warm AU vs `wasmtime run` vs a native spawn.
    Overhead,
    /// Jailed native spawn vs bubblewrap vs a plain spawn.
    Jail,
    /// AU compute on 100 MB: wasm vs native build vs the GNU tool.
    Compute,
    /// Compile time per AU and cached-artifact load time.
    Compile,
    /// agq alone: durable submissions and claim → complete cycles per second.
    Queue,
    /// Trivial jobs end to end through agq and N agw vs Celery with Redis.
    E2e,
    /// Idle agw memory; agq memory and restart time with a million jobs.
    Memory,
}

const ALL: [Which; 7] = [
    Which::Overhead,
    Which::Jail,
    Which::Compute,
    Which::Compile,
    Which::Queue,
    Which::E2e,
    Which::Memory,
];

/// Marks where the hand-written analysis begins.
const ANALYSIS: &str = "<!-- analysis -->";

fn main() -> ExitCode {
    // The native jail's helper is this binary, re-executed.
    agenix_host::native::jail::run_if_helper();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agenix-bench: no async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agenix-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    if let Some(dir) = &cli.write_inputs {
        return sandbox::write_inputs(dir);
    }
    let runs = usize::from(cli.runs);
    let which = if cli.sections.is_empty() { ALL.to_vec() } else { cli.sections };
    let scratch = tempfile::tempdir()?;
    util::set_scratch(scratch.path());
    let mut body = String::new();
    for w in which {
        let dir = scratch.path().join(format!("{w:?}"));
        std::fs::create_dir_all(&dir)?;
        eprintln!("== {w:?}");
        let section: Section = match w {
            Which::Overhead => sandbox::overhead(runs, &dir).await,
            Which::Jail => jail::spawn(runs, &dir).await,
            Which::Compute => sandbox::compute(runs, &dir).await,
            Which::Compile => sandbox::compile(runs, &dir).await,
            Which::Queue => queue::throughput(runs, &dir).await,
            Which::E2e => e2e::throughput(runs, &dir).await,
            Which::Memory => queue::memory(runs, &dir).await,
        }
        .with_context(|| format!("section {w:?}"))?;
        body.push_str(&section.markdown());
        body.push('\n');
    }
    let report = format!("{}\n{body}", header(runs));
    match cli.out {
        None => print!("{report}"),
        Some(path) => {
            let kept = std::fs::read_to_string(&path)
                .ok()
                .and_then(|old| old.find(ANALYSIS).map(|i| old[i..].to_string()))
                .unwrap_or_else(|| format!("{ANALYSIS}\n"));
            let tmp = path.with_extension("md.tmp");
            std::fs::write(&tmp, format!("{report}{kept}"))?;
            std::fs::rename(&tmp, &path)?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// The first line of `cmd`'s stdout, or "unknown".
fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

fn header(runs: usize) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or_else(|| "unknown".into(), |kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0));
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = first_line(Command::new("uname").arg("-r"));
    let commit = std::env::var("AGENIX_BENCH_COMMIT").unwrap_or_else(|_| "unknown".into());
    let date = first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]));
    format!(
        "# Benchmarks\n\n\
         Written by `scripts/bench.sh` (which installs the comparison tools, builds in \
         release mode and runs `agenix-bench --out BENCHMARKS.md`). Each figure is the \
         median with min – max over {runs} runs on one machine, in one run; these are \
         measurements of one machine, not promises.\n\n\
         | machine | |\n|---|---|\n\
         | CPU | {cpu}, {cores} cores available |\n\
         | memory | {mem} |\n\
         | OS | {os}, Linux {kernel} |\n\
         | commit | {commit} |\n\
         | date | {date} |\n"
    )
}
