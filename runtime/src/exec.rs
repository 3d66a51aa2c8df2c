//! The DAG executor — the one used by `agx run` and by the worker — and the runner that
//! puts each task in its sandbox.
//!
//! The executor pipes each task's stdout into the stdin of the tasks that read it, starts
//! independent tasks together, and reports the dependents of a failed task as skipped.
//! Dropping the future returned by [`execute`] cancels every running task.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use agenix_host::Grant;
use agenix_host::native::NativeHost;
use agenix_host::wasm::{Metering, PrepareError, WasmHost};
use agenix_proto::{
    Access, Digest, Form, Invalid, Limits, MountName, Outcome, Plan, Run, Stdin, Task, TaskReport,
    VerifiedPlan, Violation,
};
use bytes::{Bytes, BytesMut};
use tracing::Instrument;

use crate::dag::{Dag, State};
use crate::store::LocalStore;

/// A plan the executor may run: verified, or explicitly run unsigned.
#[derive(Debug, Clone, Copy)]
pub struct Executable<'a> {
    plan: &'a Plan,
}

impl<'a> Executable<'a> {
    /// A verified plan.
    pub fn verified(plan: &'a VerifiedPlan) -> Self {
        Self { plan: plan.plan() }
    }

    /// A plan nobody signed, for local runs the user asked for explicitly. It must still pass
    /// every rule, and every AU must be pinned by digest.
    pub fn danger_unsigned(plan: &'a Plan) -> Result<Self, Invalid> {
        plan.validate(Form::Draft, &Limits::ABSOLUTE)?;
        let missing: Vec<Violation> = plan
            .wasm_tasks()
            .filter(|(_, w)| w.digest.is_none())
            .map(|(i, w)| {
                Violation::new(
                    format!("tasks[{i}].run.wasm.digest"),
                    "signed-field",
                    format!("missing: AU \"{}\" is not pinned by digest", w.name),
                )
            })
            .collect();
        Invalid::check(missing)?;
        Ok(Self { plan })
    }

    /// The plan.
    pub fn plan(&self) -> &'a Plan {
        self.plan
    }
}

/// What running one task produced.
#[derive(Debug, Clone)]
pub struct TaskRun {
    /// The report.
    pub report: TaskReport,
    /// Its stdout, for the tasks that read it.
    pub stdout: Bytes,
}

/// The runner itself failed: the job's result is unknown (retry it), unlike a task failing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    /// A component's bytes could not be had (the store or the network failed).
    #[error("task {task}: cannot fetch {digest}: {message}")]
    Fetch {
        /// The task.
        task: agenix_proto::TaskId,
        /// The component.
        digest: Digest,
        /// Why.
        message: String,
    },
    /// The sandbox itself failed.
    #[error("task {task}: {source}")]
    Host {
        /// The task.
        task: agenix_proto::TaskId,
        /// What failed.
        source: agenix_host::HostError,
    },
    /// A task's future panicked or was aborted.
    #[error("a task did not finish: {0}")]
    Join(String),
}

/// Runs one task in its sandbox.
pub trait Runner: Send + Sync + 'static {
    /// Runs `task` with `stdin`. A task failing is a report; `Err` means the runner broke.
    fn run(
        &self,
        task: &Task,
        stdin: Bytes,
    ) -> impl Future<Output = Result<TaskRun, RunnerError>> + Send;
}

/// What a job produced.
#[derive(Debug, Clone)]
pub struct JobResult {
    /// One report per task, in plan order.
    pub reports: Vec<TaskReport>,
    /// The output task's stdout (empty when it did not run).
    pub output: Bytes,
    /// Whether every task exited 0.
    pub succeeded: bool,
}

/// The most stdin one task may be given (its upstream outputs together).
pub const MAX_STDIN_BYTES: u64 = Limits::ABSOLUTE.output_bytes;

