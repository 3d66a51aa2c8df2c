//! `agx plan validate|sign|verify|show|draft|chat`.

mod chat;
mod draft;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use agenix_proto::envelope::MAX_ENVELOPE_BYTES;
use agenix_proto::plan::MAX_PLAN_BYTES;
use agenix_proto::{Envelope, Form, KeyId, Limits, Plan, Run, Trust, VerifiedPlan};
use anyhow::{Context, Result, bail};

use super::trust::load_trust;
use super::{now_unix, show_time};
use crate::args::parse_lifetime;
use crate::files::{Existing, read_capped, write_atomic};
use crate::local::StoreArg;
use crate::output::Out;
use crate::show::describe_tasks;
use crate::signing::{load_key, load_plan, sign_draft, signed_size};
use agenix_proto::text::clean;

/// Plan commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum PlanCommand {
    /// Check a plan being written against every rule.
    #[command(after_help = examples!(
        "# Every rule checked; each violation named with its path in the plan",
        "agx plan validate examples/log-errors.json",
        "agx plan validate plan.json --json",
    ))]
    Validate(Validate),
    /// Sign a plan: set its id and validity, check it, write a signed envelope.
    #[command(after_help = examples!(
        "# Valid for a day; AUs named without a digest are locked from the local store",
        "agx plan sign examples/log-errors.json --key alice.key --out plan.env",
        "# Valid for a week",
        "agx plan sign plan.json --key alice.key --expires 7days --out plan.env",
    ))]
    Sign(Sign),
    /// Verify a signed plan against a trust file.
    #[command(after_help = examples!(
        "agx plan verify plan.env --trust trust.json",
        "agx plan verify plan.env --trust trust.json --json",
    ))]
    Verify(Verify),
    /// Show what a signed plan does.
    #[command(after_help = examples!(
        "# Verified first, then its tasks, signer and validity",
        "agx plan show plan.env --trust trust.json",
        "# Shown without verifying anything",
        "agx plan show plan.env",
    ))]
    Show(Show),
    /// Draft a plan from a sentence with a language model; write it once approved.
    #[command(after_help = examples!(
        "# With AGX_LLM_URL and AGX_LLM_MODEL set; the draft is shown before it is written",
        "agx plan draft \"count the distinct error messages in this log\" --input-sample examples/data/app.log --out plan.json",
        "# Offer two native tools and a read-only mount",
        "agx plan draft \"the 10 most frequent lines in the logs\" --tool sort,uniq --mount logs:ro --out top.json",
    ))]
    Draft(draft::Draft),
    /// Refine a plan with a language model, a step at a time; run, sign and submit it.
    #[command(after_help = examples!(
        "# From nothing, with a sample of the input (AGX_LLM_URL, AGX_LLM_MODEL set); then",
        "# type what the plan should do, and /help",
        "agx plan chat --input-sample examples/data/app.log",
        "# Refine a plan file, offering the native tools the queue's workers advertise",
        "agx plan chat plan.json --tools-from-queue",
    ))]
    Chat(chat::Chat),
}

impl PlanCommand {
    pub(crate) fn execute(self, out: Out) -> Result<ExitCode> {
        match self {
            Self::Validate(c) => c.execute(out),
            Self::Sign(c) => c.execute(out),
            Self::Verify(c) => c.execute(out),
            Self::Show(c) => c.execute(out),
            Self::Draft(c) => c.execute(out),
            Self::Chat(c) => c.execute(out),
        }
    }
}

/// Check PLAN (JSON) against the rules of plan v1; lists every violation with its path.
#[derive(Debug, clap::Args)]
pub(crate) struct Validate {
    /// The plan file.
    plan: PathBuf,
}

/// Sign PLAN with a signer key and write the envelope to ENV.
#[derive(Debug, clap::Args)]
pub(crate) struct Sign {
    /// The plan file.
    plan: PathBuf,
    /// The private key from `agx keygen`.
    #[arg(long, value_name = "FILE", env = "AGX_KEY")]
    key: PathBuf,
    /// How long the signature stays valid (`90m`, `24h`, `7days`; 1m to 366 days).
    #[arg(long, default_value = "24h", value_parser = parse_lifetime)]
    expires: Duration,
    /// Where to write the signed envelope.
    #[arg(long, value_name = "ENV")]
    out: PathBuf,
    /// Where AUs named without a digest are looked up (the lock step).
    #[command(flatten)]
    store: StoreArg,
}

