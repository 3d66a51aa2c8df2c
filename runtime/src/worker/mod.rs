//! The worker: registers its capabilities, claims up to its concurrency, verifies every
//! lease end to end, runs it through the one DAG executor, heartbeats its leases, delivers
//! results (keeping them across queue restarts until delivered), reconnects with backoff,
//! and drains on shutdown.
//!
//! It believes nothing the queue says. A lease names a plan envelope, an action envelope
//! and an input index; the worker fetches the envelopes (once, then from its cache),
//! verifies them itself, takes the input from the verified action and fetches it capped
//! at its signed size. It refuses a lease it already holds and leases beyond its
//! concurrency, and declines a job it has already run (`ledger.rs`, kept on disk until the
//! action expires). What it cannot verify or run is classified (`lease.rs`): a cause of
//! its own is declined (the queue offers the job to others; no attempt is counted), a proof
//! of forgery fails the job for good, anything else is retried.

mod cache;
pub mod config;
pub mod key;
mod lease;
pub mod ledger;
pub mod metrics;
pub mod verify;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agenix_host::native::NativeHost;
use agenix_host::wasm::WasmHost;
use agenix_link::{Client, Credential, LinkError, THROTTLE_PATIENCE};
use agenix_proto::job::{Capabilities, JobOutput, Lease, LeaseRef};
use agenix_proto::trust::MAX_TRUST_BYTES;
use agenix_proto::wire::{ClientRole, ErrorCode, MAX_HEARTBEAT_LEASES};
use agenix_proto::{Digest, Fingerprint, Trust, VerifiedAction, VerifiedPlan};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tracing::{Instrument, error, info, warn};

use crate::exec::{ComponentSource, FetchError, HostRunner, Resources};
use crate::store::LocalStore;
use cache::Bounded;
use ledger::{JobKey, Ledger};

/// Most jobs one worker runs at once.
pub const MAX_CONCURRENCY: u32 = 256;
/// Largest component a worker fetches.
pub const MAX_COMPONENT: u64 = 1 << 30;
/// How long a request may go unanswered before the connection is presumed dead.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one call may take, the client's own waiting out of throttling included.
const ANSWER_LIMIT: Duration = REQUEST_TIMEOUT.saturating_add(THROTTLE_PATIENCE);
/// How long after the queue refused this worker itself it is asked again.
const REFUSED_RETRY: Duration = Duration::from_secs(60);
/// How long a claim waits at the queue for a job.
const CLAIM_WAIT: Duration = Duration::from_secs(5);
/// Bytes of verified envelopes kept.
const ENVELOPE_CACHE_BYTES: usize = 64 << 20;

/// Everything a worker is told.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The queue's addresses: one, or its nodes (all serving its identity). Each
    /// connection dials them all and keeps the first that serves.
    pub queue: agenix_link::Addresses,
    /// Its pinned identity.
    pub fingerprint: Fingerprint,
    /// The worker's own key: what it authenticates with.
    pub key: agenix_proto::keys::SigningKey,
    /// The trust file (re-read when it changes).
    pub trust: PathBuf,
    /// A name for operators.
    pub name: String,
    /// Jobs at once.
    pub concurrency: u32,
    /// Labels for operators.
    pub labels: std::collections::BTreeSet<String>,
    /// Mounts, defaults and ceilings.
    pub resources: Resources,
    /// Where the worker keeps what must survive a restart (the jobs it ran).
    pub state_dir: PathBuf,
}

/// How a lease ended at this worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It ran: the result, and the blobs it names that travel with it (the others are
    /// stored at the queue already).
    Done(Box<(JobOutput, Vec<Vec<u8>>)>),
    /// It could not run: retry it (`retryable`), or it never can (a proof of forgery, or
    /// a plan no worker accepts).
    Fail {
        /// Why.
        reason: String,
        /// Whether another attempt may work.
        retryable: bool,
    },
    /// This worker cannot run it, for a cause of its own: other workers may.
    Decline(String),
}