/// Runs the plan's DAG on `input` with `runner`. Independent tasks run in parallel on the
/// async runtime; dropping the returned future aborts every running task.
pub async fn execute<R: Runner>(
    plan: Executable<'_>,
    input: Bytes,
    runner: Arc<R>,
) -> Result<JobResult, RunnerError> {
    let plan = plan.plan;
    let n = plan.tasks.len();
    let mut dag = Dag::new(plan);
    let mut readers: Vec<usize> = (0..n).map(|i| dag.readers(i)).collect();
    let output_index = plan.tasks.iter().position(|t| t.id == plan.output);
    let mut outputs: Vec<Option<Bytes>> = vec![None; n];
    let mut reports: Vec<Option<TaskReport>> = vec![None; n];
    let mut running = tokio::task::JoinSet::new();
    loop {
        for i in dag.start_ready() {
            let task = plan.tasks[i].clone();
            let stdin = stdin_for(plan, &task, &input, &outputs);
            // Outputs nobody else will read are dropped as soon as their last reader starts.
            for up in task.upstream() {
                if let Some(u) = plan.tasks.iter().position(|t| t.id == *up) {
                    readers[u] = readers[u].saturating_sub(1);
                    if readers[u] == 0 && Some(u) != output_index {
                        outputs[u] = None;
                    }
                }
            }
            let runner = runner.clone();
            let kind = match task.run {
                Run::Wasm(_) => "wasm",
                Run::Native(_) => "native",
            };
            // Inside the caller's span (a worker's `job`): every line a task's run logs
            // names the job and the task.
            let span = tracing::info_span!("task", task = %task.id, kind);
            running.spawn(
                async move {
                    if stdin.len() as u64 > MAX_STDIN_BYTES {
                        let reason = format!(
                            "stdin would be {} bytes, over the limit of {MAX_STDIN_BYTES}",
                            stdin.len()
                        );
                        let report =
                            TaskReport::not_run(task.id.clone(), Outcome::Refused { reason });
                        log_end(&report);
                        return (i, Ok(TaskRun { report, stdout: Bytes::new() }));
                    }
                    let result = runner.run(&task, stdin).await;
                    if let Ok(run) = &result {
                        log_end(&run.report);
                    }
                    (i, result)
                }
                .instrument(span),
            );
        }
        let Some(joined) = running.join_next().await else { break };
        let (i, result) = joined.map_err(|e| RunnerError::Join(e.to_string()))?;
        let run = result?;
        let success = run.report.outcome.is_success();
        for (j, because) in dag.finish(i, success) {
            let outcome = Outcome::Skipped { because: plan.tasks[because].id.clone() };
            reports[j] = Some(TaskReport::not_run(plan.tasks[j].id.clone(), outcome));
        }
        if readers[i] > 0 || Some(i) == output_index {
            outputs[i] = Some(run.stdout);
        }
        reports[i] = Some(run.report);
    }
    debug_assert!(dag.is_done());
    let output = output_index
        .filter(|&i| dag.state(i) == State::Done { success: true })
        .and_then(|i| outputs[i].take())
        .unwrap_or_default();
    let reports: Vec<TaskReport> = reports
        .into_iter()
        .zip(&plan.tasks)
        .map(|(r, t)| r.unwrap_or_else(|| TaskReport::not_run(t.id.clone(), Outcome::Cancelled)))
        .collect();
    let succeeded = reports.iter().all(|r| r.outcome.is_success());
    Ok(JobResult { reports, output, succeeded })
}

/// One line for a task that ran (or was refused), in its span: how it ended and what it
/// used. Never its stderr or output.
fn log_end(r: &TaskReport) {
    tracing::info!(
        outcome = r.outcome.class(),
        exit = r.outcome.exit_code(),
        wall_ms = r.wall_ms,
        fuel = r.fuel_consumed,
        peak_memory_bytes = r.peak_memory_bytes,
        "task ended"
    );
}

fn stdin_for(plan: &Plan, task: &Task, input: &Bytes, outputs: &[Option<Bytes>]) -> Bytes {
    let out = |id: &agenix_proto::TaskId| {
        plan.tasks
            .iter()
            .position(|t| t.id == *id)
            .and_then(|i| outputs[i].clone())
            .unwrap_or_default()
    };
    match &task.stdin {
        None | Some(Stdin::Input(false)) => Bytes::new(),
        Some(Stdin::Input(true)) => input.clone(),
        Some(Stdin::Task(id)) => out(id),
        Some(Stdin::Tasks(ids)) => {
            let parts: Vec<Bytes> = ids.iter().map(out).collect();
            let mut buf = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
            for p in parts {
                buf.extend_from_slice(&p);
            }
            buf.freeze()
        }
    }
}

