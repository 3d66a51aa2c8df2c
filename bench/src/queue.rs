//! The queue on its own: durable submissions and claim → complete cycles per second; its
//! memory and restart time with a million jobs stored; an idle worker's memory.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agenix_link::Client;
use agenix_proto::job::{Capabilities, JobOutput, Reports};
use agenix_proto::result::{RESULT_SCHEMA, ResultStatement, sign_result};
use agenix_proto::wire::ClientRole;
use agenix_proto::{Digest, Envelope, InputRef, KeyId, Limits};
use agenix_test_programs as programs;
use anyhow::{Result, bail};
use tokio::task::JoinSet;

use crate::cluster::{Agq, count};
use crate::report::{Figure, Section, Unit};
use crate::util::rss_mib;

/// No request rate limit: the figures are the queue's, not its abuse limits'.
const UNLIMITED: &str = "100000000";

/// Jobs per throughput run.
const JOBS: usize = 1000;

async fn clients(q: &Agq, role: ClientRole, n: usize) -> Result<Vec<Client>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(q.client(role).await?);
    }
    Ok(out)
}

/// Submits every action over `n` connections at once; returns the seconds it took.
async fn submit_all(q: &Agq, plan: &Envelope, actions: Vec<Envelope>, n: usize) -> Result<f64> {
    let planners = clients(q, ClientRole::Planner, n).await?;
    let mut shares: Vec<Vec<Envelope>> = vec![Vec::new(); n];
    for (i, a) in actions.into_iter().enumerate() {
        shares[i % n].push(a);
    }
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for (c, share) in planners.into_iter().zip(shares) {
        let plan = plan.clone();
        tasks.spawn(async move {
            // The plan envelope goes up once per client (the queue keeps one copy); each
            // action envelope travels as a blob before its submit, as agx sends it.
            let plan_json = plan.to_json();
            c.put_blob(&plan_json).await?;
            let plan = Digest::of(&plan_json);
            for action in share {
                let action_json = action.to_json();
                c.put_blob(&action_json).await?;
                let action = Digest::of(&action_json);
                c.submit(plan, action).await?;
            }
            c.shutdown().await;
            anyhow::Ok(())
        });
    }
    for r in tasks.join_all().await {
        r?;
    }
    Ok(start.elapsed().as_secs_f64())
}

fn capabilities(name: String) -> Capabilities {
    Capabilities {
        name,
        wasm: true,
        tools: Default::default(),
        mounts: Default::default(),
        ceilings: Limits::ABSOLUTE,
        concurrency: 1,
        labels: Default::default(),
    }
}

/// What a worker signs about a lease of the bench's own actions: the digests of each
/// action's payload (by its envelope's blob) and of the plan are known from submitting them.
#[derive(Debug)]
struct Known {
    queue: agenix_proto::Fingerprint,
    plan: Digest,
    actions: HashMap<Digest, Digest>,
}

/// What a drain measured.
struct Drained {
    done: usize,
    secs: f64,
    /// Every claim that leased a job: how long it took to answer.
    claims: Vec<Duration>,
}

/// The `p`-th percentile (0–100) of `v`, nearest rank.
fn percentile(v: &mut [Duration], p: usize) -> Duration {
    v.sort_unstable();
    match v.len() {
        0 => Duration::ZERO,
        n => v[((n * p).div_ceil(100)).clamp(1, n) - 1],
    }
}

/// `n` workers claim one job at a time and complete it, with its signed result, until none
/// is left.
async fn drain(q: &Agq, n: usize, known: Arc<Known>) -> Result<Drained> {
    let mut workers = Vec::with_capacity(n);
    for _ in 0..n {
        workers.push(q.worker_client().await?);
    }
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for (i, (c, key)) in workers.into_iter().enumerate() {
        let known = known.clone();
        tasks.spawn(async move {
            c.register(capabilities(format!("bench-{i}")), format!("bench-instance-{i}")).await?;
            let worker = KeyId::of(&key.verifying_key());
            let (mut done, mut claims) = (0usize, Vec::new());
            loop {
                let asked = Instant::now();
                let leases = c.claim(1, 0).await?;
                let Some(lease) = leases.first() else { break };
                claims.push(asked.elapsed());
                let Some(action) = known.actions.get(&lease.action) else {
                    bail!("leased an action the bench did not submit");
                };
                let statement = ResultStatement {
                    schema: RESULT_SCHEMA.into(),
                    queue: known.queue,
                    job: lease.lease.job,
                    epoch: lease.lease.epoch,
                    action: *action,
                    plan: known.plan,
                    input: None,
                    succeeded: true,
                    failure: None,
                    tasks: vec![],
                    output: None,
                    worker,
                    at: 0,
                };
                let signed = sign_result(&statement, &key)?.to_json();
                c.put_blob(&signed).await?;
                let output = JobOutput {
                    succeeded: true,
                    failure: None,
                    reports: Reports::Inline(vec![]),
                    output: None,
                    result: Some(InputRef {
                        digest: Digest::of(&signed),
                        size: signed.len() as u64,
                    }),
                };
                c.complete(lease.lease, output).await?;
                done += 1;
            }
            c.shutdown().await;
            anyhow::Ok((done, claims))
        });
    }
    let mut drained = Drained { done: 0, secs: 0.0, claims: Vec::new() };
    for r in tasks.join_all().await {
        let (done, claims) = r?;
        drained.done += done;
        drained.claims.extend(claims);
    }
    drained.secs = start.elapsed().as_secs_f64();
    Ok(drained)
}

