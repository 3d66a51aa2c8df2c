//! The jail helper: forked by the zygote (`zygote.rs`) or our own binary executed with
//! [`HELPER_ARG`], so that the fork and the namespace setup happen in a small,
//! single-threaded process, never in the multi-threaded worker.
//!
//! Process tree (the worker W has the helper P started; P clones C, the sandbox's init; C
//! forks T, the tool):
//!
//! ```text
//! W ── P (helper: reads the spec on fd 3, writes C's uid/gid maps, moves C into its cgroup)
//!      └── C (pid 1 in new user, mount, pid, net, ipc, uts namespaces; builds the root,
//!           │  pivots, waits for T, reports; dies with P: PR_SET_PDEATHSIG)
//!           └── T (pid 2: setsid, rlimits, fds closed, Landlock, caps dropped,
//!                  no_new_privs, seccomp, then execveat of the allowlisted binary's fd)
//! ```
//!
//! C is cloned before its task is known (`Sandbox`; the zygote's spare makes one ahead),
//! prepares the part of the root no task decides, and learns its task from P over a socket
//! pair. When T ends, C kills and reaps whatever is left in its pid namespace (double-forked
//! daemons included) and reports; P answers at once and reaps C after. The worker closing or shutting fd 3 (timeout, output cap, cancellation,
//! the worker gone) makes P kill C; P ending kills C through its parent-death signal. P and
//! C never write to stdout or stderr: those belong to the tool (both close their copies once
//! T has them); P answers on fd 3 only.

#![allow(
    unsafe_code,
    reason = "fork, clone and exec of the sandbox; each block says why it is sound"
)]

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{AtFlags, OFlag};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, chdir, pipe2, setsid};

use super::spec::{Answer, Ended, JailReport, JailSpec, read_frame, write_frame};

/// The hidden first argument that turns our binary into the jail helper.
pub const HELPER_ARG: &str = "__agenix-jail";

/// After `zygote`, followed by the root mount point: keep a sandbox made ahead for the next
/// task, its root prepared there (see `zygote.rs`).
pub(super) const SPARES_ARG: &str = "spares";

/// The uid and gid the tool has inside its user namespace.
pub(super) const INSIDE_ID: u32 = 1000;
/// The unprivileged host uid/gid a root worker maps the sandbox to.
const NOBODY: u32 = 65534;

/// Runs the helper and exits if this process was started as one; returns otherwise. Call
/// it first thing in `main`, before any thread or async runtime starts.
#[allow(clippy::exit, reason = "the helper is a process entry point of its own")]
pub fn run_if_helper() {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(std::ffi::OsStr::new(HELPER_ARG)) {
        return;
    }
    let mode = args.next();
    let code = match mode.as_ref().and_then(|m| m.to_str()) {
        Some("probe") => probe_main(),
        Some("zygote") => {
            // `spares ROOT`: keep a sandbox made ahead, its root prepared at ROOT.
            let spares = match (args.next(), args.next()) {
                (Some(s), Some(root)) if s == SPARES_ARG => Some(PathBuf::from(root)),
                _ => None,
            };
            super::zygote::zygote_main(spares)
        }
        _ => helper_main(),
    };
    std::process::exit(code)
}

