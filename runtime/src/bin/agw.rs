//! `agw`, the AGEniX worker.
//!
//! `agw init --data DIR` makes the worker's key (`DIR/worker.key`) and prints its key id, for
//! the queue's operator to enroll (`agq worker enroll DIR/worker.pub`). `agw --data DIR
//! --config agw.toml` (flags and `AGW_*` variables override the file) authenticates with that
//! key, registers with the queue, claims up to its concurrency, verifies every lease end to end, runs it sandboxed,
//! heartbeats, reconnects when the queue goes away, and drains on SIGTERM or Ctrl-C.
//! `agw doctor` reports every kernel feature the native jail uses; exit 1 when native tasks
//! would be refused.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use agenix_host::native::{Allowlist, Helper, NativeConfig, NativeHost, jail};
use agenix_host::wasm::{Allocator, WasmConfig, WasmHost};
use agenix_link::logging::{self, LogFormat};
use agenix_proto::{Fingerprint, KeyId, Limits, MountName};
use agenix_runtime::exec::{MountConfig, Resources};
use agenix_runtime::files::{MAX_CONFIG_BYTES, read_small};
use agenix_runtime::store::LocalStore;
use agenix_runtime::tools;
use agenix_runtime::worker::config::FileConfig;
use agenix_runtime::worker::{MAX_CONCURRENCY, Settings, Worker, key};
use anyhow::{Context, Result, bail};
use clap::Parser;

/// A command's examples, for the end of its `--help`.
macro_rules! examples {
    ($($line:literal),+ $(,)?) => {
        concat!("Examples:", $("\n  ", $line),+)
    };
}

#[derive(Debug, Parser)]
#[command(
    name = "agw",
    version,
    about = "AGEniX worker: verifies and runs leased jobs in sandboxes",
    after_help = examples!(
        "agw init --data /var/lib/agw",
        "agw --config /etc/agw/agw.toml",
        "agw --queue 10.0.0.5:7411 --fingerprint sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 --data /var/lib/agw --trust trust.json",
        "agw --config agw.toml --allow-tool grep --mount logs=/var/log:ro --metrics 127.0.0.1:9465",
        "AGW_LOG=debug agw --config agw.toml --log-format json",
        "agw doctor",
    )
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
    /// How log lines are written to stderr: `text`, or `json` (one object per line, for log
    /// collectors). `AGW_LOG` filters them (`info` by default; `debug`, `warn`).
    #[arg(long, global = true, value_enum, default_value_t, env = "AGW_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The configuration file (see the docs of `agenix_runtime::worker::config`).
    #[arg(long, env = "AGW_CONFIG")]
    config: Option<PathBuf>,
    /// The queue's address: HOST:PORT, or its nodes' separated by commas (or the flag
    /// repeated). Each connection dials them all and keeps the first that serves.
    #[arg(long, env = "AGW_QUEUE")]
    queue: Vec<String>,
    /// The queue's fingerprint (`agq fingerprint`).
    #[arg(long, env = "AGW_FINGERPRINT")]
    fingerprint: Option<Fingerprint>,
    /// The worker's directory, holding its key (`agw init`).
    #[arg(long, env = "AGW_DATA")]
    data: Option<PathBuf>,
    /// The trust file.
    #[arg(long, env = "AGW_TRUST")]
    trust: Option<PathBuf>,
    /// A name for operators [default: the host name].
    #[arg(long, env = "AGW_NAME")]
    name: Option<String>,
    /// Jobs at once [default: 4].
    #[arg(long, env = "AGW_CONCURRENCY")]
    concurrency: Option<u32>,
    /// Where components and compiled artifacts are cached.
    #[arg(long, env = "AGW_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// A directory tasks may mount: NAME=DIR[:ro|rw] (adds to the file's).
    #[arg(long = "mount", value_name = "NAME=DIR[:ro|rw]")]
    mounts: Vec<String>,
    /// A native tool: NAME or NAME=PATH (adds to the file's).
    #[arg(long = "allow-tool", value_name = "NAME[=PATH]")]
    allow_tools: Vec<String>,
    /// Run native tools even if the kernel lacks part of the jail (logged on every task).
    #[arg(long)]
    danger_degraded: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP; e.g. 127.0.0.1:9465).
    /// They hold counts and durations only.
    #[arg(long, env = "AGW_METRICS", value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Make the worker's key in DIR (created, mode 0700) and print its key id.
    #[command(after_help = examples!("agw init --data /var/lib/agw"))]
    Init {
        /// The worker's directory.
        #[arg(long)]
        data: PathBuf,
    },
    /// Print the key id of the worker key in DIR.
    #[command(after_help = examples!("agw id --data /var/lib/agw"))]
    Id {
        /// The worker's directory.
        #[arg(long)]
        data: PathBuf,
    },
    /// Check every kernel feature the native jail needs; exit 1 if native tasks would be
    /// refused.
    #[command(after_help = examples!("agw doctor", "agw doctor --json"))]
    Doctor {
        /// Print JSON Lines instead of text.
        #[arg(long)]
        json: bool,
        /// Report as a worker in degraded mode would.
        #[arg(long)]
        danger_degraded: bool,
    },
}

