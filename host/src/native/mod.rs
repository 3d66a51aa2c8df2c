//! Native tools in an unprivileged, fail-closed Linux-namespace jail.
//!
//! The tool is assumed hostile. Only tools in the worker's [`Allowlist`] run (by name, never
//! by path; shells never), with their arguments as a vector and an empty environment but a
//! fixed PATH and LANG and what the plan names (each name allowed for that tool). A zygote,
//! our own binary executed once ([`jail::run_if_helper`], `zygote.rs`), forks the jail
//! helper for each run, so the fork and namespace setup happen in a small single-threaded
//! process; see `jail.rs` for the process tree and the setup order, and `root.rs` for what
//! the root holds.
//!
//! Fail closed: [`NativeHost::new`] probes the kernel; if a required feature is missing,
//! native tasks are refused with the reason, unless the operator chose degraded mode, which
//! is then logged on every task.

mod allowlist;
mod cgroup;
mod confine;
mod gate;
pub mod jail;
mod mounts;
pub mod probe;
mod root;
mod seccomp;
mod spec;
mod zygote;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agenix_proto::{Access, Limits, Outcome, ToolName};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

pub use self::allowlist::{
    Allowlist, AllowlistError, BASE_ENV, INTERPRETERS, NEVER_ALLOWED, ToolEntry, forbidden,
};
use self::cgroup::Cgroups;
use self::probe::{Probe, names};
pub use self::root::SystemFiles;
use self::spec::{
    Answer, Ended, Features, JailReport, JailSpec, SpecMount, read_frame, write_frame,
};
use crate::output::CappedPipe;
use crate::task::{Finished, HostError, NativeTask};

/// The empty directory under the scratch directory that sandboxes mount their roots on.
const ROOT_DIR: &str = "root";

/// The environment every tool gets, before what its plan names.
pub const FIXED_ENV: &[(&str, &str)] =
    &[("PATH", "/usr/local/bin:/usr/bin:/bin"), ("LANG", "C.UTF-8")];

/// What a native task asks that this host cannot give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unfit {
    /// The tool is not allowlisted, or the jail is not ready.
    #[error("{0}")]
    Tool(String),
    /// A variable the tool's entry does not allow.
    #[error("{0}")]
    Env(String),
    /// Directories, where the jail cannot place them.
    #[error("{0}")]
    Mounts(String),
    /// Limits this host cannot bound.
    #[error("{0}")]
    Limits(String),
}

/// Without a memory cgroup, the RAM of the jail's /tmp (a tmpfs of `file_bytes`) comes out
/// of the task's memory: RLIMIT_AS gets what is left. Half of the memory at most, so a tool
/// keeps room to run; past that the bound cannot be kept and the task is refused. Returns
/// the address-space limit (all of the memory for a task without a /tmp).
fn scratch_without_cgroup(limits: &Limits, scratch: bool) -> Result<u64, String> {
    if !scratch {
        return Ok(limits.memory_bytes);
    }
    if limits.file_bytes > limits.memory_bytes / 2 {
        return Err(format!(
            "without a memory cgroup this worker's /tmp comes out of the task's memory, and \
             file_bytes {} is over half of memory_bytes {}",
            limits.file_bytes, limits.memory_bytes
        ));
    }
    Ok(limits.memory_bytes - limits.file_bytes)
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
    /// The long-lived helper that forks one per task; `None` where it cannot start (each
    /// task then executes the helper itself).
    zygote: std::sync::Mutex<Option<zygote::Zygote>>,
}

