//! The tool's system call filter: one classic-BPF program, built here from sorted ranges of
//! call numbers (so the kernel translates and JITs a short program, once per task) and
//! installed last, just before the tool is executed.
//!
//! It answers, in this order: a call for another architecture or through the x32 ABI kills
//! the process; the calls with argument rules ([`SPECIAL`]) are decided by their arguments;
//! calls in the allowlist run; calls in [`DENIED`] fail with EPERM; anything else fails with
//! ENOSYS, as on a kernel without the call, so the C library's fallbacks keep working
//! (`clone3` among them: libc falls back to `clone`, whose flags a filter can read). The
//! tool's own `execveat` goes to the exec gate (`gate.rs`) through a user notification.

#![allow(unsafe_code, reason = "seccomp(2) has no safe wrapper; the block says why it is sound")]

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use libc::sock_filter;

/// A classic BPF program.
pub(super) type Program = Vec<sock_filter>;

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
    // Decided by their arguments: see [`SPECIAL`].
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

/// Namespace-creating clone flags (all in the low 32 bits, which are all `clone` reads).
const NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP) as u32;

/// The execution domains `personality` may select (Docker's set): Linux, 32-bit Linux,
/// a 2.6 kernel version, both, and the query. Never ADDR_NO_RANDOMIZE or
/// READ_IMPLIES_EXEC.
const PERSONALITIES: &[u32] = &[0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// Calls decided by their arguments (each compared in its low 32 bits, which is all the
/// kernel reads of them: an `int` or `unsigned int`, or `clone`'s flags).
const SPECIAL: &[libc::c_long] = &[
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_ioctl,
    libc::SYS_clone,
    libc::SYS_personality,
    libc::SYS_execveat,
];

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_USER_NOTIF: u32 = 0x7fc0_0000;
const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;
const ENOSYS: u32 = RET_ERRNO | libc::ENOSYS as u32;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const AUDIT_ARCH: u32 = 0; // no filter is built there: see `program`

fn op(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code: u16::try_from(code).unwrap_or(0), jt, jf, k }
}
fn load(offset: u32) -> sock_filter {
    op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset, 0, 0)
}
fn ret(action: u32) -> sock_filter {
    op(libc::BPF_RET | libc::BPF_K, action, 0, 0)
}
fn jeq(k: u32, jt: u8, jf: u8) -> sock_filter {
    op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, k, jt, jf)
}
fn jge(k: u32, jt: u8, jf: u8) -> sock_filter {
    op(libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K, k, jt, jf)
}
fn jgt(k: u32, jt: u8, jf: u8) -> sock_filter {
    op(libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K, k, jt, jf)
}
fn jset(k: u32, jt: u8, jf: u8) -> sock_filter {
    op(libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K, k, jt, jf)
}
/// Loads the low 32 bits of argument `i` (seccomp_data.args, little-endian).
fn arg(i: u32) -> sock_filter {
    load(16 + 8 * i)
}

/// The filter. `exec_fd`: the one descriptor `execveat` may execute, through the exec gate
/// (a user notification; install with a listener); `None`: no exec at all. With
/// `single_process` (no memory cgroup: RLIMIT_AS bounds one address space, not a task's
/// processes), `fork`, `vfork` and a `clone` that is not a thread are refused too.
pub(super) fn program(exec_fd: Option<RawFd>, single_process: bool) -> Result<Program, String> {
    if AUDIT_ARCH == 0 {
        return Err(format!("no seccomp filter for {}", std::env::consts::ARCH));
    }
    let nr = |n: libc::c_long| u32::try_from(n).map_err(|_| format!("call number {n}"));
    let mut p = vec![
        load(4), // seccomp_data.arch
        jeq(AUDIT_ARCH, 1, 0),
        ret(RET_KILL_PROCESS),
        load(0), // seccomp_data.nr
        jge(X32_SYSCALL_BIT, 0, 1),
        ret(RET_KILL_PROCESS),
    ];
    for &call in SPECIAL {
        let block = special(call, exec_fd, single_process);
        let skip = u8::try_from(block.len()).map_err(|_| "a rule block is too long".to_string())?;
        p.push(jeq(nr(call)?, 0, skip));
        p.extend(block);
    }
    let mut denied: Vec<libc::c_long> = DENIED.to_vec();
    if single_process {
        #[cfg(target_arch = "x86_64")]
        denied.extend([libc::SYS_fork, libc::SYS_vfork]);
    }
    let allowed: Vec<libc::c_long> = ALLOWED
        .iter()
        .chain(ALLOWED_ARCH)
        .copied()
        .filter(|n| !SPECIAL.contains(n) && !denied.contains(n))
        .collect();
    // Allowed first: the common calls (read, write, mmap, ...) are low numbers, and decided
    // after a few comparisons.
    for (set, action) in [(allowed, RET_ALLOW), (denied, EPERM)] {
        for (lo, hi) in ranges(&set) {
            // nr in lo..=hi: the action; else on to the next range.
            p.extend([jge(nr(lo)?, 0, 2), jgt(nr(hi)?, 1, 0), ret(action)]);
        }
    }
    p.push(ret(ENOSYS));
    if p.len() > usize::from(u16::MAX) {
        return Err("the filter is too long".into());
    }
    Ok(p)
}

