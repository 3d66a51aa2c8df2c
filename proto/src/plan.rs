//! Plan v1: the DAG of tasks a planner signs, and its one validator.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::ids::{AuName, MountName, PlanId, PlanName, TaskId, ToolName};
use crate::limits::{Limits, TaskLimits, show_limit};
use crate::validate::{Invalid, Report};

/// The `schema` value of a v1 plan.
pub const PLAN_SCHEMA: &str = "agenix.plan/v1";
/// Largest plan payload accepted, in bytes.
pub const MAX_PLAN_BYTES: usize = 1 << 20;
/// Most tasks in one plan.
pub const MAX_TASKS: usize = 100;
/// Most arguments one task may pass.
pub const MAX_ARGS: usize = 256;
/// Longest single argument or environment value, in bytes.
pub const MAX_ARG_BYTES: usize = 4096;
/// Most bytes of arguments one task may pass, all together.
pub const MAX_ARGS_TOTAL: usize = 64 * 1024;
/// Most environment variables one task may set.
pub const MAX_ENV: usize = 64;
/// Most mounts one task may name.
pub const MAX_MOUNTS: usize = 16;
/// Most tasks one task's stdin may concatenate.
pub const MAX_STDIN_TASKS: usize = 16;
/// Longest description, in bytes.
pub const MAX_DESCRIPTION: usize = 4096;
/// Longest time between a plan's issue and its expiry: one year.
pub const MAX_LIFETIME_SECS: u64 = 366 * 24 * 3600;

/// Top-level directories a mount may not shadow: the sandbox's own root lives there.
pub const RESERVED_MOUNT_ROOTS: &[&str] = &[
    "bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "run", "sbin", "sys", "tmp",
    "usr",
];

/// A plan: tasks forming a DAG, and the task whose stdout is the job's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Always [`PLAN_SCHEMA`].
    pub schema: String,
    /// 128 random bits; set when signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<PlanId>,
    /// A short name for people.
    pub name: PlanName,
    /// What the plan does.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Unix seconds; set when signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<u64>,
    /// Unix seconds; set when signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// The tasks, each referring only to earlier ones.
    pub tasks: Vec<Task>,
    /// The task whose stdout is the job's output.
    pub output: TaskId,
}

/// One step: a component or a native tool, its arguments, input, mounts and limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// Unique within the plan.
    pub id: TaskId,
    /// What runs.
    pub run: Run,
    /// Arguments after the program name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// The only environment variables the task sees (besides a native tool's fixed PATH and
    /// LANG).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Where stdin comes from; omitted means empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<Stdin>,
    /// Operator-configured directories the task may see.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// What the task asks for; the rest takes the worker's defaults.
    #[serde(default, skip_serializing_if = "TaskLimits::is_empty")]
    pub limits: TaskLimits,
    /// Whether the task has a private, writable `/tmp` of up to `limits.file_bytes`.
    /// Omitted means it has (as plans written before the field); `false` means it has none,
    /// which spares the worker making one.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub scratch: bool,
}

fn yes() -> bool {
    true
}

#[allow(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn is_yes(b: &bool) -> bool {
    *b
}

/// What a task runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Run {
    /// An AU: a WASI component.
    Wasm(WasmRef),
    /// A tool from the worker's allowlist, run in the native jail.
    Native(NativeRef),
}

/// An AU by name and, once locked, by digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmRef {
    /// The AU's name, for people and for the lock step.
    pub name: AuName,
    /// The component's digest: required in a signed plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
}

/// A native tool by allowlist name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativeRef {
    /// The name in the worker's allowlist.
    pub tool: ToolName,
}

/// Where a task's stdin comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stdin {
    /// The job's input (`{"input": true}`).
    Input(bool),
    /// An earlier task's stdout.
    Task(TaskId),
    /// Earlier tasks' stdouts, concatenated in this order (fan-in).
    Tasks(Vec<TaskId>),
}

/// A named, operator-configured directory, seen by the task at `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// The operator's name for the directory; never a host path.
    pub name: MountName,
    /// Where the task sees it: absolute, normalized, outside the sandbox's own directories.
    pub path: String,
    /// Read-only or read-write.
    pub access: Access,
}

/// A mount's access mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Access {
    /// Read-only.
    #[serde(rename = "ro")]
    ReadOnly,
    /// Read-write.
    #[serde(rename = "rw")]
    ReadWrite,
}

