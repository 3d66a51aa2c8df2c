//! `agq`, the AGEniX queue.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agenix_link::logging::{self, LogFormat};
use agenix_proto::wire::ClientRole;
use agenix_queue::pg::PgStore;
use agenix_queue::server::{Queue, Settings};
use agenix_queue::trust::TrustSource;
use agenix_queue::{audit, blobs::Blobs, identity, store::RedbStore};
use anyhow::{Context, Result};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// A command's examples, for the end of its `--help`.
macro_rules! examples {
    ($($line:literal),+ $(,)?) => {
        concat!("Examples:", $("\n  ", $line),+)
    };
}

#[derive(Debug, Parser)]
#[command(
    name = "agq",
    version,
    about = "AGEniX queue: stores jobs durably and leases them to workers over QUIC",
    after_help = examples!(
        "agq init --data /var/lib/agq",
        "agq serve --data /var/lib/agq --listen 0.0.0.0:7411 --metrics 127.0.0.1:9464",
        "agq worker enroll worker.pub --name build-1 --data /var/lib/agq",
        "agq audit verify --data /var/lib/agq",
    )
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written to stderr: `text`, or `json` (one object per line, for log
    /// collectors). `AGQ_LOG` filters them (`info` by default; `debug`, `warn`).
    #[arg(long, global = true, value_enum, default_value_t, env = "AGQ_LOG_FORMAT")]
    log_format: LogFormat,
}

/// Where the queue keeps its jobs, when not in the data directory.
#[derive(Debug, clap::Args)]
struct StoreArgs {
    /// Keep jobs in PostgreSQL: postgres://USER@HOST[:PORT]/DATABASE. Off loopback the
    /// connection uses TLS with the server's name checked (`sslmode=verify-full`, roots from
    /// `sslrootcert=FILE` or the platform's). No password in the URL: see
    /// --store-password-file.
    #[arg(long, value_name = "URL", env = "AGQ_STORE")]
    store: Option<String>,
    /// A file holding the database password (its first line). The password may also come
    /// from AGQ_STORE_PASSWORD.
    #[arg(long, value_name = "FILE", env = "AGQ_STORE_PASSWORD_FILE")]
    store_password_file: Option<PathBuf>,
}

