//! `agx submit`: sign an action for a plan, upload what it needs, submit it; with
//! `--watch`, follow its jobs to their results.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use agenix_link::Client;
use agenix_proto::action::ACTION_SCHEMA;
use agenix_proto::envelope::sign_action;
use agenix_proto::wire::{ClientRole, MAX_BATCH_BLOBS};
use agenix_proto::{Action, ActionId, Digest, Envelope, InputRef, Plan};
use agenix_runtime::store::StoreError;
use anyhow::{Context, Result, bail};

use super::jobs::watch;
use super::{now_unix, random16};
use crate::args::parse_lifetime;
use crate::files::{Source, Within, read_capped_by, read_within};
use crate::local::{StoreArg, runtime};
use crate::output::Out;
use crate::remote::QueueArgs;
use crate::signing::{PlanFile, load_key, sign_draft};

/// How long standard input (`--input -`) may stay open.
const STDIN_WAIT: Duration = Duration::from_secs(3600);

/// Most input one file may hold.
const MAX_INPUT: u64 = 1 << 30;
/// Most bytes of blobs agx holds and sends in one upload request.
const BATCH_BYTES: usize = 64 << 20;

/// Uploads blobs in requests of at most [`BATCH_BYTES`] (or [`MAX_BATCH_BLOBS`] blobs), so
/// that many inputs cost few requests and agx holds one batch at a time.
struct Batcher<'a> {
    client: &'a Client,
    pending: Vec<(Vec<u8>, String)>,
    bytes: usize,
}

impl<'a> Batcher<'a> {
    fn new(client: &'a Client) -> Self {
        Self { client, pending: Vec::new(), bytes: 0 }
    }

    /// Adds a blob (`what` names it in errors); sends the batch once it is full.
    async fn add(&mut self, bytes: Vec<u8>, what: String) -> Result<InputRef> {
        let r = InputRef { digest: Digest::of(&bytes), size: bytes.len() as u64 };
        if !self.pending.is_empty()
            && (self.bytes + bytes.len() > BATCH_BYTES || self.pending.len() >= MAX_BATCH_BLOBS)
        {
            self.flush().await?;
        }
        self.bytes += bytes.len();
        self.pending.push((bytes, what));
        Ok(r)
    }

    async fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let blobs: Vec<&[u8]> = self.pending.iter().map(|(b, _)| b.as_slice()).collect();
        let names: Vec<&str> = self.pending.iter().map(|(_, w)| w.as_str()).collect();
        self.client.put_many(&blobs, false).await.with_context(|| {
            format!("cannot upload {}", names.join(", ").chars().take(500).collect::<String>())
        })?;
        self.pending.clear();
        self.bytes = 0;
        Ok(())
    }
}

/// Sign an action for PLAN, upload its components and inputs, submit; prints the job ids.
#[derive(Debug, clap::Args)]
pub(crate) struct Submit {
    /// A signed plan, or a plan file (signed here, AUs locked from the store).
    plan: PathBuf,
    /// Input files: one job each (none: one job with empty input; `-`: standard input,
    /// once).
    #[arg(long = "input", value_name = "FILE")]
    inputs: Vec<PathBuf>,
    /// Watch the jobs until they finish (on a terminal, a progress bar on stderr counts
    /// them by state), then print their results.
    #[arg(long)]
    watch: bool,
    /// The signing key [default: from AGX_KEY or the config file].
    #[arg(long, value_name = "FILE", env = "AGX_KEY")]
    key: Option<PathBuf>,
    /// Attempts per job.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// Priority (higher runs first), -1000..=1000.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    priority: i32,
    /// How long the action (and a plan signed here) stays valid (`90m`, `24h`, `7days`; 1m
    /// to 366 days).
    #[arg(long, default_value = "24h", value_parser = parse_lifetime)]
    expires: Duration,
    #[command(flatten)]
    store: StoreArg,
    #[command(flatten)]
    queue: QueueArgs,
}

