//! The QUIC server around the scheduler: authentication, per-role authorization, limits,
//! the committer, the reaper and the blob collector. The request handlers are in
//! `handlers.rs`.
//!
//! Concurrency: the scheduler sits behind one mutex, never held across an await. Each
//! request applies its event to the scheduler and hands the resulting writes to the
//! committer while still holding the lock (so writes reach storage in the order the
//! scheduler made them), then waits for the commit before answering: a transition is
//! acknowledged only once it is durable. The committer batches whatever is pending into one
//! transaction (group commit). When a commit fails, the committer fails every request still
//! waiting and reloads the scheduler from storage; until storage can be read back (a
//! database restarting), nothing is applied and requests are answered as unavailable:
//! memory never keeps, or acts on, a transition that storage does not.
//!
//! Every answer that cannot be sent is logged; leases in an answer that could not be sent
//! are taken back at once, without costing their jobs an attempt.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agenix_link::{read_frame, write_frame};
use agenix_proto::audit::{Event, Step};
use agenix_proto::job::{JobId, Lease, StateKind};
use agenix_proto::wire::{
    ClientRole, ErrorCode, FrameError, MAX_FRAME, PROTOCOL_VERSION, Request, Response, json_len,
};
use agenix_proto::{Digest, Fingerprint, KeyId};
use agenix_queue_core::{Change, Config, Refusal, Scheduler};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{Instrument, debug, error, info, warn};

use crate::blobs::Blobs;
use crate::identity::Tokens;
use crate::limits::{Bucket, Gate, Limits, lock};
use crate::store::{Hold, Store, Write};

/// Limits and timings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Connection and request limits.
    pub limits: Limits,
    /// Concurrent streams per connection.
    pub streams_per_connection: u32,
    /// How long a client may take to send a request frame.
    pub request_timeout: Duration,
    /// Batch concurrent commits into one transaction.
    pub group_commit: bool,
    /// How long a blob nothing refers to is kept after it was last uploaded.
    pub blob_grace: Duration,
    /// How often unreferenced blobs are collected.
    pub collect_every: Duration,
    /// The scheduler's settings.
    pub scheduler: Config,
    /// How often the audit log's checkpoint is signed (when the log grew).
    pub checkpoint_every: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            streams_per_connection: 64,
            request_timeout: Duration::from_secs(10),
            group_commit: true,
            blob_grace: Duration::from_secs(3600),
            collect_every: Duration::from_secs(60),
            scheduler: Config::default(),
            checkpoint_every: Duration::from_secs(10),
        }
    }
}

/// Unix milliseconds on this machine's clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // Without randomness the backoff loses its jitter but stays correct.
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

type Ack = oneshot::Sender<Result<(), String>>;
/// Resolves once a change is durable; `None` when there was nothing to write.
pub(crate) type Durable = Option<oneshot::Receiver<Result<(), String>>>;

/// One authenticated connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) ip: IpAddr,
    pub(crate) role: ClientRole,
    /// The key a worker proved in the handshake (enrolled when it said hello).
    pub(crate) key: Option<KeyId>,
    /// The worker registered on this connection, and its concurrency.
    pub(crate) worker: Mutex<Option<(u64, u32)>>,
    pub(crate) bucket: Mutex<Bucket>,
}

/// Resolves once the node's hold on its storage has lapsed (`to`), or is back (`!to`).
async fn until_lapsed(lapsed: &mut tokio::sync::watch::Receiver<bool>, to: bool) {
    let _ = lapsed.wait_for(|l| *l == to).await;
}

/// How long a node whose hold lapsed waits for a connection's requests under way before it
/// closes it.
const DRAIN: Duration = Duration::from_secs(60);

/// Why a node closes its connections while its hold on its storage has lapsed.
const NOT_SERVING: &[u8] = b"this queue node does not serve its storage now: try another";

/// The queue.
pub struct Queue {
    pub(crate) sched: Mutex<Scheduler>,
    pub(crate) commits: mpsc::UnboundedSender<(Vec<Write>, Ack)>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) blobs: Blobs,
    pub(crate) kept: Mutex<BTreeSet<Digest>>,
    pub(crate) trust: crate::trust::TrustSource,
    pub(crate) fingerprint: Fingerprint,
    tokens: Tokens,
    pub(crate) ready: Notify,
    /// Claims waiting for work, which a submission leases to in its own commit.
    pub(crate) waiting: crate::handoff::Waiting,
    pub(crate) settings: Settings,
    gate: Gate,
    pub(crate) auditor: crate::auditor::Auditor,
    /// Set (under the scheduler's lock) while memory may hold a transition storage does
    /// not: after a failed commit, until the state is read back. Nothing is applied then.
    stale: std::sync::atomic::AtomicBool,
    /// Why this queue must stop (its storage is another queue's now), once it must.
    lost: Mutex<Option<String>>,
    /// Whether its hold on its storage has lapsed (it cannot tell whether it still serves
    /// it): connections are closed, so that clients go to another node.
    lapsed: tokio::sync::watch::Sender<bool>,
    lost_notify: Notify,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("fingerprint", &self.fingerprint).finish()
    }
}