impl Verdict {
    fn permanent(reason: impl Into<String>) -> Self {
        Self::Fail { reason: reason.into(), retryable: false }
    }
    fn transient(reason: impl Into<String>) -> Self {
        Self::Fail { reason: reason.into(), retryable: true }
    }
}

/// An authenticated, registered connection.
#[derive(Debug, Clone)]
struct Session {
    client: Client,
    worker: u64,
    heartbeat: Duration,
}

/// The trust file, re-read whenever it changes; each reading has a new generation.
#[derive(Debug)]
struct TrustFile {
    path: PathBuf,
    /// The file as last read: device, inode, change and modification times, size (a file
    /// replaced, rewritten or resized is read again, even with its modification time kept).
    seen: Option<(u64, u64, i64, i64, i64, i64, u64)>,
    generation: u64,
    trust: Result<Trust, String>,
}

impl TrustFile {
    fn current(&mut self) -> (u64, Result<Trust, String>) {
        use std::os::unix::fs::MetadataExt as _;
        let stamp = std::fs::metadata(&self.path).ok().map(|m| {
            (m.dev(), m.ino(), m.ctime(), m.ctime_nsec(), m.mtime(), m.mtime_nsec(), m.len())
        });
        if stamp.is_none() || stamp != self.seen {
            self.seen = stamp;
            self.generation += 1;
            self.trust = crate::files::read_small(&self.path, MAX_TRUST_BYTES as u64)
                .map_err(|e| format!("cannot read the trust file {}: {e}", self.path.display()))
                .and_then(|b| {
                    Trust::from_json(b.as_bytes())
                        .map_err(|e| format!("the trust file is invalid: {e}"))
                });
            if let Err(e) = &self.trust {
                warn!(error = %e, "every lease will be declined until the trust file is fixed");
            }
        }
        (self.generation, self.trust.clone())
    }
}

/// Fetches components from the queue into the local content-addressed cache.
#[derive(Debug)]
pub struct QueueSource {
    worker: std::sync::Weak<Worker>,
    cache: LocalStore,
}

impl ComponentSource for QueueSource {
    async fn fetch(&self, digest: Digest) -> Result<Vec<u8>, FetchError> {
        if let Ok(bytes) = self.cache.get(&digest) {
            return Ok(bytes);
        }
        let worker = self
            .worker
            .upgrade()
            .ok_or_else(|| FetchError::Transient("the worker is stopping".into()))?;
        let bytes = worker.fetch(digest, MAX_COMPONENT).await?;
        if let Err(e) = self.cache.put(&bytes) {
            warn!(error = %e, "cannot cache a component");
        }
        Ok(bytes)
    }
}

/// The span every line about `lease` is logged in: a root, though a lease may start in
/// another job's task (leased with that job's result).
fn job_span(lease: &Lease) -> tracing::Span {
    tracing::info_span!(parent: None, "job", job = %lease.lease.job, attempt = lease.attempt)
}

/// A running lease.
#[derive(Debug)]
struct Running {
    abort: AbortHandle,
    /// Its result is being reported: it is no longer stopped (a lost or cancelled lease is
    /// for the queue to refuse), so the jobs leased with the answer are not lost with it.
    delivering: bool,
}