impl NativeHost {
    /// Probes the kernel (in the helper, and cgroups here) and keeps the result.
    pub async fn new(config: NativeConfig) -> Result<Self, HostError> {
        let root = config.scratch_dir.join(ROOT_DIR);
        std::fs::create_dir_all(&root).map_err(|source| HostError::Io {
            what: format!("cannot create {}", root.display()),
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
            "an exact memory limit, /tmp's pages included, with out-of-memory kills reported as MemoryExceeded; without it RLIMIT_AS caps the address space and /tmp's size comes out of the memory limit (file_bytes at most half of memory_bytes)",
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
        // One helper process for the worker's life, forking one per task; where it cannot
        // start, each task executes the helper.
        let start = probe.ready() || config.danger_degraded;
        let mut host = Self { config, probe, cgroups, zygote: std::sync::Mutex::new(None) };
        if start {
            let zygote = zygote::Zygote::start(&host.config.helper, host.spare_root())
                .map_err(|e| tracing::warn!(error = %e, "cannot start the jail zygote"))
                .ok();
            host.zygote = std::sync::Mutex::new(zygote);
        }
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
        let system = SystemFiles::of_tool(&path, &[])?;
        let entry = ToolEntry::new(path);
        let task = NativeTask {
            program: "true".parse().map_err(|e| format!("{e}"))?,
            args: vec![],
            env: vec![],
            stdin: Bytes::new(),
            grants: vec![],
            limits: Limits { timeout_ms: 10_000, ..Limits::DEFAULT },
            scratch: true,
        };
        let run = self
            .run_entry(&entry, &system, task, self.features())
            .await
            .map_err(|e| e.to_string())?;
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

    /// Each mechanism in force for native tasks on this host, and the fallback taken where
    /// the preferred one is missing: (what, how), for `agw doctor` and the logs.
    pub fn mechanisms(&self) -> Vec<(&'static str, String)> {
        let f = self.features();
        let mut m = vec![];
        let zygote = self.zygote.lock().map(|z| z.is_some()).unwrap_or(false);
        m.push((
            "sandbox start",
            if zygote && f.namespaces {
                "a zygote (this binary, started once) keeps one jail helper forked ahead, whose \
                 sandbox's namespaces, /dev, /proc and /etc are made before its task comes \
                 (one sandbox per task, never reused); each task takes it, and the next is \
                 made while it runs"
                    .to_string()
            } else if zygote {
                "a zygote (this binary, started once) forks the jail helper for each task; it \
                 forks the tool"
                    .to_string()
            } else {
                "the worker executes the jail helper (this binary) for each task (no zygote \
                 here); it clones the sandbox's namespaces and forks the tool"
                    .to_string()
            },
        ));
        m.push((
            "root",
            if f.namespaces {
                format!(
                    "built per task on a tmpfs: the tool's binary, ELF loader, libraries and \
                     data bound one by one, then sealed read-only {}",
                    if f.mount_setattr {
                        "with one mount_setattr(2) a mount"
                    } else {
                        "by a remount of each bind (no mount_setattr here)"
                    }
                )
            } else {
                "none (degraded): the host's, read only where the tool's files are (with \
                 Landlock), directories refused"
                    .to_string()
            },
        ));
        m.push((
            "system calls",
            if f.seccomp {
                format!(
                    "allowlist of {} calls, anything else ENOSYS; {} dangerous ones EPERM; x32 and \
                     foreign-architecture calls kill the tool",
                    seccomp::allowed_count(),
                    seccomp::denied_count()
                )
            } else {
                "no filter (degraded)".to_string()
            },
        ));
        m.push((
            "file-system rules",
            if f.landlock {
                let kernel = confine::landlock_abi();
                format!(
                    "Landlock (kernel ABI {kernel}, rules up to ABI {})",
                    kernel.min(confine::LANDLOCK_ABI_USED)
                )
            } else {
                "none: the root alone holds what the tool may see".to_string()
            },
        ));
        m.push((
            "memory",
            match &self.cgroups {
                Some(c) => format!("{} memory limit, /tmp's pages charged to it", c.kind()),
                None => "RLIMIT_AS, less /tmp, whose size comes out of the memory limit; one \
                         process per task (fork refused, threads share the bound)"
                    .into(),
            },
        ));
        m.push((
            "processes",
            match &self.cgroups {
                Some(c) => format!("{} pids limit", c.kind()),
                None => "RLIMIT_NPROC inside the sandbox's user namespace".into(),
            },
        ));
        m
    }

    /// The zygote's process id, while one runs (for operators and tests).
    pub fn zygote_pid(&self) -> Option<u32> {
        self.zygote.lock().ok()?.as_ref()?.pid()
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

    /// Where the zygote's spares prepare their roots (the one root mount point), if it keeps
    /// spares: only where the jail has namespaces.
    fn spare_root(&self) -> Option<PathBuf> {
        self.features().namespaces.then(|| self.config.scratch_dir.join(ROOT_DIR))
    }

    /// Where task cgroups are made: only where the jail has namespaces, as only its
    /// sandbox's init is moved into one (degraded mode without namespaces forks the tool
    /// from the helper, and bounds it with rlimits).
    fn task_cgroups(&self) -> Option<&Cgroups> {
        self.cgroups.as_ref().filter(|_| self.features().namespaces)
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
            mount_setattr: found(names::MOUNT_SETATTR),
        }
    }

    /// Runs one task in the jail. A tool failing, or being refused, is an [`Outcome`]; `Err`
    /// means the host itself failed.
    pub async fn run(&self, task: NativeTask) -> Result<Finished, HostError> {
        let started = Instant::now();
        let refuse = |reason: String| Ok(Finished::refused(reason, started.elapsed()));
        let env = task.env.iter().map(|(k, _)| k.as_str());
        let mounts: Vec<&str> = task.grants.iter().map(|g| g.guest.as_str()).collect();
        if let Err(unfit) = self.fits(&task.program, env, &mounts, &task.limits, task.scratch) {
            return refuse(unfit.to_string());
        }
        // `fits` found it.
        let Some(allowed) = self.config.allowlist.tools.get(&task.program).cloned() else {
            return refuse(format!("tool \"{}\" is not in this worker's allowlist", task.program));
        };
        if !self.probe.ready() {
            let missing: Vec<&str> = self.probe.missing().iter().map(|c| c.name.as_str()).collect();
            tracing::warn!(tool = %task.program, missing = ?missing, "DEGRADED native sandbox: running without required isolation");
        }
        if let Err(reason) = task.check() {
            return refuse(reason);
        }
        self.run_entry(&allowed.entry, &allowed.system, task, self.features()).await
    }

    /// Whether this host can run `tool` with variables named `env`, directories at the
    /// guest paths `mounts` and `limits`: the tool allowlisted, the jail ready, every
    /// variable allowed for the tool ([`BASE_ENV`] and its entry's own), no directory over
    /// or inside the tool's own files, directories only where the jail has a mount
    /// namespace to put them in (degraded mode without one has no guest paths to map them
    /// to, and never widens access instead), and a `/tmp` it can bound (if `scratch`). A worker asks this
    /// before taking a job: a refusal is its own lack, not the plan's fault.
    pub fn fits<'a>(
        &self,
        tool: &ToolName,
        env: impl IntoIterator<Item = &'a str>,
        mounts: &[&str],
        limits: &Limits,
        scratch: bool,
    ) -> Result<(), Unfit> {
        let Some(allowed) = self.config.allowlist.tools.get(tool) else {
            return Err(Unfit::Tool(format!("tool \"{tool}\" is not in this worker's allowlist")));
        };
        if let Some(reason) = self.refusal() {
            return Err(Unfit::Tool(reason));
        }
        let entry = &allowed.entry;
        if let Some(name) = env.into_iter().find(|k| !entry.allows_env(k)) {
            let mut names: Vec<&str> = BASE_ENV.to_vec();
            names.extend(entry.env.iter().map(String::as_str));
            return Err(Unfit::Env(format!(
                "env {name}: this worker passes \"{tool}\" only {}",
                names.join(", ")
            )));
        }
        if self.task_cgroups().is_none() {
            scratch_without_cgroup(limits, scratch).map_err(Unfit::Limits)?;
        }
        // A directory mounted over the tool's own files would hide them (or its libraries),
        // one mounted inside them would be made in a read-only bind.
        for guest in mounts {
            let g = Path::new(guest);
            if let Some(path) =
                allowed.system.paths().find(|p| p.starts_with(g) || g.starts_with(p))
            {
                return Err(Unfit::Mounts(format!(
                    "mount {guest} would overlap {}, one of the files of \"{tool}\"",
                    path.display()
                )));
            }
        }
        if !mounts.is_empty() && !self.features().namespaces {
            return Err(Unfit::Mounts(
                "this worker runs tools without mount namespaces (degraded), so it cannot give \
                 a task directories"
                    .into(),
            ));
        }
        Ok(())
    }

    async fn run_entry(
        &self,
        entry: &ToolEntry,
        system: &SystemFiles,
        task: NativeTask,
        features: Features,
    ) -> Result<Finished, HostError> {
        let started = Instant::now();
        let asked_ns = monotonic_ns();
        let name = task_name();
        // With a mount namespace, every sandbox mounts its root on the same empty directory,
        // each in its own namespace; without one, the tool runs in a directory of its own.
        let dir = (!features.namespaces)
            .then(|| tempfile::Builder::new().prefix("jail-").tempdir_in(&self.config.scratch_dir))
            .transpose()
            .map_err(|source| HostError::Io {
                what: "cannot create the jail directory".into(),
                source,
            })?;
        let root = match &dir {
            Some(d) => {
                let root = d.path().join("root");
                std::fs::create_dir(&root).map_err(|source| HostError::Io {
                    what: "cannot create the jail root".into(),
                    source,
                })?;
                root
            }
            None => {
                // Made again if something (a cleaner of old files) removed it.
                let root = self.config.scratch_dir.join(ROOT_DIR);
                std::fs::create_dir_all(&root).map_err(|source| HostError::Io {
                    what: format!("cannot create {}", root.display()),
                    source,
                })?;
                root
            }
        };

        let limits = task.limits;
        let io = |what: &'static str| move |source| HostError::Io { what: what.into(), source };
        // The helper first: with it comes the cgroup its sandbox may be in already.
        let (launched, offered) = self.launch().map_err(io("cannot start the jail helper"))?;
        let mut cg_failed = None;
        let cg = match self.task_cgroups() {
            Some(c) => match task_cgroup(c, offered, &name, &limits) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create a task cgroup; using rlimits");
                    cg_failed = Some(e.to_string());
                    None
                }
            },
            None => None,
        };
        let rlimit_as = match (&cg, scratch_without_cgroup(&limits, task.scratch)) {
            (Some(_), _) => None,
            (None, Ok(address_space)) => Some(address_space),
            (None, Err(reason)) => {
                let reason = match cg_failed {
                    Some(e) => format!("cannot create the task's cgroup ({e}), and {reason}"),
                    None => reason,
                };
                return Ok(Finished::refused(reason, started.elapsed()));
            }
        };
        // The fixed variables, unless the plan sets one (PATH it never may).
        let mut env: Vec<(String, String)> = FIXED_ENV
            .iter()
            .filter(|(k, _)| !task.env.iter().any(|(n, _)| n == k))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.extend(task.env.iter().filter(|(k, _)| k != "PATH").cloned());
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
            system: system.entries.clone(),
            root,
            tmp_bytes: task.scratch.then_some(limits.file_bytes),
            rlimit_as,
            rlimit_nproc: cg.is_none().then_some(limits.pids),
            rlimit_fsize: limits.file_bytes,
            rlimit_cpu: limits.timeout_ms.div_ceil(1000) + 1,
            cgroup: cg.as_ref().map(|c| c.dirs().clone()),
            features,
        };
        let result = self.drive(launched, spec, task.stdin, &limits).await;
        // What the task used, as the helper read it before removing the cgroup once its
        // sandbox had ended (should it fail to, dropping `c` removes it later); without its
        // answer (the helper gone), as the cgroup tells, removed here.
        let answered = match &result {
            Ok(Driven { used: Some(used), .. }) => Some(*used),
            _ => None,
        };
        let used = match (cg, answered) {
            (Some(c), None) => {
                let used = c.dirs().used();
                c.remove().await;
                Some(used)
            }
            (c, answered) => {
                drop(c);
                answered
            }
        };
        let (peak_cg, oom) = used.map_or((None, false), |u| (u.peak, u.oom_killed));
        drop(dir);
        let driven = result?;
        let memory = rlimit_as.unwrap_or(limits.memory_bytes);
        let (outcome, peak) = classify(&driven, memory, oom);
        let setup = match &driven.report {
            Some(JailReport::Ran { exec_at_ns, .. }) if *exec_at_ns > asked_ns => {
                Some(Duration::from_nanos(exec_at_ns - asked_ns))
            }
            _ => None,
        };
        Ok(Finished {
            outcome,
            stdout: driven.stdout.contents(),
            stderr: driven.stderr.contents(),
            fuel_consumed: None,
            wall: started.elapsed(),
            peak_memory: peak_cg.unwrap_or(peak),
            setup,
        })
    }

    /// Feeds the helper `l` its task, reads it, and stops it at the deadline or the output
    /// cap. The helper answers before it has ended.
    async fn drive(
        &self,
        mut l: Launched,
        spec: JailSpec,
        stdin: Bytes,
        limits: &Limits,
    ) -> Result<Driven, HostError> {
        let io = |what: &str| {
            let what = what.to_string();
            move |source: std::io::Error| HostError::Io { what, source }
        };
        let frame = frame_bytes(&spec).map_err(io("cannot encode the jail spec"))?;
        l.ctl.write_all(&frame).await.map_err(io("cannot send the jail spec"))?;
        // While this task runs: the next one's cgroup.
        self.offer_cgroup();

        let cap = usize::try_from(limits.output_bytes).unwrap_or(usize::MAX);
        let (stdout, stderr) = (CappedPipe::new(cap), CappedPipe::new(cap));
        let overflow = Arc::new(Notify::new());
        let mut stdin_pipe = l.stdin.take();
        let feed = async {
            if let Some(w) = &mut stdin_pipe {
                // A tool that stops reading early is fine: ignore EPIPE.
                let _ = w.write_all(&stdin).await;
            }
            // End of input for the tool.
            drop(stdin_pipe);
        };
        let read_out = drain(l.stdout.take(), &stdout, &overflow);
        let read_err = drain(l.stderr.take(), &stderr, &overflow);
        let ctl = &mut l.ctl;
        // One frame: the helper answers before its sandbox's init has finished ending.
        let report = async { spec::read_frame_async::<Answer>(ctl).await.ok() };
        let child = &mut l.child;
        let exited = async {
            if let Some(c) = child {
                let _ = c.wait().await;
            }
        };
        let all = async { tokio::join!(feed, read_out, read_err, report, exited) };
        let deadline = tokio::time::sleep(Duration::from_millis(limits.timeout_ms));
        let stopped = tokio::select! {
            (_, _, _, answer, _) = all => {
                let (report, used) = match answer {
                    Some(a) => (Some(a.report), a.cgroup),
                    None => (None, None),
                };
                return Ok(Driven { report, used, stopped: None, stdout, stderr });
            }
            () = deadline => Stopped::TimedOut,
            () = overflow.notified() => Stopped::Output,
        };
        let used = l.stop().await.and_then(|a| a.cgroup);
        Ok(Driven { report: None, used, stopped: Some(stopped), stdout, stderr })
    }

    /// Makes a cgroup for the next task and offers it to the zygote's spare, unless one
    /// offered already waits (or there are no spares, or no task cgroups).
    fn offer_cgroup(&self) {
        let Some(cgroups) = self.task_cgroups() else { return };
        let offering = |z: &Option<zygote::Zygote>| z.as_ref().is_some_and(|z| !z.has_offer());
        if self.spare_root().is_none() || !offering(&self.zygote()) {
            return;
        }
        // Made without holding the zygote: other tasks may start meanwhile.
        let cg = match cgroups.make(&task_name()) {
            Ok(cg) => cg,
            Err(e) => {
                tracing::debug!(error = %e, "cannot make a cgroup for the next task");
                return;
            }
        };
        let mut zygote = self.zygote();
        match zygote.as_mut() {
            Some(z) if !z.has_offer() => z.offer(cg),
            // Offered meanwhile by another task: this one goes (dropped, removed).
            _ => drop(cg),
        }
    }

    fn zygote(&self) -> std::sync::MutexGuard<'_, Option<zygote::Zygote>> {
        self.zygote.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a helper for one task: forked by the zygote, or (without one) executed. With
    /// it, the cgroup offered to the zygote's spare for this request, if one was
    /// ([`NativeHost::offer_cgroup`]): taken with the request, under one lock, so that the
    /// spare that entered it gets this request.
    fn launch(&self) -> std::io::Result<(Launched, Option<cgroup::TaskCgroup>)> {
        let mut zygote = self.zygote();
        if let Some(z) = zygote.as_mut() {
            match Launched::forked(z) {
                Ok(l) => return Ok((l, z.take_offer())),
                // This process's own lack (out of descriptors): the zygote, and the tasks
                // its helpers run, are not at fault.
                Err(Forked::Here(e)) => return Err(e),
                Err(Forked::Zygote(e)) => {
                    // Gone (killed, or out of memory): start another, once.
                    tracing::warn!(error = %e, "the jail zygote is gone; starting it again");
                    *zygote = zygote::Zygote::start(&self.config.helper, self.spare_root()).ok();
                    if let Some(z) = zygote.as_ref() {
                        return Launched::forked(z).map(|l| (l, None)).map_err(Forked::into_inner);
                    }
                    tracing::warn!("the jail zygote cannot start; executing the helper per task");
                }
            }
        }
        drop(zygote);
        let (mut child, ctl) = spawn_helper(&self.config.helper, "run")?;
        let boxed_in = |p: Option<tokio::process::ChildStdin>| {
            p.map(|p| Box::new(p) as Box<dyn AsyncWrite + Unpin + Send>)
        };
        let boxed_out = |p: Option<tokio::process::ChildStdout>| {
            p.map(|p| Box::new(p) as Box<dyn AsyncRead + Unpin + Send>)
        };
        let boxed_err = |p: Option<tokio::process::ChildStderr>| {
            p.map(|p| Box::new(p) as Box<dyn AsyncRead + Unpin + Send>)
        };
        let launched = Launched {
            ctl: tokio::net::UnixStream::from_std(ctl)?,
            stdin: boxed_in(child.stdin.take()),
            stdout: boxed_out(child.stdout.take()),
            stderr: boxed_err(child.stderr.take()),
            child: Some(child),
        };
        Ok((launched, None))
    }
}

