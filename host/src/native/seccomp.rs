//! The tool's system call filters: an architecture guard, an allowlist (anything else
//! ENOSYS) and a deny list (EPERM), compiled once per task in the helper and installed last,
//! just before the tool is executed.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

fn target_arch() -> Result<TargetArch, String> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(TargetArch::x86_64),
        "aarch64" => Ok(TargetArch::aarch64),
        other => Err(format!("no seccomp filter for {other}")),
    }
}

/// The system calls a tool may make: Docker's default profile for unprivileged containers
/// (the calls ordinary programs, their C library and their threads use), less what starts
/// programs or shares memory files, and less what needs a privilege the tool never has.
/// Anything not here fails with ENOSYS, as a kernel without the call would answer, so the
/// C library's fallbacks keep working; what [`DENIED`] names fails with EPERM instead.
#[rustfmt::skip]
const ALLOWED: &[libc::c_long] = &[
    libc::SYS_accept, libc::SYS_accept4, libc::SYS_bind, libc::SYS_brk, libc::SYS_capget,
    libc::SYS_capset, libc::SYS_chdir, libc::SYS_clock_getres, libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep, libc::SYS_close, libc::SYS_close_range, libc::SYS_connect,
    libc::SYS_copy_file_range, libc::SYS_dup, libc::SYS_dup3, libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl, libc::SYS_epoll_pwait, libc::SYS_epoll_pwait2, libc::SYS_eventfd2,
    libc::SYS_exit, libc::SYS_exit_group, libc::SYS_faccessat, libc::SYS_faccessat2,
    libc::SYS_fadvise64, libc::SYS_fallocate, libc::SYS_fanotify_mark, libc::SYS_fchdir,
    libc::SYS_fchmod, libc::SYS_fchmodat, libc::SYS_fchown, libc::SYS_fchownat, libc::SYS_fcntl,
    libc::SYS_fdatasync, libc::SYS_fgetxattr, libc::SYS_flistxattr, libc::SYS_flock,
    libc::SYS_fremovexattr, libc::SYS_fsetxattr, libc::SYS_fstat, libc::SYS_fstatfs,
    libc::SYS_fsync, libc::SYS_ftruncate, libc::SYS_futex, libc::SYS_futex_waitv,
    libc::SYS_getcpu, libc::SYS_getcwd, libc::SYS_getdents64, libc::SYS_getegid,
    libc::SYS_geteuid, libc::SYS_getgid, libc::SYS_getgroups, libc::SYS_getitimer,
    libc::SYS_getpeername, libc::SYS_getpgid, libc::SYS_getpid, libc::SYS_getppid,
    libc::SYS_getpriority, libc::SYS_getrandom, libc::SYS_getresgid, libc::SYS_getresuid,
    libc::SYS_getrlimit, libc::SYS_get_robust_list, libc::SYS_getrusage, libc::SYS_getsid,
    libc::SYS_getsockname, libc::SYS_getsockopt, libc::SYS_gettid, libc::SYS_gettimeofday,
    libc::SYS_getuid, libc::SYS_getxattr, libc::SYS_inotify_add_watch, libc::SYS_inotify_init1,
    libc::SYS_inotify_rm_watch, libc::SYS_io_cancel, libc::SYS_io_destroy, libc::SYS_io_getevents,
    libc::SYS_ioprio_get, libc::SYS_io_setup, libc::SYS_io_submit, libc::SYS_kill,
    libc::SYS_landlock_add_rule, libc::SYS_landlock_create_ruleset,
    libc::SYS_landlock_restrict_self, libc::SYS_lgetxattr, libc::SYS_linkat, libc::SYS_listen,
    libc::SYS_listxattr, libc::SYS_llistxattr, libc::SYS_lremovexattr, libc::SYS_lseek,
    libc::SYS_lsetxattr, libc::SYS_madvise, libc::SYS_membarrier, libc::SYS_mincore,
    libc::SYS_mkdirat, libc::SYS_mknodat, libc::SYS_mlock, libc::SYS_mlock2, libc::SYS_mlockall,
    libc::SYS_mmap, libc::SYS_mprotect, libc::SYS_mq_getsetattr, libc::SYS_mq_notify,
    libc::SYS_mq_open, libc::SYS_mq_timedreceive, libc::SYS_mq_timedsend, libc::SYS_mq_unlink,
    libc::SYS_mremap, libc::SYS_mseal, libc::SYS_msgctl, libc::SYS_msgget, libc::SYS_msgrcv,
    libc::SYS_msgsnd, libc::SYS_msync, libc::SYS_munlock, libc::SYS_munlockall, libc::SYS_munmap,
    libc::SYS_nanosleep, libc::SYS_newfstatat, libc::SYS_openat, libc::SYS_openat2,
    libc::SYS_pidfd_open, libc::SYS_pidfd_send_signal, libc::SYS_pipe2, libc::SYS_pkey_alloc,
    libc::SYS_pkey_free, libc::SYS_pkey_mprotect, libc::SYS_ppoll, libc::SYS_prctl,
    libc::SYS_pread64, libc::SYS_preadv, libc::SYS_preadv2, libc::SYS_prlimit64,
    libc::SYS_process_mrelease, libc::SYS_pselect6, libc::SYS_pwrite64, libc::SYS_pwritev,
    libc::SYS_pwritev2, libc::SYS_read, libc::SYS_readahead, libc::SYS_readlinkat,
    libc::SYS_readv, libc::SYS_recvfrom, libc::SYS_recvmmsg, libc::SYS_recvmsg,
    libc::SYS_remap_file_pages, libc::SYS_removexattr, libc::SYS_renameat, libc::SYS_renameat2,
    libc::SYS_restart_syscall, libc::SYS_rseq, libc::SYS_rt_sigaction, libc::SYS_rt_sigpending,
    libc::SYS_rt_sigprocmask, libc::SYS_rt_sigqueueinfo, libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigsuspend, libc::SYS_rt_sigtimedwait, libc::SYS_rt_tgsigqueueinfo,
    libc::SYS_sched_getaffinity, libc::SYS_sched_getattr, libc::SYS_sched_getparam,
    libc::SYS_sched_get_priority_max, libc::SYS_sched_get_priority_min,
    libc::SYS_sched_getscheduler, libc::SYS_sched_rr_get_interval, libc::SYS_sched_setaffinity,
    libc::SYS_sched_setattr, libc::SYS_sched_setparam, libc::SYS_sched_setscheduler,
    libc::SYS_sched_yield, libc::SYS_seccomp, libc::SYS_semctl, libc::SYS_semget, libc::SYS_semop,
    libc::SYS_semtimedop, libc::SYS_sendfile, libc::SYS_sendmmsg, libc::SYS_sendmsg,
    libc::SYS_sendto, libc::SYS_setfsgid, libc::SYS_setfsuid, libc::SYS_setgid,
    libc::SYS_setgroups, libc::SYS_setitimer, libc::SYS_setpgid, libc::SYS_setpriority,
    libc::SYS_setregid, libc::SYS_setresgid, libc::SYS_setresuid, libc::SYS_setreuid,
    libc::SYS_setrlimit, libc::SYS_set_robust_list, libc::SYS_setsid, libc::SYS_setsockopt,
    libc::SYS_set_tid_address, libc::SYS_setuid, libc::SYS_setxattr, libc::SYS_shmat,
    libc::SYS_shmctl, libc::SYS_shmdt, libc::SYS_shmget, libc::SYS_shutdown,
    libc::SYS_sigaltstack, libc::SYS_signalfd4, libc::SYS_splice, libc::SYS_statfs,
    libc::SYS_statx, libc::SYS_symlinkat, libc::SYS_sync, libc::SYS_sync_file_range,
    libc::SYS_syncfs, libc::SYS_sysinfo, libc::SYS_tee, libc::SYS_tgkill, libc::SYS_timer_create,
    libc::SYS_timer_delete, libc::SYS_timer_getoverrun, libc::SYS_timer_gettime,
    libc::SYS_timer_settime, libc::SYS_timerfd_create, libc::SYS_timerfd_gettime,
    libc::SYS_timerfd_settime, libc::SYS_times, libc::SYS_tkill, libc::SYS_truncate,
    libc::SYS_umask, libc::SYS_uname, libc::SYS_unlinkat, libc::SYS_utimensat, libc::SYS_vmsplice,
    libc::SYS_wait4, libc::SYS_waitid, libc::SYS_write, libc::SYS_writev,
    // Argument rules in [`DENIED_IF`] narrow these.
    libc::SYS_clone, libc::SYS_execveat, libc::SYS_ioctl, libc::SYS_personality, libc::SYS_socket,
    libc::SYS_socketpair,
    // Numbers shared by every architecture since 5.x that the libc crate does not name:
    // cachestat, fchmodat2, map_shadow_stack, futex_wake/wait/requeue, statmount,
    // listmount, setxattrat/getxattrat/listxattrat/removexattrat.
    451, 452, 453, 454, 455, 456, 457, 458, 463, 464, 465, 466,
];

