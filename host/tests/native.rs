//! The native jail against docs/test-matrix.md rows S1–S16: a hostile program built by the test
//! suite (host/attack) and real tools, in real namespaces. A row that cannot run on this kernel
//! is skipped with the reason printed.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "tests")]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agenix_host::Grant;
use agenix_host::native::{
    Allowlist, AllowlistError, Helper, NativeConfig, NativeHost, ToolEntry, jail, probe,
};
use agenix_host::{Finished, NativeTask};
use agenix_proto::{Access, Limits, Outcome, ToolName};
use agenix_test_programs as programs;
use bytes::Bytes;

const MIB: u64 = 1 << 20;

struct Jail {
    host: NativeHost,
    dir: tempfile::TempDir,
}

fn helper() -> Helper {
    Helper {
        program: env!("CARGO_BIN_EXE_agenix-jail").into(),
        args: vec![jail::HELPER_ARG.into()],
    }
}

fn tool(name: &str) -> ToolName {
    name.parse().unwrap()
}

fn limits() -> Limits {
    Limits {
        timeout_ms: 20_000,
        memory_bytes: 256 * MIB,
        output_bytes: MIB,
        pids: 64,
        file_bytes: 64 * MIB,
        ..Limits::DEFAULT
    }
}

async fn jail_with(disabled: &[&str], degraded: bool) -> Jail {
    let dir = tempfile::tempdir().unwrap();
    // The sandbox runs as an unprivileged user: let it into the test's directories.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut allow = Allowlist::new();
    allow.allow(tool("attack"), ToolEntry::new(programs::NATIVE_ATTACK)).unwrap();
    for t in ["sort", "grep", "uniq", "cut", "cat", "true", "find"] {
        allow.allow(tool(t), ToolEntry::new(format!("/usr/bin/{t}"))).unwrap();
    }
    let host = NativeHost::new(NativeConfig {
        helper: helper(),
        allowlist: allow,
        danger_degraded: degraded,
        scratch_dir: dir.path().join("scratch"),
        disabled: disabled.iter().map(|s| s.to_string()).collect(),
    })
    .await
    .unwrap();
    Jail { host, dir }
}

/// Why this kernel gives the jail no namespaces, if it does not (for rows that turn other
/// features off).
fn without_namespaces(j: &Jail) -> Option<String> {
    use probe::names::{IPC_UTS_NS, MOUNT_NS, NET_NS, PID_NS, USER_NS};
    let missing: Vec<&str> = [USER_NS, MOUNT_NS, PID_NS, NET_NS, IPC_UTS_NS]
        .into_iter()
        .filter(|n| !j.host.probe().found(n))
        .collect();
    (!missing.is_empty()).then(|| format!("no namespaces here: {missing:?}"))
}

/// The full jail, or `None` (with the reason printed) where this kernel cannot provide it.
async fn full_jail(row: &str) -> Option<Jail> {
    let j = jail_with(&[], false).await;
    if let Some(reason) = j.host.refusal() {
        programs::skip_without_jail(row, &reason);
        return None;
    }
    Some(j)
}

/// The full jail, on a host with a memory cgroup per task (else `None`, the row skipped
/// with the reason printed).
async fn jail_with_memory_cgroup(row: &str) -> Option<Jail> {
    let j = full_jail(row).await?;
    if !j.host.probe().found(probe::names::MEMORY_CGROUP) {
        programs::skip_without_jail(row, "no memory cgroup here");
        return None;
    }
    Some(j)
}

impl Jail {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn run(
        &self,
        tool_name: &str,
        args: &[&str],
        stdin: &[u8],
        grants: Vec<Grant>,
        limits: Limits,
    ) -> Finished {
        let task = NativeTask {
            program: tool(tool_name),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            stdin: Bytes::copy_from_slice(stdin),
            grants,
            limits,
            scratch: true,
        };
        self.run_task(task).await
    }

    async fn run_task(&self, task: NativeTask) -> Finished {
        tokio::time::timeout(Duration::from_secs(120), self.host.run(task)).await.unwrap().unwrap()
    }

    /// The attack tool, in a jail without a scratch `/tmp` (a plan's `"scratch": false`).
    async fn attack_without_scratch(&self, args: &[&str], limits: Limits) -> Finished {
        let task = NativeTask {
            program: tool("attack"),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            stdin: Bytes::new(),
            grants: vec![],
            limits,
            scratch: false,
        };
        self.run_task(task).await
    }

    async fn attack(&self, args: &[&str]) -> Finished {
        self.attack_with(args, vec![], limits()).await
    }

    async fn attack_with(&self, args: &[&str], grants: Vec<Grant>, limits: Limits) -> Finished {
        self.run("attack", args, b"", grants, limits).await
    }

    /// A directory on the host that the sandbox's user may write.
    fn shared_dir(&self, name: &str) -> PathBuf {
        let d = self.path(name);
        fs::create_dir_all(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        d
    }
}

fn lines(r: &Finished) -> Vec<String> {
    String::from_utf8_lossy(&r.stdout).lines().map(String::from).collect()
}

fn line<'a>(ls: &'a [String], prefix: &str) -> &'a str {
    ls.iter()
        .find(|l| l.contains(prefix))
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no line with {prefix:?} in {ls:#?}"))
}

fn assert_denied(r: &Finished) {
    let ls = lines(r);
    assert!(
        !ls.is_empty(),
        "no output; {:?}, stderr {}",
        r.outcome,
        String::from_utf8_lossy(&r.stderr)
    );
    for l in &ls {
        assert!(l.starts_with("denied "), "escape: {l}\nall: {ls:#?}");
    }
}

/// No process of the attack program is left anywhere on the host.
async fn assert_no_survivors() {
    let attack = fs::canonicalize(programs::NATIVE_ATTACK).unwrap();
    let mut survivors = vec![];
    for _ in 0..50 {
        survivors = fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| fs::read_link(e.path().join("exe")).is_ok_and(|p| p == attack))
            .map(|e| e.file_name())
            .collect();
        if survivors.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("processes survived the sandbox: {survivors:?}");
}

#[tokio::test]
async fn jail_runs_a_real_tool_like_an_unjailed_run() {
    let Some(j) = full_jail("smoke").await else { return };
    let r = j.run("sort", &[], b"b\nc\na\n", vec![], limits()).await;
    assert_eq!(r.outcome, Outcome::Exited { code: 0 });
    assert_eq!(&r.stdout[..], b"a\nb\nc\n");
    let r = j.attack(&["whoami"]).await;
    let ls = lines(&r);
    assert_eq!(line(&ls, "hostname"), "hostname agenix");
    assert_eq!(line(&ls, "uid "), "uid 1000");
    assert_eq!(line(&ls, "pid "), "pid 2", "the tool is pid 2 under its own init");
    // The root holds the jail's own directories and the tool's files: nothing of /bin or
    // /sbin, and of /usr only the library directories.
    let attack = fs::canonicalize(programs::NATIVE_ATTACK).unwrap();
    let top = attack.iter().nth(1).unwrap().to_str().unwrap();
    let root = line(&ls, "root ").strip_prefix("root ").unwrap();
    for dir in root.split(',') {
        assert!(
            ["dev", "etc", "proc", "tmp", "usr", "lib", "lib64", top].contains(&dir),
            "/{dir} in the root: {root}"
        );
    }
}

#[tokio::test]
async fn s01_writes_outside_the_workdir_are_denied() {
    let Some(j) = full_jail("S1").await else { return };
    let outside = j.path("outside.txt");
    let r = j
        .attack(&[
            "write",
            "/etc/passwd",
            "/etc/new",
            "/usr/new",
            "/root/x",
            "/tmp/../etc/x",
            "/x",
            outside.to_str().unwrap(),
        ])
        .await;
    assert_denied(&r);
    assert!(!outside.exists());
    let ok = j.attack(&["write", "/tmp/fine"]).await;
    assert_eq!(lines(&ok), ["ok write /tmp/fine: written"], "the private /tmp is writable");
}