impl StoreArgs {
    /// The store of the queue in `data`: PostgreSQL when --store names it, else the
    /// embedded one. A queue directory remembers which it was served with (`DATA/store`,
    /// the URL without a password): without --store, a queue served from PostgreSQL is
    /// refused rather than served from its empty embedded store, and a queue whose jobs
    /// are in its embedded store is not served from PostgreSQL.
    fn of_queue(
        &self,
        data: &std::path::Path,
        serving: bool,
    ) -> Result<Option<agenix_queue::pg::Target>> {
        let marker = data.join("store");
        let remembered = match agenix_queue::read_capped(&marker, 4096) {
            Ok(b) => Some(String::from_utf8_lossy(&b).trim().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", marker.display())),
        };
        let target = self.target()?;
        match (&target, &remembered) {
            (None, Some(url)) => anyhow::bail!(
                "this queue keeps its jobs in {url} ({}): give --store (or AGQ_STORE)",
                marker.display()
            ),
            // Another database would start the queue empty under its identity, and its blob
            // collector would take the blobs of the jobs in the first one.
            (Some(t), Some(url)) if t.to_string() != *url => anyhow::bail!(
                "this queue keeps its jobs in {url} ({}), not in {t}: if the database moved, \
                 write its new URL there",
                marker.display()
            ),
            (Some(t), None) if serving => {
                // First served from PostgreSQL: only a queue whose embedded store is empty
                // (marked once the database takes it: `remember`).
                let redb = data.join("queue.redb");
                if redb.exists() {
                    use agenix_queue::store::Store as _;
                    let store = RedbStore::open(&redb)?;
                    let mut jobs = 0u64;
                    store.load_with(&mut |_| jobs += 1)?;
                    let held = jobs + store.audit_head()?.size;
                    anyhow::ensure!(
                        held == 0,
                        "this queue's jobs and audit log are in {} (it was served without \
                         --store): a queue does not move to PostgreSQL; make a new queue \
                         directory with agq init for {t}",
                        redb.display()
                    );
                }
            }
            _ => {}
        }
        Ok(target)
    }

    /// Marks the queue in `data` as served from `target` (`DATA/store`), once the database
    /// has taken it: a directory a database refused is not tied to it.
    fn remember(data: &std::path::Path, target: &agenix_queue::pg::Target) -> Result<()> {
        let marker = data.join("store");
        if marker.exists() {
            return Ok(());
        }
        let mut tmp = tempfile::NamedTempFile::new_in(data)
            .with_context(|| format!("cannot write {}", marker.display()))?;
        writeln!(tmp, "{target}")?;
        tmp.as_file().sync_all()?;
        tmp.persist(&marker).with_context(|| format!("cannot write {}", marker.display()))?;
        Ok(())
    }

    /// The PostgreSQL store named, if one is.
    fn target(&self) -> Result<Option<agenix_queue::pg::Target>> {
        let Some(url) = &self.store else {
            anyhow::ensure!(
                self.store_password_file.is_none(),
                "--store-password-file is for a PostgreSQL store: give --store URL too"
            );
            return Ok(None);
        };
        let from_env = std::env::var("AGQ_STORE_PASSWORD").ok();
        let password = match (&self.store_password_file, from_env) {
            (Some(_), Some(_)) => anyhow::bail!(
                "the store's password is given twice (--store-password-file and \
                 AGQ_STORE_PASSWORD): give it once"
            ),
            (Some(file), None) => {
                use std::os::unix::fs::PermissionsExt as _;
                let bytes = agenix_queue::read_capped(file, 4096)
                    .with_context(|| format!("the store's password file {}", file.display()))?;
                let mode = std::fs::metadata(file)?.permissions().mode();
                anyhow::ensure!(
                    mode & 0o004 == 0,
                    "the store's password file {} is readable by every user (mode {:o}): \
                     chmod o-r it",
                    file.display(),
                    mode & 0o777
                );
                let text = String::from_utf8(bytes).map_err(|_| {
                    anyhow::anyhow!("the store's password file {} is not UTF-8", file.display())
                })?;
                let line = text.lines().next().unwrap_or("").to_string();
                anyhow::ensure!(
                    !line.is_empty(),
                    "the store's password file {} is empty",
                    file.display()
                );
                Some(line)
            }
            (None, Some(env)) if env.is_empty() => {
                anyhow::bail!("AGQ_STORE_PASSWORD is set but empty")
            }
            (None, env) => env,
        };
        Ok(Some(agenix_queue::pg::Target::parse(url, password.as_deref())?))
    }
}

#[derive(Debug, clap::Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once, at start")]
enum Command {
    /// Create a queue directory: TLS identity, one token per role, an empty trust file.
    #[command(after_help = examples!("agq init --data /var/lib/agq"))]
    Init {
        /// The directory (created, mode 0700).
        #[arg(long)]
        data: PathBuf,
    },
    /// Serve on ADDR, keeping jobs in the data directory's embedded store, or in PostgreSQL
    /// with --store.
    #[command(after_help = examples!(
        "agq serve --data /var/lib/agq",
        "agq serve --data /var/lib/agq --listen 0.0.0.0:7411 --ready-file /run/agq/ready",
        "agq serve --data q --metrics 127.0.0.1:9464 --web 127.0.0.1:8080",
        "agq serve --data q --web 0.0.0.0:8443 --web-cert web.crt --web-key web.key",
        "AGQ_LOG=debug agq serve --data q --log-format json",
        "AGQ_STORE_PASSWORD_FILE=/etc/agq/pg.pass agq serve --data q --store 'postgres://agq@db.example.net/agq?sslmode=verify-full'",
    ))]
    Serve {
        /// The queue directory from `agq init`.
        #[arg(long)]
        data: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        /// With --store: while another node of this queue serves the database, wait and take
        /// over when it stops (dies, freezes or loses the database), instead of refusing.
        /// Nodes share the queue directory (its identity, tokens, trust file and blobs).
        #[arg(long, requires = "store")]
        standby: bool,
        /// With --store: how long the node serving the database holds it without renewing
        /// its lease, in ms; a standby takes over this long after the serving node stops.
        #[arg(long, requires = "store", default_value_t = 10_000,
              value_parser = clap::value_parser!(u64).range(1000..=600_000))]
        store_lease_ms: u64,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7411")]
        listen: SocketAddr,
        /// Signers whose plans and actions are accepted [default: DATA/trust.json].
        #[arg(long)]
        trust: Option<PathBuf>,
        /// Largest blob accepted, in bytes.
        #[arg(long, default_value_t = 256 << 20)]
        max_blob: u64,
        /// Most bytes of blobs stored at once; uploads past it are refused with its name.
        #[arg(long, default_value_t = 20 << 30)]
        blob_quota: u64,
        /// How long a blob nothing refers to is kept after it was last uploaded (`1h`).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        blob_grace: Duration,
        /// Commit each request in its own transaction (for comparison; slower).
        #[arg(long)]
        no_group_commit: bool,
        /// Connections one address may hold before they authenticate as workers.
        #[arg(long, default_value_t = 10)]
        connections_per_ip: usize,
        /// Requests one address may make per minute as a planner or observer (Hello
        /// included).
        #[arg(long, default_value_t = 1000)]
        requests_per_minute: u32,
        /// Requests a worker connection may make per minute, per slot of its concurrency.
        #[arg(long, default_value_t = 60_000)]
        worker_requests_per_minute: u32,
        /// How long a lease lasts without a heartbeat, in ms.
        #[arg(long, default_value_t = 30_000)]
        lease_ms: u64,
        /// How often workers heartbeat, in ms.
        #[arg(long, default_value_t = 10_000)]
        heartbeat_ms: u64,
        /// How long finished jobs are kept (`7days`, `12h`).
        #[arg(long, default_value = "7days", value_parser = humantime::parse_duration)]
        retention: Duration,
        /// How often the audit log's checkpoint is signed, when the log grew (`10s`; at
        /// least `100ms`).
        #[arg(long, default_value = "10s", value_parser = checkpoint_interval)]
        checkpoint_every: Duration,
        /// How long a client may take to send one request frame, in ms.
        #[arg(long, default_value_t = 10_000)]
        request_timeout_ms: u64,
        /// Once serving, write `{"address": ..., "fingerprint": ...}` to FILE (with
        /// `"metrics"` and `"web"` too when given; replaced atomically; removed on a clean
        /// shutdown): what scripts and tests wait for.
        #[arg(long, value_name = "FILE")]
        ready_file: Option<PathBuf>,
        /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP, apart from QUIC;
        /// e.g. 127.0.0.1:9464). They hold counts and durations only.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<SocketAddr>,
        /// Serve the dashboard at ADDR (e.g. 127.0.0.1:8080): jobs, workers, the audit
        /// log. On loopback it may be read without signing in; anywhere else it needs
        /// --web-cert and --web-key, and every page a role token.
        #[arg(long, value_name = "ADDR")]
        web: Option<SocketAddr>,
        /// The dashboard's TLS certificate chain (PEM).
        #[arg(long, value_name = "FILE", requires = "web_key")]
        web_cert: Option<PathBuf>,
        /// The dashboard's TLS private key (PEM).
        #[arg(long, value_name = "FILE", requires = "web_cert")]
        web_key: Option<PathBuf>,
    },
    /// Create or update the queue's tables in a PostgreSQL database (`agq serve --store`).
    /// Safe to run again, and from several hosts at once.
    #[command(after_help = examples!(
        "agq migrate --store postgres://agq@localhost/agq",
        "AGQ_STORE_PASSWORD_FILE=/etc/agq/pg.pass agq migrate --store 'postgres://agq@db.example.net/agq?sslmode=verify-full&sslrootcert=/etc/agq/db-ca.pem'",
    ))]
    Migrate {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Print the queue's fingerprint (what clients pin, and actions name as audience).
    #[command(after_help = examples!("agq fingerprint --data /var/lib/agq"))]
    Fingerprint {
        /// The queue directory.
        #[arg(long)]
        data: PathBuf,
    },
    /// Manage role tokens (planner and observer).
    #[command(subcommand, after_help = examples!("agq token rotate planner --data /var/lib/agq"))]
    Token(TokenCommand),
    /// Enroll, list and revoke worker keys (a running queue notices at once).
    #[command(
        subcommand,
        after_help = examples!(
            "agq worker enroll worker.pub --name build-1 --labels gpu,eu --data /var/lib/agq",
            "agq worker list --data /var/lib/agq",
        )
    )]
    Worker(WorkerCommand),
    /// Check and read the audit log (beside a running queue, or a stopped one).
    #[command(
        subcommand,
        after_help = examples!(
            "agq audit verify --data /var/lib/agq",
            "agq audit export --data /var/lib/agq --since 2h",
        )
    )]
    Audit(AuditCommand),
}