pub(crate) fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error { code, message: message.into() }
}

pub(crate) fn refusal(r: Refusal) -> Response {
    let code = match r {
        Refusal::Conflict(_) => ErrorCode::Conflict,
        Refusal::NoJob(_) => ErrorCode::NotFound,
        Refusal::Stale { .. } | Refusal::Finished(_) => ErrorCode::StaleLease,
        Refusal::NotYours(_) => ErrorCode::Forbidden,
        Refusal::TooManyWorkers(_) | Refusal::Unavailable(_) | Refusal::NoIds(..) => {
            ErrorCode::Unavailable
        }
        _ => ErrorCode::BadRequest,
    };
    error(code, r.to_string())
}

/// A scheduler holding what `store` kept, and the rest of what it kept. The jobs go into
/// the scheduler as they are read.
fn read_back(
    store: &dyn Store,
    config: Config,
) -> Result<(Scheduler, crate::store::Loaded), crate::store::StoreError> {
    let mut sched = Scheduler::new(config);
    let now = now_ms();
    let mut loaded = store.load_with(&mut |job| sched.restore(now, job))?;
    sched.restored(std::mem::take(&mut loaded.actions), loaded.next_job);
    Ok((sched, loaded))
}

impl Queue {
    /// Loads storage and starts the committer, the reaper and the blob collector.
    /// `identity` is the queue's key: its TLS identity, and the key that signs the audit
    /// log's checkpoints.
    pub fn start(
        store: Arc<dyn Store>,
        mut blobs: Blobs,
        trust: crate::trust::TrustSource,
        identity: agenix_proto::keys::SigningKey,
        tokens: Tokens,
        settings: Settings,
    ) -> anyhow::Result<Arc<Self>> {
        let fingerprint = agenix_proto::audit::fingerprint_of(&identity.verifying_key())
            .ok_or_else(|| anyhow::anyhow!("the identity key has no public key encoding"))?;
        let origin = agenix_proto::audit::origin(&fingerprint);
        let (sched, loaded) = read_back(store.as_ref(), settings.scheduler)?;
        blobs.keep_small_in(store.clone(), loaded.blob_bytes);
        crate::auditor::check_at_start(store.as_ref(), &origin, &identity.verifying_key())?;
        let auditor = crate::auditor::Auditor::new(identity, origin, loaded.trust_seen.clone());
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Arc::new(Self {
            sched: Mutex::new(sched),
            commits: tx,
            store: store.clone(),
            blobs,
            kept: Mutex::new(loaded.kept.into_iter().collect()),
            trust,
            fingerprint,
            tokens,
            ready: Notify::new(),
            waiting: Default::default(),
            gate: Gate::new(settings.limits.clone()),
            settings,
            auditor,
            stale: std::sync::atomic::AtomicBool::new(false),
            lost: Mutex::new(None),
            lost_notify: Notify::new(),
            lapsed: tokio::sync::watch::Sender::new(false),
        });
        tokio::spawn(committer(store, rx, Arc::downgrade(&queue)));
        tokio::spawn(reaper(Arc::downgrade(&queue)));
        tokio::spawn(holder(Arc::downgrade(&queue)));
        tokio::spawn(collector(Arc::downgrade(&queue)));
        Ok(queue)
    }

    /// Applies an event to the scheduler; queues its writes (plus `extra`) for commit in
    /// order; returns the event's value and a receiver for the commit's outcome.
    pub(crate) fn apply<T>(
        &self,
        f: impl FnOnce(&mut Scheduler) -> Result<(T, Vec<Change>), Refusal>,
        extra: Vec<Write>,
    ) -> Result<(T, Durable), Refusal> {
        let mut sched = self.current()?;
        let (value, changes) = f(&mut sched)?;
        let mut writes = extra;
        writes.extend(changes.into_iter().map(Write::Change));
        if writes.is_empty() {
            return Ok((value, None));
        }
        // If the committer has stopped, the dropped `ack` makes `done` report it.
        let (ack, done) = oneshot::channel();
        let _ = self.commits.send((writes, ack));
        drop(sched);
        Ok((value, Some(done)))
    }