/// Verify ENV: signature by a trusted, unrevoked signer, validity period, plan rules.
#[derive(Debug, clap::Args)]
pub(crate) struct Verify {
    /// The signed envelope.
    envelope: PathBuf,
    /// The trust file.
    #[arg(long = "trust", value_name = "FILE", env = "AGX_TRUST")]
    trust: PathBuf,
}

/// Show a signed plan's tasks, signer and validity; with --trust, verify it first.
#[derive(Debug, clap::Args)]
pub(crate) struct Show {
    /// The signed envelope.
    envelope: PathBuf,
    /// Verify against this trust file before showing (without it, nothing is verified).
    #[arg(long = "trust", value_name = "FILE")]
    trust: Option<PathBuf>,
}

fn task_summary(plan: &Plan) -> Vec<serde_json::Value> {
    plan.tasks
        .iter()
        .map(|t| {
            let (kind, what, digest) = match &t.run {
                Run::Wasm(w) => ("wasm", w.name.to_string(), w.digest.map(|d| d.to_string())),
                Run::Native(n) => ("native", n.tool.to_string(), None),
            };
            serde_json::json!({
                "id": t.id, "kind": kind, "name": what, "digest": digest, "args": t.args,
                "stdin": t.stdin, "mounts": t.mounts, "limits": t.limits,
                "scratch": t.scratch,
            })
        })
        .collect()
}

impl Validate {
    fn execute(self, out: Out) -> Result<ExitCode> {
        let plan = load_plan(&self.plan)?;
        plan.validate(Form::Draft, &Limits::ABSOLUTE)
            .with_context(|| format!("{} is not a valid plan", self.plan.display()))?;
        let size = signed_size(&plan);
        if size > MAX_PLAN_BYTES {
            bail!(
                "{} follows every rule as written, but signed (its AUs locked to digests, an id \
                 and a validity period added) it would be {size} bytes, over the limit of \
                 {MAX_PLAN_BYTES}",
                self.plan.display()
            );
        }
        let unlocked = plan.wasm_tasks().filter(|(_, w)| w.digest.is_none()).count();
        out.emit(
            "valid",
            &serde_json::json!({ "plan": self.plan, "name": plan.name, "tasks": plan.tasks.len(), "unlocked": unlocked }),
            || {
                let lock = if unlocked > 0 { format!(", {unlocked} AU(s) to lock when signing") } else { String::new() };
                format!("{}: valid plan \"{}\" ({} tasks{lock})", self.plan.display(), plan.name, plan.tasks.len())
            },
        )?;
        Ok(ExitCode::SUCCESS)
    }
}

impl Sign {
    fn execute(self, out: Out) -> Result<ExitCode> {
        for (what, path) in [("the signer key", &self.key), ("the plan", &self.plan)] {
            if crate::files::same_file(&self.out, path) {
                bail!("--out {} is {what}: signing would replace it", self.out.display());
            }
        }
        let plan = load_plan(&self.plan)?;
        let key = load_key(&self.key)?;
        let signed = sign_draft(&self.plan, plan, &key, &self.store, self.expires)?;
        write_atomic(&self.out, &signed.envelope.to_json(), 0o644, Existing::Replace)?;
        let (digest, now) = (signed.digest, signed.issued_at);
        let expires_at = signed.plan.expires_at.unwrap_or(now);
        let keyid = KeyId::of(&key.verifying_key());
        out.emit(
            "signed",
            &serde_json::json!({
                "envelope": self.out, "plan_id": signed.plan.plan_id, "digest": digest.to_string(),
                "signer": keyid.to_string(), "issued_at": now, "expires_at": expires_at,
            }),
            || {
                format!(
                    "signed {} -> {}\nplan digest {digest}\nsigned by {keyid}, valid until {}",
                    self.plan.display(),
                    self.out.display(),
                    show_time(expires_at)
                )
            },
        )?;
        Ok(ExitCode::SUCCESS)
    }
}