fn control() -> UnixStream {
    // SAFETY: the worker starts the helper with one end of a connected Unix socket pair as fd
    // 3 (see `NativeHost::run`); nothing else in this fresh process owns fd 3.
    let ctl = unsafe { UnixStream::from_raw_fd(3) };
    // Keep it from the tool: it is closed on exec.
    let _ = nix::fcntl::fcntl(&ctl, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
    ctl
}

/// P: reads the spec on fd 3, runs the jail, answers on fd 3. The worker's end of fd 3
/// closing (or shut for writing) at any time after the spec means stop: the sandbox is
/// killed.
pub(super) fn helper_main() -> i32 {
    serve(None)
}

/// P with its task's descriptors in place: `warm` is a sandbox it made before the task
/// came (see `zygote.rs`), or why it could not.
pub(super) fn serve(warm: Option<Result<Sandbox, String>>) -> i32 {
    let mut ctl = control();
    let spec = read_frame::<JailSpec>(&mut ctl);
    let (report, sandbox) = match &spec {
        Ok(spec) => run_jail(spec, &ctl, warm),
        Err(e) => (JailReport::Failed { reason: format!("cannot read the jail spec: {e}") }, None),
    };
    let cgroup = spec.as_ref().ok().and_then(|s| s.cgroup.as_ref());
    // Nothing of the task runs any more: C has killed and reaped it, or C is gone.
    let used = cgroup.map(super::cgroup::Dirs::used);
    let answered = write_frame(&mut ctl, &Answer { report, cgroup: used });
    // The worker has its answer: C, with nothing left in its sandbox but itself, ends
    // (unmounting the sandbox's root as it goes) while the worker goes on; then the task's
    // cgroup, empty, goes.
    drop(sandbox);
    if let Some(c) = cgroup {
        c.remove_now();
    }
    match answered {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

/// Where P keeps the tool's descriptor: the only one `execveat` may run. High enough that
/// nothing else in P is ever numbered so.
const TOOL_FD: std::os::fd::RawFd = 100;

/// The tool's system call filter (for a task that may be one process only, or not), built
/// once per helper process: the zygote builds both before forking any helper, so each
/// helper inherits them built.
pub(super) fn filter(single_process: bool) -> Result<&'static [libc::sock_filter], String> {
    type Built = std::sync::OnceLock<Result<super::seccomp::Program, String>>;
    static FILTERS: [Built; 2] = [Built::new(), Built::new()];
    FILTERS[usize::from(single_process)]
        .get_or_init(|| super::seccomp::program(Some(TOOL_FD), single_process))
        .as_deref()
        .map_err(Clone::clone)
}

/// What C and T need, prepared by P before cloning (so C and T mostly use, not build).
struct Prepared<'a> {
    spec: &'a JailSpec,
    tool: File,
    /// The tool's ELF interpreter (its dynamic loader), which the kernel executes with it.
    interpreter: Option<PathBuf>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// The system call filter (see [`filter`]), when seccomp is on.
    filter: Option<&'static [libc::sock_filter]>,
}

fn cstring(s: &str, what: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{what} contains a NUL byte"))
}

fn prepare(spec: &JailSpec) -> Result<Prepared<'_>, String> {
    let tool = open_tool(spec)?;
    prepared(spec, tool)
}

/// Opens the allowlisted binary at [`TOOL_FD`] and checks its pinned digest.
fn open_tool(spec: &JailSpec) -> Result<File, String> {
    let opened = File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(&spec.tool)
        .map_err(|e| format!("cannot open {}: {e}", spec.tool.display()))?;
    // At the one descriptor number the filters let execveat run.
    // SAFETY: nothing in this process holds TOOL_FD (see there), so replacing it closes
    // nothing another owner relies on.
    let placed = unsafe { nix::unistd::dup3_raw(&opened, TOOL_FD, OFlag::O_CLOEXEC) };
    let mut tool =
        File::from(placed.map_err(|e| format!("cannot place the tool's descriptor: {e}"))?);
    drop(opened);
    if let Some(pin) = spec.tool_sha256 {
        let mut h = agenix_proto::digest::Hasher::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = tool
                .read(&mut buf)
                .map_err(|e| format!("cannot read {}: {e}", spec.tool.display()))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let found = h.finish();
        if found.as_bytes() != &pin {
            return Err(format!(
                "{} has digest {found}, not the pinned {}",
                spec.tool.display(),
                agenix_proto::Digest::from_bytes(pin)
            ));
        }
    }
    Ok(tool)
}

/// The rest of what running `tool` takes, from its opened binary.
fn prepared(spec: &JailSpec, tool: File) -> Result<Prepared<'_>, String> {
    let interpreter =
        elf_interpreter(&tool).map_err(|e| format!("cannot read {}: {e}", spec.tool.display()))?;
    let mut argv = vec![cstring(&spec.argv0, "argv[0]")?];
    for a in &spec.args {
        argv.push(cstring(a, "an argument")?);
    }
    let envp = spec
        .env
        .iter()
        .map(|(k, v)| cstring(&format!("{k}={v}"), "the environment"))
        .collect::<Result<Vec<_>, _>>()?;
    // Without a memory cgroup, RLIMIT_AS bounds the task only if it stays one process.
    let single_process = spec.rlimit_as.is_some();
    let filter = if spec.features.seccomp { Some(filter(single_process)?) } else { None };
    Ok(Prepared { spec, tool, interpreter, argv, envp, filter })
}

