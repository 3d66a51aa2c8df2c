//! `agx keygen`: a new ed25519 signer key pair.

use std::path::PathBuf;
use std::process::ExitCode;

use agenix_proto::KeyId;
use agenix_proto::keys::{signing_key_from_seed, signing_key_to_pem, verifying_key_to_pem};
use anyhow::{Context, Result, bail};
use zeroize::Zeroizing;

use crate::files::{Existing, write_atomic};
use crate::output::Out;

/// Write a private key to FILE (mode 0600) and its public key to FILE.pub, and print the key id.
#[derive(Debug, clap::Args)]
pub(crate) struct Keygen {
    /// Where to write the private key; the public key goes to FILE.pub.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Replace existing key files.
    #[arg(long)]
    force: bool,
}

impl Keygen {
    pub(crate) fn execute(self, out: Out) -> Result<ExitCode> {
        let mut pub_path = self.out.clone().into_os_string();
        pub_path.push(".pub");
        let pub_path = PathBuf::from(pub_path);
        let existing = if self.force { Existing::Replace } else { Existing::Keep };
        if existing == Existing::Keep {
            for p in [&self.out, &pub_path] {
                if p.exists() {
                    bail!("{} already exists (pass --force to replace it)", p.display());
                }
            }
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut())
            .map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
        let key = signing_key_from_seed(&seed);
        let private_pem = signing_key_to_pem(&key).context("cannot encode the private key")?;
        let public_pem =
            verifying_key_to_pem(&key.verifying_key()).context("cannot encode the public key")?;
        write_atomic(&self.out, private_pem.as_bytes(), 0o600, existing)?;
        write_atomic(&pub_path, public_pem.as_bytes(), 0o644, existing)?;
        let keyid = KeyId::of(&key.verifying_key());
        out.emit(
            "key",
            &serde_json::json!({
                "keyid": keyid.to_string(),
                "private": self.out.display().to_string(),
                "public": pub_path.display().to_string(),
            }),
            || {
                format!(
                    "{keyid}\nprivate key: {} (keep it secret)\npublic key:  {}",
                    self.out.display(),
                    pub_path.display()
                )
            },
        )?;
        Ok(ExitCode::SUCCESS)
    }
}