fn main() -> ExitCode {
    // First: this binary is also the jail helper.
    jail::run_if_helper();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let result = match cli.command {
        Some(Command::Init { data }) => init(&data),
        Some(Command::Id { data }) => key::load(&data).and_then(|k| {
            writeln!(std::io::stdout(), "{}", KeyId::of(&k.verifying_key()))?;
            Ok(ExitCode::SUCCESS)
        }),
        Some(Command::Doctor { json, danger_degraded }) => doctor(json, danger_degraded),
        None => run(cli.run, cli.log_format).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "agw: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init(data: &std::path::Path) -> Result<ExitCode> {
    let id = key::init(data)?;
    // The key id alone on stdout (what scripts take); the guidance on stderr.
    writeln!(std::io::stdout(), "{id}")?;
    writeln!(
        std::io::stderr(),
        "worker key made: {}\nenroll it at the queue: agq worker enroll {} --name NAME --data \
         QUEUE_DIR\nthen run: agw --data {} ...",
        key::key_path(data).display(),
        data.join(key::PUB_FILE).display(),
        data.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(args: RunArgs, log_format: LogFormat) -> Result<()> {
    logging::init("AGW_LOG", log_format);
    let file = match &args.config {
        Some(p) => FileConfig::parse(
            &read_small(p, MAX_CONFIG_BYTES)
                .with_context(|| format!("cannot read {}", p.display()))?,
        )
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("{} is not a valid worker configuration", p.display()))?,
        None => FileConfig::default(),
    };
    let need = |what: &str| {
        anyhow::anyhow!("no {what}: set it in the config file, by flag or in the environment")
    };
    let queue = match (args.queue.is_empty(), file.queue) {
        (false, _) => agenix_link::Addresses::from_parts(args.queue.iter().map(String::as_str))
            .map_err(|e| anyhow::anyhow!("--queue: {e}"))?,
        (true, Some(q)) => q,
        (true, None) => return Err(need("queue address (--queue)")),
    };
    let fingerprint = args
        .fingerprint
        .or(file.fingerprint)
        .ok_or_else(|| need("queue fingerprint (--fingerprint)"))?;
    let data = args.data.or(file.data).ok_or_else(|| need("worker directory (--data)"))?;
    let key = key::load(&data)?;
    tracing::info!(key = %KeyId::of(&key.verifying_key()), "worker key");
    let trust = args.trust.or(file.trust).ok_or_else(|| need("trust file (--trust)"))?;
    let name =
        args.name.or(file.name).unwrap_or_else(|| nix_hostname().unwrap_or_else(|| "agw".into()));
    let concurrency = args.concurrency.or(file.concurrency).unwrap_or(4);
    if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
        bail!("concurrency {concurrency} is outside 1..={MAX_CONCURRENCY}");
    }
    let cache_dir = match args.cache_dir.or(file.cache_dir) {
        Some(d) => d,
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".cache/agw"))
            .ok_or_else(|| need("cache directory (--cache-dir)"))?,
    };
    let ceilings = file.ceilings.resolve().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut mounts: BTreeMap<MountName, MountConfig> = BTreeMap::new();
    for (n, spec) in &file.mounts {
        let host = std::fs::canonicalize(&spec.path)
            .with_context(|| format!("mount {n}: {}", spec.path.display()))?;
        mounts.insert(n.clone(), MountConfig { host, access: spec.access });
    }
    for m in &args.mounts {
        let (n, cfg) = MountConfig::parse(m).map_err(anyhow::Error::msg)?;
        mounts.insert(n, cfg);
    }
    let mut resources = Resources { mounts, defaults: Limits::DEFAULT.min(&ceilings), ceilings };
    let mut allow = Allowlist::new();
    for (n, spec) in file.tools.clone() {
        allow.allow(n, spec.entry())?;
    }
    for arg in &args.allow_tools {
        let (n, entry) = tools::parse_arg(arg)?;
        allow.allow(n, entry)?;
    }
    let degraded = args.danger_degraded || file.danger_degraded;
    std::fs::create_dir_all(&cache_dir)
        .with_context(|| format!("cannot create {}", cache_dir.display()))?;
    // Its tasks' scratch and its jails' roots; those of killed workers are swept.
    let scratch =
        agenix_host::process_dir::create("agw-").context("cannot create a scratch directory")?;
    let rt = runtime()?;
    rt.block_on(async move {
        // Listening for SIGTERM and SIGINT from the start: a signal sent the moment the
        // worker registers drains it cleanly rather than killing it.
        let shutdown = shutdown()?;
        if let Some(addr) = args.metrics {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {addr}"))?;
            let at = listener.local_addr()?;
            tokio::spawn(agenix_runtime::worker::metrics::serve(listener));
            tracing::info!(%at, "metrics at http://{at}/metrics");
        }
        let wasm = Arc::new(WasmHost::new(WasmConfig {
            ceilings,
            max_concurrent: concurrency * 4,
            cache_dir: Some(cache_dir.join("artifacts")),
            scratch_dir: scratch.path().join("wasm"),
            allocator: Allocator::Auto,
        })?);
        // Tasks without fuel need the second engine: started now, so that a worker that
        // cannot have it lowers its fuel ceiling (the queue then offers such tasks to other
        // workers) rather than failing each one it is given.
        if !ceilings.is_metered()
            && let Err(e) = wasm.start_unmetered().await
        {
            tracing::error!(
                error = %e,
                "cannot start the engine of unmetered tasks; this worker declines them"
            );
            resources.ceilings.fuel = agenix_proto::UNMETERED - 1;
            resources.defaults = resources.defaults.min(&resources.ceilings);
        }
        let native = if allow.names().next().is_some() {
            let host = NativeHost::new(NativeConfig {
                helper: Helper::current_exe().context("cannot find this program")?,
                allowlist: allow,
                danger_degraded: degraded,
                scratch_dir: scratch.path().join("native"),
                disabled: vec![],
            })
            .await?;
            if let Some(why) = host.refusal() {
                tracing::warn!(reason = %why, "native tools will be refused (see agw doctor)");
            }
            Some(Arc::new(host))
        } else {
            None
        };
        let settings = Settings {
            queue,
            fingerprint,
            key,
            trust,
            name,
            concurrency,
            labels: file.labels.clone(),
            resources,
            state_dir: cache_dir.clone(),
        };
        let worker = Worker::new(settings, wasm, native, LocalStore::new(cache_dir.join("blobs")))
            .with_context(|| {
                format!("cannot keep the worker's state in {}", cache_dir.display())
            })?;
        worker.check_capabilities().map_err(|e| anyhow::anyhow!("cannot register: {e}"))?;
        worker.first_contact().await.context("the queue refuses this worker")?;
        worker.run(shutdown).await;
        anyhow::Ok(())
    })
}