/// The older calls of x86_64 that newer architectures replaced (open, stat, fork, ...).
#[rustfmt::skip]
#[cfg(target_arch = "x86_64")]
const ALLOWED_ARCH: &[libc::c_long] = &[
    libc::SYS_access, libc::SYS_alarm, libc::SYS_arch_prctl, libc::SYS_chmod, libc::SYS_chown,
    libc::SYS_creat, libc::SYS_dup2, libc::SYS_epoll_create, libc::SYS_epoll_wait,
    libc::SYS_eventfd, libc::SYS_fork, libc::SYS_futimesat, libc::SYS_getdents, libc::SYS_getpgrp,
    libc::SYS_get_thread_area, libc::SYS_inotify_init, libc::SYS_lchown, libc::SYS_link,
    libc::SYS_lstat, libc::SYS_mkdir, libc::SYS_mknod, libc::SYS_open, libc::SYS_pause,
    libc::SYS_pipe, libc::SYS_poll, libc::SYS_readlink, libc::SYS_rename, libc::SYS_rmdir,
    libc::SYS_select, libc::SYS_set_thread_area, libc::SYS_signalfd, libc::SYS_stat,
    libc::SYS_symlink, libc::SYS_time, libc::SYS_unlink, libc::SYS_utime, libc::SYS_utimes,
    libc::SYS_vfork, 333, // io_pgetevents
];
#[cfg(target_arch = "aarch64")]
const ALLOWED_ARCH: &[libc::c_long] = &[292]; // io_pgetevents
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ALLOWED_ARCH: &[libc::c_long] = &[];