/// A name for a task's cgroup: one sequence for the whole process, since several hosts in
/// one process (agx, tests) must never name two sandboxes' cgroups alike.
fn task_name() -> String {
    static TASKS: AtomicU64 = AtomicU64::new(0);
    let n = TASKS.fetch_add(1, Ordering::Relaxed);
    format!("agenix-{}-{n}", std::process::id())
}

/// The task's cgroup, with its limits: the one `offered` to the spare ahead of it if that
/// is still there to be limited (the sandbox that takes the task may be in it already), else
/// one made now.
fn task_cgroup(
    cgroups: &Cgroups,
    offered: Option<cgroup::TaskCgroup>,
    name: &str,
    limits: &Limits,
) -> std::io::Result<cgroup::TaskCgroup> {
    if let Some(cg) = offered {
        match cg.limit(limits) {
            Ok(()) => return Ok(cg),
            Err(e) => tracing::debug!(error = %e, "the cgroup made ahead is gone; making one"),
        }
    }
    let cg = cgroups.make(name)?;
    cg.limit(limits)?;
    Ok(cg)
}

/// Why a helper could not be had from the zygote.
#[derive(Debug)]
enum Forked {
    /// The worker's own failure (out of descriptors, say).
    Here(std::io::Error),
    /// The zygote took no request: it is gone.
    Zygote(std::io::Error),
}

