//! The wasm sandbox against docs/test-matrix.md rows W1–W10, with real wasmtime and purpose-
//! built guests (host/guests) compiled for wasm32-wasip2.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agenix_host::wasm::{
    Allocator, CacheBudget, ConformanceError, ImportKind, Metering, PrepareError, Prepared,
    WasmConfig, WasmHost,
};
use agenix_host::{Finished, Grant, WasmTask};
use agenix_proto::{Access, Digest, Limits, Outcome, UNMETERED};
use agenix_test_programs as programs;
use bytes::Bytes;

struct Harness {
    host: WasmHost,
    dir: tempfile::TempDir,
}

const MIB: u64 = 1 << 20;

fn limits() -> Limits {
    Limits { memory_bytes: 64 * MIB, timeout_ms: 20_000, output_bytes: MIB, ..Limits::DEFAULT }
}

impl Harness {
    fn new() -> Self {
        Self::with(4, None)
    }

    fn with(max_concurrent: u32, cache: Option<&Path>) -> Self {
        Self::with_budget(max_concurrent, cache, CacheBudget::default())
    }

    fn with_budget(max_concurrent: u32, cache: Option<&Path>, budget: CacheBudget) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let host = WasmHost::with_budget(
            WasmConfig {
                ceilings: Limits::ABSOLUTE,
                max_concurrent,
                cache_dir: cache.map(Path::to_path_buf),
                scratch_dir: dir.path().join("scratch"),
                allocator: Allocator::Auto,
            },
            budget,
        )
        .unwrap();
        Self { host, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn prepare(&self, path: &str) -> Arc<Prepared> {
        self.prepare_for(path, Metering::Fuel).await
    }

    async fn prepare_for(&self, path: &str, metering: Metering) -> Arc<Prepared> {
        let bytes = fs::read(path).unwrap();
        self.host.prepare(Digest::of(&bytes), metering, || async { Ok(bytes) }).await.unwrap()
    }

    async fn prepare_bytes(&self, bytes: &[u8]) -> Arc<Prepared> {
        let b = bytes.to_vec();
        self.host.prepare(Digest::of(bytes), Metering::Fuel, || async { Ok(b) }).await.unwrap()
    }

    /// Prepares only from what the host keeps, in memory or in its artifact cache: fetching
    /// the component fails.
    async fn prepare_kept(&self, digest: Digest) -> Result<Arc<Prepared>, PrepareError> {
        self.host
            .prepare(digest, Metering::Fuel, || async {
                Err(PrepareError::Fetch("not kept".into()))
            })
            .await
    }

    /// Runs an echo guest (or a variant) and checks that it copies stdin to stdout.
    async fn assert_echoes(&self, p: &Prepared) {
        let task = WasmTask {
            program: "echo".into(),
            args: vec![],
            env: vec![],
            stdin: Bytes::from_static(b"echoed"),
            grants: vec![],
            limits: limits(),
            scratch: true,
        };
        let r = self.host.run(p, task).await.unwrap();
        assert_eq!(
            r.outcome,
            Outcome::Exited { code: 0 },
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert_eq!(&r.stdout[..], b"echoed");
    }

    async fn run_with(
        &self,
        path: &str,
        args: &[&str],
        stdin: &[u8],
        grants: Vec<Grant>,
        limits: Limits,
    ) -> Finished {
        self.run_scratch(path, args, stdin, grants, limits, true).await
    }

    /// As [`Harness::run_with`], with a scratch `/tmp` or none.
    async fn run_scratch(
        &self,
        path: &str,
        args: &[&str],
        stdin: &[u8],
        grants: Vec<Grant>,
        limits: Limits,
        scratch: bool,
    ) -> Finished {
        let p = self.prepare_for(path, Metering::of(&limits)).await;
        let task = WasmTask {
            program: "guest".into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            stdin: Bytes::copy_from_slice(stdin),
            grants,
            limits,
            scratch,
        };
        // A generous bound so a sandbox that fails to stop a guest fails the test instead of
        // hanging it; not a speed assertion.
        tokio::time::timeout(Duration::from_secs(120), self.host.run(&p, task))
            .await
            .unwrap()
            .unwrap()
    }

    async fn run(&self, path: &str, args: &[&str]) -> Finished {
        self.run_with(path, args, b"", vec![], limits()).await
    }

    /// The host still runs a normal guest after whatever the previous test did.
    async fn assert_healthy(&self) {
        let r = self.run_with(programs::GUEST_ECHO, &[], b"still here", vec![], limits()).await;
        assert_eq!(r.outcome, Outcome::Exited { code: 0 });
        assert_eq!(&r.stdout[..], b"still here");
    }
}

fn stdout(r: &Finished) -> String {
    String::from_utf8_lossy(&r.stdout).into_owned()
}

#[tokio::test]
async fn w01_infinite_loop_runs_out_of_fuel() {
    let h = Harness::new();
    let r = h
        .run_with(programs::GUEST_SPIN, &[], b"", vec![], Limits { fuel: 50_000_000, ..limits() })
        .await;
    assert_eq!(r.outcome, Outcome::OutOfFuel);
    assert_eq!(r.fuel_consumed, Some(50_000_000));
    h.assert_healthy().await;
}

#[tokio::test]
async fn w01_unmetered_infinite_loop_times_out_and_counts_no_fuel() {
    let h = Harness::new();
    let unmetered = Limits { fuel: UNMETERED, timeout_ms: 300, ..limits() };
    let r = h.run_with(programs::GUEST_SPIN, &[], b"", vec![], unmetered).await;
    assert_eq!(r.outcome, Outcome::TimedOut);
    assert_eq!(r.fuel_consumed, None, "an unmetered task counts no fuel");
    assert!(r.wall >= Duration::from_millis(300), "{:?}", r.wall);
    assert!(r.wall < Duration::from_secs(10), "stopped only after {:?}", r.wall);
    h.assert_healthy().await;
}

#[tokio::test]
async fn w01_a_component_runs_only_tasks_of_the_metering_it_was_prepared_for() {
    let h = Harness::new();
    let metered = h.prepare_for(programs::GUEST_ECHO, Metering::Fuel).await;
    let unmetered = h.prepare_for(programs::GUEST_ECHO, Metering::Unmetered).await;
    assert_eq!((metered.metering(), unmetered.metering()), (Metering::Fuel, Metering::Unmetered));
    assert_eq!(h.host.prepared_count(), 2, "one prepared component per metering");
    let task = |fuel| WasmTask {
        program: "echo".into(),
        args: vec![],
        env: vec![],
        stdin: Bytes::from_static(b"echoed"),
        grants: vec![],
        limits: Limits { fuel, ..limits() },
        scratch: true,
    };
    let r = h.host.run(&unmetered, task(UNMETERED)).await.unwrap();
    assert_eq!(
        (r.outcome, &r.stdout[..], r.fuel_consumed),
        (Outcome::Exited { code: 0 }, &b"echoed"[..], None)
    );
    let r = h.host.run(&metered, task(1_000_000_000)).await.unwrap();
    assert_eq!(r.outcome, Outcome::Exited { code: 0 });
    assert!(r.fuel_consumed.is_some_and(|f| f > 0), "{:?}", r.fuel_consumed);
    // Crossed, each is the caller's mistake, named, and runs nothing.
    for (p, fuel) in [(&metered, UNMETERED), (&unmetered, 1_000_000_000)] {
        let e = h.host.run(p, task(fuel)).await.unwrap_err().to_string();
        assert!(e.contains("was prepared for"), "{e}");
    }
}

#[tokio::test]
async fn w01_a_host_whose_fuel_ceiling_is_lowered_refuses_unmetered_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let host = WasmHost::new(WasmConfig {
        ceilings: Limits { fuel: 1_000_000_000, ..Limits::ABSOLUTE },
        max_concurrent: 1,
        cache_dir: None,
        scratch_dir: dir.path().join("scratch"),
        allocator: Allocator::OnDemand,
    })
    .unwrap();
    let bytes = fs::read(programs::GUEST_ECHO).unwrap();
    let p = host
        .prepare(Digest::of(&bytes), Metering::Unmetered, || async { Ok(bytes) })
        .await
        .unwrap();
    let task = WasmTask {
        program: "echo".into(),
        args: vec![],
        env: vec![],
        stdin: Bytes::new(),
        grants: vec![],
        limits: Limits { fuel: UNMETERED, ..limits() },
        scratch: true,
    };
    let r = host.run(&p, task).await.unwrap();
    assert_eq!(
        r.outcome,
        Outcome::Refused {
            reason: "limits.fuel unmetered is above this host's ceiling of 1000000000".into()
        }
    );
}

#[tokio::test]
async fn w01_infinite_loop_times_out_on_the_wall_clock() {
    let h = Harness::new();
    let r = h
        .run_with(programs::GUEST_SPIN, &[], b"", vec![], Limits { timeout_ms: 300, ..limits() })
        .await;
    assert_eq!(r.outcome, Outcome::TimedOut);
    assert!(r.wall >= Duration::from_millis(300), "{:?}", r.wall);
    assert!(r.wall < Duration::from_secs(10), "stopped only after {:?}", r.wall);
    h.assert_healthy().await;
}

#[tokio::test]
async fn w01_guest_looping_on_cheap_host_calls_times_out_on_time() {
    let h = Harness::new();
    let r = h
        .run_with(
            programs::GUEST_RANDLOOP,
            &[],
            b"",
            vec![],
            Limits { timeout_ms: 500, ..limits() },
        )
        .await;
    assert_eq!(r.outcome, Outcome::TimedOut);
    // Stopped at the deadline plus at most a host call or two, not minutes later; the bound
    // is loose on purpose (this is not a speed test).
    assert!(r.wall < Duration::from_secs(10), "stopped only after {:?}", r.wall);
    h.assert_healthy().await;
}

#[tokio::test]
async fn w01_out_of_fuel_after_a_refused_allocation_is_still_out_of_fuel() {
    let h = Harness::new();
    let r = h
        .run_with(
            programs::GUEST_TRYSPIN,
            &[],
            b"",
            vec![],
            Limits { fuel: 50_000_000, ..limits() },
        )
        .await;
    assert_eq!(r.outcome, Outcome::OutOfFuel);
}

#[tokio::test]
async fn w01_guest_blocked_in_a_host_sleep_times_out() {
    let h = Harness::new();
    let r = h
        .run_with(programs::GUEST_SLEEP, &[], b"", vec![], Limits { timeout_ms: 300, ..limits() })
        .await;
    assert_eq!(r.outcome, Outcome::TimedOut);
    assert_eq!(stdout(&r), "going to sleep\n", "output before the timeout is kept");
    h.assert_healthy().await;
}

#[tokio::test]
async fn w02_memory_bomb_is_stopped_at_the_limit() {
    let h = Harness::new();
    let r = h
        .run_with(
            programs::GUEST_GROW,
            &[],
            b"",
            vec![],
            Limits { memory_bytes: 32 * MIB, ..limits() },
        )
        .await;
    assert_eq!(r.outcome, Outcome::MemoryExceeded);
    assert!(r.peak_memory <= 32 * MIB, "peak {} over the limit", r.peak_memory);
    assert!(r.peak_memory > 16 * MIB, "peak {} suspiciously low", r.peak_memory);
    h.assert_healthy().await;
}

/// A host directory with `data/file.txt`, a `secret` beside it, and the harness.
fn fs_fixture() -> (Harness, PathBuf, PathBuf) {
    fs_fixture_with(Harness::new())
}

fn fs_fixture_with(h: Harness) -> (Harness, PathBuf, PathBuf) {
    let data = h.path("data");
    fs::create_dir_all(data.join("sub")).unwrap();
    fs::write(data.join("file.txt"), "mounted contents").unwrap();
    let secret = h.path("secret");
    fs::write(&secret, "TOP SECRET").unwrap();
    (h, data, secret)
}

fn grant(host: &Path, guest: &str, access: Access) -> Vec<Grant> {
    vec![Grant { host: host.to_path_buf(), guest: guest.into(), access }]
}

#[tokio::test]
async fn w03_paths_cannot_escape_a_mount() {
    let (h, data, secret) = fs_fixture();
    let g = grant(&data, "/data", Access::ReadWrite);
    let ok =
        h.run_with(programs::GUEST_FS, &["read", "/data/file.txt"], b"", g.clone(), limits()).await;
    assert_eq!(stdout(&ok), "ok 16 bytes: mounted contents\n");

    let secret_abs = secret.to_str().unwrap().to_string();
    for path in [
        "/data/../secret",
        "/data/sub/../../secret",
        "/data/./../secret",
        "../secret",
        "secret",
        secret_abs.as_str(),
        "/data/file.txt/",
        "/data/file.txt/.",
        "/data/sub/../../../../../../etc/passwd",
        "/etc/passwd",
        "/proc/self/environ",
    ] {
        let r = h.run_with(programs::GUEST_FS, &["read", path], b"", g.clone(), limits()).await;
        assert_eq!(r.outcome, Outcome::Exited { code: 1 }, "read {path}: {}", stdout(&r));
        assert!(stdout(&r).starts_with("denied"), "read {path}: {}", stdout(&r));
        assert!(!stdout(&r).contains("TOP SECRET"));
    }

    // Writing outside through `..` creates nothing outside.
    let r = h
        .run_with(programs::GUEST_FS, &["write", "/data/../outside.txt"], b"", g.clone(), limits())
        .await;
    assert!(stdout(&r).starts_with("denied"), "{}", stdout(&r));
    assert!(!h.path("outside.txt").exists());
}

#[tokio::test]
async fn w03_symlinks_made_in_a_mount_do_not_lead_out() {
    let (h, data, secret) = fs_fixture();
    let g = grant(&data, "/data", Access::ReadWrite);
    for (target, link) in [
        (secret.to_str().unwrap(), "/data/abs-link"),
        ("../secret", "/data/rel-link"),
        ("sub/../../secret", "/data/nested-link"),
    ] {
        // Creating the link may or may not be allowed; following it out never is.
        let made = h
            .run_with(programs::GUEST_FS, &["symlink", target, link], b"", g.clone(), limits())
            .await;
        let host_link = data.join(link.trim_start_matches("/data/"));
        assert_eq!(
            made.outcome.is_success(),
            host_link.symlink_metadata().is_ok(),
            "{}",
            stdout(&made)
        );
        let r = h.run_with(programs::GUEST_FS, &["read", link], b"", g.clone(), limits()).await;
        assert_eq!(
            r.outcome,
            Outcome::Exited { code: 1 },
            "read via {link} -> {target}: {}",
            stdout(&r)
        );
        assert!(!stdout(&r).contains("TOP SECRET"));
        let w = h.run_with(programs::GUEST_FS, &["write", link], b"", g.clone(), limits()).await;
        if made.outcome.is_success() {
            // The link exists: writing through it must not follow it out.
            assert_eq!(w.outcome, Outcome::Exited { code: 1 }, "write via {link}: {}", stdout(&w));
        } else {
            // No link was made: the write creates an ordinary file inside the mount.
            assert!(host_link.symlink_metadata().unwrap().is_file(), "{link}");
        }
    }
    assert_eq!(fs::read_to_string(&secret).unwrap(), "TOP SECRET");
    let outside: Vec<_> =
        fs::read_dir(h.path("")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(outside.len(), 3, "only data, secret and scratch exist outside: {outside:?}");

    // A symlink placed on the host inside the mount, pointing out, is not followed either.
    std::os::unix::fs::symlink(&secret, data.join("planted")).unwrap();
    let r = h.run_with(programs::GUEST_FS, &["read", "/data/planted"], b"", g, limits()).await;
    assert!(stdout(&r).starts_with("denied"), "{}", stdout(&r));
}

#[tokio::test]
async fn w03_only_granted_directories_are_visible() {
    let (h, data, _) = fs_fixture();
    let g = grant(&data, "/data", Access::ReadOnly);
    let r = h.run_with(programs::GUEST_FS, &["list", "/data"], b"", g.clone(), limits()).await;
    assert_eq!(stdout(&r), "ok file.txt,sub\n");
    for dir in ["/", ".", "/etc", "/home", "/root"] {
        let r = h.run_with(programs::GUEST_FS, &["list", dir], b"", g.clone(), limits()).await;
        assert_eq!(r.outcome, Outcome::Exited { code: 1 }, "list {dir}: {}", stdout(&r));
    }
    // The scratch directory is private and starts empty.
    let r = h.run_with(programs::GUEST_FS, &["list", "/tmp"], b"", g, limits()).await;
    assert_eq!(stdout(&r), "ok \n");
}

#[tokio::test]
async fn w04_read_only_mount_refuses_every_kind_of_write() {
    let (h, data, _) = fs_fixture();
    let g = grant(&data, "/data", Access::ReadOnly);
    let before = fs::read(data.join("file.txt")).unwrap();
    for args in [
        &["write", "/data/file.txt"][..],
        &["write", "/data/new.txt"],
        &["append", "/data/file.txt"],
        &["truncate", "/data/file.txt"],
        &["set-len", "/data/file.txt"],
        &["rename", "/data/file.txt", "/data/moved.txt"],
        &["rename", "/data/file.txt", "/tmp/moved.txt"],
        &["link", "/data/file.txt", "/data/hard.txt"],
        &["link", "/data/file.txt", "/tmp/hard.txt"],
        &["symlink", "file.txt", "/data/sym"],
        &["mkdir", "/data/newdir"],
        &["remove", "/data/file.txt"],
    ] {
        let r = h.run_with(programs::GUEST_FS, args, b"", g.clone(), limits()).await;
        assert_eq!(r.outcome, Outcome::Exited { code: 1 }, "{args:?}: {}", stdout(&r));
        assert!(stdout(&r).starts_with("denied"), "{args:?}: {}", stdout(&r));
    }
    assert_eq!(fs::read(data.join("file.txt")).unwrap(), before);
    let mut names: Vec<_> = fs::read_dir(&data).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["file.txt", "sub"]);
    // The same writes work in a read-write mount, so the refusals above are the mode's doing.
    let rw = grant(&data, "/data", Access::ReadWrite);
    let r = h.run_with(programs::GUEST_FS, &["write", "/data/new.txt"], b"", rw, limits()).await;
    assert_eq!(stdout(&r), "ok\n");
}

/// A loopback listener that counts what reaches it, to show that nothing a guest does
/// leaves the host.
struct Witness {
    addr: String,
    listener: std::net::TcpListener,
    udp: std::net::UdpSocket,
}

impl Witness {
    fn new() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        // The same port over UDP, for a guest that would send a datagram there.
        let udp = std::net::UdpSocket::bind(addr).unwrap();
        udp.set_nonblocking(true).unwrap();
        Self { addr: addr.to_string(), listener, udp }
    }

