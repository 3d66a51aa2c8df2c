//! `agx run PLAN --input FILE`: run a plan locally, in-process, no queue.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use agenix_host::native::{Allowlist, Helper, NativeConfig, NativeHost};
use agenix_proto::{Limits, MountName, Plan};
use agenix_runtime::exec::{Executable, HostRunner, JobResult, MountConfig, Resources, execute};
use agenix_runtime::tools::{self, ToolsError};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use serde::Serialize;

use super::now_unix;
use super::trust::load_trust;
use crate::files::{Source, Within, read_capped, read_within};
use crate::local::{LocalHost, StoreArg, lock, parse_mount, runtime, task_table};
use crate::output::{Coded, Out, STDOUT_CLOSED, is_broken_pipe};
use crate::signing::PlanFile;

/// Most input `agx run` reads (refused past it).
const MAX_INPUT: u64 = 1 << 30;

/// Most bytes of a tool list (`--tools`).
const MAX_TOOLS_BYTES: u64 = 1 << 20;

/// Run PLAN on this machine: the output task's stdout on stdout, a per-task table on stderr.
///
/// Exit 0 when every task succeeded, 1 otherwise; 124 when the input had not ended within
/// the longest timeout a task of the plan has (nothing ran); 141 when stdout was closed
/// before all of the output was written (the table is still printed on stderr).
#[derive(Debug, clap::Args)]
pub(crate) struct RunPlan {
    /// A signed plan envelope (or, with --unsigned, a plan file).
    plan: PathBuf,
    /// The job's input (`-` for stdin); none means empty input. It must end within the
    /// longest timeout a task of the plan has (60 s unless a task asks for more, at most
    /// 1 h), counted from when agx starts reading it, and hold at most 1 GiB.
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Verify the signed plan against this trust file.
    #[arg(long = "trust", value_name = "FILE", env = "AGX_TRUST", conflicts_with = "unsigned")]
    trust: Option<PathBuf>,
    /// Run a plan nobody signed (AU names are locked from the store first).
    #[arg(long)]
    unsigned: bool,
    #[command(flatten)]
    store: StoreArg,
    /// A directory tasks may mount by NAME: NAME=DIR[:ro|rw] (read-only by default).
    #[arg(long = "mount", value_name = "NAME=DIR[:ro|rw]", value_parser = parse_mount)]
    mounts: Vec<(MountName, MountConfig)>,
    /// Allow a native tool: NAME, found in /usr/bin or /bin, or NAME=PATH.
    #[arg(long = "allow-tool", value_name = "NAME[=PATH]")]
    allow_tools: Vec<String>,
    /// Allow the native tools listed in a TOML file (a [tools] table).
    #[arg(long = "tools", value_name = "FILE")]
    tools_file: Option<PathBuf>,
    /// Run native tools even if this kernel lacks part of the jail (a DEGRADED warning on
    /// stderr for every task).
    #[arg(long)]
    danger_degraded: bool,
    /// Treat a part of the jail as missing (as `agw doctor` names it, e.g. "seccomp
    /// filter"): to avoid a feature that misbehaves on this kernel, or to rehearse failing
    /// closed.
    #[arg(long = "disable-jail-feature", value_name = "NAME", value_parser = parse_feature)]
    disabled: Vec<String>,
}

/// A part of the jail by its name (as `agw doctor` prints it).
fn parse_feature(s: &str) -> Result<String, String> {
    use agenix_host::native::probe::names::FEATURES;
    FEATURES.iter().find(|f| **f == s).map(|f| f.to_string()).ok_or_else(|| {
        format!("{s:?} is not a part of the jail; the parts are: {}", FEATURES.join(", "))
    })
}

#[derive(Serialize)]
struct Summary {
    succeeded: bool,
    output_bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_base64: Option<String>,
}