#[derive(Debug, clap::Subcommand)]
enum AuditCommand {
    /// Check every entry, link and checkpoint; name the first entry edited, missing,
    /// reordered or removed. Exit 1 when the log is broken.
    #[command(after_help = examples!(
        "agq audit verify --data /var/lib/agq",
        "agq audit verify --data /var/lib/agq --checkpoint saved/checkpoint-1.txt",
        "agq audit verify --data /var/lib/agq --store postgres://agq@localhost/agq",
    ))]
    Verify {
        /// The queue directory.
        #[arg(long)]
        data: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        /// A checkpoint kept elsewhere (from `agq audit checkpoint`): the log must still
        /// hold its tree. Repeatable.
        #[arg(long, value_name = "FILE")]
        checkpoint: Vec<PathBuf>,
    },
    /// Write entries as JSON Lines, each exactly as stored and hashed.
    #[command(after_help = examples!(
        "agq audit export --data /var/lib/agq > audit.jsonl",
        "agq audit export --data /var/lib/agq --since 2026-12-06T10:00:00Z",
    ))]
    Export {
        /// The queue directory.
        #[arg(long)]
        data: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        /// Only entries recorded since then: a time (`2026-12-06T10:00:00Z`) or an age
        /// (`2h`, `7days`).
        #[arg(long, value_name = "T")]
        since: Option<String>,
    },
    /// Print the latest signed checkpoint (keep copies elsewhere: `verify --checkpoint`).
    #[command(after_help = examples!(
        "agq audit checkpoint --data /var/lib/agq > saved/checkpoint-$(date +%s).txt",
    ))]
    Checkpoint {
        /// The queue directory.
        #[arg(long)]
        data: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, clap::Subcommand)]