    /// Nothing connected and nothing was sent.
    fn saw_nothing(&self) {
        match self.listener.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("a connection reached the host's listener: {other:?}"),
        }
        let mut buf = [0u8; 64];
        match self.udp.recv_from(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("a datagram reached the host: {other:?}"),
        }
    }
}

#[tokio::test]
async fn w05_every_way_to_the_network_is_denied() {
    let h = Harness::new();
    let witness = Witness::new();
    let r = h.run(programs::GUEST_NET, &[&witness.addr]).await;
    assert_eq!(r.outcome, Outcome::Exited { code: 0 }, "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(
        stdout(&r),
        "tcp: access-denied\ntcp6: access-denied\nudp: access-denied\n\
         lookup localhost: access-denied\nlookup 127.0.0.1: access-denied\nhttp: HttpRequestDenied\n"
    );
    witness.saw_nothing();
    h.assert_healthy().await;
}

/// What a guest can make of `wasi:http` lives in host memory, outside its memory limit:
/// headers are capped per value and the values a task holds are capped in number.
#[tokio::test]
async fn w05_http_values_a_guest_parks_in_the_host_are_bounded() {
    let h = Harness::new();
    // The resource cap (4096, counting what the guest holds from its start): the most
    // header values it can hold, found by bisection, is just under the cap, and one more
    // ends the task.
    let held = |n: u32| {
        let h = &h;
        async move { h.run(programs::GUEST_NET, &["hoard", &n.to_string()]).await }
    };
    let (mut fits, mut too_many) = (4000, 4097);
    while too_many - fits > 1 {
        let mid = (fits + too_many) / 2;
        let r = held(mid).await;
        if r.outcome == (Outcome::Exited { code: 0 }) {
            assert_eq!(stdout(&r), format!("held {mid}\n"));
            fits = mid;
        } else {
            too_many = mid;
        }
    }
    assert!(fits > 4096 - 32, "the guest's own resources are a handful, not {}", 4096 - fits);
    let r = held(too_many).await;
    let Outcome::Trapped { message } = &r.outcome else { panic!("{:?}", r.outcome) };
    assert!(message.contains("resource table has no free keys"), "{message}");
    // A request's text is capped at 2 KiB a field: at the cap it is kept; a byte more is
    // refused, as a malformed one is. (A scheme is refused past 64 bytes by the http crate's
    // own rule.)
    let r = h.run(programs::GUEST_NET, &["text", "2048"]).await;
    assert_eq!(stdout(&r), "authority ok, path ok, method ok, scheme refused\n");
    let r = h.run(programs::GUEST_NET, &["text", "2049"]).await;
    assert_eq!(stdout(&r), "authority refused, path refused, method refused, scheme refused\n");
    let r = h.run(programs::GUEST_NET, &["header", "4096"]).await;
    assert_eq!(stdout(&r), "header: ok\n");
    // Past the cap on one value's headers (8 KiB), wasmtime-wasi-http ends the task.
    let r = h.run(programs::GUEST_NET, &["header", "65536"]).await;
    let Outcome::Trapped { message } = &r.outcome else { panic!("{:?}", r.outcome) };
    assert!(message.contains("total size of fields exceeds limit"), "{message}");
    h.assert_healthy().await;
}

