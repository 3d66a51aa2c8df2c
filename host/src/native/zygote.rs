//! The zygote: one jail helper per worker, started once, that forks a helper P for each
//! task instead of the worker executing its own (large) binary again every time.
//!
//! The worker starts our binary with `__agenix-jail zygote` and one end of a
//! `SOCK_SEQPACKET` socket pair as fd 3. The zygote is single-threaded and does nothing but
//! wait on that socket. For each task the worker sends one message carrying four
//! descriptors — the task's control socket and the tool's stdin, stdout and stderr pipes —
//! and the zygote forks; the child places them at 3, 0, 1 and 2 and is the helper P (see
//! `jail.rs`), exactly as if the worker had executed it. The zygote keeps no state about its
//! children (they are reaped by the kernel) and never reads a spec: a hostile message can at
//! most make it fork a helper that reads garbage and reports so.
//!
//! Lifetimes need no signals: when the worker goes away its end of fd 3 closes and the
//! zygote exits; each task's control socket closing tells that task's P to kill its sandbox.
//!
//! With spares (the worker's kernel has the namespaces; `__agenix-jail zygote spares ROOT`),
//! the zygote keeps one helper forked ahead, a *spare*, that has already made what no task
//! decides: a fresh sandbox's namespaces and id maps (see `jail::Sandbox`), and the part of
//! its root at the mount point ROOT no task decides (see `mounts.rs`). A request goes
//! to the spare over its own socket pair, and the zygote forks the next spare at once, so
//! the namespaces of the next task are made while this one runs. Each sandbox still serves
//! one task only, and a spare idle for [`SPARE_IDLE`] goes (a sandbox made ahead holds the
//! host's mount table as it was then; the helper also makes a new one for a task given
//! directories). A spare that has gone (killed, or out of memory) refuses the hand-over,
//! and the zygote forks a helper for the request as without spares; a spare whose
//! namespaces could not be made tries again when its task comes, and reports why not. An
//! idle spare ends when the zygote does (its socket closes); one with a task ends with its
//! task.
//!
//! Where tasks get cgroups, the worker makes the next task's while one runs and offers it
//! (`c` and its directories), and the zygote passes it to the spare, which moves its
//! sandbox into it ahead of the task: a move can wait for the kernel's RCU grace period. The
//! worker gives the next request that cgroup, so a spare's sandbox is never in two tasks'
//! cgroups. A spare let go for idleness (`i`) leaves the cgroup to the worker, which gives
//! it to the next task all the same; one that ends with the zygote removes it.

#![allow(
    unsafe_code,
    reason = "fork in a single-threaded process; each block says why it is sound"
)]

use std::ffi::OsStr;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sys::signal::{SigHandler, Signal, signal};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use nix::unistd::ForkResult;

use super::Helper;
use super::cgroup::TaskCgroup;

/// Descriptors in each request: the task's control socket, then the tool's stdin, stdout
/// and stderr.
const FDS: usize = 4;