/// Which rules apply: a plan being written may omit what signing sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// A plan being written: `plan_id`, `issued_at`, `expires_at` and AU digests may be absent.
    Draft,
    /// A plan that is, or is about to be, signed: all of those are required.
    Signed,
}

impl Task {
    /// The tasks whose stdout this task reads, in order.
    pub fn upstream(&self) -> &[TaskId] {
        match &self.stdin {
            Some(Stdin::Task(t)) => std::slice::from_ref(t),
            Some(Stdin::Tasks(ts)) => ts,
            Some(Stdin::Input(_)) | None => &[],
        }
    }

    /// Whether this task reads the job's input.
    pub fn reads_input(&self) -> bool {
        matches!(self.stdin, Some(Stdin::Input(true)))
    }
}

impl Plan {
    /// Parses plan JSON strictly (size, UTF-8, duplicate keys, unknown fields, types).
    /// Parsing is not validation: call [`Plan::validate`] next.
    pub fn from_json(bytes: &[u8]) -> Result<Self, Invalid> {
        if bytes.len() > MAX_PLAN_BYTES {
            return Err(Invalid::one(crate::Violation::new(
                "",
                "size",
                format!("plan is {} bytes, over the limit of {MAX_PLAN_BYTES}", bytes.len()),
            )));
        }
        Ok(crate::json::from_slice(bytes, MAX_PLAN_BYTES)?)
    }