impl Forked {
    fn into_inner(self) -> std::io::Error {
        match self {
            Self::Here(e) | Self::Zygote(e) => e,
        }
    }
}

/// A running helper, from the worker's side.
struct Launched {
    /// Its control socket: the spec out, the report back; shut for writing means stop.
    ctl: tokio::net::UnixStream,
    stdin: Option<Box<dyn AsyncWrite + Unpin + Send>>,
    stdout: Option<Box<dyn AsyncRead + Unpin + Send>>,
    stderr: Option<Box<dyn AsyncRead + Unpin + Send>>,
    /// The helper's process, when the worker executed it (no zygote).
    child: Option<tokio::process::Child>,
}

impl Launched {
    /// Asks the zygote for a helper with fresh pipes and a fresh control socket.
    fn forked(z: &zygote::Zygote) -> Result<Self, Forked> {
        use tokio::net::unix::pipe;
        let here = Forked::Here;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(here)?;
        let theirs = std::os::fd::OwnedFd::from(theirs);
        let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
        let pair = || nix::unistd::pipe2(cloexec).map_err(|e| here(e.into()));
        let ((in_r, in_w), (out_r, out_w), (err_r, err_w)) = (pair()?, pair()?, pair()?);
        z.launch([&theirs, &in_r, &out_w, &err_w]).map_err(Forked::Zygote)?;
        // Only the helper holds these now: their ends close when it (and its sandbox) ends.
        drop((theirs, in_r, out_w, err_w));
        let ready = || -> std::io::Result<Self> {
            ours.set_nonblocking(true)?;
            Ok(Self {
                ctl: tokio::net::UnixStream::from_std(ours)?,
                stdin: Some(Box::new(pipe::Sender::from_owned_fd(in_w)?)),
                stdout: Some(Box::new(pipe::Receiver::from_owned_fd(out_r)?)),
                stderr: Some(Box::new(pipe::Receiver::from_owned_fd(err_r)?)),
                child: None,
            })
        };
        ready().map_err(here)
    }