enum WorkerCommand {
    /// Accept a worker's key (`worker.pub` from `agw init`) under a name.
    #[command(after_help = examples!(
        "agq worker enroll worker.pub --name build-1 --data /var/lib/agq",
        "agq worker enroll worker.pub --name gpu-2 --labels gpu,eu --data /var/lib/agq",
    ))]
    Enroll {
        /// The worker's public key file (PEM).
        key: PathBuf,
        /// A name for operators: what the queue shows for this worker.
        #[arg(long)]
        name: String,
        /// Labels shown beside it, comma-separated.
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        #[command(flatten)]
        at: TrustAt,
    },
    /// List enrolled workers, revoked ones included.
    #[command(after_help = examples!(
        "agq worker list --data /var/lib/agq",
        "agq worker list --data /var/lib/agq --json",
    ))]
    List {
        /// Print JSON Lines.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: TrustAt,
    },
    /// Revoke a worker key: refused from its next request, its leases given to others.
    /// Revocation is permanent.
    #[command(after_help = examples!(
        "agq worker revoke sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 --data /var/lib/agq",
    ))]
    Revoke {
        /// The key id, `sha256:<hex>`, as `agw init` or `agq worker list` printed it.
        keyid: String,
        #[command(flatten)]
        at: TrustAt,
    },
}

/// Where the enrolled workers are: the queue's trust file.
#[derive(Debug, clap::Args)]
struct TrustAt {
    /// The queue directory.
    #[arg(long)]
    data: PathBuf,
    /// The queue's trust file, if `agq serve --trust` names another [default:
    /// DATA/trust.json].
    #[arg(long)]
    trust: Option<PathBuf>,
}

impl TrustAt {
    fn path(&self) -> PathBuf {
        self.trust.clone().unwrap_or_else(|| self.data.join("trust.json"))
    }
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Replace a role's token; the old one stops working when the queue restarts.
    #[command(after_help = examples!(
        "agq token rotate planner --data /var/lib/agq",
        "agq token rotate observer --data /var/lib/agq",
    ))]
    Rotate {
        /// planner or observer (workers have keys, not tokens).
        role: ClientRole,
        /// The queue directory.
        #[arg(long)]
        data: PathBuf,
    },
}

/// Limits the malloc arenas agq's threads share to two. glibc gives each thread that meets
/// contention an arena of its own (up to eight per core), and freed memory stays in them:
/// after a million jobs were submitted, 271 MiB resident against 217 MiB with two, for no
/// measurable speed (the scheduler is one lock; allocation is not where the time goes).
/// `MALLOC_ARENA_MAX` in the environment still decides when set.
#[cfg(target_env = "gnu")]
fn limit_malloc_arenas() {
    const MALLOC_ARENAS: i32 = 2;
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        #[allow(unsafe_code, reason = "mallopt(3) only tunes the allocator; no thread runs yet")]
        // SAFETY: mallopt takes two integers and touches nothing of ours; it is called before
        // any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        }
    }
}

