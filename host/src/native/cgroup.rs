//! Per-task cgroups for exact memory and process limits: cgroup v2 where a delegated
//! subtree with the memory and pids controllers is writable, else the v1 memory and pids
//! hierarchies where writable (as root on older hosts). Without either, the jail falls back
//! to RLIMIT_AS and RLIMIT_NPROC.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agenix_proto::Limits;

/// Where task cgroups are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cgroups {
    /// A v2 directory whose children get the memory and pids controllers.
    V2(PathBuf),
    /// v1 memory and pids directories.
    V1 {
        /// Under the memory hierarchy.
        memory: PathBuf,
        /// Under the pids hierarchy.
        pids: PathBuf,
    },
}

/// The cgroup(s) of one task. Removed by [`TaskCgroup::remove`]; if the run is cancelled
/// first, or the helper removes them ([`Dirs::remove_now`]), dropping it schedules the
/// removal instead (a no-op for directories already gone).
#[derive(Debug)]
pub(crate) struct TaskCgroup {
    dirs: Dirs,
    removed: bool,
}

/// Where one task's cgroup(s) are: what the helper needs to place the sandbox in them,
/// read what it used, and remove them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Dirs {
    v2: bool,
    memory: PathBuf,
    pids: PathBuf,
}

/// What a task used of its cgroup, read by the helper once nothing of the task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Used {
    /// The peak memory charged to it.
    pub peak: Option<u64>,
    /// Whether the kernel killed something in it for running out of memory.
    pub oom_killed: bool,
}

fn own_cgroups() -> Vec<(String, String)> {
    fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?.to_string();
            let path = parts.next()?.to_string();
            Some((controllers, path))
        })
        .collect()
}

/// Mount points of cgroup file systems: (fstype, super options, mount point).
fn cgroup_mounts() -> Vec<(String, String, PathBuf)> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?.to_string();
            let _source = r.next()?;
            let options = r.next().unwrap_or("").to_string();
            fstype.starts_with("cgroup").then(|| (fstype, options, PathBuf::from(point)))
        })
        .collect()
}

fn writable_dir(dir: &Path) -> bool {
    // Unique within the process too: several hosts may probe at once.
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = dir.join(format!("agenix-probe-{}-{n}", std::process::id()));
    let made = fs::create_dir(&probe).is_ok();
    if made {
        let _ = fs::remove_dir(&probe);
    }
    made
}

fn join(mount: &Path, cgroup_path: &str) -> PathBuf {
    mount.join(cgroup_path.trim_start_matches('/'))
}

/// Finds where task cgroups can be made, with a description for `agw doctor`.
pub(crate) fn detect() -> Result<(Cgroups, String), String> {
    let own = own_cgroups();
    let mounts = cgroup_mounts();
    // v2: this process's cgroup or its parent, with memory and pids delegated to children.
    if let (Some((_, _, mnt)), Some((_, path))) =
        (mounts.iter().find(|(t, _, _)| t == "cgroup2"), own.iter().find(|(c, _)| c.is_empty()))
    {
        let mine = join(mnt, path);
        let parent = mine.parent().map(Path::to_path_buf);
        let delegated = |dir: &Path| {
            let control =
                fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
            let words: Vec<&str> = control.split_whitespace().collect();
            words.contains(&"memory") && words.contains(&"pids") && writable_dir(dir)
        };
        for dir in [Some(mine.clone()), parent.clone()].into_iter().flatten() {
            if delegated(&dir) {
                return Ok((Cgroups::V2(dir.clone()), format!("cgroup v2 at {}", dir.display())));
            }
        }
        // A parent handed to this process (systemd's `Delegate=yes` with `DelegateSubgroup=`
        // puts the service in a leaf of its delegated cgroup): it holds no process, so it
        // may give memory and pids to its children once asked. Only an unprivileged worker
        // asks: root can write to cgroups that were never handed to it.
        let unprivileged = !nix::unistd::geteuid().is_root();
        if let Some(dir) = parent.filter(|d| unprivileged && writable_dir(d)) {
            let _ = fs::write(dir.join("cgroup.subtree_control"), "+memory +pids");
            if delegated(&dir) {
                return Ok((Cgroups::V2(dir.clone()), format!("cgroup v2 at {}", dir.display())));
            }
        }
    }
    // v1: writable memory and pids hierarchies.
    let v1 = |controller: &str| -> Option<PathBuf> {
        let (_, _, mnt) = mounts
            .iter()
            .find(|(t, o, _)| t == "cgroup" && o.split(',').any(|x| x == controller))?;
        let (_, path) = own.iter().find(|(c, _)| c.split(',').any(|x| x == controller))?;
        let dir = join(mnt, path);
        writable_dir(&dir).then_some(dir)
    };
    match (v1("memory"), v1("pids")) {
        (Some(memory), Some(pids)) => {
            let d = format!("cgroup v1 at {} and {}", memory.display(), pids.display());
            Ok((Cgroups::V1 { memory, pids }, d))
        }
        _ => {
            Err("no writable cgroup with memory and pids controllers (v2 delegation or v1 as root)"
                .into())
        }
    }
}