/// Calls known to be dangerous, answered EPERM (not ENOSYS: nothing should fall back to
/// something else): starting another program by path or from memory, debugging or
/// reading other processes, mounting, new namespaces, kernel keyrings, BPF, io_uring,
/// perf, userfaultfd, modules, reboot, clocks, raw I/O ports, NUMA placement and friends.
const DENIED: &[libc::c_long] = &[
    libc::SYS_execve,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_process_madvise,
    libc::SYS_pidfd_getfd,
    libc::SYS_kcmp,
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
    libc::SYS_memfd_secret,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_fanotify_init,
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
    libc::SYS_quotactl_fd,
    libc::SYS_name_to_handle_at,
    libc::SYS_open_by_handle_at,
    libc::SYS_syslog,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_vhangup,
    libc::SYS_ioprio_set,
    libc::SYS_mbind,
    libc::SYS_set_mempolicy,
    libc::SYS_get_mempolicy,
    libc::SYS_migrate_pages,
    libc::SYS_move_pages,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_modify_ldt,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_uselib,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ustat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_sysfs,
];

const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// The execution domains `personality` may select (Docker's set): Linux, 32-bit Linux,
/// a 2.6 kernel version, both, and the query. Never ADDR_NO_RANDOMIZE or
/// READ_IMPLIES_EXEC.
const PERSONALITIES: &[u64] = &[0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).map_err(|e| e.to_string())
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, String> {
    SeccompRule::new(conditions).map_err(|e| e.to_string())
}

