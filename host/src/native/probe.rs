//! Kernel features the jail uses, found or missing, and what each means. The namespace,
//! seccomp and Landlock checks run inside the helper (a fresh single-threaded process);
//! the cgroup checks and the end-to-end check run in the worker.

use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};

use super::jail::{try_clone, try_fork};

/// One feature, as found on this kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it works here.
    pub found: bool,
    /// Whether native tasks are refused without it (unless in degraded mode).
    pub required: bool,
    /// What was seen (an error, an ABI version, a path).
    pub detail: String,
    /// What it protects against, or what happens without it.
    pub meaning: String,
}

/// Every check, in a fixed order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// The checks.
    pub checks: Vec<Check>,
}

impl Probe {
    /// The required features that are missing.
    pub fn missing(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| c.required && !c.found).collect()
    }

    /// Whether native tasks can run at full strength.
    pub fn ready(&self) -> bool {
        self.missing().is_empty()
    }

    /// Whether the named check passed.
    pub fn found(&self, name: &str) -> bool {
        self.checks.iter().any(|c| c.name == name && c.found)
    }

    pub(crate) fn push(
        &mut self,
        name: &str,
        result: Result<String, String>,
        required: bool,
        meaning: &str,
    ) {
        let (found, detail) = match result {
            Ok(d) => (true, d),
            Err(e) => (false, e),
        };
        self.checks.push(Check {
            name: name.into(),
            found,
            required,
            detail,
            meaning: meaning.into(),
        });
    }
}

/// Names of the checks, shared by the helper, the worker and `agw doctor`.
pub mod names {
    /// User namespaces.
    pub const USER_NS: &str = "user namespace";
    /// Mount namespaces.
    pub const MOUNT_NS: &str = "mount namespace";
    /// Pid namespaces.
    pub const PID_NS: &str = "pid namespace";
    /// Network namespaces.
    pub const NET_NS: &str = "network namespace";
    /// IPC and UTS namespaces.
    pub const IPC_UTS_NS: &str = "ipc and uts namespaces";
    /// Cgroup namespaces.
    pub const CGROUP_NS: &str = "cgroup namespace";
    /// PR_SET_NO_NEW_PRIVS.
    pub const NO_NEW_PRIVS: &str = "no_new_privs";
    /// The seccomp filter.
    pub const SECCOMP: &str = "seccomp filter";
    /// Landlock.
    pub const LANDLOCK: &str = "landlock";
    /// A memory controller.
    pub const MEMORY_CGROUP: &str = "memory cgroup";
    /// A pids controller.
    pub const PIDS_CGROUP: &str = "pids cgroup";
    /// mount_setattr(2).
    pub const MOUNT_SETATTR: &str = "mount_setattr";
    /// A whole jail, end to end.
    pub const END_TO_END: &str = "jail end to end";

    /// Every feature that can be turned off (all but the end-to-end run, which follows
    /// from the others).
    pub const FEATURES: [&str; 12] = [
        USER_NS,
        MOUNT_NS,
        PID_NS,
        NET_NS,
        IPC_UTS_NS,
        CGROUP_NS,
        NO_NEW_PRIVS,
        SECCOMP,
        LANDLOCK,
        MEMORY_CGROUP,
        PIDS_CGROUP,
        MOUNT_SETATTR,
    ];
}

fn ok(detail: &str) -> impl FnOnce(()) -> String + '_ {
    move |()| detail.to_string()
}