    /// Stops the helper and its sandbox, and waits until they are gone. Shutting the
    /// control socket for writing tells the helper to kill the sandbox's init, and with it
    /// every process in the sandbox's pid namespace; a helper the worker executed is also
    /// killed outright (its init dies with it: parent-death signal).
    /// Returns the helper's answer, which says what the task used of its cgroup before the
    /// helper removed it.
    async fn stop(mut self) -> Option<Answer> {
        let _ = self.ctl.shutdown().await;
        if let Some(c) = &mut self.child {
            let _ = c.start_kill();
        }
        // The helper's end closes when it exits (its sandbox's processes hold no copy).
        let mut rest = Vec::new();
        let gone = self.ctl.read_to_end(&mut rest);
        if tokio::time::timeout(HELPER_STOP_WAIT, gone).await.is_err() {
            tracing::warn!("a jail helper did not stop within {HELPER_STOP_WAIT:?}");
        }
        if let Some(mut c) = self.child {
            let _ = c.wait().await;
        }
        read_frame::<Answer>(&mut rest.as_slice()).ok()
    }
}

/// The system's monotonic clock, in ns: one clock for the worker and its jail helpers, so
/// the time between the worker asking for a jail and the tool starting in it can be read.
pub(crate) fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map_or(0, |t| u64::try_from(Duration::from(t).as_nanos()).unwrap_or(u64::MAX))
}