/// Durable submissions and claim → complete cycles per second.
pub(crate) async fn throughput(runs: usize, dir: &Path) -> Result<Section> {
    // `AGENIX_TEST_STORE=postgres AGENIX_PG_FSYNC=on` measures the PostgreSQL store (a
    // server of its own on loopback, syncing its commits) instead of the embedded one.
    let (title, store) = if agenix_harness::postgres::wanted() {
        ("Queue throughput on PostgreSQL", "PostgreSQL on loopback, one transaction per commit")
    } else {
        ("Queue throughput", "redb, one fsynced transaction per commit")
    };
    let mut s = Section::new(
        title,
        &format!(
            "A real `agq` on loopback ({store}), {JOBS} \
             one-job actions per run: durable submissions per second (each verified: two \
             ed25519 signatures, the plan's rules, the blobs present) and claim → complete \
             cycles per second (each result signed by its worker, uploaded as a blob and \
             verified by the queue before it is recorded), with the time each claim that leased a \
             job took to be answered (p50, p99), by 1 and 8 concurrent clients, with group commit (the \
             default) and with `--no-group-commit`. Every figure counts acknowledged, hence \
             durable, transitions only."
        ),
    );
    let component = std::fs::read(programs::GUEST_EXIT)?;
    for group in [true, false] {
        let mode = if group { "group commit" } else { "no group commit" };
        for n in [1usize, 8] {
            let (mut submits, mut cycles, mut p50, mut p99) = (vec![], vec![], vec![], vec![]);
            for i in 0..runs {
                let mut args = vec!["--requests-per-minute", UNLIMITED];
                if !group {
                    args.push("--no-group-commit");
                }
                let run_dir = dir.join(format!("throughput-{group}-{n}-{i}"));
                let q = Agq::start(&run_dir, &args)?;
                let planner = q.client(ClientRole::Planner).await?;
                planner.put_blob(&component).await?;
                planner.shutdown().await;
                let (plan, digest) = q.plan(&component, &["0"])?;
                let actions =
                    (0..JOBS).map(|_| q.action(digest, &[])).collect::<Result<Vec<_>>>()?;
                let known = Known {
                    queue: q.fingerprint,
                    plan: digest,
                    actions: actions
                        .iter()
                        .map(|a| {
                            let payload = a.payload_unverified()?;
                            Ok((Digest::of(&a.to_json()), Digest::of(&payload)))
                        })
                        .collect::<Result<_>>()?,
                };
                submits.push(JOBS as f64 / submit_all(&q, &plan, actions, n).await?);
                let mut d = drain(&q, n, Arc::new(known)).await?;
                if d.done != JOBS {
                    bail!("{} of {JOBS} jobs were claimed and completed", d.done);
                }
                cycles.push(JOBS as f64 / d.secs);
                p50.push(percentile(&mut d.claims, 50));
                p99.push(percentile(&mut d.claims, 99));
                if i == 0 {
                    for c in q.commands() {
                        s.command(c.clone());
                    }
                }
                drop(q);
                let _ = std::fs::remove_dir_all(&run_dir);
            }
            s.add(Figure::rate(format!("submit, {mode}, {n} client(s)"), submits, Unit::PerSec));
            s.add(Figure::rate(
                format!("claim → complete, {mode}, {n} client(s)"),
                cycles,
                Unit::PerSec,
            ));
            s.add(Figure::ms(format!("claim latency p50, {mode}, {n} client(s)"), &p50));
            s.add(Figure::ms(format!("claim latency p99, {mode}, {n} client(s)"), &p99));
        }
    }
    Ok(s)
}