/// A worker.
pub struct Worker {
    settings: Settings,
    /// The secret this process registers with: its id at the queue derives from it.
    instance: String,
    native: Option<Arc<NativeHost>>,
    runner: std::sync::OnceLock<Arc<HostRunner<QueueSource>>>,
    session: tokio::sync::Mutex<Option<Session>>,
    /// When and why the queue last refused this worker itself (a revoked key): until
    /// [`REFUSED_RETRY`] has passed, calls fail with it at once instead of reconnecting.
    refused: Mutex<Option<(std::time::Instant, String)>>,
    trust: Mutex<TrustFile>,
    running: Mutex<HashMap<LeaseRef, Running>>,
    /// Set once the worker stops claiming: results then ask for no more jobs.
    draining: std::sync::atomic::AtomicBool,
    /// Jobs being run now, by what was signed.
    active: Mutex<HashSet<JobKey>>,
    ledger: Mutex<Ledger>,
    /// Held while the worker lives: one worker per state directory (two would rewrite
    /// each other's ledger and could each run a job the other ran).
    _state_lock: nix::fcntl::Flock<std::fs::File>,
    plans: Mutex<Bounded<(Digest, u64), Arc<VerifiedPlan>>>,
    actions: Mutex<Bounded<(Digest, u64), Arc<VerifiedAction>>>,
    slot_free: Notify,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("name", &self.settings.name).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Takes `dir` for this process alone (an exclusive lock on `dir/agw.lock`, released when
/// the process ends however it ends), or says that another worker has it.
fn lock_state_dir(dir: &Path) -> std::io::Result<nix::fcntl::Flock<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("agw.lock"))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| {
            if errno == nix::errno::Errno::EWOULDBLOCK {
                std::io::Error::new(
                    std::io::ErrorKind::ResourceBusy,
                    format!(
                        "another worker is using {}: each worker needs a cache directory of \
                         its own",
                        dir.display()
                    ),
                )
            } else {
                std::io::Error::from(errno)
            }
        },
    )
}

/// Whether the queue refused this worker itself (its key, its registration), or is not
/// the queue it was told to pin: retrying soon cannot help.
fn refuses_this_worker(e: &LinkError) -> bool {
    matches!(e, LinkError::WrongQueue { .. })
        || matches!(
            e.code(),
            Some(ErrorCode::Unauthenticated | ErrorCode::Forbidden | ErrorCode::BadRequest)
        )
}

