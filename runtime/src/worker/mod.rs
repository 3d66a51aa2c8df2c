//! The worker: registers its capabilities, claims up to its concurrency, verifies every
//! lease end to end, runs it through the one DAG executor, heartbeats its leases, delivers
//! results (keeping them across queue restarts until delivered), reconnects with backoff,
//! and drains on shutdown.

pub mod config;
pub mod verify;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agenix_host::native::NativeHost;
use agenix_host::wasm::WasmHost;
use agenix_proto::job::{Capabilities, JobOutput, Lease, LeaseRef};
use agenix_proto::link::{Client, LinkError};
use agenix_proto::wire::{ClientRole, ErrorCode, Request, Response};
use agenix_proto::{Digest, Fingerprint, InputRef, Trust};
use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tracing::{info, warn};

use crate::exec::{ComponentSource, Executable, FetchError, HostRunner, Resources, execute};
use crate::store::LocalStore;

/// Largest input or component a worker fetches.
pub const MAX_BLOB: u64 = 1 << 30;
/// How long a request may go unanswered before the connection is presumed dead.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a worker is told.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The queue.
    pub queue: SocketAddr,
    /// Its pinned identity.
    pub fingerprint: Fingerprint,
    /// The worker role's token.
    pub token: String,
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
}

/// A failure to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Why.
    pub reason: String,
    /// Whether another attempt may work.
    pub retryable: bool,
}

impl Failure {
    fn permanent(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), retryable: false }
    }
    fn transient(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), retryable: true }
    }
}

/// An authenticated, registered connection.
#[derive(Debug, Clone)]
struct Session {
    client: Client,
    worker: u64,
    heartbeat: Duration,
}

/// The trust file, re-read whenever it changes.
#[derive(Debug)]
struct TrustFile {
    path: PathBuf,
    seen: Option<(SystemTime, u64)>,
    trust: Result<Trust, String>,
}

impl TrustFile {
    fn current(&mut self) -> Result<Trust, String> {
        let stamp =
            std::fs::metadata(&self.path).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
        if stamp.is_none() || stamp != self.seen {
            self.seen = stamp;
            self.trust = std::fs::read(&self.path)
                .map_err(|e| format!("cannot read the trust file {}: {e}", self.path.display()))
                .and_then(|b| {
                    Trust::from_json(&b).map_err(|e| format!("the trust file is invalid: {e}"))
                });
            if let Err(e) = &self.trust {
                warn!(error = %e, "every lease will fail until the trust file is fixed");
            }
        }
        self.trust.clone()
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
        let bytes = worker.fetch(digest).await?;
        if let Err(e) = self.cache.put(&bytes) {
            warn!(error = %e, "cannot cache a component");
        }
        Ok(bytes)
    }
}

