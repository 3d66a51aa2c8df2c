//! The PostgreSQL store: the same durable state as the embedded one, in a database the
//! operator already runs and replicates (`agq serve --store postgres://…`).
//!
//! Tables (made by the versioned migrations below, run by `agq migrate`):
//!
//! ```text
//! agq_meta:         key -> bigint       next_job, audit_size
//! agq_serving:      one row             the serving lease: generation, node, until
//! agq_jobs:         id -> record        JobRecord JSON
//! agq_actions:      id -> record        ActionRecord JSON
//! agq_kept:         digest              blobs kept until removed explicitly
//! agq_state:        key -> bytea        "trust": the trust file as last audited;
//!                                       "identity": the fingerprint of the queue it holds
//! agq_audit:        seq -> job, entry   the audit log's entries (the bytes hashed)
//! agq_audit_hashes: idx -> hash         every complete subtree's hash
//! agq_checkpoints:  size -> note        signed checkpoints
//! agq_migrations:   version -> name     the migrations applied
//! ```
//!
//! A batch is one transaction, committed before `apply` returns (PostgreSQL's own
//! durability: `synchronous_commit` as the server sets it). One agq node serves a database
//! at a time, holding a lease on it that it renews (`serving.rs`); each batch checks the
//! serving generation it took, so a node whose place was taken writes nothing. Other nodes
//! of the same queue (`--standby`) wait for the lease to run out and take over. The
//! database records the identity of the queue it holds and serves no other.
//!
//! The sync client runs each connection on a small runtime of its own, which must never be
//! entered from the queue's async tasks: every call here runs on a thread of its own when
//! it is made from inside a runtime.
//!
//! Connections: a URL in libpq's form. On loopback or a Unix socket it may go in clear; any
//! other host needs `sslmode=verify-full` (the default there): TLS, the server's name checked
//! against its certificate, with the roots in `sslrootcert=FILE` or the platform's. A
//! password never sits in the URL (it would show in the process list): it comes from a
//! file or the environment.

use std::collections::BTreeMap;
use std::str::FromStr as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agenix_proto::audit::{self, Entry, Hashes, TreeHead};
use agenix_proto::job::{JobId, JobRecord};
use agenix_proto::{ActionId, Digest};
use agenix_queue_core::Change;
use postgres::config::{Host, SslMode};
use postgres::fallible_iterator::FallibleIterator as _;
use postgres::{Client, GenericClient};
use r2d2_postgres::PostgresConnectionManager;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::{History, Hold, Loaded, Store, StoreError, Write};

mod serving;

/// The migrations, in order: (version, name, SQL). Each runs in one transaction with its
/// record in `agq_migrations`.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "jobs, actions, kept blobs, the audit log", include_str!("0001_init.sql")),
    (2, "the serving lease", include_str!("0002_serving.sql")),
];

/// The schema version this agq reads and writes.
pub const SCHEMA: i32 = 2;

/// Advisory lock keys (one namespace for agq: "AGQ" in ASCII).
const LOCK_NS: i32 = 0x0041_4751;
const LOCK_MIGRATE: i32 = 1;

/// Most connections in the pool: the committer's one, and reads beside it.
const POOL: u32 = 8;
/// How long a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most stored hashes remembered between batches (32 bytes each; emptied when full).
const CACHE_HASHES: usize = 1 << 16;

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// A PostgreSQL error with the server's own message and detail, when it sent them.
fn pg(e: postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError(format!(
            "PostgreSQL: {}{}",
            db.message(),
            db.detail().map(|d| format!(" ({d})")).unwrap_or_default()
        )),
        None => StoreError(format!("PostgreSQL: {e}")),
    }
}

/// Where the store is and how to reach it.
#[derive(Clone)]
pub struct Target {
    config: postgres::Config,
    tls: MakeRustlsConnect,
    shown: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// Percent-decodes a URL query value; `None` for a broken escape.
fn decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'%' => {
                let hi = char::from(bytes.next()?).to_digit(16)?;
                let lo = char::from(bytes.next()?).to_digit(16)?;
                u8::try_from(hi * 16 + lo).ok()?
            }
            b => b,
        });
    }
    String::from_utf8(out).ok()
}