#[tokio::test]
async fn w05_a_standard_library_connection_fails_as_permission_denied() {
    let h = Harness::new();
    let witness = Witness::new();
    let p = h.prepare(programs::GUEST_SOCKET).await;
    let kinds: Vec<_> =
        p.imports().iter().map(|i| (i.name.split('/').next().unwrap(), i.kind)).collect();
    assert!(kinds.contains(&("wasi:sockets", ImportKind::Denied)), "{kinds:?}");
    let r = h.run(programs::GUEST_SOCKET, &[&witness.addr]).await;
    assert_eq!(r.outcome, Outcome::Exited { code: 0 });
    let out = stdout(&r);
    assert!(out.starts_with("refused: ") && out.contains("ermission denied"), "{out}");
    witness.saw_nothing();
}

#[tokio::test]
async fn w05_imports_outside_wasi_0_2_are_named_and_refused() {
    let h = Harness::new();
    let bytes = wat::parse_str(
        r#"(component
            (import "wasi:http/outgoing-handler@0.2.0" (instance))
            (import "wasi:cli/stdout@0.2.0" (instance))
            (import "wasi:sockets/tcp@0.2.13" (instance))
            (import "wasi:http/incoming-handler@0.2.0" (instance))
            (import "evil:backdoor/shell@1.0.0" (instance)))"#,
    )
    .unwrap();
    let err = h
        .host
        .prepare(Digest::of(&bytes), Metering::Fuel, || async { Ok(bytes) })
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "imports outside the agenix:au/unit world: wasi:sockets/tcp@0.2.13, \
         wasi:http/incoming-handler@0.2.0, evil:backdoor/shell@1.0.0"
    );
    // A component with allowed imports but no command export is refused too.
    let bytes =
        wat::parse_str(r#"(component (import "wasi:cli/stdout@0.2.0" (instance)))"#).unwrap();
    let err = h
        .host
        .prepare(Digest::of(&bytes), Metering::Fuel, || async { Ok(bytes) })
        .await
        .unwrap_err();
    assert_eq!(err, PrepareError::Conformance(ConformanceError::NoRun));
}

#[tokio::test]
async fn w06_stdout_flood_stops_at_the_cap() {
    let h = Harness::new();
    let r = h.run(programs::GUEST_FLOOD, &[]).await;
    assert_eq!(r.outcome, Outcome::OutputExceeded { stream: "stdout".into() });
    assert_eq!(r.stdout.len() as u64, MIB, "exactly the cap is kept");
    let r = h.run(programs::GUEST_FLOOD, &["stderr"]).await;
    assert_eq!(r.outcome, Outcome::OutputExceeded { stream: "stderr".into() });
    assert_eq!(r.stderr.len() as u64, MIB);
    h.assert_healthy().await;
}