/// The zygote's loop, with spares preparing their roots at `spares` if given. Returns when
/// the worker has gone.
pub(super) fn zygote_main(spares: Option<PathBuf>) -> i32 {
    // SAFETY: the worker starts the zygote with its socket as fd 3; nothing else in this
    // fresh process owns it.
    let ctl = unsafe { OwnedFd::from_raw_fd(3) };
    let _ = nix::fcntl::fcntl(&ctl, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
    // Built once here, inherited built by every helper forked below. A failure is each
    // helper's to report (it builds again and says why).
    let _ = super::jail::filter(false);
    let _ = super::jail::filter(true);
    // Children are reaped by the kernel: the zygote never waits for one.
    // SAFETY: setting a signal to be ignored installs no handler code.
    if unsafe { signal(Signal::SIGCHLD, SigHandler::SigIgn) }.is_err() {
        return 1;
    }
    let zygote = nix::unistd::getpid();
    let mut spare = spares.as_deref().and_then(|root| fork_spare(&ctl, zygote, root));
    let mut buf = vec![0u8; MAX_REQUEST];
    loop {
        // A spare is a copy of the host's mount table as it was when it was made (and keeps
        // what it holds mounted): one left idle for SPARE_IDLE goes, and the next task
        // makes its sandbox as without spares.
        if let Some(s) = spare.as_ref().filter(|_| !readable_within(&ctl, SPARE_IDLE)) {
            // Told first, so it leaves the cgroup it was offered to the worker.
            let _ = nix::sys::socket::send(s.sock.as_raw_fd(), IDLE, MsgFlags::MSG_NOSIGNAL);
            spare = None;
            continue;
        }
        let fds = match receive_request(&ctl, &mut buf) {
            Ok(Some(Request::Task(fds))) => fds,
            // For the spare of the moment: whichever takes the next task.
            Ok(Some(Request::Cgroup(offer))) => {
                if let Some(s) = &spare {
                    let _ =
                        nix::sys::socket::send(s.sock.as_raw_fd(), offer, MsgFlags::MSG_NOSIGNAL);
                }
                continue;
            }
            Ok(Some(Request::Idle)) => continue,
            Ok(None) => return 0,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 1,
        };
        let Ok(fds) = <[OwnedFd; FDS]>::try_from(fds) else { continue };
        if spare.take().is_some_and(|s| hand_over(&s, &fds)) {
            drop(fds);
        } else {
            fork_helper(&ctl, fds);
        }
        // Only now, holding no task's descriptors (the spare would keep them open).
        if let Some(root) = &spares {
            spare = fork_spare(&ctl, zygote, root);
        }
    }
}

/// What the zygote and its spares receive on their sockets (`SOCK_SEQPACKET`: one message
/// each), told apart by the first byte.
enum Request<'a> {
    /// `t`, with the task's descriptors (see [`FDS`]).
    Task(Vec<OwnedFd>),
    /// `c` and the cgroup the next task will be given (`cgroup::Dirs` as JSON), which the
    /// spare moves its sandbox into while it waits: the whole message, forwarded as is.
    Cgroup(&'a [u8]),
    /// `i`: the zygote lets an idle spare go.
    Idle,
}

/// Largest request: a cgroup offer names two directories.
const MAX_REQUEST: usize = 1 << 16;

/// The message that lets an idle spare go.
const IDLE: &[u8] = b"i";

/// The worker's cgroup offer for the next task: `c` and the directories as JSON.
fn cgroup_offer(dirs: &super::cgroup::Dirs) -> std::io::Result<Vec<u8>> {
    let mut offer = b"c".to_vec();
    serde_json::to_writer(&mut offer, dirs)?;
    if offer.len() > MAX_REQUEST {
        return Err(std::io::Error::other("the cgroup's paths are too long to offer"));
    }
    Ok(offer)
}

/// The next request on `sock`, read into `buf`, or `None` at the end of the stream. A
/// message of another kind, or cut short, is a `Cgroup` the spare cannot parse or a
/// `Task` without its descriptors: ignored either way.
fn receive_request<'a>(sock: &impl AsRawFd, buf: &'a mut [u8]) -> nix::Result<Option<Request<'a>>> {
    let mut space = nix::cmsg_space!([RawFd; FDS]);
    let (bytes, fds) = {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                // SAFETY: the kernel just installed these descriptors in this process for us.
                fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        (msg.bytes, fds)
    };
    let message = &buf[..bytes.min(buf.len())];
    Ok(match message.first() {
        None if fds.is_empty() => None,
        Some(b'c') if fds.is_empty() => Some(Request::Cgroup(message)),
        Some(b'i') if fds.is_empty() => Some(Request::Idle),
        _ => Some(Request::Task(fds)),
    })
}

/// How long a spare may wait for its task.
const SPARE_IDLE: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a spare may take to acknowledge its task (it may still be making its sandbox).
const HAND_OVER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A spare the zygote forked: its pid, and our end of its socket.
struct Spare {
    pid: nix::unistd::Pid,
    sock: OwnedFd,
}