fn verify_file(path: &Path, trust: &Trust) -> Result<VerifiedPlan> {
    let bytes = read_capped(path, MAX_ENVELOPE_BYTES as u64)?;
    agenix_proto::verify_plan(&bytes, trust, now_unix(), &Limits::ABSOLUTE)
        .with_context(|| format!("{} failed verification", path.display()))
}

fn signer_name(trust: &Trust, keyid: &KeyId) -> String {
    trust.signer(keyid).map(|s| s.name.clone()).unwrap_or_default()
}

impl Verify {
    fn execute(self, out: Out) -> Result<ExitCode> {
        let trust = load_trust(&self.trust)?;
        let v = verify_file(&self.envelope, &trust)?;
        let plan = v.plan();
        let name = signer_name(&trust, &v.signer());
        out.emit(
            "verified",
            &serde_json::json!({
                "envelope": self.envelope, "name": plan.name, "plan_id": plan.plan_id,
                "digest": v.digest().to_string(), "signer": v.signer().to_string(), "signer_name": name,
                "expires_at": plan.expires_at,
            }),
            || format!(
                "verified: plan \"{}\" ({}), digest {}\nsigned by \"{name}\" ({}), valid until {}",
                plan.name,
                plan.plan_id.as_ref().map(ToString::to_string).unwrap_or_default(),
                v.digest(),
                v.signer(),
                plan.expires_at.map(show_time).unwrap_or_default()
            ),
        )?;
        Ok(ExitCode::SUCCESS)
    }
}

impl Show {
    fn execute(self, out: Out) -> Result<ExitCode> {
        let (plan, digest, signer) = match &self.trust {
            Some(trust_path) => {
                let trust = load_trust(trust_path)?;
                let v = verify_file(&self.envelope, &trust)?;
                let who = format!("\"{}\" ({})", signer_name(&trust, &v.signer()), v.signer());
                (v.plan().clone(), v.digest(), Some(who))
            }
            None => {
                let bytes = read_capped(&self.envelope, MAX_ENVELOPE_BYTES as u64)?;
                let env = Envelope::from_json(&bytes)
                    .with_context(|| format!("cannot read {}", self.envelope.display()))?;
                let payload = env.payload_unverified()?;
                let plan = Plan::from_json(&payload)
                    .with_context(|| format!("{} holds no valid plan", self.envelope.display()))?;
                (plan, agenix_proto::Digest::of(&payload), None)
            }
        };
        out.emit(
            "plan",
            &serde_json::json!({
                "name": plan.name, "plan_id": plan.plan_id, "digest": digest.to_string(),
                "verified": signer.is_some(), "signer": signer, "description": plan.description,
                "issued_at": plan.issued_at, "expires_at": plan.expires_at, "output": plan.output,
                "tasks": task_summary(&plan),
            }),
            || {
                let sig =
                    signer.clone().map_or("NOT verified (pass --trust FILE)".to_string(), |s| {
                        format!("verified, signed by {s}")
                    });
                let mut s = format!(
                    "plan \"{}\" {}\n",
                    plan.name,
                    plan.plan_id.as_ref().map(ToString::to_string).unwrap_or_default()
                );
                if !plan.description.is_empty() {
                    s.push_str(&format!("  {}\n", plan.description));
                }
                s.push_str(&format!("digest    {digest}\nsignature {sig}\n"));
                if let (Some(i), Some(e)) = (plan.issued_at, plan.expires_at) {
                    s.push_str(&format!("valid     {} .. {}\n", show_time(i), show_time(e)));
                }
                s.push_str(&format!("tasks ({}):\n{}", plan.tasks.len(), describe_tasks(&plan)));
                // Showing a plan is how one looks at what others signed: its free text
                // (description, arguments) is theirs.
                clean(&s).into_owned()
            },
        )?;
        Ok(ExitCode::SUCCESS)
    }
}
