//! The soak and fault harness: many jobs through one real `agq` and several real `agw`
//! processes on loopback, submitted with the real `agx`, while the queue is SIGKILLed and
//! restarted on the same data again and again and workers are SIGKILLed and started again.
//!
//! Afterwards every job the queue holds is checked: no acknowledged job lost, every job
//! finished and succeeded with exactly the output its input must give (computed here), no
//! job recorded as succeeded twice in the workers' logs, no process that panicked or exited
//! by itself. It prints what it did and found, and exits 1 if anything is wrong.
//!
//! `scripts/soak.sh` builds the binaries and runs it; `--short` is the version CI runs.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line program: progress and the report on stdout, errors on stderr"
)]

mod check;
mod cluster;
mod submit;
mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use agenix_proto::job::{JobId, JobRecord, JobState};
use anyhow::{Context as _, Result, bail};
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};

use crate::cluster::{Agx, Bins, Cluster};
use crate::submit::{ActionPlan, Shared, Submitter, lock};
use crate::workload::{Kind, Plans, Rng};

/// Many jobs through agq and agw while both are SIGKILLed; then checks that nothing
/// acknowledged was lost and nothing succeeded twice.
#[derive(Debug, Parser)]
#[command(name = "soak")]
struct Args {
    /// The smaller run CI makes: 2000 jobs, 10 queue kills, a 4 MiB largest blob.
    #[arg(long)]
    short: bool,
    /// Jobs to submit [default: 10000; 2000 with --short].
    #[arg(long)]
    jobs: Option<usize>,
    /// Worker processes.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Concurrency of each worker.
    #[arg(long, default_value_t = 4)]
    concurrency: u32,
    /// Times the queue is SIGKILLed and started again [default: 20; 10 with --short].
    #[arg(long)]
    queue_kills: Option<u32>,
    /// Seconds between worker SIGKILLs, on average (0: none).
    #[arg(long, default_value_t = 8)]
    worker_kill_every: u64,
    /// `agq serve --max-blob`; some inputs are exactly this large [default: 64 MiB; 4 MiB
    /// with --short].
    #[arg(long)]
    max_blob: Option<u64>,
    /// `agx submit` processes running at once.
    #[arg(long, default_value_t = 4)]
    submitters: usize,
    /// The seed of everything random (sizes, kinds, fault times).
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Give up after this many minutes [default: 120; 20 with --short].
    #[arg(long)]
    minutes: Option<u64>,
    /// Where to work (kept); default a temporary directory, removed if all went well.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// agq nodes serving the queue, each standing by to take over from the one serving
    /// (PostgreSQL only: `AGENIX_TEST_STORE=postgres`). Each queue kill kills the one
    /// serving, which comes back as a standby.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=4))]
    nodes: u16,
    /// Where agq, agw and agx are [default: next to this program].
    #[arg(long)]
    bins: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // SIGINT and SIGTERM are taken by a thread that stops every child first (they stay
    // blocked in the children too, which the soak only ever SIGKILLs).
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    if signals.thread_block().is_ok() {
        std::thread::spawn(move || {
            let sig = signals.wait();
            cluster::kill_all();
            eprintln!("soak: stopped by {sig:?}; every process it started is killed");
            std::process::exit(130);
        });
    }
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        cluster::kill_all();
        default_hook(info);
    }));
    let code = match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e:#}");
            ExitCode::FAILURE
        }
    };
    cluster::kill_all();
    code
}

/// The run's settings, defaults applied.
#[derive(Debug)]
struct Settings {
    jobs: usize,
    queue_kills: u32,
    max_blob: u64,
    deadline: Duration,
}

impl Settings {
    fn of(a: &Args) -> Self {
        let short = a.short;
        Self {
            jobs: a.jobs.unwrap_or(if short { 2000 } else { 10_000 }),
            queue_kills: a.queue_kills.unwrap_or(if short { 10 } else { 20 }),
            max_blob: a.max_blob.unwrap_or(if short { 4 << 20 } else { 64 << 20 }),
            deadline: Duration::from_secs(60 * a.minutes.unwrap_or(if short { 20 } else { 120 })),
        }
    }
}