/// Resolves at the first SIGTERM or SIGINT; the handlers are in place once this returns.
fn shutdown() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("shutting down: draining running jobs");
    })
}

fn nix_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn doctor(json: bool, danger_degraded: bool) -> Result<ExitCode> {
    let rt = runtime()?;
    let scratch = agenix_host::process_dir::create("agw-doctor-")
        .context("cannot create a scratch directory")?;
    let host = rt.block_on(NativeHost::new(NativeConfig {
        helper: Helper::current_exe().context("cannot find this program")?,
        allowlist: Allowlist::new(),
        danger_degraded,
        scratch_dir: scratch.path().to_path_buf(),
        disabled: vec![],
    }))?;
    let probe = host.probe();
    let refusal = host.refusal();
    let mut out = std::io::stdout().lock();
    if json {
        for c in &probe.checks {
            writeln!(out, "{}", serde_json::json!({ "type": "check", "data": c }))?;
        }
        for (name, how) in host.mechanisms() {
            let rec =
                serde_json::json!({ "type": "mechanism", "data": { "name": name, "how": how } });
            writeln!(out, "{rec}")?;
        }
        let verdict = serde_json::json!({ "type": "verdict", "data": { "native_ready": refusal.is_none(), "reason": refusal, "degraded": danger_degraded && !probe.ready() } });
        writeln!(out, "{verdict}")?;
    } else {
        for c in &probe.checks {
            let status = match (c.found, c.required) {
                (true, _) => "found  ",
                (false, true) => "MISSING",
                (false, false) => "absent ",
            };
            let kind = if c.required { "required" } else { "optional" };
            writeln!(out, "{status}  {:<24} {kind:<9} {}", c.name, c.detail)?;
            writeln!(out, "         {:<24} {:<9} {}", "", "", c.meaning)?;
        }
        writeln!(out)?;
        writeln!(out, "in force:")?;
        for (name, how) in host.mechanisms() {
            writeln!(out, "  {name:<18} {how}")?;
        }
        writeln!(out)?;
        match &refusal {
            None if probe.ready() => writeln!(out, "native tasks: ready")?,
            None => writeln!(
                out,
                "native tasks: DEGRADED (running without what is missing; logged on every task)"
            )?,
            Some(reason) => writeln!(out, "native tasks: REFUSED — {reason}")?,
        }
    }
    Ok(if refusal.is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