impl Target {
    /// Reads `url` (`postgres://user@host:port/db?…`), with the password from `password`.
    pub fn parse(url: &str, password: Option<&str>) -> Result<Self, StoreError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StoreError("the store must be a postgres://user@host/database URL".into()));
        }
        // The TLS settings are ours to enforce; the rest is the client library's.
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let (mut mode, mut root_file) = (None, None);
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = || StoreError("the store URL has a badly escaped parameter".into());
            let (k, value) = (decode(k).ok_or_else(bad)?, decode(v).ok_or_else(bad)?);
            match k.as_str() {
                "sslmode" => mode = Some(value),
                "sslrootcert" => root_file = Some(value),
                "password" => return Err(password_in_url()),
                _ => rest.push(pair),
            }
        }
        let plain =
            if rest.is_empty() { base.to_string() } else { format!("{base}?{}", rest.join("&")) };
        let mut config = postgres::Config::from_str(&plain)
            .map_err(|e| StoreError(format!("the store URL: {e}")))?;
        if config.get_password().is_some() {
            return Err(password_in_url());
        }
        if let Some(p) = password {
            config.password(p);
        }
        if config.get_hosts().is_empty() {
            return Err(StoreError(
                "the store URL names no host (or Unix socket directory)".into(),
            ));
        }
        let local = config.get_hosts().iter().all(|h| match h {
            Host::Unix(_) => true,
            Host::Tcp(name) => {
                name == "localhost"
                    || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
            }
        }) && config.get_hostaddrs().iter().all(std::net::IpAddr::is_loopback);
        let verify = match mode.as_deref() {
            None => !local,
            Some("verify-full") => true,
            Some("disable") if local => false,
            Some("disable") => {
                return Err(StoreError(
                    "sslmode=disable is for loopback and Unix sockets only: off this host the \
                     store's connection must use sslmode=verify-full"
                        .into(),
                ));
            }
            Some(m @ ("allow" | "prefer" | "require" | "verify-ca")) => {
                return Err(StoreError(format!(
                    "sslmode={m} does not check the server's name against its certificate: use \
                     sslmode=verify-full (or sslmode=disable on loopback)"
                )));
            }
            Some(m) => return Err(StoreError(format!("sslmode={m:?} is not a TLS mode"))),
        };
        if !verify && root_file.is_some() {
            return Err(StoreError("sslrootcert is given but TLS is off (sslmode)".into()));
        }
        config.ssl_mode(if verify { SslMode::Require } else { SslMode::Disable });
        config.connect_timeout(CONNECT_TIMEOUT);
        // A server or network that vanished (no reset, packets dropped) ends the connection
        // within about half a minute instead of never, so a batch fails and is known to.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(30));
        config.application_name("agq");
        let tls = MakeRustlsConnect::new(tls_config(root_file.as_deref())?);
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(n) => n.clone(),
                Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
        let addrs: Vec<String> = config.get_hostaddrs().iter().map(ToString::to_string).collect();
        let shown = format!(
            "postgres://{}@{}{}/{}{}{}",
            config.get_user().unwrap_or(""),
            hosts.join(","),
            if ports.is_empty() { String::new() } else { format!(":{}", ports.join(",")) },
            config.get_dbname().unwrap_or(""),
            if addrs.is_empty() {
                String::new()
            } else {
                format!(" (hostaddr {})", addrs.join(","))
            },
            if verify { " (TLS, verify-full)" } else { "" }
        )
        .escape_debug()
        .to_string();
        Ok(Self { config, tls, shown })
    }

    fn connect(&self) -> Result<Client, StoreError> {
        off_runtime(|| self.connect_here())
    }

    /// [`Target::connect`], on this thread (never inside an async runtime).
    fn connect_here(&self) -> Result<Client, StoreError> {
        self.config.connect(self.tls.clone()).map_err(|e| connect_err(self, &e))
    }
}

fn password_in_url() -> StoreError {
    StoreError(
        "the store URL holds a password, which would show in the process list: give it in a \
         file (--store-password-file) or in AGQ_STORE_PASSWORD"
            .into(),
    )
}

/// The session option that ends a session idle inside a transaction for `lease`.
fn idle_timeout(lease: Duration) -> String {
    format!("-c idle_in_transaction_session_timeout={}", lease.as_millis())
}

/// Whether the server refused the connection itself: the password or the user (class 28),
/// a database that does not exist, or a privilege missing.
fn refuses(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    e.code().is_some_and(|c| {
        c.code().starts_with("28")
            || *c == SqlState::INVALID_CATALOG_NAME
            || *c == SqlState::INSUFFICIENT_PRIVILEGE
    })
}

fn connect_err(target: &Target, e: &postgres::Error) -> StoreError {
    let why = match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => {
            // The client's own errors name the cause in their source chain.
            let mut why = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                why = format!("{why}: {s}");
                source = s.source();
            }
            why
        }
    };
    StoreError(format!("cannot connect to {target}: {why}"))
}

