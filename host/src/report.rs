//! Building the shared task report from what a sandbox captured.

use std::time::Duration;

use agenix_proto::{Digest, Outcome, TaskId, TaskReport};

use crate::output::sanitize_stderr;

/// What any sandbox captured about one run.
#[derive(Debug, Clone, Copy)]
pub struct Captured<'a> {
    /// How it ended.
    pub outcome: &'a Outcome,
    /// Its stdout.
    pub stdout: &'a [u8],
    /// Its raw stderr.
    pub stderr: &'a [u8],
    /// Fuel consumed (wasm only).
    pub fuel_consumed: Option<u64>,
    /// Wall-clock time.
    pub wall: Duration,
    /// Peak memory in bytes.
    pub peak_memory: u64,
}

/// The report for `task`: stdout digested, stderr sanitized.
pub fn report(task: TaskId, c: Captured<'_>) -> TaskReport {
    TaskReport {
        task,
        outcome: c.outcome.clone(),
        stdout_digest: Digest::of(c.stdout),
        stdout_bytes: c.stdout.len() as u64,
        stderr: sanitize_stderr(c.stderr),
        fuel_consumed: c.fuel_consumed,
        wall_ms: u64::try_from(c.wall.as_millis()).unwrap_or(u64::MAX),
        peak_memory_bytes: c.peak_memory,
    }
}
