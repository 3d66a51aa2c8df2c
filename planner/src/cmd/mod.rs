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
    #[command(after_help = examples!(
        "# A key pair: alice.key (private, mode 0600) and alice.key.pub; prints the key id",
        "agx keygen --out alice.key",
        "# Replace alice.key and alice.key.pub if they exist",
        "agx keygen --out alice.key --force",
    ))]
    Keygen(keygen::Keygen),
    /// Manage a trust file: which signers a worker or queue believes.
    #[command(subcommand, after_help = examples!(
        "# Trust alice to sign plans and actions, then see who is trusted",
        "agx trust add alice.key.pub --name alice --trust trust.json",
        "agx trust list --trust trust.json",
    ))]
    Trust(trust::TrustCommand),
    /// Validate, sign, verify and inspect plans.
    #[command(subcommand, after_help = examples!(
        "# Check a plan, sign it for a day, verify the signature and show what it does",
        "agx plan validate examples/log-errors.json",
        "agx plan sign examples/log-errors.json --key alice.key --out plan.env",
        "agx plan verify plan.env --trust trust.json",
        "agx plan show plan.env --trust trust.json",
    ))]
    Plan(plan::PlanCommand),
    /// Build, check, describe, run and store AUs on this machine.
    #[command(subcommand, after_help = examples!(
        "# A new AU in Rust, built, checked against the sandbox, run and stored",
        "agx au new shout && cd shout",
        "cargo build --release --target wasm32-wasip2",
        "agx au check target/wasm32-wasip2/release/shout.wasm",
        "echo hi | agx au run target/wasm32-wasip2/release/shout.wasm --timeout 500ms",
        "agx au push target/wasm32-wasip2/release/shout.wasm",
    ))]
    Au(au::AuCommand),
    /// Run a plan on this machine, in-process, without a queue.
    #[command(after_help = examples!(
        "# A signed plan, verified, on a file",
        "agx run plan.env --trust trust.json --input examples/data/app.log",
        "# Its input from standard input",
        "agx run plan.env --trust trust.json --input - < examples/data/app.log",
        "# A plan nobody signed, with the native tools it names allowed",
        "agx run examples/log-errors-native.json --unsigned --input examples/data/app.log --allow-tool grep --allow-tool cut --allow-tool sort --allow-tool uniq",
    ))]
    Run(run::RunPlan),
    /// Sign an action for a plan and submit it to a queue, with its inputs.
    #[command(after_help = examples!(
        "# The queue from AGX_QUEUE, AGX_FINGERPRINT and AGX_TOKEN_FILE (or --queue,",
        "# --fingerprint, --token-file). One job per input, followed to their results",
        "agx submit plan.env --key alice.key --input mon.log --input tue.log --watch",
        "# A plan file, signed here; one job with empty input, tried once, before others",
        "agx submit examples/log-errors.json --key alice.key --max-attempts 1 --priority 10",
        "# Standard input as the input; the job ids as JSON",
        "agx submit plan.env --key alice.key --input - --json < examples/data/app.log",
    ))]
    Submit(submit::Submit),
    /// Jobs on a queue.
    #[command(subcommand, after_help = examples!(
        "# The queue from AGX_QUEUE, AGX_FINGERPRINT and AGX_TOKEN_FILE (or --queue,",
        "# --fingerprint, --token-file)",
        "agx jobs list --state queued",
        "agx jobs watch 7 8 9",
        "agx jobs result 7 > result.txt",
    ))]
    Jobs(jobs::JobsCommand),
    /// Workers registered with a queue.
    #[command(subcommand, after_help = examples!(
        "agx workers list",
    ))]
    Workers(workers::WorkersCommand),
    /// The queue itself.
    #[command(subcommand, after_help = examples!(
        "agx queue stats",
    ))]
    Queue(queue::QueueCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = examples!(
        "agx completions bash > ~/.local/share/bash-completion/completions/agx",
        "agx completions zsh > \"${fpath[1]}/_agx\"",
        "agx completions fish > ~/.config/fish/completions/agx.fish",
    ))]
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