/// The TLS client configuration: the roots in `file` (PEM), or the platform's.
fn tls_config(file: Option<&str>) -> Result<rustls::ClientConfig, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(err)?;
    Ok(match file {
        Some("system") | None => {
            let verifier = rustls_platform_verifier::Verifier::new(provider)
                .map_err(|e| StoreError(format!("the platform's certificate roots: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
        Some(path) => {
            use rustls_pki_types::pem::PemObject as _;
            let bytes = crate::read_capped(std::path::Path::new(path), 1 << 20)
                .map_err(|e| StoreError(format!("sslrootcert {path}: {e}")))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&bytes) {
                let cert = cert.map_err(|e| StoreError(format!("sslrootcert {path}: {e}")))?;
                roots.add(cert).map_err(|e| StoreError(format!("sslrootcert {path}: {e}")))?;
            }
            if roots.is_empty() {
                return Err(StoreError(format!("sslrootcert {path} holds no certificate")));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    })
}

/// Runs `f` where the sync client may block: on this thread when it is outside any async
/// runtime, else on a thread of its own (the client's runtime cannot run inside another).
fn off_runtime<T: Send>(f: impl FnOnce() -> Result<T, StoreError> + Send) -> Result<T, StoreError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| {
        match std::thread::Builder::new().name("agq-pg".into()).spawn_scoped(s, f) {
            Ok(h) => h.join().unwrap_or_else(|_| Err(StoreError("a store thread panicked".into()))),
            Err(e) => Err(StoreError(format!("cannot start a store thread: {e}"))),
        }
    })
}

/// The schema version of the database `client` reaches (0: none yet).
fn version(client: &mut impl GenericClient) -> Result<i32, StoreError> {
    schema_version(client).map_err(pg)
}

fn schema_version(client: &mut impl GenericClient) -> Result<i32, postgres::Error> {
    let exists: bool =
        client.query_one("SELECT to_regclass('agq_migrations') IS NOT NULL", &[])?.get(0);
    if !exists {
        return Ok(0);
    }
    Ok(client.query_one("SELECT coalesce(max(version), 0) FROM agq_migrations", &[])?.get(0))
}

/// `agq migrate`: brings the schema up to [`SCHEMA`]; returns the migrations applied.
/// Several agq running it at once apply each migration once (an advisory lock orders them).
pub fn migrate(target: &Target) -> Result<Vec<(i32, &'static str)>, StoreError> {
    let mut client = target.connect()?;
    off_runtime(move || {
        let mut tx = client.transaction().map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&LOCK_NS, &LOCK_MIGRATE])
            .map_err(pg)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS agq_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .map_err(pg)?;
        let at = version(&mut tx)?;
        if at > SCHEMA {
            return Err(newer(at));
        }
        let mut applied = Vec::new();
        for &(v, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > at) {
            tx.batch_execute(sql)
                .map_err(|e| StoreError(format!("migration {v} ({name}): {}", pg(e).0)))?;
            tx.execute("INSERT INTO agq_migrations (version, name) VALUES ($1, $2)", &[&v, &name])
                .map_err(pg)?;
            applied.push((v, name));
        }
        tx.commit().map_err(pg)?;
        Ok(applied)
    })
}

fn newer(at: i32) -> StoreError {
    StoreError(format!(
        "the database's schema is at version {at}, newer than this agq knows ({SCHEMA}): run \
         the agq that migrated it"
    ))
}

type Pool = r2d2::Pool<PostgresConnectionManager<MakeRustlsConnect>>;

/// How a node serves the database (`agq serve --store URL`).
#[derive(Debug, Clone)]
pub struct Serve {
    /// How long the lease lasts without renewal: how long a standby waits after the node
    /// serving stops renewing it (dies, freezes, or loses the database).
    pub lease: Duration,
    /// While another node serves, wait (a standby) instead of refusing.
    pub standby: bool,
    /// This queue directory's identity (its fingerprint): the database serves one.
    pub identity: String,
}

/// The PostgreSQL store.
pub struct PgStore {
    target: Target,
    /// `None` only while being dropped.
    pool: Option<Pool>,
    /// The serving lease (`None`: reading beside the queue, which writes nothing).
    held: Option<Arc<serving::Held>>,
    /// The thread renewing it.
    renewer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Stored hashes read or written before (a stored hash never changes).
    cache: Mutex<BTreeMap<u64, Digest>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("target", &self.target).finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(held) = &self.held {
            held.stop(self.renewer.get_mut().ok().and_then(Option::take));
        }
        // Each connection owns a runtime, which cannot be dropped inside another.
        let pool = self.pool.take();
        let _ = off_runtime(move || {
            drop(pool);
            Ok(())
        });
    }
}

/// Checks the schema is the one this agq reads and writes.
fn check_schema(conn: &mut Client) -> Result<(), StoreError> {
    schema_refusal(version(conn)?).map_or(Ok(()), Err)
}

/// Why a database whose schema is at version `at` is refused, if it is.
fn schema_refusal(at: i32) -> Option<StoreError> {
    match at {
        SCHEMA => None,
        0 => Some(StoreError(
            "the database has no queue schema yet: run agq migrate --store URL first".into(),
        )),
        at if at > SCHEMA => Some(newer(at)),
        at => Some(StoreError(format!(
            "the database's schema is at version {at}; this agq needs {SCHEMA}: run agq \
             migrate --store URL"
        ))),
    }
}

/// The audit log's size as recorded must be the log's: a batch would otherwise number its
/// entries over others, or leave a gap.
fn check_audit_size(conn: &mut Client) -> Result<(), StoreError> {
    let row = conn
        .query_one(
            "SELECT (SELECT value FROM agq_meta WHERE key = 'audit_size'),
                    (SELECT coalesce(max(seq) + 1, 0) FROM agq_audit),
                    (SELECT count(*) FROM agq_audit)",
            &[],
        )
        .map_err(pg)?;
    let (size, end, count): (Option<i64>, i64, i64) = (row.get(0), row.get(1), row.get(2));
    if size != Some(end) || end != count {
        return Err(StoreError(format!(
            "the audit log in the database is inconsistent: agq_meta says {} entries, agq_audit \
             holds {count} numbered up to {end}; restore the database from a backup",
            size.map_or("no".to_string(), |s| s.to_string()),
        )));
    }
    Ok(())
}

