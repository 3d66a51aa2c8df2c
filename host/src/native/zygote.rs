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
//! With spares (the worker's kernel has the namespaces; `__agenix-jail zygote spares`), the
//! zygote keeps one helper forked ahead, a *spare*, that has already made what no task
//! decides: a fresh sandbox's namespaces and id maps (see `jail::Sandbox`). A request goes
//! to the spare over its own socket pair, and the zygote forks the next spare at once, so
//! the namespaces of the next task are made while this one runs. Each sandbox still serves
//! one task only, and a spare idle for [`SPARE_IDLE`] goes (a sandbox made ahead holds the
//! host's mount table as it was then; the helper also makes a new one for a task given
//! directories). A spare that has gone (killed, or out of memory) refuses the hand-over,
//! and the zygote forks a helper for the request as without spares; a spare whose
//! namespaces could not be made tries again when its task comes, and reports why not. An
//! idle spare dies with the zygote (parent-death signal, and its socket closing); one with a
//! task ends with its task.

#![allow(
    unsafe_code,
    reason = "fork in a single-threaded process; each block says why it is sound"
)]

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use nix::sys::signal::{SigHandler, Signal, signal};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use nix::unistd::ForkResult;

use super::Helper;

/// Descriptors in each request: the task's control socket, then the tool's stdin, stdout
/// and stderr.
const FDS: usize = 4;

/// The zygote's loop. Returns when the worker has gone.
pub(super) fn zygote_main(spares: bool) -> i32 {
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
    let mut spare = if spares { fork_spare(&ctl, zygote) } else { None };
    loop {
        // A spare is a copy of the host's mount table as it was when it was made (and keeps
        // what it holds mounted): one left idle for SPARE_IDLE goes, and the next task
        // makes its sandbox as without spares.
        if spare.is_some() && !readable_within(&ctl, SPARE_IDLE) {
            spare = None;
            continue;
        }
        let fds = match receive_fds(&ctl) {
            Ok(Some(fds)) => fds,
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
        if spares {
            spare = fork_spare(&ctl, zygote);
        }
    }
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
fn fork_spare(ctl: &OwnedFd, zygote: nix::unistd::Pid) -> Option<Spare> {
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
            let code = spare_main(theirs, zygote);
            // SAFETY: as in `zygote_main`.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => Some(Spare { pid: child, sock: ours }),
    }
}

/// A spare: makes a sandbox, waits for its task's descriptors, then is the helper P.
fn spare_main(sock: OwnedFd, zygote: nix::unistd::Pid) -> i32 {
    // SAFETY: as in `become_helper`.
    if unsafe { signal(Signal::SIGCHLD, SigHandler::SigDfl) }.is_err() {
        return 1;
    }
    // Die with the zygote, and do not outlive one that died before this line.
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || nix::unistd::getppid() != zygote
    {
        return 1;
    }
    super::jail::set_command_line(super::jail::HELPER_NAME);
    let warm =
        super::jail::drop_groups().and_then(|()| super::jail::Sandbox::create(&[sock.as_raw_fd()]));
    let fds = loop {
        match receive_fds(&sock) {
            Ok(Some(fds)) => break fds,
            Err(nix::errno::Errno::EINTR) => {}
            // The zygote has gone: so does the sandbox (dropped, killed).
            Ok(None) | Err(_) => return 0,
        }
    };
    // Taken: the zygote lets go of the request once it reads this.
    if nix::sys::socket::send(sock.as_raw_fd(), b"k", MsgFlags::MSG_NOSIGNAL) != Ok(1) {
        return 1;
    }
    drop(sock);
    // A helper with a task ends with it (and cleans up after it), the zygote gone or not,
    // as one forked for the task does.
    let _ = nix::sys::prctl::set_pdeathsig(None);
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
}

impl Zygote {
    /// Starts the zygote, with spares if `spares` (only where the jail has namespaces).
    pub(super) fn start(helper: &Helper, spares: bool) -> std::io::Result<Self> {
        let (ours, theirs) =
            socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
        let mode: &[&str] = if spares { &["zygote", super::jail::SPARES_ARG] } else { &["zygote"] };
        let child = super::spawn_with_fd3(helper, mode, theirs, false)?;
        Ok(Self { child, sock: Mutex::new(ours) })
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
