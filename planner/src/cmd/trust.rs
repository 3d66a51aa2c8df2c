//! `agx trust add|rotate|revoke|list`: edit and read a trust file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agenix_proto::keys::verifying_key_from_pem;
use agenix_proto::trust::MAX_TRUST_BYTES;
use agenix_proto::{KeyId, Role, Trust};
use anyhow::{Context, Result};
use serde::Serialize;

use crate::files::{Existing, read_capped, write_atomic};
use crate::output::Out;

/// Trust file commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum TrustCommand {
    /// Trust a signer's public key (creates the trust file if needed).
    #[command(after_help = examples!(
        "# Trust alice to sign plans and actions",
        "agx trust add alice.key.pub --name alice --trust trust.json",
        "# Trust bob to sign plans only",
        "agx trust add bob.key.pub --name bob --role plan --trust trust.json",
        "# Believe the results worker w1 signs (its worker.pub, from `agw init`)",
        "agx trust add w1/worker.pub --name w1 --role worker --trust planner-trust.json",
    ))]
    Add(Add),
    /// Replace a signer's key: the new one is trusted now, the old one until the overlap ends.
    #[command(after_help = examples!(
        "# alice's new key is trusted now; her old one, by the id `agx trust list` shows,",
        "# for 3 more days",
        "agx keygen --out alice2.key",
        "agx trust rotate sha256:2efe34e06f7a7232d2221b2ffbbe3b0092538f60fec8370488e00d07a3569db3 --to alice2.key.pub --overlap 3days --trust trust.json",
    ))]
    Rotate(Rotate),
    /// Revoke a key id: nothing it signed is accepted any more.
    #[command(after_help = examples!(
        "# Nothing this key signed is accepted any more, whatever its validity",
        "agx trust revoke sha256:2efe34e06f7a7232d2221b2ffbbe3b0092538f60fec8370488e00d07a3569db3 --trust trust.json",
    ))]
    Revoke(Revoke),
    /// List signers and revoked keys.
    #[command(after_help = examples!(
        "agx trust list --trust trust.json",
        "agx trust list --trust trust.json --json",
    ))]
    List(List),
}

impl TrustCommand {
    pub(crate) fn execute(self, out: Out) -> Result<ExitCode> {
        match self {
            Self::Add(c) => c.execute(out),
            Self::Rotate(c) => c.execute(out),
            Self::Revoke(c) => c.execute(out),
            Self::List(c) => c.execute(out),
        }
    }
}

/// Add a public key (KEY.pub from `agx keygen`) as a named signer.
#[derive(Debug, clap::Args)]
pub(crate) struct Add {
    /// The public key file (PEM).
    key: PathBuf,
    /// The signer's name, for people.
    #[arg(long)]
    name: String,
    /// What the signer may sign; repeat for several (default: plan and action). `worker`
    /// trusts a worker's key (`worker.pub` from `agw init`) for the results it signs.
    #[arg(long = "role", value_enum)]
    roles: Vec<RoleArg>,
    /// The trust file.
    #[arg(long = "trust", value_name = "FILE", env = "AGX_TRUST")]
    trust: PathBuf,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Plan,
    Action,
    Worker,
}

/// Rotate a signer to a new key. The new key takes the signer's name and roles and is trusted
/// from now; the old one, renamed `NAME (until T)`, until the overlap ends, so what it
/// signed before can still run. (To stop trusting a key at once, revoke it.)
#[derive(Debug, clap::Args)]
pub(crate) struct Rotate {
    /// The old key id, `sha256:<hex>`.
    old: String,
    /// The new public key file (PEM).
    #[arg(long = "to", value_name = "NEW.pub")]
    to: PathBuf,
    /// How long the old key stays trusted (`0s` to `366days`).
    #[arg(long, default_value = "7days", value_parser = crate::args::parse_overlap)]
    overlap: std::time::Duration,
    /// The trust file.
    #[arg(long = "trust", value_name = "FILE", env = "AGX_TRUST")]
    trust: PathBuf,
}

/// Revoke a key id (revocation is permanent).
#[derive(Debug, clap::Args)]
pub(crate) struct Revoke {
    /// The key id, `sha256:<hex>`, as `agx keygen` or `agx trust list` printed it.
    keyid: String,
    /// The trust file.
    #[arg(long = "trust", value_name = "FILE", env = "AGX_TRUST")]
    trust: PathBuf,
}

/// Show every signer and revoked key.
#[derive(Debug, clap::Args)]
pub(crate) struct List {
    /// The trust file.
    #[arg(long = "trust", value_name = "FILE", env = "AGX_TRUST")]
    trust: PathBuf,
}

/// Reads and checks a trust file.
pub(crate) fn load_trust(path: &Path) -> Result<Trust> {
    let bytes = read_capped(path, MAX_TRUST_BYTES as u64).context("cannot read the trust file")?;
    Trust::from_json(&bytes)
        .with_context(|| format!("{} is not a valid trust file", path.display()))
}

fn save_trust(path: &Path, trust: &Trust) -> Result<()> {
    write_atomic(path, &trust.to_json(), 0o644, Existing::Replace)
}

/// Holds `FILE.lock` beside a trust file while it is read, changed and written, so that
/// edits made at the same time (two `agx trust` runs) all land: each reads what the last
/// one wrote. Released when dropped.
fn lock_trust(path: &Path) -> Result<std::fs::File> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock = std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&name)
        .with_context(|| format!("cannot open the lock {}", Path::new(&name).display()))?;
    lock.lock().with_context(|| format!("cannot lock {}", Path::new(&name).display()))?;
    Ok(lock)
}

