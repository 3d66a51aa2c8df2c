//! Native tools in an unprivileged, fail-closed Linux-namespace jail.
//!
//! The tool is assumed hostile. Only tools in the worker's [`Allowlist`] run (by name, never
//! by path; shells never), with their arguments as a vector and an empty environment but a
//! fixed PATH and LANG and what the plan names. Each run re-executes our own binary as the
//! jail helper ([`jail::run_if_helper`]) so the fork and namespace setup happen in a fresh
//! single-threaded process; see `jail.rs` for the process tree and the setup order.
//!
//! Fail closed: [`NativeHost::new`] probes the kernel; if a required feature is missing,
//! native tasks are refused with the reason, unless the operator chose degraded mode, which
//! is then logged on every task.

mod cgroup;
mod confine;
pub mod jail;
pub mod probe;
mod spec;

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agenix_proto::{Access, Digest, Limits, Outcome, ToolName};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use self::cgroup::Cgroups;
use self::probe::{Probe, names};
use self::spec::{Ended, Features, JailReport, JailSpec, SpecMount, read_frame, write_frame};
use crate::output::CappedPipe;
use crate::task::{Finished, HostError, NativeTask};

/// The environment every tool gets, before what its plan names.
pub const FIXED_ENV: &[(&str, &str)] =
    &[("PATH", "/usr/local/bin:/usr/bin:/bin"), ("LANG", "C.UTF-8")];

/// Names that are shells or exec-anything launchers: never allowlisted, whatever the path.
pub const NEVER_ALLOWED: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish", "ash", "busybox", "toybox",
    "env", "sudo", "su",
];

/// One allowlisted tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolEntry {
    /// Its absolute path.
    pub path: PathBuf,
    /// Its pinned sha256, checked on every run.
    pub sha256: Option<Digest>,
}

/// The tools this worker runs natively: name → binary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    tools: BTreeMap<ToolName, ToolEntry>,
}

/// Why an allowlist entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AllowlistError {
    /// The path is relative.
    #[error("tool \"{name}\": {path} is not an absolute path")]
    Relative {
        /// The tool.
        name: ToolName,
        /// Its path.
        path: PathBuf,
    },
    /// A shell or launcher.
    #[error("tool \"{name}\" ({path}) is a shell or launcher; those are never allowlisted")]
    Shell {
        /// The tool.
        name: ToolName,
        /// Its path.
        path: PathBuf,
    },
    /// Not a regular file.
    #[error("tool \"{name}\": {path} is not a regular file ({why})")]
    NotAFile {
        /// The tool.
        name: ToolName,
        /// Its path.
        path: PathBuf,
        /// What it is instead.
        why: String,
    },
}

impl Allowlist {
    /// An empty allowlist: every native task is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows `name` to run `entry`, refusing relative paths, shells and launchers (by name,
    /// by path and by what the path resolves to) and anything that is not a regular file.
    pub fn allow(&mut self, name: ToolName, entry: ToolEntry) -> Result<(), AllowlistError> {
        if !entry.path.is_absolute() {
            return Err(AllowlistError::Relative { name, path: entry.path });
        }
        let resolved =
            std::fs::canonicalize(&entry.path).map_err(|e| AllowlistError::NotAFile {
                name: name.clone(),
                path: entry.path.clone(),
                why: e.to_string(),
            })?;
        let base =
            |p: &Path| p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        if [name.to_string(), base(&entry.path), base(&resolved)]
            .iter()
            .any(|n| NEVER_ALLOWED.contains(&n.as_str()))
        {
            return Err(AllowlistError::Shell { name, path: entry.path });
        }
        match std::fs::metadata(&resolved) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(AllowlistError::NotAFile {
                    name,
                    path: entry.path,
                    why: "not a file".into(),
                });
            }
            Err(e) => {
                return Err(AllowlistError::NotAFile {
                    name,
                    path: entry.path,
                    why: e.to_string(),
                });
            }
        }
        self.tools.insert(name, entry);
        Ok(())
    }

    /// The entry for `name`.
    pub fn get(&self, name: &ToolName) -> Option<&ToolEntry> {
        self.tools.get(name)
    }

    /// Every allowed tool name.
    pub fn names(&self) -> impl Iterator<Item = &ToolName> {
        self.tools.keys()
    }
}