impl Cgroups {
    /// "cgroup v2" or "cgroup v1".
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::V2(_) => "cgroup v2",
            Self::V1 { .. } => "cgroup v1",
        }
    }

    /// Makes the cgroup(s) for one task, without limits yet (see [`TaskCgroup::limit`]).
    pub(crate) fn make(&self, name: &str) -> std::io::Result<TaskCgroup> {
        let dirs = match self {
            Self::V2(base) => {
                let dir = base.join(name);
                Dirs { v2: true, memory: dir.clone(), pids: dir }
            }
            Self::V1 { memory, pids } => {
                Dirs { v2: false, memory: memory.join(name), pids: pids.join(name) }
            }
        };
        fs::create_dir(&dirs.memory)?;
        // Removed if the rest fails.
        let cg = TaskCgroup { dirs, removed: false };
        if !cg.dirs.v2 {
            fs::create_dir(&cg.dirs.pids)?;
        }
        Ok(cg)
    }
}

fn counter(file: &Path, key: &str) -> u64 {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

impl TaskCgroup {
    /// Where it is.
    pub(crate) fn dirs(&self) -> &Dirs {
        &self.dirs
    }

    /// Sets the task's memory and process limits.
    pub(crate) fn limit(&self, limits: &Limits) -> std::io::Result<()> {
        let write = |dir: &Path, file: &str, value: String| fs::write(dir.join(file), value);
        let (memory, pids) = (&self.dirs.memory, &self.dirs.pids);
        if self.dirs.v2 {
            write(memory, "memory.max", limits.memory_bytes.to_string())?;
            // No swap: the limit is the limit.
            let _ = write(memory, "memory.swap.max", "0".into());
        } else {
            write(memory, "memory.limit_in_bytes", limits.memory_bytes.to_string())?;
            let _ = write(memory, "memory.memsw.limit_in_bytes", limits.memory_bytes.to_string());
        }
        write(pids, "pids.max", limits.pids.to_string())
    }

    /// Removes it once its processes are gone (they die with the sandbox's init; allow them
    /// a moment).
    pub(crate) async fn remove(mut self) {
        self.removed = true;
        remove_dirs(self.dirs.dirs()).await;
    }
}

impl Dirs {
    /// The files the sandbox's init is written into.
    pub(crate) fn procs(&self) -> Vec<PathBuf> {
        if self.v2 {
            vec![self.memory.join("cgroup.procs")]
        } else {
            vec![self.memory.join("cgroup.procs"), self.pids.join("cgroup.procs")]
        }
    }

    /// Whether the kernel killed something in it for running out of memory.
    pub(crate) fn oom_killed(&self) -> bool {
        if self.v2 {
            counter(&self.memory.join("memory.events"), "oom_kill ") > 0
        } else {
            counter(&self.memory.join("memory.oom_control"), "oom_kill ") > 0
                || (counter(&self.memory.join("memory.failcnt"), "") > 0
                    && counter(&self.memory.join("memory.oom_control"), "under_oom ") > 0)
        }
    }

    /// The peak memory charged to it.
    pub(crate) fn peak_memory(&self) -> Option<u64> {
        let file = if self.v2 { "memory.peak" } else { "memory.max_usage_in_bytes" };
        fs::read_to_string(self.memory.join(file)).ok()?.trim().parse().ok()
    }

    /// What the task used.
    pub(crate) fn used(&self) -> Used {
        Used { peak: self.peak_memory(), oom_killed: self.oom_killed() }
    }

    /// Removes them, from the helper, once the sandbox's processes are all reaped (so they
    /// are empty). Whatever is left is the worker's to remove.
    pub(crate) fn remove_now(&self) {
        for dir in self.dirs() {
            let _ = fs::remove_dir(dir);
        }
    }

    fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.memory.clone()];
        if !self.v2 {
            dirs.push(self.pids.clone());
        }
        dirs
    }
}

impl Drop for TaskCgroup {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let dirs = self.dirs.dirs();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            // Most often the helper removes them as soon as it has reaped its sandbox: a
            // first try now would only find them busy.
            rt.spawn(async {
                tokio::time::sleep(LATER).await;
                remove_dirs(dirs).await;
            });
        }
    }
}

/// How long a dropped task cgroup is left to its helper before the worker removes it.
const LATER: Duration = Duration::from_millis(100);

/// Removes empty cgroup directories, waiting briefly for their last processes to exit.
async fn remove_dirs(dirs: Vec<PathBuf>) {
    for dir in dirs {
        for attempt in 0..50u32 {
            match fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if attempt == 49 => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a task cgroup");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}