/// A directory the operator offers to tasks under a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountConfig {
    /// Where it is on the host.
    pub host: PathBuf,
    /// The most a task may have: read-only, or read-write.
    pub access: Access,
}

impl MountConfig {
    /// Parses `NAME=DIR[:ro|rw]` (read-only when the mode is left out), resolving DIR.
    pub fn parse(s: &str) -> Result<(MountName, Self), String> {
        let (name, rest) = s.split_once('=').ok_or("expected NAME=DIR[:ro|rw]")?;
        let name: MountName = name.parse().map_err(|e| format!("{e}"))?;
        let (dir, access) = match rest.rsplit_once(':') {
            Some((dir, "ro")) => (dir, Access::ReadOnly),
            Some((dir, "rw")) => (dir, Access::ReadWrite),
            _ => (rest, Access::ReadOnly),
        };
        if dir.is_empty() {
            return Err("the directory is empty".into());
        }
        let host = std::fs::canonicalize(dir).map_err(|e| format!("{dir}: {e}"))?;
        if !host.is_dir() {
            return Err(format!("{dir} is not a directory"));
        }
        Ok((name, Self { host, access }))
    }
}

/// What a runner may hand out: named directories, default limits and ceilings.
#[derive(Debug, Clone)]
pub struct Resources {
    /// Named directories.
    pub mounts: BTreeMap<MountName, MountConfig>,
    /// Limits for what a task does not ask for.
    pub defaults: Limits,
    /// The most a task may ask for.
    pub ceilings: Limits,
}

impl Default for Resources {
    fn default() -> Self {
        Self { mounts: BTreeMap::new(), defaults: Limits::DEFAULT, ceilings: Limits::ABSOLUTE }
    }
}

impl Resources {
    /// The directories `task` asks for, or why it may not have them.
    pub fn grants(&self, task: &Task) -> Result<Vec<Grant>, String> {
        task.mounts
            .iter()
            .map(|m| {
                let cfg = self
                    .mounts
                    .get(&m.name)
                    .ok_or_else(|| format!("mount \"{}\" is not configured here", m.name))?;
                if m.access == Access::ReadWrite && cfg.access == Access::ReadOnly {
                    return Err(format!(
                        "mount \"{}\" is read-only here; the task asks for read-write",
                        m.name
                    ));
                }
                Ok(Grant { host: cfg.host.clone(), guest: m.path.clone(), access: m.access })
            })
            .collect()
    }

    /// The limits `task` runs under, or why it may not.
    pub fn limits(&self, task: &Task) -> Result<Limits, String> {
        let limits = task.limits.resolve(&self.defaults.min(&self.ceilings));
        for ((name, asked), (_, max)) in limits.fields().into_iter().zip(self.ceilings.fields()) {
            if asked > max {
                let asked = agenix_proto::limits::show_limit(name, asked);
                return Err(format!(
                    "limits.{name} {asked} is above this runner's ceiling of {max}"
                ));
            }
        }
        Ok(limits)
    }
}

/// Where a runner gets component bytes it has not compiled yet.
pub trait ComponentSource: Send + Sync + 'static {
    /// The bytes that should have `digest` (the host checks them).
    fn fetch(&self, digest: Digest) -> impl Future<Output = Result<Vec<u8>, FetchError>> + Send;
}

/// Component bytes could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The source does not have them (or has other bytes under that name).
    #[error("{0}")]
    Unavailable(String),
    /// The source failed; trying again later may work.
    #[error("{0}")]
    Transient(String),
}

impl ComponentSource for LocalStore {
    async fn fetch(&self, digest: Digest) -> Result<Vec<u8>, FetchError> {
        self.get(&digest).map_err(|e| match e {
            crate::store::StoreError::Io { .. } => FetchError::Transient(e.to_string()),
            other => FetchError::Unavailable(other.to_string()),
        })
    }
}

