//! The signers the queue accepts: its trust file, read again whenever it changes, so adding
//! a signer or revoking one takes effect at the next submission, without a restart. A file
//! that becomes unreadable or invalid refuses every submission, saying why, until it is
//! fixed (the last good reading is not kept: a broken trust file must not go unnoticed).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use agenix_proto::Trust;
use agenix_proto::trust::MAX_TRUST_BYTES;

/// Where the queue's trust comes from.
#[derive(Debug)]
pub struct TrustSource {
    file: Option<PathBuf>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Modification time and size of the file as last read.
    seen: Option<(SystemTime, u64)>,
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
        let stamp = std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
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