#[tokio::test]
async fn s01_a_task_without_scratch_has_no_writable_tmp() {
    let Some(j) = full_jail("S1 (no scratch)").await else { return };
    let r = j.attack_without_scratch(&["write", "/tmp/fine", "/tmp/../tmp/x"], limits()).await;
    assert_denied(&r);
    // It still runs where it starts, reading what its jail holds.
    let r = j.attack_without_scratch(&["read", "/etc/passwd"], limits()).await;
    assert!(lines(&r).iter().all(|l| l.starts_with("ok read")), "{:?}", lines(&r));
}

#[tokio::test]
async fn s02_secrets_are_not_visible() {
    let Some(j) = full_jail("S2").await else { return };
    let key = j.path("worker.key");
    fs::write(&key, "PRIVATE KEY").unwrap();
    let r = j
        .attack(&[
            "read",
            "/etc/shadow",
            "/root/.ssh/id_rsa",
            key.to_str().unwrap(),
            "/proc/1/root/etc/shadow",
        ])
        .await;
    assert_denied(&r);
    // /etc holds only the sandbox's own identity.
    let r = j.run("cat", &["/etc/passwd"], b"", vec![], limits()).await;
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "agenix:x:1000:1000:agenix:/tmp:/usr/sbin/nologin\n"
    );
}

#[tokio::test]
async fn s03_links_and_renames_lead_nowhere_outside() {
    let Some(j) = full_jail("S3").await else { return };
    let work = j.shared_dir("work");
    let grant =
        vec![Grant { host: work.clone(), guest: "/data".into(), access: Access::ReadWrite }];
    let host_passwd = fs::read_to_string("/etc/passwd").unwrap();
    let r = j.attack_with(&["links", "/data", "/etc/passwd"], grant, limits()).await;
    assert_eq!(r.outcome, Outcome::Exited { code: 0 }, "{}", String::from_utf8_lossy(&r.stderr));
    let ls = lines(&r);
    // A symlink may be made, but it resolves inside the sandbox's own root.
    let through = line(&ls, "read through symlink");
    assert!(!through.contains("root:x:0:0"), "{through}");
    assert!(through.contains("agenix:x:1000"), "{through}");
    for what in ["hardlink in", "rename out", "hardlink out"] {
        assert!(line(&ls, what).starts_with("denied"), "{ls:#?}");
    }
    assert_eq!(fs::read_to_string("/etc/passwd").unwrap(), host_passwd);
    assert!(!work.join("hard").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s04_network_is_unreachable() {
    let Some(j) = full_jail("S4").await else { return };
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port().to_string();
    let sock = j.path("worker.sock");
    let _unix = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o777)).unwrap();
    let _abstract = {
        use std::os::linux::net::SocketAddrExt;
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(b"agenix-attack-abstract").unwrap();
        std::os::unix::net::UnixListener::bind_addr(&addr).unwrap()
    };
    let r = j.attack(&["net", &port, sock.to_str().unwrap()]).await;
    assert_denied(&r);
    tcp.set_nonblocking(true).unwrap();
    assert!(tcp.accept().is_err(), "nothing reached the listener");
}

#[tokio::test]
async fn s05_fork_bomb_is_contained() {
    let Some(j) = full_jail("S5").await else { return };
    let r = j
        .attack_with(&["forkbomb"], vec![], Limits { pids: 16, timeout_ms: 1500, ..limits() })
        .await;
    assert_eq!(r.outcome, Outcome::TimedOut);
    assert!(String::from_utf8_lossy(&r.stdout).contains("fork refused"), "the pids limit held");
    assert_no_survivors().await;
    // The host still starts processes.
    assert!(std::process::Command::new("/usr/bin/true").status().unwrap().success());
}

/// The same jail with cgroups turned off: memory and processes are limited by rlimits.
async fn rlimit_jail(row: &str) -> Option<Jail> {
    let j = jail_with(&[probe::names::MEMORY_CGROUP, probe::names::PIDS_CGROUP], false).await;
    if let Some(reason) = j.host.refusal() {
        programs::skip_without_jail(row, &reason);
        return None;
    }
    Some(j)
}

#[tokio::test]
async fn s05_fork_bomb_is_contained_without_cgroups_one_process_per_task() {
    let Some(j) = rlimit_jail("S5 (rlimits)").await else { return };
    let r = j
        .attack_with(&["forkbomb"], vec![], Limits { pids: 16, timeout_ms: 1500, ..limits() })
        .await;
    assert_eq!(r.outcome, Outcome::TimedOut);
    // Without a memory cgroup a task is one process (RLIMIT_AS bounds one address space):
    // not a single fork succeeds.
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.contains("fork refused after 0"), "{out}");
    assert_no_survivors().await;
}

#[tokio::test]
async fn s06_memory_bomb_is_memory_exceeded_under_rlimit_as_without_cgroups() {
    let Some(j) = rlimit_jail("S6 (rlimits)").await else { return };
    let small = Limits { memory_bytes: 64 * MIB, file_bytes: 16 * MIB, ..limits() };
    let r = j.attack_with(&["membomb"], vec![], small).await;
    assert_eq!(r.outcome, Outcome::MemoryExceeded, "stdout {:?}", lines(&r));
}

#[tokio::test]
async fn s06_memory_bomb_is_reported_as_memory_exceeded() {
    let Some(j) = full_jail("S6").await else { return };
    let r =
        j.attack_with(&["membomb"], vec![], Limits { memory_bytes: 64 * MIB, ..limits() }).await;
    assert_eq!(r.outcome, Outcome::MemoryExceeded, "stdout {:?}", lines(&r));
}

#[tokio::test]
async fn s07_huge_file_and_output_flood_are_capped() {
    let Some(j) = full_jail("S7").await else { return };
    let r = j
        .attack_with(&["bigfile", "/tmp"], vec![], Limits { file_bytes: 8 * MIB, ..limits() })
        .await;
    assert_eq!(r.outcome, Outcome::OutputExceeded { stream: "file".into() });
    let r = j.attack(&["flood"]).await;
    assert_eq!(r.outcome, Outcome::OutputExceeded { stream: "stdout".into() });
    assert_eq!(r.stdout.len() as u64, MIB);
    assert_no_survivors().await;
}

#[tokio::test]
async fn s08_spinners_sleepers_and_daemons_die_at_the_deadline() {
    let Some(j) = full_jail("S8").await else { return };
    for attack in ["spin", "sleep", "daemon"] {
        let r = j.attack_with(&[attack], vec![], Limits { timeout_ms: 700, ..limits() }).await;
        assert_eq!(r.outcome, Outcome::TimedOut, "{attack}");
    }
    assert_no_survivors().await;
}

#[tokio::test]
async fn s09_ptrace_and_process_vm_are_refused() {
    let Some(j) = full_jail("S9").await else { return };
    let r = j.attack(&["ptrace"]).await;
    assert_denied(&r);
    for l in lines(&r) {
        assert!(l.ends_with("EPERM"), "{l}");
    }
}

#[tokio::test]
async fn s10_signals_do_not_leave_the_sandbox() {
    let Some(j) = full_jail("S10").await else { return };
    let mut bystander = std::process::Command::new("/usr/bin/sleep").arg("60").spawn().unwrap();
    let r = j.attack(&["kill", &bystander.id().to_string()]).await;
    let ls = lines(&r);
    assert!(line(&ls, "kill host pid").starts_with("denied"), "{ls:#?}");
    assert!(bystander.try_wait().unwrap().is_none(), "a host process was killed");
    bystander.kill().unwrap();
    let _ = bystander.wait();
}

