//! `agx trust add|revoke|list`: edit and read a trust file.

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
    Add(Add),
    /// Revoke a key id: nothing it signed is accepted any more.
    Revoke(Revoke),
    /// List signers and revoked keys.
    List(List),
}

impl TrustCommand {
    pub(crate) fn execute(self, out: Out) -> Result<ExitCode> {
        match self {
            Self::Add(c) => c.execute(out),
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
    /// What the signer may sign; repeat for both (default: plan and action).
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

impl Add {
    fn execute(self, out: Out) -> Result<ExitCode> {
        let pem = read_capped(&self.key, 64 * 1024)?;
        let pem = String::from_utf8(pem)
            .with_context(|| format!("{} is not a PEM file", self.key.display()))?;
        let key = verifying_key_from_pem(&pem)
            .with_context(|| format!("cannot use {}", self.key.display()))?;
        let mut trust = if self.trust.exists() { load_trust(&self.trust)? } else { Trust::new() };
        let roles: Vec<Role> = if self.roles.is_empty() {
            Role::ALL.to_vec()
        } else {
            self.roles
                .iter()
                .map(|r| match r {
                    RoleArg::Plan => Role::Plan,
                    RoleArg::Action => Role::Action,
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

impl Revoke {
    fn execute(self, out: Out) -> Result<ExitCode> {
        let keyid: KeyId = self.keyid.parse().context("not a key id")?;
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
            text.push_str(&format!(
                "{:<20} {} {:<7} {}\n",
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
