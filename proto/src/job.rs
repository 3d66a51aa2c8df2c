//! Jobs, leases and workers as the queue stores them and the wire carries them.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::action::InputRef;
use crate::digest::Digest;
use crate::envelope::Envelope;
use crate::ids::{ActionId, MountName, ToolName};
use crate::limits::Limits;
use crate::report::TaskReport;

/// A job's id: assigned by the queue, increasing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for JobId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}

/// A lease's epoch: every lease of a job gets a new, larger one; results and heartbeats
/// carrying an older epoch are refused (fencing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseEpoch(pub u64);

/// One lease of one job, as the worker names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRef {
    /// The job.
    pub job: JobId,
    /// The lease's epoch.
    pub epoch: LeaseEpoch,
}

/// Where a job stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum JobState {
    /// Waiting to be claimed, not before `not_before` (Unix ms; 0: now).
    Queued {
        /// The earliest time it may be leased (after a backoff).
        not_before: u64,
    },
    /// Held by a worker until `deadline` (Unix ms) unless heartbeats extend it.
    Leased {
        /// The current lease's epoch.
        epoch: LeaseEpoch,
        /// The worker holding it.
        worker: String,
        /// When the lease expires.
        deadline: u64,
    },
    /// Done: every task exited 0 (or its result says otherwise; see the result).
    Succeeded,
    /// Given up: out of attempts, or failed in a way retrying cannot fix.
    Dead {
        /// Why.
        reason: String,
    },
    /// Cancelled by a planner.
    Cancelled,
}

impl JobState {
    /// Whether nothing more will happen to the job.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Succeeded | Self::Dead { .. } | Self::Cancelled)
    }

    /// The state's name: `queued`, `leased`, `succeeded`, `dead`, `cancelled`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Queued { .. } => "queued",
            Self::Leased { .. } => "leased",
            Self::Succeeded => "succeeded",
            Self::Dead { .. } => "dead",
            Self::Cancelled => "cancelled",
        }
    }
}

/// What a worker needs to run a job: derived from its plan when it is submitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    /// Native tools the plan runs.
    #[serde(default)]
    pub tools: BTreeSet<ToolName>,
    /// Mounts the plan names.
    #[serde(default)]
    pub mounts: BTreeSet<MountName>,
    /// Whether any task is an AU.
    #[serde(default)]
    pub wasm: bool,
    /// The largest limit any task asks for, per field (0: none asked).
    pub limits: Limits,
}

impl Requirements {
    /// What `plan` needs.
    pub fn of(plan: &crate::Plan) -> Self {
        let mut r = Self {
            tools: BTreeSet::new(),
            mounts: BTreeSet::new(),
            wasm: false,
            limits: Limits {
                fuel: 0,
                memory_bytes: 0,
                timeout_ms: 0,
                output_bytes: 0,
                pids: 0,
                file_bytes: 0,
            },
        };
        for t in &plan.tasks {
            match &t.run {
                crate::Run::Wasm(_) => r.wasm = true,
                crate::Run::Native(n) => {
                    r.tools.insert(n.tool.clone());
                }
            }
            for m in &t.mounts {
                r.mounts.insert(m.name.clone());
            }
            let l = &t.limits;
            let max = |a: &mut u64, b: Option<u64>| *a = (*a).max(b.unwrap_or(0));
            max(&mut r.limits.fuel, l.fuel);
            max(&mut r.limits.memory_bytes, l.memory_bytes);
            max(&mut r.limits.timeout_ms, l.timeout_ms);
            max(&mut r.limits.output_bytes, l.output_bytes);
            max(&mut r.limits.pids, l.pids);
            max(&mut r.limits.file_bytes, l.file_bytes);
        }
        r
    }

    /// Whether a worker offering `caps` can run the job.
    pub fn met_by(&self, caps: &Capabilities) -> bool {
        (!self.wasm || caps.wasm)
            && self.tools.is_subset(&caps.tools)
            && self.mounts.is_subset(&caps.mounts)
            && self
                .limits
                .fields()
                .iter()
                .zip(caps.ceilings.fields())
                .all(|((_, need), (_, max))| *need <= max)
    }
}

/// What a worker offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// A name for people (host name, or configured).
    pub name: String,
    /// Whether it runs AUs.
    pub wasm: bool,
    /// Native tools in its allowlist (only when its jail is ready or degraded mode is on).
    #[serde(default)]
    pub tools: BTreeSet<ToolName>,
    /// Mount names it has configured.
    #[serde(default)]
    pub mounts: BTreeSet<MountName>,
    /// The most a task may ask of it.
    pub ceilings: Limits,
    /// Jobs it runs at once.
    pub concurrency: u32,
    /// Free-form labels, shown to operators.
    #[serde(default)]
    pub labels: BTreeSet<String>,
}

/// What a finished job produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobOutput {
    /// Whether every task exited 0.
    pub succeeded: bool,
    /// One report per task, in plan order.
    pub reports: Vec<TaskReport>,
    /// The output task's stdout, as a blob (absent when it did not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<InputRef>,
}

/// A job as the queue stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRecord {
    /// Its id.
    pub id: JobId,
    /// The action it came from.
    pub action: ActionId,
    /// The digest of its plan's payload.
    pub plan: Digest,
    /// Its input (none: empty stdin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<InputRef>,
    /// Higher runs first.
    pub priority: i32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Leases granted so far.
    pub attempts: u32,
    /// The last lease's epoch (0: never leased).
    pub epoch: LeaseEpoch,
    /// Where it stands.
    pub state: JobState,
    /// A planner asked to cancel it while it was leased.
    #[serde(default)]
    pub cancel_requested: bool,
    /// What a worker needs to run it.
    pub requirements: Requirements,
    /// When it was submitted (Unix ms).
    pub submitted_at: u64,
    /// When it last changed (Unix ms).
    pub updated_at: u64,
    /// The last failure, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Its result, once a worker reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<JobOutput>,
}

/// A job handed to a worker: everything it must verify and run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    /// The lease.
    pub lease: LeaseRef,
    /// Which attempt this is (1-based).
    pub attempt: u32,
    /// When it expires unless extended (Unix ms).
    pub deadline: u64,
    /// The signed plan.
    pub plan: Envelope,
    /// The signed action.
    pub action: Envelope,
    /// The job's input (none: empty stdin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<InputRef>,
}

/// A worker as the queue sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerRecord {
    /// The id the queue gave it at registration.
    pub id: u64,
    /// What it offers.
    pub capabilities: Capabilities,
    /// When it last claimed or heartbeat (Unix ms).
    pub last_seen: u64,
    /// Jobs it holds now.
    pub leases: u32,
}

/// An action the queue has accepted: kept until it expires, so a replay is recognised
/// (identical bytes: the same jobs; different bytes: refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRecord {
    /// The digest of the action's signed payload.
    pub payload: Digest,
    /// When the action expires (Unix ms).
    pub expires_at: u64,
    /// The jobs it made.
    pub jobs: Vec<JobId>,
}