/// How to start the jail helper: our own binary and the arguments that make it one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Helper {
    /// The program (usually `std::env::current_exe()`).
    pub program: PathBuf,
    /// Arguments before the mode (usually `[jail::HELPER_ARG]`).
    pub args: Vec<String>,
}

impl Helper {
    /// This very binary, which must call [`jail::run_if_helper`] first thing in `main`.
    pub fn current_exe() -> std::io::Result<Self> {
        Ok(Self { program: std::env::current_exe()?, args: vec![jail::HELPER_ARG.into()] })
    }
}

/// How a [`NativeHost`] is set up.
#[derive(Debug, Clone)]
pub struct NativeConfig {
    /// The helper to start for each task.
    pub helper: Helper,
    /// The tools that may run.
    pub allowlist: Allowlist,
    /// Run even without required kernel features (logged on every task).
    pub danger_degraded: bool,
    /// Where per-task directories are made.
    pub scratch_dir: PathBuf,
    /// Probe checks to treat as missing (by name, see [`probe::names`]): to turn off a
    /// feature that misbehaves on some kernel, or to rehearse failing closed.
    pub disabled: Vec<String>,
}

/// The native sandbox: one per process.
#[derive(Debug)]
pub struct NativeHost {
    config: NativeConfig,
    probe: Probe,
    cgroups: Option<Cgroups>,
    counter: AtomicU64,
}

impl NativeHost {
    /// Probes the kernel (in the helper, and cgroups here) and keeps the result.
    pub async fn new(config: NativeConfig) -> Result<Self, HostError> {
        std::fs::create_dir_all(&config.scratch_dir).map_err(|source| HostError::Io {
            what: format!("cannot create {}", config.scratch_dir.display()),
            source,
        })?;
        let mut probe = match probe_in_helper(&config.helper).await {
            Ok(p) => p,
            Err(e) => {
                let mut p = Probe::default();
                p.push(
                    names::USER_NS,
                    Err(format!("the probe could not run: {e}")),
                    true,
                    "the jail helper must start",
                );
                p
            }
        };
        let (cgroups, detail) = match cgroup::detect() {
            Ok(_)
                if config
                    .disabled
                    .iter()
                    .any(|d| d == names::MEMORY_CGROUP || d == names::PIDS_CGROUP) =>
            {
                (None, Err("disabled by configuration".to_string()))
            }
            Ok((c, d)) => (Some(c), Ok(d)),
            Err(e) => (None, Err(e)),
        };
        probe.push(
            names::MEMORY_CGROUP,
            detail.clone(),
            false,
            "an exact memory limit with out-of-memory kills reported as MemoryExceeded; without it RLIMIT_AS caps the address space",
        );
        probe.push(
            names::PIDS_CGROUP,
            detail,
            false,
            "an exact process limit; without it RLIMIT_NPROC, counted inside the sandbox's own user namespace",
        );
        for check in &mut probe.checks {
            if config.disabled.contains(&check.name) {
                check.found = false;
                check.detail = "disabled by configuration".into();
            }
        }
        let mut host = Self { config, probe, cgroups, counter: AtomicU64::new(0) };
        // The whole jail, once, with /bin/true: the truth behind the individual checks.
        let e2e = if host.probe.ready() {
            host.end_to_end().await
        } else {
            Err("skipped: required features are missing".into())
        };
        host.probe.push(
            names::END_TO_END,
            e2e,
            true,
            "a real tool ran in a full jail and exited 0",
        );
        Ok(host)
    }

    async fn end_to_end(&self) -> Result<String, String> {
        let truth =
            ["/usr/bin/true", "/bin/true"].into_iter().map(PathBuf::from).find(|p| p.is_file());
        let Some(path) = truth else { return Err("no /usr/bin/true to run".into()) };
        let entry = ToolEntry { path, sha256: None };
        let task = NativeTask {
            program: "true".parse().map_err(|e| format!("{e}"))?,
            args: vec![],
            env: vec![],
            stdin: Bytes::new(),
            grants: vec![],
            limits: Limits { timeout_ms: 10_000, ..Limits::DEFAULT },
        };
        let run = self.run_entry(&entry, task, self.features()).await.map_err(|e| e.to_string())?;
        match run.outcome {
            Outcome::Exited { code: 0 } => {
                Ok(format!("/bin/true exited 0 in {} ms", run.wall.as_millis()))
            }
            Outcome::Refused { reason } => Err(format!("/bin/true was refused: {reason}")),
            other => Err(format!(
                "/bin/true ended with {}: {}",
                other.label(),
                String::from_utf8_lossy(&run.stderr).trim()
            )),
        }
    }