/// Runs the soak; whether everything checked out.
fn run(args: &Args) -> Result<bool> {
    let s = Settings::of(args);
    let started = Instant::now();
    let temp = match &args.dir {
        Some(_) => None,
        None => Some(tempfile::Builder::new().prefix("agenix-soak.").tempdir()?),
    };
    let dir = match (&args.dir, &temp) {
        (Some(d), _) => {
            std::fs::create_dir_all(d)?;
            d.canonicalize()?
        }
        (None, Some(t)) => t.path().to_path_buf(),
        (None, None) => bail!("no directory to work in"),
    };
    let bins = match &args.bins {
        Some(b) => Bins::in_dir(b)?,
        None => {
            let exe = std::env::current_exe()?;
            Bins::in_dir(exe.parent().context("this program has no directory")?)?
        }
    };
    for sub in ["logs", "inputs", "plans", "store-empty"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    println!(
        "soak: {} jobs, {} workers × {}, {} queue kills, a worker kill every ~{} s, largest \
         blob {} bytes, leases of 10 s (heartbeats every 3 s), seed {}, in {}",
        s.jobs,
        args.workers,
        args.concurrency,
        s.queue_kills,
        args.worker_kill_every,
        s.max_blob,
        args.seed,
        dir.display()
    );

    // Leases short enough that jobs of a killed worker come back soon; the rest as
    // deployed.
    let agq_args = vec![
        "--max-blob".to_string(),
        s.max_blob.to_string(),
        "--lease-ms".into(),
        "10000".into(),
        "--heartbeat-ms".into(),
        "3000".into(),
    ];
    let mut cluster =
        Cluster::start(&dir, bins, agq_args, args.concurrency, usize::from(args.nodes))?;
    println!(
        "soak: the queue keeps its jobs in {}{}",
        if cluster.on_postgres() {
            "PostgreSQL (a server of its own, killed and started again once halfway)"
        } else {
            "its embedded store"
        },
        if cluster.nodes() > 1 {
            format!(", served by {} agq nodes ({})", cluster.nodes(), cluster.addr)
        } else {
            String::new()
        }
    );
    // The workers trust the same signer, through their own copy of the trust file.
    std::fs::copy(dir.join("queue/trust.json"), dir.join("worker-trust.json"))?;
    let agx = cluster.agx();
    let plans = prepare(&agx, &dir)?;
    let (quotes_bytes, quotes_tasks) = plans.quotes;
    println!("soak: plans signed (the quotes plan: {quotes_bytes} bytes, {quotes_tasks} tasks)");
    for i in 0..args.workers {
        cluster.add_worker(&format!("w{i}"))?;
    }

    let mut rng = Rng::new(args.seed);
    let actions = plan_actions(&s, &mut rng);
    let shared = Arc::new(Shared::default());
    lock(&shared.pending).extend(actions.iter().cloned());
    shared.submitters_left.store(args.submitters, Ordering::SeqCst);
    let submitter = Submitter {
        agx: agx.clone(),
        plans: plans.clone(),
        inputs_dir: dir.join("inputs"),
        max_attempts: 20,
        max_blob: s.max_blob,
        keep: false,
        verbose_failures: 10,
    };
    let threads: Vec<_> = (0..args.submitters)
        .map(|id| {
            let (sub, shared) = (submitter.clone(), shared.clone());
            std::thread::spawn(move || {
                let r = sub.run(&shared, id);
                shared.submitters_left.fetch_sub(1, Ordering::SeqCst);
                r
            })
        })
        .collect();

    let faults = drive(&mut cluster, &agx, &shared, &s, args, &mut rng, started);
    shared.stop.store(true, Ordering::SeqCst);
    let mut errors = Vec::new();
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("a submitter stopped: {e:#}")),
            Err(_) => errors.push("a submitter panicked".into()),
        }
    }
    let faults = match faults {
        Ok(f) => f,
        Err(e) => {
            errors.push(format!("{e:#}"));
            Faults::default()
        }
    };

    // Every job the queue holds, with the queue up (it may have been down when the drive
    // stopped).
    if !cluster.agq_is_up() {
        cluster.restart_agq()?;
    }
    let jobs = list_jobs(&agx)?;
    cluster.stop();
    let acked = lock(&shared.acked).clone();
    let unacked = lock(&shared.unacked_inputs).clone();
    let mut f = check::jobs(&jobs, &acked, &unacked);
    let succeeded: Vec<JobId> =
        jobs.iter().filter(|j| matches!(j.state, JobState::Succeeded)).map(|j| j.id).collect();
    check::audit(&mut f, &cluster, &acked, &succeeded);
    check::worker_logs(&mut f, &cluster.logs("w"), &succeeded);
    for path in cluster.logs("agq") {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            check::count(&mut f, &name, n, line);
        }
    }

    let ok = report(&cluster, &shared, &f, &faults, &errors, &jobs, started);
    match temp {
        // The evidence stays when something went wrong.
        Some(t) if !ok => println!("soak: logs and data kept in {}", t.keep().display()),
        Some(_) => println!("soak: its directory is removed"),
        None => println!("soak: logs and data are in {}", dir.display()),
    }
    Ok(ok)
}