#[cfg(not(target_env = "gnu"))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "agq: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let log_format = cli.log_format;
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Init { data } => {
            let fp = identity::init(&data)?;
            RedbStore::create(&data.join("queue.redb"))?;
            // The fingerprint alone on stdout (what scripts take); the guidance on stderr.
            writeln!(out, "{fp}")?;
            let mut err = std::io::stderr().lock();
            writeln!(err, "queue directory {} ready:", data.display())?;
            writeln!(err, "  tokens:  planner.token, observer.token (hand each to its clients)")?;
            writeln!(
                err,
                "  trust:   add signers with `agx trust add KEY.pub --name NAME --trust {}`",
                data.join("trust.json").display()
            )?;
            writeln!(
                err,
                "  workers: enroll each worker's key with `agq worker enroll worker.pub --name \
                 NAME --data {}`",
                data.display()
            )?;
        }
        Command::Fingerprint { data } => writeln!(out, "{}", identity::fingerprint(&data)?)?,
        Command::Token(TokenCommand::Rotate { role, data }) => {
            identity::rotate(&data, role)?;
            writeln!(
                out,
                "rotated the {} token: {}",
                role.as_str(),
                data.join(format!("{}.token", role.as_str())).display()
            )?;
            let _ = writeln!(
                std::io::stderr(),
                "a running queue takes it when it restarts; until then it accepts the old one"
            );
        }
        Command::Worker(c) => worker_command(c, &mut out)?,
        Command::Audit(AuditCommand::Verify { data, store, checkpoint }) => {
            logging::init("AGQ_LOG", log_format);
            let saved = checkpoint
                .iter()
                .map(|f| {
                    let bytes = agenix_queue::read_capped(
                        f,
                        agenix_proto::audit::MAX_CHECKPOINT_BYTES as u64,
                    )
                    .with_context(|| format!("cannot read the checkpoint {}", f.display()))?;
                    let note = String::from_utf8(bytes)
                        .with_context(|| format!("the checkpoint {} is not text", f.display()))?;
                    // Kept in a shell variable it lost its last newline; through another
                    // system's tools it gained carriage returns. The signed text has neither.
                    let mut note = note.replace("\r\n", "\n");
                    if !note.ends_with('\n') {
                        note.push('\n');
                    }
                    audit::check_saved(&data, &note)
                        .with_context(|| format!("the checkpoint {}", f.display()))?;
                    Ok(note)
                })
                .collect::<Result<Vec<_>>>()?;
            let v = match store.of_queue(&data, false)? {
                Some(target) => audit::verify_log(&PgStore::inspect(target)?, &data, &saved)?,
                None => no_panic(&data, || audit::verify_dir(&data, &saved))?,
            };
            let fp = identity::fingerprint(&data)?;
            writeln!(
                out,
                "audit log intact: {} {}, {} {} signed by {fp}",
                v.entries,
                if v.entries == 1 { "entry" } else { "entries" },
                v.checkpoints,
                if v.checkpoints == 1 { "checkpoint" } else { "checkpoints" },
            )?;
            match v.entries - v.signed {
                0 => writeln!(out, "every entry is covered by the latest checkpoint")?,
                1 => writeln!(
                    out,
                    "1 entry after the latest checkpoint ({}) is not signed yet",
                    v.signed
                )?,
                n => writeln!(
                    out,
                    "{n} entries after the latest checkpoint ({}) are not signed yet",
                    v.signed
                )?,
            }
        }
        Command::Audit(AuditCommand::Export { data, store, since }) => {
            logging::init("AGQ_LOG", log_format);
            let since = match since {
                None => 0,
                Some(t) => parse_since(&t)?,
            };
            let n = match store.of_queue(&data, false)? {
                Some(target) => audit::export_log(&PgStore::inspect(target)?, since, &mut out)?,
                None => no_panic(&data, || audit::export_dir(&data, since, &mut out))?,
            };
            let _ = writeln!(std::io::stderr(), "agq: exported {n} entries");
        }
        Command::Audit(AuditCommand::Checkpoint { data, store }) => {
            logging::init("AGQ_LOG", log_format);
            let latest = match store.of_queue(&data, false)? {
                Some(target) => {
                    use agenix_queue::store::Store as _;
                    PgStore::inspect(target)?.latest_checkpoint()?.map(|(_, note)| note)
                }
                None => no_panic(&data, || audit::latest_checkpoint_dir(&data))?,
            };
            match latest {
                Some(note) => {
                    // Only this queue's: a store another queue wrote is named, not passed on.
                    audit::check_saved(&data, &note).with_context(|| {
                        format!("the latest checkpoint in the store of {}", data.display())
                    })?;
                    write!(out, "{note}")?;
                }
                None => {
                    anyhow::bail!("no checkpoint yet: the queue signs one once the log has entries")
                }
            }
        }
        Command::Migrate { store } => {
            let target = store.target()?.ok_or_else(|| {
                anyhow::anyhow!(
                    "agq migrate needs --store URL (or AGQ_STORE): the database to migrate"
                )
            })?;
            let applied = agenix_queue::pg::migrate(&target)?;
            if applied.is_empty() {
                writeln!(
                    out,
                    "{target}: the schema is at version {}, nothing to do",
                    agenix_queue::pg::SCHEMA
                )?;
            }
            for (version, name) in applied {
                writeln!(out, "{target}: applied migration {version} ({name})")?;
            }
        }
        Command::Serve {
            data,
            store,
            standby,
            store_lease_ms,
            listen,
            trust,
            max_blob,
            blob_quota,
            blob_grace,
            no_group_commit,
            connections_per_ip,
            requests_per_minute,
            worker_requests_per_minute,
            lease_ms,
            heartbeat_ms,
            retention,
            request_timeout_ms,
            checkpoint_every,
            ready_file,
            metrics,
            web,
            web_cert,
            web_key,
        } => {
            drop(out);
            logging::init("AGQ_LOG", log_format);
            if let Some(file) = &ready_file {
                check_ready_file(file, &data)?;
            }
            let settings = Settings {
                limits: agenix_queue::limits::Limits {
                    connections_per_ip,
                    requests_per_minute,
                    worker_requests_per_minute,
                    ..agenix_queue::limits::Limits::default()
                },
                blob_grace,
                // Collected at least as often as the grace period, so it is kept to.
                collect_every: blob_grace.clamp(Duration::from_secs(1), Duration::from_secs(60)),
                group_commit: !no_group_commit,
                request_timeout: Duration::from_millis(request_timeout_ms),
                checkpoint_every,
                scheduler: agenix_queue_core::Config {
                    lease_ms,
                    heartbeat_ms,
                    retention_ms: u64::try_from(retention.as_millis()).unwrap_or(u64::MAX),
                    ..agenix_queue_core::Config::default()
                },
                ..Settings::default()
            };
            let web_tls = match (&web_cert, &web_key) {
                (Some(cert), Some(key)) => Some(agenix_queue::web::load_tls(cert, key)?),
                _ => None,
            };
            if web_tls.is_some() && web.is_none() {
                anyhow::bail!(
                    "--web-cert and --web-key are for the dashboard: give --web ADDR too"
                );
            }
            if let Some(addr) = web
                && !addr.ip().is_loopback()
                && web_tls.is_none()
            {
                anyhow::bail!(
                    "the dashboard on {addr} (not loopback) needs TLS: give --web-cert and \
                     --web-key (or serve it on 127.0.0.1)"
                );
            }
            let pg = store.of_queue(&data, true)?;
            let trust_path = trust.unwrap_or_else(|| data.join("trust.json"));
            let trust = TrustSource::file(trust_path).map_err(anyhow::Error::msg)?;
            // Read here to refuse a broken directory at once, and again once serving: a
            // standby may wait long, and the tokens may change meanwhile.
            identity::load_tokens(&data)?;
            let (cert, key) = identity::load_identity(&data)?;
            let fingerprint = agenix_link::fingerprint_of(&cert)?;
            let signing = identity::signing_key(&data)?;
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(async move {
                let serve = agenix_queue::pg::Serve {
                    lease: Duration::from_millis(store_lease_ms),
                    standby,
                    identity: fingerprint.to_string(),
                };
                let store: Arc<dyn agenix_queue::store::Store> = match pg {
                    Some(target) => {
                        let store = PgStore::open(target.clone(), &serve)?;
                        StoreArgs::remember(&data, &target)?;
                        Arc::new(store)
                    }
                    None => no_panic(&data, || {
                        Ok(Arc::new(RedbStore::open(&data.join("queue.redb"))?))
                    })?,
                };
                let tokens = identity::load_tokens(&data)?;
                let blobs = Blobs::new(&data, max_blob, blob_quota)?;
                let endpoint = agenix_queue::server::endpoint(listen, cert, key, &settings)?;
                let queue = no_panic(&data, || {
                    Queue::start(store, blobs, trust, signing, tokens, settings)
                })?;
                // Listening for SIGTERM and SIGINT before saying it serves: a signal sent the
                // moment it does shuts it down cleanly.
                let mut term = signal(SignalKind::terminate())?;
                let mut interrupt = signal(SignalKind::interrupt())?;
                tracing::info!(listen = %endpoint.local_addr()?, %fingerprint, "serving");
                let address = endpoint.local_addr()?;
                let metrics_at = match metrics {
                    Some(addr) => {
                        let listener = tokio::net::TcpListener::bind(addr)
                            .await
                            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
                        let at = listener.local_addr()?;
                        tokio::spawn(agenix_queue::metrics::serve(listener, queue.clone()));
                        tracing::info!(%at, "metrics at http://{at}/metrics");
                        Some(at)
                    }
                    None => None,
                };
                let web_at = match web {
                    Some(addr) => {
                        let listener =
                            tokio::net::TcpListener::bind(addr).await.with_context(|| {
                                format!("cannot listen for the dashboard on {addr}")
                            })?;
                        let at = listener.local_addr()?;
                        let settings = agenix_queue::web::WebSettings { tls: web_tls };
                        let scheme = if settings.tls.is_some() { "https" } else { "http" };
                        let q = queue.clone();
                        tokio::spawn(async move {
                            if let Err(e) = agenix_queue::web::serve(listener, settings, q).await {
                                tracing::error!(error = %e, "the dashboard stopped");
                            }
                        });
                        tracing::info!(%at, "dashboard at {scheme}://{at}/");
                        Some(at)
                    }
                    None => None,
                };
                let extra = [("metrics", metrics_at), ("web", web_at)];
                let wrote = match &ready_file {
                    Some(file) => {
                        Some((file, write_ready_file(file, address, fingerprint, &extra)?))
                    }
                    None => None,
                };
                // Scripts read this line (--ready-file is the machine interface beside it).
                let _ = writeln!(std::io::stdout(), "agq: serving on {address} as {fingerprint}");
                let lost = tokio::select! {
                    () = queue.clone().serve(endpoint.clone()) => None,
                    _ = term.recv() => None,
                    _ = interrupt.recv() => None,
                    why = queue.lost() => Some(why),
                };
                if let Some(why) = lost {
                    endpoint
                        .close(1u32.into(), b"another node of the queue took over: try another");
                    if let Some((file, wrote)) = &wrote {
                        remove_ready_file(file, wrote);
                    }
                    anyhow::bail!("{why}: this queue stopped");
                }
                endpoint.close(0u32.into(), b"shutting down");
                // What was recorded since the last checkpoint is signed before leaving.
                queue.checkpoint().await;
                if let Some((file, wrote)) = &wrote {
                    remove_ready_file(file, wrote);
                }
                anyhow::Ok(())
            })?;
        }
    }
    Ok(())
}