#[tokio::test]
async fn w06_scratch_disk_filler_is_stopped() {
    let h = Harness::new();
    let r = h
        .run_with(
            programs::GUEST_FILL,
            &[],
            b"",
            vec![],
            Limits { file_bytes: 8 * MIB, ..limits() },
        )
        .await;
    assert_eq!(r.outcome, Outcome::OutputExceeded { stream: "scratch".into() });
    // The scratch directory is gone once the task is.
    assert_eq!(scratch_dirs(&h), Vec::<PathBuf>::new());
}

/// The scratch directories in the host's scratch directory, each checked to be empty.
fn scratch_dirs(h: &Harness) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        fs::read_dir(h.path("scratch")).unwrap().map(|e| e.unwrap().path()).collect();
    dirs.sort();
    for d in &dirs {
        let left: Vec<_> = fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "{} still holds {left:?}", d.display());
    }
    dirs
}

#[tokio::test]
async fn w06_an_untouched_scratch_directory_serves_the_next_task_and_a_used_one_goes() {
    let h = Harness::new();
    let list = |scratch| {
        h.run_scratch(programs::GUEST_FS, &["list", "/tmp"], b"", vec![], limits(), scratch)
    };
    for _ in 0..5 {
        let r = h.run(programs::GUEST_ECHO, &[]).await;
        assert_eq!(r.outcome, Outcome::Exited { code: 0 });
    }
    // One after another, the tasks that never touched /tmp shared one directory.
    let kept = scratch_dirs(&h);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(stdout(&list(true).await), "ok \n");
    // A task that leaves something behind: its directory is removed, not handed on.
    let w = h.run(programs::GUEST_FS, &["mkdir", "/tmp/left"]).await;
    assert_eq!(stdout(&w), "ok\n");
    assert_eq!(scratch_dirs(&h), Vec::<PathBuf>::new());
    let r = list(true).await;
    assert_eq!(stdout(&r), "ok \n", "the next task sees an empty /tmp");
    // (Listing it may have set its access time: then it is not kept either.)
    assert!(scratch_dirs(&h).len() <= 1);
    // Nor is a file left behind.
    let w = h.run(programs::GUEST_FS, &["write", "/tmp/f"]).await;
    assert_eq!(stdout(&w), "ok\n");
    assert_eq!(scratch_dirs(&h), Vec::<PathBuf>::new(), "a written file is not left for the next");
    // Nor what a task could say through an empty directory: its times.
    let set = h.run(programs::GUEST_FS, &["settime", "/tmp", "12345"]).await;
    assert_eq!(stdout(&set), "ok\n");
    assert_eq!(
        scratch_dirs(&h),
        Vec::<PathBuf>::new(),
        "a directory whose times were set is not kept"
    );
    let read = h.run(programs::GUEST_FS, &["mtime", "/tmp"]).await;
    assert!(stdout(&read).starts_with("ok ") && stdout(&read) != "ok 12345\n", "{}", stdout(&read));
    // Without a scratch, there is no /tmp at all, and no directory is made for it.
    let before = scratch_dirs(&h);
    let r = list(false).await;
    assert_eq!(r.outcome, Outcome::Exited { code: 1 }, "{}", stdout(&r));
    let w =
        h.run_scratch(programs::GUEST_FS, &["write", "/tmp/f"], b"", vec![], limits(), false).await;
    assert_eq!(w.outcome, Outcome::Exited { code: 1 }, "{}", stdout(&w));
    assert_eq!(scratch_dirs(&h), before);
}

/// What a task leaves in its scratch counts when it ends, however soon: the same task is
/// over its limit whether or not the watch looked in time.
#[tokio::test]
async fn w06_scratch_over_the_limit_at_the_end_is_caught_however_short_the_task() {
    let h = Harness::new();
    let write = |file_bytes, grants| {
        let limits = Limits { file_bytes, ..limits() };
        h.run_with(programs::GUEST_FS, &["write", "/tmp/f"], b"", grants, limits)
    };
    for _ in 0..5 {
        let r = write(4, vec![]).await;
        assert_eq!(r.outcome, Outcome::OutputExceeded { stream: "scratch".into() });
    }
    // At the limit, it succeeds ("written by guest" is 16 bytes).
    let r = write(16, vec![]).await;
    assert_eq!(r.outcome, Outcome::Exited { code: 0 });
    // A mount over /tmp would hide the scratch (and its limit): refused.
    let dir = h.path("data");
    fs::create_dir_all(&dir).unwrap();
    let r = write(limits().file_bytes, grant(&dir, "/tmp", Access::ReadWrite)).await;
    let Outcome::Refused { reason } = &r.outcome else { panic!("{:?}", r.outcome) };
    assert!(reason.contains("would hide the task's scratch /tmp"), "{reason}");
}

/// A tree whose host paths are too long to name, or deeper than the watch walks, hides
/// nothing: it counts, or counts as over the limit.
#[tokio::test]
async fn w06_scratch_in_a_deep_tree_counts() {
    let h = Harness::new();
    let h = &h;
    let deep = |levels: &'static str, name: &'static str, bytes: &'static str, file_bytes| {
        let limits = Limits { file_bytes, ..limits() };
        async move {
            let args = ["deep", "/tmp", levels, name, bytes];
            h.run_with(programs::GUEST_FS, &args, b"", vec![], limits).await
        }
    };
    // 40 levels of 101-byte names: the guest's path to the bottom is under 4096 bytes, the
    // host's (longer by the scratch directory's own path) over it; 2 MB at the bottom.
    let r = deep("40", "101", "2000000", MIB).await;
    assert_eq!(r.outcome, Outcome::OutputExceeded { stream: "scratch".into() }, "{}", stdout(&r));
    let r = deep("40", "101", "2000000", 4 * MIB).await;
    assert_eq!(r.outcome, Outcome::Exited { code: 0 }, "{}", stdout(&r));
    // Deeper than 64 levels counts as over the limit, whatever it holds.
    let r = deep("70", "1", "1", 4 * MIB).await;
    assert_eq!(r.outcome, Outcome::OutputExceeded { stream: "scratch".into() }, "{}", stdout(&r));
    let r = deep("60", "1", "1", 4 * MIB).await;
    assert_eq!(r.outcome, Outcome::Exited { code: 0 }, "{}", stdout(&r));
    assert_eq!(scratch_dirs(h).len(), 0, "every one of them was removed");
}

#[tokio::test]
async fn w06_scratch_space_held_by_a_deleted_file_still_counts() {
    let h = Harness::new();
    let r = h
        .run_with(
            programs::GUEST_UNLINKED,
            &[],
            b"",
            vec![],
            Limits { file_bytes: 16 * MIB, ..limits() },
        )
        .await;
    assert_eq!(r.outcome, Outcome::OutputExceeded { stream: "scratch".into() }, "{}", stdout(&r));
}

/// W12: the pages one task touched are zero for the next, though the pool keeps them
/// resident (where the kernel has PAGEMAP_SCAN) rather than handing them back.
#[tokio::test]
async fn w12_a_task_finds_nothing_of_the_one_before_in_its_memory() {
    // One slot: each task takes the memory the one before it used.
    let h = Harness::with(1, None);
    // What a first task finds: the grown pages are zero; the heap buffer holds what the
    // guest's own start-up left in memory it freed (the same in every run).
    let first = h.run(programs::GUEST_RESIDUE, &["check"]).await;
    assert!(stdout(&first).starts_with("grown 0 heap "), "{}", stdout(&first));
    for _ in 0..3 {
        let d = h.run(programs::GUEST_RESIDUE, &["dirty"]).await;
        assert_eq!(stdout(&d), "dirtied\n", "{:?}", d.outcome);
        let c = h.run(programs::GUEST_RESIDUE, &["check"]).await;
        assert_eq!(stdout(&c), stdout(&first), "{:?}", c.outcome);
    }
    println!("w12: pages kept resident between tasks: {}", h.host.keeps_pages_resident());
}

#[tokio::test]
async fn w07_exit_codes_survive_and_traps_are_distinct() {
    let h = Harness::new();
    for code in [0, 1, 2, 3, 42, 255] {
        let r = h.run(programs::GUEST_EXIT, &[&code.to_string()]).await;
        assert_eq!(r.outcome, Outcome::Exited { code }, "exit {code}");
    }
    let r = h.run(programs::GUEST_EXIT, &["trap"]).await;
    let Outcome::Trapped { message } = &r.outcome else { panic!("{:?}", r.outcome) };
    assert!(message.contains("unreachable"), "{message}");
    let r = h.run(programs::GUEST_EXIT, &["panic"]).await;
    assert!(matches!(r.outcome, Outcome::Trapped { .. }), "{:?}", r.outcome);
    assert!(String::from_utf8_lossy(&r.stderr).contains("deliberate panic"));
}

