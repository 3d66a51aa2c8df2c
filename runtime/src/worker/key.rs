//! The worker's own key: how it proves who it is to the queue (in the TLS handshake).
//!
//! `agw init --data DIR` makes DIR (0700) with:
//!
//! ```text
//! worker.key   the ed25519 private key (PKCS#8 PEM, RFC 8410 form, 0600)
//! worker.pub   its public key (SPKI PEM): what `agq worker enroll` takes
//! ```
//!
//! The key id (`sha256:` of the raw public key) names the worker in the queue's trust file,
//! in its logs and in every refusal.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use agenix_proto::KeyId;
use agenix_proto::keys::{
    SigningKey, signing_key_from_pem, signing_key_from_seed, signing_key_to_pem,
    verifying_key_to_pem,
};
use anyhow::{Context as _, Result, bail};

use crate::files::read_small;

/// The private key's file name in the worker's directory.
pub const KEY_FILE: &str = "worker.key";
/// The public key's file name in the worker's directory.
pub const PUB_FILE: &str = "worker.pub";
/// Most bytes of a key file.
const MAX_KEY_BYTES: u64 = 16 << 10;

/// Makes the worker's directory and key; refuses a directory that already has one.
pub fn init(dir: &Path) -> Result<KeyId> {
    let key_path = dir.join(KEY_FILE);
    if key_path.exists() {
        bail!(
            "{} already holds a worker key (its id: agw id --data {})",
            dir.display(),
            dir.display()
        );
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut()).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let key = signing_key_from_seed(&seed);
    let public = verifying_key_to_pem(&key.verifying_key())?;
    let private = signing_key_to_pem(&key)?;
    // The public key first: a directory with a private key always has its public half.
    write_new(&dir.join(PUB_FILE), public.as_bytes(), 0o644)?;
    write_new(&key_path, private.as_bytes(), 0o600)?;
    Ok(KeyId::of(&key.verifying_key()))
}

/// Reads the worker's key from its directory, refusing a key file others may read.
pub fn load(dir: &Path) -> Result<SigningKey> {
    let path = dir.join(KEY_FILE);
    let meta = std::fs::metadata(&path).with_context(|| {
        format!("cannot read the worker key {} (make one with agw init)", path.display())
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "the worker key {} may be read by others (mode {mode:o}): chmod 600 it",
            path.display()
        );
    }
    let pem = zeroize::Zeroizing::new(
        read_small(&path, MAX_KEY_BYTES)
            .with_context(|| format!("cannot read the worker key {}", path.display()))?,
    );
    signing_key_from_pem(&pem).with_context(|| format!("{} is not a worker key", path.display()))
}

/// The key file in `dir`.
pub fn key_path(dir: &Path) -> PathBuf {
    dir.join(KEY_FILE)
}

/// Writes a file that must not exist yet, synced, with `mode`.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_loads_and_a_second_init_or_a_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("w");
        let id = init(&at).unwrap();
        let key = load(&at).unwrap();
        assert_eq!(KeyId::of(&key.verifying_key()), id);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&at), 0o700);
        assert_eq!(mode(&at.join(KEY_FILE)), 0o600);
        let pem = std::fs::read_to_string(at.join(PUB_FILE)).unwrap();
        let public = agenix_proto::keys::verifying_key_from_pem(&pem).unwrap();
        assert_eq!(KeyId::of(&public), id);
        let again = init(&at).unwrap_err().to_string();
        assert!(again.contains("already holds a worker key"), "{again}");
        std::fs::set_permissions(at.join(KEY_FILE), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        let err = load(&at).unwrap_err().to_string();
        assert!(err.contains("may be read by others (mode 640)"), "{err}");
        let none = load(dir.path()).unwrap_err().to_string();
        assert!(none.contains("make one with agw init"), "{none}");
    }
}