    /// What the probe found.
    pub fn probe(&self) -> &Probe {
        &self.probe
    }

    /// The allowlist.
    pub fn allowlist(&self) -> &Allowlist {
        &self.config.allowlist
    }

    /// Why native tasks are refused here, if they are.
    pub fn refusal(&self) -> Option<String> {
        let missing: Vec<String> =
            self.probe.missing().iter().map(|c| format!("{} ({})", c.name, c.detail)).collect();
        if missing.is_empty() || self.config.danger_degraded {
            None
        } else {
            Some(format!(
                "this worker's kernel lacks what the native jail requires: {}",
                missing.join("; ")
            ))
        }
    }

    fn features(&self) -> Features {
        let found = |n: &str| self.probe.found(n);
        Features {
            namespaces: [
                names::USER_NS,
                names::MOUNT_NS,
                names::PID_NS,
                names::NET_NS,
                names::IPC_UTS_NS,
            ]
            .iter()
            .all(|n| found(n)),
            cgroup_ns: found(names::CGROUP_NS),
            seccomp: found(names::SECCOMP) && found(names::NO_NEW_PRIVS),
            landlock: found(names::LANDLOCK),
        }
    }

    /// Runs one task in the jail. A tool failing, or being refused, is an [`Outcome`]; `Err`
    /// means the host itself failed.
    pub async fn run(&self, task: NativeTask) -> Result<Finished, HostError> {
        let started = Instant::now();
        let refuse = |reason: String| Ok(Finished::refused(reason, started.elapsed()));
        let Some(entry) = self.config.allowlist.get(&task.program).cloned() else {
            return refuse(format!("tool \"{}\" is not in this worker's allowlist", task.program));
        };
        if let Some(reason) = self.refusal() {
            return refuse(reason);
        }
        if !self.probe.ready() {
            let missing: Vec<&str> = self.probe.missing().iter().map(|c| c.name.as_str()).collect();
            tracing::warn!(tool = %task.program, missing = ?missing, "DEGRADED native sandbox: running without required isolation");
        }
        if let Err(reason) = task.check() {
            return refuse(reason);
        }
        self.run_entry(&entry, task, self.features()).await
    }