/// The interpreter (`PT_INTERP`) an ELF executable names, if it names one; `None` for
/// anything else (a static binary; a script, which then cannot run: its interpreter may not
/// execute in the jail).
fn elf_interpreter(tool: &File) -> Result<Option<PathBuf>, String> {
    use std::os::unix::ffi::OsStrExt as _;

    use object::read::elf::{FileHeader, ProgramHeader};

    fn find<H: FileHeader<Endian = object::Endianness>>(
        data: &object::ReadCache<&File>,
    ) -> object::read::Result<Option<PathBuf>> {
        let header = H::parse(data)?;
        let endian = header.endian()?;
        for ph in header.program_headers(endian, data)? {
            if let Some(path) = ph.interpreter(endian, data)? {
                return Ok(Some(std::ffi::OsStr::from_bytes(path).into()));
            }
        }
        Ok(None)
    }
    let data = object::ReadCache::new(tool);
    let found = match object::FileKind::parse(&data) {
        Ok(object::FileKind::Elf64) => find::<object::elf::FileHeader64<object::Endianness>>(&data),
        Ok(object::FileKind::Elf32) => find::<object::elf::FileHeader32<object::Endianness>>(&data),
        _ => Ok(None),
    };
    found.map_err(|e| format!("not a valid ELF file: {e}"))
}

/// The report, and the sandbox that made it (to be reaped after answering).
fn run_jail(
    spec: &JailSpec,
    ctl: &UnixStream,
    warm: Option<Result<Sandbox, String>>,
) -> (JailReport, Option<Sandbox>) {
    match run_jail_inner(spec, ctl, warm) {
        Ok((r, sandbox)) => (r, sandbox),
        Err(reason) => (JailReport::Failed { reason }, None),
    }
}

fn run_jail_inner(
    spec: &JailSpec,
    ctl: &UnixStream,
    warm: Option<Result<Sandbox, String>>,
) -> Result<(JailReport, Option<Sandbox>), String> {
    let p = prepare(spec)?;
    if !spec.features.namespaces {
        drop(warm);
        drop_groups()?;
        return run_degraded(&p, ctl).map(|r| (r, None));
    }
    // A sandbox made before the task came; or one made now: without one, if making it
    // failed, if it died while it waited (killed, out of memory), or for a task given
    // directories (a sandbox made ahead sees the host's mounts as they were then; one made
    // now binds them as they are).
    let warm = warm.and_then(Result::ok).filter(|_| spec.mounts.is_empty());
    let warm = warm.map(|sandbox| sandbox.begin(spec, &p.tool));
    let mut sandbox = match warm {
        Some(Ok(sandbox)) => sandbox,
        Some(Err(_)) | None => {
            drop_groups()?;
            Sandbox::create(&[], &spec.root)?.begin(spec, &p.tool)?
        }
    };
    // The tool's stdio is the sandbox's now: its pipes close when the sandbox's processes
    // end, not when this one does.
    for fd in 0..3 {
        // SAFETY: closes this process's own stdio, which it never uses again.
        unsafe { libc::close(fd) };
    }
    let status = read_until_stopped(sandbox.status()?, ctl);
    // Dropping the sandbox without a report kills it.
    let status = status.ok_or(STOPPED)?;
    let report = read_frame::<JailReport>(&mut status.as_slice())
        .map_err(|_| "the sandbox's init ended without a report".to_string())?;
    Ok((report, Some(sandbox)))
}

/// A root worker's supplementary groups must not follow the tool into the sandbox (they
/// would survive the id mapping as unmapped but still effective groups).
pub(super) fn drop_groups() -> Result<(), String> {
    if nix::unistd::geteuid().is_root() {
        nix::unistd::setgroups(&[]).map_err(errno("setgroups"))?;
    }
    Ok(())
}

/// A sandbox's init C, cloned into new user, mount, pid, network, IPC and UTS namespaces
/// with its ids mapped, waiting for its task: the part of the jail no task decides, so it
/// can be made before a task comes. P holds it; dropping it kills and reaps C.
pub(super) struct Sandbox {
    init: Pid,
    /// P's end of the socket C waits on for its task; C sees it close if P dies.
    task: UnixStream,
    /// Where C writes its report.
    status: Option<OwnedFd>,
    /// The cgroup C was moved into before its task came, if any ([`Sandbox::enter`]).
    entered: Option<super::cgroup::Dirs>,
}