/// One look at the serving row (connecting first when `conn` has no live connection),
/// taking it if its lease ran out. An error says whether the server refused this node.
fn look(
    conn: &mut Option<Client>,
    config: &postgres::Config,
    target: &Target,
    me: &serving::Node,
    how: &Serve,
) -> Result<serving::Look, (bool, StoreError)> {
    let c = match conn.as_mut().filter(|c| !c.is_closed()) {
        Some(c) => c,
        None => match config.connect(target.tls.clone()) {
            Ok(c) => conn.insert(c),
            Err(e) => return Err((refuses(&e), connect_err(target, &e))),
        },
    };
    let found = schema_version(c).and_then(|at| match schema_refusal(at) {
        Some(refused) => Ok(serving::Look::Refused(refused)),
        None => serving::try_take(c, me, how.lease, &how.identity),
    });
    found.map_err(|e| (refuses(&e), pg(e)))
}

impl PgStore {
    /// Connects to `target` and takes its serving lease: refuses a schema other than
    /// [`SCHEMA`] and a database that holds another queue. While another node holds the
    /// lease, a standby waits for it to run out; any other node waits one lease length to
    /// see whether its holder renews it, and refuses if it does. A holder that was a process
    /// of this host that no longer runs is taken over at once.
    pub fn open(target: Target, how: &Serve) -> Result<Self, StoreError> {
        // Every client here owns a runtime, which must not be dropped inside another.
        off_runtime(|| Self::take_over(target, how))
    }

    fn take_over(target: Target, how: &Serve) -> Result<Self, StoreError> {
        let me = serving::Node::this();
        // A node frozen while it takes the row over must not hold it for long either.
        let mut config = target.config.clone();
        config.options(&idle_timeout(how.lease));
        let mut conn: Option<Client> = None;
        let mut said = None::<String>;
        let mut first_seen: Option<(String, Instant)> = None;
        let (conn, generation, taken) = loop {
            let before = Instant::now();
            let step = look(&mut conn, &config, &target, &me, how);
            // Said once for each holder (or outage), not at every look.
            let say = |key: String, what: String| {
                if said.as_deref() != Some(key.as_str()) {
                    tracing::warn!("{what}");
                }
                Some(key)
            };
            match step {
                Ok(serving::Look::Taken(g)) => {
                    if said.is_some() {
                        tracing::warn!("the serving lease is this node's now: taking over");
                    }
                    match conn.take() {
                        Some(c) => break (c, g, before),
                        None => return Err(StoreError("the connection went away".into())),
                    }
                }
                Ok(serving::Look::Held { node, left_ms, until }) => {
                    let renewed = first_seen.as_ref().is_some_and(|(u, at)| {
                        *u != until && at.elapsed() > Duration::from_millis(100)
                    });
                    if !how.standby && renewed {
                        return Err(StoreError(format!(
                            "another agq is serving this database ({node}; it renews its lease): \
                             give --standby to take over when it stops"
                        )));
                    }
                    if first_seen.is_none() {
                        first_seen = Some((until, Instant::now()));
                    }
                    said = say(
                        node.clone(),
                        format!(
                            "another agq serves this database ({node}, its lease runs {left_ms} ms \
                         more): this one {}",
                            if how.standby {
                                "stands by, and takes over when it stops"
                            } else {
                                "waits to see whether it renews it"
                            }
                        ),
                    );
                }
                // A batch of the node serving holds the row: it is alive, or its session
                // ends at the server within a lease.
                Ok(serving::Look::Busy) => {}
                // Refusals about this database or this directory are final; so is the
                // server refusing this node (its password, its privileges).
                Ok(serving::Look::Refused(e)) | Err((true, e)) => return Err(e),
                Err((false, e)) if !how.standby => return Err(e),
                Err((false, e)) => {
                    // A standby waits out the database's outages, on a new connection.
                    conn = None;
                    said = say(
                        "unreachable".into(),
                        format!("standing by, the database cannot be reached: {e}"),
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(500).min(how.lease / 2));
        };
        let held = serving::Held::new(generation, how.lease, taken);
        // A batch waits for a connection a quarter of the lease at most: long before the
        // lease would lapse (when it answers that storage is unavailable).
        let wait = (how.lease / 4).clamp(Duration::from_secs(1), CONNECT_TIMEOUT);
        let mut store = Self::build(target, Some(held.clone()), wait)?;
        let renewer = held
            .renew(store.target.clone())
            .map_err(|e| StoreError(format!("cannot start the lease's thread: {e}")))?;
        store.renewer = Mutex::new(Some(renewer));
        let mut conn = conn;
        check_audit_size(&mut conn)?;
        Ok(store)
    }

    /// Connects to `target` to read it beside the queue (or after it): takes no lease, and
    /// writes nothing.
    pub fn inspect(target: Target) -> Result<Self, StoreError> {
        let mut conn = target.connect()?;
        off_runtime(move || check_schema(&mut conn))?;
        Self::build(target, None, CONNECT_TIMEOUT)
    }

    fn build(
        target: Target,
        held: Option<Arc<serving::Held>>,
        wait: Duration,
    ) -> Result<Self, StoreError> {
        let mut store = Self {
            target,
            pool: None,
            held,
            renewer: Mutex::new(None),
            cache: Mutex::new(BTreeMap::new()),
        };
        let target = &store.target;
        let mut config = target.config.clone();
        if let Some(held) = &store.held {
            // A node frozen (or cut off) inside a batch holds the serving row: the server ends
            // its session after a lease, so another node can take over.
            config.options(&idle_timeout(held.lease()));
        }
        let manager = PostgresConnectionManager::new(config, target.tls.clone());
        let pool = off_runtime(|| {
            r2d2::Pool::builder()
                .max_size(POOL)
                .min_idle(Some(1))
                .connection_timeout(wait)
                // A connection the server dropped (a restart, its idle timeout) is found out
                // before a batch is given it, not by failing the batch.
                .test_on_check_out(true)
                // Each failure is reported where it matters (a batch, a renewal), once.
                .error_handler(Box::new(r2d2::NopErrorHandler))
                .build(manager)
                .map_err(|e| StoreError(format!("cannot connect to {target}: {e}")))
        })?;
        store.pool = Some(pool);
        Ok(store)
    }

    /// Runs `f` on a pooled connection, off the async runtime.
    fn with<T: Send>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        let pool = self.pool.as_ref().ok_or_else(|| StoreError("the store is closed".into()))?;
        off_runtime(|| {
            let mut conn = pool
                .get()
                .map_err(|e| StoreError(format!("no connection to {}: {e}", self.target)))?;
            f(&mut conn)
        })
    }

    /// Runs `f` in a read-only transaction that sees one instant.
    fn read<T: Send>(
        &self,
        f: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        self.with(|c| {
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .map_err(pg)?;
            let out = f(&mut tx)?;
            tx.commit().map_err(pg)?;
            Ok(out)
        })
    }

    fn remember(&self, hashes: impl IntoIterator<Item = (u64, Digest)>) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() > CACHE_HASHES {
                cache.clear();
            }
            cache.extend(hashes);
        }
    }
}

