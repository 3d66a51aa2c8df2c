//! Jobs, leases and workers as the queue stores them and the wire carries them.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::action::InputRef;
use crate::digest::Digest;
use crate::ids::{ActionId, MountName, ToolName};
use crate::keys::KeyId;
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
        /// The name of the worker holding it, for people.
        worker: String,
        /// The id of the worker holding it: only that worker may extend, complete, fail or
        /// release the lease.
        worker_id: u64,
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
        self.kind().name()
    }

    /// Which state this is, without its details.
    pub fn kind(&self) -> StateKind {
        match self {
            Self::Queued { .. } => StateKind::Queued,
            Self::Leased { .. } => StateKind::Leased,
            Self::Succeeded => StateKind::Succeeded,
            Self::Dead { .. } => StateKind::Dead,
            Self::Cancelled => StateKind::Cancelled,
        }
    }
}

/// A job state without its details: what listings filter by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateKind {
    /// Waiting to be claimed.
    Queued,
    /// Held by a worker.
    Leased,
    /// Done.
    Succeeded,
    /// Given up.
    Dead,
    /// Cancelled.
    Cancelled,
}

impl StateKind {
    /// Every state.
    pub const ALL: [Self; 5] =
        [Self::Queued, Self::Leased, Self::Succeeded, Self::Dead, Self::Cancelled];

    /// The state's name, as on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Leased => "leased",
            Self::Succeeded => "succeeded",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }
}

impl FromStr for StateKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|k| k.name()).collect();
            format!("unknown state {s:?} (one of {})", names.join(", "))
        })
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

    /// What a worker offering `caps` lacks to run the job, for people (empty: it can run
    /// it). Agrees with [`Requirements::met_by`], which the scheduler uses without
    /// building messages.
    pub fn unmet_by(&self, caps: &Capabilities) -> Vec<String> {
        let mut lacks = Vec::new();
        if self.wasm && !caps.wasm {
            lacks.push("it runs no AUs".to_string());
        }
        for t in self.tools.difference(&caps.tools) {
            lacks.push(format!("no native tool {t}"));
        }
        for m in self.mounts.difference(&caps.mounts) {
            lacks.push(format!("no mount {m}"));
        }
        for ((name, need), (_, max)) in self.limits.fields().into_iter().zip(caps.ceilings.fields())
        {
            if need > max {
                let need = crate::limits::show_limit(name, need);
                lacks.push(format!("limits.{name} {need} is over its ceiling of {max}"));
            }
        }
        lacks
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

/// Longest worker name, in bytes.
pub const MAX_WORKER_NAME: usize = 64;
/// Most labels one worker may carry.
pub const MAX_LABELS: usize = 32;
/// Longest label, in bytes.
pub const MAX_LABEL: usize = 64;
/// Most native tools or mounts one worker may offer.
pub const MAX_OFFERED: usize = 256;
/// Most jobs one worker may run at once.
pub const MAX_CONCURRENCY: u32 = 1024;

impl Capabilities {
    /// Checks what a worker announces against the limits above: printable names and labels
    /// of bounded size, bounded lists, a concurrency in `1..=MAX_CONCURRENCY`.
    pub fn check(&self) -> Result<(), String> {
        printable("the worker name", &self.name, MAX_WORKER_NAME)?;
        if self.labels.len() > MAX_LABELS {
            return Err(format!("{} labels, over the limit of {MAX_LABELS}", self.labels.len()));
        }
        for l in &self.labels {
            check_label(l)?;
        }
        if self.tools.len() > MAX_OFFERED || self.mounts.len() > MAX_OFFERED {
            return Err(format!("more than {MAX_OFFERED} tools or mounts offered"));
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(format!(
                "concurrency {} is outside 1..={MAX_CONCURRENCY}",
                self.concurrency
            ));
        }
        Ok(())
    }
}

/// Checks one label: 1 to [`MAX_LABEL`] bytes, no control characters.
pub fn check_label(label: &str) -> Result<(), String> {
    printable("a label", label, MAX_LABEL)
}

fn printable(what: &str, s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() || s.len() > max {
        return Err(format!("{what} must be 1 to {max} bytes, not {}", s.len()));
    }
    if s.chars().any(|c| c.is_control() || crate::text::is_bidi_control(c)) {
        return Err(format!("{what} {:?} holds control characters", crate::text::clean(s)));
    }
    Ok(())
}

/// Largest per-task report list carried inline in a result, in bytes of JSON; larger ones
/// travel as a blob.
pub const MAX_INLINE_REPORTS: usize = 64 << 10;
/// Longest reason (a failure, a refusal, why a job is dead) the queue keeps, in bytes.
pub const MAX_REASON: usize = 4096;

/// `reason` as the queue keeps it: terminal controls removed, at most [`MAX_REASON`] bytes.
/// A worker bounds a result's failure this way before signing it, so that what the queue
/// keeps is what was signed.
pub fn bounded_reason(reason: &str) -> String {
    let clean = crate::text::clean(reason);
    crate::text::truncate(&clean, MAX_REASON).into_owned()
}

/// A job's per-task reports: inline when small, else a blob of their JSON array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Reports {
    /// The reports themselves (at most [`MAX_INLINE_REPORTS`] bytes of JSON).
    Inline(Vec<TaskReport>),
    /// A blob holding the JSON array of reports.
    Blob(InputRef),
}