impl Sandbox {
    /// Clones C, which closes its copies of `foreign` (this process's descriptors that are
    /// none of C's business) and, once its ids are mapped, prepares the part of a root at
    /// `root` no task decides (see `mounts.rs`). Call with this process's supplementary
    /// groups dropped ([`drop_groups`]).
    pub(super) fn create(foreign: &[std::os::fd::RawFd], root: &Path) -> Result<Self, String> {
        let (status_r, status_w) = pipe2(OFlag::O_CLOEXEC).map_err(errno("pipe"))?;
        let (task, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        let flags = CloneFlags::CLONE_NEWUSER
            | CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS;
        let mut stack = vec![0u8; 1 << 20];
        let ours = [task.as_raw_fd(), status_r.as_raw_fd()];
        let init = Box::new(|| {
            // P's ends are P's: C holding them would hide P's death from C.
            for &fd in ours.iter().chain(foreign) {
                // SAFETY: closes C's own copies (C has its own descriptor table).
                unsafe { libc::close(fd) };
            }
            init_main(&theirs, &status_w, root)
        });
        // SAFETY: this process is single-threaded (a helper that has started no threads),
        // so the child may run arbitrary code; clone without CLONE_VM gives it a copy of
        // our memory, as fork does, and the stack outlives the call.
        let init = unsafe { nix::sched::clone(init, &mut stack, flags, Some(libc::SIGCHLD)) }
            .map_err(|e| format!("cannot create the sandbox's namespaces: {e}"))?;
        let mut sandbox = Self { init, task, status: Some(status_r), entered: None };
        map_ids(init)?;
        // C may go on: its ids are its own now.
        sandbox.task.write_all(MAPPED).map_err(|e| format!("cannot start the sandbox: {e}"))?;
        Ok(sandbox)
    }

    /// Moves C into the cgroup the worker offers for the next task (`cgroup::Dirs` as
    /// JSON), ahead of it: moving a process between cgroups can wait for the kernel's RCU
    /// grace period, which is better spent while no task waits. Best effort: the task's own
    /// cgroup is what counts ([`Sandbox::begin`]).
    pub(super) fn enter(&mut self, offer: &[u8]) {
        self.entered = None;
        let Ok(dirs) = serde_json::from_slice::<super::cgroup::Dirs>(offer) else { return };
        let pid = self.init.as_raw().to_string();
        if dirs.procs().iter().all(|procs| fs::write(procs, &pid).is_ok()) {
            self.entered = Some(dirs);
        }
    }

    /// Ends a sandbox no task took, and removes the cgroup it entered, if any.
    pub(super) fn leave(self) {
        let entered = self.entered.clone();
        drop(self);
        if let Some(dirs) = entered {
            dirs.remove_now();
        }
    }

    /// Moves C into the task's cgroups (unless it is there already) and hands it its task:
    /// this process's stdin, stdout and stderr (the tool's), the tool's descriptor, and the
    /// spec. C goes on from there.
    fn begin(mut self, spec: &JailSpec, tool: &File) -> Result<Self, String> {
        let moved = spec.cgroup.is_some() && spec.cgroup == self.entered;
        for procs in spec.cgroup.iter().filter(|_| !moved).flat_map(super::cgroup::Dirs::procs) {
            fs::write(&procs, self.init.as_raw().to_string())
                .map_err(|e| format!("cannot move the sandbox into {}: {e}", procs.display()))?;
        }
        let handed = |e: std::io::Error| format!("cannot hand the sandbox its task: {e}");
        super::zygote::send_fds(&self.task, &[0, 1, 2, tool.as_raw_fd()]).map_err(handed)?;
        write_frame(&mut self.task, spec).map_err(handed)?;
        Ok(self)
    }

    fn status(&mut self) -> Result<File, String> {
        self.status
            .take()
            .map(File::from)
            .ok_or_else(|| "the sandbox's report was read already".into())
    }
}

impl Drop for Sandbox {
    /// Kills C (a no-op once it has reported: it ends by itself then) and reaps it.
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.init, Signal::SIGKILL);
        let _ = waitpid(self.init, None);
    }
}

/// Why P stopped the sandbox itself.
const STOPPED: &str = "stopped by the worker";