/// Jobs stored for the memory and restart figures: `ACTIONS` actions of `INPUTS` inputs.
const ACTIONS: usize = 1000;
const INPUTS: usize = 1000;

/// agq with a million jobs stored; an idle agw.
pub(crate) async fn memory(runs: usize, dir: &Path) -> Result<Section> {
    let total = ACTIONS * INPUTS;
    let mut s = Section::new(
        "Memory and recovery",
        &format!(
            "Resident memory (VmRSS) of an idle `agw` (registered, nothing to do) and of `agq` \
             holding {total} queued jobs ({ACTIONS} actions of {INPUTS} inputs each, submitted \
             over QUIC by 4 clients); then `agq` SIGKILLed and restarted on the same data, \
             timed from the start of the process to the first answered request. Last, the \
             size of the `agw` binaries."
        ),
    );
    let q_dir = dir.join("memory");
    let mut q = Agq::start(&q_dir, &["--requests-per-minute", UNLIMITED])?;

    let mut pids = vec![];
    for i in 0..runs {
        pids.push(q.worker(&format!("idle-{i}"), &q_dir.join(format!("cache-{i}")))?);
    }
    q.wait_workers(runs).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = pids.iter().map(|p| rss_mib(*p)).collect::<Result<Vec<_>>>()?;
    s.add(Figure::rate("idle `agw`", rss, Unit::MiB));

    let component = std::fs::read(programs::GUEST_EXIT)?;
    let planner = q.client(ClientRole::Planner).await?;
    planner.put_blob(&component).await?;
    let mut inputs = Vec::with_capacity(INPUTS);
    for i in 0..INPUTS {
        let bytes = format!("input {i}\n").into_bytes();
        planner.put_blob(&bytes).await?;
        inputs.push(InputRef { digest: Digest::of(&bytes), size: bytes.len() as u64 });
    }
    planner.shutdown().await;
    // Stop the workers: the jobs stay queued.
    q.stop_workers();
    let (plan, digest) = q.plan(&component, &["0"])?;
    let actions = (0..ACTIONS).map(|_| q.action(digest, &inputs)).collect::<Result<Vec<_>>>()?;
    let secs = submit_all(&q, &plan, actions, 4).await?;
    let observer = q.client(ClientRole::Observer).await?;
    let queued = count(&observer, "queued").await?;
    observer.shutdown().await;
    if queued != total as u64 {
        bail!("{queued} jobs queued, expected {total}");
    }
    s.note(format!(
        "Storing them took {secs:.1} s ({:.0} jobs/s); the redb file is {:.0} MiB.",
        total as f64 / secs,
        std::fs::metadata(q.data().join("queue.redb"))?.len() as f64 / f64::from(1 << 20)
    ));
    let pid = q.pid().ok_or_else(|| anyhow::anyhow!("agq is not running"))?;
    for c in q.commands() {
        s.command(c.clone());
    }
    let submitted = rss_mib(pid)?;
    let mut rss = vec![];
    let mut restarts = vec![];
    for _ in 0..runs {
        restarts.push(q.restart().await?);
        let pid = q.pid().ok_or_else(|| anyhow::anyhow!("agq is not running"))?;
        rss.push(rss_mib(pid)?);
    }
    s.add(Figure::rate(
        format!("`agq` with {total} jobs, after submitting them"),
        vec![submitted],
        Unit::MiB,
    ));
    s.add(Figure::rate(format!("`agq` with {total} jobs, restarted on them"), rss, Unit::MiB));
    s.add(Figure::ms(format!("`agq` restart to serving, {total} jobs"), &restarts));
    binaries(&mut s);
    Ok(s)
}

/// The size of the `agw` binaries beside this one: the release build and the static one
/// (`cargo build --profile static --target x86_64-unknown-linux-musl -p agenix-runtime
/// --bin agw`, which `scripts/bench.sh` makes).
fn binaries(s: &mut Section) {
    // target/release/agenix-bench
    let target =
        std::env::current_exe().ok().and_then(|e| Some(e.parent()?.parent()?.to_path_buf()));
    let Some(target) = target else {
        s.skip("`agw` binaries", "cannot find the target directory");
        return;
    };
    for (what, path) in [
        ("`agw` binary, release build (dynamically linked)", "release/agw"),
        ("`agw` binary, static build (musl, stripped)", "x86_64-unknown-linux-musl/static/agw"),
    ] {
        match std::fs::metadata(target.join(path)) {
            Ok(m) => {
                s.add(Figure::rate(what, vec![m.len() as f64 / f64::from(1 << 20)], Unit::MiB))
            }
            Err(e) => s.skip(what, format!("target/{path}: {e}")),
        }
    }
}