#[tokio::test]
async fn s11_proc_self_exe_and_init_environ_are_protected() {
    let Some(j) = full_jail("S11").await else { return };
    let r = j.attack(&["proc"]).await;
    let ls = lines(&r);
    for what in ["open /proc/self/exe for writing", "read /proc/1/environ", "open /proc/1/exe"] {
        assert!(line(&ls, what).starts_with("denied"), "{ls:#?}");
    }
    assert_eq!(line(&ls, "list /proc"), "ok list /proc: 1,2", "only the sandbox's own processes");
}

#[tokio::test]
async fn s12_terminal_injection_is_refused() {
    let Some(j) = full_jail("S12").await else { return };
    let r = j.attack(&["tty"]).await;
    assert_denied(&r);
    let ls = lines(&r);
    assert!(line(&ls, "TIOCSTI").ends_with("EPERM"), "{ls:#?}");
    assert!(line(&ls, "TIOCLINUX").ends_with("EPERM"), "{ls:#?}");
}

#[tokio::test]
async fn s13_no_privilege_is_gained() {
    let Some(j) = full_jail("S13").await else { return };
    let r = j.attack(&["privs", LOADER]).await;
    let ls = lines(&r);
    for what in [
        "unshare user",
        "unshare mount",
        "mount",
        "bpf",
        "io_uring_setup",
        "keyctl",
        "perf_event_open",
        "userfaultfd",
        "setuid 0",
    ] {
        assert!(line(&ls, what).starts_with("denied"), "{what}: {ls:#?}");
    }
    assert_eq!(line(&ls, "no_new_privs"), "no_new_privs 1");
    for cap in ["CapEff:", "CapPrm:", "CapBnd:", "CapAmb:"] {
        assert_eq!(line(&ls, cap), format!("{cap} 0000000000000000"));
    }
    assert_eq!(line(&ls, "loader nosuid"), "loader nosuid true");
}

#[tokio::test]
async fn s14_no_inherited_descriptors_or_environment() {
    let Some(j) = full_jail("S14").await else { return };
    // A descriptor the worker holds open without close-on-exec.
    let secret = j.path("token");
    fs::write(&secret, "TOKEN").unwrap();
    let path = std::ffi::CString::new(secret.to_str().unwrap()).unwrap();
    #[allow(unsafe_code, reason = "an fd deliberately opened without O_CLOEXEC")]
    // SAFETY: a valid NUL-terminated path; the descriptor is closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
    assert!(fd >= 0);
    let r = j.attack(&["fds"]).await;
    #[allow(unsafe_code, reason = "closing the descriptor opened above")]
    // SAFETY: fd is ours and open.
    unsafe {
        libc::close(fd)
    };
    let ls = lines(&r);
    assert_eq!(line(&ls, "fds "), "fds 0,1,2,3", "stdio plus the directory being listed");
    let mut env: Vec<&String> = ls.iter().filter(|l| l.starts_with("env ")).collect();
    env.sort();
    assert_eq!(env, ["env LANG=C.UTF-8", "env PATH=/usr/local/bin:/usr/bin:/bin"]);
}

#[tokio::test]
async fn s15_missing_features_fail_closed_unless_degraded() {
    let j = jail_with(&[probe::names::SECCOMP], false).await;
    let r = j.run("true", &[], b"", vec![], limits()).await;
    let Outcome::Refused { reason } = &r.outcome else { panic!("{:?}", r.outcome) };
    assert!(reason.contains("seccomp filter (disabled by configuration)"), "{reason}");
    // A helper that cannot even start: every required check is missing.
    let dir = tempfile::tempdir().unwrap();
    let broken = NativeHost::new(NativeConfig {
        helper: Helper { program: "/nonexistent/agenix".into(), args: vec![] },
        allowlist: Allowlist::new(),
        danger_degraded: false,
        scratch_dir: dir.path().into(),
        disabled: vec![],
    })
    .await
    .unwrap();
    assert!(broken.refusal().is_some());
    // Degraded mode runs anyway (and logs it on every task).
    let j = jail_with(&[probe::names::SECCOMP], true).await;
    if j.host.probe().found(probe::names::USER_NS) {
        let r = j.run("sort", &[], b"2\n1\n", vec![], limits()).await;
        assert_eq!(r.outcome, Outcome::Exited { code: 0 });
        assert_eq!(&r.stdout[..], b"1\n2\n");
    }
}

#[tokio::test]
async fn s16_an_allowlisted_tool_cannot_start_another_program() {
    let Some(j) = full_jail("S16").await else { return };
    // Tools that start programs (find -exec, sort --compress-program) start nothing: the
    // exec is refused.
    for (program, what) in [
        (vec!["/usr/bin/id"], "a binary from /usr"),
        (vec!["/bin/sh", "-c", "id"], "a shell"),
        (vec![LOADER, "/usr/bin/id"], "the loader running a binary"),
    ] {
        let mut args = vec!["/tmp", "-maxdepth", "0", "-exec"];
        args.extend(program);
        args.push(";");
        let r = j.run("find", &args, b"", vec![], limits()).await;
        let (out, err) = (String::from_utf8_lossy(&r.stdout), String::from_utf8_lossy(&r.stderr));
        assert!(!out.contains("uid="), "find ran {what}: {out}");
        // find itself ran, and was refused the exec.
        assert!(matches!(r.outcome, Outcome::Exited { .. }), "{what}: {:?} {err}", r.outcome);
        assert!(err.contains("Operation not permitted"), "{what}: {err}");
    }
}

#[tokio::test]
async fn s16_only_allowlisted_tools_run_and_never_a_shell() {
    let j = jail_with(&[], false).await;
    let r = j.run("awk", &[], b"", vec![], limits()).await;
    assert_eq!(
        r.outcome,
        Outcome::Refused { reason: "tool \"awk\" is not in this worker's allowlist".into() }
    );
    let mut allow = Allowlist::new();
    for (name, path) in [
        ("sh", "/bin/sh"),
        ("bash", "/bin/bash"),
        ("env", "/usr/bin/env"),
        ("shell", "/bin/sh"),
        ("xargs", "/usr/bin/xargs"),
        ("nohup", "/usr/bin/nohup"),
        ("timeout", "/usr/bin/timeout"),
        ("perl", "/usr/bin/perl"),
        ("py", "/usr/bin/python3"),
        ("loader", LOADER),
    ] {
        if !Path::new(path).exists() {
            continue;
        }
        let err = allow.allow(tool(name), ToolEntry::new(path)).unwrap_err();
        assert!(matches!(err, AllowlistError::Shell { .. }), "{name}: {err}");
    }
    // Nor this very program (a worker embeds the jail helper).
    let me = std::env::current_exe().unwrap();
    let err = allow.allow(tool("me"), ToolEntry::new(me)).unwrap_err();
    assert!(err.to_string().contains("this program itself"), "{err}");
    let err = allow.allow(tool("grep"), ToolEntry::new("bin/grep")).unwrap_err();
    assert!(matches!(err, AllowlistError::Relative { .. }));
    assert!("/bin/sh".parse::<ToolName>().is_err(), "a path is never a tool name");
    // A pinned binary that does not match its pin is refused before it runs.
    let mut pinned = Allowlist::new();
    pinned
        .allow(
            tool("sort"),
            ToolEntry {
                sha256: Some(agenix_proto::Digest::of(b"another binary")),
                ..ToolEntry::new("/usr/bin/sort")
            },
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = NativeHost::new(NativeConfig {
        helper: helper(),
        allowlist: pinned,
        danger_degraded: false,
        scratch_dir: dir.path().into(),
        disabled: vec![],
    })
    .await
    .unwrap();
    if host.refusal().is_none() {
        let task = NativeTask {
            program: tool("sort"),
            args: vec![],
            env: vec![],
            stdin: Bytes::new(),
            grants: vec![],
            limits: limits(),
            scratch: true,
        };
        let r = host.run(task).await.unwrap();
        let Outcome::Refused { reason } = &r.outcome else { panic!("{:?}", r.outcome) };
        assert!(reason.contains("not the pinned"), "{reason}");
    }
}

/// A tool cannot run bytes it wrote: not from an anonymous memory file (memfd_create is
/// refused), and not from the scratch /tmp or a writable mount (both are noexec) — the
/// latter shown with Landlock and seccomp off, so the mount flags alone must stop it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s16_a_tool_cannot_execute_what_it_wrote() {
    let Some(j) = full_jail("S16").await else { return };
    let r = j.attack(&["exec", "memfd"]).await;
    let ls = lines(&r);
    assert!(!ls.iter().any(|l| l.contains("EXECUTED")), "a memfd copy ran: {ls:?}");
    assert_eq!(line(&ls, "memfd_create"), "denied memfd_create: EPERM");

    let j = jail_with(&[probe::names::LANDLOCK, probe::names::SECCOMP], true).await;
    if let Some(reason) = without_namespaces(&j) {
        programs::skip_without_jail("S16 (noexec)", &reason);
        return;
    }
    let work = j.shared_dir("work");
    let grants =
        vec![Grant { host: work.clone(), guest: "/data".into(), access: Access::ReadWrite }];
    for dir in ["/tmp", "/data"] {
        let r = j.attack_with(&["exec", dir], grants.clone(), limits()).await;
        let ls = lines(&r);
        assert!(!ls.iter().any(|l| l.contains("EXECUTED")), "a copy in {dir} ran: {ls:?}");
        assert_eq!(line(&ls, "execveat"), "denied execveat the copy: EACCES", "{dir}");
    }
}

