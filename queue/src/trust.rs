//! The signers the queue accepts: its trust file, read again whenever it changes, so adding
//! a signer or revoking one takes effect at the next submission, without a restart. A file
//! that becomes unreadable or invalid refuses every submission, saying why, until it is
//! fixed (the last good reading is not kept: a broken trust file must not go unnoticed).

use std::path::PathBuf;
use std::sync::Mutex;

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
    trust: Result<Trust, String>,
}

impl TrustSource {
    /// The trust file at `path`, read now: an error if it cannot be read or is invalid.
    pub fn file(path: PathBuf) -> Result<Self, String> {
        let source = Self {
            file: Some(path),
            state: Mutex::new(State { seen: None, trust: Err("not read yet".into()) }),
        };
        source.current()?;
        Ok(source)
    }

    /// A fixed trust, never re-read (for embedders and tests).
    pub fn fixed(trust: Trust) -> Self {
        Self { file: None, state: Mutex::new(State { seen: None, trust: Ok(trust) }) }
    }

    /// The trust as the file says now.
    pub fn current(&self) -> Result<Trust, String> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(path) = &self.file else { return state.trust.clone() };
        let stamp = std::fs::metadata(path).ok().map(|m| stamp(&m));
        if stamp.is_none() || stamp != state.seen {
            state.seen = stamp;
            state.trust = crate::read_capped(path, MAX_TRUST_BYTES as u64)
                .map_err(|e| format!("cannot read the queue's trust file {}: {e}", path.display()))
                .and_then(|bytes| {
                    Trust::from_json(&bytes).map_err(|e| {
                        format!("the queue's trust file {} is invalid: {e}", path.display())
                    })
                });
            match &state.trust {
                Ok(_) => tracing::info!(file = %path.display(), "trust file read"),
                Err(e) => {
                    tracing::warn!(error = %e, "submissions are refused until the trust file is fixed")
                }
            }
        }
        state.trust.clone()
    }
}
