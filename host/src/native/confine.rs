//! The tool's last confinements before exec: Landlock, capabilities, seccomp.

#![allow(
    unsafe_code,
    reason = "capset and prctl have no safe wrappers; each block says why it is sound"
)]

use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;
use std::path::Path;

use landlock::{
    ABI, Access, AccessFs, AccessNet, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::spec::JailSpec;

/// The newest Landlock ABI this code knows; older kernels get what they support.
const LANDLOCK_ABI: ABI = ABI::V6;

/// Restricts the file system to the jail's own directories, denies TCP bind and connect,
/// and scopes abstract Unix sockets and signals to the sandbox (as far as the kernel's
/// Landlock ABI reaches). Only the tool and its ELF `interpreter` may execute: nothing the
/// tool could start (`sort --compress-program`, `find -exec`, a file it wrote) runs.
pub(super) fn landlock(
    spec: &JailSpec,
    tool: BorrowedFd<'_>,
    interpreter: Option<&Path>,
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
    let mut rules: Vec<(String, landlock::BitFlags<AccessFs>)> = Vec::new();
    // Listing the sandbox's own root shows only the directories made for it.
    rules.push(("/".into(), AccessFs::ReadDir.into()));
    for dir in ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/proc"] {
        rules.push((dir.into(), read));
    }
    rules.push(("/dev".into(), read));
    for dev in ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"] {
        rules.push((dev.into(), AccessFs::from_file(abi)));
    }
    rules.push(("/tmp".into(), write));
    for m in &spec.mounts {
        rules.push((m.guest.clone(), if m.writable { write } else { read }));
    }
    for (path, access) in rules {
        // Directories that do not exist on this system (lib32, ...) have no rule.
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

fn target_arch() -> Result<TargetArch, String> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(TargetArch::x86_64),
        "aarch64" => Ok(TargetArch::aarch64),
        other => Err(format!("no seccomp filter for {other}")),
    }
}

/// System calls the tool never gets: starting another program by path or from memory,
/// debugging other processes, mounting, new namespaces, kernel keyrings, BPF, io_uring, perf, userfaultfd,
/// modules, reboot and friends.
const DENIED: &[libc::c_long] = &[
    libc::SYS_execve,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_process_madvise,
    libc::SYS_pidfd_getfd,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_bpf,
    // Anonymous memory files: bytes the tool wrote, executable through their descriptor.
    libc::SYS_memfd_create,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_name_to_handle_at,
    libc::SYS_open_by_handle_at,
    libc::SYS_syslog,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_adjtimex,
    libc::SYS_vhangup,
];

const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWCGROUP as u64,
    0x80, // CLONE_NEWTIME
];

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).map_err(|e| e.to_string())
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, String> {
    SeccompRule::new(conditions).map_err(|e| e.to_string())
}

/// The two BPF programs: everything in [`DENIED`], `execveat` of a path, non-Unix sockets,
/// namespace-creating clones and terminal-injection ioctls fail with EPERM; `clone3` (whose flags a filter
/// cannot inspect) fails with ENOSYS so libc falls back to `clone`.
pub(super) fn filters() -> Result<[BpfProgram; 2], String> {
    let arch = target_arch()?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in DENIED {
        rules.insert(nr, vec![]);
    }
    // socket(domain, ...) and socketpair(domain, ...): only AF_UNIX.
    for nr in [libc::SYS_socket, libc::SYS_socketpair] {
        rules.insert(nr, vec![rule(vec![cond(0, SeccompCmpOp::Ne, libc::AF_UNIX as u64)?])?]);
    }
    // ioctl(fd, request, ...): no TIOCSTI or TIOCLINUX, whatever the upper bits say.
    let mut ioctl = vec![];
    for req in [libc::TIOCSTI, libc::TIOCLINUX] {
        ioctl.push(rule(vec![cond(1, SeccompCmpOp::MaskedEq(0xffff_ffff), req)?])?);
    }
    rules.insert(libc::SYS_ioctl, ioctl);
    // clone(flags, ...): no new namespaces.
    let mut clone = vec![];
    for &flag in NAMESPACE_FLAGS {
        clone.push(rule(vec![cond(0, SeccompCmpOp::MaskedEq(flag), flag)?])?);
    }
    rules.insert(libc::SYS_clone, clone);
    // execveat(dirfd, path, argv, envp, flags): only of an open descriptor, as the jail starts
    // the tool. With execve denied, launchers (xargs, find -exec, sort --compress-program,
    // the dynamic loader run as a program) start nothing.
    let empty_path = libc::AT_EMPTY_PATH as u64;
    rules.insert(
        libc::SYS_execveat,
        vec![rule(vec![cond(4, SeccompCmpOp::MaskedEq(empty_path), 0)?])?],
    );
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| e.to_string())?;
    let mut clone3 = BTreeMap::new();
    clone3.insert(libc::SYS_clone3, vec![]);
    let nosys = SeccompFilter::new(
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(|e| e.to_string())?;
    let deny: BpfProgram = deny.try_into().map_err(|e: seccompiler::BackendError| e.to_string())?;
    let nosys: BpfProgram =
        nosys.try_into().map_err(|e: seccompiler::BackendError| e.to_string())?;
    Ok([deny, nosys])
}

/// The first filter: a system call made for another architecture than this build's (i386
/// on x86_64), or through the x32 ABI (numbers with bit 30 set, under the x86_64 audit
/// architecture), kills the process. The rule filters are keyed by this architecture's
/// numbers, so a call made any other way would slip past them. (seccompiler checks the
/// architecture but not the x32 bit, hence these seven instructions.)
fn abi_guard() -> Result<BpfProgram, String> {
    const ARCH_OFFSET: u32 = 4; // seccomp_data.arch
    const NR_OFFSET: u32 = 0; // seccomp_data.nr
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    const RET_KILL_PROCESS: u32 = 0x8000_0000;
    const RET_ALLOW: u32 = 0x7fff_0000;
    let audit_arch: u32 = match std::env::consts::ARCH {
        "x86_64" => 0xc000_003e,  // AUDIT_ARCH_X86_64
        "aarch64" => 0xc000_00b7, // AUDIT_ARCH_AARCH64
        other => return Err(format!("no seccomp filter for {other}")),
    };
    let op = |code: u32, k: u32, jt: u8, jf: u8| seccompiler::sock_filter {
        code: u16::try_from(code).unwrap_or(0),
        jt,
        jf,
        k,
    };
    let (ld, jeq, jge, ret) = (
        libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
        libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
        libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K,
        libc::BPF_RET | libc::BPF_K,
    );
    Ok(vec![
        op(ld, ARCH_OFFSET, 0, 0),
        op(jeq, audit_arch, 1, 0),
        op(ret, RET_KILL_PROCESS, 0, 0),
        op(ld, NR_OFFSET, 0, 0),
        op(jge, X32_SYSCALL_BIT, 0, 1),
        op(ret, RET_KILL_PROCESS, 0, 0),
        op(ret, RET_ALLOW, 0, 0),
    ])
}

/// Installs the filters on this process (no_new_privs must already be set).
pub(super) fn seccomp() -> Result<(), String> {
    seccompiler::apply_filter(&abi_guard()?).map_err(|e| format!("seccomp: {e}"))?;
    for program in filters()? {
        seccompiler::apply_filter(&program).map_err(|e| format!("seccomp: {e}"))?;
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