/// A denied system call made through the x32 ABI (number | 0x40000000) kills the tool with
/// SIGSYS, whether or not the kernel offers x32: a filter keyed by x86_64 numbers alone
/// would let it through on a kernel that does.
#[cfg(target_arch = "x86_64")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s16_a_call_through_the_x32_abi_kills_the_tool() {
    let Some(j) = full_jail("S16").await else { return };
    let r = j.attack(&["x32"]).await;
    let ls = lines(&r);
    assert_eq!(ls, ["trying"], "nothing after the call: {ls:?}");
    assert_eq!(r.outcome, Outcome::Killed { signal: libc::SIGSYS }, "{ls:?}");
}

/// The loader interpreting the attack program (it names it in PT_INTERP).
#[cfg(target_arch = "x86_64")]
const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";
#[cfg(target_arch = "aarch64")]
const LOADER: &str = "/lib/ld-linux-aarch64.so.1";

/// The root holds the tool, its loader and libraries, the data named for it, and the
/// jail's own files: every file a walk of it finds is one of those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s16_the_root_holds_only_the_tool_its_libraries_and_data() {
    let Some(j) = full_jail("S16").await else { return };
    let r = j.attack(&["tree"]).await;
    let ls = lines(&r);
    let system = j.host.allowlist().system_files(&tool("attack")).unwrap();
    let binds: Vec<(PathBuf, bool)> = system.binds().map(|(p, x)| (p.to_path_buf(), x)).collect();
    let attack = fs::canonicalize(programs::NATIVE_ATTACK).unwrap();
    assert!(binds.contains(&(attack.clone(), true)), "{binds:?}");
    assert!(ls.contains(&format!("file {}", attack.display())), "{ls:#?}");
    let own = ["/etc/passwd", "/etc/group", "/etc/hostname"];
    for l in &ls {
        let Some(file) = l.strip_prefix("file ") else {
            assert!(l.starts_with("dir ") || l.starts_with("link "), "{l}");
            continue;
        };
        let ok = own.contains(&file) || binds.iter().any(|(b, _)| Path::new(file).starts_with(b));
        assert!(ok, "{file} is in the jail but is neither the tool's nor the jail's");
    }
    for absent in ["/usr/bin/id", "/bin/sh", "/usr/bin/sort", "/etc/shadow", "/etc/ld.so.conf"] {
        assert!(!ls.iter().any(|l| l.ends_with(absent)), "{absent} is in the jail");
    }
}

/// "Only the allowlisted tool runs" holds by construction: with Landlock off, and then with
/// seccomp off too, no route starts a second program — a launcher's execve, execveat of a
/// path through any descriptor, the dynamic loader run through any descriptor — because
/// the root holds no other program.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s16_no_second_program_starts_by_any_route_even_without_landlock() {
    use probe::names::{LANDLOCK, SECCOMP};
    for disabled in [&[LANDLOCK][..], &[LANDLOCK, SECCOMP][..]] {
        let j = jail_with(disabled, true).await;
        if let Some(reason) = without_namespaces(&j) {
            programs::skip_without_jail("S16 (by construction)", &reason);
            return;
        }
        let find = ["/tmp", "-maxdepth", "0", "-exec", "/usr/bin/id", ";"];
        let r = j.run("find", &find, b"", vec![], limits()).await;
        let out = String::from_utf8_lossy(&r.stdout);
        assert!(!out.contains("uid="), "{disabled:?}: find ran id: {out}");
        assert!(
            matches!(r.outcome, Outcome::Exited { .. }),
            "{disabled:?}: {:?} {}",
            r.outcome,
            String::from_utf8_lossy(&r.stderr)
        );
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(
            err.contains("Operation not permitted") || err.contains("No such file"),
            "{disabled:?}: {err}"
        );
        for attack in [
            vec!["spawn", "/usr/bin/id"],
            vec!["loader", LOADER, "/usr/bin/id"],
            vec!["loader", LOADER, "/bin/sh", "-c", "id"],
        ] {
            let r = j.attack(&attack).await;
            let (out, err) =
                (String::from_utf8_lossy(&r.stdout), String::from_utf8_lossy(&r.stderr));
            assert!(!out.contains("uid="), "{disabled:?} {attack:?} ran id: {out}");
            // Each route that was tried either failed or reached a loader that found nothing.
            for l in out.lines() {
                assert!(l.starts_with("denied "), "{disabled:?} {attack:?}: {l}");
            }
            if out.is_empty() {
                assert!(err.contains("No such file"), "{disabled:?} {attack:?}: {err}");
            }
        }
    }
}

/// The filter's answers: a call it does not know gets ENOSYS (as from an older kernel, so
/// libc falls back), a dangerous one EPERM, an ordinary one runs; without the filter the
/// unknown call reaches the kernel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s16_the_filter_answers_enosys_to_the_unknown_and_eperm_to_the_dangerous() {
    let Some(j) = full_jail("S16").await else { return };
    let ls = lines(&j.attack(&["answers"]).await);
    assert_eq!(line(&ls, "lsm_list_modules"), "denied lsm_list_modules: ENOSYS", "{ls:?}");
    assert_eq!(line(&ls, "unshare nothing"), "denied unshare nothing: EPERM");
    assert!(line(&ls, "getpid").starts_with("ok getpid"), "{ls:?}");
    let j = jail_with(&[probe::names::SECCOMP], true).await;
    let ls = lines(&j.attack(&["answers"]).await);
    assert!(!line(&ls, "lsm_list_modules").ends_with("ENOSYS"), "{ls:?}");
}

