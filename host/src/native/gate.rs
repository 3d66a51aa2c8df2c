//! Exec once: the tool is the one program started in its sandbox, and only once.
//!
//! T's system call filter (`seccomp.rs`) hands the one exec it lets through (`execveat` of
//! the tool's own descriptor) to a supervisor, over a seccomp user-notification descriptor
//! that T passes to its parent before it executes the tool. The supervisor lets the first one continue — T's own, made before any code of the
//! tool runs — and answers every later one EPERM, whoever makes it (the tool, a thread of
//! it, a child of it). So neither the loader, nor a library, nor the tool itself a second
//! time can be executed, whatever descriptor a call names. The decision depends on no
//! argument the caller controls, so the usual caveat about letting a notified call continue
//! (its memory may change meanwhile) does not apply.

#![allow(unsafe_code, reason = "the seccomp ioctl(2) calls have no safe wrappers")]

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// Sends the notification descriptor to the supervisor.
pub(super) fn send(to: &OwnedFd, listener: &OwnedFd) -> Result<(), String> {
    let fds = [listener.as_raw_fd()];
    sendmsg::<()>(
        to.as_raw_fd(),
        &[IoSlice::new(b"g")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map(drop)
    .map_err(|e| format!("cannot hand over the seccomp gate: {e}"))
}

/// Receives the notification descriptor; `None` if the sender ended without one.
pub(super) fn receive(from: &OwnedFd) -> Option<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg =
        recvmsg::<()>(from.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .ok()?;
    for cmsg in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed this descriptor in this process for us.
            return Some(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    None
}

/// The supervisor's end.
pub(super) struct Gate {
    listener: OwnedFd,
    opened: bool,
}

impl Gate {
    pub(super) fn new(listener: OwnedFd) -> Self {
        Self { listener, opened: false }
    }

    /// The descriptor to poll: readable when a call waits for an answer.
    pub(super) fn fd(&self) -> &OwnedFd {
        &self.listener
    }

    /// Whether the first exec has been let through.
    pub(super) fn opened(&self) -> bool {
        self.opened
    }

    /// Answers one waiting call: the first continues, every later one fails with EPERM.
    pub(super) fn answer(&mut self) {
        // SAFETY: a zeroed seccomp_notif is the documented input of NOTIF_RECV.
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: the listener is a seccomp notification descriptor; `req` is valid for
        // the kernel to write.
        let rc = unsafe {
            libc::ioctl(self.listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut req)
        };
        if rc < 0 {
            // The caller died meanwhile (ENOENT), or a signal came: nothing to answer.
            return;
        }
        let mut resp = libc::seccomp_notif_resp { id: req.id, val: 0, error: 0, flags: 0 };
        if self.opened {
            resp.error = -libc::EPERM;
        } else {
            resp.flags = u32::try_from(libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE).unwrap_or(1);
            self.opened = true;
        }
        // SAFETY: as above, with `resp` valid for the kernel to read. A caller gone since
        // is not an error here.
        unsafe { libc::ioctl(self.listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &resp) };
    }
}