/// The stored tree as a transaction sees it, with hashes not yet written (`fresh`) and
/// those known from before (`cache`) in front of it.
struct Tree<'a, 'c> {
    tx: std::cell::RefCell<&'a mut postgres::Transaction<'c>>,
    fresh: &'a BTreeMap<u64, Digest>,
    cache: &'a Mutex<BTreeMap<u64, Digest>>,
    read: std::cell::RefCell<Vec<(u64, Digest)>>,
}

impl Hashes for Tree<'_, '_> {
    fn stored(&self, index: u64) -> Result<Option<Digest>, String> {
        Ok(self.stored_many(&[index])?.pop().flatten())
    }

    fn stored_many(&self, indexes: &[u64]) -> Result<Vec<Option<Digest>>, String> {
        let mut out: Vec<Option<Digest>> = {
            let cache = self.cache.lock().map_err(|_| "the hash cache is poisoned")?;
            indexes.iter().map(|i| self.fresh.get(i).or_else(|| cache.get(i)).copied()).collect()
        };
        let missing: Vec<i64> = indexes
            .iter()
            .zip(&out)
            .filter(|(_, d)| d.is_none())
            .map(|(&i, _)| i64::try_from(i).map_err(|_| format!("hash index {i} is out of range")))
            .collect::<Result<_, _>>()?;
        if missing.is_empty() {
            return Ok(out);
        }
        let rows = self
            .tx
            .borrow_mut()
            .query("SELECT idx, hash FROM agq_audit_hashes WHERE idx = ANY($1)", &[&missing])
            .map_err(|e| pg(e).0)?;
        let mut found = BTreeMap::new();
        for row in rows {
            let (idx, hash): (i64, Vec<u8>) = (row.get(0), row.get(1));
            let hash: [u8; 32] =
                hash.try_into().map_err(|_| format!("stored hash {idx} is not 32 bytes"))?;
            found.insert(idx as u64, Digest::from_bytes(hash));
        }
        for (i, d) in indexes.iter().zip(out.iter_mut()) {
            if d.is_none() {
                *d = found.get(i).copied();
            }
        }
        self.read.borrow_mut().extend(found);
        Ok(out)
    }
}

fn json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(err)
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError(format!("{what}: {e}")))
}

fn int(n: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError(format!("{what} {n} is out of range")))
}

fn uint(n: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError(format!("stored {what} {n} is negative")))
}

fn meta(tx: &mut impl GenericClient, key: &str) -> Result<i64, StoreError> {
    let row = tx.query_opt("SELECT value FROM agq_meta WHERE key = $1", &[&key]).map_err(pg)?;
    row.map(|r| r.get(0)).ok_or_else(|| StoreError(format!("agq_meta has no {key}")))
}

/// What a batch does to one table, the last write to each key winning (a batch is applied
/// in order; within one transaction only each key's final value is seen).
#[derive(Default)]
struct Rows<K: Ord, V> {
    rows: BTreeMap<K, Option<V>>,
}

impl<K: Ord + Clone, V> Rows<K, V> {
    fn put(&mut self, k: K, v: V) {
        self.rows.insert(k, Some(v));
    }

    fn delete(&mut self, k: K) {
        self.rows.insert(k, None);
    }

    fn split(self) -> (Vec<K>, Vec<V>, Vec<K>) {
        let (mut keys, mut values, mut gone) = (Vec::new(), Vec::new(), Vec::new());
        for (k, v) in self.rows {
            match v {
                Some(v) => {
                    keys.push(k);
                    values.push(v);
                }
                None => gone.push(k),
            }
        }
        (keys, values, gone)
    }
}