    async fn run_entry(
        &self,
        entry: &ToolEntry,
        task: NativeTask,
        features: Features,
    ) -> Result<Finished, HostError> {
        let started = Instant::now();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("agenix-{}-{n}", std::process::id());
        let dir =
            tempfile::Builder::new().prefix("jail-").tempdir_in(&self.config.scratch_dir).map_err(
                |source| HostError::Io { what: "cannot create the jail directory".into(), source },
            )?;
        let root = dir.path().join("root");
        std::fs::create_dir(&root).map_err(|source| HostError::Io {
            what: "cannot create the jail root".into(),
            source,
        })?;

        let limits = task.limits;
        let cg = match &self.cgroups {
            Some(c) => match c.create(&name, &limits) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create a task cgroup; using rlimits");
                    None
                }
            },
            None => None,
        };
        let mut env: Vec<(String, String)> =
            FIXED_ENV.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        env.extend(task.env.iter().filter(|(k, _)| k != "PATH" && k != "LANG").cloned());
        let spec = JailSpec {
            tool: entry.path.clone(),
            tool_sha256: entry.sha256.map(|d| *d.as_bytes()),
            argv0: task.program.to_string(),
            args: task.args.clone(),
            env,
            mounts: task
                .grants
                .iter()
                .map(|g| SpecMount {
                    host: g.host.clone(),
                    guest: g.guest.clone(),
                    writable: g.access == Access::ReadWrite,
                })
                .collect(),
            root,
            tmp_bytes: limits.file_bytes,
            rlimit_as: cg.is_none().then_some(limits.memory_bytes),
            rlimit_nproc: cg.is_none().then_some(limits.pids),
            rlimit_fsize: limits.file_bytes,
            rlimit_cpu: limits.timeout_ms.div_ceil(1000) + 1,
            cgroup_procs: cg.as_ref().map(|c| c.procs()).unwrap_or_default(),
            features,
        };
        let result = self.drive(spec, task.stdin, &limits).await;
        let (peak_cg, oom) = match &cg {
            Some(c) => (c.peak_memory(), c.oom_killed()),
            None => (None, false),
        };
        if let Some(c) = cg {
            c.remove().await;
        }
        drop(dir);
        let driven = result?;
        let (outcome, peak) = classify(&driven, &limits, oom);
        Ok(Finished {
            outcome,
            stdout: driven.stdout.contents(),
            stderr: driven.stderr.contents(),
            fuel_consumed: None,
            wall: started.elapsed(),
            peak_memory: peak_cg.unwrap_or(peak),
        })
    }

    /// Starts the helper, feeds it, reads it, and stops it at the deadline or the output cap.
    async fn drive(
        &self,
        spec: JailSpec,
        stdin: Bytes,
        limits: &Limits,
    ) -> Result<Driven, HostError> {
        let io = |what: &str| {
            let what = what.to_string();
            move |source: std::io::Error| HostError::Io { what, source }
        };
        let (mut child, ctl) =
            spawn_helper(&self.config.helper, "run").map_err(io("cannot start the jail helper"))?;
        let mut ctl = tokio::net::UnixStream::from_std(ctl).map_err(io("jail control socket"))?;
        let frame = frame_bytes(&spec).map_err(io("cannot encode the jail spec"))?;
        ctl.write_all(&frame).await.map_err(io("cannot send the jail spec"))?;

        let cap = usize::try_from(limits.output_bytes).unwrap_or(usize::MAX);
        let (stdout, stderr) = (CappedPipe::new(cap), CappedPipe::new(cap));
        let overflow = Arc::new(Notify::new());
        let stdin_pipe = child.stdin.take();
        let feed = async {
            if let Some(mut w) = stdin_pipe {
                // A tool that stops reading early is fine: ignore EPIPE.
                let _ = w.write_all(&stdin).await;
            }
        };
        let out_pipe = child.stdout.take();
        let err_pipe = child.stderr.take();
        let read_out = drain(out_pipe, &stdout, &overflow);
        let read_err = drain(err_pipe, &stderr, &overflow);
        let report = async {
            let mut buf = Vec::new();
            let _ = ctl.read_to_end(&mut buf).await;
            read_frame::<JailReport>(&mut buf.as_slice()).ok()
        };
        let all = async { tokio::join!(feed, read_out, read_err, report, child.wait()) };
        let deadline = tokio::time::sleep(Duration::from_millis(limits.timeout_ms));
        let stopped = tokio::select! {
            (_, _, _, report, _) = all => return Ok(Driven { report, stopped: None, stdout, stderr }),
            () = deadline => Stopped::TimedOut,
            () = overflow.notified() => Stopped::Output,
        };
        // Killing the helper kills the sandbox's init (parent-death signal), and with it
        // every process in the sandbox's pid namespace.
        let _ = child.start_kill();
        let _ = child.wait().await;
        Ok(Driven { report: None, stopped: Some(stopped), stdout, stderr })
    }
}

/// Why the worker stopped a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    TimedOut,
    Output,
}

#[derive(Debug)]
struct Driven {
    report: Option<JailReport>,
    stopped: Option<Stopped>,
    stdout: CappedPipe,
    stderr: CappedPipe,
}