/// Pushes the AUs and the echo guest, writes the plans and signs each one.
fn prepare(agx: &Agx, dir: &Path) -> Result<Plans> {
    let long = Duration::from_secs(600);
    use agenix_test_programs as p;
    for au in [
        p::AU_GREP,
        p::AU_WC,
        p::AU_SORT,
        p::AU_UNIQ,
        p::AU_HEAD,
        p::AU_TAIL,
        p::AU_CUT,
        p::AU_JQ,
        p::AU_CSV2JSON,
        p::AU_SHA256SUM,
    ] {
        agx.ok(&["au", "push", au], long)?;
    }
    // A test guest without a model card: named here.
    agx.ok(&["au", "push", p::GUEST_ECHO, "--name", "echo"], long)?;
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let plans = Plans::write(&dir.join("plans"), &examples)?;
    for kind in Kind::ALL {
        let file = plans.file(kind).to_path_buf();
        let out = plans.signed(kind);
        let (file, out) = (file.as_os_str(), out.as_os_str());
        agx.ok(&["plan".as_ref(), "sign".as_ref(), file, "--out".as_ref(), out], long)?;
    }
    Ok(plans)
}

/// The actions to submit, `s.jobs` inputs in all: mostly a few inputs each, some at the
/// most an action may have, a few inputs as large as a blob may be.
fn plan_actions(s: &Settings, rng: &mut Rng) -> Vec<ActionPlan> {
    use agenix_proto::action::MAX_INPUTS;
    let mut actions = Vec::new();
    let mut left = s.jobs;
    let mut huge_left = if s.jobs >= 100 { (s.jobs / 2000).max(1) } else { 0 };
    // Actions of the most inputs an action may have: one per 5000 jobs, and at least one.
    let mut full_left = if s.jobs >= MAX_INPUTS { (s.jobs / 5000).max(1) } else { 0 };
    while left > 0 {
        let seq = actions.len();
        let roll = rng.range(0, 99);
        let kind = match roll {
            0..=29 => Kind::Sha,
            30..=49 => Kind::Count,
            50..=69 => Kind::LogErrors,
            70..=84 => Kind::Orders,
            85..=94 => Kind::Wide,
            _ => Kind::Quotes,
        };
        let n = if full_left > 0 && left >= MAX_INPUTS && seq % 3 == 1 {
            full_left -= 1;
            MAX_INPUTS
        } else if rng.chance(0.1) {
            rng.range(20, 200) as usize
        } else {
            rng.range(1, 12) as usize
        };
        let n = n.min(left);
        let sizes = (0..n)
            .map(|_| {
                if kind == Kind::Sha && huge_left > 0 && rng.chance(0.05) {
                    huge_left -= 1;
                    None
                } else {
                    Some(workload::pick_size(kind, rng))
                }
            })
            .collect();
        actions.push(ActionPlan {
            seq,
            kind,
            sizes,
            plan_file: rng.chance(0.3),
            seed: rng.next_u64(),
        });
        left -= n;
    }
    // A run with any input at all has one as large as a blob may be.
    if huge_left > 0
        && let Some(a) = actions.iter_mut().find(|a| a.kind == Kind::Sha)
    {
        a.sizes[0] = None;
    }
    // Interleave the large actions with the small ones, as users would send them.
    let mut order: Vec<usize> = (0..actions.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.range(0, i as u64) as usize);
    }
    order.into_iter().map(|i| actions[i].clone()).collect()
}

/// What the faults did.
#[derive(Debug, Default)]
struct Faults {
    queue_kills: u32,
    worker_kills: u32,
    /// Times the queue's PostgreSQL server was killed and started again under it.
    database_restarts: u32,
    /// Jobs by state at the last look.
    last_stats: BTreeMap<String, u64>,
    timed_out: bool,
}

