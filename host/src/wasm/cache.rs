//! Precompiled components on disk, keyed by component digest and engine compatibility hash.
//!
//! Only artifacts this host compiled itself are ever loaded, and only from this directory:
//! never from the network, never from a path a user or plan names. Each file carries the
//! sha256 of its artifact, checked before deserializing, so a torn or corrupted file is
//! recompiled rather than trusted.

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use agenix_proto::Digest;
use wasmtime::Engine;
use wasmtime::component::Component;

/// The on-disk artifact cache of one engine configuration.
#[derive(Debug, Clone)]
pub(crate) struct ArtifactCache {
    dir: PathBuf,
}

impl ArtifactCache {
    /// Opens (creating, mode 0700) `root/<engine hash>/`. Refuses directories that are
    /// symlinks, that another user owns, or that others may write: whoever can write here
    /// could make this process run native code of their choosing.
    pub(crate) fn open(root: &Path, engine: &Engine) -> std::io::Result<Self> {
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let dir = root.join(format!("wasmtime-{:016x}", h.finish()));
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        for d in [root, dir.as_path()] {
            let meta = fs::symlink_metadata(d)?;
            let me = nix::unistd::geteuid().as_raw();
            if !meta.is_dir() || meta.uid() != me {
                return Err(std::io::Error::other(format!(
                    "{} is not a directory owned by this user (uid {me})",
                    d.display()
                )));
            }
            if meta.mode() & 0o022 != 0 {
                fs::set_permissions(d, fs::Permissions::from_mode(0o700))?;
            }
        }
        Ok(Self { dir })
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{}.cwasm", digest.hex()))
    }

    /// Loads the artifact for `digest`, if present and intact.
    pub(crate) fn load(&self, engine: &Engine, digest: &Digest) -> Option<Component> {
        let path = self.path(digest);
        let mut file =
            fs::File::options().read(true).custom_flags(libc::O_NOFOLLOW).open(&path).ok()?;
        let meta = file.metadata().ok()?;
        if !meta.is_file() || meta.uid() != nix::unistd::geteuid().as_raw() {
            tracing::warn!(path = %path.display(), "artifact not owned by this user; ignoring it");
            return None;
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes).ok()?;
        if bytes.len() < 32 || Digest::of(&bytes[32..]).as_bytes()[..] != bytes[..32] {
            tracing::warn!(path = %path.display(), "damaged precompiled artifact; recompiling");
            let _ = fs::remove_file(&path);
            return None;
        }
        // SAFETY: these bytes are an artifact this process family produced with
        // `Component::serialize` for an engine with the same compatibility hash (it names the
        // directory), read without following symlinks from a regular file this user owns in a
        // directory only this user may write (checked in `open`), and their checksum matches.
        // wasmtime additionally checks the artifact header against this engine's configuration.
        #[allow(unsafe_code, reason = "deserializing our own precompiled artifact")]
        let loaded = unsafe { Component::deserialize(engine, &bytes[32..]) };
        match loaded {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "unusable artifact; recompiling");
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores the artifact for `digest` (temporary file, fsync, rename).
    pub(crate) fn store(&self, digest: &Digest, artifact: &[u8]) -> std::io::Result<()> {
        let mut tmp = tempfile::Builder::new().prefix(".cwasm-").tempfile_in(&self.dir)?;
        tmp.write_all(Digest::of(artifact).as_bytes())?;
        tmp.write_all(artifact)?;
        tmp.as_file().sync_all()?;
        tmp.persist(self.path(digest)).map_err(|e| e.error)?;
        Ok(())
    }
}
