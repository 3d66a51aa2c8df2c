//! `agx queue stats`: the queue itself.

use std::process::ExitCode;

use agenix_proto::wire::ClientRole;
use anyhow::Result;

use crate::local::runtime;
use crate::output::Out;
use crate::remote::QueueArgs;

/// `agx queue ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum QueueCommand {
    /// Jobs by state and recent throughput.
    #[command(after_help = examples!(
        "agx queue stats",
        "agx queue stats --json",
    ))]
    Stats(Stats),
}

impl QueueCommand {
    pub(crate) fn execute(self, out: Out) -> Result<ExitCode> {
        match self {
            Self::Stats(c) => c.execute(out),
        }
    }
}

/// Counts by state and throughput.
#[derive(Debug, clap::Args)]
pub(crate) struct Stats {
    #[command(flatten)]
    queue: QueueArgs,
}

impl Stats {
    pub(crate) fn execute(self, out: Out) -> Result<ExitCode> {
        runtime()?.block_on(async {
            let c = self.queue.connect(ClientRole::Planner).await?;
            let answer = c.stats().await;
            c.shutdown().await;
            let stats = answer?;
            out.emit("stats", &stats, || {
                let jobs: Vec<String> =
                    stats.jobs.iter().map(|(k, v)| format!("{v} {k}")).collect();
                format!(
                    "jobs: {}\nlast minute: {} submitted, {} finished\nworkers: {}",
                    if jobs.is_empty() { "none".into() } else { jobs.join(", ") },
                    stats.submitted_last_minute,
                    stats.finished_last_minute,
                    stats.workers
                )
            })?;
            Ok(ExitCode::SUCCESS)
        })
    }
}