    /// The scheduler, unless memory may be ahead of storage or behind it (after a failed
    /// commit, until storage is read back): what it holds then is neither acted on nor
    /// shown, so a transition storage lost is never answered as done.
    pub(crate) fn current(&self) -> Result<std::sync::MutexGuard<'_, Scheduler>, Refusal> {
        let sched = lock(&self.sched);
        if self.stale.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Refusal::Unavailable(
                "a commit failed; the queue reads its state back from storage before it goes on"
                    .into(),
            ));
        }
        match self.store.hold() {
            Hold::Serving => Ok(sched),
            Hold::Lapsed(why) | Hold::Lost(why) => Err(Refusal::Unavailable(why)),
        }
    }

    /// Resolves once this queue must stop because another serves its storage now, with why.
    pub async fn lost(&self) -> String {
        loop {
            let notified = self.lost_notify.notified();
            if let Some(why) = lock(&self.lost).clone() {
                return why;
            }
            notified.await;
        }
    }

    /// Waits for a commit; an error means the transition is not durable.
    pub(crate) async fn durable(done: Durable) -> Result<(), Response> {
        match done {
            None => Ok(()),
            Some(rx) => match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(error(ErrorCode::Unavailable, format!("not stored: {e}"))),
                Err(_) => Err(error(ErrorCode::Unavailable, "the committer stopped")),
            },
        }
    }

    /// After a failed commit: fails every request still waiting for one and reloads the
    /// scheduler from storage, so memory holds exactly what is durable. Returns whether it
    /// could; until it can, the queue applies nothing (`stale`).
    fn reload(&self, pending: &mut mpsc::UnboundedReceiver<(Vec<Write>, Ack)>, why: &str) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let was_stale = {
            let _sched = lock(&self.sched);
            while let Ok((_, ack)) = pending.try_recv() {
                let _ = ack.send(Err(format!("an earlier commit failed ({why})")));
            }
            self.stale.swap(true, SeqCst)
        };
        // Read without the scheduler's lock (storage may take its time to answer): nothing
        // is applied meanwhile, so nothing can be missed.
        match read_back(self.store.as_ref(), self.settings.scheduler) {
            Ok((fresh, loaded)) => {
                let mut sched = lock(&self.sched);
                sched.replace(fresh);
                *lock(&self.kept) = loaded.kept.into_iter().collect();
                self.blobs.committed();
                self.stale.store(false, SeqCst);
                if self.store.hold() != Hold::Serving {
                    warn!("state read back from storage; this node does not serve it now");
                } else if was_stale {
                    warn!("storage is back: state read back from it, the queue goes on");
                } else {
                    warn!("a commit failed: state reloaded from storage");
                }
                true
            }
            Err(e) => {
                if !was_stale {
                    error!(
                        error = %e,
                        "a commit failed and storage cannot be read back: nothing is applied \
                         until it can be (tried again every second)"
                    );
                }
                false
            }
        }
    }

    /// Runs the server on `endpoint` until it closes.
    pub async fn serve(self: Arc<Self>, endpoint: quinn::Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            let ip = incoming.remote_address().ip();
            if !self.gate.admit(ip) {
                debug!(%ip, "connection refused: too many connections from this address");
                crate::metrics::connection_refused();
                incoming.refuse();
                continue;
            }
            let q = self.clone();
            tokio::spawn(async move {
                let worker = q.clone().connection(incoming).await;
                q.gate.release(ip, worker);
            });
        }
    }

    /// Serves one connection; returns whether it ended as a worker connection.
    async fn connection(self: Arc<Self>, incoming: quinn::Incoming) -> bool {
        let ip = incoming.remote_address().ip();
        let Ok(conn) = incoming.await else { return false };
        let mut lapsed = self.lapsed.subscribe();
        if *lapsed.borrow_and_update() {
            conn.close(5u32.into(), NOT_SERVING);
            return false;
        }
        let key = agenix_link::peer_key(&conn).map(|k| KeyId::of(&k));
        let Some(role) = self.hello(&conn, ip, key).await else {
            conn.close(1u32.into(), b"unauthenticated");
            return false;
        };
        let worker = role == ClientRole::Worker;
        if worker && !self.gate.become_worker(ip) {
            warn!(%ip, "worker connection refused: too many worker connections");
            conn.close(4u32.into(), b"too many worker connections");
            return false;
        }
        let key = key.filter(|_| worker);
        match key {
            Some(key) => info!(%ip, role = role.as_str(), %key, "client connected"),
            None => info!(%ip, role = role.as_str(), "client connected"),
        }
        let client = Arc::new(Conn {
            ip,
            role,
            key,
            worker: Mutex::new(None),
            bucket: Mutex::new(Bucket::default()),
        });
        // Every line logged about this connection's requests names its address and role
        // (and a worker's key).
        let span = match key {
            Some(key) => tracing::info_span!("client", %ip, role = role.as_str(), %key),
            None => tracing::info_span!("client", %ip, role = role.as_str()),
        };
        let mut streams = tokio::task::JoinSet::new();
        loop {
            let (send, recv) = tokio::select! {
                stream = conn.accept_bi() => match stream {
                    Ok(stream) => stream,
                    Err(_) => break,
                },
                () = until_lapsed(&mut lapsed, true) => {
                    // What is under way is answered first (a commit it waits for may still
                    // succeed: its client must hear so), then the client is let go; unless
                    // the hold is back meanwhile.
                    let drained = async { while streams.join_next().await.is_some() {} };
                    tokio::select! {
                        _ = tokio::time::timeout(DRAIN, drained) => {}
                        () = until_lapsed(&mut lapsed, false) => continue,
                    }
                    if !*lapsed.borrow() {
                        continue;
                    }
                    conn.close(5u32.into(), NOT_SERVING);
                    break;
                }
            };
            while streams.try_join_next().is_some() {}
            let q = self.clone();
            let (c, client) = (conn.clone(), client.clone());
            streams.spawn(
                async move { q.stream(c, &client, send, recv).await }.instrument(span.clone()),
            );
        }
        // The connection is gone: its streams end with it.
        streams.detach_all();
        worker
    }

    /// The first stream must be a valid Hello, within the request timeout. It counts against
    /// the address's request budget, unless it authenticates a worker (whose requests are
    /// budgeted per connection). A planner or observer gives its role's token; a worker
    /// gives none, and must have proved an enrolled key (`key`) in the handshake.
    async fn hello(
        &self,
        conn: &quinn::Connection,
        ip: IpAddr,
        key: Option<KeyId>,
    ) -> Option<ClientRole> {
        let t = self.settings.request_timeout;
        let (mut send, mut recv) = tokio::time::timeout(t, conn.accept_bi()).await.ok()?.ok()?;
        let req = tokio::time::timeout(t, read_frame::<Request>(&mut recv)).await.ok()?;
        let worker_refused = match &req {
            Ok(Request::Hello { role: ClientRole::Worker, .. }) => self.worker_refusal(key).await,
            _ => None,
        };
        // Why a hello would be refused, if it would; `None` for a valid one.
        let check = |version: u32, role: ClientRole, token: &Option<String>| {
            if version != PROTOCOL_VERSION {
                return Some(error(
                    ErrorCode::BadRequest,
                    format!("protocol version {version} is not {PROTOCOL_VERSION}"),
                ));
            }
            match (role, token) {
                (ClientRole::Worker, Some(_)) => Some(error(
                    ErrorCode::Unauthenticated,
                    "workers have no token: a worker authenticates with its own key",
                )),
                (ClientRole::Worker, None) => worker_refused.clone(),
                (_, Some(token)) if self.tokens.role_of(role, token) => None,
                (_, Some(_)) => Some(error(
                    ErrorCode::Unauthenticated,
                    format!("wrong token for the {} role", role.as_str()),
                )),
                (_, None) => Some(error(
                    ErrorCode::Unauthenticated,
                    format!("the {} role authenticates with its token: none given", role.as_str()),
                )),
            }
        };
        let verdict = match &req {
            Ok(Request::Hello { version, role, token }) => {
                Ok((*role, check(*version, *role, token)))
            }
            Ok(other) => Err(error(
                ErrorCode::Unauthenticated,
                format!("the first request must be hello, not {}", other.name()),
            )),
            Err(e) => Err(error(ErrorCode::BadRequest, e.to_string())),
        };
        let worker = matches!(verdict, Ok((ClientRole::Worker, None)));
        if !worker && !self.gate.address_ok(ip) {
            let answer =
                error(ErrorCode::RateLimited, "too many requests from this address: slow down");
            send_answer("hello", &mut send, &answer).await;
            let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
            return None;
        }
        let answer = match verdict {
            Ok((role, None)) => {
                let ok = Response::HelloOk {
                    version: PROTOCOL_VERSION,
                    queue: self.fingerprint,
                    max_blob: self.blobs.max(),
                };
                send_answer("hello", &mut send, &ok).await;
                return Some(role);
            }
            // The queue cannot tell now (its trust file is broken): no one's fault here.
            Ok((_, Some(Response::Error { code: ErrorCode::Unavailable, message }))) => {
                error(ErrorCode::Unavailable, message)
            }
            Ok((role, Some(Response::Error { code: ErrorCode::Unauthenticated, message }))) => {
                if let Some(key) = key.filter(|_| role == ClientRole::Worker) {
                    warn!(%ip, %key, reason = %message, "worker refused");
                }
                match self.gate.banned_for(ip) {
                    // Unauthenticated, not rate_limited: trying again cannot help.
                    Some(left) => error(
                        ErrorCode::Unauthenticated,
                        format!(
                            "too many failed logins from this address: they are refused for \
                             another {} s ({message})",
                            left.as_secs().max(1),
                        ),
                    ),
                    None => {
                        self.gate.auth_failed(ip);
                        error(ErrorCode::Unauthenticated, message)
                    }
                }
            }
            Ok((_, Some(other))) => other,
            Err(answer) => {
                self.gate.auth_failed(ip);
                answer
            }
        };
        send_answer("hello", &mut send, &answer).await;
        // Give the answer a moment to leave before the connection closes.
        let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
        None
    }

    /// What enrolled workers are checked against (`TrustSource::for_workers`), once its
    /// reading is recorded in the audit log.
    pub(crate) async fn workers_trust(&self) -> Result<Arc<agenix_proto::Trust>, Response> {
        let trust = self.trust.for_workers().map_err(|e| error(ErrorCode::Unavailable, e))?;
        self.audited(&trust).await?;
        Ok(trust)
    }

    /// The trust file as it says now (what submissions are verified against), once its
    /// reading is recorded in the audit log.
    pub(crate) async fn current_trust(&self) -> Result<Arc<agenix_proto::Trust>, Response> {
        let trust = self.trust.current().map_err(|e| error(ErrorCode::Unavailable, e))?;
        self.audited(&trust).await?;
        Ok(trust)
    }

    /// Why a worker with `key` may not act now, as the answer to give; `None` when it may.
    pub(crate) async fn worker_refusal(&self, key: Option<KeyId>) -> Option<Response> {
        let Some(key) = key else {
            return Some(error(
                ErrorCode::Unauthenticated,
                "a worker authenticates with its own key in the TLS handshake, and this \
                 connection presented none (make one with agw init)",
            ));
        };
        let trust = match self.workers_trust().await {
            Ok(t) => t,
            Err(refused) => return Some(refused),
        };
        match trust.worker(&key, now_ms() / 1000) {
            Ok(_) => None,
            Err(refusal) => Some(error(ErrorCode::Unauthenticated, refusal.to_string())),
        }
    }

    /// Whether `client` may make another request now.
    fn rate_ok(&self, client: &Conn) -> bool {
        match client.role {
            ClientRole::Worker => {
                let slots = lock(&client.worker).map_or(1, |(_, c)| c);
                self.gate.worker_ok(&client.bucket, slots)
            }
            ClientRole::Planner | ClientRole::Observer => self.gate.address_ok(client.ip),
        }
    }

    async fn stream(
        self: Arc<Self>,
        conn: quinn::Connection,
        client: &Conn,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let req = match tokio::time::timeout(
            self.settings.request_timeout,
            read_frame::<Request>(&mut recv),
        )
        .await
        {
            Err(_) => {
                // A slow sender: give up on the stream.
                let _ = send.reset(2u32.into());
                return;
            }
            Ok(Err(FrameError::TooLarge(n))) => {
                let message = format!("frame of {n} bytes is over the limit of {MAX_FRAME}");
                send_answer("request", &mut send, &error(ErrorCode::TooLarge, message)).await;
                let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
                conn.close(3u32.into(), b"frame too large");
                return;
            }
            Ok(Err(FrameError::Invalid(m))) => {
                send_answer("request", &mut send, &error(ErrorCode::BadRequest, m)).await;
                return;
            }
            Ok(Err(_)) => return,
            Ok(Ok(req)) => req,
        };
        let name = req.name();
        // A worker's key is checked again at every request: a revocation takes effect at
        // its next one, and ends the connection.
        if client.role == ClientRole::Worker
            && let Some(refused) = self.worker_refusal(client.key).await
        {
            let revoked = matches!(&refused, Response::Error { code, .. } if *code == ErrorCode::Unauthenticated);
            if revoked {
                warn!(ip = %client.ip, key = ?client.key, "a worker's key is no longer accepted: disconnected");
            }
            send_answer(name, &mut send, &refused).await;
            if revoked {
                let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
                conn.close(5u32.into(), b"worker key not accepted");
            }
            return;
        }
        let resp = if !self.rate_ok(client) {
            error(ErrorCode::RateLimited, "too many requests: slow down")
        } else if !req.allowed_for(client.role) {
            error(
                ErrorCode::Forbidden,
                format!("the {} role may not {}", client.role.as_str(), req.name()),
            )
        } else {
            match req {
                Request::GetBlob { digest } => return self.get_blob(digest, send).await,
                Request::PutBlobs { blobs, keep } => self.put_blobs(blobs, keep, &mut recv).await,
                Request::Submit { plan, action, blobs } => {
                    self.submit(plan, action, blobs, Some(&mut recv)).await
                }
                Request::Complete { lease, output, blobs, claim } => {
                    self.complete(client, lease, output, blobs, claim, &mut recv).await
                }
                // A claim waits for work; a worker that has gone meanwhile (stopped the
                // stream, or lost the connection) must be leased nothing.
                Request::Claim { max, wait_ms } => {
                    self.claim(client, max, wait_ms, send.stopped()).await
                }
                other => self.handle(client, other).await,
            }
        };
        let worker = lock(&client.worker).map(|(id, _)| id);
        if !send_answer(name, &mut send, &resp).await
            && let Response::Leases { leases } | Response::Recorded { leases, .. } = &resp
            && !leases.is_empty()
            && let Some(worker) = worker
        {
            self.take_back(worker, leases).await;
        }
    }

    /// Takes back leases that never reached their worker, costing no attempt.
    pub(crate) async fn take_back(&self, worker: u64, leases: &[Lease]) {
        let refs: Vec<_> = leases.iter().map(|l| l.lease).collect();
        let now = now_ms();
        if let Ok(((), done)) = self.apply(|s| Ok(((), s.unclaim(now, worker, &refs))), vec![]) {
            let _ = Self::durable(done).await;
        }
        warn!(worker, leases = refs.len(), "took back leases that could not be sent");
        self.ready.notify_waiters();
    }

    /// Jobs by state and the last minute's throughput, now.
    pub fn stats_now(&self) -> agenix_proto::wire::QueueStats {
        lock(&self.sched).stats(now_ms())
    }

    /// The queue's identity.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The role whose token `token` is, if any (compared in constant time).
    pub(crate) fn role_of_token(&self, token: &str) -> Option<ClientRole> {
        crate::identity::TOKEN_ROLES.into_iter().find(|r| self.tokens.role_of(*r, token))
    }

    /// Answers `req` as it would for a client in `role` at `ip` (the dashboard's requests):
    /// the same checks of what the role may do, the same code after them.
    pub(crate) async fn web_request(&self, ip: IpAddr, role: ClientRole, req: Request) -> Response {
        if !req.allowed_for(role) {
            return error(
                ErrorCode::Forbidden,
                format!("the {} role may not {}", role.as_str(), req.name()),
            );
        }
        let conn = Conn {
            ip,
            role,
            key: None,
            worker: Mutex::new(None),
            bucket: Mutex::new(Bucket::default()),
        };
        self.handle(&conn, req).await
    }
}

