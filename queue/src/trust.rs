//! The signers and workers the queue accepts: its trust file, read again whenever it
//! changes, so adding a signer, enrolling a worker or revoking either takes effect at the
//! next submission or worker request, without a restart. A file that becomes unreadable or
//! invalid refuses every submission and worker request, saying why, until it is fixed (the
//! last good reading is not kept: a broken trust file must not go unnoticed).
//!
//! Edits made by `agq worker` hold `FILE.lock` beside the file and replace it atomically,
//! like `agx trust` does, so edits from both land.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use agenix_proto::Trust;
use agenix_proto::trust::MAX_TRUST_BYTES;

/// What identifies one version of a file: a file replaced (a new inode), rewritten (a new
/// change time, which no one can set back) or resized is read again, even with its
/// modification time kept.
type Stamp = (u64, u64, i64, i64, i64, i64, u64);

fn stamp(m: &std::fs::Metadata) -> Stamp {
    use std::os::unix::fs::MetadataExt as _;
    (m.dev(), m.ino(), m.ctime(), m.ctime_nsec(), m.mtime(), m.mtime_nsec(), m.len())
}

/// Where the queue's trust comes from.
#[derive(Debug)]
pub struct TrustSource {
    file: Option<PathBuf>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The file as last read: device, inode, change and modification times, size.
    seen: Option<Stamp>,
    /// How many times the file was read: a new reading, a new generation.
    generation: u64,
    trust: Result<Arc<Trust>, String>,
    /// The last reading that was valid.
    last_good: Option<Arc<Trust>>,
}

impl TrustSource {
    /// The trust file at `path`, read now: an error if it cannot be read or is invalid.
    pub fn file(path: PathBuf) -> Result<Self, String> {
        let source = Self {
            file: Some(path),
            state: Mutex::new(State {
                seen: None,
                generation: 0,
                trust: Err("not read yet".into()),
                last_good: None,
            }),
        };
        source.current()?;
        Ok(source)
    }

    /// A fixed trust, never re-read (for embedders and tests).
    pub fn fixed(trust: Trust) -> Self {
        let trust = Arc::new(trust);
        let state =
            State { seen: None, generation: 0, trust: Ok(trust.clone()), last_good: Some(trust) };
        Self { file: None, state: Mutex::new(state) }
    }

    /// The trust as the file says now.
    pub fn current(&self) -> Result<Arc<Trust>, String> {
        self.generation().1
    }

    /// What workers already enrolled are checked against: the file as it says now, or,
    /// while it cannot be read or is invalid, its last valid reading. A broken file can
    /// enroll or revoke nobody, and refusing every worker meanwhile would lose the results
    /// of the jobs they are running; so only submissions wait for it to be fixed.
    pub fn for_workers(&self) -> Result<Arc<Trust>, String> {
        let current = self.current();
        match current {
            Ok(t) => Ok(t),
            Err(e) => {
                let state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                state.last_good.clone().ok_or(e)
            }
        }
    }

    /// The trust as the file says now, and its generation (which changes whenever the file
    /// is read again).
    pub fn generation(&self) -> (u64, Result<Arc<Trust>, String>) {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(path) = &self.file else { return (state.generation, state.trust.clone()) };
        let stamp = std::fs::metadata(path).ok().map(|m| stamp(&m));
        if stamp.is_none() || stamp != state.seen {
            state.seen = stamp;
            state.generation += 1;
            state.trust = crate::read_capped(path, MAX_TRUST_BYTES as u64)
                .map_err(|e| format!("cannot read the queue's trust file {}: {e}", path.display()))
                .and_then(|bytes| {
                    Trust::from_json(&bytes).map(Arc::new).map_err(|e| {
                        format!("the queue's trust file {} is invalid: {e}", path.display())
                    })
                });
            if let Ok(t) = &state.trust {
                state.last_good = Some(t.clone());
            }
            match &state.trust {
                Ok(_) => tracing::info!(file = %path.display(), "trust file read"),
                Err(e) => tracing::warn!(
                    error = %e,
                    "submissions are refused until the trust file is fixed; workers are checked against its last valid reading"
                ),
            }
        }
        (state.generation, state.trust.clone())
    }
}

/// Changes the trust file at `path` with `change`, holding `FILE.lock` meanwhile (the lock
/// `agx trust` takes too), and replaces it atomically: readers see the old file or the new
/// one. Nothing is written when `change` fails.
pub fn edit<T>(
    path: &Path,
    change: impl FnOnce(&mut Trust) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    use anyhow::Context as _;
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock = std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&name)
        .with_context(|| format!("cannot open the lock {}", Path::new(&name).display()))?;
    lock.lock().with_context(|| format!("cannot lock {}", Path::new(&name).display()))?;
    let mut trust = load(path)?;
    let value = change(&mut trust)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".agq-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    tmp.write_all(&trust.to_json())
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path).map_or(0o644, |m| m.permissions().mode() & 0o7777);
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    tmp.persist(path).with_context(|| format!("cannot write {}", path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(value)
}

/// Reads and checks the trust file at `path`.
pub fn load(path: &Path) -> anyhow::Result<Trust> {
    let bytes = crate::read_capped(path, MAX_TRUST_BYTES as u64)
        .map_err(|e| anyhow::anyhow!("cannot read the trust file {}: {e}", path.display()))?;
    Trust::from_json(&bytes)
        .map_err(|e| anyhow::anyhow!("the trust file {} is invalid: {e}", path.display()))
}
