//! W6, failing closed: a guest that takes every descriptor the process has left, so that the
//! scratch directory can no longer be measured, is stopped rather than left to fill the
//! disk. Its own test binary, because it lowers the process's descriptor limit.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

use agenix_host::WasmTask;
use agenix_host::wasm::{Allocator, Metering, WasmConfig, WasmHost};
use agenix_proto::{Digest, Limits, Outcome};
use agenix_test_programs as programs;

#[tokio::test]
async fn a_scratch_directory_that_cannot_be_measured_stops_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let host = WasmHost::new(WasmConfig {
        ceilings: Limits::ABSOLUTE,
        max_concurrent: 1,
        cache_dir: None,
        scratch_dir: dir.path().join("scratch"),
        allocator: Allocator::OnDemand,
    })
    .unwrap();
    let bytes = std::fs::read(programs::PROBE_PY).unwrap();
    let prepared =
        host.prepare(Digest::of(&bytes), Metering::Fuel, || async { Ok(bytes) }).await.unwrap();

    // Leave the process a few dozen descriptors more than it holds now.
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, open + 48, hard).unwrap();
    let task = WasmTask {
        program: "probe".into(),
        args: vec!["fds".into(), "200".into()],
        env: vec![],
        stdin: bytes::Bytes::new(),
        grants: vec![],
        limits: Limits { file_bytes: 64 << 20, timeout_ms: 60_000, ..Limits::DEFAULT },
        scratch: true,
    };
    let r = host.run(&prepared, task).await.unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(!out.contains("wrote 200 MiB"), "the guest filled its scratch unchecked: {out}");
    // The guest takes the last descriptor before it writes a byte, so only a watcher that
    // fails closed can stop it.
    let Outcome::Trapped { message } = &r.outcome else { panic!("{:?}: {out}", r.outcome) };
    assert!(message.contains("the scratch directory could not be measured"), "{message}");
}