/// Hands a request to the spare; whether it took it. The spare acknowledges what it
/// received: one that died before that (even after the send) has not taken the request,
/// whose descriptors the zygote still holds for a helper of its own. One that does not
/// answer in time is killed first, so that it never can.
fn hand_over(spare: &Spare, fds: &[OwnedFd; FDS]) -> bool {
    if send_fds(&spare.sock, &fds.each_ref().map(AsRawFd::as_raw_fd)).is_err() {
        return false;
    }
    let answered = readable_within(&spare.sock, HAND_OVER_WAIT);
    if !answered {
        let _ = nix::sys::signal::kill(spare.pid, Signal::SIGKILL);
    }
    let mut ack = [0u8; 1];
    loop {
        match nix::sys::socket::recv(spare.sock.as_raw_fd(), &mut ack, MsgFlags::empty()) {
            Err(nix::errno::Errno::EINTR) => {}
            // Killed: it took nothing whatever it read (the end of the stream comes when
            // it has died).
            Ok(1) => return answered,
            _ => return false,
        }
    }
}

/// Whether `fd` has something to read (or has closed) within `wait`.
fn readable_within(fd: &OwnedFd, wait: std::time::Duration) -> bool {
    use std::os::fd::AsFd as _;

    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    // An error (EINTR) counts as readable: the caller reads, and retries on EINTR.
    poll(&mut fds, PollTimeout::from(ms)).map_or(true, |n| n > 0)
}

/// Forks a helper for a request.
fn fork_helper(ctl: &OwnedFd, fds: [OwnedFd; FDS]) {
    // SAFETY: this process is single-threaded (a fresh exec of our binary running only
    // `zygote_main`), so the child may run ordinary code.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            // SAFETY: only this process's own copy of the worker's socket is closed.
            unsafe { libc::close(ctl.as_raw_fd()) };
            let code = become_helper(fds);
            // SAFETY: _exit skips destructors and atexit handlers that belong to the
            // zygote.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { .. }) => drop(fds),
        // Out of processes: the task's control socket closes with `fds`, and the worker
        // reports the helper ended without a report.
        Err(_) => drop(fds),
    }
}

/// Forks the next spare, or `None` if the fork failed (the next request then forks its
/// helper).
fn fork_spare(ctl: &OwnedFd, zygote: nix::unistd::Pid, root: &Path) -> Option<Spare> {
    let (ours, theirs) =
        socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).ok()?;
    // SAFETY: this process is single-threaded (see `zygote_main`).
    match unsafe { nix::unistd::fork() }.ok()? {
        ForkResult::Child => {
            // The worker's socket is not the spare's, but its number stays taken until the
            // task's control socket is placed there (a copy of /dev/null, our stdin).
            // SAFETY: dup2 onto this process's own descriptor, which it then never uses.
            if unsafe { libc::dup2(0, ctl.as_raw_fd()) } < 0 {
                // SAFETY: as below.
                unsafe { libc::_exit(1) }
            }
            drop(ours);
            let code = spare_main(theirs, zygote, root);
            // SAFETY: as in `zygote_main`.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => Some(Spare { pid: child, sock: ours }),
    }
}