fn program(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    otherwise: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, String> {
    let filter =
        SeccompFilter::new(rules, otherwise, matched, target_arch()?).map_err(|e| e.to_string())?;
    filter.try_into().map_err(|e: seccompiler::BackendError| e.to_string())
}

/// The tool's system call filters, in the order they are installed: [`abi_guard`]; the
/// allowlist ([`ALLOWED`], anything else ENOSYS); the deny list ([`DENIED`], and these
/// arguments, EPERM): `execveat` of anything but the descriptor `exec_fd` (the tool, as
/// the jail starts it; `None`: nothing), non-Unix sockets, namespace-creating clones,
/// terminal-injection ioctls and personalities outside [`PERSONALITIES`]. When filters
/// disagree the kernel takes the strictest answer, and between two errors the one of the
/// filter installed last, so a denied call is EPERM. `clone3` (whose flags a filter cannot
/// read) is not allowed, so libc falls back to `clone`, whose flags it can.
///
/// With `single_process` (no memory cgroup: RLIMIT_AS bounds one address space, not a
/// task's processes), `fork`, `vfork` and a `clone` that is not a thread are refused too:
/// threads share the bounded address space, processes would multiply it.
pub(super) fn filters(
    exec_fd: Option<std::os::fd::RawFd>,
    single_process: bool,
) -> Result<Vec<BpfProgram>, String> {
    let mut allowed: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in ALLOWED.iter().chain(ALLOWED_ARCH) {
        allowed.insert(nr, vec![]);
    }
    let mut denied: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in DENIED {
        denied.insert(nr, vec![]);
    }
    // socket(domain, ...) and socketpair(domain, ...): only AF_UNIX.
    for nr in [libc::SYS_socket, libc::SYS_socketpair] {
        denied.insert(nr, vec![rule(vec![cond(0, SeccompCmpOp::Ne, libc::AF_UNIX as u64)?])?]);
    }
    // ioctl(fd, request, ...): no TIOCSTI or TIOCLINUX, whatever the upper bits say.
    let mut ioctl = vec![];
    for req in [libc::TIOCSTI, libc::TIOCLINUX] {
        ioctl.push(rule(vec![cond(1, SeccompCmpOp::MaskedEq(0xffff_ffff), req)?])?);
    }
    denied.insert(libc::SYS_ioctl, ioctl);
    // clone(flags, ...): no new namespaces.
    let mut clone = vec![];
    for &flag in NAMESPACE_FLAGS {
        clone.push(rule(vec![cond(0, SeccompCmpOp::MaskedEq(flag), flag)?])?);
    }
    if single_process {
        let thread = libc::CLONE_THREAD as u64;
        clone.push(rule(vec![cond(0, SeccompCmpOp::MaskedEq(thread), 0)?])?);
        #[cfg(target_arch = "x86_64")]
        for nr in [libc::SYS_fork, libc::SYS_vfork] {
            denied.insert(nr, vec![]);
        }
    }
    denied.insert(libc::SYS_clone, clone);
    // personality(persona): only the harmless ones.
    let others =
        PERSONALITIES.iter().map(|&p| cond(0, SeccompCmpOp::Ne, p)).collect::<Result<_, _>>()?;
    denied.insert(libc::SYS_personality, vec![rule(others)?]);
    // execveat(dirfd, path, argv, envp, flags): only of the tool's own descriptor, by that
    // descriptor (AT_EMPTY_PATH). With execve denied, launchers (xargs, find -exec, sort
    // --compress-program, the loader run as a program) start nothing; and the root holds
    // no other program to start.
    let empty_path = libc::AT_EMPTY_PATH as u64;
    let mut execveat = vec![rule(vec![cond(4, SeccompCmpOp::MaskedEq(empty_path), 0)?])?];
    match exec_fd.and_then(|fd| u64::try_from(fd).ok()) {
        Some(fd) => execveat.push(rule(vec![cond(0, SeccompCmpOp::Ne, fd)?])?),
        None => execveat = vec![],
    }
    denied.insert(libc::SYS_execveat, execveat);
    Ok(vec![
        abi_guard()?,
        program(allowed, SeccompAction::Errno(libc::ENOSYS as u32), SeccompAction::Allow)?,
        program(denied, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32))?,
    ])
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

/// How many system calls the allowlist names on this architecture.
pub(super) fn allowed_count() -> usize {
    let mut all: Vec<libc::c_long> = ALLOWED.iter().chain(ALLOWED_ARCH).copied().collect();
    all.sort_unstable();
    all.dedup();
    all.len()
}

/// How many system calls are denied outright (EPERM) on this architecture.
pub(super) fn denied_count() -> usize {
    DENIED.len()
}

/// Installs `filters` (from [`filters`]) on this process; no_new_privs must already be set.
pub(super) fn install(filters: &[BpfProgram]) -> Result<(), String> {
    for program in filters {
        seccompiler::apply_filter(program).map_err(|e| format!("seccomp: {e}"))?;
    }
    Ok(())
}