impl Worker {
    /// A worker over `wasm` (and `native`, if this host runs native tools), caching
    /// components in `cache`. Fails when its state directory cannot be used.
    pub fn new(
        settings: Settings,
        wasm: Arc<WasmHost>,
        native: Option<Arc<NativeHost>>,
        cache: LocalStore,
    ) -> std::io::Result<Arc<Self>> {
        let trust = TrustFile {
            path: settings.trust.clone(),
            seen: None,
            generation: 0,
            trust: Err("not read yet".into()),
        };
        std::fs::create_dir_all(&settings.state_dir)?;
        let state_lock = lock_state_dir(&settings.state_dir)?;
        let ledger = Ledger::open(&settings.state_dir.join("ran.jsonl"), now_s())?;
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| std::io::Error::other(e.to_string()))?;
        let worker = Arc::new(Self {
            instance: hex::encode(secret),
            settings,
            native: native.clone(),
            runner: std::sync::OnceLock::new(),
            session: tokio::sync::Mutex::new(None),
            refused: Mutex::new(None),
            trust: Mutex::new(trust),
            running: Mutex::new(HashMap::new()),
            draining: std::sync::atomic::AtomicBool::new(false),
            active: Mutex::new(HashSet::new()),
            ledger: Mutex::new(ledger),
            _state_lock: state_lock,
            plans: Mutex::new(Bounded::new(ENVELOPE_CACHE_BYTES)),
            actions: Mutex::new(Bounded::new(ENVELOPE_CACHE_BYTES)),
            slot_free: Notify::new(),
        });
        let source = QueueSource { worker: Arc::downgrade(&worker), cache };
        let mut runner = HostRunner::new(wasm, source, worker.settings.resources.clone());
        if let Some(n) = native {
            runner = runner.with_native(n);
        }
        let _ = worker.runner.set(Arc::new(runner));
        Ok(worker)
    }

    fn capabilities(&self) -> Capabilities {
        let tools = match &self.native {
            Some(n) if n.refusal().is_none() => n.allowlist().names().cloned().collect(),
            _ => Default::default(),
        };
        Capabilities {
            name: self.settings.name.clone(),
            wasm: true,
            tools,
            mounts: self.settings.resources.mounts.keys().cloned().collect(),
            ceilings: self.settings.resources.ceilings,
            concurrency: self.settings.concurrency,
            labels: self.settings.labels.clone(),
        }
    }

    /// What this worker announces, checked against the bounds the queue enforces: a
    /// worker the queue would refuse to register refuses to start.
    pub fn check_capabilities(&self) -> Result<(), String> {
        self.capabilities().check()
    }

    /// Connects and registers once, before running: the queue refusing this worker (a
    /// key it has not enrolled, capabilities it will not take) is an error to stop for, where an
    /// unreachable queue is only waited for (`run` keeps trying).
    pub async fn first_contact(&self) -> Result<(), LinkError> {
        match self.connect().await {
            Ok(s) => {
                info!(worker = s.worker, queue = %s.client.remote(), "registered");
                *self.session.lock().await = Some(s);
                Ok(())
            }
            Err(e) if refuses_this_worker(&e) => Err(e),
            Err(e) => {
                warn!(error = %e, "cannot reach the queue yet; will keep trying");
                Ok(())
            }
        }
    }

    /// The current session: connects and registers (with backoff) when there is none. When
    /// the queue refuses this worker itself (its key revoked), that refusal is returned,
    /// and returned again at once for [`REFUSED_RETRY`]: results in flight are then given
    /// up (the queue would not take them) and a drain is not held up.
    async fn session(&self) -> Result<Session, LinkError> {
        let refused = |message: String| LinkError::Remote {
            request: "hello",
            code: ErrorCode::Unauthenticated,
            message,
        };
        if let Some((at, why)) = lock(&self.refused).clone()
            && at.elapsed() < REFUSED_RETRY
        {
            return Err(refused(why));
        }
        let mut guard = self.session.lock().await;
        if let Some(s) = guard.as_ref().filter(|s| !s.client.is_closed()) {
            return Ok(s.clone());
        }
        let mut delay = Duration::from_millis(100);
        loop {
            match self.connect().await {
                Ok(s) => {
                    info!(worker = s.worker, queue = %s.client.remote(), "registered");
                    *lock(&self.refused) = None;
                    *guard = Some(s.clone());
                    return Ok(s);
                }
                Err(e) if refuses_this_worker(&e) => {
                    // Its key was revoked, or the queue changed under it: nothing to do
                    // but say so, slowly, until an operator fixes it.
                    error!(error = %e, retry_in = ?REFUSED_RETRY, "the queue refuses this worker");
                    *lock(&self.refused) = Some((std::time::Instant::now(), e.to_string()));
                    return Err(refused(e.to_string()));
                }
                Err(e) => {
                    warn!(error = %e, retry_in = ?delay, "cannot reach the queue");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn connect(&self) -> Result<Session, LinkError> {
        let s = &self.settings;
        let credential = Credential::Key(s.key.clone());
        let client =
            Client::connect_any(&s.queue, s.fingerprint, ClientRole::Worker, &credential).await?;
        match client.register(self.capabilities(), self.instance.clone()).await {
            Ok(r) => Ok(Session {
                client,
                worker: r.worker,
                heartbeat: r.heartbeat.max(Duration::from_millis(100)),
            }),
            Err(e) => {
                client.close();
                Err(e)
            }
        }
    }

    /// Drops `stale`, unless another task has already replaced it with a new connection.
    async fn drop_session(&self, stale: &Session) {
        stale.client.close();
        let mut guard = self.session.lock().await;
        let same = |s: &Session| {
            s.client.connection().stable_id() == stale.client.connection().stable_id()
        };
        if guard.as_ref().is_some_and(same) {
            *guard = None;
        }
    }

    /// Makes `call` on the current session until the queue answers (its errors are
    /// returned): reconnecting when the link fails or an attempt takes longer than `limit`,
    /// waiting while the queue throttles, and registering again when it forgot this worker.
    async fn call<T, F>(&self, limit: Duration, call: impl Fn(Client) -> F) -> Result<T, LinkError>
    where
        F: Future<Output = Result<T, LinkError>>,
    {
        loop {
            let s = self.session().await?;
            let answer = tokio::time::timeout(limit, call(s.client.clone()))
                .await
                .unwrap_or_else(|_| Err(LinkError::Connection("no answer in time".into())));
            match answer {
                Err(e) if e.is_link_failure() => {
                    warn!(error = %e, "lost the queue; reconnecting");
                    self.drop_session(&s).await;
                }
                Err(e) if e.code() == Some(ErrorCode::RateLimited) => {
                    warn!("the queue keeps throttling this worker; waiting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                // The queue cannot serve this now (its storage failed): ask again.
                Err(e) if e.code() == Some(ErrorCode::Unavailable) => {
                    warn!(error = %e, "the queue is unavailable; asking again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) if e.code() == Some(ErrorCode::NotRegistered) => {
                    // The queue forgot this worker (it restarted): register again.
                    self.drop_session(&s).await;
                }
                other => return other,
            }
        }
    }

    /// Fetches a blob, at most `max` bytes, across reconnects and throttling.
    async fn fetch(&self, digest: Digest, max: u64) -> Result<Vec<u8>, FetchError> {
        for _ in 0..5 {
            let s = self.session().await.map_err(|e| FetchError::Transient(e.to_string()))?;
            match s.client.get_blob(digest, max).await {
                Ok(b) => return Ok(b),
                Err(e @ LinkError::BlobMismatch { .. }) => {
                    return Err(FetchError::Unavailable(e.to_string()));
                }
                // Not there, or larger than the signed size: no other attempt can do better.
                Err(LinkError::Remote {
                    code: ErrorCode::NotFound | ErrorCode::TooLarge,
                    message,
                    ..
                }) => return Err(FetchError::Unavailable(message)),
                Err(e) if e.is_link_failure() => self.drop_session(&s).await,
                Err(e) if e.code() == Some(ErrorCode::RateLimited) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(FetchError::Transient(e.to_string())),
            }
        }
        Err(FetchError::Transient(format!(
            "cannot fetch {digest}: the queue keeps dropping the connection or throttling"
        )))
    }

    /// Stores blobs at the queue in one request, across reconnects and throttling.
    async fn upload(&self, blobs: &[&[u8]]) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..5 {
            let s = self.session().await.map_err(|e| e.to_string())?;
            match s.client.put_many(blobs, false).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_link_failure() => {
                    last = e.to_string();
                    self.drop_session(&s).await;
                }
                Err(e) if e.code() == Some(ErrorCode::RateLimited) => last = e.to_string(),
                Err(e) if e.code() == Some(ErrorCode::Unavailable) => {
                    last = e.to_string();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(last)
    }

    /// Runs until `shutdown` resolves, then stops claiming and waits for running jobs
    /// (their results delivered).
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        let beat = tokio::spawn(self.clone().heartbeats());
        tokio::pin!(shutdown);
        loop {
            // Made before the count is read, so a slot freed in between still wakes it.
            let freed = self.slot_free.notified();
            let free = self.free_slots();
            if free == 0 {
                tokio::select! {
                    () = &mut shutdown => break,
                    () = freed => continue,
                }
            }
            // A long poll: the queue answers within its wait.
            let wait_ms = CLAIM_WAIT.as_millis() as u32;
            let claim =
                self.call(
                    CLAIM_WAIT + REQUEST_TIMEOUT,
                    |c| async move { c.claim(free, wait_ms).await },
                );
            let answer = tokio::select! {
                () = &mut shutdown => break,
                a = claim => a,
            };
            match answer {
                Ok(leases) => self.take(leases),
                Err(e) => {
                    warn!(error = %e, "claim refused");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        self.draining.store(true, std::sync::atomic::Ordering::SeqCst);
        info!("draining: no more claims; waiting for running jobs");
        loop {
            let freed = self.slot_free.notified();
            if lock(&self.running).is_empty() {
                break;
            }
            freed.await;
        }
        beat.abort();
        // Say goodbye, so the queue drops this worker's pending claim at once instead of
        // leasing it jobs that would wait out their lease.
        if let Some(s) = self.session.lock().await.take() {
            s.client.shutdown().await;
        }
    }

    fn free_slots(&self) -> u32 {
        self.settings.concurrency.saturating_sub(lock(&self.running).len() as u32)
    }

    /// Starts the leases of a claim's answer: a lease of a job already running here is
    /// ignored, and leases beyond the concurrency are given back.
    fn take(self: &Arc<Self>, leases: Vec<Lease>) {
        for lease in leases {
            let key = lease.lease;
            let duplicate = lock(&self.running).keys().any(|l| l.job == key.job);
            if duplicate {
                warn!(job = %key.job, "the queue leased a job this worker is running: ignored");
                continue;
            }
            let why = if self.draining.load(std::sync::atomic::Ordering::SeqCst) {
                warn!(job = %key.job, "the queue leased a job to this worker as it stops");
                "this worker is stopping".to_owned()
            } else if self.free_slots() == 0 {
                warn!(job = %key.job, "the queue leased more than this worker's concurrency");
                format!("over this worker's concurrency of {}", self.settings.concurrency)
            } else {
                self.start(lease);
                continue;
            };
            let me = self.clone();
            let span = job_span(&lease);
            tokio::spawn(
                async move { me.deliver(key, Verdict::Decline(why)).await }.instrument(span),
            );
        }
    }

    fn start(self: &Arc<Self>, lease: Lease) {
        self.start_in(&mut lock(&self.running), lease);
    }

    /// Starts `lease`, its entry put in `running` (whose lock is held until the entry is
    /// in: a job that ends at once must find it to remove it).
    fn start_in(self: &Arc<Self>, running: &mut HashMap<LeaseRef, Running>, lease: Lease) {
        let key = lease.lease;
        let me = self.clone();
        // Every line logged about this lease, its tasks' included, names the job.
        let span = job_span(&lease);
        let handle = tokio::spawn(
            async move {
                let verdict = me.run_lease(&lease).await;
                match lock(&me.running).get_mut(&key) {
                    Some(r) => r.delivering = true,
                    // Stopped as it ended (lost or cancelled): the stop reports it.
                    None => return,
                }
                let mut next = me.deliver(key, verdict).await;
                if me.draining.load(std::sync::atomic::Ordering::SeqCst) {
                    // Given back before this slot frees, so that the drain waits for it.
                    for l in std::mem::take(&mut next) {
                        warn!(job = %l.lease.job, "the queue leased a job to this worker as it stops");
                        let span = job_span(&l);
                        let why = Verdict::Decline("this worker is stopping".into());
                        me.deliver(l.lease, why).instrument(span).await;
                    }
                }
                me.hand_on(key, next);
            }
            .instrument(span),
        );
        running.insert(key, Running { abort: handle.abort_handle(), delivering: false });
    }

    /// Frees a finished job's slot for the first job leased with its result, in one step
    /// so that no claim's answer takes the slot in between; the rest, if the queue sent
    /// more than asked, go as any claim's.
    fn hand_on(self: &Arc<Self>, done: LeaseRef, next: Vec<Lease>) {
        let mut next = next.into_iter();
        {
            let mut running = lock(&self.running);
            running.remove(&done);
            if let Some(first) = next.next() {
                if running.keys().any(|l| l.job == first.lease.job) {
                    // `take` says so and ignores it.
                    drop(running);
                    self.take(vec![first]);
                } else {
                    self.start_in(&mut running, first);
                }
            }
        }
        self.take(next.collect());
        self.slot_free.notify_waiters();
    }

    /// Delivers a verdict, across reconnects, until the queue takes or refuses it; the
    /// jobs leased with its answer. Called in the lease's `job` span.
    async fn deliver(&self, lease: LeaseRef, verdict: Verdict) -> Vec<Lease> {
        metrics::lease(&verdict);
        let answer = match verdict {
            Verdict::Done(done) => {
                let (output, carried) = &*done;
                // The next job is asked for with the result (one round trip and one commit
                // for both), on the first attempt only: leases granted to an attempt whose
                // answer was lost would wait out their lease at the queue.
                let draining = self.draining.load(std::sync::atomic::Ordering::SeqCst);
                let first = std::sync::atomic::AtomicBool::new(!draining);
                let answer = self
                    .call(ANSWER_LIMIT, |c| {
                        let output = output.clone();
                        let claim =
                            u32::from(first.swap(false, std::sync::atomic::Ordering::SeqCst));
                        async move {
                            let carried: Vec<&[u8]> = carried.iter().map(Vec::as_slice).collect();
                            c.complete_carrying(lease, output, &carried, claim).await
                        }
                    })
                    .await;
                return match answer {
                    Ok(r) => {
                        info!(state = r.state.name(), leased = r.leases.len(), "result recorded");
                        r.leases
                    }
                    Err(e) => {
                        warn!(error = %e, "result refused");
                        vec![]
                    }
                };
            }
            Verdict::Fail { reason, retryable } => {
                warn!(%reason, retryable, "job failed");
                self.call(ANSWER_LIMIT, |c| {
                    let reason = reason.clone();
                    async move { c.fail(lease, reason, retryable).await }
                })
                .await
            }
            Verdict::Decline(reason) => {
                warn!(%reason, "job declined: another worker may run it");
                self.call(ANSWER_LIMIT, |c| {
                    let reason = reason.clone();
                    async move { c.release(lease, reason).await }
                })
                .await
            }
        };
        match answer {
            Ok(state) => info!(state = state.name(), "result recorded"),
            Err(e) => warn!(error = %e, "result refused"),
        }
        vec![]
    }

    /// Heartbeats every lease held; stops cancelled and lost ones.
    async fn heartbeats(self: Arc<Self>) {
        loop {
            let every = match self.session().await {
                Ok(s) => s.heartbeat,
                Err(_) => Duration::from_secs(1),
            };
            tokio::time::sleep(every).await;
            let leases: Vec<LeaseRef> = lock(&self.running).keys().copied().collect();
            for chunk in leases.chunks(MAX_HEARTBEAT_LEASES) {
                self.heartbeat(chunk).await;
            }
        }
    }

    async fn heartbeat(self: &Arc<Self>, leases: &[LeaseRef]) {
        let call = |c: Client| {
            let leases = leases.to_vec();
            async move { c.heartbeat(leases).await }
        };
        match self.call(ANSWER_LIMIT, call).await {
            Ok(agenix_link::Heartbeat { cancelled, lost, .. }) => {
                for l in cancelled {
                    if let Some(r) = self.stop(&l) {
                        r.abort.abort();
                        info!(job = %l.job, "cancelled: sandboxes stopped");
                        self.slot_free.notify_waiters();
                        let me = self.clone();
                        tokio::spawn(async move {
                            me.deliver(l, Verdict::permanent("cancelled")).await;
                        });
                    }
                }
                for l in lost {
                    if let Some(r) = self.stop(&l) {
                        r.abort.abort();
                        warn!(job = %l.job, "lease lost: stopped");
                        self.slot_free.notify_waiters();
                    }
                }
            }
            Err(e) => warn!(error = %e, "heartbeat refused"),
        }
    }

    /// Takes a lease the queue says to stop out of the running ones, unless its result is
    /// being reported already (the queue then answers that report as it stands).
    fn stop(&self, lease: &LeaseRef) -> Option<Running> {
        let mut running = lock(&self.running);
        if running.get(lease)?.delivering {
            return None;
        }
        running.remove(lease)
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        lock(&self.running).len()
    }

    /// The worker's id at the queue is derived from this secret.
    pub fn instance(&self) -> &str {
        &self.instance
    }
}