/// Whether the worker has said stop: anything readable on the control socket after the
/// spec (the worker writes nothing more) is its end closing or shut.
fn stop_requested(ctl: &UnixStream) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(ctl.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// Reads `status` until it holds one whole frame or ends, unless the worker says stop
/// first (`None`).
fn read_until_stopped(mut status: File, ctl: &UnixStream) -> Option<Vec<u8>> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [
            PollFd::new(status.as_fd(), PollFlags::POLLIN),
            PollFd::new(ctl.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None,
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return None;
        }
        match status.read(&mut buf) {
            Ok(0) => return Some(out),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if let Some(len) = out.first_chunk::<4>().map(|l| u32::from_be_bytes(*l) as usize)
                    && out.len() >= len.saturating_add(4)
                {
                    return Some(out);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Some(out),
        }
    }
}

/// Writes C's uid and gid maps: the tool's id inside maps to this user, or to `nobody`
/// when the worker runs as root (so no rlimit or file check ever sees uid 0).
fn map_ids(child: Pid) -> Result<(), String> {
    let (uid, gid) = if nix::unistd::geteuid().is_root() {
        (NOBODY, NOBODY)
    } else {
        (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw())
    };
    let proc = PathBuf::from(format!("/proc/{child}"));
    let write = |file: &str, text: String| {
        fs::write(proc.join(file), text)
            .map_err(|e| format!("cannot write {file} of the sandbox: {e}"))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("{INSIDE_ID} {uid} 1\n"))?;
    write("gid_map", format!("{INSIDE_ID} {gid} 1\n"))
}

/// Why C ends without a task: P has gone.
const GONE: &str = "the helper went away before the sandbox was ready";

/// What P writes C once C's uid and gid maps are written.
const MAPPED: &[u8] = b"m";

/// C: the sandbox's init. Prepares what it can of the root, waits for its task, finishes the
/// root, starts T, reaps everything until T ends, and reports on the status pipe.
fn init_main(task: &UnixStream, status: &OwnedFd, root: &Path) -> isize {
    let report = init_inner(task, root).unwrap_or_else(|reason| JailReport::Failed { reason });
    let Ok(fd) = status.try_clone() else { return 1 };
    let _ = write_frame(&mut File::from(fd), &report);
    0
}

fn init_inner(task: &UnixStream, root: &Path) -> Result<JailReport, String> {
    // Die with P. If P is already gone, the read below sees end-of-file.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("prctl: {e}"))?;
    let mut mapped = [0u8; MAPPED.len()];
    (&*task).read_exact(&mut mapped).map_err(|_| GONE.to_string())?;
    if mapped != MAPPED {
        return Err("the sandbox was started out of order".into());
    }
    // Become the mapped id (a root worker's clone starts as unmapped uid 0); capabilities in
    // the new namespace are kept, as no mapped uid 0 is given up.
    let id = nix::unistd::Uid::from_raw(INSIDE_ID);
    let gid = nix::unistd::Gid::from_raw(INSIDE_ID);
    nix::unistd::setresgid(gid, gid, gid).map_err(errno("setresgid"))?;
    nix::unistd::setresuid(id, id, id).map_err(errno("setresuid"))?;
    // Changing credentials cleared the parent-death signal: set it again, then make sure P
    // did not die in between (its end of the task socket would have closed).
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("prctl: {e}"))?;
    if parent_gone(task) {
        return Err(GONE.into());
    }
    // Made before the task comes; if that fails, it is tried again for the task, which
    // then reports why.
    let ahead = super::mounts::prepare_root(root).ok();
    let (spec, tool) = receive_task(task)?;
    let p = prepared(&spec, tool)?;
    if p.spec.features.cgroup_ns {
        nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| format!("cgroup namespace: {e}"))?;
    }
    super::mounts::finish_root(&spec, ahead)?;
    set_command_line(INIT_NAME);
    // Our own /proc entries (environment, exe, memory) are not the tool's to read.
    nix::sys::prctl::set_dumpable(false).map_err(|e| format!("prctl: {e}"))?;
    run_tool(&p, true, None)
}

/// C's task from P ([`Sandbox::begin`]): the tool's stdio placed at 0, 1 and 2, its binary
/// at [`TOOL_FD`], and the spec.
fn receive_task(task: &UnixStream) -> Result<(JailSpec, File), String> {
    let fds = match super::zygote::receive_fds(task) {
        Ok(Some(fds)) => fds,
        Ok(None) => return Err(GONE.into()),
        Err(e) => return Err(format!("cannot receive the task: {e}")),
    };
    let Ok([stdin, stdout, stderr, tool]) = <[OwnedFd; 4]>::try_from(fds) else {
        return Err("the task came with the wrong descriptors".into());
    };
    for (fd, at) in [(&stdin, 0), (&stdout, 1), (&stderr, 2)] {
        // SAFETY: the received descriptors are numbered above 2 (0–2 are open here), so
        // placing them closes only this process's own stdio, which belongs to the tool.
        if unsafe { libc::dup2(fd.as_raw_fd(), at) } < 0 {
            return Err(format!("dup2: {}", std::io::Error::last_os_error()));
        }
    }
    // SAFETY: nothing in this process holds TOOL_FD (see there).
    let placed = unsafe { nix::unistd::dup3_raw(&tool, TOOL_FD, OFlag::O_CLOEXEC) }
        .map_err(errno("dup3"))?;
    drop((stdin, stdout, stderr, tool));
    let spec = read_frame::<JailSpec>(&mut &*task).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => GONE.to_string(),
        _ => format!("cannot read the task: {e}"),
    })?;
    Ok((spec, File::from(placed)))
}