/// The jail's pid 1 is a process of its own name, not the worker's binary, and the mount
/// table shows nothing of the worker: not its binary, its scratch directory or the jail's
/// root on the host. System files appear where they are on the host, and nowhere else.
/// (A directory the operator grants appears with the host path of its bind source: the
/// kernel reports that of every bind mount.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s11_pid_1_and_the_mount_table_show_nothing_of_the_worker() {
    let Some(j) = full_jail("S11").await else { return };
    let work = j.shared_dir("work");
    let grants =
        vec![Grant { host: work.clone(), guest: "/data".into(), access: Access::ReadOnly }];
    let files = ["/proc/1/cmdline", "/proc/1/comm", "/proc/self/mountinfo"];
    let r = j.run("cat", &files, b"", grants, limits()).await;
    assert_eq!(r.outcome, Outcome::Exited { code: 0 }, "{}", String::from_utf8_lossy(&r.stderr));
    let out = String::from_utf8_lossy(&r.stdout);
    let cmdline: Vec<&str> = out.split('\0').filter(|s| !s.is_empty()).collect();
    assert_eq!(cmdline[0], "agenix-init");
    assert!(cmdline[1].starts_with("agenix-init\n"), "{cmdline:?}");
    let helper = helper().program;
    for secret in [helper.to_str().unwrap(), j.dir.path().to_str().unwrap(), "agenix-jail"] {
        let shown = out.replace(work.to_str().unwrap(), "<granted>");
        assert!(!shown.contains(secret), "{secret} is visible in the jail:\n{out}");
    }
    for l in out.lines().filter(|l| l.contains(" - ")) {
        let f: Vec<&str> = l.split(' ').collect();
        let (root, at) = (f[3], f[4]);
        if at != "/data" {
            let device = at.starts_with("/dev/") || (at.starts_with("/proc/") && root == "/null");
            assert!(root == "/" || root == at || device, "{l}");
        }
    }
}

/// Degraded mode without namespaces never widens access: a plan's directory is refused
/// (there is no guest path to put it at, and a guest path taken as a host path could name
/// the worker's own files), and the tool reads only what its jail would have held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s15_degraded_without_namespaces_refuses_directories_and_reads_only_its_files() {
    let j = jail_with(&[probe::names::USER_NS], true).await;
    let cache = j.shared_dir("cache");
    fs::write(cache.join("artifact.cwasm"), b"precompiled").unwrap();
    let grants = vec![Grant {
        host: cache.clone(),
        guest: cache.to_str().unwrap().into(),
        access: Access::ReadWrite,
    }];
    let r = j.attack_with(&["read", "/x"], grants, limits()).await;
    let Outcome::Refused { reason } = &r.outcome else { panic!("{:?}", r.outcome) };
    assert!(reason.contains("cannot give a task directories"), "{reason}");
    if !j.host.probe().found(probe::names::LANDLOCK) {
        programs::skip_without_jail("S15 (degraded reads)", "no Landlock here");
        return;
    }
    let secret = cache.join("artifact.cwasm");
    let r = j.attack(&["read", secret.to_str().unwrap(), "/etc/hostname"]).await;
    assert_denied(&r);
    let r = j.run("sort", &[], b"2\n1\n", vec![], limits()).await;
    assert_eq!((&r.outcome, &r.stdout[..]), (&Outcome::Exited { code: 0 }, &b"1\n2\n"[..]));
}

/// A variable outside the tool's allowlist (LANG, LC_*, TZ and the entry's own) is refused
/// before anything runs, naming it; one the entry adds reaches the tool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s14_only_allowed_variables_reach_the_tool() {
    let Some(j) = full_jail("S14").await else { return };
    let task = |env: &[(&str, &str)]| NativeTask {
        program: tool("attack"),
        args: vec!["fds".into()],
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        stdin: Bytes::new(),
        grants: vec![],
        limits: limits(),
        scratch: true,
    };
    let r = j.host.run(task(&[("LC_ALL", "C"), ("TZ", "UTC")])).await.unwrap();
    let ls = lines(&r);
    assert!(ls.contains(&"env LC_ALL=C".to_string()) && ls.contains(&"env TZ=UTC".into()));
    let r = j.host.run(task(&[("TOKEN", "x")])).await.unwrap();
    let Outcome::Refused { reason } = &r.outcome else { panic!("{:?}", r.outcome) };
    assert!(reason.contains("env TOKEN") && reason.contains("LANG, LC_*, TZ"), "{reason}");

    let mut allow = Allowlist::new();
    let entry = ToolEntry { env: vec!["TOKEN".into()], ..ToolEntry::new(programs::NATIVE_ATTACK) };
    allow.allow(tool("attack"), entry).unwrap();
    let host = NativeHost::new(NativeConfig {
        helper: helper(),
        allowlist: allow,
        danger_degraded: false,
        scratch_dir: j.path("scratch2"),
        disabled: vec![],
    })
    .await
    .unwrap();
    let r = host.run(task(&[("TOKEN", "x")])).await.unwrap();
    assert!(lines(&r).contains(&"env TOKEN=x".to_string()), "{:?}", r.outcome);
    // An entry may never add what a plan may never set.
    for bad in ["LD_PRELOAD", "GCONV_PATH", "PATH", "MALLOC_*", "*"] {
        let entry = ToolEntry { env: vec![bad.into()], ..ToolEntry::new("/usr/bin/sort") };
        let err = Allowlist::new().allow(tool("sort"), entry).unwrap_err();
        assert!(matches!(err, AllowlistError::Env { .. }), "{bad}: {err}");
    }
}

/// Scratch space is memory: in a memory cgroup, what the tool writes to /tmp is charged to
/// the task, so /tmp larger than the memory limit still cannot hold more than it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s06_scratch_space_counts_against_the_tasks_memory() {
    let Some(j) = jail_with_memory_cgroup("S6 (scratch)").await else { return };
    let small = Limits { memory_bytes: 48 * MIB, file_bytes: 256 * MIB, ..limits() };
    let r = j.attack_with(&["diskfill"], vec![], small).await;
    let ls = lines(&r);
    let wrote = |l: &str| -> u64 {
        l.split("wrote ").nth(1).and_then(|r| r.split(' ').next()).unwrap().parse().unwrap()
    };
    match &r.outcome {
        Outcome::MemoryExceeded => {}
        Outcome::Exited { code: 0 } => {
            assert!(wrote(line(&ls, "fill /tmp")) < 48, "/tmp held more than the memory: {ls:?}")
        }
        other => panic!("{other:?} {ls:?}"),
    }
}

/// Without a memory cgroup, /tmp's RAM comes out of the task's memory: file_bytes up to
/// half of memory_bytes runs (and /tmp holds exactly that), one byte more is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s06_without_a_memory_cgroup_scratch_past_half_the_memory_is_refused() {
    let Some(j) = rlimit_jail("S6 (scratch, rlimits)").await else { return };
    let at = Limits { memory_bytes: 128 * MIB, file_bytes: 64 * MIB, ..limits() };
    let r = j.attack_with(&["diskfill"], vec![], at).await;
    // It runs, and stops where the file or /tmp is full.
    let full = [Outcome::OutputExceeded { stream: "file".into() }, Outcome::Exited { code: 0 }];
    assert!(full.contains(&r.outcome), "{:?} {:?}", r.outcome, lines(&r));
    let past = Limits { file_bytes: 64 * MIB + 1, ..at };
    let r = j.attack_with(&["diskfill"], vec![], past).await;
    let Outcome::Refused { reason } = &r.outcome else { panic!("{:?}", r.outcome) };
    assert!(reason.contains("file_bytes 67108865 is over half of memory_bytes"), "{reason}");
    // A task without a /tmp has no RAM to set aside for it: it runs, and cannot write.
    let r = j.attack_without_scratch(&["write", "/tmp/x"], past).await;
    assert_denied(&r);
}

/// Tasks are forked by one long-lived zygote; one that dies (killed, out of memory) is
/// started again by the next task, which runs as if nothing happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_zygote_is_replaced_and_the_next_task_runs() {
    let Some(j) = full_jail("zygote").await else { return };
    let zygote = j.host.zygote_pid().unwrap();
    let sort = || j.run("sort", &[], b"b\na\n", vec![], limits());
    assert_eq!(&sort().await.stdout[..], b"a\nb\n");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(zygote).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::SIGKILL).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = sort().await;
    assert_ne!(j.host.zygote_pid(), Some(zygote), "a new zygote");
    assert_eq!((&r.outcome, &r.stdout[..]), (&Outcome::Exited { code: 0 }, &b"a\nb\n"[..]));
    let how = j.host.mechanisms().into_iter().find(|(n, _)| *n == "sandbox start").unwrap().1;
    assert!(how.starts_with("a zygote"), "{how}");
}