impl Submit {
    pub(crate) fn execute(self, out: Out) -> Result<ExitCode> {
        if self.inputs.iter().filter(|p| p.as_os_str() == "-").count() > 1 {
            bail!("--input - (standard input) may be given once");
        }
        if let Some(role) = self.queue.role().filter(|r| *r != ClientRole::Planner) {
            bail!(
                "the {} role may not submit: submit as planner, with the planner token",
                role.as_str()
            );
        }
        let file = self.queue.file()?;
        let key_path = self
            .key
            .clone()
            .or(file.key)
            .context("no signing key: pass --key, set AGX_KEY or `key` in the agx config")?;
        let key = load_key(&key_path)?;
        let now = now_unix();
        let expires = self.expires.as_secs();
        let plan_env = match PlanFile::read(&self.plan)? {
            PlanFile::Signed(bytes) => Envelope::from_json(&bytes)
                .with_context(|| format!("cannot read {}", self.plan.display()))?,
            PlanFile::Draft(plan) => {
                sign_draft(&self.plan, plan, &key, &self.store, self.expires)?.envelope
            }
        };
        let payload = plan_env.payload_unverified()?;
        let plan = Plan::from_json(&payload)
            .with_context(|| format!("{} holds no valid plan", self.plan.display()))?;
        let digest = Digest::of(&payload);
        let store = self.store.open()?;
        let rt = runtime()?;
        let jobs = rt.block_on(async {
            let client = self.queue.connect(ClientRole::Planner).await?;
            // Components the local store has go up with the submission, each once (the
            // queue keeps one copy of each); one the store lacks may be at the queue already.
            // Inputs follow, read one at a time and sent in batches.
            let mut components = BTreeMap::new();
            for (_, w) in plan.wasm_tasks() {
                if let Some(d) = w.digest {
                    components.entry(d).or_insert(&w.name);
                }
            }
            let mut up = Batcher::new(&client);
            for (d, name) in components {
                let component = match store.get(&d) {
                    Ok(c) => c,
                    Err(StoreError::Missing { .. }) => continue,
                    Err(e) => return Err(e).with_context(|| format!("AU {name}")),
                };
                up.add(component, format!("AU {name}")).await?;
            }
            let mut refs = Vec::with_capacity(self.inputs.len());
            // No more of an input is read than the queue would take.
            let (max, why) = if client.max_blob() < MAX_INPUT {
                (client.max_blob(), " (the queue's largest blob: agq serve --max-blob)")
            } else {
                (MAX_INPUT, "")
            };
            for path in &self.inputs {
                let input = if path.as_os_str() == "-" {
                    match read_within(Source::Stdin, max, Instant::now() + STDIN_WAIT)? {
                        Within::Read(bytes) => bytes,
                        Within::StillOpen => bail!(
                            "stdin: still open after {} s; nothing was submitted",
                            STDIN_WAIT.as_secs()
                        ),
                    }
                } else {
                    read_capped_by(path, max, why)?
                };
                refs.push(up.add(input, path.display().to_string()).await?);
            }
            let action = Action {
                schema: ACTION_SCHEMA.into(),
                action_id: ActionId::from_random(random16()?),
                plan: digest,
                inputs: refs,
                issued_at: now,
                expires_at: now + expires,
                max_attempts: self.max_attempts,
                priority: self.priority,
                audience: client.queue(),
            };
            let action_env = sign_action(&action, &key).context("cannot sign the action")?;
            up.flush().await?;
            // The envelopes travel after the request as blobs (a plan at its size limit is
            // larger than a frame once signed), stored in the commit that records it.
            let (plan_json, action_json) = (plan_env.to_json(), action_env.to_json());
            let jobs = client
                .submit_carrying(
                    Digest::of(&plan_json),
                    Digest::of(&action_json),
                    &[&plan_json, &action_json],
                )
                .await
                .with_context(|| {
                    format!(
                        "the signed plan ({} bytes) and action ({} bytes)",
                        plan_json.len(),
                        action_json.len()
                    )
                })?
                .jobs;
            anyhow::Ok((client, jobs))
        });
        let (client, jobs) = jobs?;
        let ids: Vec<String> = jobs.iter().map(ToString::to_string).collect();
        let line = format!("submitted {} job(s): {}", jobs.len(), ids.join(" "));
        if self.watch && !out.json {
            // With --watch, stdout carries the results only.
            let _ = writeln!(std::io::stderr(), "{line}");
        } else {
            out.emit(
                "submitted",
                &serde_json::json!({ "jobs": jobs, "plan": digest.to_string() }),
                || line,
            )?;
        }
        let code = if self.watch {
            rt.block_on(watch(&client, &jobs, out))
        } else {
            Ok(ExitCode::SUCCESS)
        };
        rt.block_on(client.shutdown());
        code
    }
}
