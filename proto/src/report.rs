//! How a task ended, and what is reported about it: one shape for wasm and native tasks.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::ids::TaskId;

/// How a task ended. A guest failing is an outcome, not an error: errors mean the host broke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    /// The program exited with `code` (0 ok, 1 failure, 2 bad input, 3+ its own).
    Exited {
        /// The exit code.
        code: i32,
    },
    /// A wasm task used up its fuel.
    OutOfFuel,
    /// The task tried to use more memory than its limit.
    MemoryExceeded,
    /// The task ran past its wall-clock timeout and was stopped.
    TimedOut,
    /// The task wrote more than its limit to `stream` (`stdout`, `stderr` or `scratch`).
    OutputExceeded {
        /// Which output overflowed.
        stream: String,
    },
    /// A wasm trap other than the ones above (unreachable, out-of-bounds access, ...).
    Trapped {
        /// The trap, for people.
        message: String,
    },
    /// A native task was killed by a signal it did not ask for.
    Killed {
        /// The signal number.
        signal: i32,
    },
    /// The task was not run: something about it is not allowed here.
    Refused {
        /// Why.
        reason: String,
    },
    /// The task was not run because a task it reads from did not succeed.
    Skipped {
        /// The upstream task that did not succeed.
        because: TaskId,
    },
    /// The job was cancelled while the task was waiting or running.
    Cancelled,
}

impl Outcome {
    /// True only for a clean exit with code 0.
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Exited { code: 0 })
    }

    /// The exit code, when the task exited by itself.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Self::Exited { code } => Some(*code),
            _ => None,
        }
    }

    /// Its class, one of a fixed few (`succeeded`, `exited_nonzero`, `out_of_fuel`,
    /// `memory_exceeded`, `timed_out`, `output_exceeded`, `trapped`, `killed`, `refused`,
    /// `skipped`, `cancelled`): what metrics count by and logs name.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Exited { code: 0 } => "succeeded",
            Self::Exited { .. } => "exited_nonzero",
            Self::OutOfFuel => "out_of_fuel",
            Self::MemoryExceeded => "memory_exceeded",
            Self::TimedOut => "timed_out",
            Self::OutputExceeded { .. } => "output_exceeded",
            Self::Trapped { .. } => "trapped",
            Self::Killed { .. } => "killed",
            Self::Refused { .. } => "refused",
            Self::Skipped { .. } => "skipped",
            Self::Cancelled => "cancelled",
        }
    }

    /// A short label for tables: `exit 0`, `out-of-fuel`, `timed-out`, ...
    pub fn label(&self) -> String {
        match self {
            Self::Exited { code } => format!("exit {code}"),
            Self::OutOfFuel => "out-of-fuel".into(),
            Self::MemoryExceeded => "memory-exceeded".into(),
            Self::TimedOut => "timed-out".into(),
            Self::OutputExceeded { stream } => format!("output-exceeded ({stream})"),
            Self::Trapped { .. } => "trapped".into(),
            Self::Killed { signal } => format!("killed (signal {signal})"),
            Self::Refused { .. } => "refused".into(),
            Self::Skipped { .. } => "skipped".into(),
            Self::Cancelled => "cancelled".into(),
        }
    }
}

/// What is reported about one task, wasm or native alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskReport {
    /// The task.
    pub task: TaskId,
    /// How it ended.
    pub outcome: Outcome,
    /// The digest of everything it wrote to stdout (kept up to its output limit).
    pub stdout_digest: Digest,
    /// How many bytes it wrote to stdout.
    pub stdout_bytes: u64,
    /// Its stderr: capped, ANSI escapes stripped, secret-looking tokens redacted.
    pub stderr: String,
    /// Wasm fuel consumed (wasm tasks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel_consumed: Option<u64>,
    /// Wall-clock time from start to end, in milliseconds.
    pub wall_ms: u64,
    /// The most memory it held at once, in bytes.
    pub peak_memory_bytes: u64,
}

impl TaskReport {
    /// A report for a task that never ran.
    pub fn not_run(task: TaskId, outcome: Outcome) -> Self {
        Self {
            task,
            outcome,
            stdout_digest: Digest::of(b""),
            stdout_bytes: 0,
            stderr: String::new(),
            fuel_consumed: None,
            wall_ms: 0,
            peak_memory_bytes: 0,
        }
    }
}

/// Why a job whose tasks ran did not succeed: its first task that failed by itself (not one
/// skipped or cancelled because of another). `None` when every task succeeded.
pub fn first_failure(reports: &[TaskReport]) -> Option<String> {
    if reports.iter().all(|r| r.outcome.is_success()) {
        return None;
    }
    let first = reports.iter().find(|r| {
        !r.outcome.is_success()
            && !matches!(r.outcome, Outcome::Skipped { .. } | Outcome::Cancelled)
    });
    Some(match first {
        None => "a task did not succeed".to_string(),
        Some(r) => match &r.outcome {
            Outcome::Trapped { message } | Outcome::Refused { reason: message } => {
                format!("task {}: {}: {message}", r.task, r.outcome.label())
            }
            other => format!("task {}: {}", r.task, other.label()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_wire_form_is_pinned() {
        let cases = [
            (Outcome::Exited { code: 3 }, r#"{"kind":"exited","code":3}"#),
            (Outcome::OutOfFuel, r#"{"kind":"out_of_fuel"}"#),
            (
                Outcome::OutputExceeded { stream: "stdout".into() },
                r#"{"kind":"output_exceeded","stream":"stdout"}"#,
            ),
            (Outcome::Killed { signal: 9 }, r#"{"kind":"killed","signal":9}"#),
        ];
        for (o, json) in cases {
            assert_eq!(serde_json::to_string(&o).unwrap(), json);
            assert_eq!(serde_json::from_str::<Outcome>(json).unwrap(), o);
        }
        assert!(serde_json::from_str::<Outcome>(r#"{"kind":"exited","code":0,"x":1}"#).is_err());
    }
}