/// Runs wasm tasks on a [`WasmHost`] with components from a [`ComponentSource`].
#[derive(Debug)]
pub struct HostRunner<S> {
    wasm: Arc<WasmHost>,
    native: Option<Arc<NativeHost>>,
    source: S,
    resources: Resources,
}

impl<S: ComponentSource> HostRunner<S> {
    /// A runner over `wasm`, fetching from `source`, granting from `resources`. Native tasks
    /// are refused until a jail is added with [`HostRunner::with_native`].
    pub fn new(wasm: Arc<WasmHost>, source: S, resources: Resources) -> Self {
        Self { wasm, native: None, source, resources }
    }

    /// Runs native tasks in `native`.
    pub fn with_native(mut self, native: Arc<NativeHost>) -> Self {
        self.native = Some(native);
        self
    }

    async fn run_native(
        &self,
        task: &Task,
        tool: &agenix_proto::ToolName,
        stdin: Bytes,
    ) -> Result<TaskRun, RunnerError> {
        let Some(native) = &self.native else {
            return Ok(Self::refused(
                task,
                format!("native tool \"{tool}\": this runner has no native jail"),
            ));
        };
        let spec = match self.spec(task, tool.clone(), stdin) {
            Ok(spec) => spec,
            Err(why) => return Ok(Self::refused(task, why)),
        };
        let run = native
            .run(spec)
            .await
            .map_err(|source| RunnerError::Host { task: task.id.clone(), source })?;
        if let Some(setup) = run.setup {
            crate::worker::metrics::jail_setup(setup);
            tracing::debug!(setup_us = setup.as_micros() as u64, "jail built");
        }
        Ok(TaskRun { report: run.report(task.id.clone()), stdout: run.stdout })
    }

    /// The sandbox's view of `task`, running `program`: the one place its mounts become
    /// operator directories and its limits are resolved against defaults and ceilings
    /// (refused, never clamped); `Err` says why a task cannot have them.
    fn spec<P>(
        &self,
        task: &Task,
        program: P,
        stdin: Bytes,
    ) -> Result<agenix_host::Task<P>, String> {
        let grants = self.resources.grants(task)?;
        let limits = self.resources.limits(task)?;
        Ok(agenix_host::Task {
            program,
            args: task.args.clone(),
            env: task.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            stdin,
            grants,
            limits,
            scratch: task.scratch,
        })
    }

    fn refused(task: &Task, reason: String) -> TaskRun {
        TaskRun {
            report: TaskReport::not_run(task.id.clone(), Outcome::Refused { reason }),
            stdout: Bytes::new(),
        }
    }
}

