//! Precompiled components on disk, keyed by component digest and engine compatibility hash.
//!
//! Only artifacts this host compiled itself are ever loaded, and only from this directory:
//! never from the network, never from a path a user or plan names. Each file carries the
//! sha256 of its artifact, checked before deserializing, so a torn or corrupted file is
//! recompiled rather than trusted.
//!
//! The cache is bounded by bytes: the sizes of the artifacts in every engine directory under
//! the root count together, and after each store the least recently used go (a file's mtime,
//! which this host sets whenever it uses an artifact, says when that was), so artifacts of an
//! engine no longer in use age out first. Only complete artifacts are ever evicted: they are
//! written to a temporary file that is renamed into place, and a temporary file is removed
//! only when it is over an hour old and no writer holds its lock (a crashed writer's). The
//! sweep never follows a symlink: each engine directory is opened with `O_NOFOLLOW` and
//! checked to be this user's, and everything in it is examined and unlinked through that
//! descriptor. Other processes may share the directory: each sweep works from what is on disk
//! then, so the budget holds after every sweep, give or take what writers add meanwhile.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agenix_proto::Digest;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::UnlinkatFlags;
use wasmtime::Engine;
use wasmtime::component::Component;

/// Bytes before the artifact in each file: the artifact's sha256.
const CHECKSUM_BYTES: u64 = 32;
/// What the temporary files of `store` are called, before their random part.
const TEMP_PREFIX: &str = ".cwasm-";
/// How old a temporary file must be, and unlocked, before a sweep takes it for a crashed
/// writer's and removes it.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// The on-disk artifact cache of one engine configuration.
#[derive(Debug, Clone)]
pub(crate) struct ArtifactCache {
    root: PathBuf,
    dir: PathBuf,
    budget: u64,
}

/// One complete artifact found by a sweep.
struct Found {
    dir: Arc<fs::File>,
    name: OsString,
    len: u64,
    mtime: (i64, i64),
}