/// A plan's directory may not be mounted over the tool's own files (it would hide the tool
/// or its libraries) nor inside them; the refusal names both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_over_the_tools_own_files_is_refused() {
    let Some(j) = full_jail("S16 (mounts)").await else { return };
    let data = j.shared_dir("data");
    let attack = fs::canonicalize(programs::NATIVE_ATTACK).unwrap();
    let parent = attack.parent().unwrap().to_str().unwrap().to_owned();
    let top = format!("/{}", attack.iter().nth(1).unwrap().to_str().unwrap());
    for guest in [top, parent, format!("{}/inside", attack.display())] {
        let grants =
            vec![Grant { host: data.clone(), guest: guest.clone(), access: Access::ReadWrite }];
        let r = j.attack_with(&["whoami"], grants, limits()).await;
        let Outcome::Refused { reason } = &r.outcome else { panic!("{guest}: {:?}", r.outcome) };
        assert!(reason.contains(&format!("mount {guest} would overlap")), "{reason}");
    }
}

/// A data directory that holds the tool's own files (its entry names all of /usr) is bound
/// whole and never executable, the tool and its libraries executable on top of it: the tool
/// runs, and nothing else in it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_over_the_tools_own_files_runs_the_tool_and_nothing_else() {
    let mut allow = Allowlist::new();
    let entry = ToolEntry { data: vec!["/usr".into()], ..ToolEntry::new("/usr/bin/find") };
    allow.allow(tool("find"), entry).unwrap();
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let host = NativeHost::new(NativeConfig {
        helper: helper(),
        allowlist: allow,
        danger_degraded: true,
        scratch_dir: dir.path().join("scratch"),
        disabled: vec![probe::names::LANDLOCK.into(), probe::names::SECCOMP.into()],
    })
    .await
    .unwrap();
    if !host.probe().found(probe::names::USER_NS) {
        programs::skip_without_jail("data over the tool", "no namespaces here");
        return;
    }
    let task = NativeTask {
        program: tool("find"),
        args: ["/usr/bin/id", "-maxdepth", "0", "-exec", "/usr/bin/id", ";"]
            .map(String::from)
            .to_vec(),
        env: vec![],
        stdin: Bytes::new(),
        grants: vec![],
        limits: limits(),
        scratch: true,
    };
    let r = host.run(task).await.unwrap();
    let (out, err) = (String::from_utf8_lossy(&r.stdout), String::from_utf8_lossy(&r.stderr));
    // find ran and saw /usr/bin/id (data), and could not execute it.
    assert!(matches!(r.outcome, Outcome::Exited { .. }), "{:?} {err}", r.outcome);
    assert!(!out.contains("uid="), "{out}");
    assert!(err.contains("Permission denied"), "{err}");
}

/// What /proc would tell of the host (its boot command line, kernel configuration and
/// symbols, modules, keys) reads as empty in the jail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s11_proc_shows_nothing_of_the_host_kernel() {
    let Some(j) = full_jail("S11 (proc)").await else { return };
    let files = ["/proc/cmdline", "/proc/kallsyms", "/proc/modules", "/proc/keys"];
    let existing: Vec<&str> = files.into_iter().filter(|f| Path::new(f).exists()).collect();
    let mut args = vec!["read"];
    args.extend(&existing);
    let ls = lines(&j.attack(&args).await);
    for f in existing {
        let l = line(&ls, &format!("read {f}"));
        assert!(l == format!("ok read {f}: 0 bytes") || l.starts_with("denied"), "{l}");
    }
}

/// The tool is executed once, and nothing after it: not the loader or a library through any
/// descriptor number (the one the jail started the tool from included), not the tool again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s16_the_tool_is_executed_once_and_nothing_after_it() {
    let Some(j) = full_jail("S16 (exec once)").await else { return };
    let libc = fs::canonicalize("/lib/x86_64-linux-gnu/libc.so.6")
        .or_else(|_| fs::canonicalize("/lib/aarch64-linux-gnu/libc.so.6"));
    let attack = fs::canonicalize(programs::NATIVE_ATTACK).unwrap();
    let mut targets = vec![LOADER.to_string(), attack.to_str().unwrap().to_owned()];
    if let Ok(libc) = libc {
        targets.push(libc.to_str().unwrap().to_owned());
    }
    for target in targets {
        let r = j.attack(&["loader", &target, "--version"]).await;
        let ls = lines(&r);
        assert_eq!(
            ls,
            ["denied loader: EPERM"],
            "{target}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert_eq!(r.outcome, Outcome::Exited { code: 0 });
    }
}

/// Another name for a forbidden program is still refused: a hard link to an interpreter (the
/// same file), and a program that loads an interpreter's runtime library.
#[test]
fn a_hard_link_to_an_interpreter_is_refused_under_any_name() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("report");
    let mut checked = 0;
    match fs::hard_link("/usr/bin/perl", &link) {
        Ok(()) => {
            let err = Allowlist::new().allow(tool("report"), ToolEntry::new(&link)).unwrap_err();
            assert!(err.to_string().contains("hard link"), "{err}");
            checked += 1;
        }
        Err(e) => println!("hard link: skipped, cannot link /usr/bin/perl here ({e})"),
    }
    for wrapper in fs::read_dir("/usr/bin").unwrap().flatten() {
        let name = wrapper.file_name().to_string_lossy().into_owned();
        if name.starts_with("perl5") && name.contains("linux") {
            let err = Allowlist::new()
                .allow(tool("wrapper"), ToolEntry::new(wrapper.path()))
                .unwrap_err();
            assert!(err.to_string().contains("is an interpreter"), "{name}: {err}");
            checked += 1;
        }
    }
    assert!(checked > 0, "neither a hard link to perl nor a perl wrapper could be tried here");
}

/// The root is sealed read-only, nosuid and nodev by mount_setattr(2) (one call a mount)
/// where the kernel has it, and by a remount of each bind where it does not: both give the
/// same jail, with /dev/null still writable through the read-only /dev, shown
/// here with Landlock off so the mount flags alone hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s01_the_root_is_read_only_whether_sealed_at_once_or_bind_by_bind() {
    use probe::names::{LANDLOCK, MOUNT_SETATTR};
    for disabled in [&[LANDLOCK][..], &[LANDLOCK, MOUNT_SETATTR][..]] {
        let j = jail_with(disabled, false).await;
        if let Some(reason) = j.host.refusal() {
            programs::skip_without_jail("S1 (sealing)", &reason);
            return;
        }
        let how = j.host.mechanisms().into_iter().find(|(n, _)| *n == "root").unwrap().1;
        let one_call = !disabled.contains(&MOUNT_SETATTR) && j.host.probe().found(MOUNT_SETATTR);
        assert_eq!(how.contains("one mount_setattr"), one_call, "{how}");
        let ro = j.shared_dir("ro");
        let rw = j.shared_dir("rw");
        let grants = vec![
            Grant { host: ro, guest: "/in".into(), access: Access::ReadOnly },
            Grant { host: rw.clone(), guest: "/out".into(), access: Access::ReadWrite },
        ];
        let attack = fs::canonicalize(programs::NATIVE_ATTACK).unwrap();
        let beside = attack.with_file_name("beside");
        let args = [
            "write",
            "/x",
            "/etc/passwd",
            "/dev/new",
            "/in/x",
            beside.to_str().unwrap(),
            "/tmp/ok",
            "/out/ok",
            "/dev/null",
        ];
        let ls = lines(&j.attack_with(&args, grants, limits()).await);
        for denied in ["/x", "/etc/passwd", "/dev/new", "/in/x", beside.to_str().unwrap()] {
            assert!(
                line(&ls, &format!("write {denied}")).starts_with("denied"),
                "{disabled:?}: {ls:?}"
            );
        }
        for ok in ["/tmp/ok", "/out/ok", "/dev/null"] {
            assert!(line(&ls, &format!("write {ok}")).starts_with("ok"), "{disabled:?}: {ls:?}");
        }
        assert!(rw.join("ok").exists());
        let ls = lines(&j.attack(&["privs", LOADER]).await);
        assert_eq!(line(&ls, "loader nosuid"), "loader nosuid true", "{disabled:?}");
    }
}

