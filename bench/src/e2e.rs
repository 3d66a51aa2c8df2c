//! End to end: trivial one-task jobs from submission to result through agq and N agw, and
//! the same through Celery with Redis.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agenix_proto::wire::ClientRole;
use agenix_proto::{Digest, InputRef};
use agenix_test_programs as programs;
use anyhow::{Context as _, Result, bail};

use crate::cluster::{Agq, count};
use crate::report::{Figure, Section, Unit};
use crate::util::{show, tool};

/// Jobs per run.
const JOBS: usize = 500;
/// Worker counts compared.
const WORKERS: [usize; 3] = [1, 2, 4];

/// The section.
pub(crate) async fn throughput(runs: usize, dir: &Path) -> Result<Section> {
    let mut s = Section::new(
        "End to end: trivial jobs, submission to result",
        &format!(
            "{JOBS} one-task jobs per run, submitted one after another by one client, timed \
             until every result is stored. AGEniX: `agq` and N `agw` (4 tasks at once each) \
             on loopback; each job is a signed action (signed as it is submitted), verified \
             by the queue and again by the worker (batched: one action of {JOBS} inputs, \
             its inputs uploaded in one request), and runs a no-op AU (`exit 0`, \
             precompiled) in a fresh sandbox; its result is durable before it is \
             acknowledged. Celery 5 with Redis 7: N workers (prefork, 4 processes each) run \
             a no-op Python task, with `acks_late`; Redis with `appendfsync always` \
             (durable like agq) and with its defaults (snapshots only: a crash loses \
             acknowledged work)."
        ),
    );
    s.command("# AGEniX: this program submits signed actions over QUIC and polls Stats");
    for (n, batched) in WORKERS.iter().map(|&n| (n, false)).chain([(1, true)]) {
        let (figure, commands) = agenix(runs, dir, n, batched).await?;
        s.add(figure);
        for c in commands {
            s.command(c);
        }
    }
    match python() {
        Err(why) => {
            for n in WORKERS {
                s.skip(format!("Celery + Redis, {n} worker(s)"), why.to_string());
            }
        }
        Ok(py) => {
            for durable in [true, false] {
                for n in WORKERS {
                    match celery(&py, runs, dir, n, durable) {
                        Ok((f, commands)) => {
                            s.add(f);
                            for c in commands {
                                s.command(c);
                            }
                        }
                        Err(e) => s.skip(celery_label(n, durable), format!("{e:#}")),
                    }
                }
            }
        }
    }
    Ok(s)
}