fn me() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Whether `name` is an engine directory's: `wasmtime-` and 16 hex digits.
fn is_engine_dir(name: &OsStr) -> bool {
    name.to_str()
        .and_then(|n| n.strip_prefix("wasmtime-"))
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether `name` is a complete artifact's: 64 hex digits and `.cwasm`.
fn is_artifact(name: &OsStr) -> bool {
    name.to_str()
        .and_then(|n| n.strip_suffix(".cwasm"))
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_temp(name: &OsStr) -> bool {
    name.to_str().is_some_and(|n| n.starts_with(TEMP_PREFIX))
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// Marks an artifact as used now (its mtime), through a descriptor already open.
fn touch_file(file: &fs::File) {
    if let Err(e) = nix::sys::stat::futimens(file, &TimeSpec::UTIME_OMIT, &TimeSpec::UTIME_NOW) {
        tracing::debug!(error = %e, "cannot mark the artifact as used");
    }
}

impl ArtifactCache {
    /// Opens (creating, mode 0700) `root/<engine hash>/`, keeping at most `budget` bytes of
    /// artifacts under `root`. Refuses directories that are symlinks, that another user owns,
    /// or that others may write: whoever can write here could make this process run native
    /// code of their choosing.
    pub(crate) fn open(root: &Path, engine: &Engine, budget: u64) -> std::io::Result<Self> {
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let dir = root.join(format!("wasmtime-{:016x}", h.finish()));
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        for d in [root, dir.as_path()] {
            let meta = fs::symlink_metadata(d)?;
            let me = me();
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
        Ok(Self { root: root.to_path_buf(), dir, budget })
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{}.cwasm", digest.hex()))
    }

    /// Loads the artifact for `digest`, if present and intact, and marks it as used.
    pub(crate) fn load(&self, engine: &Engine, digest: &Digest) -> Option<Component> {
        let path = self.path(digest);
        let mut file =
            fs::File::options().read(true).custom_flags(libc::O_NOFOLLOW).open(&path).ok()?;
        let meta = file.metadata().ok()?;
        if !meta.is_file() || meta.uid() != me() {
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
            Ok(c) => {
                touch_file(&file);
                Some(c)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "unusable artifact; recompiling");
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Marks the artifact for `digest` as used now, if there is one (for a component used
    /// from memory, so that its artifact does not age out of the disk meanwhile).
    pub(crate) fn touch(&self, digest: &Digest) {
        let path = self.path(digest);
        let Ok(file) = fs::File::options().read(true).custom_flags(libc::O_NOFOLLOW).open(&path)
        else {
            return;
        };
        if file.metadata().is_ok_and(|m| m.is_file() && m.uid() == me()) {
            touch_file(&file);
        }
    }

    /// Stores the artifact for `digest` (temporary file, locked while written, fsync,
    /// rename). An artifact larger than the whole budget is not stored: `Ok(false)`.
    pub(crate) fn store(&self, digest: &Digest, artifact: &[u8]) -> std::io::Result<bool> {
        if (artifact.len() as u64).saturating_add(CHECKSUM_BYTES) > self.budget {
            return Ok(false);
        }
        let mut tmp = tempfile::Builder::new().prefix(TEMP_PREFIX).tempfile_in(&self.dir)?;
        // Held until `tmp`'s file is dropped, after the rename: a sweep never removes a
        // temporary file whose lock it cannot take.
        tmp.as_file().lock()?;
        tmp.write_all(Digest::of(artifact).as_bytes())?;
        tmp.write_all(artifact)?;
        tmp.as_file().sync_all()?;
        tmp.persist(self.path(digest)).map_err(|e| e.error)?;
        Ok(true)
    }

    /// The bytes of artifacts under the root, counted as a sweep counts them.
    pub(crate) fn bytes(&self) -> std::io::Result<u64> {
        Ok(self.scan(None)?.iter().map(|f| f.len).sum())
    }

    /// Evicts the least recently used artifacts under the root until they fit the budget, and
    /// removes temporary files that crashed writers left behind. Returns the bytes left.
    pub(crate) fn sweep(&self) -> std::io::Result<u64> {
        let mut found = self.scan(Some(SystemTime::now()))?;
        let mut total: u64 = found.iter().map(|f| f.len).sum();
        if total <= self.budget {
            return Ok(total);
        }
        found.sort_by(|a, b| (a.mtime, &a.name).cmp(&(b.mtime, &b.name)));
        for f in found {
            if total <= self.budget {
                break;
            }
            match nix::unistd::unlinkat(
                f.dir.as_fd(),
                f.name.as_os_str(),
                UnlinkatFlags::NoRemoveDir,
            ) {
                // Gone already: another process's sweep, or a damaged artifact removed.
                Ok(()) | Err(nix::errno::Errno::ENOENT) => total = total.saturating_sub(f.len),
                Err(e) => tracing::warn!(name = ?f.name, error = %e, "cannot evict an artifact"),
            }
        }
        tracing::debug!(bytes = total, budget = self.budget, "artifact cache swept");
        Ok(total)
    }

    /// Every complete artifact in every engine directory under the root. With `now`, also
    /// removes stale temporary files.
    fn scan(&self, now: Option<SystemTime>) -> std::io::Result<Vec<Found>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            let name = entry?.file_name();
            if !is_engine_dir(&name) {
                continue;
            }
            let path = self.root.join(&name);
            let Ok(dir) = fs::File::options()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
            else {
                continue;
            };
            if !dir.metadata().is_ok_and(|m| m.is_dir() && m.uid() == me()) {
                tracing::warn!(path = %path.display(), "not a directory of this user; leaving it alone");
                continue;
            }
            let dir = Arc::new(dir);
            // Names are read through the path, but everything done to them goes through the
            // descriptor checked above.
            let Ok(entries) = fs::read_dir(&path) else { continue };
            for e in entries.flatten() {
                let name = e.file_name();
                let (artifact, temp) = (is_artifact(&name), is_temp(&name));
                if !artifact && !temp {
                    continue;
                }
                let Ok(st) = nix::sys::stat::fstatat(
                    dir.as_fd(),
                    name.as_os_str(),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                ) else {
                    continue;
                };
                if kind(&st) != SFlag::S_IFREG {
                    continue;
                }
                let mtime = (st.st_mtime, st.st_mtime_nsec);
                if artifact {
                    let len = u64::try_from(st.st_size).unwrap_or(0);
                    found.push(Found { dir: dir.clone(), name, len, mtime });
                } else if let Some(now) = now
                    && is_stale(mtime, now)
                {
                    remove_stale_temp(&dir, &name, &st, now);
                }
            }
        }
        Ok(found)
    }
}

fn is_stale((secs, _): (i64, i64), now: SystemTime) -> bool {
    let Ok(now) = now.duration_since(SystemTime::UNIX_EPOCH) else { return false };
    let age = i64::try_from(now.as_secs()).unwrap_or(i64::MAX).saturating_sub(secs);
    age > STALE_TEMP.as_secs() as i64
}

/// Removes a temporary file a writer abandoned: only if its lock can be taken (a writer holds
/// it from creation until after the rename) and it is still the same old file.
fn remove_stale_temp(dir: &fs::File, name: &OsStr, seen: &FileStat, now: SystemTime) {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let Ok(fd) = nix::fcntl::openat(dir.as_fd(), name, flags, Mode::empty()) else { return };
    let file = fs::File::from(fd);
    if file.try_lock().is_err() {
        return;
    }
    let Ok(st) = nix::sys::stat::fstat(&file) else { return };
    if st.st_ino != seen.st_ino
        || kind(&st) != SFlag::S_IFREG
        || !is_stale((st.st_mtime, st.st_mtime_nsec), now)
    {
        return;
    }
    match nix::unistd::unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => tracing::info!(?name, "removed an abandoned temporary artifact"),
        Err(e) => {
            tracing::debug!(?name, error = %e, "cannot remove an abandoned temporary artifact")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_recognised_strictly() {
        let hex = "ab".repeat(32);
        assert!(is_artifact(OsStr::new(&format!("{hex}.cwasm"))));
        for bad in [
            format!("{hex}.cwasm.bak"),
            format!("{}.cwasm", &hex[1..]),
            format!("{}g.cwasm", &hex[1..]),
            ".cwasm-abc123".to_string(),
            "x.cwasm".to_string(),
        ] {
            assert!(!is_artifact(OsStr::new(&bad)), "{bad}");
        }
        assert!(is_temp(OsStr::new(".cwasm-Xy12ab")));
        assert!(is_engine_dir(OsStr::new("wasmtime-0123456789abcdef")));
        assert!(!is_engine_dir(OsStr::new("wasmtime-0123")));
        assert!(!is_engine_dir(OsStr::new("other")));
    }

    #[test]
    fn a_temporary_file_is_stale_only_after_an_hour() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(!is_stale((1_000_000 - 60, 0), now));
        assert!(!is_stale((1_000_000 + 60, 0), now), "a clock step back is not age");
        assert!(is_stale((1_000_000 - 3601, 0), now));
    }
}
