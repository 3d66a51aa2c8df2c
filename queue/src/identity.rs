//! The queue's identity (TLS key and self-signed certificate) and its role tokens.
//!
//! `agq init --data DIR` makes DIR (0700) with:
//!
//! ```text
//! identity.key      the TLS private key (PKCS#8 PEM, 0600)
//! identity.crt      its self-signed certificate (PEM)
//! planner.token     the planner and observer roles' tokens, to hand to clients (0600)
//! observer.token
//! tokens.json       what the queue checks: the sha256 of each role's token
//! trust.json        the signers whose plans and actions it accepts, and the enrolled
//!                   workers (empty at first)
//! ```
//!
//! Workers have no token: each authenticates with its own key in the TLS handshake, and
//! the queue accepts the keys enrolled in its trust file (`agq worker enroll`).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use agenix_proto::Fingerprint;
use agenix_proto::digest::Digest;
use agenix_proto::wire::ClientRole;
use anyhow::{Context, Result, bail};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use subtle::ConstantTimeEq;

/// What the queue checks tokens against: the sha256 of each role's token.
#[derive(Debug, Clone)]
pub struct Tokens {
    hashes: BTreeMap<ClientRole, Digest>,
}

/// The roles that authenticate with a token.
pub const TOKEN_ROLES: [ClientRole; 2] = [ClientRole::Planner, ClientRole::Observer];

impl Tokens {
    /// Whether `token` is `role`'s (compared in constant time). A worker has no token.
    pub fn role_of(&self, role: ClientRole, token: &str) -> bool {
        if !TOKEN_ROLES.contains(&role) {
            return false;
        }
        let Some(expected) = self.hashes.get(&role) else { return false };
        bool::from(Digest::of(token.as_bytes()).as_bytes().ct_eq(expected.as_bytes()))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn new_token() -> Result<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(format!("agq_{}", hex::encode(b)))
}

fn write_tokens_json(dir: &Path, hashes: &BTreeMap<ClientRole, Digest>) -> Result<()> {
    let map: BTreeMap<&str, String> =
        hashes.iter().map(|(r, d)| (r.as_str(), d.to_string())).collect();
    write_private(&dir.join("tokens.json"), &serde_json::to_vec_pretty(&map)?)
}

/// Creates a new queue directory; refuses one that is already initialized.
pub fn init(dir: &Path) -> Result<Fingerprint> {
    if dir.join("identity.key").exists() {
        bail!(
            "{} is already initialized (its fingerprint: agq fingerprint --data {})",
            dir.display(),
            dir.display()
        );
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .context("cannot generate the identity key")?;
    let params = rcgen::CertificateParams::new(vec!["agenix-queue".to_string()])
        .context("certificate parameters")?;
    let cert = params.self_signed(&key).context("cannot sign the identity certificate")?;
    write_private(&dir.join("identity.key"), key.serialize_pem().as_bytes())?;
    fs::write(dir.join("identity.crt"), cert.pem())?;
    let mut hashes = BTreeMap::new();
    for role in TOKEN_ROLES {
        let token = new_token()?;
        write_private(
            &dir.join(format!("{}.token", role.as_str())),
            format!("{token}\n").as_bytes(),
        )?;
        hashes.insert(role, Digest::of(token.as_bytes()));
    }
    write_tokens_json(dir, &hashes)?;
    let trust = dir.join("trust.json");
    if !trust.exists() {
        fs::write(&trust, agenix_proto::Trust::new().to_json())?;
    }
    fingerprint(dir)
}

/// Replaces `role`'s token: a new token file, a new hash; the old token stops working.
pub fn rotate(dir: &Path, role: ClientRole) -> Result<()> {
    if !TOKEN_ROLES.contains(&role) {
        bail!(
            "workers have no token: each authenticates with its own key (agq worker enroll, \
             agq worker revoke)"
        );
    }
    let mut tokens = load_tokens(dir)?;
    let token = new_token()?;
    write_private(&dir.join(format!("{}.token", role.as_str())), format!("{token}\n").as_bytes())?;
    tokens.hashes.insert(role, Digest::of(token.as_bytes()));
    write_tokens_json(dir, &tokens.hashes)
}

/// The token hashes.
pub fn load_tokens(dir: &Path) -> Result<Tokens> {
    let path = dir.join("tokens.json");
    let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let map: BTreeMap<String, Digest> =
        serde_json::from_slice(&bytes).with_context(|| format!("{} is invalid", path.display()))?;
    let mut hashes = BTreeMap::new();
    for (role, d) in map {
        let role = role.parse::<ClientRole>().map_err(anyhow::Error::msg)?;
        // A worker token left by an older queue directory is never accepted.
        if TOKEN_ROLES.contains(&role) {
            hashes.insert(role, d);
        }
    }
    Ok(Tokens { hashes })
}

/// The certificate and key.
pub fn load_identity(dir: &Path) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
    let cert = CertificateDer::from_pem_file(dir.join("identity.crt"))
        .context("cannot read identity.crt")?;
    let key = PrivateKeyDer::from_pem_file(dir.join("identity.key"))
        .context("cannot read identity.key")?;
    Ok((cert, key))
}

/// The identity key, for signing (the audit log's checkpoints).
pub fn signing_key(dir: &Path) -> Result<agenix_proto::keys::SigningKey> {
    let pem = fs::read_to_string(dir.join("identity.key")).context("cannot read identity.key")?;
    agenix_proto::keys::signing_key_from_pem(&pem).context("identity.key")
}

/// The queue's fingerprint: the sha256 of its public key.
pub fn fingerprint(dir: &Path) -> Result<Fingerprint> {
    let (cert, _) = load_identity(dir)?;
    Ok(agenix_link::fingerprint_of(&cert)?)
}
