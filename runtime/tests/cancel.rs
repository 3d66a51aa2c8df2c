//! Dropping a running job cancels its sandboxes: nothing keeps running, nothing leaks.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

use std::sync::Arc;
use std::time::Duration;

use agenix_host::wasm::{Allocator, WasmConfig, WasmHost};
use agenix_proto::{Digest, Limits, Plan};
use agenix_runtime::exec::{
    ComponentSource, Executable, FetchError, HostRunner, Resources, execute,
};
use agenix_test_programs as programs;
use bytes::Bytes;

struct Files(Vec<Vec<u8>>);

impl ComponentSource for Files {
    async fn fetch(&self, digest: Digest) -> Result<Vec<u8>, FetchError> {
        self.0
            .iter()
            .find(|b| Digest::of(b) == digest)
            .cloned()
            .ok_or_else(|| FetchError::Unavailable(format!("no {digest}")))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_job_stops_its_running_tasks() {
    let scratch = tempfile::tempdir().unwrap();
    let wasm = Arc::new(
        WasmHost::new(WasmConfig {
            ceilings: Limits::ABSOLUTE,
            max_concurrent: 4,
            cache_dir: None,
            scratch_dir: scratch.path().to_path_buf(),
            // Pooling, so the live instances can be counted.
            allocator: Allocator::Pooling,
        })
        .unwrap(),
    );
    let sleep = std::fs::read(programs::GUEST_SLEEP).unwrap();
    let spin = std::fs::read(programs::GUEST_SPIN).unwrap();
    let plan = format!(
        r#"{{"schema":"agenix.plan/v1","name":"cancel","tasks":[
            {{"id":"sleeper","run":{{"wasm":{{"name":"sleep","digest":"{}"}}}}}},
            {{"id":"spinner","run":{{"wasm":{{"name":"spin","digest":"{}"}}}}}}],
          "output":"sleeper"}}"#,
        Digest::of(&sleep),
        Digest::of(&spin)
    );
    let plan = Plan::from_json(plan.as_bytes()).unwrap();
    let runner =
        Arc::new(HostRunner::new(wasm.clone(), Files(vec![sleep, spin]), Resources::default()));
    let job = execute(Executable::danger_unsigned(&plan).unwrap(), Bytes::new(), runner);
    // Both tasks would run for a minute (the default timeout). Drop the job once both are
    // running (compiling them may take a while on a loaded machine).
    let both_running = async {
        while wasm.live_instances() != Some(2) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let cancelled = tokio::select! {
        r = job => Some(r),
        () = both_running => None,
    };
    assert!(cancelled.is_none(), "the job should still have been running");
    // Aborted tasks are dropped by the runtime at their next poll: give it a moment.
    let freed = async {
        while wasm.live_instances() != Some(0) || Arc::strong_count(&wasm) > 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), freed).await;
    assert_eq!(wasm.live_instances(), Some(0), "cancelled instances must be freed");
    // Their scratch directories were given back: empty ones are kept for later tasks, one
    // per task that ran.
    let left: Vec<_> =
        std::fs::read_dir(scratch.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.len() <= 2, "{left:?}");
    for dir in &left {
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0, "{} is not empty", dir.display());
    }
    assert_eq!(Arc::strong_count(&wasm), 1, "the aborted tasks let go of the host");
    drop(wasm);
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0, "removed with the host");
}
