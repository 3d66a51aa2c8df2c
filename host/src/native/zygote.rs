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
pub(super) fn zygote_main() -> i32 {
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
    loop {
        let fds = match receive(&ctl) {
            Ok(Some(fds)) => fds,
            Ok(None) => return 0,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 1,
        };
        let Ok(fds) = <[OwnedFd; FDS]>::try_from(fds) else { continue };
        // SAFETY: this process is single-threaded (a fresh exec of our binary running only
        // this loop), so the child may run ordinary code.
        match unsafe { nix::unistd::fork() } {
            Ok(ForkResult::Child) => {
                drop(ctl);
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
}

/// One request: its descriptors (close-on-exec), or `None` at the end of the stream.
fn receive(ctl: &OwnedFd) -> nix::Result<Option<Vec<OwnedFd>>> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; FDS]);
    let msg =
        recvmsg::<()>(ctl.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
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
    // Received descriptors are numbered above 3 (0–2 and 3 were open in the zygote), so
    // placing them cannot clobber one another; dup2 clears close-on-exec on the copies.
    for (fd, at) in fds.iter().zip([3, 0, 1, 2]) {
        // SAFETY: dup2 onto a small, known descriptor number of this process.
        if unsafe { libc::dup2(fd.as_raw_fd(), at) } < 0 {
            return 1;
        }
    }
    drop(fds);
    super::jail::set_command_line(super::jail::HELPER_NAME);
    super::jail::helper_main()
}

/// The worker's handle on its zygote.
#[derive(Debug)]
pub(super) struct Zygote {
    /// Kept so the zygote is killed when the host is dropped.
    child: tokio::process::Child,
    sock: Mutex<OwnedFd>,
}

impl Zygote {
    /// Starts the zygote.
    pub(super) fn start(helper: &Helper) -> std::io::Result<Self> {
        let (ours, theirs) =
            socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
        let child = super::spawn_with_fd3(helper, "zygote", theirs, false)?;
        Ok(Self { child, sock: Mutex::new(ours) })
    }

    /// Its process id.
    pub(super) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Asks for one helper with `fds` (control, stdin, stdout, stderr) as its 3, 0, 1, 2.
    /// An error means the zygote is gone.
    pub(super) fn launch(&self, fds: [&OwnedFd; FDS]) -> std::io::Result<()> {
        let raw = fds.map(AsRawFd::as_raw_fd);
        let sock = self.sock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let iov = [std::io::IoSlice::new(b"t")];
        let sent = sendmsg::<()>(
            sock.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        if sent != 1 {
            return Err(std::io::Error::other("the zygote took a partial request"));
        }
        Ok(())
    }
}