impl Reports {
    /// `reports` inline when their JSON fits [`MAX_INLINE_REPORTS`]; else their JSON, to be
    /// stored as a blob, and the reference to it.
    pub fn split(reports: Vec<TaskReport>) -> (Self, Option<Vec<u8>>) {
        let json = serde_json::to_vec(&reports).unwrap_or_default();
        if json.len() <= MAX_INLINE_REPORTS {
            (Self::Inline(reports), None)
        } else {
            let r = InputRef { digest: Digest::of(&json), size: json.len() as u64 };
            (Self::Blob(r), Some(json))
        }
    }

    /// The inline reports (none when they are a blob).
    pub fn inline(&self) -> &[TaskReport] {
        match self {
            Self::Inline(r) => r,
            Self::Blob(_) => &[],
        }
    }
}

/// What a finished job produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobOutput {
    /// Whether every task exited 0.
    pub succeeded: bool,
    /// Why not, when it did not: its first task that failed by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// One report per task, in plan order.
    pub reports: Reports,
    /// The output task's stdout, as a blob (absent when it did not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<InputRef>,
    /// The worker's signed statement of this result (a DSSE envelope,
    /// `crate::result::RESULT_PAYLOAD_TYPE`), as a blob. The queue takes no result without
    /// one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<InputRef>,
}

impl JobOutput {
    /// The blobs this result refers to (its output, its reports when a blob, its signed
    /// statement).
    pub fn blobs(&self) -> impl Iterator<Item = &InputRef> {
        let reports = match &self.reports {
            Reports::Blob(r) => Some(r),
            Reports::Inline(_) => None,
        };
        self.output.iter().chain(reports).chain(self.result.iter())
    }
}

/// A worker that could not run a job here (a local cause) and gave it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Declined {
    /// The worker's name.
    pub worker: String,
    /// The worker's id.
    pub worker_id: u64,
    /// Why.
    pub reason: String,
    /// When (Unix ms).
    pub at: u64,
}

/// Most workers a job remembers declining it (the newest).
pub const MAX_DECLINED: usize = 8;

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
    /// Which of its action's inputs it runs (0 when the action names none).
    #[serde(default)]
    pub index: u32,
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
    /// Workers that could not run it and gave it back (newest last, at most
    /// [`MAX_DECLINED`]); none of these cost an attempt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub declined: Vec<Declined>,
    /// Its result, once a worker reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<JobOutput>,
}

/// A job handed to a worker. It names everything by digest: the worker fetches the signed
/// envelopes as blobs (once, then from its cache), verifies them itself, and takes the
/// job's input from the verified action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    /// The lease.
    pub lease: LeaseRef,
    /// Which attempt this is (1-based).
    pub attempt: u32,
    /// When it expires unless extended (Unix ms).
    pub deadline: u64,
    /// The blob holding the signed plan envelope.
    pub plan: Digest,
    /// The blob holding the signed action envelope.
    pub action: Digest,
    /// Which of the action's inputs the job runs (0 when the action names none).
    pub input: u32,
}

/// A worker as the queue sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerRecord {
    /// Its id: derived from its key and the secret instance it registered with, so a
    /// worker that reconnects (also to a restarted queue) keeps its id and its leases, and
    /// no other key can act for it.
    pub id: u64,
    /// The enrolled key it authenticated with.
    pub key: KeyId,
    /// What it offers.
    pub capabilities: Capabilities,
    /// When it last registered, claimed or heartbeat (Unix ms).
    pub last_seen: u64,
    /// Jobs it holds now.
    pub leases: u32,
    /// Jobs it gave back because it could not run them.
    #[serde(default)]
    pub declined: u64,
    /// Why, the last time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_declined: Option<String>,
}

/// An action the queue has accepted: kept until it expires, so a replay is recognised
/// (identical bytes: the same jobs; different bytes: refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRecord {
    /// The digest of the action's signed payload.
    pub payload: Digest,
    /// The blob holding the signed action envelope.
    pub envelope: Digest,
    /// The blob holding the signed plan envelope.
    pub plan_envelope: Digest,
    /// The blobs its jobs need while they may run: components and inputs.
    #[serde(default)]
    pub blobs: Vec<Digest>,
    /// When the action expires (Unix ms).
    pub expires_at: u64,
    /// The jobs it made.
    pub jobs: Vec<JobId>,
}