impl Store for PgStore {
    fn load_with(&self, job: &mut (dyn FnMut(JobRecord) + Send)) -> Result<Loaded, StoreError> {
        self.read(|tx| {
            let mut out = Loaded::default();
            let no_params: [&str; 0] = [];
            let mut rows =
                tx.query_raw("SELECT record FROM agq_jobs ORDER BY id", no_params).map_err(pg)?;
            while let Some(row) = rows.next().map_err(pg)? {
                job(parse("job", row.get::<_, &[u8]>(0))?);
            }
            drop(rows);
            for row in tx.query("SELECT id, record FROM agq_actions", &[]).map_err(pg)? {
                let id: ActionId = row.get::<_, &str>(0).parse().map_err(err)?;
                out.actions.push((id, parse("action", row.get::<_, &[u8]>(1))?));
            }
            for row in tx.query("SELECT digest FROM agq_kept", &[]).map_err(pg)? {
                out.kept.push(row.get::<_, &str>(0).parse().map_err(err)?);
            }
            out.next_job = uint(meta(tx, "next_job")?, "next_job")?.max(1);
            out.trust_seen = tx
                .query_opt("SELECT value FROM agq_state WHERE key = 'trust'", &[])
                .map_err(pg)?
                .map(|r| r.get(0));
            Ok(out)
        })
    }

    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        let mut jobs = Rows::<i64, Vec<u8>>::default();
        let mut actions = Rows::<String, Vec<u8>>::default();
        let mut kept = Rows::<String, ()>::default();
        let (mut next_job, mut trust, mut checkpoints, mut events) =
            (None, None, Vec::new(), Vec::new());
        for w in writes {
            match w {
                Write::Change(Change::Job(j)) => jobs.put(int(j.id.0, "job")?, json(j)?),
                Write::Change(Change::DeleteJob(id)) => jobs.delete(int(id.0, "job")?),
                Write::Change(Change::Action(id, a)) => actions.put(id.to_string(), json(a)?),
                Write::Change(Change::DeleteAction(id)) => actions.delete(id.to_string()),
                Write::Change(Change::NextJob(n)) => next_job = Some(int(*n, "next job")?),
                Write::Keep(d) => kept.put(d.to_string(), ()),
                Write::Unkeep(d) => kept.delete(d.to_string()),
                Write::Change(Change::Audit { at, event }) => events.push((*at, event)),
                Write::Checkpoint { size, note } => {
                    checkpoints.push((int(*size, "checkpoint size")?, note.clone()));
                }
                Write::TrustSeen(bytes) => trust = Some(bytes.clone()),
                Write::Blob { .. } | Write::Renew { .. } | Write::Forget { .. } => {
                    return Err(StoreError(
                        "the PostgreSQL store keeps no blobs (they are files in the shared \
                         directory): a small blob was sent to it"
                            .into(),
                    ));
                }
            }
        }
        let Some(generation) = self.held.as_ref().map(|h| h.generation) else {
            return Err(StoreError("this store reads beside the queue: it writes nothing".into()));
        };
        let written = self.with(|c| {
            let mut tx = c.transaction().map_err(pg)?;
            // Fencing: a node another has taken over from writes nothing. The row is held
            // `FOR KEY SHARE`: a take-over (`FOR UPDATE`) waits for the batch, this node's
            // renewal (an update of `until`) does not.
            let now: i64 = tx
                .query_one("SELECT generation FROM agq_serving FOR KEY SHARE", &[])
                .map_err(pg)?
                .get(0);
            if now != generation {
                return Err(StoreError(format!(
                    "another agq took over this database (serving generation {now}, this one \
                     {generation}): this queue must stop"
                )));
            }
            write_records(&mut tx, "agq_jobs", "bigint", jobs)?;
            write_records(&mut tx, "agq_actions", "text", actions)?;
            let (keep, _, unkeep) = kept.split();
            if !keep.is_empty() {
                tx.execute(
                    "INSERT INTO agq_kept (digest) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
                    &[&keep],
                )
                .map_err(pg)?;
            }
            if !unkeep.is_empty() {
                tx.execute("DELETE FROM agq_kept WHERE digest = ANY($1)", &[&unkeep]).map_err(pg)?;
            }
            if let Some(n) = next_job {
                tx.execute("UPDATE agq_meta SET value = $1 WHERE key = 'next_job'", &[&n])
                    .map_err(pg)?;
            }
            if let Some(bytes) = &trust {
                tx.execute(
                    "INSERT INTO agq_state (key, value) VALUES ('trust', $1)
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    &[bytes],
                )
                .map_err(pg)?;
            }
            for (size, note) in &checkpoints {
                tx.execute(
                    "INSERT INTO agq_checkpoints (size, note) VALUES ($1, $2)
                     ON CONFLICT (size) DO UPDATE SET note = EXCLUDED.note",
                    &[size, note],
                )
                .map_err(pg)?;
            }
            let written = if events.is_empty() { Vec::new() } else { self.append(&mut tx, &events)? };
            tx.commit().map_err(pg)?;
            Ok(written)
        })?;
        self.remember(written);
        Ok(())
    }

    fn audit_head(&self) -> Result<TreeHead, StoreError> {
        self.read(|tx| {
            let size = uint(meta(tx, "audit_size")?, "audit size")?;
            Ok(TreeHead { size, root: self.root(tx, size)? })
        })
    }

    fn audit_root(&self, size: u64) -> Result<Digest, StoreError> {
        self.read(|tx| self.root(tx, size))
    }

    fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.read(latest)
    }

    fn history(&self, job: JobId, after: Option<u64>, max: usize) -> Result<History, StoreError> {
        self.read(|tx| {
            let checkpoint = latest(tx)?;
            let size = checkpoint.as_ref().map_or(0, |(s, _)| *s);
            let from = int(after.map_or(0, |a| a.saturating_add(1)), "entry")?;
            let limit = int(max as u64, "limit")?;
            let rows = tx
                .query(
                    "SELECT seq, entry FROM agq_audit WHERE job = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
                    &[&int(job.0, "job")?, &from, &limit],
                )
                .map_err(pg)?;
            let mut entries = Vec::new();
            for row in rows {
                let seq = uint(row.get(0), "entry")?;
                let proof = if seq < size {
                    let fresh = BTreeMap::new();
                    let tree = self.tree(tx, &fresh);
                    let proof = audit::inclusion_proof(seq, size, &tree).map_err(err)?;
                    let read = tree.read.into_inner();
                    self.remember(read);
                    proof
                } else {
                    vec![]
                };
                entries.push((seq, row.get(1), proof));
            }
            Ok(History { entries, checkpoint })
        })
    }

    fn hold(&self) -> Hold {
        match self.held.as_ref().map(|h| h.state()) {
            None | Some(serving::State::Serving) => Hold::Serving,
            Some(serving::State::Lapsed(why)) => Hold::Lapsed(why),
            Some(serving::State::Lost(why)) => Hold::Lost(why),
        }
    }

    fn audit_tail(&self, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.read(|tx| {
            let rows = tx
                .query(
                    "SELECT seq, entry FROM agq_audit ORDER BY seq DESC LIMIT $1",
                    &[&int(max as u64, "limit")?],
                )
                .map_err(pg)?;
            rows.into_iter().map(|r| Ok((uint(r.get(0), "entry")?, r.get(1)))).collect()
        })
    }
}