    /// The exact bytes that are signed and digested.
    pub fn to_payload(&self) -> Vec<u8> {
        // Serializing these types cannot fail: every map key is a string and every value is
        // plain data, so the error arm is unreachable; an empty payload would fail verification.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Checks every rule of plan v1 (docs/design.md) and limits against `ceilings`, collecting all
    /// violations.
    pub fn validate(&self, form: Form, ceilings: &Limits) -> Result<(), Invalid> {
        let mut r = Report::default();
        if self.schema != PLAN_SCHEMA {
            r.push(
                "schema",
                "schema",
                format!("must be \"{PLAN_SCHEMA}\", found {:?}", self.schema),
            );
        }
        if self.description.len() > MAX_DESCRIPTION {
            r.push("description", "description", format!("longer than {MAX_DESCRIPTION} bytes"));
        }
        if form == Form::Signed {
            if self.plan_id.is_none() {
                r.push("plan_id", "signed-field", "missing: a signed plan carries its id");
            }
            match (self.issued_at, self.expires_at) {
                (Some(issued), Some(expires)) => check_lifetime(&mut r, issued, expires),
                _ => {
                    for (name, v) in
                        [("issued_at", self.issued_at), ("expires_at", self.expires_at)]
                    {
                        if v.is_none() {
                            r.push(
                                name,
                                "signed-field",
                                "missing: a signed plan carries its validity",
                            );
                        }
                    }
                }
            }
        }
        if self.tasks.is_empty() {
            r.push("tasks", "task-count", "a plan needs at least one task");
        }
        if self.tasks.len() > MAX_TASKS {
            r.push(
                "tasks",
                "task-count",
                format!("{} tasks, over the limit of {MAX_TASKS}", self.tasks.len()),
            );
        }
        let mut earlier: HashSet<&TaskId> = HashSet::new();
        for (i, task) in self.tasks.iter().enumerate() {
            let at = format!("tasks[{i}]");
            validate_task(&mut r, &at, task, &earlier, form, ceilings);
            if !earlier.insert(&task.id) {
                r.push(
                    format!("{at}.id"),
                    "task-id-unique",
                    format!("task id \"{}\" is used twice", task.id),
                );
            }
        }
        if !self.tasks.iter().any(|t| t.id == self.output) {
            r.push(
                "output",
                "output-ref",
                format!("names task \"{}\", which is not in the plan", self.output),
            );
        }
        r.finish()
    }

    /// The tasks that run AUs, with their position.
    pub fn wasm_tasks(&self) -> impl Iterator<Item = (usize, &WasmRef)> {
        self.tasks.iter().enumerate().filter_map(|(i, t)| match &t.run {
            Run::Wasm(w) => Some((i, w)),
            Run::Native(_) => None,
        })
    }
}

pub(crate) fn check_lifetime(r: &mut Report, issued: u64, expires: u64) {
    if expires <= issued {
        r.push(
            "expires_at",
            "time-order",
            format!("expires_at {expires} is not after issued_at {issued}"),
        );
    } else if expires - issued > MAX_LIFETIME_SECS {
        r.push(
            "expires_at",
            "time-order",
            format!("valid for {} s, over the limit of {MAX_LIFETIME_SECS} s", expires - issued),
        );
    }
}

fn validate_task(
    r: &mut Report,
    at: &str,
    task: &Task,
    earlier: &HashSet<&TaskId>,
    form: Form,
    ceilings: &Limits,
) {
    let is_wasm = matches!(task.run, Run::Wasm(_));
    if let Run::Wasm(w) = &task.run
        && form == Form::Signed
        && w.digest.is_none()
    {
        r.push(
                format!("{at}.run.wasm.digest"),
                "signed-field",
                format!("missing: a signed plan pins AU \"{}\" by digest (sign with --store DIR to resolve it)", w.name),
            );
    }

    match &task.stdin {
        Some(Stdin::Input(false)) => {
            r.push(
                format!("{at}.stdin"),
                "stdin-ref",
                "input must be true (omit stdin for an empty one)",
            );
        }
        Some(Stdin::Tasks(ts)) if ts.is_empty() || ts.len() > MAX_STDIN_TASKS => {
            r.push(
                format!("{at}.stdin"),
                "stdin-ref",
                format!("must name 1 to {MAX_STDIN_TASKS} tasks"),
            );
        }
        Some(Stdin::Tasks(ts)) => {
            for (k, t) in ts.iter().enumerate() {
                if ts[..k].contains(t) {
                    r.push(format!("{at}.stdin"), "stdin-ref", format!("names task \"{t}\" twice"));
                }
            }
        }
        _ => {}
    }
    let refs_checked = !matches!(&task.stdin, Some(Stdin::Tasks(ts)) if ts.len() > MAX_STDIN_TASKS);
    for up in task.upstream().iter().filter(|_| refs_checked) {
        if !earlier.contains(up) {
            let why = if *up == task.id { "this task itself" } else { "not an earlier task" };
            r.push(
                format!("{at}.stdin"),
                "stdin-ref",
                format!("refers to task \"{up}\", which is {why}"),
            );
        }
    }

    if task.args.len() > MAX_ARGS {
        r.push(
            format!("{at}.args"),
            "args",
            format!("{} arguments, over the limit of {MAX_ARGS}", task.args.len()),
        );
    }
    let mut total = 0usize;
    // Past the count, one violation says so; each argument is not looked at.
    let args = if task.args.len() > MAX_ARGS { &[][..] } else { &task.args[..] };
    for (j, arg) in args.iter().enumerate() {
        total += arg.len();
        if arg.contains('\0') {
            r.push(format!("{at}.args[{j}]"), "args", "contains a NUL byte");
        }
        if arg.len() > MAX_ARG_BYTES {
            r.push(
                format!("{at}.args[{j}]"),
                "args",
                format!("{} bytes, over the limit of {MAX_ARG_BYTES}", arg.len()),
            );
        }
    }
    if total > MAX_ARGS_TOTAL {
        r.push(
            format!("{at}.args"),
            "args",
            format!("{total} bytes in all, over the limit of {MAX_ARGS_TOTAL}"),
        );
    }

    let env_checked = task.env.len() <= MAX_ENV;
    if !env_checked {
        r.push(
            format!("{at}.env"),
            "env",
            format!("{} variables, over the limit of {MAX_ENV}", task.env.len()),
        );
    }
    for (name, value) in task.env.iter().filter(|_| env_checked) {
        let p = format!("{at}.env.{name}");
        if let Err(why) = check_env_name(name) {
            r.push(p, "env", why);
        } else if value.contains('\0') {
            r.push(p, "env", "value contains a NUL byte");
        } else if value.len() > MAX_ARG_BYTES {
            r.push(
                p,
                "env",
                format!("value is {} bytes, over the limit of {MAX_ARG_BYTES}", value.len()),
            );
        }
    }

    if task.mounts.len() > MAX_MOUNTS {
        r.push(
            format!("{at}.mounts"),
            "mount-unique",
            format!("{} mounts, over the limit of {MAX_MOUNTS}", task.mounts.len()),
        );
    }
    // Past the count, one violation says so; mounts are compared pairwise only below it.
    let mounts = if task.mounts.len() > MAX_MOUNTS { &[][..] } else { &task.mounts[..] };
    for (j, m) in mounts.iter().enumerate() {
        let p = format!("{at}.mounts[{j}]");
        if let Err(why) = check_mount_path(&m.path) {
            r.push(format!("{p}.path"), "mount-path", why);
            continue;
        }
        for (k, other) in mounts[..j].iter().enumerate() {
            if other.name == m.name {
                r.push(
                    format!("{p}.name"),
                    "mount-unique",
                    format!("mount \"{}\" is already named by mounts[{k}]", m.name),
                );
            } else if paths_overlap(&other.path, &m.path) {
                r.push(
                    format!("{p}.path"),
                    "mount-unique",
                    format!("{} overlaps mounts[{k}] at {}", m.path, other.path),
                );
            }
        }
    }

    let l = &task.limits;
    if !is_wasm && l.fuel.is_some() {
        r.push(format!("{at}.limits.fuel"), "limit-kind", "fuel applies only to wasm tasks");
    }
    if is_wasm && l.pids.is_some() {
        r.push(format!("{at}.limits.pids"), "limit-kind", "pids applies only to native tasks");
    }
    let asked = l.fields();
    let (min, max, ceil) = (Limits::MINIMUM.fields(), Limits::ABSOLUTE.fields(), ceilings.fields());
    for i in 0..asked.len() {
        let (name, Some(v)) = asked[i] else { continue };
        let p = format!("{at}.limits.{name}");
        if v < min[i].1 || v > max[i].1 {
            r.push(p, "limit-range", format!("{v} is outside {}..={}", min[i].1, max[i].1));
        } else if v > ceil[i].1 {
            r.push(
                p,
                "limit-ceiling",
                format!("{} is above the ceiling of {}", show_limit(name, v), ceil[i].1),
            );
        }
    }
}

/// Whether a plan may set the environment variable `name`, on any host: a well-formed name
/// that is not `PATH`, `LD_*` or a variable the loader or the C library acts on. (Each worker
/// narrows this further to its own allowlist.)
pub fn check_env_name(name: &str) -> Result<(), &'static str> {
    if !is_env_name(name) {
        Err("name must match [A-Za-z_][A-Za-z0-9_]{0,127}")
    } else if name == "PATH" || name.starts_with("LD_") {
        Err("PATH and LD_* are set by the sandbox, never by a plan")
    } else if is_loader_variable(name) {
        Err("loader and C library variables (GCONV_PATH, LOCPATH, GLIBC_TUNABLES, MALLOC_*, \
             ...) would let a plan change how any program loads or runs: never set by a plan")
    } else {
        Ok(())
    }
}