/// What the sandbox's init is called, in /proc/1/cmdline and /proc/1/comm: not the
/// worker's binary, whose host path the tool has no business knowing.
const INIT_NAME: &std::ffi::CStr = c"agenix-init";

/// What a helper forked by the zygote is called (it would show the zygote's command line).
pub(super) const HELPER_NAME: &std::ffi::CStr = c"agenix-helper";

/// Overwrites this process's command line (the strings its argv pointed to when it was
/// started, which name the worker binary's host path) with `name` (at most 15 bytes), and
/// renames it. Best effort: the command line is only information, not access.
pub(super) fn set_command_line(name: &std::ffi::CStr) {
    let _ = nix::sys::prctl::set_name(name);
    let name = name.to_bytes();
    let Ok(stat) = fs::read_to_string("/proc/self/stat") else { return };
    // Fields after the parenthesised name start at field 3; arg_start and arg_end are 48
    // and 49 (proc_pid_stat(5)).
    let Some((_, rest)) = stat.rsplit_once(')') else { return };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<usize>().ok());
    let (Some(start), Some(end)) = (field(48), field(49)) else { return };
    let Some(len) = end.checked_sub(start).filter(|l| *l > name.len()) else { return };
    // SAFETY: [start, end) is this process's own argument area, on its initial stack,
    // mapped writable for as long as the process lives (the kernel reports it from the
    // memory map it made at exec). Only the kernel's /proc reader and std's saved argv
    // pointers refer to it, and this process reads its arguments no more.
    unsafe {
        let area = start as *mut u8;
        std::ptr::write_bytes(area, 0, len);
        std::ptr::copy_nonoverlapping(name.as_ptr(), area, name.len());
    }
}

/// Whether P's end of `task` (held until C is reaped) has closed.
fn parent_gone(task: &UnixStream) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(task.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLHUP)),
        Err(_) => true,
    }
}

pub(super) fn errno(what: &str) -> impl FnOnce(nix::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Forks T, waits for it (reaping any orphans on the way), and reports how it ended.
fn run_tool(
    p: &Prepared<'_>,
    jailed: bool,
    stop: Option<&UnixStream>,
) -> Result<JailReport, String> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    let sample_vm = p.spec.rlimit_as.is_some();
    // SIGCHLD is blocked and read from a descriptor, so the loop below can wait for it, the
    // exec gate and a timeout (to sample memory) at once.
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&chld), None).map_err(errno("sigprocmask"))?;
    let children = nix::sys::signalfd::SignalFd::with_flags(
        &chld,
        nix::sys::signalfd::SfdFlags::SFD_NONBLOCK | nix::sys::signalfd::SfdFlags::SFD_CLOEXEC,
    )
    .map_err(errno("signalfd"))?;
    let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).map_err(errno("pipe"))?;
    // T hands its exec gate over this socket before it executes the tool.
    let gate_pair = match p.filter {
        Some(_) => Some(
            socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
                .map_err(errno("socketpair"))?,
        ),
        None => None,
    };
    // SAFETY: this process is single-threaded (the helper, or the init it cloned), so the
    // child may allocate and run ordinary code before it executes the tool.
    let tool = match unsafe { nix::unistd::fork() }.map_err(errno("fork"))? {
        ForkResult::Child => {
            drop(err_r);
            let why = exec_tool(p, jailed, gate_pair.map(|(_, tx)| tx));
            let _ = nix::unistd::write(&err_w, why.as_bytes());
            // SAFETY: _exit is async-signal-safe and skips destructors that belong to C.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => child,
    };
    drop(err_w);
    if jailed {
        // The tool's stdio is T's alone: its pipes close when the sandbox's last process
        // ends, whatever this one still does.
        for fd in 0..3 {
            // SAFETY: closes this process's own stdio, which it never uses again.
            unsafe { libc::close(fd) };
        }
    }
    let mut gate = match gate_pair {
        Some((rx, tx)) => {
            drop(tx);
            // None: T failed before it had a gate; the pipe says why.
            super::gate::receive(&rx).map(super::gate::Gate::new)
        }
        None => None,
    };
    let why = wait_for_exec(File::from(err_r), gate.as_mut());
    if !why.is_empty() {
        let _ = waitpid(tool, None);
        return Err(why);
    }
    let exec_at_ns = super::monotonic_ns();

    let mut vm_peak = 0u64;
    let status_path = format!("/proc/{tool}/status");
    let ended = loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == tool => break Ended::Exited(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == tool => {
                break Ended::Signaled(sig as i32);
            }
            Ok(WaitStatus::StillAlive) => {
                if stop.is_some_and(stop_requested) {
                    // The tool leads its own session: its process group goes with it.
                    let _ = nix::sys::signal::killpg(tool, Signal::SIGKILL);
                    let _ = nix::sys::signal::kill(tool, Signal::SIGKILL);
                    let _ = waitpid(tool, None);
                    return Err(STOPPED.into());
                }
                if sample_vm {
                    vm_peak = vm_peak.max(read_vm_peak(&status_path));
                }
                let timeout = match (sample_vm, stop) {
                    (true, _) => Duration::from_millis(2),
                    (false, Some(_)) => Duration::from_millis(50),
                    (false, None) => Duration::from_secs(1),
                };
                wait_for_children(&children, gate.as_mut(), timeout);
            }
            Ok(_) => {}
            Err(nix::errno::Errno::ECHILD) => return Err("the tool vanished".into()),
            Err(e) => return Err(format!("waitpid: {e}")),
        }
    };
    if jailed {
        // Nothing of the task outlives its report: whatever the tool left running (a
        // double-forked daemon) is killed and reaped here, before the answer. The kernel
        // would kill them too when this process ends, but the answer goes out before that.
        let _ = nix::sys::signal::kill(Pid::from_raw(-1), Signal::SIGKILL);
        while let Ok(_) | Err(nix::errno::Errno::EINTR) = waitpid(None, Some(WaitPidFlag::__WALL)) {
        }
    }
    let max_rss = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map(|u| u64::try_from(u.max_rss()).unwrap_or(0) * 1024)
        .unwrap_or(0);
    Ok(JailReport::Ran { ended, max_rss, vm_peak, exec_at_ns })
}