/// Writes a batch's rows of a record table (`id`, `record`): one upsert, one delete.
fn write_records<K: Ord + Clone + postgres::types::ToSql + Sync>(
    tx: &mut postgres::Transaction<'_>,
    table: &str,
    key: &str,
    rows: Rows<K, Vec<u8>>,
) -> Result<(), StoreError> {
    let (ids, records, gone) = rows.split();
    if !ids.is_empty() {
        let upsert = format!(
            "INSERT INTO {table} (id, record) SELECT * FROM unnest($1::{key}[], $2::bytea[])
             ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record"
        );
        tx.execute(&upsert, &[&ids, &records]).map_err(pg)?;
    }
    if !gone.is_empty() {
        tx.execute(&format!("DELETE FROM {table} WHERE id = ANY($1)"), &[&gone]).map_err(pg)?;
    }
    Ok(())
}

fn latest(tx: &mut postgres::Transaction<'_>) -> Result<Option<(u64, String)>, StoreError> {
    let row = tx
        .query_opt("SELECT size, note FROM agq_checkpoints ORDER BY size DESC LIMIT 1", &[])
        .map_err(pg)?;
    row.map(|r| Ok((uint(r.get(0), "checkpoint size")?, r.get(1)))).transpose()
}

impl PgStore {
    fn tree<'a, 'c>(
        &'a self,
        tx: &'a mut postgres::Transaction<'c>,
        fresh: &'a BTreeMap<u64, Digest>,
    ) -> Tree<'a, 'c> {
        Tree {
            tx: std::cell::RefCell::new(tx),
            fresh,
            cache: &self.cache,
            read: Default::default(),
        }
    }

    fn root(&self, tx: &mut postgres::Transaction<'_>, size: u64) -> Result<Digest, StoreError> {
        let fresh = BTreeMap::new();
        let tree = self.tree(tx, &fresh);
        let root = audit::root(size, &tree).map_err(err)?;
        let read = tree.read.into_inner();
        self.remember(read);
        Ok(root)
    }