/// A worker.
pub struct Worker {
    settings: Settings,
    native: Option<Arc<NativeHost>>,
    runner: std::sync::OnceLock<Arc<HostRunner<QueueSource>>>,
    session: tokio::sync::Mutex<Option<Session>>,
    trust: Mutex<TrustFile>,
    running: Mutex<HashMap<LeaseRef, AbortHandle>>,
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

/// Connection errors (worth reconnecting for), as opposed to the queue's answers.
fn is_link_failure(e: &LinkError) -> bool {
    !matches!(e, LinkError::Remote { .. } | LinkError::BlobMismatch { .. })
}

impl Worker {
    /// A worker over `wasm` (and `native`, if this host runs native tools), caching
    /// components in `cache`.
    pub fn new(
        settings: Settings,
        wasm: Arc<WasmHost>,
        native: Option<Arc<NativeHost>>,
        cache: LocalStore,
    ) -> Arc<Self> {
        let trust = TrustFile {
            path: settings.trust.clone(),
            seen: None,
            trust: Err("not read yet".into()),
        };
        let worker = Arc::new(Self {
            settings,
            native: native.clone(),
            runner: std::sync::OnceLock::new(),
            session: tokio::sync::Mutex::new(None),
            trust: Mutex::new(trust),
            running: Mutex::new(HashMap::new()),
            slot_free: Notify::new(),
        });
        let source = QueueSource { worker: Arc::downgrade(&worker), cache };
        let mut runner = HostRunner::new(wasm, source, worker.settings.resources.clone());
        if let Some(n) = native {
            runner = runner.with_native(n);
        }
        let _ = worker.runner.set(Arc::new(runner));
        worker
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

    /// The current session: connects and registers (with backoff) when there is none.
    async fn session(&self) -> Session {
        let mut guard = self.session.lock().await;
        if let Some(s) = guard.as_ref().filter(|s| !s.client.is_closed()) {
            return s.clone();
        }
        let mut delay = Duration::from_millis(100);
        loop {
            match self.connect().await {
                Ok(s) => {
                    info!(worker = s.worker, queue = %self.settings.queue, "registered");
                    *guard = Some(s.clone());
                    return s;
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
        let client = Client::connect(s.queue, s.fingerprint, ClientRole::Worker, &s.token).await?;
        match client.request(&Request::Register { capabilities: self.capabilities() }).await? {
            Response::Registered { worker, heartbeat_ms, .. } => Ok(Session {
                client,
                worker,
                heartbeat: Duration::from_millis(heartbeat_ms.max(100)),
            }),
            other => {
                Err(LinkError::Unexpected { request: "register", answer: format!("{other:?}") })
            }
        }
    }

    async fn drop_session(&self, stale: &Session) {
        let mut guard = self.session.lock().await;
        if guard.as_ref().is_some_and(|s| s.worker == stale.worker) {
            stale.client.close();
            *guard = None;
        }
    }

    /// Sends a request built for the current session, reconnecting on link failures until
    /// the queue answers (its errors are returned).
    async fn call(&self, build: impl Fn(u64) -> Request) -> Result<Response, LinkError> {
        loop {
            let s = self.session().await;
            let req = build(s.worker);
            // A long poll waits up to its own wait on the queue; anything else answers fast.
            let limit = match &req {
                Request::Claim { wait_ms, .. } => {
                    Duration::from_millis(u64::from(*wait_ms)) + REQUEST_TIMEOUT
                }
                _ => REQUEST_TIMEOUT,
            };
            let answer = tokio::time::timeout(limit, s.client.request(&req))
                .await
                .unwrap_or_else(|_| Err(LinkError::Connection("no answer in time".into())));
            match answer {
                Err(e) if is_link_failure(&e) => {
                    warn!(error = %e, "lost the queue; reconnecting");
                    self.drop_session(&s).await;
                }
                Err(LinkError::Remote { code: ErrorCode::BadRequest, message, .. })
                    if message.contains("register first") =>
                {
                    // The queue restarted and forgot this worker: register again.
                    self.drop_session(&s).await;
                }
                other => return other,
            }
        }
    }

    async fn fetch(&self, digest: Digest) -> Result<Vec<u8>, FetchError> {
        for _ in 0..5 {
            let s = self.session().await;
            match s.client.get_blob(digest, MAX_BLOB).await {
                Ok(b) => return Ok(b),
                Err(e @ LinkError::BlobMismatch { .. }) => {
                    return Err(FetchError::Unavailable(e.to_string()));
                }
                Err(LinkError::Remote { code: ErrorCode::NotFound, message, .. }) => {
                    return Err(FetchError::Unavailable(message));
                }
                Err(e) if is_link_failure(&e) => self.drop_session(&s).await,
                Err(e) => return Err(FetchError::Transient(e.to_string())),
            }
        }
        Err(FetchError::Transient(format!(
            "cannot fetch {digest}: the queue keeps dropping the connection"
        )))
    }

    /// Runs until `shutdown` resolves, then stops claiming and waits for running jobs
    /// (their results delivered).
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        let beat = tokio::spawn(self.clone().heartbeats());
        tokio::pin!(shutdown);
        loop {
            // Made before the count is read, so a slot freed in between still wakes it.
            let freed = self.slot_free.notified();
            let free = self.settings.concurrency.saturating_sub(lock(&self.running).len() as u32);
            if free == 0 {
                tokio::select! {
                    () = &mut shutdown => break,
                    () = freed => continue,
                }
            }
            let claim = self.call(|w| Request::Claim { worker: w, max: free, wait_ms: 5_000 });
            let answer = tokio::select! {
                () = &mut shutdown => break,
                a = claim => a,
            };
            match answer {
                Ok(Response::Leases { leases }) => {
                    for lease in leases {
                        self.start(lease);
                    }
                }
                Ok(other) => warn!(answer = ?other, "unexpected answer to claim"),
                Err(e) => {
                    warn!(error = %e, "claim refused");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
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

    fn start(self: &Arc<Self>, lease: Lease) {
        let key = lease.lease;
        let me = self.clone();
        // Held until the entry is in: a job that ends at once must find it to remove it.
        let mut running = lock(&self.running);
        let handle = tokio::spawn(async move {
            let result = me.run_lease(&lease).await;
            me.deliver(key, result).await;
            lock(&me.running).remove(&key);
            me.slot_free.notify_waiters();
        });
        running.insert(key, handle.abort_handle());
    }

    /// Verifies and runs one lease.
    async fn run_lease(&self, lease: &Lease) -> Result<JobOutput, Failure> {
        let trust = lock(&self.trust).current().map_err(Failure::permanent)?;
        let resources = &self.settings.resources;
        let v =
            verify::verify(lease, &trust, now_s(), &self.settings.fingerprint, &resources.ceilings)
                .map_err(Failure::permanent)?;
        let tools = |t: &agenix_proto::ToolName| -> Result<(), String> {
            match &self.native {
                None => Err(format!("native tool \"{t}\": this worker runs no native tools")),
                Some(n) => match (n.allowlist().get(t), n.refusal()) {
                    (None, _) => Err(format!("tool \"{t}\" is not in this worker's allowlist")),
                    (Some(_), Some(why)) => Err(why),
                    (Some(_), None) => Ok(()),
                },
            }
        };
        verify::preflight(&v.plan, resources, &tools).map_err(Failure::permanent)?;
        let input = match &lease.input {
            None => Bytes::new(),
            Some(i) => Bytes::from(self.fetch(i.digest).await.map_err(|e| match e {
                FetchError::Unavailable(m) => Failure::permanent(format!("input: {m}")),
                FetchError::Transient(m) => Failure::transient(format!("input: {m}")),
            })?),
        };
        let runner = self
            .runner
            .get()
            .cloned()
            .ok_or_else(|| Failure::transient("the worker is starting"))?;
        info!(job = %lease.lease.job, attempt = lease.attempt, "running");
        let result = execute(Executable::verified(&v.plan), input, runner)
            .await
            .map_err(|e| Failure::transient(e.to_string()))?;
        let output_ran =
            result.reports.iter().any(|r| r.task == v.plan.plan().output && r.outcome.is_success());
        let output = if output_ran {
            let blob =
                InputRef { digest: Digest::of(&result.output), size: result.output.len() as u64 };
            loop {
                let s = self.session().await;
                match s.client.put_blob(&result.output).await {
                    Ok(_) => break,
                    Err(e) if is_link_failure(&e) => self.drop_session(&s).await,
                    Err(e) => {
                        return Err(Failure::transient(format!("cannot store the output: {e}")));
                    }
                }
            }
            Some(blob)
        } else {
            None
        };
        Ok(JobOutput { succeeded: result.succeeded, reports: result.reports, output })
    }

    /// Delivers a result, across reconnects, until the queue takes or refuses it.
    async fn deliver(&self, lease: LeaseRef, result: Result<JobOutput, Failure>) {
        let answer = match &result {
            Ok(output) => {
                self.call(|w| Request::Complete { worker: w, lease, output: output.clone() }).await
            }
            Err(f) => {
                warn!(job = %lease.job, reason = %f.reason, retryable = f.retryable, "job failed");
                self.call(|w| Request::Fail {
                    worker: w,
                    lease,
                    reason: f.reason.clone(),
                    retryable: f.retryable,
                })
                .await
            }
        };
        match answer {
            Ok(Response::Recorded { state, .. }) => {
                info!(job = %lease.job, state = state.name(), "result recorded")
            }
            Ok(other) => warn!(answer = ?other, "unexpected answer to a result"),
            Err(e) => warn!(job = %lease.job, error = %e, "result refused"),
        }
    }

    /// Heartbeats every lease held; stops cancelled and lost ones.
    async fn heartbeats(self: Arc<Self>) {
        loop {
            let every = self.session().await.heartbeat;
            tokio::time::sleep(every).await;
            let leases: Vec<LeaseRef> = lock(&self.running).keys().copied().collect();
            if leases.is_empty() {
                continue;
            }
            match self.call(|w| Request::Heartbeat { worker: w, leases: leases.clone() }).await {
                Ok(Response::HeartbeatOk { cancelled, lost, .. }) => {
                    for l in cancelled {
                        if let Some(h) = lock(&self.running).remove(&l) {
                            h.abort();
                            info!(job = %l.job, "cancelled: sandboxes stopped");
                            self.slot_free.notify_waiters();
                            let me = self.clone();
                            tokio::spawn(async move {
                                me.deliver(l, Err(Failure::permanent("cancelled"))).await;
                            });
                        }
                    }
                    for l in lost {
                        if let Some(h) = lock(&self.running).remove(&l) {
                            h.abort();
                            warn!(job = %l.job, "lease lost: stopped");
                            self.slot_free.notify_waiters();
                        }
                    }
                }
                Ok(other) => warn!(answer = ?other, "unexpected answer to a heartbeat"),
                Err(e) => warn!(error = %e, "heartbeat refused"),
            }
        }
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        lock(&self.running).len()
    }
}