/// Variables the dynamic loader or the C library act on (glibc's list of variables unsafe
/// for privileged programs, less TMPDIR, plus the allocator's): through them a plan could
/// load code or change how any program runs, whatever the tool.
fn is_loader_variable(name: &str) -> bool {
    const NAMES: [&str; 11] = [
        "GCONV_PATH",
        "GETCONF_DIR",
        "GLIBC_TUNABLES",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "LOCPATH",
        "NIS_PATH",
        "NLSPATH",
        "RESOLV_HOST_CONF",
        "RES_OPTIONS",
        "TZDIR",
    ];
    NAMES.contains(&name) || name.starts_with("MALLOC_")
}

fn is_env_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Checks a mount's path inside the sandbox: absolute, normalized, plain components, not
/// shadowing the sandbox's own directories.
pub fn check_mount_path(path: &str) -> Result<(), String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("{path:?} is not absolute"));
    };
    if path.len() > 256 {
        return Err("longer than 256 bytes".into());
    }
    if rest.is_empty() {
        return Err("\"/\" would replace the sandbox's root".into());
    }
    for (n, comp) in rest.split('/').enumerate() {
        if comp.is_empty() {
            return Err(format!("{path:?} has an empty component (a doubled or trailing slash)"));
        }
        if comp == "." || comp == ".." {
            return Err(format!("{path:?} has a \"{comp}\" component"));
        }
        if !comp.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) {
            return Err(format!("{path:?}: components must match [A-Za-z0-9._-]+"));
        }
        if n == 0 && RESERVED_MOUNT_ROOTS.contains(&comp) {
            return Err(format!("{path:?} is inside /{comp}, which the sandbox reserves"));
        }
    }
    Ok(())
}

fn paths_overlap(a: &str, b: &str) -> bool {
    let within = |inner: &str, outer: &str| {
        inner == outer || inner.strip_prefix(outer).is_some_and(|rest| rest.starts_with('/'))
    };
    within(a, b) || within(b, a)
}