/// The block deciding one call of [`SPECIAL`] by its arguments; it always returns.
fn special(call: libc::c_long, exec_fd: Option<RawFd>, single_process: bool) -> Program {
    let af_unix = libc::AF_UNIX as u32;
    match call {
        // socket(domain, ...), socketpair(domain, ...): only AF_UNIX.
        libc::SYS_socket | libc::SYS_socketpair => {
            vec![arg(0), jeq(af_unix, 0, 1), ret(RET_ALLOW), ret(EPERM)]
        }
        // ioctl(fd, request, ...): no terminal injection.
        libc::SYS_ioctl => vec![
            arg(1),
            jeq(libc::TIOCSTI as u32, 2, 0),
            jeq(libc::TIOCLINUX as u32, 1, 0),
            ret(RET_ALLOW),
            ret(EPERM),
        ],
        // clone(flags, ...): no new namespaces; one process only when asked.
        libc::SYS_clone if single_process => vec![
            arg(0),
            jset(NAMESPACE_FLAGS, 2, 0),
            jset(libc::CLONE_THREAD as u32, 0, 1),
            ret(RET_ALLOW),
            ret(EPERM),
        ],
        libc::SYS_clone => vec![arg(0), jset(NAMESPACE_FLAGS, 1, 0), ret(RET_ALLOW), ret(EPERM)],
        // personality(persona): only the harmless ones.
        libc::SYS_personality => {
            let n = PERSONALITIES.len();
            let mut b = vec![arg(0)];
            for (i, &v) in PERSONALITIES.iter().enumerate() {
                // To the final `ret ALLOW`, past the rest and the `ret EPERM`.
                b.push(jeq(v, u8::try_from(n - i).unwrap_or(0), 0));
            }
            b.extend([ret(EPERM), ret(RET_ALLOW)]);
            b
        }
        // execveat(dirfd, path, argv, envp, flags): only of the tool's descriptor, by that
        // descriptor, and then only as the gate says.
        libc::SYS_execveat => match exec_fd.and_then(|fd| u32::try_from(fd).ok()) {
            Some(fd) => vec![
                arg(0),
                jeq(fd, 0, 3),
                arg(4),
                jset(libc::AT_EMPTY_PATH as u32, 0, 1),
                ret(RET_USER_NOTIF),
                ret(EPERM),
            ],
            None => vec![ret(EPERM)],
        },
        _ => vec![ret(EPERM)],
    }
}