/// A spare: makes a sandbox (preparing its root at `root`), waits for its task's
/// descriptors, then is the helper P.
fn spare_main(sock: OwnedFd, zygote: nix::unistd::Pid, root: &Path) -> i32 {
    // SAFETY: as in `become_helper`.
    if unsafe { signal(Signal::SIGCHLD, SigHandler::SigDfl) }.is_err() {
        return 1;
    }
    // Do not outlive a zygote that died before this line; after it, the zygote's end of
    // `sock` closing says it has gone. (No parent-death signal: a spare lets go of the
    // cgroup it entered before it ends.)
    if nix::unistd::getppid() != zygote {
        return 1;
    }
    super::jail::set_command_line(super::jail::HELPER_NAME);
    let mut warm = super::jail::drop_groups()
        .and_then(|()| super::jail::Sandbox::create(&[sock.as_raw_fd()], root));
    let mut buf = vec![0u8; MAX_REQUEST];
    let fds = loop {
        match receive_request(&sock, &mut buf) {
            Ok(Some(Request::Task(fds))) => break fds,
            Ok(Some(Request::Cgroup(offer))) => {
                if let Ok(sandbox) = &mut warm {
                    sandbox.enter(offer.get(1..).unwrap_or_default());
                }
            }
            // Let go while the worker lives: the cgroup it offered is still its own.
            Ok(Some(Request::Idle)) => return 0,
            Err(nix::errno::Errno::EINTR) => {}
            // The zygote has gone, and the worker with it, most likely: so does the sandbox
            // (dropped, killed), and the cgroup offered for it, which no task will take.
            Ok(None) | Err(_) => {
                if let Ok(sandbox) = warm {
                    sandbox.leave();
                }
                return 0;
            }
        }
    };
    // Taken: the zygote lets go of the request once it reads this.
    if nix::sys::socket::send(sock.as_raw_fd(), b"k", MsgFlags::MSG_NOSIGNAL) != Ok(1) {
        return 1;
    }
    drop(sock);
    // A helper with a task ends with it (and cleans up after it), the zygote gone or not,
    // as one forked for the task does.
    let Ok(fds) = <[OwnedFd; FDS]>::try_from(fds) else { return 1 };
    if place(fds).is_err() {
        return 1;
    }
    super::jail::serve(Some(warm))
}

/// Sends `fds` with a one-byte message.
pub(super) fn send_fds(sock: &impl AsRawFd, fds: &[RawFd]) -> std::io::Result<()> {
    let iov = [std::io::IoSlice::new(b"t")];
    let sent = sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    if sent != 1 {
        return Err(std::io::Error::other("a partial message"));
    }
    Ok(())
}

/// Descriptors sent by [`send_fds`] (close-on-exec; at most [`FDS`]), or `None` at the end
/// of the stream.
pub(super) fn receive_fds(sock: &impl AsRawFd) -> nix::Result<Option<Vec<OwnedFd>>> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; FDS]);
    let msg =
        recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: the kernel just installed these descriptors in this process for us.
            fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    if msg.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    Ok(Some(fds))
}

/// The forked child: the task's descriptors at 3, 0, 1, 2, then the helper.
fn become_helper(fds: [OwnedFd; FDS]) -> i32 {
    // SAFETY: restoring the default disposition installs no handler code. P waits for its
    // own children, which an ignored SIGCHLD would reap away.
    if unsafe { signal(Signal::SIGCHLD, SigHandler::SigDfl) }.is_err() {
        return 1;
    }
    if place(fds).is_err() {
        return 1;
    }
    super::jail::set_command_line(super::jail::HELPER_NAME);
    super::jail::helper_main()
}

/// Places a request's descriptors at 3, 0, 1, 2.
fn place(fds: [OwnedFd; FDS]) -> Result<(), ()> {
    // Received descriptors are numbered above 3 (0–2 and 3 were open in the zygote), so
    // placing them cannot clobber one another; dup2 clears close-on-exec on the copies.
    for (fd, at) in fds.iter().zip([3, 0, 1, 2]) {
        // SAFETY: dup2 onto a small, known descriptor number of this process.
        if unsafe { libc::dup2(fd.as_raw_fd(), at) } < 0 {
            return Err(());
        }
    }
    Ok(())
}

/// The worker's handle on its zygote.
#[derive(Debug)]
pub(super) struct Zygote {
    /// Kept so the zygote is killed when the host is dropped.
    child: tokio::process::Child,
    sock: Mutex<OwnedFd>,
    /// The cgroup offered to the spare for the next task ([`Zygote::offer`]), not taken
    /// yet; dropped (and removed) with the zygote.
    offered: Option<TaskCgroup>,
}

