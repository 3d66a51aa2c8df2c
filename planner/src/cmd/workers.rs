//! `agx workers list`: the workers registered with a queue.

use std::process::ExitCode;

use agenix_link::Client;
use agenix_proto::job::WorkerRecord;
use agenix_proto::text::clean_line;
use agenix_proto::wire::{ClientRole, MAX_PAGE};
use anyhow::Result;

use crate::local::runtime;
use crate::output::Out;
use crate::remote::QueueArgs;

/// `agx workers ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum WorkersCommand {
    /// List registered workers.
    #[command(after_help = examples!(
        "agx workers list",
        "# Read-only, with the observer token",
        "agx workers list --role observer --token-file q/observer.token",
    ))]
    List(Workers),
}

impl WorkersCommand {
    pub(crate) fn execute(self, out: Out) -> Result<ExitCode> {
        match self {
            Self::List(c) => c.execute(out),
        }
    }
}

/// Every registered worker, page by page.
pub(super) async fn list_workers(client: &Client) -> Result<Vec<WorkerRecord>> {
    let mut workers = Vec::new();
    let mut after = None;
    loop {
        let page = client.list_workers(after, MAX_PAGE).await?;
        workers.extend(page.items);
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(workers),
        }
    }
}

/// Registered workers.
#[derive(Debug, clap::Args)]
pub(crate) struct Workers {
    #[command(flatten)]
    queue: QueueArgs,
}

impl Workers {
    pub(crate) fn execute(self, out: Out) -> Result<ExitCode> {
        runtime()?.block_on(async {
            let c = self.queue.connect(ClientRole::Planner).await?;
            let answer = list_workers(&c).await;
            c.shutdown().await;
            let workers = answer?;
            if out.json {
                for w in &workers {
                    out.emit("worker", w, String::new)?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            let mut s = format!(
                "{:>20}  {:<20} {:>9} {:>6} {:>6} {:>8}  {}\n",
                "id", "name", "seen", "leases", "slots", "declined", "native tools"
            );
            let now_ms = super::now_unix().saturating_mul(1000);
            for w in &workers {
                let tools: Vec<String> =
                    w.capabilities.tools.iter().map(ToString::to_string).collect();
                s.push_str(&format!(
                    "{:>20}  {:<20} {:>9} {:>6} {:>6} {:>8}  {}\n",
                    w.id,
                    clean_line(&w.capabilities.name),
                    format!("{}s ago", now_ms.saturating_sub(w.last_seen) / 1000),
                    w.leases,
                    w.capabilities.concurrency,
                    w.declined,
                    tools.join(",")
                ));
                // The key it proved, and the labels it was enrolled with.
                let labels: Vec<String> =
                    w.capabilities.labels.iter().map(|l| clean_line(l)).collect();
                let labels = if labels.is_empty() {
                    String::new()
                } else {
                    format!(", labels {}", labels.join(","))
                };
                s.push_str(&format!("{:>20}  key {}{labels}\n", "", w.key));
                if let Some(why) = &w.last_declined {
                    s.push_str(&format!("{:>20}  last declined: {}\n", "", clean_line(why)));
                }
            }
            out.emit("workers", &(), || s)?;
            Ok(ExitCode::SUCCESS)
        })
    }
}