/// `set` as sorted, inclusive ranges of consecutive numbers.
fn ranges(set: &[libc::c_long]) -> Vec<(libc::c_long, libc::c_long)> {
    let mut sorted = set.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<(libc::c_long, libc::c_long)> = Vec::new();
    for n in sorted {
        match out.last_mut() {
            Some((_, hi)) if *hi + 1 == n => *hi = n,
            _ => out.push((n, n)),
        }
    }
    out
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

/// Installs `program` on this process (no_new_privs must already be set); with `listener`,
/// returns the user-notification descriptor its exec gate answers on.
pub(super) fn install(program: &[sock_filter], listener: bool) -> Result<Option<OwnedFd>, String> {
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(|_| "the filter is too long".to_string())?,
        filter: program.as_ptr().cast_mut(),
    };
    let flags = if listener { libc::SECCOMP_FILTER_FLAG_NEW_LISTENER } else { 0 };
    // SAFETY: `prog` points at `program`, which outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc < 0 {
        return Err(format!("seccomp: {}", std::io::Error::last_os_error()));
    }
    if !listener {
        return Ok(None);
    }
    let fd = RawFd::try_from(rc).map_err(|_| "seccomp: a bad descriptor".to_string())?;
    // SAFETY: the kernel just created this descriptor for us.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    /// Runs `p` on a call as the kernel would (the subset of classic BPF built here).
    fn run(p: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let word = |off: u32| -> u32 {
            match off {
                0 => nr,
                4 => arch,
                o if o >= 16 => {
                    let a = args[((o - 16) / 8) as usize];
                    if (o - 16) % 8 == 0 { a as u32 } else { (a >> 32) as u32 }
                }
                _ => panic!("load at {off}"),
            }
        };
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = p[pc];
            let code = u32::from(i.code);
            let jump = |cond: bool| pc + 1 + usize::from(if cond { i.jt } else { i.jf });
            pc = match code {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                    acc = word(i.k);
                    pc + 1
                }
                c if c == libc::BPF_RET | libc::BPF_K => return i.k,
                c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => jump(acc == i.k),
                c if c == libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K => jump(acc >= i.k),
                c if c == libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K => jump(acc > i.k),
                c if c == libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K => jump(acc & i.k != 0),
                other => panic!("op {other:#x}"),
            };
        }
    }

    fn call(p: &[sock_filter], nr: libc::c_long, args: [u64; 6]) -> u32 {
        run(p, AUDIT_ARCH, nr as u32, args)
    }

    #[test]
    fn every_call_gets_the_answer_its_list_gives() {
        let p = program(Some(100), false).unwrap();
        assert!(p.len() < 400, "{} instructions", p.len());
        for &n in ALLOWED.iter().chain(ALLOWED_ARCH).filter(|n| !SPECIAL.contains(n)) {
            assert_eq!(call(&p, n, [0; 6]), RET_ALLOW, "{n}");
        }
        for &n in DENIED {
            assert_eq!(call(&p, n, [0; 6]), EPERM, "{n}");
        }
        // Not on either list: ENOSYS, as from an older kernel (clone3, lsm_list_modules).
        for n in [libc::SYS_clone3, 461, 999] {
            assert_eq!(call(&p, n, [0; 6]), ENOSYS, "{n}");
        }
        // Another architecture, or x32: killed.
        assert_eq!(run(&p, 0x4000_0003, 0, [0; 6]), RET_KILL_PROCESS);
        assert_eq!(call(&p, libc::SYS_unshare | 0x4000_0000, [0; 6]), RET_KILL_PROCESS);
    }

    #[test]
    fn argument_rules_decide_sockets_ioctls_clones_personalities_and_exec() {
        let p = program(Some(100), false).unwrap();
        let unix = libc::AF_UNIX as u64;
        assert_eq!(call(&p, libc::SYS_socket, [unix, 1, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(call(&p, libc::SYS_socket, [libc::AF_INET as u64, 1, 0, 0, 0, 0]), EPERM);
        assert_eq!(call(&p, libc::SYS_socketpair, [libc::AF_NETLINK as u64, 0, 0, 0, 0, 0]), EPERM);
        assert_eq!(call(&p, libc::SYS_ioctl, [0, libc::TIOCSTI, 0, 0, 0, 0]), EPERM);
        // Upper bits of the request do not hide it.
        let hidden = (1u64 << 40) | libc::TIOCLINUX;
        assert_eq!(call(&p, libc::SYS_ioctl, [0, hidden, 0, 0, 0, 0]), EPERM);
        assert_eq!(call(&p, libc::SYS_ioctl, [0, libc::FIONREAD, 0, 0, 0, 0]), RET_ALLOW);
        let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        assert_eq!(call(&p, libc::SYS_clone, [thread, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(call(&p, libc::SYS_clone, [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]), RET_ALLOW);
        for ns in [libc::CLONE_NEWUSER, libc::CLONE_NEWNS, libc::CLONE_NEWNET] {
            assert_eq!(call(&p, libc::SYS_clone, [thread | ns as u64, 0, 0, 0, 0, 0]), EPERM);
        }
        for &v in PERSONALITIES {
            assert_eq!(call(&p, libc::SYS_personality, [u64::from(v), 0, 0, 0, 0, 0]), RET_ALLOW);
        }
        assert_eq!(call(&p, libc::SYS_personality, [0x0040000, 0, 0, 0, 0, 0]), EPERM);
        let empty = libc::AT_EMPTY_PATH as u64;
        assert_eq!(call(&p, libc::SYS_execveat, [100, 0, 0, 0, empty, 0]), RET_USER_NOTIF);
        assert_eq!(call(&p, libc::SYS_execveat, [101, 0, 0, 0, empty, 0]), EPERM);
        assert_eq!(call(&p, libc::SYS_execveat, [100, 0, 0, 0, 0, 0]), EPERM);
        assert_eq!(call(&p, libc::SYS_execve, [0; 6]), EPERM);
        let none = program(None, false).unwrap();
        assert_eq!(call(&none, libc::SYS_execveat, [100, 0, 0, 0, empty, 0]), EPERM);
    }

    #[test]
    fn one_process_only_refuses_forks_and_keeps_threads() {
        let p = program(Some(100), true).unwrap();
        let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        assert_eq!(call(&p, libc::SYS_clone, [thread, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(call(&p, libc::SYS_clone, [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]), EPERM);
        #[cfg(target_arch = "x86_64")]
        for n in [libc::SYS_fork, libc::SYS_vfork] {
            assert_eq!(call(&p, n, [0; 6]), EPERM);
        }
    }
}