/// A tool that exits 0 leaving a daemon behind, one that let go of stdio so no pipe holds
/// the task open: the answer comes only once the daemon is dead. Nothing of the task is
/// running when the worker has its result, and nothing writes to its directories after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_left_behind_is_dead_before_the_answer() {
    let Some(j) = full_jail("S8 (daemon after exit)").await else { return };
    let out = j.shared_dir("out");
    let grants = vec![Grant { host: out.clone(), guest: "/out".into(), access: Access::ReadWrite }];
    for _ in 0..5 {
        let _ = fs::remove_file(out.join("beat"));
        let r = j.attack_with(&["daemon-quiet", "/out/beat"], grants.clone(), limits()).await;
        assert_eq!(
            r.outcome,
            Outcome::Exited { code: 0 },
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert_eq!(lines(&r), ["daemon left"]);
        // The daemon writes every millisecond while it lives (other tests' attack programs
        // run beside this one, so its heartbeat, not the process list, tells).
        let size = || fs::metadata(out.join("beat")).map(|m| m.len()).unwrap_or(0);
        let at_answer = size();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(size(), at_answer, "the daemon outlived the answer and wrote after it");
    }
}

/// Sandboxes are made ahead of their tasks (the zygote's spare), yet never shared: one
/// after another, each task is the first process of a fresh pid namespace with an empty
/// /tmp (the last task's mark is not there); at once, no two tasks share a namespace, and
/// none is the worker's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_gets_namespaces_of_its_own_though_made_ahead() {
    let Some(j) = full_jail("S14 (fresh namespaces)").await else { return };
    // What follows `key ` on its line.
    fn line<'a>(ls: &'a [String], key: &str) -> &'a str {
        let key = format!("{key} ");
        ls.iter().find_map(|l| l.strip_prefix(&key)).unwrap_or_else(|| panic!("no {key} in {ls:?}"))
    }
    for _ in 0..4 {
        let r = j.attack(&["ns"]).await;
        assert_eq!(
            r.outcome,
            Outcome::Exited { code: 0 },
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );
        let ls = lines(&r);
        assert_eq!((line(&ls, "own pid"), line(&ls, "tmp")), ("2", "[]"), "{ls:?}");
    }
    let out = j.shared_dir("out");
    let grants = vec![Grant { host: out.clone(), guest: "/out".into(), access: Access::ReadWrite }];
    let both = ["ns", "/out/arrived", "2"];
    let (a, b) = tokio::join!(
        j.attack_with(&both, grants.clone(), limits()),
        j.attack_with(&both, grants.clone(), limits())
    );
    let own =
        |ns: &str| fs::read_link(format!("/proc/self/ns/{ns}")).unwrap().display().to_string();
    let (a, b) = (lines(&a), lines(&b));
    for ns in ["user", "mnt", "pid", "net", "ipc", "uts"] {
        let (x, y) = (line(&a, ns), line(&b, ns));
        assert!(x.starts_with(&format!("{ns}:[")), "{a:?}");
        assert_ne!(x, y, "two tasks at once shared their {ns} namespace");
        assert_ne!(x, own(ns), "a task shares the worker's {ns} namespace");
        assert_ne!(y, own(ns), "a task shares the worker's {ns} namespace");
    }
    assert_eq!(fs::read_to_string(out.join("arrived")).unwrap(), "here\nhere\n");
}

/// The children of process `pid`.
fn children(pid: impl std::fmt::Display) -> Vec<i32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// The zygote's one spare, once the last task's helper (which may still be ending beside
/// it) has gone.
async fn the_spare(zygote: u32) -> i32 {
    let mut waiting = children(zygote);
    for _ in 0..100 {
        if waiting.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiting = children(zygote);
    }
    assert_eq!(waiting.len(), 1, "one spare waits: {waiting:?}");
    waiting[0]
}

/// The zygote's spare (a helper with a sandbox made ahead) killed while it waits, or only
/// its sandbox: the next task runs all the same, and a new spare is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_spare_is_replaced_and_the_next_task_runs() {
    let Some(j) = full_jail("zygote (spare)").await else { return };
    let zygote = j.host.zygote_pid().unwrap();
    let sort = || j.run("sort", &[], b"b\na\n", vec![], limits());
    assert_eq!(&sort().await.stdout[..], b"a\nb\n");
    // Its sandbox killed while it waits: the task gets one made then.
    let inits = children(the_spare(zygote).await);
    assert_eq!(inits.len(), 1, "the spare's sandbox: {inits:?}");
    let init = inits[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(init), nix::sys::signal::SIGKILL).unwrap();
    while fs::read_to_string(format!("/proc/{init}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = sort().await;
    assert_eq!((&r.outcome, &r.stdout[..]), (&Outcome::Exited { code: 0 }, &b"a\nb\n"[..]));
    // And the spare itself.
    let spare = the_spare(zygote).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(spare), nix::sys::signal::SIGKILL).unwrap();
    // Gone (a spare killed in the very instant of a hand-over takes that task with it, as a
    // helper killed while running one does).
    for _ in 0..100 {
        if !children(zygote).contains(&spare) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = sort().await;
    assert_eq!((&r.outcome, &r.stdout[..]), (&Outcome::Exited { code: 0 }, &b"a\nb\n"[..]));
    assert_eq!(j.host.zygote_pid(), Some(zygote), "the same zygote");
    let r = sort().await;
    assert_eq!((&r.outcome, &r.stdout[..]), (&Outcome::Exited { code: 0 }, &b"a\nb\n"[..]));
    assert!(!children(zygote).contains(&spare));
}

/// A task given a directory sees the host's mounts as they are when it runs, not as they
/// were when its sandbox could have been made ahead: a file system mounted on the directory
/// since is what the task gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_given_a_directory_sees_the_hosts_mounts_as_they_are_now() {
    let Some(j) = full_jail("S3 (mounts now)").await else { return };
    let work = j.shared_dir("work");
    fs::write(work.join("under"), b"").unwrap();
    // A spare is made after this task, before the mount below.
    assert_eq!(j.attack(&["say", "hi"]).await.outcome, Outcome::Exited { code: 0 });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let flags = nix::mount::MsFlags::empty();
    if let Err(e) = nix::mount::mount(Some("tmpfs"), &work, Some("tmpfs"), flags, Some("mode=0777"))
    {
        programs::skip_without_jail("S3 (mounts now)", &format!("cannot mount here: {e}"));
        return;
    }
    /// Unmounts however the test ends.
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(work.clone());
    fs::write(work.join("over"), b"").unwrap();
    let grants =
        vec![Grant { host: work.clone(), guest: "/data".into(), access: Access::ReadWrite }];
    let r = j.run("find", &["/data"], b"", grants, limits()).await;
    assert_eq!(r.outcome, Outcome::Exited { code: 0 }, "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(lines(&r), ["/data", "/data/over"]);
}

/// The zygote killed while a task runs (in a helper it forked ahead): the task runs to its
/// end all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_zygote_does_not_take_running_tasks_with_it() {
    let Some(j) = full_jail("zygote (running tasks)").await else { return };
    let zygote = j.host.zygote_pid().unwrap();
    let nap = j.attack(&["nap", "1500"]);
    let kill = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(zygote).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::SIGKILL).unwrap();
    };
    let (r, ()) = tokio::join!(nap, kill);
    assert_eq!(r.outcome, Outcome::Exited { code: 0 }, "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(lines(&r), ["woke"]);
}