/// Waits until T has executed the tool (its error pipe closes empty) or failed (it says
/// why), letting its one exec through the gate meanwhile. Returns the failure, if any.
fn wait_for_exec(mut errors: File, mut gate: Option<&mut super::gate::Gate>) -> String {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut why = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        if let Some(g) = gate.as_deref_mut().filter(|g| !g.opened()) {
            let mut fds = [
                PollFd::new(errors.as_fd(), PollFlags::POLLIN),
                PollFd::new(g.fd().as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return format!("poll: {e}"),
            }
            if fds[1].revents().is_some_and(|r| r.contains(PollFlags::POLLIN)) {
                g.answer();
                continue;
            }
        }
        match errors.read(&mut buf) {
            Ok(0) => return String::from_utf8_lossy(&why).into_owned(),
            Ok(n) => why.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return format!("reading the tool's start: {e}"),
        }
    }
}

/// Waits up to `timeout` for a child to change state, answering the exec gate meanwhile
/// (every later exec is refused).
fn wait_for_children(
    children: &nix::sys::signalfd::SignalFd,
    gate: Option<&mut super::gate::Gate>,
    timeout: Duration,
) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let gate_ready = {
        let mut fds = vec![PollFd::new(children.as_fd(), PollFlags::POLLIN)];
        if let Some(g) = &gate {
            fds.push(PollFd::new(g.fd().as_fd(), PollFlags::POLLIN));
        }
        if poll(&mut fds, PollTimeout::from(ms)).is_err() {
            return;
        }
        fds.get(1).and_then(PollFd::revents).is_some_and(|r| r.contains(PollFlags::POLLIN))
    };
    // Drain the pending SIGCHLDs; the caller reaps.
    while let Ok(Some(_)) = children.read_signal() {}
    if gate_ready && let Some(g) = gate {
        g.answer();
    }
}

