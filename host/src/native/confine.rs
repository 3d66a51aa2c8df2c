//! The tool's last confinements before exec: Landlock and capabilities (seccomp is in
//! `seccomp.rs`).

#![allow(
    unsafe_code,
    reason = "capset and prctl have no safe wrappers; each block says why it is sound"
)]

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope,
};

use super::root::RootEntry;
use super::spec::JailSpec;

/// The newest Landlock ABI this code knows; older kernels get what they support.
const LANDLOCK_ABI: ABI = ABI::V6;
/// [`LANDLOCK_ABI`] as a number.
pub(crate) const LANDLOCK_ABI_USED: i64 = 6;

/// Restricts the file system to the jail's own directories, denies TCP bind and connect,
/// and scopes abstract Unix sockets and signals to the sandbox (as far as the kernel's
/// Landlock ABI reaches). Only the tool and its ELF `interpreter` may execute: nothing the
/// tool could start (`sort --compress-program`, `find -exec`, a file it wrote) runs.
///
/// In the jail (`jailed`), everything in the root is the tool's to read (it holds nothing
/// else), and /tmp (if it has one) and read-write mounts to write. Without namespaces
/// (degraded mode) the root is the host's: the tool reads only what its jail would have
/// held, and writes only its scratch directory (if it has one).
pub(super) fn landlock(
    spec: &JailSpec,
    tool: BorrowedFd<'_>,
    interpreter: Option<&Path>,
    jailed: bool,
) -> Result<(), String> {
    let abi = LANDLOCK_ABI;
    let read = AccessFs::from_read(abi) & !AccessFs::Execute;
    let all = AccessFs::from_all(abi);
    let write = all & !AccessFs::Execute;
    let err = |e: landlock::RulesetError| format!("landlock: {e}");
    let mut ruleset = Ruleset::default().handle_access(all).map_err(err)?;
    ruleset = ruleset.handle_access(AccessNet::from_all(abi)).map_err(err)?;
    ruleset = ruleset.scope(Scope::from_all(abi)).map_err(err)?;
    let mut created = ruleset.create().map_err(err)?;
    let mut rules: Vec<(PathBuf, landlock::BitFlags<AccessFs>)> = Vec::new();
    if jailed {
        rules.push(("/".into(), read));
        if spec.tmp_bytes.is_some() {
            rules.push(("/tmp".into(), write));
        }
        for m in &spec.mounts {
            rules.push((m.guest.clone().into(), if m.writable { write } else { read }));
        }
    } else {
        for entry in &spec.system {
            if let RootEntry::Bind { path, .. } = entry {
                rules.push((path.clone(), read));
            }
        }
        rules.push(("/proc".into(), read));
        let scratch = if spec.tmp_bytes.is_some() { write } else { read };
        rules.push((spec.root.clone(), scratch));
    }
    for dev in ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"] {
        rules.push((dev.into(), AccessFs::from_file(abi)));
    }
    for (path, access) in rules {
        // A path that does not exist (an unused mount point) has nothing to grant.
        let Ok(fd) = PathFd::new(&path) else { continue };
        created = created.add_rule(PathBeneath::new(fd, access)).map_err(err)?;
    }
    // The tool itself is executed through its descriptor, from wherever it lives; the kernel
    // opens its interpreter for execution too.
    let exec = AccessFs::Execute | AccessFs::ReadFile;
    created = created.add_rule(PathBeneath::new(tool, exec)).map_err(err)?;
    if let Some(interpreter) = interpreter {
        let fd = PathFd::new(interpreter).map_err(|e| {
            format!("the tool's interpreter {} is not in the jail: {e}", interpreter.display())
        })?;
        created = created.add_rule(PathBeneath::new(fd, exec)).map_err(err)?;
    }
    created.restrict_self().map_err(err)?;
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const SECBIT_NOROOT: u64 = 1 << 0;
const SECBIT_NOROOT_LOCKED: u64 = 1 << 1;
const SECBIT_NO_SETUID_FIXUP: u64 = 1 << 2;
const SECBIT_NO_SETUID_FIXUP_LOCKED: u64 = 1 << 3;
const SECBIT_KEEP_CAPS_LOCKED: u64 = 1 << 5;
const SECBIT_NO_CAP_AMBIENT_RAISE: u64 = 1 << 6;
const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: u64 = 1 << 7;

/// Drops every capability: the bounding and ambient sets, then effective, permitted and
/// inheritable; locks the securebits so none comes back through exec. Verifies the result.
pub(super) fn drop_capabilities() -> Result<(), String> {
    let last: u64 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    for cap in 0..=last {
        // SAFETY: PR_CAPBSET_DROP takes a capability number and changes only this process.
        // Without CAP_SETPCAP (degraded mode, unprivileged) it fails harmlessly: such a
        // process has no capabilities to keep, which is checked below.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
    }
    // SAFETY: clears the ambient set of this process; no pointers involved.
    unsafe {
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0)
    };
    let bits = SECBIT_NOROOT
        | SECBIT_NOROOT_LOCKED
        | SECBIT_NO_SETUID_FIXUP
        | SECBIT_NO_SETUID_FIXUP_LOCKED
        | SECBIT_KEEP_CAPS_LOCKED
        | SECBIT_NO_CAP_AMBIENT_RAISE
        | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    // SAFETY: sets securebits of this process; no pointers involved. Fails without
    // CAP_SETPCAP, in which case there is nothing to lock down.
    unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits as libc::c_ulong, 0, 0, 0) };
    let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [CapData::default(); 2];
    // SAFETY: header and data are valid, correctly laid out for version 3 (two data
    // structs), and live for the call.
    let rc =
        unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) };
    if rc != 0 {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    let mut now = [CapData::default(); 2];
    // SAFETY: as above, for capget writing into `now`.
    let rc =
        unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, now.as_mut_ptr()) };
    if rc != 0 || now.iter().any(|d| d.effective != 0 || d.permitted != 0 || d.inheritable != 0) {
        return Err("capabilities remain after dropping them".into());
    }
    Ok(())
}

/// The Landlock ABI this kernel offers (0: none).
pub(crate) fn landlock_abi() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute and size 0, the call only returns the ABI version.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if v < 0 { 0 } else { v }
}