/// Maps what happened onto the shared outcome, with the peak memory seen.
fn classify(d: &Driven, limits: &Limits, oom_killed: bool) -> (Outcome, u64) {
    let output = || {
        let stream = if d.stdout.overflowed() { "stdout" } else { "stderr" };
        Outcome::OutputExceeded { stream: stream.into() }
    };
    match (d.stopped, &d.report) {
        (Some(Stopped::TimedOut), _) => (Outcome::TimedOut, 0),
        (Some(Stopped::Output), _) => (output(), 0),
        (None, None) => {
            (Outcome::Refused { reason: "the jail helper ended without a report".into() }, 0)
        }
        (None, Some(JailReport::Failed { reason })) => {
            (Outcome::Refused { reason: reason.clone() }, 0)
        }
        (None, Some(JailReport::Ran { ended, max_rss, vm_peak })) => {
            let peak = (*max_rss).max(*vm_peak);
            let failed = *ended != Ended::Exited(0);
            // Without a memory cgroup, a tool near its address-space limit that then failed
            // ran out of memory. The address space is sampled while the tool runs and can
            // miss a short-lived peak on a busy machine; the resident peak (which never
            // exceeds the address space) is exact, so either one near the limit counts.
            let near_limit = peak > 0 && peak >= limits.memory_bytes / 10 * 9;
            let outcome = if d.stdout.overflowed() || d.stderr.overflowed() {
                output()
            } else if failed && (oom_killed || near_limit) {
                Outcome::MemoryExceeded
            } else {
                match *ended {
                    Ended::Exited(code) => Outcome::Exited { code },
                    Ended::Signaled(sig) if sig == libc::SIGXFSZ => {
                        Outcome::OutputExceeded { stream: "file".into() }
                    }
                    Ended::Signaled(sig) => Outcome::Killed { signal: sig },
                }
            };
            (outcome, peak)
        }
    }
}

/// Reads a pipe into `into`; on overflow, stops reading and wakes the driver.
async fn drain(pipe: Option<impl AsyncRead + Unpin>, into: &CappedPipe, overflow: &Notify) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if into.push(&buf[..n]).is_err() {
                    overflow.notify_one();
                    return;
                }
            }
        }
    }
}

fn frame_bytes<T: serde::Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    write_frame(&mut out, value)?;
    Ok(out)
}

/// Starts the helper in `mode` with an empty environment, piped stdio, and one end of a
/// socket pair as its fd 3.
fn spawn_helper(
    helper: &Helper,
    mode: &str,
) -> std::io::Result<(tokio::process::Child, std::os::unix::net::UnixStream)> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    let fd = theirs.as_raw_fd();
    let mut cmd = tokio::process::Command::new(&helper.program);
    cmd.args(&helper.args)
        .arg(mode)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: the closure runs between fork and exec in the child of a multi-threaded
    // process, so it may only make async-signal-safe calls: dup2 and fcntl are.
    #[allow(unsafe_code, reason = "placing the control socket at fd 3 in the child")]
    unsafe {
        cmd.pre_exec(move || {
            let rc = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
            if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
        });
    }
    let child = cmd.spawn()?;
    drop(theirs);
    Ok((child, ours))
}

/// Runs the helper's probes.
async fn probe_in_helper(helper: &Helper) -> std::io::Result<Probe> {
    let (mut child, ctl) = spawn_helper(helper, "probe")?;
    drop(child.stdin.take());
    let mut ctl = tokio::net::UnixStream::from_std(ctl)?;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), ctl.read_to_end(&mut buf)).await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    read.map_err(|_| std::io::Error::other("the probe timed out"))??;
    read_frame(&mut buf.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ran(code: i32, max_rss: u64, vm_peak: u64) -> Driven {
        Driven {
            report: Some(JailReport::Ran { ended: Ended::Exited(code), max_rss, vm_peak }),
            stopped: None,
            stdout: CappedPipe::new(16),
            stderr: CappedPipe::new(16),
        }
    }

    #[test]
    fn a_failed_tool_near_its_memory_limit_ran_out_of_memory_even_if_the_sample_missed_it() {
        let limits = Limits { memory_bytes: 64 << 20, ..Limits::DEFAULT };
        // The address space sampled early (10 MiB), the resident peak at 60 MiB.
        let (outcome, peak) = classify(&ran(3, 60 << 20, 10 << 20), &limits, false);
        assert_eq!((outcome, peak), (Outcome::MemoryExceeded, 60 << 20));
        let (outcome, _) = classify(&ran(3, 1 << 20, 60 << 20), &limits, false);
        assert_eq!(outcome, Outcome::MemoryExceeded);
        // Far from the limit, or successful: the exit as it was.
        let (outcome, _) = classify(&ran(3, 10 << 20, 10 << 20), &limits, false);
        assert_eq!(outcome, Outcome::Exited { code: 3 });
        let (outcome, _) = classify(&ran(0, 60 << 20, 60 << 20), &limits, false);
        assert_eq!(outcome, Outcome::Exited { code: 0 });
    }
}