impl Add {
    fn execute(self, out: Out) -> Result<ExitCode> {
        let key = read_public_key(&self.key)?;
        let _lock = lock_trust(&self.trust)?;
        let mut trust = if self.trust.exists() { load_trust(&self.trust)? } else { Trust::new() };
        let roles: Vec<Role> = if self.roles.is_empty() {
            Role::SIGNING.to_vec()
        } else {
            self.roles
                .iter()
                .map(|r| match r {
                    RoleArg::Plan => Role::Plan,
                    RoleArg::Action => Role::Action,
                    RoleArg::Worker => Role::Worker,
                })
                .collect()
        };
        let keyid = trust.add(&self.name, key, &roles)?;
        save_trust(&self.trust, &trust)?;
        let roles: Vec<_> = roles.iter().map(|r| r.as_str()).collect();
        out.emit(
            "signer",
            &serde_json::json!({ "keyid": keyid.to_string(), "name": self.name, "roles": roles, "trust": self.trust }),
            || format!("trusted {} as \"{}\" ({}) in {}", keyid, self.name, roles.join(", "), self.trust.display()),
        )?;
        Ok(ExitCode::SUCCESS)
    }
}

impl Rotate {
    fn execute(self, out: Out) -> Result<ExitCode> {
        let old: KeyId = self.old.parse().context("not a key id")?;
        let key = read_public_key(&self.to)?;
        let _lock = lock_trust(&self.trust)?;
        let mut trust = load_trust(&self.trust)?;
        if trust.is_revoked(&old) {
            anyhow::bail!("{old} is revoked: add the new key with `agx trust add` instead");
        }
        let now = super::now_unix();
        let until = now.saturating_add(self.overlap.as_secs());
        let new = trust.rotate(&old, key, now, until)?;
        save_trust(&self.trust, &trust)?;
        let name = trust.signer(&new).map(|s| s.name.clone()).unwrap_or_default();
        out.emit(
            "rotated",
            &serde_json::json!({ "old": old.to_string(), "new": new.to_string(), "name": name, "old_until": until, "trust": self.trust }),
            || format!("\"{name}\" is now {new}; {old} stays trusted until {until} (unix seconds)"),
        )?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Reads a public key file (PEM).
fn read_public_key(path: &Path) -> Result<agenix_proto::keys::VerifyingKey> {
    let pem = read_capped(path, 64 * 1024)?;
    let pem =
        String::from_utf8(pem).with_context(|| format!("{} is not a PEM file", path.display()))?;
    verifying_key_from_pem(&pem).with_context(|| format!("cannot use {}", path.display()))
}

impl Revoke {
    fn execute(self, out: Out) -> Result<ExitCode> {
        let keyid: KeyId = self.keyid.parse().context("not a key id")?;
        let _lock = lock_trust(&self.trust)?;
        let mut trust = load_trust(&self.trust)?;
        let name = trust.signer(&keyid).map(|s| s.name.clone());
        let newly = trust.revoke(keyid);
        if newly {
            save_trust(&self.trust, &trust)?;
        }
        out.emit(
            "revoked",
            &serde_json::json!({ "keyid": keyid.to_string(), "name": name, "already": !newly }),
            || match (&name, newly) {
                (_, false) => format!("{keyid} was already revoked"),
                (Some(n), true) => format!("revoked {keyid} (\"{n}\")"),
                (None, true) => format!(
                    "revoked {keyid} (not a signer in this file; it stays refused if added later)"
                ),
            },
        )?;
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Debug, Serialize)]
struct SignerRow {
    keyid: String,
    name: String,
    roles: Vec<&'static str>,
    revoked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_after: Option<u64>,
}

impl List {
    fn execute(self, out: Out) -> Result<ExitCode> {
        let trust = load_trust(&self.trust)?;
        let mut rows: Vec<SignerRow> = trust
            .signers()
            .map(|(id, s)| SignerRow {
                keyid: id.to_string(),
                name: s.name.clone(),
                roles: s.roles.iter().map(|r| r.as_str()).collect(),
                revoked: trust.is_revoked(id),
                not_before: s.not_before,
                not_after: s.not_after,
            })
            .collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        let orphans: Vec<String> = trust
            .revoked()
            .iter()
            .filter(|k| trust.signer(k).is_none())
            .map(ToString::to_string)
            .collect();
        if out.json {
            for r in &rows {
                out.emit("signer", r, String::new)?;
            }
            for k in &orphans {
                out.emit("revoked", &serde_json::json!({ "keyid": k }), String::new)?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        let mut text = String::new();
        if rows.is_empty() && orphans.is_empty() {
            text.push_str("no signers\n");
        }
        for r in &rows {
            let status = if r.revoked { "REVOKED" } else { "trusted" };
            let period = match (r.not_before, r.not_after) {
                (None, None) => String::new(),
                (b, a) => format!(
                    " from {} until {}",
                    b.map_or("any time".into(), |t| t.to_string()),
                    a.map_or("any time".into(), |t| t.to_string())
                ),
            };
            text.push_str(&format!(
                "{:<20} {} {:<7} {}{period}\n",
                r.name,
                r.keyid,
                status,
                r.roles.join(",")
            ));
        }
        for k in &orphans {
            text.push_str(&format!("{:<20} {} REVOKED\n", "(unknown)", k));
        }
        out.emit("signers", &rows, || text)?;
        Ok(ExitCode::SUCCESS)
    }
}