/// Runs `f`, which reads the store in `data`; a store so damaged that the storage library
/// stops on it (a panic) is reported as damaged, not as a crash.
fn no_panic<T>(data: &std::path::Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    drop(std::panic::take_hook());
    result.unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        anyhow::bail!(
            "the store {} is damaged: reading it failed ({why})",
            data.join("queue.redb").display()
        )
    })
}

/// `--checkpoint-every`: a duration of at least 100 ms (refused below, never raised).
fn checkpoint_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) {
        return Err(format!("{s} is below the least interval, 100ms"));
    }
    Ok(d)
}

/// `--since`: a time (RFC 3339) or an age, as Unix ms.
fn parse_since(t: &str) -> Result<u64> {
    let now = std::time::SystemTime::now();
    let at = match humantime::parse_rfc3339(t) {
        Ok(at) => at,
        Err(_) => {
            let age = humantime::parse_duration(t).map_err(|_| {
                anyhow::anyhow!(
                    "--since {t:?}: give a time in UTC (2026-12-06T10:00:00Z) or an age (2h)"
                )
            })?;
            now.checked_sub(age).unwrap_or(std::time::UNIX_EPOCH)
        }
    };
    Ok(at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
}

fn worker_command(c: WorkerCommand, out: &mut impl Write) -> Result<()> {
    use agenix_proto::keys::verifying_key_from_pem;
    use agenix_proto::{KeyId, Role};
    use agenix_queue::trust;
    match c {
        WorkerCommand::Enroll { key, name, labels, at } => {
            let pem = agenix_queue::read_capped(&key, 64 << 10)
                .with_context(|| format!("cannot read {}", key.display()))?;
            let pem = String::from_utf8(pem)
                .with_context(|| format!("{} is not a PEM file", key.display()))?;
            let key = verifying_key_from_pem(&pem)
                .with_context(|| format!("cannot use {}", key.display()))?;
            let labels: std::collections::BTreeSet<String> = labels.into_iter().collect();
            let path = at.path();
            let id = trust::edit(&path, |t| {
                let id = t.add(&name, key, &[Role::Worker])?;
                t.set_labels(&id, labels.clone())?;
                Ok(id)
            })?;
            let labels: Vec<_> = labels.into_iter().collect();
            let shown = if labels.is_empty() {
                String::new()
            } else {
                format!(" with labels {}", labels.join(", "))
            };
            writeln!(out, "enrolled worker key {id} as \"{name}\"{shown} in {}", path.display())?;
        }
        WorkerCommand::List { json, at } => {
            let t = trust::load(&at.path())?;
            let mut rows: Vec<_> =
                t.signers().filter(|(_, s)| s.roles.contains(&Role::Worker)).collect();
            rows.sort_by(|a, b| a.1.name.cmp(&b.1.name));
            if !json && rows.is_empty() {
                writeln!(out, "no workers enrolled")?;
            }
            let now = agenix_queue::server::now_ms() / 1000;
            for (id, s) in rows {
                let revoked = t.is_revoked(id);
                let valid = s.valid_at(now);
                if json {
                    let row = serde_json::json!({
                        "keyid": id.to_string(),
                        "name": s.name,
                        "labels": s.labels,
                        "revoked": revoked,
                        "valid_now": valid,
                        "not_before": s.not_before,
                        "not_after": s.not_after,
                    });
                    writeln!(out, "{row}")?;
                } else {
                    // Past or before its period, a key is refused as surely as a revoked one.
                    let status = match (revoked, valid, s.not_after) {
                        (true, _, _) => "REVOKED",
                        (false, true, _) => "enrolled",
                        (false, false, Some(end)) if end < now => "EXPIRED",
                        (false, false, _) => "PENDING",
                    };
                    let labels: Vec<&str> = s.labels.iter().map(String::as_str).collect();
                    writeln!(
                        out,
                        "{id}  {status:<8}  {}{}",
                        agenix_proto::text::clean(&s.name),
                        if labels.is_empty() {
                            String::new()
                        } else {
                            format!("  [{}]", labels.join(", "))
                        }
                    )?;
                }
            }
        }
        WorkerCommand::Revoke { keyid, at } => {
            let id: KeyId = keyid
                .parse()
                .with_context(|| format!("{keyid:?} is not a key id (sha256:<64 hex digits>)"))?;
            let path = at.path();
            let (name, newly) = trust::edit(&path, |t| {
                let signer = t.signer(&id);
                if let Some(s) = signer.filter(|s| !s.roles.contains(&Role::Worker)) {
                    anyhow::bail!(
                        "{id} (\"{}\") is a signer, not a worker: revoke it with agx trust revoke",
                        s.name
                    );
                }
                let name = signer.map(|s| s.name.clone());
                Ok((name, t.revoke(id)))
            })?;
            match (name, newly) {
                (_, false) => writeln!(out, "{id} was already revoked")?,
                (Some(n), true) => writeln!(
                    out,
                    "revoked worker key {id} (\"{n}\"): refused from its next request"
                )?,
                (None, true) => writeln!(
                    out,
                    "revoked {id} (not enrolled in {}; it stays refused if enrolled later)",
                    path.display()
                )?,
            }
        }
    }
    Ok(())
}

/// Checks, before anything serves, that `file` may be the ready file: outside the queue
/// directory `data` (whose files are the queue's identity, tokens and store), and, if it
/// exists, a regular file holding a ready file of an earlier run (nothing else is ever
/// replaced), which is removed.
fn check_ready_file(file: &std::path::Path, data: &std::path::Path) -> Result<()> {
    let name = file.file_name().with_context(|| format!("{} names no file", file.display()))?;
    let dir =
        file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let dir = std::fs::canonicalize(dir)
        .with_context(|| format!("the ready file's directory {} is not there", dir.display()))?;
    let data = std::fs::canonicalize(data)
        .with_context(|| format!("cannot read the queue directory {}", data.display()))?;
    if dir.starts_with(&data) {
        anyhow::bail!(
            "the ready file {} is inside the queue directory {}: put it elsewhere",
            file.display(),
            data.display()
        );
    }
    let not_ready =
        || anyhow::anyhow!("{} exists and is not a ready file: not replacing it", file.display());
    match std::fs::symlink_metadata(dir.join(name)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot check {}", file.display())),
        Ok(m) if !m.is_file() => Err(not_ready()),
        Ok(_) => {
            let old = agenix_queue::read_capped(file, 4096).unwrap_or_default();
            let ready = serde_json::from_slice::<serde_json::Value>(&old)
                .ok()
                .is_some_and(|v| v.get("address").is_some() && v.get("fingerprint").is_some());
            if !ready {
                return Err(not_ready());
            }
            // An earlier run's: gone now, so that a start that fails leaves none behind.
            std::fs::remove_file(file)
                .with_context(|| format!("cannot remove the old ready file {}", file.display()))
        }
    }
}

/// Writes the ready file: a temporary file beside it, then renamed over it, so a reader
/// never sees half of it. Returns what was written.
fn write_ready_file(
    file: &std::path::Path,
    address: SocketAddr,
    fingerprint: agenix_proto::Fingerprint,
    extra: &[(&str, Option<SocketAddr>)],
) -> Result<Vec<u8>> {
    let mut ready = serde_json::json!({ "address": address, "fingerprint": fingerprint });
    if let Some(obj) = ready.as_object_mut() {
        for (name, at) in extra {
            if let Some(at) = at {
                obj.insert((*name).into(), serde_json::json!(at));
            }
        }
    }
    let body = format!("{ready}\n");
    let dir =
        file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write the ready file {}", file.display()))?;
    tmp.write_all(body.as_bytes())?;
    tmp.persist(file).with_context(|| format!("cannot write the ready file {}", file.display()))?;
    Ok(body.into_bytes())
}

/// Removes the ready file on shutdown, only if it still holds what this process wrote.
fn remove_ready_file(file: &std::path::Path, wrote: &[u8]) {
    if agenix_queue::read_capped(file, 4096).is_ok_and(|now| now == wrote) {
        let _ = std::fs::remove_file(file);
    }
}