impl RunPlan {
    pub(crate) fn execute(self, out: Out) -> Result<ExitCode> {
        let store = self.store.open()?;
        let verified;
        let unsigned: Plan;
        let executable = match (PlanFile::read(&self.plan)?, &self.trust, self.unsigned) {
            (PlanFile::Signed(bytes), Some(trust), _) => {
                let trust = load_trust(trust)?;
                verified = agenix_proto::verify_plan(&bytes, &trust, now_unix(), &Limits::ABSOLUTE)
                    .with_context(|| format!("{} failed verification", self.plan.display()))?;
                Executable::verified(&verified)
            }
            (PlanFile::Signed(_), None, _) => {
                bail!("{} is signed: pass --trust FILE to verify it", self.plan.display())
            }
            (PlanFile::Draft(_), _, false) => bail!(
                "{} is not signed: sign it with `agx plan sign`, or pass --unsigned to run it anyway",
                self.plan.display()
            ),
            (PlanFile::Draft(mut plan), _, true) => {
                lock(&mut plan, &store)?;
                unsigned = plan;
                Executable::danger_unsigned(&unsigned)
                    .with_context(|| format!("{} is not a valid plan", self.plan.display()))?
            }
        };
        let resources = Resources {
            mounts: self.mounts.into_iter().collect::<BTreeMap<_, _>>(),
            ..Resources::default()
        };
        let input = match &self.input {
            None => Bytes::new(),
            Some(p) => {
                let source =
                    if p.as_os_str() == "-" { Source::Stdin } else { Source::File(p.clone()) };
                let wait_ms = input_wait_ms(executable.plan(), &resources);
                let deadline = Instant::now() + Duration::from_millis(wait_ms);
                match read_within(source.clone(), MAX_INPUT, deadline)? {
                    Within::Read(bytes) => Bytes::from(bytes),
                    Within::StillOpen => {
                        return Err(Coded {
                            code: INPUT_TIMED_OUT,
                            message: format!(
                                "{source}: still open when {wait_ms} ms passed, the longest \
                                 timeout a task of this plan has; nothing ran"
                            ),
                        }
                        .into());
                    }
                }
            }
        };
        let local = LocalHost::new(resources.ceilings, PLAN_TASKS_AT_ONCE)?;
        let mut runner = HostRunner::new(local.wasm.clone(), store, resources);
        let rt = runtime()?;
        let needs_native =
            executable.plan().tasks.iter().any(|t| matches!(t.run, agenix_proto::Run::Native(_)));
        if needs_native {
            let mut allow = Allowlist::new();
            if let Some(file) = &self.tools_file {
                load_tools(file, &mut allow, local.scratch_dir())?;
            }
            for arg in &self.allow_tools {
                let (name, entry) = tools::parse_arg(arg)?;
                allow.allow(name, entry)?;
            }
            let native = rt.block_on(NativeHost::new(NativeConfig {
                helper: Helper::current_exe()
                    .context("cannot find agx itself to start the jail")?,
                allowlist: allow,
                danger_degraded: self.danger_degraded,
                scratch_dir: local.scratch_dir().join("native"),
                disabled: self.disabled.clone(),
            }))?;
            // Said whatever AGX_LOG asks: a sandbox that is not whole is never quiet.
            let missing: Vec<&str> =
                native.probe().missing().iter().map(|c| c.name.as_str()).collect();
            if self.danger_degraded && !missing.is_empty() {
                let _ = writeln!(
                    std::io::stderr(),
                    "agx: DEGRADED: native tools run without {} (--danger-degraded)",
                    missing.join(", ")
                );
            }
            runner = runner.with_native(std::sync::Arc::new(native));
        }
        let runner = std::sync::Arc::new(runner);
        let result = rt.block_on(execute(executable, input, runner))?;
        // A task stopped inside a blocking host call (opening a FIFO in a mount that no one
        // writes, say) leaves its thread blocked: don't wait for it to end.
        rt.shutdown_background();

        let written = if out.json {
            print_json(out, &result)
        } else {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&result.output).and_then(|()| stdout.flush())
        };
        let (stdout_closed, write_error) = match written {
            Ok(()) => (false, None),
            Err(e) if is_broken_pipe(&e) => (true, None),
            Err(e) => (false, Some(e)),
        };
        // Without --json the table is the report; with it, the records were, and when they
        // could not all be written the table says what happened instead.
        if !out.json || stdout_closed {
            let mut err = std::io::stderr().lock();
            err.write_all(task_table(&result.reports).as_bytes())?;
            if stdout_closed {
                writeln!(err, "agx: stdout was closed before all of the output was written")?;
            }
        }
        if let Some(e) = write_error {
            return Err(anyhow::Error::new(e).context("cannot write stdout"));
        }
        Ok(if stdout_closed {
            ExitCode::from(STDOUT_CLOSED)
        } else if result.succeeded {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

/// Exit code when the input had not ended by its deadline, as `timeout(1)` reports.
const INPUT_TIMED_OUT: u8 = 124;

/// The most wasm tasks of a plan `agx run` runs at once (the size of its instance pool).
const PLAN_TASKS_AT_ONCE: u32 = 8;

/// How long `agx run` waits for its input to end: the longest timeout any task of `plan`
/// runs under (what it asks for, else the default), at most [`Limits::ABSOLUTE`]'s. Each
/// task's own timeout still starts when the task does: waiting for input cannot shorten a
/// timeout the plan was signed with, so the wait is bounded by the most the plan allows
/// any task instead.
fn input_wait_ms(plan: &Plan, resources: &Resources) -> u64 {
    let limits = resources.defaults.min(&resources.ceilings);
    plan.tasks
        .iter()
        .map(|t| t.limits.resolve(&limits).timeout_ms)
        .max()
        .unwrap_or(limits.timeout_ms)
        .min(Limits::ABSOLUTE.timeout_ms)
}

/// With `--json`: a `task` record per task, then the `result` record.
fn print_json(out: Out, result: &JobResult) -> std::io::Result<()> {
    for r in &result.reports {
        out.emit("task", r, String::new)?;
    }
    let text = std::str::from_utf8(&result.output).ok().map(str::to_owned);
    let summary = Summary {
        succeeded: result.succeeded,
        output_bytes: result.output.len(),
        output_base64: text.is_none().then(|| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(&result.output)
        }),
        output: text,
    };
    out.emit("result", &summary, String::new)?;
    std::io::stdout().flush()
}

/// Adds the tools listed in `file` to `allow`. The runtime's reader takes a path and reads
/// it whole, so the list is read here under [`MAX_TOOLS_BYTES`] (a device or FIFO is
/// refused past it like a regular file) and the runtime reads a private copy of what was
/// read.
fn load_tools(file: &Path, allow: &mut Allowlist, scratch: &Path) -> Result<()> {
    let bytes = read_capped(file, MAX_TOOLS_BYTES)?;
    let copy = scratch.join("tools.toml");
    std::fs::write(&copy, bytes).with_context(|| format!("cannot copy {}", file.display()))?;
    tools::load_file(&copy, allow).map_err(|e| match e {
        ToolsError::Parse { message, .. } => {
            anyhow::anyhow!("{} is not a valid tool list: {message}", file.display())
        }
        e => e.into(),
    })
}