/// The checks that need a fresh single-threaded process (run by the helper).
pub(crate) fn run_probes() -> Probe {
    use names::*;
    let mut p = Probe::default();
    let user = CloneFlags::CLONE_NEWUSER;
    p.push(
        USER_NS,
        try_clone(user, || Ok(())).map(ok("unprivileged user namespaces work")),
        true,
        "the tool runs as an unprivileged user of its own; every other namespace depends on it",
    );
    p.push(
        MOUNT_NS,
        try_clone(user | CloneFlags::CLONE_NEWNS, || {
            use nix::mount::{MsFlags, mount};
            mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
                .map_err(|e| format!("make / private: {e}"))?;
            mount(Some("tmpfs"), "/tmp", Some("tmpfs"), MsFlags::empty(), Some("size=64k"))
                .map_err(|e| format!("mount tmpfs: {e}"))
        })
        .map(ok("private mounts, tmpfs and bind mounts work")),
        true,
        "the tool's root holds its own binary, its ELF loader and libraries, the data its entry names, its mounts and a private /tmp (mounts and /tmp nosuid, nodev, noexec): no other program, never /etc/shadow, $HOME or the worker's keys",
    );
    p.push(
        PID_NS,
        try_clone(user | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID, || {
            use nix::mount::{MsFlags, mount};
            if nix::unistd::getpid().as_raw() != 1 {
                return Err("not pid 1 in the new namespace".into());
            }
            mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
                .map_err(|e| format!("make / private: {e}"))?;
            mount(Some("proc"), "/proc", Some("proc"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, None::<&str>)
                .map_err(|e| format!("mount a fresh /proc: {e}"))
        })
        .map(ok("a fresh /proc shows only the sandbox")),
        true,
        "the tool cannot see or signal host processes, and ending the sandbox kills every process in it",
    );
    p.push(
        NET_NS,
        try_clone(user | CloneFlags::CLONE_NEWNET, || {
            let s = std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], 9)),
                std::time::Duration::from_millis(200),
            );
            match s {
                Err(e) if e.raw_os_error() == Some(libc::ENETUNREACH) => Ok(()),
                other => Err(format!("loopback still reachable: {other:?}")),
            }
        })
        .map(ok("an empty network namespace: no route anywhere")),
        true,
        "the tool has no network at all: no TCP, UDP or DNS, not even loopback",
    );
    p.push(
        IPC_UTS_NS,
        try_clone(user | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS, || {
            nix::unistd::sethostname("agenix-probe").map_err(|e| format!("sethostname: {e}"))
        })
        .map(ok("private System V IPC and hostname")),
        true,
        "no shared memory, semaphores or message queues with the host; a hostname of its own",
    );
    p.push(
        CGROUP_NS,
        try_clone(user | CloneFlags::CLONE_NEWCGROUP, || Ok(()))
            .map(ok("the host's cgroup tree is hidden")),
        false,
        "the tool cannot see the host's cgroup paths (defence in depth)",
    );
    p.push(
        NO_NEW_PRIVS,
        try_fork(|| nix::sys::prctl::set_no_new_privs().map_err(|e| e.to_string()))
            .map(ok("PR_SET_NO_NEW_PRIVS works")),
        true,
        "setuid and file-capability binaries cannot raise the tool's privileges",
    );
    p.push(
        SECCOMP,
        try_fork(|| {
            nix::sys::prctl::set_no_new_privs().map_err(|e| e.to_string())?;
            super::seccomp::install(&super::seccomp::program(None, false)?, false)?;
            // SAFETY-free check: a TCP socket must now be refused.
            match std::net::TcpListener::bind("127.0.0.1:0") {
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(()),
                other => Err(format!("socket(AF_INET) not refused: {other:?}")),
            }
        })
        .map(ok("the filter loads and refuses what it should")),
        true,
        "an allowlist of system calls (anything else ENOSYS); execve, ptrace, process_vm_*, mount, unshare/setns, bpf, keyctl, io_uring, memfd_create, perf_event_open, userfaultfd, TIOCSTI/TIOCLINUX and non-Unix sockets EPERM; execveat only of the tool's own descriptor; a call through x32 or another architecture kills the tool",
    );
    let abi = super::confine::landlock_abi();
    p.push(
        LANDLOCK,
        if abi > 0 { Ok(format!("ABI {abi}")) } else { Err("not available (kernel without Landlock, or disabled at boot)".into()) },
        false,
        "a second, independent file-system boundary (and, from ABI 4, TCP bind/connect denied; from ABI 6, signals and abstract sockets scoped)",
    );
    p.push(
        MOUNT_SETATTR,
        if super::mounts::has_mount_setattr() {
            Ok("the kernel has it".into())
        } else {
            Err("not available (Linux before 5.12)".into())
        },
        false,
        "the jail's root sealed read-only, nosuid and nodev in one call; without it, each bind is remounted",
    );
    p
}