impl<S: ComponentSource> Runner for HostRunner<S> {
    async fn run(&self, task: &Task, stdin: Bytes) -> Result<TaskRun, RunnerError> {
        let wasm_ref = match &task.run {
            Run::Wasm(w) => w,
            Run::Native(n) => return self.run_native(task, &n.tool, stdin).await,
        };
        let Some(digest) = wasm_ref.digest else {
            return Ok(Self::refused(
                task,
                format!("AU \"{}\" is not pinned by digest", wasm_ref.name),
            ));
        };
        let spec = match self.spec(task, wasm_ref.name.to_string(), stdin) {
            Ok(spec) => spec,
            Err(why) => return Ok(Self::refused(task, why)),
        };
        let prepared = match self
            .wasm
            .prepare(digest, Metering::of(&spec.limits), || async {
                match self.source.fetch(digest).await {
                    Ok(bytes) => Ok(bytes),
                    // Not this component's fault: the job may succeed on another try.
                    Err(FetchError::Transient(m)) => Err(PrepareError::Fetch(m)),
                    // Refused below, like bytes that do not match the digest.
                    Err(FetchError::Unavailable(m)) => Err(PrepareError::Unavailable(m)),
                }
            })
            .await
        {
            Ok(p) => p,
            Err(PrepareError::Fetch(message)) => {
                return Err(RunnerError::Fetch { task: task.id.clone(), digest, message });
            }
            Err(e) => return Ok(Self::refused(task, e.to_string())),
        };
        let run = self
            .wasm
            .run(&prepared, spec)
            .await
            .map_err(|source| RunnerError::Host { task: task.id.clone(), source })?;
        Ok(TaskRun { report: run.report(task.id.clone()), stdout: run.stdout })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use agenix_proto::Digest;

    use super::*;

    /// Runs no sandbox: echoes stdin prefixed with the task id, after meeting the other
    /// `parallel` tasks at a barrier, and fails tasks named `fail*`.
    struct Scripted {
        barrier: tokio::sync::Barrier,
        seen: Mutex<Vec<(String, Vec<u8>)>>,
    }

    impl Runner for Scripted {
        async fn run(&self, task: &Task, stdin: Bytes) -> Result<TaskRun, RunnerError> {
            if task.id.as_str().starts_with("par") {
                self.barrier.wait().await;
            }
            self.seen.lock().unwrap().push((task.id.to_string(), stdin.to_vec()));
            let code = if task.id.as_str().starts_with("fail") { 1 } else { 0 };
            let mut out = format!("{}:", task.id).into_bytes();
            out.extend_from_slice(&stdin);
            let report = TaskReport {
                outcome: Outcome::Exited { code },
                stdout_digest: Digest::of(&out),
                stdout_bytes: out.len() as u64,
                ..TaskReport::not_run(task.id.clone(), Outcome::Exited { code })
            };
            Ok(TaskRun { report, stdout: Bytes::from(out) })
        }
    }

    fn plan(tasks: &str, output: &str) -> Plan {
        let json = format!(
            r#"{{"schema":"agenix.plan/v1","name":"t","tasks":[{tasks}],"output":"{output}"}}"#
        );
        Plan::from_json(json.as_bytes()).unwrap()
    }

    fn task(id: &str, stdin: &str) -> String {
        format!(r#"{{"id":"{id}","run":{{"native":{{"tool":"cat"}}}},"stdin":{stdin}}}"#)
    }

    #[tokio::test]
    async fn independent_tasks_run_together_and_fan_in_concatenates_in_order() {
        let p = plan(
            &[
                task("src", r#"{"input":true}"#),
                task("par1", r#"{"task":"src"}"#),
                task("par2", r#"{"task":"src"}"#),
                task("join", r#"{"tasks":["par2","par1"]}"#),
            ]
            .join(","),
            "join",
        );
        let runner =
            Arc::new(Scripted { barrier: tokio::sync::Barrier::new(2), seen: Mutex::new(vec![]) });
        // par1 and par2 each wait for the other at the barrier: run one after the other,
        // they would never finish.
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            execute(
                Executable::danger_unsigned(&p).unwrap(),
                Bytes::from_static(b"in"),
                runner.clone(),
            ),
        )
        .await
        .expect("independent tasks must run concurrently")
        .unwrap();
        assert!(result.succeeded);
        assert_eq!(&result.output[..], b"join:par2:src:inpar1:src:in");
    }

    #[tokio::test]
    async fn dependents_of_a_failure_are_skipped_and_never_started() {
        let p = plan(
            &[
                task("fail", r#"{"input":true}"#),
                task("after", r#"{"task":"fail"}"#),
                task("other", "null"),
            ]
            .join(","),
            "after",
        );
        let runner =
            Arc::new(Scripted { barrier: tokio::sync::Barrier::new(1), seen: Mutex::new(vec![]) });
        let result =
            execute(Executable::danger_unsigned(&p).unwrap(), Bytes::new(), runner.clone())
                .await
                .unwrap();
        assert!(!result.succeeded);
        assert!(result.output.is_empty());
        assert_eq!(
            result.reports[1].outcome,
            Outcome::Skipped { because: "fail".parse().unwrap() }
        );
        assert_eq!(result.reports[2].outcome, Outcome::Exited { code: 0 });
        let seen: Vec<String> =
            runner.seen.lock().unwrap().iter().map(|(id, _)| id.clone()).collect();
        assert!(!seen.contains(&"after".to_string()));
    }
}
