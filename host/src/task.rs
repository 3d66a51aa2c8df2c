//! The sandbox contract both sandboxes share: one task spec ([`Task`]), its one check of
//! arguments and environment ([`Task::check`]), one result ([`Finished`]) and one error
//! ([`HostError`]). Wasm and native differ only in what names the program: an AU's
//! `argv[0]` ([`WasmTask`]) or an allowlisted tool ([`NativeTask`]).

use std::time::Duration;

use agenix_proto::plan::MAX_ARG_BYTES;
use agenix_proto::{Limits, Outcome, TaskId, TaskReport, ToolName};
use bytes::Bytes;

use crate::Grant;
use crate::report::{Captured, report};

/// One task for a sandbox, resolved: grants are operator directories, limits are final.
#[derive(Debug, Clone)]
pub struct Task<P> {
    /// What runs: `argv[0]` for an AU, the allowlisted tool for the jail.
    pub program: P,
    /// The arguments after it.
    pub args: Vec<String>,
    /// The environment the plan names (the jail adds a fixed PATH and LANG).
    pub env: Vec<(String, String)>,
    /// Everything on stdin.
    pub stdin: Bytes,
    /// Directories granted.
    pub grants: Vec<Grant>,
    /// The limits it runs under.
    pub limits: Limits,
    /// Whether it has a private, writable `/tmp` of up to `limits.file_bytes`.
    pub scratch: bool,
}

/// A task for the wasm sandbox: the program is the AU's `argv[0]` (usually its name).
pub type WasmTask = Task<String>;
/// A task for the native jail: the program is an allowlisted tool.
pub type NativeTask = Task<ToolName>;

impl<P> Task<P> {
    /// The one check of what a task passes to its program, as the plan validator states it
    /// (rules `args` and `env` of plan v1): no NUL byte (it would cut the string short in
    /// the program), no argument over [`MAX_ARG_BYTES`]. A verified plan already passed it;
    /// the sandboxes check again because they also run work that was never signed.
    pub fn check(&self) -> Result<(), String> {
        for a in &self.args {
            if a.contains('\0') {
                return Err("an argument contains a NUL byte".into());
            }
            if a.len() > MAX_ARG_BYTES {
                return Err(format!("an argument is over {MAX_ARG_BYTES} bytes"));
            }
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains(['=', '\0']) {
                return Err(format!("{k:?} is not an environment variable name"));
            }
            if v.contains('\0') {
                return Err(format!("the environment variable {k} contains a NUL byte"));
            }
        }
        Ok(())
    }
}

/// What a sandbox run produced.
#[derive(Debug, Clone)]
pub struct Finished {
    /// How it ended.
    pub outcome: Outcome,
    /// Its stdout, up to the output limit.
    pub stdout: Bytes,
    /// Its stderr, up to the output limit.
    pub stderr: Bytes,
    /// Fuel consumed (wasm only: the jail has no fuel).
    pub fuel_consumed: Option<u64>,
    /// Wall-clock time, including setup.
    pub wall: Duration,
    /// Its peak memory, in bytes.
    pub peak_memory: u64,
    /// How long building its jail took, up to the tool's start (native tasks that ran).
    pub setup: Option<Duration>,
}

impl Finished {
    /// A task refused before it ran.
    pub fn refused(reason: String, wall: Duration) -> Self {
        Self {
            outcome: Outcome::Refused { reason },
            stdout: Bytes::new(),
            stderr: Bytes::new(),
            fuel_consumed: None,
            wall,
            peak_memory: 0,
            setup: None,
        }
    }

    /// The report of this run for task `id`.
    pub fn report(&self, id: TaskId) -> TaskReport {
        report(
            id,
            Captured {
                outcome: &self.outcome,
                stdout: &self.stdout,
                stderr: &self.stderr,
                fuel_consumed: self.fuel_consumed,
                wall: self.wall,
                peak_memory: self.peak_memory,
            },
        )
    }
}

/// The host itself failed (not the guest or the tool): the task's result is unknown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// Setting up the engine failed.
    #[error("cannot start the wasm engine: {0}")]
    Engine(String),
    /// A file-system operation of the host failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A wasmtime operation that should not fail did.
    #[error("wasm runtime: {0}")]
    Runtime(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(args: &[&str], env: &[(&str, &str)]) -> WasmTask {
        Task {
            program: "p".into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            stdin: Bytes::new(),
            grants: vec![],
            limits: Limits::DEFAULT,
            scratch: true,
        }
    }

    #[test]
    fn arguments_and_environment_are_checked_once_for_both_sandboxes() {
        assert_eq!(task(&["a", "b"], &[("K", "v")]).check(), Ok(()));
        assert_eq!(task(&["a\0b"], &[]).check(), Err("an argument contains a NUL byte".into()));
        let long = "x".repeat(MAX_ARG_BYTES + 1);
        assert!(task(&[&long], &[]).check().is_err());
        assert!(task(&["x".repeat(MAX_ARG_BYTES).as_str()], &[]).check().is_ok());
        assert!(task(&[], &[("A=B", "v")]).check().is_err());
        assert!(task(&[], &[("", "v")]).check().is_err());
        assert!(task(&[], &[("K", "v\0")]).check().is_err());
    }
}