    /// Appends `events` to the audit log inside `tx`; returns the hashes written.
    fn append(
        &self,
        tx: &mut postgres::Transaction<'_>,
        events: &[(u64, &audit::Event)],
    ) -> Result<Vec<(u64, Digest)>, StoreError> {
        let size = uint(
            tx.query_one("SELECT value FROM agq_meta WHERE key = 'audit_size' FOR UPDATE", &[])
                .map_err(pg)?
                .get(0),
            "audit size",
        )?;
        let mut fresh = BTreeMap::new();
        let (mut seqs, mut jobs, mut bytes_all) = (Vec::new(), Vec::new(), Vec::new());
        let mut read = Vec::new();
        let mut prev = None;
        for (n, (at, event)) in (size..).zip(events) {
            let tree = self.tree(tx, &fresh);
            let prev_hash = match (prev, n) {
                (Some(p), _) => p,
                (None, 0) => audit::genesis(),
                (None, n) => {
                    tree.stored(audit::leaf_index(n - 1)).map_err(StoreError)?.ok_or_else(|| {
                        StoreError(format!("the audit log has no hash for entry {}", n - 1))
                    })?
                }
            };
            let entry = Entry { seq: n, at: *at, prev: prev_hash, event: (*event).clone() };
            let bytes = entry.to_bytes();
            let new = audit::append(n, &bytes, &tree).map_err(err)?;
            read.extend(tree.read.into_inner());
            fresh.extend(new);
            prev = Some(audit::leaf_hash(&bytes));
            seqs.push(int(n, "entry")?);
            jobs.push(entry.job().map(|j| int(j.0, "job")).transpose()?);
            bytes_all.push(bytes);
        }
        tx.execute(
            "INSERT INTO agq_audit (seq, job, entry)
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[])",
            &[&seqs, &jobs, &bytes_all],
        )
        .map_err(pg)?;
        let idx: Vec<i64> =
            fresh.keys().map(|&i| int(i, "hash index")).collect::<Result<_, _>>()?;
        let hashes: Vec<&[u8]> = fresh.values().map(|d| d.as_bytes().as_slice()).collect();
        tx.execute(
            "INSERT INTO agq_audit_hashes (idx, hash) SELECT * FROM unnest($1::bigint[], $2::bytea[])",
            &[&idx, &hashes],
        )
        .map_err(pg)?;
        let end = int(size + events.len() as u64, "audit size")?;
        tx.execute("UPDATE agq_meta SET value = $1 WHERE key = 'audit_size'", &[&end])
            .map_err(pg)?;
        self.remember(read);
        Ok(fresh.into_iter().collect())
    }
}

impl Hashes for PgStore {
    fn stored(&self, index: u64) -> Result<Option<Digest>, String> {
        Ok(self.stored_many(&[index])?.pop().flatten())
    }

    fn stored_many(&self, indexes: &[u64]) -> Result<Vec<Option<Digest>>, String> {
        self.read(|tx| {
            let fresh = BTreeMap::new();
            self.tree(tx, &fresh).stored_many(indexes).map_err(StoreError)
        })
        .map_err(|e| e.0)
    }
}

impl crate::audit::Log for PgStore {
    fn checkpoints(&self) -> Result<Vec<(u64, String)>, String> {
        self.read(|tx| {
            let rows = tx
                .query("SELECT size, note FROM agq_checkpoints ORDER BY size", &[])
                .map_err(pg)?;
            rows.into_iter().map(|r| Ok((uint(r.get(0), "checkpoint size")?, r.get(1)))).collect()
        })
        .map_err(|e| e.0)
    }

    fn entries(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, String> {
        self.read(|tx| {
            let rows = tx
                .query(
                    "SELECT seq, entry FROM agq_audit WHERE seq >= $1 ORDER BY seq LIMIT $2",
                    &[&int(from, "entry")?, &int(max as u64, "limit")?],
                )
                .map_err(pg)?;
            rows.into_iter().map(|r| Ok((uint(r.get(0), "entry")?, r.get(1)))).collect()
        })
        .map_err(|e| e.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

    use super::*;

    fn refused(url: &str) -> String {
        Target::parse(url, Some("pw")).unwrap_err().0
    }

    #[test]
    fn loopback_may_go_in_clear_and_anything_else_must_check_the_server() {
        let t = Target::parse("postgres://agq@127.0.0.1:5433/q", Some("pw")).unwrap();
        assert_eq!(t.to_string(), "postgres://agq@127.0.0.1:5433/q");
        let t = Target::parse("postgres://agq@%2Frun%2Fpg:5432/q", None).unwrap();
        assert_eq!(t.to_string(), "postgres://agq@/run/pg:5432/q");
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, params.self_signed(&key).unwrap().pem()).unwrap();
        let url = format!("postgres://agq@db.example.net/q?sslrootcert={}", ca.display());
        let t = Target::parse(&url, Some("pw")).unwrap();
        assert_eq!(t.to_string(), "postgres://agq@db.example.net:5432/q (TLS, verify-full)");
        assert_eq!(t.config.get_ssl_mode(), SslMode::Require);
        // A hostaddr off loopback makes "localhost" remote, and it is shown.
        let err = refused("postgres://agq@localhost/q?hostaddr=10.1.2.3&sslmode=disable");
        assert!(err.contains("sslmode=disable is for loopback"), "{err}");
        for (url, want) in [
            ("postgres://agq@db.example.net/q?sslmode=disable", "sslmode=disable is for loopback"),
            ("postgres://agq@127.0.0.1/q?sslmode=prefer", "use sslmode=verify-full"),
            ("postgres://agq@127.0.0.1/q?ssl%6dode=prefer", "use sslmode=verify-full"),
            ("postgres://agq@127.0.0.1/q?sslmode=%07", "\"\\u{7}\" is not a TLS mode"),
            ("postgres://agq@127.0.0.1/q?sslmode=%zz", "badly escaped"),
            ("postgres://agq:pw@127.0.0.1/q", "holds a password"),
            ("postgres://agq@127.0.0.1/q?pass%77ord=x", "holds a password"),
            ("postgres://agq@127.0.0.1/q?sslrootcert=/x", "TLS is off"),
            ("mysql://agq@127.0.0.1/q", "must be a postgres://"),
            ("postgres:///q", "names no host"),
        ] {
            let err = refused(url);
            assert!(err.contains(want), "{url}: {err}");
            assert!(!err.contains("pw@"), "{err}");
        }
    }
}
