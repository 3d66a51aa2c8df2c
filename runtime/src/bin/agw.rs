//! `agw`, the AGEniX worker.
//!
//! Today it answers `agw doctor`: every kernel feature the native jail uses, found or
//! missing, and what that means; exit 1 when native tasks would be refused. The claim loop
//! comes with the queue.

use std::io::Write;
use std::process::ExitCode;

use agenix_host::native::{Allowlist, Helper, NativeConfig, NativeHost, jail};
use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "agw", version, about = "AGEniX worker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Check every kernel feature the native jail needs; exit 1 if native tasks would be
    /// refused.
    Doctor {
        /// Print JSON Lines instead of text.
        #[arg(long)]
        json: bool,
        /// Report as a worker in degraded mode would (native tasks run without what is
        /// missing).
        #[arg(long)]
        danger_degraded: bool,
    },
}

fn main() -> ExitCode {
    // First: this binary is also the jail helper.
    jail::run_if_helper();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "agw: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let Command::Doctor { json, danger_degraded } = cli.command;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let scratch = tempfile::Builder::new()
        .prefix("agw-doctor-")
        .tempdir()
        .context("cannot create a scratch directory")?;
    let host = rt.block_on(NativeHost::new(NativeConfig {
        helper: Helper::current_exe().context("cannot find this program")?,
        allowlist: Allowlist::new(),
        danger_degraded,
        scratch_dir: scratch.path().to_path_buf(),
        disabled: vec![],
    }))?;
    let probe = host.probe();
    let refusal = host.refusal();
    let mut out = std::io::stdout().lock();
    if json {
        for c in &probe.checks {
            writeln!(out, "{}", serde_json::json!({ "type": "check", "data": c }))?;
        }
        let verdict = serde_json::json!({ "type": "verdict", "data": { "native_ready": refusal.is_none(), "reason": refusal, "degraded": danger_degraded && !probe.ready() } });
        writeln!(out, "{verdict}")?;
    } else {
        for c in &probe.checks {
            let status = match (c.found, c.required) {
                (true, _) => "found  ",
                (false, true) => "MISSING",
                (false, false) => "absent ",
            };
            let kind = if c.required { "required" } else { "optional" };
            writeln!(out, "{status}  {:<24} {kind:<9} {}", c.name, c.detail)?;
            writeln!(out, "         {:<24} {:<9} {}", "", "", c.meaning)?;
        }
        writeln!(out)?;
        match &refusal {
            None if probe.ready() => writeln!(out, "native tasks: ready")?,
            None => writeln!(
                out,
                "native tasks: DEGRADED (running without what is missing; logged on every task)"
            )?,
            Some(reason) => writeln!(out, "native tasks: REFUSED — {reason}")?,
        }
    }
    Ok(if refusal.is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