/// The figure for `n` workers, and the commands that ran. `batched`: each round's jobs are
/// one action with an input per job, not an action per job.
async fn agenix(runs: usize, dir: &Path, n: usize, batched: bool) -> Result<(Figure, Vec<String>)> {
    let run_dir = dir.join(format!("e2e-{n}{}", if batched { "-batched" } else { "" }));
    let mut q = Agq::start(&run_dir, &["--requests-per-minute", "100000000"])?;
    for i in 0..n {
        // The same artifact caches in every cluster: workers start warm, as in service.
        q.worker(&format!("w{i}"), &dir.join(format!("agw-cache-{i}")))?;
    }
    q.wait_workers(n).await?;
    let component = std::fs::read(programs::GUEST_EXIT)?;
    let planner = q.client(ClientRole::Planner).await?;
    let observer = q.client(ClientRole::Observer).await?;
    planner.put_blob(&component).await?;
    let (plan, digest) = q.plan(&component, &["0"])?;
    let plan_json = plan.to_json();
    planner.put_blob(&plan_json).await?;
    let plan_blob = Digest::of(&plan_json);
    let mut finished = 0u64;
    // A warm-up round (every worker compiles or loads the AU), then the timed runs.
    let mut rates = vec![];
    for round in 0..=runs {
        let jobs = if round == 0 { 8 * n } else { JOBS };
        let t = Instant::now();
        if batched {
            // Fresh inputs each round: none is stored yet.
            let inputs: Vec<Vec<u8>> =
                (0..jobs).map(|i| format!("round {round} job {i}\n").into_bytes()).collect();
            let blobs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
            planner.put_many(&blobs, false).await?;
            let refs: Vec<InputRef> = blobs
                .iter()
                .map(|b| InputRef { digest: Digest::of(b), size: b.len() as u64 })
                .collect();
            let action = q.action(digest, &refs)?.to_json();
            planner.submit_carrying(plan_blob, Digest::of(&action), &[&action]).await?;
        } else {
            for _ in 0..jobs {
                let action = q.action(digest, &[])?.to_json();
                planner.submit_carrying(plan_blob, Digest::of(&action), &[&action]).await?;
            }
        }
        finished += jobs as u64;
        let until = Instant::now() + Duration::from_secs(600);
        loop {
            let done = count(&observer, "succeeded").await?;
            if done >= finished {
                break;
            }
            let dead = count(&observer, "dead").await?;
            if dead > 0 || Instant::now() > until {
                bail!("{done} of {finished} jobs succeeded, {dead} dead");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if round > 0 {
            rates.push(JOBS as f64 / t.elapsed().as_secs_f64());
        }
    }
    planner.shutdown().await;
    observer.shutdown().await;
    let commands = q.commands().to_vec();
    drop(q);
    let _ = std::fs::remove_dir_all(&run_dir);
    let label = if batched {
        format!("AGEniX, {n} `agw`, batched submission")
    } else {
        format!("AGEniX, {n} `agw`")
    };
    Ok((Figure::rate(label, rates, Unit::PerSec), commands))
}

fn celery_label(n: usize, durable: bool) -> String {
    let redis = if durable { "Redis `appendfsync always`" } else { "Redis defaults" };
    format!("Celery + {redis}, {n} worker(s)")
}

/// The Python with Celery installed (`AGENIX_BENCH_PYTHON`, set by scripts/bench.sh).
fn python() -> Result<PathBuf> {
    let py = std::env::var_os("AGENIX_BENCH_PYTHON")
        .map(PathBuf::from)
        .context("AGENIX_BENCH_PYTHON is not set (scripts/bench.sh installs Celery and sets it)")?;
    let ok = Command::new(&py).args(["-c", "import celery, redis"]).status()?.success();
    if !ok {
        bail!("{} cannot import celery and redis", py.display());
    }
    Ok(py)
}

/// A free loopback port.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Kills its processes when dropped.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The figure for `n` Celery workers, and the commands that ran.
fn celery(
    py: &Path,
    runs: usize,
    dir: &Path,
    n: usize,
    durable: bool,
) -> Result<(Figure, Vec<String>)> {
    let redis_server = tool("redis-server", None).context("redis-server is not installed")?;
    let work = dir.join(format!("celery-{n}-{durable}"));
    std::fs::create_dir_all(&work)?;
    let port = free_port()?;
    let mut procs = Procs(vec![]);
    let mut redis = Command::new(redis_server);
    redis.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"]).arg(&work).args([
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
    ]);
    if durable {
        redis.args(["--appendonly", "yes", "--appendfsync", "always"]);
    }
    let mut commands = vec![show(&redis)];
    procs.0.push(redis.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
    let url = format!("redis://127.0.0.1:{port}/0");
    let app_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("celery");
    for i in 0..n {
        let mut worker = Command::new(py);
        worker
            .args(["-m", "celery", "-A", "tasks", "worker", "--pool", "prefork"])
            .args(["--concurrency", "4", "--loglevel", "WARNING"])
            .args(["--without-gossip", "--without-mingle", "--without-heartbeat"])
            .args(["-n", &format!("w{i}@bench")])
            .current_dir(&app_dir)
            .env("BENCH_REDIS", &url);
        commands.push(format!("(cd bench/celery && {})", show(&worker)));
        procs.0.push(worker.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
    }
    let mut driver = Command::new(py);
    driver
        .arg("driver.py")
        .args([&JOBS.to_string(), &runs.to_string(), &(8 * n).to_string()])
        .current_dir(&app_dir)
        .env("BENCH_REDIS", &url);
    commands.push(format!("(cd bench/celery && {})", show(&driver)));
    let out = driver.output()?;
    drop(procs);
    let _ = std::fs::remove_dir_all(&work);
    if !out.status.success() {
        bail!("the Celery driver failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let rates = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|v| v.parse::<f64>())
        .collect::<Result<Vec<_>, _>>()?;
    if rates.len() != runs {
        bail!("the Celery driver printed {} rates, expected {runs}", rates.len());
    }
    Ok((Figure::rate(celery_label(n, durable), rates, Unit::PerSec), commands))
}
