//! What agx prints: lines for people, or JSON Lines for scripts.
//!
//! With `--json`, every record on stdout is one line `{"type": KIND, "data": {...}}`; errors
//! are `{"type": "error", "data": {"message": ..., "violations": [...]}}`, also on stdout, so
//! a script reads one stream. Without `--json`, results go to stdout and errors to stderr.
//!
//! A closed stdout (`agx ... | head`) ends a command with [`STDOUT_CLOSED`], never 0: what
//! was dropped was never shown, so it must not look like success.

use std::io::{self, Write};

use serde::Serialize;

/// The exit code when stdout was closed before everything was written to it: 141, what a
/// shell reports for a process its reader cut off with SIGPIPE (128 + 13), so pipelines,
/// `set -o pipefail` and scripts that already expect it treat agx like any Unix tool. agx
/// exits with it rather than dying by the signal so that it can still say, on stderr, how
/// the run went. No other agx exit code is 141 (an AU's own exit code, which `agx au run`
/// mirrors, can be anything, as with 124 and 125).
pub(crate) const STDOUT_CLOSED: u8 = 141;

/// Whether `e` says the reader of the pipe went away.
pub(crate) fn is_broken_pipe(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

/// Where results go, and in which shape.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Out {
    pub(crate) json: bool,
}

impl Out {
    /// Prints one result: `human` for people, `data` as a `kind` record for scripts.
    pub(crate) fn emit<T: Serialize>(
        &self,
        kind: &str,
        data: &T,
        human: impl FnOnce() -> String,
    ) -> io::Result<()> {
        let mut stdout = io::stdout().lock();
        if self.json {
            let line = serde_json::to_string(&Record { kind, data }).map_err(io::Error::other)?;
            writeln!(stdout, "{line}")
        } else {
            let text = human();
            if text.ends_with('\n') {
                stdout.write_all(text.as_bytes())
            } else {
                writeln!(stdout, "{text}")
            }
        }
    }
}

/// One JSON Lines record: `type` first, then `data`.
#[derive(Serialize)]
pub(crate) struct Record<'a, T: Serialize> {
    #[serde(rename = "type")]
    pub(crate) kind: &'a str,
    pub(crate) data: &'a T,
}

/// An error that ends agx with its own exit code instead of 1, reported like any other.
#[derive(Debug)]
pub(crate) struct Coded {
    /// The exit code.
    pub(crate) code: u8,
    /// What went wrong, for people.
    pub(crate) message: String,
}

impl std::fmt::Display for Coded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Coded {}
