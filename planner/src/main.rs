//! `agx`, the AGEniX planner CLI: signer keys, trust files, plan authoring and signing.
//!
//! Logging: warnings from the libraries it runs go to stderr; `AGX_LOG` sets the level
//! (`info`, `debug`, or per module as `agenix_host=debug`).
//!
//! Exit codes: 0 success, 1 failure (invalid input, verification failed, I/O error),
//! 2 usage error, 141 stdout closed before everything was written (`agx ... | head`: what a
//! shell reports for SIGPIPE; what was dropped was never shown, so it is not success).
//! `agx au run` mirrors the AU's exit code and adds 124 (timed out) and 125 (stopped or
//! refused by the sandbox); `agx run` adds 124 (the input did not end in time).

/// The `Examples:` section that ends the help of every command (its `after_help`): one
/// line each, an invocation or a `# comment` on the ones after it.
macro_rules! examples {
    ($($line:literal),+ $(,)?) => {
        concat!("Examples:", $("\n  ", $line),+)
    };
}

mod args;
mod cmd;
mod draft;
mod files;
mod local;
mod output;
mod progress;
mod remote;
mod show;
mod signing;

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;

use crate::output::{Coded, Out, STDOUT_CLOSED};

#[derive(Debug, Parser)]
#[command(
    name = "agx",
    version,
    about = "AGEniX planner: sign plans, manage trust, run and submit work",
    after_help = examples!(
        "# A key, a trust file, a plan signed with the key and run here",
        "agx keygen --out alice.key",
        "agx trust add alice.key.pub --name alice --trust trust.json",
        "agx plan sign examples/log-errors.json --key alice.key --out plan.env",
        "agx run plan.env --trust trust.json --input examples/data/app.log",
        "# The same plan on a queue (AGX_QUEUE, AGX_FINGERPRINT, AGX_TOKEN_FILE set)",
        "agx submit plan.env --key alice.key --input examples/data/app.log --watch",
        "# Every command's help has examples",
        "agx submit --help",
    )
)]
struct Cli {
    /// Print JSON Lines (`{"type": ..., "data": ...}`) instead of text.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: cmd::Command,
}

fn main() -> ExitCode {
    // First: agx is also the native jail helper for `agx run`.
    agenix_host::native::jail::run_if_helper();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    init_logging();
    let out = Out { json: cli.json };
    match cli.command.execute(out) {
        Ok(code) => code,
        // The reader went away: like a Unix tool killed by SIGPIPE, say nothing more on a
        // stdout nobody reads, but never claim success for output that was dropped.
        Err(e) if is_broken_pipe(&e) => ExitCode::from(STDOUT_CLOSED),
        Err(e) => {
            report(out, &e);
            match e.chain().find_map(|c| c.downcast_ref::<Coded>()) {
                Some(coded) => ExitCode::from(coded.code),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// Warnings and errors from the libraries agx runs (the sandbox's DEGRADED warning among
/// them) go to stderr; `AGX_LOG` chooses more or less (`info`, `debug`, `agenix_host=debug`).
fn init_logging() {
    let filter = match std::env::var("AGX_LOG") {
        Err(_) => tracing_subscriber::EnvFilter::new("warn"),
        Ok(asked) => tracing_subscriber::EnvFilter::try_new(&asked).unwrap_or_else(|e| {
            let _ =
                writeln!(io::stderr(), "agx: AGX_LOG={asked:?} is not a filter ({e}); using warn");
            tracing_subscriber::EnvFilter::new("warn")
        }),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(io::stderr().is_terminal())
        .without_time()
        .with_target(false)
        .with_writer(io::stderr)
        .init();
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<io::Error>().is_some_and(output::is_broken_pipe))
}

/// Prints an error: `agx: context: cause` on stderr (made safe for a terminal: messages can
/// carry what a queue, a worker or an AU said), or an `error` record with `--json`.
fn report(out: Out, e: &anyhow::Error) {
    let violations: Vec<_> = e
        .chain()
        .find_map(|c| c.downcast_ref::<agenix_proto::Invalid>())
        .map(|inv| inv.violations().to_vec())
        .or_else(|| {
            e.chain().find_map(|c| match c.downcast_ref::<agenix_proto::VerifyError>() {
                Some(agenix_proto::VerifyError::Invalid(inv)) => Some(inv.violations().to_vec()),
                _ => None,
            })
        })
        .unwrap_or_default();
    if out.json {
        let data = serde_json::json!({ "message": format!("{e:#}"), "violations": violations });
        let record = output::Record { kind: "error", data: &data };
        if let Ok(line) = serde_json::to_string(&record) {
            let _ = writeln!(io::stdout().lock(), "{line}");
        }
    } else {
        let _ =
            writeln!(io::stderr().lock(), "agx: {}", agenix_proto::text::clean(&format!("{e:#}")));
    }
}
