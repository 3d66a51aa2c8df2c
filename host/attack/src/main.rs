//! One escape attempt per run. Prints one line per probe — `ok <what>` when the attempt
//! worked, `denied <what>: <error>` when it did not — and exits 0 (it is the test that
//! decides what should have happened).

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn report(what: &str, r: std::io::Result<String>) {
    match r {
        Ok(s) => println!("ok {what}: {s}"),
        Err(e) => println!("denied {what}: {}", e.raw_os_error().map(errno_name).unwrap_or_else(|| e.to_string())),
    }
}

fn errno_name(code: i32) -> String {
    let name = match code {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EACCES => "EACCES",
        libc::EROFS => "EROFS",
        libc::EXDEV => "EXDEV",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ENOSYS => "ENOSYS",
        libc::EINVAL => "EINVAL",
        libc::ENOTTY => "ENOTTY",
        libc::ESRCH => "ESRCH",
        libc::EAGAIN => "EAGAIN",
        libc::ENOSPC => "ENOSPC",
        libc::EFBIG => "EFBIG",
        libc::EBADF => "EBADF",
        libc::ENXIO => "ENXIO",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        _ => return format!("errno {code}"),
    };
    name.to_string()
}

fn last() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn syscall_result(rc: libc::c_long) -> std::io::Result<String> {
    if rc < 0 { Err(last()) } else { Ok(format!("returned {rc}")) }
}