#[tokio::test]
async fn w08_huge_random_request_is_refused_and_args_env_are_exact() {
    let h = Harness::new();
    let r = h.run(programs::GUEST_RANDOM, &["1024"]).await;
    assert_eq!(stdout(&r), "got 1024 random bytes\n");
    let r = h.run(programs::GUEST_RANDOM, &["1000000000"]).await;
    assert!(matches!(r.outcome, Outcome::Trapped { .. }), "{:?}", r.outcome);

    // The most a plan may pass (256 arguments of 4 KiB) arrives intact.
    let big: Vec<String> = (0..256).map(|i| format!("{i:04}{}", "x".repeat(4092))).collect();
    let p = h.prepare(programs::GUEST_ECHO).await;
    let task = WasmTask {
        program: "echo".into(),
        args: big.clone(),
        env: vec![("ONLY".into(), "this".into())],
        stdin: Bytes::from_static(b"abc"),
        grants: vec![],
        limits: Limits { output_bytes: 4 * MIB, ..limits() },
        scratch: true,
    };
    let r = h.host.run(&p, task).await.unwrap();
    assert_eq!(r.outcome, Outcome::Exited { code: 0 });
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(err.lines().filter(|l| l.starts_with("arg ")).count(), 257);
    assert!(err.contains(&format!("arg {}", big[255])));
    let env: Vec<_> = err.lines().filter(|l| l.starts_with("env ")).collect();
    assert_eq!(env, ["env ONLY=this"], "nothing but the given environment");
    assert!(err.contains("stdin 3"));
}