impl Zygote {
    /// Starts the zygote, with spares preparing their roots at `spares` if given (only where
    /// the jail has namespaces).
    pub(super) fn start(helper: &Helper, spares: Option<PathBuf>) -> std::io::Result<Self> {
        let (ours, theirs) =
            socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
        let mut mode: Vec<&OsStr> = vec!["zygote".as_ref()];
        if let Some(root) = &spares {
            mode.extend([super::jail::SPARES_ARG.as_ref(), root.as_os_str()]);
        }
        let child = super::spawn_with_fd3(helper, &mode, theirs, false)?;
        Ok(Self { child, sock: Mutex::new(ours), offered: None })
    }

    /// Whether a cgroup offered for the next task waits to be taken.
    pub(super) fn has_offer(&self) -> bool {
        self.offered.is_some()
    }

    /// Offers `cg`, made for the next task, to the spare of the moment, which moves its
    /// sandbox into it while it waits. The next request must take it
    /// ([`Zygote::take_offer`]), so that the spare's sandbox is given no other task's
    /// cgroup at the same time.
    pub(super) fn offer(&mut self, cg: TaskCgroup) {
        let Ok(offer) = cgroup_offer(cg.dirs()) else { return };
        let sock = self.sock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if nix::sys::socket::send(sock.as_raw_fd(), &offer, MsgFlags::MSG_NOSIGNAL).is_ok() {
            self.offered = Some(cg);
        }
    }

    /// The cgroup offered for this request, if one was.
    pub(super) fn take_offer(&mut self) -> Option<TaskCgroup> {
        self.offered.take()
    }

    /// Its process id.
    pub(super) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Asks for one helper with `fds` (control, stdin, stdout, stderr) as its 3, 0, 1, 2.
    /// An error means the zygote is gone.
    pub(super) fn launch(&self, fds: [&OwnedFd; FDS]) -> std::io::Result<()> {
        let sock = self.sock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        send_fds(&*sock, &fds.map(AsRawFd::as_raw_fd))
    }
}

impl Drop for Zygote {
    /// The cgroup offered and not taken goes now if it is empty (its spare was let go);
    /// otherwise its spare, which ends with the zygote, removes it.
    fn drop(&mut self) {
        if let Some(cg) = self.offered.take() {
            cg.dirs().remove_now();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    /// Directories whose offer is `len` bytes long.
    fn dirs_offering(len: usize) -> super::super::cgroup::Dirs {
        let shell = cgroup_offer(&dirs_named("")).unwrap().len();
        let name = "m".repeat(len - shell);
        dirs_named(&name)
    }

    fn dirs_named(name: &str) -> super::super::cgroup::Dirs {
        let json = format!(r#"{{"v2": true, "memory": "/{name}", "pids": "/"}}"#);
        serde_json::from_str(&json).unwrap()
    }

    /// An offer of exactly `MAX_REQUEST` bytes is made and arrives whole through a
    /// `SOCK_SEQPACKET` pair, as the zygote reads it; one a byte longer is refused where it
    /// is made, never cut short on the way.
    #[test]
    fn a_cgroup_offer_at_the_largest_request_arrives_whole_and_one_past_is_refused() {
        let (a, b) =
            socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
                .unwrap();
        let offer = cgroup_offer(&dirs_offering(MAX_REQUEST)).unwrap();
        assert_eq!(offer.len(), MAX_REQUEST);
        nix::sys::socket::send(a.as_raw_fd(), &offer, MsgFlags::empty()).unwrap();
        let mut buf = vec![0u8; MAX_REQUEST];
        match receive_request(&b, &mut buf).unwrap() {
            Some(Request::Cgroup(got)) => assert_eq!(got, &offer[..]),
            _ => panic!("not a cgroup offer"),
        }
        assert!(cgroup_offer(&dirs_offering(MAX_REQUEST + 1)).is_err());
    }
}