/// The empty directory sandboxes mount their roots on, removed (a cleaner of old files):
/// the next task makes it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_mount_point_removed_between_tasks_is_made_again() {
    let Some(j) = full_jail("root mount point").await else { return };
    let root = j.path("scratch").join("root");
    assert!(root.is_dir());
    for _ in 0..2 {
        fs::remove_dir(&root).unwrap();
        let r = j.attack(&["say", "hi"]).await;
        assert_eq!(
            r.outcome,
            Outcome::Exited { code: 0 },
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );
    }
}

/// Tools get SIGPIPE as programs expect it (the worker's runtime ignores it, and an ignored
/// signal would stay ignored across exec), and so does every signal the worker's parent
/// ignored: `cat` shows none ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(unsafe_code, reason = "ignoring a signal, as a worker's parent might")]
async fn a_tool_starts_with_no_signal_ignored() {
    // As a worker's parent might: a real-time signal ignored, inherited by the zygote.
    // SAFETY: ignoring a signal installs no handler code.
    unsafe { libc::signal(libc::SIGRTMIN() + 6, libc::SIG_IGN) };
    let Some(j) = full_jail("SIGPIPE").await else { return };
    let r = j.run("cat", &["/proc/self/status"], b"", vec![], limits()).await;
    assert_eq!(r.outcome, Outcome::Exited { code: 0 }, "{}", String::from_utf8_lossy(&r.stderr));
    let ls = lines(&r);
    let ignored = line(&ls, "SigIgn:").trim_start_matches("SigIgn:").trim();
    assert_eq!(u64::from_str_radix(ignored, 16).unwrap(), 0, "{ls:?}");
}

/// A spare handed a request dies before it took it (stopped, then killed: in life, killed
/// while still making its sandbox in a burst of tasks): the zygote still holds the request
/// and forks a helper for it, so the task runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_that_dies_as_it_is_handed_a_task_does_not_lose_it() {
    let Some(j) = full_jail("zygote (hand-over)").await else { return };
    let spare = nix::unistd::Pid::from_raw(the_spare(j.host.zygote_pid().unwrap()).await);
    nix::sys::signal::kill(spare, nix::sys::signal::SIGSTOP).unwrap();
    let task = j.run("sort", &[], b"b\na\n", vec![], limits());
    let kill = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        nix::sys::signal::kill(spare, nix::sys::signal::SIGKILL).unwrap();
    };
    let (r, ()) = tokio::join!(task, kill);
    assert_eq!((&r.outcome, &r.stdout[..]), (&Outcome::Exited { code: 0 }, &b"a\nb\n"[..]));
}

/// A task stopped at its deadline still reports the memory it held (the helper reads the
/// cgroup before it removes it, and answers with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_stopped_at_its_deadline_reports_its_peak_memory() {
    let Some(j) = jail_with_memory_cgroup("S6 (peak when stopped)").await else { return };
    let r = j.attack_with(&["hold", "32"], vec![], Limits { timeout_ms: 1500, ..limits() }).await;
    assert_eq!(r.outcome, Outcome::TimedOut);
    assert_eq!(lines(&r), ["holding 32 MiB"]);
    assert!(r.peak_memory >= 32 * MIB, "peak {}", r.peak_memory);
}

/// Degraded mode without namespaces, on a host that has cgroups: the tool is not in one (the
/// helper forks it), so rlimits and the one-process filter bound it, not nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_without_namespaces_bounds_memory_and_processes_though_cgroups_exist() {
    use probe::names::{MEMORY_CGROUP, SECCOMP, USER_NS};
    let j = jail_with(&[USER_NS], true).await;
    if !j.host.probe().found(MEMORY_CGROUP) || !j.host.probe().found(SECCOMP) {
        programs::skip_without_jail("S15 (degraded limits)", "no memory cgroup or seccomp here");
        return;
    }
    let small = Limits { memory_bytes: 64 * MIB, file_bytes: 16 * MIB, ..limits() };
    let r = j.attack_with(&["membomb"], vec![], small).await;
    assert_eq!(r.outcome, Outcome::MemoryExceeded, "stdout {:?}", lines(&r));
    let r = j
        .attack_with(&["forkbomb"], vec![], Limits { pids: 16, timeout_ms: 1500, ..limits() })
        .await;
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.contains("fork refused after 0"), "{:?}: {out}", r.outcome);
    assert_no_survivors().await;
}

/// Lines of text making `mib` MiB, for `sort` to hold.
fn text_of(mib: usize) -> Vec<u8> {
    let line = b"the quick brown fox jumps over the lazy dog 0123456789\n";
    line.iter().copied().cycle().take(mib << 20).collect()
}

/// Sandboxes are moved into the next task's cgroup before it comes (the worker offers it to
/// the zygote's spare): under tasks started together and one after another, each task is
/// still alone in a cgroup of its own, which its reported peak shows. `sort` holding 40 MiB
/// reports at least that; `cat` of a line reports far less. (Real tools, not the attack
/// program, whose processes other rows look for on the whole host.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_has_a_cgroup_of_its_own_though_entered_ahead() {
    let Some(j) = jail_with_memory_cgroup("S6 (cgroups entered ahead)").await else { return };
    let text = text_of(40);
    let big = || j.run("sort", &["-o", "/dev/null"], &text, vec![], limits());
    let small = || j.run("cat", &[], b"a line\n", vec![], limits());
    let (big_enough, small_enough) =
        (|r: &Finished| r.peak_memory >= 40 * MIB, |r: &Finished| r.peak_memory < 20 * MIB);
    for round in 0..3 {
        let (b1, s1, b2, s2, b3, s3) = tokio::join!(big(), small(), big(), small(), big(), small());
        for b in [b1, b2, b3] {
            assert_eq!(b.outcome, Outcome::Exited { code: 0 }, "round {round}");
            assert!(big_enough(&b), "round {round}: peak {}", b.peak_memory);
        }
        for s in [s1, s2, s3] {
            assert_eq!(s.outcome, Outcome::Exited { code: 0 }, "round {round}");
            assert!(small_enough(&s), "round {round}: peak {}", s.peak_memory);
        }
        // And one at a time, each taking the cgroup offered while the last ran.
        for _ in 0..3 {
            let b = big().await;
            assert!(big_enough(&b), "round {round}: peak {}", b.peak_memory);
            let s = small().await;
            assert!(small_enough(&s), "round {round}: peak {}", s.peak_memory);
        }
    }
}

/// A spare left idle goes (`SPARE_IDLE`, 2 s), leaving the cgroup it had entered to the
/// worker: the next tasks run in it and in those after it, with their limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_after_an_idle_spare_went_is_bounded_by_its_cgroup() {
    let Some(j) = jail_with_memory_cgroup("S6 (after an idle spare)").await else { return };
    let r = j.run("true", &[], b"", vec![], limits()).await;
    assert_eq!(r.outcome, Outcome::Exited { code: 0 });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let small = Limits { memory_bytes: 64 * MIB, ..limits() };
    for _ in 0..2 {
        let r = j.attack_with(&["membomb"], vec![], small).await;
        assert_eq!(r.outcome, Outcome::MemoryExceeded, "stdout {:?}", lines(&r));
    }
    let r = j.run("sort", &["-o", "/dev/null"], &text_of(24), vec![], limits()).await;
    assert_eq!(r.outcome, Outcome::Exited { code: 0 });
    assert!(r.peak_memory >= 24 * MIB && r.peak_memory < 64 * MIB, "peak {}", r.peak_memory);
}