#[tokio::test]
async fn w09_malformed_bytes_get_a_clear_error() {
    let h = Harness::new();
    let component = fs::read(programs::GUEST_ECHO).unwrap();
    let core = wat::parse_str("(module)").unwrap();
    for (bytes, expect) in [
        (vec![], "does not start with the wasm magic bytes (0 bytes)"),
        (b"#!/bin/sh\necho hi\n".to_vec(), "does not start with the wasm magic bytes"),
        (core, "a core wasm module, not a component (build with --target wasm32-wasip2)"),
        (component[..component.len() / 2].to_vec(), "not a valid WebAssembly component"),
        (b"\0asm\x0d\0\x01\0garbage".to_vec(), "not a valid WebAssembly component"),
    ] {
        let err = h
            .host
            .prepare(Digest::of(&bytes), Metering::Fuel, || async { Ok(bytes) })
            .await
            .unwrap_err();
        assert!(matches!(err, PrepareError::Invalid(_)), "{err:?}");
        assert!(err.to_string().contains(expect), "{err} does not say {expect:?}");
    }
    h.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w10_many_tasks_wait_for_a_slot_and_leave_nothing_behind() {
    let h = Arc::new(Harness::with(4, None));
    let p = h.prepare(programs::GUEST_EXIT).await;
    let mut set = tokio::task::JoinSet::new();
    let total = 10_000;
    let mut done = 0;
    for i in 0..total {
        // Keep 64 in flight against a pool of 4: the rest wait for a slot.
        if set.len() >= 64 {
            let r: Finished = set.join_next().await.unwrap().unwrap();
            assert_eq!(r.outcome, Outcome::Exited { code: 7 });
            done += 1;
        }
        let (h, p) = (h.clone(), p.clone());
        set.spawn(async move {
            let task = WasmTask {
                program: format!("exit-{i}"),
                args: vec!["7".into()],
                env: vec![],
                stdin: Bytes::new(),
                grants: vec![],
                limits: limits(),
                scratch: true,
            };
            h.host.run(&p, task).await.unwrap()
        });
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(r.unwrap().outcome, Outcome::Exited { code: 7 });
        done += 1;
    }
    assert_eq!(done, total);
    if let Some(live) = h.host.live_instances() {
        assert_eq!(live, 0, "pool slots leaked");
    } else {
        println!("w10: pooling allocator unavailable here; checked completion only");
    }
    // What is left is empty, and no more than the tasks that can run at once.
    assert!(scratch_dirs(&h).len() <= 4, "scratch directories leaked");
}

#[tokio::test]
async fn p06_component_bytes_not_matching_the_digest_are_refused_before_compiling() {
    let h = Harness::new();
    let bytes = fs::read(programs::GUEST_ECHO).unwrap();
    let pinned = Digest::of(b"the component the plan pinned");
    let err = h.host.prepare(pinned, Metering::Fuel, || async { Ok(bytes) }).await.unwrap_err();
    assert!(
        matches!(err, PrepareError::DigestMismatch { expected, .. } if expected == pinned),
        "{err:?}"
    );
}

#[tokio::test]
async fn metered_and_unmetered_artifacts_are_cached_apart_and_each_reused() {
    let cache = tempfile::tempdir().unwrap();
    let bytes = fs::read(programs::GUEST_ECHO).unwrap();
    let digest = Digest::of(&bytes);
    {
        let h = Harness::with(2, Some(cache.path()));
        for m in [Metering::Fuel, Metering::Unmetered] {
            let b = bytes.clone();
            h.host.prepare(digest, m, || async { Ok(b) }).await.unwrap();
        }
    }
    let engines = engine_dirs(cache.path());
    assert_eq!(engines.len(), 2, "one engine directory per metering: {engines:?}");
    assert_eq!(artifacts(cache.path()), artifact_names(&[digest, digest]));
    // A new process (host) loads each from its own directory, fetching nothing, and each
    // runs as its metering says.
    let h = Harness::with(2, Some(cache.path()));
    for m in [Metering::Fuel, Metering::Unmetered] {
        let p = h
            .host
            .prepare(digest, m, || async { Err(PrepareError::Fetch("must not be fetched".into())) })
            .await
            .unwrap();
        let fuel = if m == Metering::Fuel { 1_000_000_000 } else { UNMETERED };
        let task = WasmTask {
            program: "echo".into(),
            args: vec![],
            env: vec![],
            stdin: Bytes::from_static(b"cached"),
            grants: vec![],
            limits: Limits { fuel, ..limits() },
            scratch: true,
        };
        let r = h.host.run(&p, task).await.unwrap();
        assert_eq!((r.outcome, &r.stdout[..]), (Outcome::Exited { code: 0 }, &b"cached"[..]));
        assert_eq!(r.fuel_consumed.is_some(), m == Metering::Fuel);
    }
}

fn engine_dirs(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("wasmtime-"))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn an_unmetered_engine_that_cannot_start_is_named_and_metered_tasks_go_on() {
    let cache = tempfile::tempdir().unwrap();
    let metered = {
        let _h = Harness::with(1, Some(cache.path()));
        engine_dirs(cache.path())
    };
    {
        let h = Harness::with(1, Some(cache.path()));
        h.host.start_unmetered().await.unwrap();
    }
    let unmetered: Vec<_> =
        engine_dirs(cache.path()).into_iter().filter(|d| !metered.contains(d)).collect();
    assert_eq!(unmetered.len(), 1, "{unmetered:?}");
    // Something that is not a directory where the unmetered engine keeps its artifacts.
    let blocked = cache.path().join(&unmetered[0]);
    fs::remove_dir_all(&blocked).unwrap();
    fs::write(&blocked, b"x").unwrap();
    let h = Harness::with(1, Some(cache.path()));
    let e = h.host.start_unmetered().await.unwrap_err().to_string();
    assert!(e.contains("(engine of unmetered tasks)"), "{e}");
    let bytes = fs::read(programs::GUEST_ECHO).unwrap();
    let b = bytes.clone();
    let e = h
        .host
        .prepare(Digest::of(&bytes), Metering::Unmetered, || async { Ok(b) })
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot start the engine"), "{e}");
    h.assert_healthy().await;
    // Once the fault is gone, the engine starts, without a new host.
    fs::remove_file(&blocked).unwrap();
    h.host.start_unmetered().await.unwrap();
}

#[tokio::test]
async fn precompiled_artifacts_are_reused_and_damaged_ones_recompiled() {
    let cache = tempfile::tempdir().unwrap();
    let bytes = fs::read(programs::GUEST_ECHO).unwrap();
    let digest = Digest::of(&bytes);
    {
        let h = Harness::with(2, Some(cache.path()));
        let b = bytes.clone();
        h.host.prepare(digest, Metering::Fuel, || async { Ok(b) }).await.unwrap();
    }
    // A new process (host) loads the artifact without fetching the component.
    let h = Harness::with(2, Some(cache.path()));
    let p = h
        .host
        .prepare(digest, Metering::Fuel, || async {
            Err(PrepareError::Fetch("must not be fetched".into()))
        })
        .await
        .unwrap();
    assert_eq!(p.digest(), digest);
    // Flip one byte of every artifact (past its checksum): the next host notices, fetches the
    // component again and recompiles it.
    for entry in walk(cache.path()) {
        let mut art = fs::read(&entry).unwrap();
        let last = art.len() - 1;
        art[last] ^= 0xff;
        fs::write(&entry, art).unwrap();
    }
    let h = Harness::with(2, Some(cache.path()));
    let fetched = std::sync::atomic::AtomicUsize::new(0);
    let b = bytes.clone();
    h.host
        .prepare(digest, Metering::Fuel, || async {
            fetched.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(b)
        })
        .await
        .unwrap();
    assert_eq!(
        fetched.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the damaged artifact must not be used"
    );
    let r = h.run_with(programs::GUEST_ECHO, &[], b"ok", vec![], limits()).await;
    assert_eq!(&r.stdout[..], b"ok");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

/// `component` with a custom section naming `n` appended: a distinct component (its digest
/// differs) that compiles and behaves exactly like the original.
fn variant(component: &[u8], n: u32) -> Vec<u8> {
    fn leb128(mut v: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"agenix-test-variant";
    let mut payload = Vec::new();
    leb128(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(&n.to_le_bytes());
    let mut out = component.to_vec();
    out.push(0); // a custom section
    leb128(payload.len(), &mut out);
    out.extend(payload);
    out
}

fn variants(path: &str, ns: std::ops::Range<u32>) -> (Vec<Vec<u8>>, Vec<Digest>) {
    let base = fs::read(path).unwrap();
    let v: Vec<Vec<u8>> = ns.map(|n| variant(&base, n)).collect();
    let d = v.iter().map(|b| Digest::of(b)).collect();
    (v, d)
}

/// The artifacts in every engine directory under a cache root, by file name, sorted; the
/// directories and files are not followed if they are symlinks.
fn artifacts(root: &Path) -> Vec<String> {
    let mut out = vec![];
    for e in fs::read_dir(root).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if !name.starts_with("wasmtime-") || !e.path().symlink_metadata().unwrap().is_dir() {
            continue;
        }
        for f in fs::read_dir(e.path()).unwrap() {
            let f = f.unwrap();
            let name = f.file_name().into_string().unwrap();
            if name.ends_with(".cwasm") && f.path().symlink_metadata().unwrap().is_file() {
                out.push(name);
            }
        }
    }
    out.sort();
    out
}

fn artifact_names(digests: &[Digest]) -> Vec<String> {
    let mut out: Vec<String> = digests.iter().map(|d| format!("{}.cwasm", d.hex())).collect();
    out.sort();
    out
}

/// Waits until a file written now gets a later mtime than files written before the call, so
/// that uses of artifacts before and after it are ordered on disk whatever the granularity
/// of the file system's timestamps. (Sequencing, not a speed assertion.)
fn advance_file_clock() {
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe");
    let stamp = |n: u32| {
        fs::write(&probe, n.to_le_bytes()).unwrap();
        fs::metadata(&probe).unwrap().modified().unwrap()
    };
    let before = stamp(0);
    for n in 1.. {
        std::thread::sleep(Duration::from_millis(1));
        if stamp(n) > before {
            return;
        }
    }
}

#[tokio::test]
async fn prepared_components_are_kept_within_the_memory_budget_least_recently_used_first() {
    let (v, d) = variants(programs::GUEST_ECHO, 0..4);
    // What one variant is counted as (they differ only in a custom section).
    let cost = Harness::new().prepare_bytes(&v[0]).await.cost_bytes();
    assert!(cost > 0);
    // Room for three.
    let budget = CacheBudget { prepared_bytes: 3 * cost + cost / 2, ..CacheBudget::default() };
    let h = Harness::with_budget(4, None, budget);
    let first = h.prepare_bytes(&v[0]).await;
    h.prepare_bytes(&v[1]).await;
    h.prepare_bytes(&v[2]).await;
    assert_eq!((h.host.prepared_count(), h.host.prepared_bytes()), (3, 3 * cost));

    // Using the first makes the second the least recently used: the fourth evicts it.
    assert!(Arc::ptr_eq(&h.prepare_kept(d[0]).await.unwrap(), &first), "kept, not recompiled");
    h.prepare_bytes(&v[3]).await;
    assert_eq!((h.host.prepared_count(), h.host.prepared_bytes()), (3, 3 * cost));
    for i in [0, 2, 3] {
        assert!(h.prepare_kept(d[i]).await.is_ok(), "variant {i} is kept");
    }
    let err = h.prepare_kept(d[1]).await.unwrap_err();
    assert!(matches!(err, PrepareError::Fetch(_)), "variant 1 is evicted: {err:?}");

    // The evicted one is prepared again when needed (evicting the least recently used,
    // variant 0), and runs.
    let again = h.prepare_bytes(&v[1]).await;
    assert_eq!(again.digest(), d[1]);
    h.assert_echoes(&again).await;
    assert_eq!((h.host.prepared_count(), h.host.prepared_bytes()), (3, 3 * cost));
    assert!(h.prepare_kept(d[0]).await.is_err());
    // A component evicted while someone holds it still runs for them.
    h.assert_echoes(&first).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_prepares_compile_once_and_eviction_never_breaks_a_run() {
    let (v, d) = variants(programs::GUEST_NAP, 0..2);
    let cost = Harness::new().prepare_bytes(&v[0]).await.cost_bytes();
    // Room for one.
    let budget = CacheBudget { prepared_bytes: cost, ..CacheBudget::default() };
    let h = Arc::new(Harness::with_budget(4, None, budget));

    let fetched = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (h, fetched, bytes, d0) = (h.clone(), fetched.clone(), v[0].clone(), d[0]);
        set.spawn(async move {
            h.host
                .prepare(d0, Metering::Fuel, || async move {
                    fetched.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Ok(bytes)
                })
                .await
                .unwrap()
        });
    }
    let prepared: Vec<Arc<Prepared>> = set.join_all().await;
    assert_eq!(fetched.load(std::sync::atomic::Ordering::SeqCst), 1, "compiled once");
    assert!(prepared.iter().all(|p| Arc::ptr_eq(p, &prepared[0])));
    let nap = prepared[0].clone();
    drop(prepared);

    // Start a run of it, evict it while the run is (most likely) in progress, and the run
    // still ends well.
    let run = {
        let (h, nap) = (h.clone(), nap.clone());
        tokio::spawn(async move {
            let task = WasmTask {
                program: "nap".into(),
                args: vec!["500".into()],
                env: vec![],
                stdin: Bytes::from_static(b"survived"),
                grants: vec![],
                limits: limits(),
                scratch: true,
            };
            h.host.run(&nap, task).await.unwrap()
        })
    };
    if h.host.live_instances().is_some() {
        // Wait until it has been instantiated (bounded by the test's own timeout).
        tokio::time::timeout(Duration::from_secs(60), async {
            while h.host.live_instances() == Some(0) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .unwrap();
    }
    h.prepare_bytes(&v[1]).await;
    assert_eq!(h.host.prepared_count(), 1);
    assert!(h.prepare_kept(d[0]).await.is_err(), "evicted");
    let r = run.await.unwrap();
    assert_eq!(r.outcome, Outcome::Exited { code: 0 });
    assert_eq!(&r.stdout[..], b"survived");
    assert_eq!(Arc::strong_count(&nap), 1, "nobody else holds it");
}

#[tokio::test]
async fn a_component_larger_than_the_budgets_still_runs_and_is_not_kept() {
    let cache = tempfile::tempdir().unwrap();
    let budget = CacheBudget { prepared_bytes: 4096, artifact_bytes: 4096 };
    let h = Harness::with_budget(2, Some(cache.path()), budget);
    let bytes = fs::read(programs::GUEST_ECHO).unwrap();
    for _ in 0..2 {
        let p = h.prepare_bytes(&bytes).await;
        assert!(p.cost_bytes() > 4096);
        h.assert_echoes(&p).await;
        assert_eq!((h.host.prepared_count(), h.host.prepared_bytes()), (0, 0));
        assert_eq!(h.host.cached_artifact_bytes().unwrap().unwrap(), 0);
        assert!(artifacts(cache.path()).is_empty());
    }
    assert!(h.prepare_kept(Digest::of(&bytes)).await.is_err(), "not kept anywhere");
}

#[tokio::test]
async fn the_artifact_cache_stays_within_its_budget_least_recently_used_first() {
    let (v, d) = variants(programs::GUEST_ECHO, 10..13);
    // The size of one artifact (they differ only in a custom section).
    let size = {
        let probe = tempfile::tempdir().unwrap();
        let h = Harness::with(2, Some(probe.path()));
        h.prepare_bytes(&v[0]).await;
        h.host.cached_artifact_bytes().unwrap().unwrap()
    };
    assert!(size > 0);
    assert!(Harness::new().host.cached_artifact_bytes().unwrap().is_none(), "no cache, no figure");

    // Nothing is kept in memory, so every preparation goes to the disk; it has room for two.
    let cache = tempfile::tempdir().unwrap();
    let budget = CacheBudget { prepared_bytes: 0, artifact_bytes: 2 * size + size / 2 };
    let h = Harness::with_budget(2, Some(cache.path()), budget);
    h.prepare_bytes(&v[0]).await;
    advance_file_clock();
    h.prepare_bytes(&v[1]).await;
    assert_eq!(artifacts(cache.path()), artifact_names(&d[..2]));
    advance_file_clock();

    // Loading the first from disk marks it as used: the third evicts the second.
    h.prepare_kept(d[0]).await.unwrap();
    advance_file_clock();
    h.prepare_bytes(&v[2]).await;
    assert_eq!(artifacts(cache.path()), artifact_names(&[d[0], d[2]]));
    assert_eq!(h.host.cached_artifact_bytes().unwrap().unwrap(), 2 * size);
    assert!(h.prepare_kept(d[1]).await.is_err(), "evicted");
    advance_file_clock();

    // The evicted one is compiled and cached again when needed, and runs; the least recently
    // used (the first) makes room.
    let p = h.prepare_bytes(&v[1]).await;
    h.assert_echoes(&p).await;
    assert_eq!(artifacts(cache.path()), artifact_names(&[d[1], d[2]]));
    assert!(h.host.cached_artifact_bytes().unwrap().unwrap() <= budget.artifact_bytes);
    // A new host (process) loads what is on disk without fetching.
    let h = Harness::with_budget(2, Some(cache.path()), budget);
    h.assert_echoes(&h.prepare_kept(d[2]).await.unwrap()).await;
}

#[tokio::test]
async fn the_artifact_sweep_follows_no_symlink_and_spares_files_being_written() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let (cache, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (root, out) = (cache.path(), outside.path());
    let hex = |n: u8| format!("{n:02x}").repeat(32);
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    let age = |p: &Path| {
        fs::File::options().write(true).open(p).unwrap().set_modified(two_hours_ago).unwrap()
    };
    // A host opens the cache once, to name its engine directory.
    drop(Harness::with(1, Some(root)));
    let engine = fs::read_dir(root).unwrap().next().unwrap().unwrap().path();
    let mib = vec![7u8; MIB as usize];

    // Outside the cache: an old artifact-like file, reachable through a symlink named like an
    // artifact and through a symlink named like an engine directory.
    let target = out.join(format!("{}.cwasm", hex(1)));
    fs::write(&target, &mib).unwrap();
    age(&target);
    symlink(&target, engine.join(format!("{}.cwasm", hex(2)))).unwrap();
    symlink(out, root.join("wasmtime-00000000000000aa")).unwrap();
    // The directory of an engine no longer in use, with an old artifact: the first to go.
    let stale = root.join("wasmtime-00000000deadbeef");
    fs::create_dir(&stale).unwrap();
    fs::set_permissions(&stale, fs::Permissions::from_mode(0o700)).unwrap();
    let stale_artifact = stale.join(format!("{}.cwasm", hex(3)));
    fs::write(&stale_artifact, &mib).unwrap();
    age(&stale_artifact);
    // Temporary files: one being written, one an hour-long writer still holds (locked), and
    // one a crashed writer left.
    fs::write(engine.join(".cwasm-writing"), &mib).unwrap();
    let slow = fs::File::create(engine.join(".cwasm-slow")).unwrap();
    slow.lock().unwrap();
    (&slow).write_all(&mib).unwrap();
    slow.set_modified(two_hours_ago).unwrap();
    fs::write(engine.join(".cwasm-crashed"), &mib).unwrap();
    age(&engine.join(".cwasm-crashed"));
    // Files that are none of the cache's business.
    fs::write(root.join("notes.txt"), "keep").unwrap();
    fs::write(engine.join("notes.txt"), "keep").unwrap();

    // Room for the old artifact or a new one, not both.
    let budget = CacheBudget { artifact_bytes: MIB + 1, ..CacheBudget::default() };
    let h = Harness::with_budget(2, Some(root), budget);
    assert_eq!(h.host.cached_artifact_bytes().unwrap().unwrap(), MIB, "symlinks are not counted");
    let bytes = fs::read(programs::GUEST_ECHO).unwrap();
    let p = h.prepare_bytes(&bytes).await;
    h.assert_echoes(&p).await;

    assert!(!stale_artifact.exists(), "the least recently used artifact is evicted");
    assert!(stale.is_dir(), "its directory stays (another process may still use it)");
    assert_eq!(artifacts(root), artifact_names(&[Digest::of(&bytes)]));
    let kept = h.host.cached_artifact_bytes().unwrap().unwrap();
    assert!(kept > 0 && kept <= budget.artifact_bytes, "{kept}");
    assert_eq!(fs::read(&target).unwrap(), mib, "nothing outside is touched");
    assert!(engine.join(format!("{}.cwasm", hex(2))).symlink_metadata().unwrap().is_symlink());
    assert!(root.join("wasmtime-00000000000000aa").symlink_metadata().unwrap().is_symlink());
    assert!(engine.join(".cwasm-writing").exists(), "a file being written is spared");
    assert!(engine.join(".cwasm-slow").exists(), "a locked file is spared, however old");
    assert!(!engine.join(".cwasm-crashed").exists(), "an abandoned one is removed");
    assert!(root.join("notes.txt").exists() && engine.join("notes.txt").exists());
    drop(slow);
}

// Components built from other languages (CPython through componentize-py, JavaScript
// through componentize-js): the same limits, exit codes, network denials and mounts as the
// Rust guests above.

/// A harness whose artifact cache all these tests share: the Python and JavaScript
/// components (18 MB and 12 MB) are compiled once per test run, not once per test.
fn lang_harness() -> Harness {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lang-artifacts");
    fs::create_dir_all(&cache).unwrap();
    Harness::with(4, Some(&cache))
}

fn csv_orders() -> Vec<u8> {
    fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data/orders.csv")).unwrap()
}

#[tokio::test]
async fn l1_python_au_runs_keeps_its_exit_codes_and_describes_itself() {
    let h = lang_harness();
    let r =
        h.run_with(programs::AU_CSVSTAT, &["-c", "amount"], &csv_orders(), vec![], limits()).await;
    assert_eq!(r.outcome, Outcome::Exited { code: 0 }, "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(
        stdout(&r),
        "{\"column\":\"amount\",\"values\":6,\"empty\":0,\"distinct\":6,\"min\":42,\"max\":310.25,\
         \"sum\":835.84,\"mean\":139.3066666667}\n"
    );
    let r = h.run_with(programs::AU_CSVSTAT, &[], b"a,b\n1,2\n3\n", vec![], limits()).await;
    assert_eq!(r.outcome, Outcome::Exited { code: 2 });
    assert_eq!(String::from_utf8_lossy(&r.stderr), "csvstat: line 3: 1 fields, the header has 2\n");
    let r = h.run_with(programs::AU_CSVSTAT, &["-x"], b"", vec![], limits()).await;
    assert_eq!(r.outcome, Outcome::Exited { code: 2 });
    for delim in ["\"", "\n", "\r", "ab"] {
        let r = h.run_with(programs::AU_CSVSTAT, &["-d", delim], b"a\n", vec![], limits()).await;
        assert_eq!(r.outcome, Outcome::Exited { code: 2 }, "-d {delim:?}");
    }
    // A byte-order mark is not part of the first name; only plain decimals are numbers; a
    // sum past the range of a double has no JSON number.
    let csv = "\u{feff}n,m\n1_000,1e308\n\u{0661},1e308\n".as_bytes();
    // (U+0661 is an Arabic-Indic digit one: text here, as `1_000` is.)
    let r = h.run_with(programs::AU_CSVSTAT, &[], csv, vec![], limits()).await;
    assert_eq!(
        stdout(&r),
        "{\"column\":\"n\",\"values\":2,\"empty\":0,\"distinct\":2,\"top\":\"1_000\",\"top_count\":1}\n\
         {\"column\":\"m\",\"values\":2,\"empty\":0,\"distinct\":1,\"min\":1e+308,\"max\":1e+308,\
         \"sum\":null,\"mean\":null}\n"
    );
    let r = h.run(programs::AU_CSVSTAT, &["--describe"]).await;
    let card = agenix_proto::card::Card::from_json(&r.stdout).unwrap();
    assert_eq!(card.name.as_str(), "csvstat");
    for code in [0, 3, 42, 255] {
        let r = h.run(programs::PROBE_PY, &["exit", &code.to_string()]).await;
        assert_eq!(r.outcome, Outcome::Exited { code }, "exit {code}");
    }
    // An exception nothing catches ends the run as a trap, its traceback on stderr.
    let r = h.run(programs::PROBE_PY, &["raise"]).await;
    assert!(matches!(r.outcome, Outcome::Trapped { .. }), "{:?}", r.outcome);
    assert!(String::from_utf8_lossy(&r.stderr).contains("RuntimeError: the probe raised"));
}

#[tokio::test]
async fn l1_javascript_au_runs_keeps_its_exit_codes_and_describes_itself() {
    let h = lang_harness();
    let rows = b"{\"id\":1,\"who\":{\"name\":\"ada\"},\"x\":true}\n\n{\"id\":2}\n";
    let r =
        h.run_with(programs::AU_RESHAPE, &["who.name=name", "id"], rows, vec![], limits()).await;
    assert_eq!(r.outcome, Outcome::Exited { code: 0 }, "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(stdout(&r), "{\"name\":\"ada\",\"id\":1}\n{\"name\":null,\"id\":2}\n");
    let r = h.run_with(programs::AU_RESHAPE, &["--drop", "x"], rows, vec![], limits()).await;
    assert_eq!(stdout(&r), "{\"id\":1,\"who\":{\"name\":\"ada\"}}\n{\"id\":2}\n");
    let r = h.run_with(programs::AU_RESHAPE, &["id"], b"{\"id\":1}\n[2]\n", vec![], limits()).await;
    assert_eq!(r.outcome, Outcome::Exited { code: 2 });
    assert_eq!(stdout(&r), "{\"id\":1}\n", "what came before the bad line is kept");
    assert_eq!(String::from_utf8_lossy(&r.stderr), "reshape: line 2: not a JSON object\n");
    // `__proto__` is a field like any other.
    let r = h
        .run_with(
            programs::AU_RESHAPE,
            &["__proto__", "a=__proto__"],
            b"{\"__proto__\":1,\"a\":2}\n",
            vec![],
            limits(),
        )
        .await;
    assert_eq!(stdout(&r), "{\"__proto__\":2}\n");
    // Nesting past what the engine can write back fails on its line, naming it.
    let deep = format!("{{\"id\":1}}\n{}1{}\n", "{\"a\":".repeat(5_000), "}".repeat(5_000));
    let r =
        h.run_with(programs::AU_RESHAPE, &["--drop", "x"], deep.as_bytes(), vec![], limits()).await;
    assert_eq!(r.outcome, Outcome::Exited { code: 2 }, "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(stdout(&r), "{\"id\":1}\n");
    assert!(String::from_utf8_lossy(&r.stderr).starts_with("reshape: line 2: "));
    let r = h.run(programs::AU_RESHAPE, &["--describe"]).await;
    let card = agenix_proto::card::Card::from_json(&r.stdout).unwrap();
    assert_eq!(card.name.as_str(), "reshape");
    for code in [0, 3, 42, 255] {
        let r = h.run(programs::PROBE_JS, &["exit", &code.to_string()]).await;
        assert_eq!(r.outcome, Outcome::Exited { code }, "exit {code}");
    }
    let r = h.run(programs::PROBE_JS, &["throw"]).await;
    assert_eq!(r.outcome, Outcome::Exited { code: 1 });
}

#[tokio::test]
async fn l2_python_and_javascript_stop_at_fuel_memory_and_time() {
    let h = lang_harness();
    for probe in [programs::PROBE_PY, programs::PROBE_JS] {
        let fuel = Limits { fuel: 300_000_000, ..limits() };
        let r = h.run_with(probe, &["spin"], b"", vec![], fuel).await;
        assert_eq!(r.outcome, Outcome::OutOfFuel, "{probe}");
        assert_eq!(r.fuel_consumed, Some(300_000_000));
        let memory = Limits { memory_bytes: 48 * MIB, ..limits() };
        let r = h.run_with(probe, &["grow"], b"", vec![], memory).await;
        assert_eq!(r.outcome, Outcome::MemoryExceeded, "{probe}");
        assert!(r.peak_memory <= 48 * MIB, "{probe}: {}", r.peak_memory);
        let time = Limits { timeout_ms: 700, fuel: Limits::ABSOLUTE.fuel, ..limits() };
        let r = h.run_with(probe, &["spin"], b"", vec![], time).await;
        assert_eq!(r.outcome, Outcome::TimedOut, "{probe}");
    }
    let time = Limits { timeout_ms: 700, ..limits() };
    let r = h.run_with(programs::PROBE_PY, &["sleep"], b"", vec![], time).await;
    assert_eq!(r.outcome, Outcome::TimedOut);
    h.assert_healthy().await;
}

#[tokio::test]
async fn w05_python_gets_the_denial_as_an_exception_and_nothing_leaves() {
    let h = lang_harness();
    let witness = Witness::new();
    let port = witness.addr.rsplit_once(':').unwrap().1;
    for target in [witness.addr.clone(), format!("localhost:{port}")] {
        let r = h.run(programs::PROBE_PY, &["net", &target]).await;
        assert_eq!(
            r.outcome,
            Outcome::Exited { code: 0 },
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert_eq!(
            stdout(&r),
            "socket: PermissionError: [Errno 2] Permission denied\n\
             urlopen: URLError: <urlopen error [Errno 2] Permission denied>\n",
            "{target}"
        );
    }
    witness.saw_nothing();
}

#[tokio::test]
async fn w05_javascript_fetch_is_denied_and_nothing_leaves() {
    let h = lang_harness();
    let witness = Witness::new();
    for url in [format!("http://{}/", witness.addr), "https://example.com/".into()] {
        let r = h.run(programs::PROBE_JS, &["fetch", &url]).await;
        assert_eq!(
            r.outcome,
            Outcome::Exited { code: 0 },
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );
        let out = stdout(&r);
        assert!(out.starts_with("fetch: Error: ") && !out.contains("OPEN"), "{url}: {out}");
    }
    witness.saw_nothing();
}

#[tokio::test]
async fn w03_python_cannot_read_outside_its_mounts() {
    let (h, data, secret) = fs_fixture_with(lang_harness());
    let g = grant(&data, "/data", Access::ReadOnly);
    let run = |args: Vec<String>| {
        let g = g.clone();
        let h = &h;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            h.run_with(programs::PROBE_PY, &args, b"", g, limits()).await
        }
    };
    let r = run(vec!["read".into(), "/data/file.txt".into()]).await;
    assert_eq!(stdout(&r), "mounted contents\nread: OPEN\n");
    let secret_text = fs::read_to_string(&secret).unwrap();
    let outside = [
        "/data/../secret".to_string(),
        "../secret".into(),
        secret.to_str().unwrap().into(),
        "/etc/passwd".into(),
        "/proc/self/environ".into(),
    ];
    for path in outside {
        let r = run(vec!["read".into(), path.clone()]).await;
        let out = stdout(&r);
        assert!(out.starts_with("read: ") && out.contains("Error"), "{path}: {out}");
        assert!(!out.contains(secret_text.trim()), "{path}: {out}");
    }
    let r = run(vec!["list".into(), "/".into()]).await;
    assert!(!stdout(&r).contains("secret"), "{}", stdout(&r));
}