fn read_vm_peak(status: &str) -> u64 {
    let Ok(text) = fs::read_to_string(status) else { return 0 };
    text.lines()
        .find_map(|l| l.strip_prefix("VmPeak:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// T: the last steps before the tool. Returns only on failure, with the reason.
fn exec_tool(p: &Prepared<'_>, jailed: bool, gate: Option<OwnedFd>) -> String {
    match exec_tool_inner(p, jailed, gate) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// `gate`: where to hand the exec gate (when seccomp is on).
fn exec_tool_inner(
    p: &Prepared<'_>,
    jailed: bool,
    gate: Option<OwnedFd>,
) -> Result<std::convert::Infallible, String> {
    let spec = p.spec;
    setsid().map_err(errno("setsid"))?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(errno("prctl"))?;
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(errno("sigprocmask"))?;
    // Every signal at its default, as a tool expects: our runtime ignores SIGPIPE, and an
    // ignored signal stays ignored across exec (`yes | head` would see EPIPE instead of
    // ending), as would anything the worker's own parent ignored, real-time signals
    // included. Through the system call: the C library refuses the signals it keeps for
    // itself, which are no less inherited.
    let default = [0u64; 8];
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: a zeroed kernel `struct sigaction` (larger than any architecture's) is
        // SIG_DFL with no flags and an empty mask; the old action is not asked for.
        unsafe {
            libc::syscall(libc::SYS_rt_sigaction, sig, default.as_ptr(), 0usize, 8usize);
        }
    }
    if jailed {
        chdir("/tmp").map_err(errno("chdir /tmp"))?;
    } else {
        chdir(&spec.root).map_err(errno("chdir"))?;
    }
    set_rlimits(spec)?;
    // Every descriptor but stdin, stdout and stderr is closed when the tool starts.
    // SAFETY: close_range only changes descriptor flags of this process.
    let rc =
        unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    if rc != 0 {
        return Err(format!("close_range: {}", std::io::Error::last_os_error()));
    }
    if spec.features.landlock {
        super::confine::landlock(spec, p.tool.as_fd(), p.interpreter.as_deref(), jailed)?;
    }
    super::confine::drop_capabilities()?;
    nix::sys::prctl::set_no_new_privs().map_err(errno("no_new_privs"))?;
    // Last: the filter, whose exec gate lets this process's next exec through and no other.
    if let Some(filter) = p.filter {
        let listener = super::seccomp::install(filter, gate.is_some())?;
        if let (Some(to), Some(listener)) = (gate, listener) {
            super::gate::send(&to, &listener)?;
        }
    }
    let e = nix::unistd::execveat(p.tool.as_fd(), c"", &p.argv, &p.envp, AtFlags::AT_EMPTY_PATH)
        .unwrap_err();
    Err(format!("cannot execute {}: {e}", spec.tool.display()))
}

fn set_rlimits(spec: &JailSpec) -> Result<(), String> {
    use nix::sys::resource::{Resource, setrlimit};
    let mut limits = vec![
        (Resource::RLIMIT_CORE, 0),
        (Resource::RLIMIT_NOFILE, 256),
        (Resource::RLIMIT_FSIZE, spec.rlimit_fsize),
        (Resource::RLIMIT_CPU, spec.rlimit_cpu),
    ];
    if let Some(bytes) = spec.rlimit_as {
        limits.push((Resource::RLIMIT_AS, bytes));
    }
    if let Some(n) = spec.rlimit_nproc {
        limits.push((Resource::RLIMIT_NPROC, n));
    }
    for (res, v) in limits {
        setrlimit(res, v, v).map_err(|e| format!("setrlimit {res:?}: {e}"))?;
    }
    Ok(())
}

/// Degraded mode without namespaces: the operator accepted a weaker sandbox. The tool gets
/// rlimits, closed descriptors, and whatever of Landlock and seccomp the kernel has.
fn run_degraded(p: &Prepared<'_>, ctl: &UnixStream) -> Result<JailReport, String> {
    run_tool(p, false, Some(ctl))
}

/// The probe: tries each kernel feature the jail uses, in a fresh single-threaded process,
/// and answers on fd 3.
fn probe_main() -> i32 {
    let mut ctl = control();
    let report = super::probe::run_probes();
    match write_frame(&mut ctl, &report) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

/// Tries to clone a child with `flags` that runs `check`; the child's exit code says
/// whether `check` passed.
pub(super) fn try_clone(
    flags: CloneFlags,
    check: fn() -> Result<(), String>,
) -> Result<(), String> {
    let (r, w) = pipe2(OFlag::O_CLOEXEC).map_err(errno("pipe"))?;
    let mut stack = vec![0u8; 256 << 10];
    let cb = Box::new(|| {
        let msg = match check() {
            Ok(()) => String::new(),
            Err(e) => e,
        };
        let _ = nix::unistd::write(&w, msg.as_bytes());
        if msg.is_empty() { 0 } else { 1 }
    });
    // SAFETY: the probe runs in the helper, a fresh single-threaded process; the child gets
    // a copy of memory (no CLONE_VM) and its own stack.
    let child = unsafe { nix::sched::clone(cb, &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(|e| e.to_string())?;
    drop(w);
    let mut msg = String::new();
    let _ = File::from(r).read_to_string(&mut msg);
    match waitpid(child, None) {
        Ok(WaitStatus::Exited(_, 0)) => Ok(()),
        Ok(other) if msg.is_empty() => Err(format!("{other:?}")),
        _ => Err(msg),
    }
}

/// Runs `check` in a forked child (for features that change the calling process).
pub(super) fn try_fork(check: fn() -> Result<(), String>) -> Result<(), String> {
    try_clone(CloneFlags::empty(), check)
}
