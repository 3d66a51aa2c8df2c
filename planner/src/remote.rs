//! How agx reaches a queue: address, pinned fingerprint and token file, from flags, the
//! environment (`AGX_QUEUE`, `AGX_FINGERPRINT`, `AGX_TOKEN_FILE`) or a config file
//! (`--config`, `$AGX_CONFIG`, else `~/.config/agenix/agx.toml`):
//!
//! ```toml
//! queue = "127.0.0.1:7411"      # or its nodes: "a.example.net:7411,b.example.net:7411"
//! fingerprint = "sha256:…"      # agq fingerprint --data DIR
//! token_file = "/path/planner.token"
//! key = "/path/alice.key"       # signs plans and actions for `agx submit`
//! ```

use std::path::PathBuf;

use agenix_link::{Client, Credential};
use agenix_proto::Fingerprint;
use agenix_proto::wire::{ClientRole, ErrorCode};
use agenix_runtime::files::{MAX_CONFIG_BYTES, MAX_TOKEN_BYTES, read_small};
use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

/// The config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgxConfig {
    pub(crate) queue: Option<agenix_link::Addresses>,
    pub(crate) fingerprint: Option<Fingerprint>,
    pub(crate) token_file: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
}

/// Connection flags, shared by every command that talks to a queue.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct QueueArgs {
    /// The queue's address: HOST:PORT, or its nodes' separated by commas (agx dials them
    /// all and keeps the first that serves).
    #[arg(long, env = "AGX_QUEUE", global = false)]
    queue: Option<agenix_link::Addresses>,
    /// The queue's fingerprint (`agq fingerprint --data DIR`).
    #[arg(long, env = "AGX_FINGERPRINT")]
    fingerprint: Option<Fingerprint>,
    /// A file holding the token of the role agx connects as.
    #[arg(long, env = "AGX_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The role to connect as: planner, or observer (with an observer token) for commands
    /// that only read [default: planner].
    #[arg(long, env = "AGX_ROLE", value_name = "ROLE", value_parser = parse_role)]
    role: Option<ClientRole>,
    /// The agx config file [default: ~/.config/agenix/agx.toml, if present].
    #[arg(long = "config", env = "AGX_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

/// The roles agx speaks as (workers are agw's).
fn parse_role(s: &str) -> Result<ClientRole, String> {
    match s {
        "planner" => Ok(ClientRole::Planner),
        "observer" => Ok(ClientRole::Observer),
        _ => Err(format!("agx connects as planner or observer, not {s:?}")),
    }
}

impl QueueArgs {
    /// The role asked for with --role or AGX_ROLE, if any.
    pub(crate) fn role(&self) -> Option<ClientRole> {
        self.role
    }

    /// The config file's contents (empty when there is none).
    pub(crate) fn file(&self) -> Result<AgxConfig> {
        let path = match &self.config {
            Some(p) => p.clone(),
            None => match std::env::var_os("HOME") {
                Some(h) => {
                    let p = PathBuf::from(h).join(".config/agenix/agx.toml");
                    if !p.exists() {
                        return Ok(AgxConfig::default());
                    }
                    p
                }
                None => return Ok(AgxConfig::default()),
            },
        };
        let text = read_small(&path, MAX_CONFIG_BYTES)
            .with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("{} is not a valid agx config", path.display()))
    }

    /// Whether a queue is configured at all.
    pub(crate) fn configured(&self) -> Result<bool> {
        Ok(self.queue.is_some() || self.file()?.queue.is_some())
    }

    /// Connects and authenticates as `role`.
    pub(crate) async fn connect(&self, role: ClientRole) -> Result<Client> {
        let file = self.file()?;
        let need = |what: &str| {
            anyhow!("no {what}: pass it, set it in the environment, or in the agx config file")
        };
        let queue =
            self.queue.clone().or(file.queue).ok_or_else(|| need("queue address (--queue)"))?;
        let fingerprint = self
            .fingerprint
            .or(file.fingerprint)
            .ok_or_else(|| need("queue fingerprint (--fingerprint)"))?;
        let token_file = self
            .token_file
            .clone()
            .or(file.token_file)
            .ok_or_else(|| need("token file (--token-file)"))?;
        let token = read_small(&token_file, MAX_TOKEN_BYTES)
            .with_context(|| format!("cannot read {}", token_file.display()))?;
        if token.trim().is_empty() {
            bail!("the token file {} is empty", token_file.display());
        }
        let role = self.role.unwrap_or(role);
        let credential = Credential::Token(token.trim().to_owned());
        Client::connect_any(&queue, fingerprint, role, &credential).await.map_err(|e| {
            let why = match e.code() {
                Some(ErrorCode::Unauthenticated) => format!(
                    "the queue at {queue} refused the token in {} for the {} role",
                    token_file.display(),
                    role.as_str()
                ),
                _ => format!("cannot reach the queue at {queue}"),
            };
            anyhow::Error::new(e).context(why)
        })
    }
}
