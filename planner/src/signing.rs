//! What `agx plan sign`, `agx submit` and `agx run` share: telling a signed envelope from a
//! plan being written (once, here), reading a signer key, and signing a plan (check it,
//! lock its AU names to digests, set its id and validity).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use agenix_proto::envelope::{MAX_ENVELOPE_BYTES, sign_plan};
use agenix_proto::keys::{SigningKey, signing_key_from_pem};
use agenix_proto::plan::{MAX_LIFETIME_SECS, MAX_PLAN_BYTES};
use agenix_proto::{Digest, Envelope, Form, Limits, Plan, PlanId, Run};
use anyhow::{Context, Result, bail};
use zeroize::Zeroizing;

use crate::cmd::{now_unix, random16};
use crate::files::read_capped;
use crate::local::{StoreArg, lock};

/// A plan file as given on the command line.
#[derive(Debug)]
pub(crate) enum PlanFile {
    /// A signed envelope, exactly as read (whoever runs it verifies it).
    Signed(Vec<u8>),
    /// A plan to sign (parsed, not yet validated).
    Draft(Plan),
}

impl PlanFile {
    /// Reads `path` (at most an envelope's size) and tells which it holds: a JSON object
    /// with a `payloadType` is an envelope, anything else must be a plan.
    pub(crate) fn read(path: &Path) -> Result<Self> {
        let bytes = read_capped(path, MAX_ENVELOPE_BYTES as u64)?;
        let is_envelope = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .is_some_and(|v| v.get("payloadType").is_some());
        if is_envelope {
            Ok(Self::Signed(bytes))
        } else {
            load_plan_bytes(path, &bytes).map(Self::Draft)
        }
    }
}

/// Reads and parses a plan file; the result is not yet validated.
pub(crate) fn load_plan(path: &Path) -> Result<Plan> {
    let bytes = read_capped(path, MAX_PLAN_BYTES as u64)?;
    load_plan_bytes(path, &bytes)
}

/// Parses a plan read from `path`; the result is not yet validated.
fn load_plan_bytes(path: &Path, bytes: &[u8]) -> Result<Plan> {
    Plan::from_json(bytes).map_err(|inv| {
        let hint = if inv.violations().iter().any(|v| v.path == "payloadType") {
            " (this is a signed envelope: use `agx plan verify` or `agx plan show`)"
        } else {
            ""
        };
        anyhow::Error::new(inv).context(format!("{} is not a valid plan{hint}", path.display()))
    })
}

/// Reads a private key, refusing files that others can read (as ssh does).
pub(crate) fn load_key(path: &Path) -> Result<SigningKey> {
    let meta = fs::metadata(path).with_context(|| format!("cannot read key {}", path.display()))?;
    if !meta.is_file() {
        bail!(
            "key {} is not a file (a signer key is a PEM file from `agx keygen`)",
            path.display()
        );
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "key {} is accessible by others (mode {mode:o}); run chmod 600 on it",
            path.display()
        );
    }
    let pem = Zeroizing::new(read_capped(path, 64 * 1024)?);
    if pem.iter().all(u8::is_ascii_whitespace) {
        bail!("key {} is empty", path.display());
    }
    let pem = std::str::from_utf8(&pem)
        .with_context(|| format!("{} is not a PEM file", path.display()))?;
    signing_key_from_pem(pem).with_context(|| format!("cannot use key {}", path.display()))
}

/// A plan signed here.
#[derive(Debug)]
pub(crate) struct Signed {
    /// The envelope.
    pub(crate) envelope: Envelope,
    /// The plan as signed (locked, with its id and validity).
    pub(crate) plan: Plan,
    /// The sha256 of the signed payload: the plan's identity.
    pub(crate) digest: Digest,
    /// When it was signed (Unix seconds).
    pub(crate) issued_at: u64,
}

/// Checks `plan` (read from `path`) against every rule, locks its AU names from `store`,
/// gives it an id if it has none, makes it valid from now for `lifetime`, and signs it.
pub(crate) fn sign_draft(
    path: &Path,
    mut plan: Plan,
    key: &SigningKey,
    store: &StoreArg,
    lifetime: Duration,
) -> Result<Signed> {
    plan.validate(Form::Draft, &Limits::ABSOLUTE)
        .with_context(|| format!("{} is not a valid plan", path.display()))?;
    if plan.wasm_tasks().any(|(_, w)| w.digest.is_none()) {
        lock(&mut plan, &store.open()?)?;
    }
    let now = now_unix();
    plan.plan_id.get_or_insert(PlanId::from_random(random16()?));
    plan.issued_at = Some(now);
    plan.expires_at = Some(now + lifetime.as_secs());
    let envelope =
        sign_plan(&plan, key).with_context(|| format!("cannot sign {}", path.display()))?;
    let digest = Digest::of(&plan.to_payload());
    Ok(Signed { envelope, plan, digest, issued_at: now })
}

/// How many bytes `plan` would have once signed: its AU names locked to digests, an id
/// and a validity period set (each of a fixed width, so any stand-in gives the size).
pub(crate) fn signed_size(plan: &Plan) -> usize {
    let mut signed = plan.clone();
    for t in &mut signed.tasks {
        if let Run::Wasm(w) = &mut t.run {
            w.digest.get_or_insert(Digest::of(b""));
        }
    }
    signed.plan_id.get_or_insert(PlanId::from_random([0; 16]));
    let now = now_unix();
    signed.issued_at = Some(now);
    signed.expires_at = Some(now + MAX_LIFETIME_SECS);
    signed.to_payload().len()
}