/// Keeps the processes running and makes the faults until every submission is done and
/// every job finished (or the deadline): a queue kill each time another `1/(kills+1)` of
/// the work was done (submitting and running), a worker kill every few seconds.
fn drive(
    cluster: &mut Cluster,
    agx: &Agx,
    shared: &Shared,
    s: &Settings,
    args: &Args,
    rng: &mut Rng,
    started: Instant,
) -> Result<Faults> {
    let mut f = Faults::default();
    let mut next_look = Instant::now();
    let mut database_back: Option<Instant> = None;
    let mut next_worker_kill = next_worker_kill_at(args, rng);
    let mut last_print = Instant::now();
    let mut finished = 0u64;
    loop {
        cluster.tend()?;
        if started.elapsed() > s.deadline {
            f.timed_out = true;
            println!("soak: out of time after {:?}", started.elapsed());
            return Ok(f);
        }
        let now = Instant::now();
        if now >= next_look && cluster.agq_is_up() {
            next_look = now + Duration::from_secs(2);
            if let Some(stats) = look(agx) {
                finished = ["succeeded", "dead", "cancelled"]
                    .iter()
                    .map(|k| stats.get(*k).copied().unwrap_or(0))
                    .sum();
                let total: u64 = stats.values().sum();
                f.last_stats = stats;
                let submitting = shared.submitters_left.load(Ordering::SeqCst) > 0;
                if !submitting && finished == total && f.queue_kills >= s.queue_kills {
                    return Ok(f);
                }
                if last_print.elapsed() > Duration::from_secs(30) {
                    last_print = Instant::now();
                    println!(
                        "  {:>5} s: {finished} of {} jobs finished ({} submitted, {} \
                         acknowledged); {} queue kills, {} worker kills",
                        started.elapsed().as_secs(),
                        s.jobs,
                        total,
                        shared.acked_jobs.load(Ordering::SeqCst),
                        f.queue_kills,
                        f.worker_kills
                    );
                }
            }
        }
        // The next queue kill once enough progress was made (jobs acknowledged plus jobs
        // finished, so that submissions see kills too), and not within 3 s of its start.
        let progress = shared.acked_jobs.load(Ordering::SeqCst) + finished;
        let due =
            (u64::from(f.queue_kills) + 1) * 2 * s.jobs as u64 / (u64::from(s.queue_kills) + 1);
        let all_submitted = shared.submitters_left.load(Ordering::SeqCst) == 0;
        if f.queue_kills < s.queue_kills
            && (progress >= due || (all_submitted && finished + 10 >= s.jobs as u64))
            && cluster.agq_since.elapsed() > Duration::from_secs(3)
        {
            shared.agq_generation.fetch_add(1, Ordering::SeqCst);
            cluster.kill_agq();
            f.queue_kills += 1;
            std::thread::sleep(Duration::from_millis(rng.range(0, 2000)));
            cluster.restart_agq()?;
            shared.agq_generation.fetch_add(1, Ordering::SeqCst);
            next_look = Instant::now();
        }
        // A queue on PostgreSQL sees its database killed and started again once, halfway.
        if f.database_restarts == 0 && cluster.on_postgres() && progress >= s.jobs as u64 {
            shared.db_generation.fetch_add(1, Ordering::SeqCst);
            cluster.restart_database()?;
            database_back = Some(Instant::now());
            f.database_restarts += 1;
            println!("  {:>5} s: PostgreSQL killed and started again", started.elapsed().as_secs());
        }
        if database_back.is_some_and(|at| at.elapsed() > submit::DB_GRACE) {
            database_back = None;
            shared.db_generation.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(at) = next_worker_kill
            && at <= now
        {
            let running: Vec<usize> =
                (0..cluster.workers.len()).filter(|i| cluster.workers[*i].is_running()).collect();
            if !running.is_empty() {
                let i = running[rng.range(0, running.len() as u64 - 1) as usize];
                cluster.kill_worker(i, now + Duration::from_millis(rng.range(200, 5000)));
                f.worker_kills += 1;
            }
            next_worker_kill = next_worker_kill_at(args, rng);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn next_worker_kill_at(args: &Args, rng: &mut Rng) -> Option<Instant> {
    (args.worker_kill_every > 0).then(|| {
        let ms = args.worker_kill_every * 1000;
        Instant::now() + Duration::from_millis(rng.range(ms / 2, ms * 3 / 2))
    })
}

/// Jobs by state, as `agx queue stats` says (nothing if it failed: the queue may be going
/// down).
fn look(agx: &Agx) -> Option<BTreeMap<String, u64>> {
    let ran = agx.run(&["--json", "queue", "stats"], "store", Duration::from_secs(30)).ok()?;
    let stats = ran.records().into_iter().find(|r| r["type"] == "stats")?;
    serde_json::from_value(stats["data"]["jobs"].clone()).ok()
}

/// Every job the queue holds (`agx jobs list`, paged).
fn list_jobs(agx: &Agx) -> Result<Vec<JobRecord>> {
    let mut last = None;
    for _ in 0..10 {
        let ran = agx.run(
            &["--json", "jobs", "list", "--limit", "4000000000"],
            "store",
            Duration::from_secs(600),
        )?;
        if ran.ok() {
            return ran
                .records()
                .into_iter()
                .filter(|r| r["type"] == "job")
                .map(|r| serde_json::from_value(r["data"].clone()).context("a job record"))
                .collect();
        }
        last = Some(ran.why());
        std::thread::sleep(Duration::from_secs(2));
    }
    bail!("agx jobs list failed: {}", last.unwrap_or_default())
}

/// Prints what happened and what was found; whether it all checked out.
fn report(
    cluster: &Cluster,
    shared: &Shared,
    f: &check::Findings,
    faults: &Faults,
    errors: &[String],
    jobs: &[JobRecord],
    started: Instant,
) -> bool {
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::SeqCst);
    println!();
    println!("soak: done after {:.0} s", started.elapsed().as_secs_f64());
    println!(
        "  submissions {}, acknowledged jobs {}, jobs in unacknowledged submissions {} ({} \
         failed while the queue or its database was down or restarting)",
        n(&shared.submissions),
        n(&shared.acked_jobs),
        n(&shared.submitted_jobs) - n(&shared.acked_jobs),
        n(&shared.failed_in_faults)
    );
    println!(
        "  queue kills {}, database restarts {}, takeovers after a node lost the database {}, \
         worker kills {}, worker starts {}, slowest queue start {:.1} s, longest from a \
         queue kill to serving again {:.1} s",
        faults.queue_kills,
        faults.database_restarts,
        cluster.handovers,
        faults.worker_kills,
        cluster.workers.iter().map(|w| w.runs).sum::<u32>(),
        cluster.slowest_start().as_secs_f64(),
        cluster.slowest_takeover.as_secs_f64()
    );
    println!("  jobs the queue holds: {}", jobs.len());
    println!("  acknowledged jobs by state: {:?}", f.by_state);
    println!("  unacknowledged jobs stored, by state: {:?}", f.unacked_by_state);
    println!(
        "  outputs checked {} (+{} of unacknowledged submissions), retried {}, most attempts \
         {}, declined {}, reports as blobs {}, succeeded without a log line {}",
        f.outputs_checked,
        f.unacked_checked,
        f.retried,
        f.most_attempts,
        f.declined,
        f.report_blobs,
        f.succeeded_unlogged
    );
    println!("  audit log: {}", f.audit_summary);
    for (what, count) in &f.log_counts {
        println!("  log: {what}: {count}");
    }
    let mut problems: Vec<(String, Vec<String>)> = vec![
        ("acknowledged jobs lost".into(), f.lost.iter().map(ToString::to_string).collect()),
        ("jobs succeeded twice".into(), f.doubled.clone()),
        ("jobs not finished".into(), f.unfinished.clone()),
        ("jobs that did not succeed".into(), f.not_succeeded.clone()),
        ("jobs mixed up".into(), f.mixed_up.clone()),
        ("wrong outputs".into(), f.wrong_output.clone()),
        ("reports that should have been a blob".into(), f.small_reports.clone()),
        ("panics".into(), f.panics.clone()),
        ("audit log faults".into(), f.audit.clone()),
        ("processes that exited by themselves".into(), cluster.unexpected_exits.clone()),
        (
            "submissions that failed with the queue and its database up".into(),
            lock(&shared.failed_otherwise).clone(),
        ),
        ("actions given up on".into(), lock(&shared.gave_up).clone()),
        ("errors".into(), errors.to_vec()),
    ];
    if faults.timed_out {
        problems.push((
            "out of time".into(),
            vec![format!("jobs by state at the last look: {:?}", faults.last_stats)],
        ));
    }
    let mut ok = true;
    for (what, items) in &problems {
        println!("  {what}: {}", items.len());
        for item in items.iter().take(10) {
            println!("    {item}");
        }
        if items.len() > 10 {
            println!("    … and {} more", items.len() - 10);
        }
        ok &= items.is_empty();
    }
    println!("soak: {}", if ok { "PASSED" } else { "FAILED" });
    ok
}
