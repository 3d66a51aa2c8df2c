//! One module per command family; each subcommand is a struct with `fn execute`.

mod au;
mod completions;
mod history;
mod jobs;
mod keygen;
mod plan;
mod queue;
mod run;
mod submit;
mod trust;
mod workers;

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::output::Out;

/// The top-level commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Create a signer key pair.
    Keygen(keygen::Keygen),
    /// Manage a trust file: which signers a worker or queue believes.
    #[command(subcommand)]
    Trust(trust::TrustCommand),
    /// Validate, sign, verify and inspect plans.
    #[command(subcommand)]
    Plan(plan::PlanCommand),
    /// Build, check, describe, run and store AUs on this machine.
    #[command(subcommand)]
    Au(au::AuCommand),
    /// Run a plan on this machine, in-process, without a queue.
    Run(run::RunPlan),
    /// Sign an action for a plan and submit it to a queue, with its inputs.
    Submit(submit::Submit),
    /// Jobs on a queue.
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Workers registered with a queue.
    #[command(subcommand)]
    Workers(workers::WorkersCommand),
    /// The queue itself.
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::Completions),
}

impl Command {
    pub(crate) fn execute(self, out: Out) -> anyhow::Result<ExitCode> {
        match self {
            Self::Keygen(c) => c.execute(out),
            Self::Trust(c) => c.execute(out),
            Self::Plan(c) => c.execute(out),
            Self::Au(c) => c.execute(out),
            Self::Run(c) => c.execute(out),
            Self::Submit(c) => c.execute(out),
            Self::Jobs(c) => c.execute(out),
            Self::Workers(c) => c.execute(out),
            Self::Queue(c) => c.execute(out),
            Self::Completions(c) => c.execute(),
        }
    }
}

/// Seconds since the Unix epoch on this machine's clock.
pub(crate) fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A Unix time for people: RFC 3339 in UTC.
fn show_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string()
}

/// 16 bytes from the operating system's random source.
pub(crate) fn random16() -> anyhow::Result<[u8; 16]> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
    Ok(b)
}