/// How long a stopped helper may take to kill its sandbox and exit.
const HELPER_STOP_WAIT: Duration = Duration::from_secs(10);

/// Why the worker stopped a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    TimedOut,
    Output,
}

#[derive(Debug)]
struct Driven {
    report: Option<JailReport>,
    /// What the task used of its cgroup, as the helper answered.
    used: Option<cgroup::Used>,
    stopped: Option<Stopped>,
    stdout: CappedPipe,
    stderr: CappedPipe,
}

/// Maps what happened onto the shared outcome, with the peak memory seen.
fn classify(d: &Driven, memory: u64, oom_killed: bool) -> (Outcome, u64) {
    let output = || {
        let stream = if d.stdout.overflowed() { "stdout" } else { "stderr" };
        Outcome::OutputExceeded { stream: stream.into() }
    };
    match (d.stopped, &d.report) {
        (Some(Stopped::TimedOut), _) => (Outcome::TimedOut, 0),
        (Some(Stopped::Output), _) => (output(), 0),
        // The out-of-memory killer may pick the sandbox's init as well as the tool.
        (None, None | Some(JailReport::Failed { .. })) if oom_killed => {
            (Outcome::MemoryExceeded, memory)
        }
        (None, None) => {
            (Outcome::Refused { reason: "the jail helper ended without a report".into() }, 0)
        }
        (None, Some(JailReport::Failed { reason })) => {
            (Outcome::Refused { reason: reason.clone() }, 0)
        }
        (None, Some(JailReport::Ran { ended, max_rss, vm_peak, .. })) => {
            let peak = (*max_rss).max(*vm_peak);
            let failed = *ended != Ended::Exited(0);
            // Without a memory cgroup, a tool near its address-space limit that then failed
            // ran out of memory. The address space is sampled while the tool runs and can
            // miss a short-lived peak on a busy machine; the resident peak (which never
            // exceeds the address space) is exact, so either one near the limit counts.
            let near_limit = peak > 0 && peak >= memory / 10 * 9;
            let outcome = if d.stdout.overflowed() || d.stderr.overflowed() {
                output()
            } else if oom_killed || (failed && near_limit) {
                // Any out-of-memory kill in the task's cgroup (a child's too): what the tool
                // printed may be missing what that process would have added.
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
    let child = spawn_with_fd3(helper, &[mode.as_ref()], theirs.into(), true)?;
    Ok((child, ours))
}

/// Starts the helper in `mode` with an empty environment, `fd3` as its fd 3, and stdio
/// piped (or, for the zygote, /dev/null).
fn spawn_with_fd3(
    helper: &Helper,
    mode: &[&std::ffi::OsStr],
    fd3: std::os::fd::OwnedFd,
    piped: bool,
) -> std::io::Result<tokio::process::Child> {
    let fd = fd3.as_raw_fd();
    let stdio = || if piped { Stdio::piped() } else { Stdio::null() };
    let mut cmd = tokio::process::Command::new(&helper.program);
    cmd.args(&helper.args)
        .args(mode)
        .env_clear()
        .stdin(stdio())
        .stdout(stdio())
        .stderr(stdio())
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
    drop(fd3);
    Ok(child)
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
            report: Some(JailReport::Ran {
                ended: Ended::Exited(code),
                max_rss,
                vm_peak,
                exec_at_ns: 0,
            }),
            used: None,
            stopped: None,
            stdout: CappedPipe::new(16),
            stderr: CappedPipe::new(16),
        }
    }

    #[test]
    fn a_sandbox_killed_for_memory_is_memory_exceeded_not_a_setup_failure() {
        for report in [None, Some(JailReport::Failed { reason: "no report".into() })] {
            let d = Driven {
                report,
                used: None,
                stopped: None,
                stdout: CappedPipe::new(16),
                stderr: CappedPipe::new(16),
            };
            assert_eq!(classify(&d, 64 << 20, true).0, Outcome::MemoryExceeded);
            assert!(matches!(classify(&d, 64 << 20, false).0, Outcome::Refused { .. }));
        }
        // A tool that exited 0 after a process of its was killed for memory did not succeed.
        assert_eq!(classify(&ran(0, 1 << 20, 1 << 20), 64 << 20, true).0, Outcome::MemoryExceeded);
    }

    #[test]
    fn a_failed_tool_near_its_memory_limit_ran_out_of_memory_even_if_the_sample_missed_it() {
        let limits = Limits { memory_bytes: 64 << 20, ..Limits::DEFAULT };
        // The address space sampled early (10 MiB), the resident peak at 60 MiB.
        let (outcome, peak) = classify(&ran(3, 60 << 20, 10 << 20), limits.memory_bytes, false);
        assert_eq!((outcome, peak), (Outcome::MemoryExceeded, 60 << 20));
        let (outcome, _) = classify(&ran(3, 1 << 20, 60 << 20), limits.memory_bytes, false);
        assert_eq!(outcome, Outcome::MemoryExceeded);
        // Far from the limit, or successful: the exit as it was.
        let (outcome, _) = classify(&ran(3, 10 << 20, 10 << 20), limits.memory_bytes, false);
        assert_eq!(outcome, Outcome::Exited { code: 3 });
        let (outcome, _) = classify(&ran(0, 60 << 20, 60 << 20), limits.memory_bytes, false);
        assert_eq!(outcome, Outcome::Exited { code: 0 });
    }
}