/// Sends `resp` and finishes the stream; logs and returns false when it cannot. An answer
/// too large for a frame (a bug: every answer is bounded) is replaced by an error saying so.
pub(crate) async fn send_answer(
    request: &'static str,
    send: &mut quinn::SendStream,
    resp: &Response,
) -> bool {
    let sent = match write_frame(send, resp).await {
        Err(FrameError::TooLarge(n)) => {
            error!(request, bytes = n, "an answer was over the frame limit");
            let e = error(
                ErrorCode::Internal,
                format!("the answer to {request} was {n} bytes, over the frame limit"),
            );
            let _ = write_frame(send, &e).await;
            Err(FrameError::TooLarge(n))
        }
        other => other,
    };
    let finished = send.finish();
    crate::metrics::answered(request, resp, sent.is_ok() && finished.is_ok());
    match (sent, finished) {
        (Ok(()), Ok(())) => true,
        (Err(e), _) => {
            warn!(request, error = %e, bytes = json_len(resp), "an answer could not be sent");
            false
        }
        (Ok(()), Err(e)) => {
            warn!(request, error = %e, "an answer could not be sent");
            false
        }
    }
}

/// The steps of jobs among `writes`: (job, step, state after).
fn job_events(writes: &[Write]) -> Vec<(JobId, Step, StateKind)> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::Change(Change::Audit { event: Event::Job(e), .. }) => {
                Some((e.job, e.step, e.state))
            }
            _ => None,
        })
        .collect()
}