/// The names in `dir`, sorted (none if it cannot be read).
fn listing(dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match arg(0).as_str() {
        // S1: write outside the sandbox's writable places.
        "write" => {
            for path in &args[1..] {
                report(&format!("write {path}"), std::fs::write(path, b"pwned").map(|()| "written".into()));
            }
        }
        // S2: read secrets.
        "read" => {
            for path in &args[1..] {
                report(&format!("read {path}"), std::fs::read(path).map(|b| format!("{} bytes", b.len())));
            }
        }
        // S3: links and renames out of a read-write mount (arg 1), towards host paths.
        "links" => {
            let dir = arg(1);
            let host_file = arg(2);
            let link = format!("{dir}/link");
            report("symlink", std::os::unix::fs::symlink(&host_file, &link).map(|()| "made".into()));
            report(
                "read through symlink",
                std::fs::read_to_string(&link).map(|s| format!("{} bytes: {}", s.len(), s.lines().next().unwrap_or(""))),
            );
            report("hardlink in", std::fs::hard_link(&host_file, format!("{dir}/hard")).map(|()| "made".into()));
            std::fs::write(format!("{dir}/mine"), b"x").ok();
            report("rename out", std::fs::rename(format!("{dir}/mine"), "/tmp/moved").map(|()| "moved".into()));
            report("hardlink out", std::fs::hard_link(format!("{dir}/mine"), "/usr/stolen").map(|()| "made".into()));
        }
        // S4: network.
        "net" => {
            let port: u16 = arg(1).parse().unwrap_or(9);
            let unix_path = arg(2);
            report(
                "tcp connect",
                TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).map(|_| "connected".into()),
            );
            report("tcp bind", std::net::TcpListener::bind("127.0.0.1:0").map(|_| "bound".into()));
            report("udp send", UdpSocket::bind("0.0.0.0:0").and_then(|s| s.send_to(b"x", ("127.0.0.1", port))).map(|n| format!("{n} bytes")));
            report(
                "dns",
                std::net::ToSocketAddrs::to_socket_addrs(&("example.com", 80)).map(|mut a| format!("{:?}", a.next())),
            );
            if !unix_path.is_empty() {
                report("unix connect", UnixStream::connect(&unix_path).map(|_| "connected".into()));
            }
            // An abstract socket the test holds outside.
            // SAFETY: plain socket/connect calls on a zeroed sockaddr_un.
            let r = unsafe {
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                if fd < 0 {
                    Err(last())
                } else {
                    let mut addr: libc::sockaddr_un = std::mem::zeroed();
                    addr.sun_family = libc::AF_UNIX as u16;
                    let name = b"\0agenix-attack-abstract";
                    for (i, b) in name.iter().enumerate() {
                        addr.sun_path[i] = *b as libc::c_char;
                    }
                    let len = (std::mem::size_of::<libc::sa_family_t>() + name.len()) as u32;
                    let rc = libc::connect(fd, &addr as *const _ as *const libc::sockaddr, len);
                    if rc < 0 { Err(last()) } else { Ok("connected".to_string()) }
                }
            };
            report("abstract unix connect", r);
            report("netlink", {
                // SAFETY: a socket call with constant arguments.
                let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0) };
                if fd < 0 { Err(last()) } else { Ok("opened".into()) }
            });
        }
        // S5: fork bomb.
        "forkbomb" => {
            let mut made = 0u64;
            let mut refused = 0u64;
            loop {
                // SAFETY: fork in a single-threaded program; the children loop too.
                match unsafe { libc::fork() } {
                    -1 => {
                        refused += 1;
                        if refused % 10_000 == 1 {
                            println!("fork refused after {made}");
                            let _ = std::io::stdout().flush();
                        }
                    }
                    0 => {}
                    _ => made += 1,
                }
            }
        }
        // S6: memory bomb.
        "membomb" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut chunk = Vec::new();
                if chunk.try_reserve_exact(1 << 20).is_err() {
                    println!("allocation refused at {} MiB", hoard.len());
                    std::process::exit(3);
                }
                chunk.resize(1 << 20, 0xa5);
                hoard.push(chunk);
            }
        }
        // S7: fill /tmp; write one huge file; flood stdout.
        "diskfill" => {
            let block = vec![0u8; 1 << 20];
            let mut n = 0u64;
            let r = (|| -> std::io::Result<String> {
                let mut f = std::fs::File::create("/tmp/fill")?;
                loop {
                    f.write_all(&block)?;
                    n += 1;
                }
            })();
            report(&format!("fill /tmp (wrote {n} MiB)"), r);
        }
        "bigfile" => {
            let dir = arg(1);
            let block = vec![0u8; 1 << 20];
            let mut n = 0u64;
            let r = (|| -> std::io::Result<String> {
                let mut f = std::fs::File::create(format!("{dir}/big"))?;
                loop {
                    f.write_all(&block)?;
                    n += 1;
                }
            })();
            report(&format!("big file (wrote {n} MiB)"), r);
        }
        "flood" => {
            let line = vec![b'y'; 8192];
            let mut out = std::io::stdout().lock();
            while out.write_all(&line).is_ok() {}
        }
        // S8: spin, sleep, and a double-forked daemon that outlives its parent.
        "spin" => {
            let mut x = 1u64;
            loop {
                x = x.wrapping_mul(3).wrapping_add(1);
                std::hint::black_box(x);
            }
        }
        "sleep" => std::thread::sleep(Duration::from_secs(3600)),
        "daemon" => {
            // SAFETY: fork/setsid/fork in a single-threaded program.
            unsafe {
                if libc::fork() == 0 {
                    libc::setsid();
                    if libc::fork() == 0 {
                        // The daemon: lives for an hour unless killed.
                        std::thread::sleep(Duration::from_secs(3600));
                        libc::_exit(0);
                    }
                    libc::_exit(0);
                }
            }
            println!("daemon started");
            let _ = std::io::stdout().flush();
            std::thread::sleep(Duration::from_secs(3600));
        }
        // A daemon that lets go of stdio, as real ones do, so no open pipe keeps the task
        // alive: `daemon-quiet FILE` leaves one behind that appends a line to FILE every
        // millisecond for an hour, and exits 0 at once.
        "daemon-quiet" => {
            let file = args.get(1).cloned().unwrap_or_default();
            // SAFETY: fork/setsid/fork in a single-threaded program.
            unsafe {
                if libc::fork() == 0 {
                    libc::setsid();
                    if libc::fork() == 0 {
                        for fd in 0..3 {
                            libc::close(fd);
                        }
                        for _ in 0..3_600_000 {
                            if let Ok(mut f) =
                                std::fs::OpenOptions::new().append(true).create(true).open(&file)
                            {
                                let _ = f.write_all(b"alive\n");
                            }
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        libc::_exit(0);
                    }
                    libc::_exit(0);
                }
                // The daemon is on its way: its parent has gone.
                let mut status = 0;
                libc::wait(&mut status);
            }
            println!("daemon left");
        }
        // `hold MIB`: takes MIB MiB of memory, touched, says so, and sleeps an hour.
        "hold" => {
            let mib = args.get(1).and_then(|m| m.parse::<usize>().ok()).unwrap_or(0);
            let hoard = vec![0xa5u8; mib << 20];
            println!("holding {} MiB", hoard.len() >> 20);
            let _ = std::io::stdout().flush();
            std::thread::sleep(Duration::from_secs(3600));
            drop(hoard);
        }
        // `nap MS`: sleeps MS milliseconds, then says so.
        "nap" => {
            let ms = args.get(1).and_then(|m| m.parse().ok()).unwrap_or(0);
            std::thread::sleep(Duration::from_millis(ms));
            println!("woke");
        }
        // The namespaces this process is in (`net:[4026531840]`...), its pid, and what /tmp
        // held (then it leaves a mark there). `ns FILE N` then appends a line to FILE and
        // waits (up to 20 s) until FILE has N lines: N tasks alive at once.
        "ns" => {
            for ns in ["user", "mnt", "pid", "net", "ipc", "uts"] {
                let link = std::fs::read_link(format!("/proc/self/ns/{ns}"));
                println!("{ns} {}", link.map(|l| l.display().to_string()).unwrap_or_else(|e| e.to_string()));
            }
            println!("own pid {}", std::process::id());
            println!("tmp [{}]", listing("/tmp").join(","));
            let _ = std::fs::write("/tmp/mark", b"");
            if let (Some(file), Some(n)) = (args.get(1), args.get(2).and_then(|n| n.parse::<usize>().ok())) {
                if let Ok(mut f) = std::fs::OpenOptions::new().append(true).create(true).open(file) {
                    let _ = f.write_all(b"here\n");
                }
                for _ in 0..2000 {
                    let lines = std::fs::read_to_string(file).map(|t| t.lines().count()).unwrap_or(0);
                    if lines >= n {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        // Starting a program the jail did not allow, from bytes it wrote: `exec memfd` runs a
        // copy of /usr/bin/echo from an anonymous memory file, `exec DIR` from a copy in DIR
        // (the scratch /tmp, a writable mount). A started copy prints EXECUTED.
        // The copy is of this program: the jail holds no other.
        "exec" => {
            // Its own bytes: the only program the jail holds.
            let bytes = match std::fs::read("/proc/self/exe") {
                Ok(b) => b,
                Err(e) => return report("read /proc/self/exe", Err(e)),
            };
            let fd = if arg(1) == "memfd" {
                // SAFETY: a constant, NUL-terminated name and no flags.
                let fd = unsafe { libc::memfd_create(c"copy".as_ptr(), 0) };
                if fd < 0 {
                    return report("memfd_create", Err(last()));
                }
                // SAFETY: fd is the memfd just created; bytes is a valid buffer.
                let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
                if n < 0 {
                    return report("write the copy", Err(last()));
                }
                fd
            } else {
                let path = format!("{}/copy", arg(1));
                use std::os::unix::fs::PermissionsExt;
                if let Err(e) = std::fs::write(&path, &bytes)
                    .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)))
                {
                    return report("write the copy", Err(e));
                }
                // SAFETY: a valid, NUL-terminated path.
                let fd = unsafe { libc::open(cstr(&path).as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
                if fd < 0 {
                    return report("open the copy", Err(last()));
                }
                fd
            };
            let argv = [cstr("attack"), cstr("say"), cstr("EXECUTED")];
            let argv: Vec<*const libc::c_char> =
                argv.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
            let envp: [*const libc::c_char; 1] = [std::ptr::null()];
            // SAFETY: fd is open; argv and envp are NULL-terminated arrays of valid strings.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_execveat,
                    fd,
                    c"".as_ptr(),
                    argv.as_ptr(),
                    envp.as_ptr(),
                    libc::AT_EMPTY_PATH,
                )
            };
            report("execveat the copy", syscall_result(rc));
        }
        // A denied call made through the x32 ABI (its number with bit 30 set), which a filter
        // keyed by x86_64 numbers would not recognise: unshare(CLONE_NEWUSER).
        "x32" => {
            println!("trying");
            let _ = std::io::stdout().flush();
            // SAFETY: a raw system call with a constant flag argument; failure is reported.
            let rc = unsafe { libc::syscall(libc::SYS_unshare | 0x4000_0000, libc::CLONE_NEWUSER) };
            report("x32 unshare", syscall_result(rc));
        }
        // S9: debugging the parent or a sibling.
        "ptrace" => {
            // SAFETY: each call has constant, valid arguments; failures are reported.
            let ppid = unsafe { libc::getppid() };
            report("ptrace attach parent", syscall_result(unsafe { libc::ptrace(libc::PTRACE_ATTACH, ppid, 0, 0) }));
            report("ptrace traceme", syscall_result(unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) }));
            let mut buf = [0u8; 8];
            let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
            let remote = libc::iovec { iov_base: 0x400000 as *mut libc::c_void, iov_len: buf.len() };
            report(
                "process_vm_readv parent",
                syscall_result(unsafe { libc::process_vm_readv(ppid, &local, 1, &remote, 1, 0) } as libc::c_long),
            );
        }
        // S10: signals outward.
        "kill" => {
            // SAFETY: kill with constant arguments; failures are reported.
            let ppid = unsafe { libc::getppid() };
            report(&format!("kill parent ({ppid})"), syscall_result(unsafe { libc::kill(ppid, libc::SIGKILL) } as libc::c_long));
            report("kill -1", syscall_result(unsafe { libc::kill(-1, libc::SIGKILL) } as libc::c_long));
            let target: i32 = arg(1).parse().unwrap_or(0);
            if target > 0 {
                report(&format!("kill host pid {target}"), syscall_result(unsafe { libc::kill(target, libc::SIGKILL) } as libc::c_long));
            }
            println!("still alive");
        }
        // S11: /proc.
        "proc" => {
            report("open /proc/self/exe for writing", std::fs::OpenOptions::new().write(true).open("/proc/self/exe").map(|_| "opened".into()));
            report("read /proc/1/environ", std::fs::read("/proc/1/environ").map(|b| format!("{} bytes", b.len())));
            report("open /proc/1/exe", std::fs::File::open("/proc/1/exe").map(|_| "opened".into()));
            report(
                "list /proc",
                std::fs::read_dir("/proc").map(|rd| {
                    let mut pids: Vec<String> = rd
                        .flatten()
                        .filter_map(|e| e.file_name().to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())).map(String::from))
                        .collect();
                    pids.sort();
                    pids.join(",")
                }),
            );
        }
        // S12: terminal injection.
        "tty" => {
            let c = b'x';
            // SAFETY: ioctl with a valid pointer to one byte; failures are reported.
            report("TIOCSTI on stdin", syscall_result(unsafe { libc::ioctl(0, libc::TIOCSTI, &c) } as libc::c_long));
            // TIOCL_GETSHIFTSTATE (6): harmless on a real console, refused here.
            let mut sub = [6u8, 0];
            report("TIOCLINUX on stdin", syscall_result(unsafe { libc::ioctl(0, libc::TIOCLINUX, sub.as_mut_ptr()) } as libc::c_long));
            report("open /dev/tty", std::fs::File::open("/dev/tty").map(|_| "opened".into()));
        }
        // S13: privilege.
        "privs" => {
            // SAFETY: each call has constant or valid arguments; failures are reported.
            report("unshare user namespace", syscall_result(unsafe { libc::unshare(libc::CLONE_NEWUSER) } as libc::c_long));
            report("unshare mount namespace", syscall_result(unsafe { libc::unshare(libc::CLONE_NEWNS) } as libc::c_long));
            let (none, tmp, tmpfs) = (cstr("none"), cstr("/tmp"), cstr("tmpfs"));
            report("mount", syscall_result(unsafe { libc::mount(none.as_ptr(), tmp.as_ptr(), tmpfs.as_ptr(), 0, std::ptr::null()) } as libc::c_long));
            report("bpf", syscall_result(unsafe { libc::syscall(libc::SYS_bpf, 0, 0, 0) }));
            report("io_uring_setup", syscall_result(unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, 0) }));
            report("keyctl", syscall_result(unsafe { libc::syscall(libc::SYS_keyctl, 0, 0, 0) }));
            report("perf_event_open", syscall_result(unsafe { libc::syscall(libc::SYS_perf_event_open, 0, 0, -1, -1, 0) }));
            report("userfaultfd", syscall_result(unsafe { libc::syscall(libc::SYS_userfaultfd, 0) }));
            report("setuid 0", syscall_result(unsafe { libc::setuid(0) } as libc::c_long));
            let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
            println!("no_new_privs {nnp}");
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            for key in ["CapEff:", "CapPrm:", "CapBnd:", "CapAmb:", "Uid:"] {
                if let Some(l) = status.lines().find(|l| l.starts_with(key)) {
                    println!("{}", l.split_whitespace().collect::<Vec<_>>().join(" "));
                }
            }
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            // The mount the loader (argument 1) is on: the jail's own binds.
            let loader = cstr(&arg(1));
            if unsafe { libc::statvfs(loader.as_ptr(), &mut st) } == 0 {
                println!("loader nosuid {}", st.f_flag & libc::ST_NOSUID != 0);
            }
        }
        // S14: inherited descriptors and environment.
        "fds" => {
            println!("fds {}", listing("/proc/self/fd").join(","));
            for (k, v) in std::env::vars() {
                println!("env {k}={v}");
            }
        }
        // Where am I: hostname, uid, root contents.
        "whoami" => {
            let mut host = String::new();
            let _ = std::fs::File::open("/proc/sys/kernel/hostname").and_then(|mut f| f.read_to_string(&mut host));
            println!("hostname {}", host.trim());
            // SAFETY: getuid cannot fail.
            println!("uid {}", unsafe { libc::getuid() });
            println!("pid {}", std::process::id());
            println!("root {}", listing("/").join(","));
        }
        // How the filter answers: a call it does not know (lsm_list_modules, 461, which
        // the kernel has since 6.8), one it denies (unshare of nothing), one it allows.
        "answers" => {
            // SAFETY: raw system calls with null or constant arguments; failures are reported.
            report("lsm_list_modules", syscall_result(unsafe { libc::syscall(461, 0, 0, 0) }));
            report("unshare nothing", syscall_result(unsafe { libc::syscall(libc::SYS_unshare, 0) }));
            report("getpid", syscall_result(unsafe { libc::syscall(libc::SYS_getpid) }));
        }
        // What a started copy says.
        "say" => println!("{}", args[1..].join(" ")),
        // Starting another program by every route there is: `spawn PROGRAM ARGS...` tries
        // execve of the path, execveat of the path (with AT_EMPTY_PATH, which a path
        // ignores), and the ELF interpreter (`loader LOADER`) run through every descriptor
        // number 3..=128, as the jail starts the tool. Each route that starts the program
        // prints its output; each that fails says why.
        "spawn" => {
            let program = arg(1);
            let argv_s: Vec<CString> = args[1..].iter().map(|a| cstr(a)).collect();
            let argv: Vec<*const libc::c_char> =
                argv_s.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
            let envp: [*const libc::c_char; 1] = [std::ptr::null()];
            let path = cstr(&program);
            // SAFETY: argv and envp are NULL-terminated arrays of valid strings; on success
            // the call does not return.
            let rc = unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            report("execve", syscall_result(rc as libc::c_long));
            // SAFETY: as above.
            let rc = unsafe {
                libc::syscall(libc::SYS_execveat, libc::AT_FDCWD, path.as_ptr(), argv.as_ptr(), envp.as_ptr(), libc::AT_EMPTY_PATH)
            };
            report("execveat path", syscall_result(rc));
            // The same through every descriptor number a filter might let through (a path
            // that is absolute ignores the descriptor).
            let mut errors = std::collections::BTreeSet::new();
            for n in 3..=128 {
                // SAFETY: as above.
                let rc = unsafe {
                    libc::syscall(libc::SYS_execveat, n, path.as_ptr(), argv.as_ptr(), envp.as_ptr(), libc::AT_EMPTY_PATH)
                };
                if let Err(e) = syscall_result(rc) {
                    errors.insert(e.raw_os_error().map(errno_name).unwrap_or_default());
                }
            }
            println!("denied execveat path by any descriptor: {}", errors.into_iter().collect::<Vec<_>>().join(","));
        }
        // Everything in the root but /proc and /dev: `file PATH`, `link PATH`, `dir PATH`.
        "tree" => {
            fn walk(dir: &std::path::Path) {
                let Ok(rd) = std::fs::read_dir(dir) else { return };
                let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
                entries.sort();
                for p in entries {
                    if p == std::path::Path::new("/proc") || p == std::path::Path::new("/dev") {
                        continue;
                    }
                    match std::fs::symlink_metadata(&p) {
                        Ok(m) if m.file_type().is_symlink() => println!("link {}", p.display()),
                        Ok(m) if m.is_dir() => {
                            println!("dir {}", p.display());
                            walk(&p);
                        }
                        Ok(_) => println!("file {}", p.display()),
                        Err(e) => println!("error {}: {e}", p.display()),
                    }
                }
            }
            walk(std::path::Path::new("/"));
        }
        "loader" => {
            // loader LOADER PROGRAM ARGS...: the loader asked to run PROGRAM.
            let loader = cstr(&arg(1));
            let argv_s: Vec<CString> = args[1..].iter().map(|a| cstr(a)).collect();
            let argv: Vec<*const libc::c_char> =
                argv_s.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
            let envp: [*const libc::c_char; 1] = [std::ptr::null()];
            // SAFETY: a valid, NUL-terminated path.
            let fd = unsafe { libc::open(loader.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                return report("open the loader", Err(last()));
            }
            let mut errors = std::collections::BTreeSet::new();
            for n in 3..=128 {
                // SAFETY: dup2 onto a descriptor number this program does not otherwise use.
                if n != fd && unsafe { libc::dup2(fd, n) } < 0 {
                    continue;
                }
                // SAFETY: as for execve above.
                let rc = unsafe {
                    libc::syscall(libc::SYS_execveat, n, c"".as_ptr(), argv.as_ptr(), envp.as_ptr(), libc::AT_EMPTY_PATH)
                };
                if let Err(e) = syscall_result(rc) {
                    errors.insert(e.raw_os_error().map(errno_name).unwrap_or_default());
                }
            }
            println!("denied loader: {}", errors.into_iter().collect::<Vec<_>>().join(","));
        }
        other => {
            eprintln!("agenix-attack: unknown attack {other:?}");
            std::process::exit(2);
        }
    }
}