/// Counts and logs the steps of jobs a commit made durable: each at debug, a lease that
/// expired and a job that died at warn (they need an operator's eye).
fn log_steps(events: &[(JobId, Step, StateKind)]) {
    for &(job, step, state) in events {
        if step == Step::Expired || (state == StateKind::Dead && step != Step::Forgotten) {
            warn!(%job, step = step.name(), state = state.name(), "job step");
        } else {
            tracing::debug!(%job, step = step.name(), state = state.name(), "job step");
        }
    }
    let steps: Vec<Step> = events.iter().map(|e| e.1).collect();
    crate::metrics::steps(&steps);
}

/// Applies batches of writes, one transaction per batch, and acknowledges each request once
/// its batch is durable. After a failed batch it has the queue reload from storage.
async fn committer(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<(Vec<Write>, Ack)>,
    queue: Weak<Queue>,
) {
    while let Some(first) = rx.recv().await {
        let group = queue.upgrade().is_some_and(|q| q.settings.group_commit);
        let mut batch = vec![first];
        if group {
            while batch.len() < 4096 {
                match rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
        }
        let mut writes = Vec::new();
        let mut acks = Vec::with_capacity(batch.len());
        for (w, ack) in batch {
            writes.extend(w);
            acks.push(ack);
        }
        let events = job_events(&writes);
        let s = store.clone();
        let (count, started) = (writes.len(), Instant::now());
        let mut commit = tokio::task::spawn_blocking(move || s.apply(&writes));
        // A commit storage does not answer is waited for (giving up on it would leave its
        // outcome unknown), and said so every 10 s.
        let result = loop {
            match tokio::time::timeout(Duration::from_secs(10), &mut commit).await {
                Ok(r) => {
                    break r.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string()));
                }
                Err(_) => warn!(
                    waited_s = started.elapsed().as_secs(),
                    "a commit is still waiting for storage to answer"
                ),
            }
        };
        crate::metrics::committed(started.elapsed().as_secs_f64(), count, result.is_ok());
        match &result {
            Ok(()) => log_steps(&events),
            Err(e) => {
                warn!(error = %e, "a commit failed: its requests are answered as unavailable");
            }
        }
        for ack in acks {
            let _ = ack.send(result.clone());
        }
        if let (Err(e), Some(q)) = (&result, queue.upgrade()) {
            while !q.reload(&mut rx, e) {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Watches this queue's hold on its storage (four times a second, whatever else waits):
/// lapsed, it lets its clients go; taken over, it stops.
async fn holder(queue: Weak<Queue>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Some(q) = queue.upgrade() else { return };
        match q.store.hold() {
            Hold::Serving => {
                if q.lapsed.send_replace(false) {
                    warn!("this node holds its storage again: it serves");
                }
            }
            Hold::Lapsed(why) => {
                if !q.lapsed.send_replace(true) {
                    error!(reason = %why, "this node closes its connections and answers no one");
                }
            }
            Hold::Lost(why) => {
                error!(reason = %why, "this queue no longer serves its storage: it stops");
                *lock(&q.lost) = Some(why);
                q.lost_notify.notify_waiters();
                return;
            }
        }
    }
}

/// Re-queues expired leases, promotes backoffs that are over, applies retention.
/// Also takes back, within a second, the leases of workers whose keys the trust file no
/// longer accepts (revoked, no longer enrolled, or past their period).
async fn reaper(queue: Weak<Queue>) {
    let mut seen = None;
    let mut next_checkpoint = 0;
    loop {
        let Some(q) = queue.upgrade() else { return };
        let now = now_ms();
        let wake = lock(&q.sched).next_wakeup().unwrap_or(now + 1000).clamp(now + 10, now + 1000);
        drop(q);
        tokio::time::sleep(Duration::from_millis(wake - now)).await;
        let Some(q) = queue.upgrade() else { return };
        q.gate.forget_idle();
        // Keys revoked or removed (a new reading), and keys whose period ended (checked once
        // a second).
        let (generation, trust) = q.trust.generation();
        let second = now_ms() / 1000;
        if seen != Some((generation, second)) {
            seen = Some((generation, second));
            if let Ok(trust) = trust {
                q.disown(&trust).await;
                // Recorded once per reading (`audited` returns at once for one it recorded);
                // what fails is tried again a second later.
                let _ = q.audited(&trust).await;
            }
        }
        if now_ms() >= next_checkpoint {
            let every = u64::try_from(q.settings.checkpoint_every.as_millis()).unwrap_or(u64::MAX);
            next_checkpoint = now_ms().saturating_add(every);
            q.checkpoint().await;
        }
        let now = now_ms();
        let Ok(((), done)) = q.apply(|s| Ok(((), s.tick(now))), vec![]) else { continue };
        let _ = Queue::durable(done).await;
        if lock(&q.sched).has_ready(now) {
            q.ready.notify_waiters();
        }
    }
}

impl Queue {
    /// Forgets the workers whose keys `trust` does not accept and takes back their leases.
    async fn disown(&self, trust: &agenix_proto::Trust) {
        let now = now_ms();
        let accepted = |key: &KeyId| trust.worker(key, now / 1000).is_ok();
        let Ok((gone, done)) = self.apply(|s| Ok(s.disown(now, accepted)), vec![]) else {
            return;
        };
        if gone.is_empty() {
            return;
        }
        match Self::durable(done).await {
            Ok(()) => warn!(
                workers = gone.len(),
                "workers whose keys are no longer accepted were forgotten; their jobs go to others"
            ),
            Err(e) => warn!(answer = ?e, "cannot take back the leases of refused workers"),
        }
        self.ready.notify_waiters();
    }
}

/// Removes blobs nothing refers to any more, once they are past the grace period.
async fn collector(queue: Weak<Queue>) {
    loop {
        let Some(every) = queue.upgrade().map(|q| q.settings.collect_every) else { return };
        tokio::time::sleep(every).await;
        let Some(q) = queue.upgrade() else { return };
        q.collect().await;
    }
}

impl Queue {
    /// One collection of unreferenced blobs.
    pub(crate) async fn collect(&self) {
        // Memory that may not match storage must not decide what is deleted; nor may a
        // queue that no longer serves its storage (another took it over).
        if self.store.hold() != Hold::Serving {
            return;
        }
        let Ok(mut keep) = self.current().map(|s| s.blobs_in_use()) else { return };
        keep.extend(lock(&self.kept).iter().copied());
        let (blobs, grace) = (self.blobs.clone(), self.settings.blob_grace);
        let started = Instant::now();
        let store = self.store.clone();
        let may = move || store.hold() == Hold::Serving;
        match tokio::task::spawn_blocking(move || blobs.collect(&keep, grace, may)).await {
            Ok(Ok(done)) if done.removed > 0 => info!(
                removed = done.removed,
                bytes = done.bytes,
                took_ms = started.elapsed().as_millis() as u64,
                "collected blobs nothing refers to"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "blob collection failed"),
            Err(e) => warn!(error = %e, "blob collection stopped"),
        }
        self.collect_small().await;
    }

    /// One collection of the small blobs in the store: those nothing refers to and older
    /// than the grace period, at most [`FORGET_AT_ONCE`] a round, [`FORGET_PER_COMMIT`] a
    /// commit. They are chosen under the scheduler's lock and marked, so a submission naming
    /// one is either seen here first (and keeps it) or refused until the removal is
    /// committed (and after, if it looked at its blobs before); the removal itself is
    /// decided again in the transaction, so a blob renewed since stays.
    async fn collect_small(&self) {
        let (blobs, grace) = (self.blobs.clone(), self.settings.blob_grace);
        let started = Instant::now();
        let in_use = |sched: &Scheduler| -> BTreeSet<Digest> {
            let mut keep = sched.blobs_in_use();
            keep.extend(lock(&self.kept).iter().copied());
            keep
        };
        // Read without the scheduler's lock (the store may hold many), then checked again
        // under it.
        let Ok(keep) = self.current().map(|s| in_use(&s)) else { return };
        let scan = blobs.clone();
        let (old, before) =
            match tokio::task::spawn_blocking(move || scan.old_small(&keep, grace, FORGET_AT_ONCE))
                .await
            {
                Ok(Ok((old, _))) if old.is_empty() => return,
                Ok(Ok(found)) => found,
                Ok(Err(e)) => return warn!(error = %e, "small blob collection failed"),
                Err(e) => return warn!(error = %e, "small blob collection stopped"),
            };
        let mut removed = 0;
        for chunk in old.chunks(FORGET_PER_COMMIT) {
            let (chosen, done) = {
                let Ok(sched) = self.current() else { return };
                let keep = in_use(&sched);
                let chosen: Vec<Digest> =
                    chunk.iter().filter(|d| !keep.contains(d)).copied().collect();
                if chosen.is_empty() {
                    continue;
                }
                blobs.forgetting(&chosen, true);
                let writes = chosen.iter().map(|d| Write::Forget { digest: *d, before }).collect();
                let (ack, done) = oneshot::channel();
                let _ = self.commits.send((writes, ack));
                drop(sched);
                (chosen, done)
            };
            let durable = Self::durable(Some(done)).await;
            blobs.forgetting(&chosen, false);
            blobs.committed();
            if durable.is_err() {
                return warn!("small blob collection: a removal was not stored");
            }
            removed += chosen.len();
        }
        if removed > 0 {
            info!(
                removed_at_most = removed,
                bytes_now = blobs.used(),
                took_ms = started.elapsed().as_millis() as u64,
                "collected small blobs nothing refers to"
            );
        }
    }
}

/// Most small blobs one collection round removes (the rest wait for the next round).
const FORGET_AT_ONCE: usize = 100_000;
/// Most small blobs one commit removes: a commit of 100,000 took 0.76 s, which every
/// request committing behind it waited for.
const FORGET_PER_COMMIT: usize = 5_000;

/// The server's QUIC endpoint: TLS 1.3 only, ALPN agenix/1, no 0-RTT, the stream cap.
pub fn endpoint(
    listen: SocketAddr,
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    settings: &Settings,
) -> anyhow::Result<quinn::Endpoint> {
    let mut tls = rustls::ServerConfig::builder_with_provider(agenix_link::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(agenix_link::worker_verifier())
        .with_single_cert(vec![cert], key)?;
    tls.alpn_protocols = vec![agenix_proto::wire::ALPN.to_vec()];
    // No 0-RTT: early data could be replayed.
    tls.max_early_data_size = 0;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = agenix_link::transport();
    transport.max_concurrent_bidi_streams(settings.streams_per_connection.into());
    transport.max_concurrent_uni_streams(0u32.into());
    config.transport_config(Arc::new(transport));
    config.migration(false);
    quinn::Endpoint::server(config, listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))
}
