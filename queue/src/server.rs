//! The QUIC server around the scheduler: authentication, per-role authorization, limits,
//! the request handlers, group commit and the reaper.
//!
//! Concurrency: the scheduler sits behind one mutex, never held across an await. Each
//! request applies its event to the scheduler and hands the resulting writes to the
//! committer while still holding the lock (so writes reach storage in the order the
//! scheduler made them), then waits for the commit before answering: a transition is
//! acknowledged only once it is durable. The committer batches whatever is pending into one
//! transaction (group commit).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agenix_proto::envelope::Envelope;
use agenix_proto::job::{JobState, Lease, LeaseRef, Requirements};
use agenix_proto::wire::{
    ClientRole, ErrorCode, FrameError, PROTOCOL_VERSION, Request, Response, read_frame, write_frame,
};
use agenix_proto::{ActionId, Digest, Fingerprint, Limits, Trust};
use agenix_queue_core::{Change, Config, Refusal, Scheduler, Submission};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::blobs::{BlobError, Blobs};
use crate::identity::Tokens;
use crate::store::{Store, Write};

/// Limits and timings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Connections one client IP may hold.
    pub connections_per_ip: usize,
    /// Requests one client IP may make per minute.
    pub requests_per_minute: u32,
    /// Failed Hellos one IP may make per minute before it is refused for a minute.
    pub auth_failures_per_minute: usize,
    /// Concurrent streams per connection.
    pub streams_per_connection: u32,
    /// How long a client may take to send a request frame.
    pub request_timeout: Duration,
    /// Batch concurrent commits into one transaction.
    pub group_commit: bool,
    /// The scheduler's settings.
    pub scheduler: Config,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            connections_per_ip: 10,
            requests_per_minute: 1000,
            auth_failures_per_minute: 5,
            streams_per_connection: 64,
            request_timeout: Duration::from_secs(10),
            group_commit: true,
            scheduler: Config::default(),
        }
    }
}

/// Unix milliseconds on this machine's clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // Without randomness the backoff loses its jitter but stays correct.
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

type Ack = oneshot::Sender<Result<(), String>>;
/// Resolves once a change is durable; `None` when there was nothing to write.
type Durable = Option<oneshot::Receiver<Result<(), String>>>;

/// A token bucket: `cap` requests at once, refilled at `cap` per minute.
#[derive(Debug, Default)]
struct Bucket {
    tokens: f64,
    refilled: Option<Instant>,
}

impl Bucket {
    fn level(&self, cap: f64, now: Instant) -> f64 {
        let per_sec = cap / 60.0;
        self.refilled
            .map_or(cap, |t| (self.tokens + now.duration_since(t).as_secs_f64() * per_sec).min(cap))
    }

    fn take(&mut self, cap: f64, now: Instant) -> bool {
        self.tokens = self.level(cap, now);
        self.refilled = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Default)]
struct IpState {
    connections: usize,
    failures: VecDeque<Instant>,
    banned_until: Option<Instant>,
    /// All of the address's connections together.
    budget: Bucket,
}

/// The queue.
pub struct Queue {
    sched: Mutex<Scheduler>,
    commits: mpsc::UnboundedSender<(Vec<Write>, Ack)>,
    blobs: Blobs,
    trust: Trust,
    fingerprint: Fingerprint,
    tokens: Tokens,
    plans: Mutex<HashMap<Digest, Envelope>>,
    actions: Mutex<HashMap<ActionId, Envelope>>,
    ready: Notify,
    settings: Settings,
    ips: Mutex<HashMap<IpAddr, IpState>>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("fingerprint", &self.fingerprint).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock is a bug; the data is still consistent for reading.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error { code, message: message.into() }
}

fn refusal(r: Refusal) -> Response {
    let code = match r {
        Refusal::Conflict(_) => ErrorCode::Conflict,
        Refusal::NoJob(_) => ErrorCode::NotFound,
        Refusal::NoWorker(_) => ErrorCode::BadRequest,
        Refusal::Stale { .. } | Refusal::Finished(_) => ErrorCode::StaleLease,
        _ => ErrorCode::BadRequest,
    };
    error(code, r.to_string())
}

impl Queue {
    /// Loads storage and starts the committer and the reaper.
    pub fn start(
        store: Arc<dyn Store>,
        blobs: Blobs,
        trust: Trust,
        fingerprint: Fingerprint,
        tokens: Tokens,
        settings: Settings,
    ) -> anyhow::Result<Arc<Self>> {
        let loaded = store.load()?;
        let parse = |bytes: &[u8]| Envelope::from_json(bytes).ok();
        let plans = loaded.plans.iter().filter_map(|(d, b)| Some((*d, parse(b)?))).collect();
        let actions = loaded
            .action_envelopes
            .iter()
            .filter_map(|(id, b)| Some((id.clone(), parse(b)?)))
            .collect();
        let sched =
            Scheduler::load(settings.scheduler, loaded.jobs, loaded.actions, loaded.next_job);
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Arc::new(Self {
            sched: Mutex::new(sched),
            commits: tx,
            blobs,
            trust,
            fingerprint,
            tokens,
            plans: Mutex::new(plans),
            actions: Mutex::new(actions),
            ready: Notify::new(),
            settings,
            ips: Mutex::new(HashMap::new()),
        });
        tokio::spawn(committer(store, rx, queue.settings.group_commit));
        tokio::spawn(reaper(Arc::downgrade(&queue)));
        Ok(queue)
    }

    /// Applies an event to the scheduler; queues its writes (plus `extra`) for commit in
    /// order; returns the event's value and a receiver for the commit's outcome.
    fn apply<T>(
        &self,
        f: impl FnOnce(&mut Scheduler) -> Result<(T, Vec<Change>), Refusal>,
        extra: Vec<Write>,
    ) -> Result<(T, Durable), Refusal> {
        let mut sched = lock(&self.sched);
        let (value, changes) = f(&mut sched)?;
        let mut writes = extra;
        let mut forgot_jobs = false;
        for c in changes {
            match &c {
                Change::DeleteJob(_) => forgot_jobs = true,
                Change::DeleteAction(id) => {
                    lock(&self.actions).remove(id);
                }
                _ => {}
            }
            writes.push(Write::Change(c));
        }
        if forgot_jobs {
            let live = sched.plans_in_use();
            lock(&self.plans).retain(|d, _| {
                let keep = live.contains(d);
                if !keep {
                    writes.push(Write::DeletePlan(*d));
                }
                keep
            });
        }
        if writes.is_empty() {
            return Ok((value, None));
        }
        // If the committer has stopped, the dropped `ack` makes `done` report it.
        let (ack, done) = oneshot::channel();
        let _ = self.commits.send((writes, ack));
        drop(sched);
        Ok((value, Some(done)))
    }

    /// Waits for a commit; an error means the transition is not durable.
    async fn durable(done: Option<oneshot::Receiver<Result<(), String>>>) -> Result<(), Response> {
        match done {
            None => Ok(()),
            Some(rx) => match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(error(ErrorCode::Unavailable, format!("not stored: {e}"))),
                Err(_) => Err(error(ErrorCode::Unavailable, "the committer stopped")),
            },
        }
    }

    /// Runs the server on `endpoint` until it closes.
    pub async fn serve(self: Arc<Self>, endpoint: quinn::Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            let ip = incoming.remote_address().ip();
            if !self.admit(ip) {
                debug!(%ip, "connection refused (per-IP limit or auth failures)");
                incoming.refuse();
                continue;
            }
            let q = self.clone();
            tokio::spawn(async move {
                q.clone().connection(incoming).await;
                q.release(ip);
            });
        }
    }

    fn admit(&self, ip: IpAddr) -> bool {
        let mut ips = lock(&self.ips);
        let s = ips.entry(ip).or_default();
        let now = Instant::now();
        if s.banned_until.is_some_and(|t| t > now)
            || s.connections >= self.settings.connections_per_ip
        {
            return false;
        }
        s.connections += 1;
        true
    }

    fn release(&self, ip: IpAddr) {
        let mut ips = lock(&self.ips);
        if let Some(s) = ips.get_mut(&ip) {
            s.connections = s.connections.saturating_sub(1);
            if self.forgettable(s, Instant::now()) {
                ips.remove(&ip);
            }
        }
    }

    /// Whether forgetting an address loses nothing: no connection, no ban in force, no
    /// failed login in the last minute, and a full request budget (forgetting a spent one
    /// would let a client refill it by reconnecting).
    fn forgettable(&self, s: &IpState, now: Instant) -> bool {
        s.connections == 0
            && s.banned_until.is_none_or(|t| t <= now)
            && s.failures.back().is_none_or(|t| now.duration_since(*t) > Duration::from_secs(60))
            && s.budget.level(self.address_rate(), now) >= self.address_rate()
    }

    /// Requests per minute one address may make over all its connections.
    fn address_rate(&self) -> f64 {
        f64::from(self.settings.requests_per_minute)
            * self.settings.connections_per_ip.max(1) as f64
    }

    /// Forgets addresses [`Queue::release`] had to keep, once keeping them changes nothing.
    fn forget_idle_addresses(&self) {
        let now = Instant::now();
        lock(&self.ips).retain(|_, s| !self.forgettable(s, now));
    }

    fn auth_failed(&self, ip: IpAddr) {
        let mut ips = lock(&self.ips);
        let s = ips.entry(ip).or_default();
        let now = Instant::now();
        s.failures.push_back(now);
        while s.failures.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60)) {
            s.failures.pop_front();
        }
        if s.failures.len() >= self.settings.auth_failures_per_minute {
            s.banned_until = Some(now + Duration::from_secs(60));
            warn!(%ip, "too many failed logins: refusing this address for a minute");
        }
    }

    /// Whether a client (one connection, with `bucket`) may make another request: within its
    /// own rate, and within its address's (so reconnecting does not refill it).
    fn rate_ok(&self, ip: IpAddr, bucket: &Mutex<Bucket>) -> bool {
        let now = Instant::now();
        if !lock(bucket).take(f64::from(self.settings.requests_per_minute), now) {
            return false;
        }
        let rate = self.address_rate();
        lock(&self.ips).entry(ip).or_default().budget.take(rate, now)
    }

    async fn connection(self: Arc<Self>, incoming: quinn::Incoming) {
        let ip = incoming.remote_address().ip();
        let Ok(conn) = incoming.await else { return };
        let Some(role) = self.hello(&conn, ip).await else {
            conn.close(1u32.into(), b"unauthenticated");
            return;
        };
        info!(%ip, role = role.as_str(), "client connected");
        let bucket = Arc::new(Mutex::new(Bucket::default()));
        while let Ok((send, recv)) = conn.accept_bi().await {
            let q = self.clone();
            let c = conn.clone();
            let b = bucket.clone();
            tokio::spawn(async move { q.stream(c, ip, role, &b, send, recv).await });
        }
    }

    /// The first stream must be a valid Hello, within the request timeout.
    async fn hello(&self, conn: &quinn::Connection, ip: IpAddr) -> Option<ClientRole> {
        let t = self.settings.request_timeout;
        let (mut send, mut recv) = tokio::time::timeout(t, conn.accept_bi()).await.ok()?.ok()?;
        let req = tokio::time::timeout(t, read_frame::<Request>(&mut recv)).await.ok()?;
        let answer = match req {
            Ok(Request::Hello { version, role, token })
                if version == PROTOCOL_VERSION && self.tokens.role_of(role, &token) =>
            {
                let ok = Response::HelloOk { version: PROTOCOL_VERSION, queue: self.fingerprint };
                let _ = write_frame(&mut send, &ok).await;
                let _ = send.finish();
                return Some(role);
            }
            Ok(Request::Hello { version, .. }) if version != PROTOCOL_VERSION => error(
                ErrorCode::BadRequest,
                format!("protocol version {version} is not {PROTOCOL_VERSION}"),
            ),
            Ok(Request::Hello { .. }) => {
                self.auth_failed(ip);
                error(ErrorCode::Unauthenticated, "wrong token for that role")
            }
            Ok(other) => {
                self.auth_failed(ip);
                error(
                    ErrorCode::Unauthenticated,
                    format!("the first request must be hello, not {}", other.name()),
                )
            }
            Err(e) => {
                self.auth_failed(ip);
                error(ErrorCode::BadRequest, e.to_string())
            }
        };
        let _ = write_frame(&mut send, &answer).await;
        let _ = send.finish();
        // Give the answer a moment to leave before the connection closes.
        let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
        None
    }

    async fn stream(
        self: Arc<Self>,
        conn: quinn::Connection,
        ip: IpAddr,
        role: ClientRole,
        bucket: &Mutex<Bucket>,
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
                let _ = write_frame(
                    &mut send,
                    &error(ErrorCode::TooLarge, format!("frame of {n} bytes is over the limit")),
                )
                .await;
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
                conn.close(3u32.into(), b"frame too large");
                return;
            }
            Ok(Err(FrameError::Invalid(m))) => {
                let _ = write_frame(&mut send, &error(ErrorCode::BadRequest, m)).await;
                let _ = send.finish();
                return;
            }
            Ok(Err(_)) => return,
            Ok(Ok(req)) => req,
        };
        let resp = if !self.rate_ok(ip, bucket) {
            error(ErrorCode::RateLimited, "too many requests: slow down")
        } else if !req.allowed_for(role) {
            error(
                ErrorCode::Forbidden,
                format!("the {} role may not {}", role.as_str(), req.name()),
            )
        } else {
            match req {
                Request::GetBlob { digest } => return self.get_blob(digest, send).await,
                Request::PutBlob { digest, size } => self.put_blob(digest, size, &mut recv).await,
                // A claim waits for work; a worker that has gone meanwhile (stopped the
                // stream, or lost the connection) must be leased nothing.
                Request::Claim { worker, max, wait_ms } => {
                    self.claim(worker, max, wait_ms, send.stopped()).await
                }
                other => self.handle(other).await,
            }
        };
        let _ = write_frame(&mut send, &resp).await;
        let _ = send.finish();
    }

    async fn get_blob(&self, digest: Digest, mut send: quinn::SendStream) {
        let Ok((mut file, size)) = self.blobs.open(&digest) else {
            let _ =
                write_frame(&mut send, &error(ErrorCode::NotFound, format!("no blob {digest}")))
                    .await;
            let _ = send.finish();
            return;
        };
        if write_frame(&mut send, &Response::Blob { digest, size }).await.is_ok() {
            let _ = tokio::io::copy(&mut file, &mut send).await;
            let _ = send.flush().await;
        }
        let _ = send.finish();
    }

    async fn put_blob(&self, digest: Digest, size: u64, recv: &mut quinn::RecvStream) -> Response {
        // At least 1 MB/s, and never less than the request timeout.
        let budget = self.settings.request_timeout + Duration::from_secs(size / (1 << 20));
        match tokio::time::timeout(budget, self.blobs.put(digest, size, recv)).await {
            Err(_) => error(ErrorCode::BadRequest, "upload too slow"),
            Ok(Ok(existed)) => Response::BlobStored { digest, size, existed },
            Ok(Err(e @ BlobError::TooLarge { .. })) => error(ErrorCode::TooLarge, e.to_string()),
            Ok(Err(e @ (BlobError::Mismatch { .. } | BlobError::Short { .. }))) => {
                error(ErrorCode::Invalid, e.to_string())
            }
            Ok(Err(e @ BlobError::Io(_))) => error(ErrorCode::Internal, e.to_string()),
        }
    }

    async fn handle(&self, req: Request) -> Response {
        let now = now_ms();
        match req {
            Request::Hello { .. } => error(ErrorCode::BadRequest, "already authenticated"),
            Request::Submit { plan, action } => self.submit(plan, action).await,
            Request::Cancel { job } => match self.apply(|s| s.cancel(now, job), vec![]) {
                Ok((state, done)) => match Self::durable(done).await {
                    Ok(()) => Response::Cancel { job, state },
                    Err(e) => e,
                },
                Err(r) => refusal(r),
            },
            Request::ListJobs { filter, after, limit } => {
                let (jobs, next) =
                    lock(&self.sched).list(&filter, after, limit.min(agenix_proto::wire::MAX_PAGE));
                Response::Jobs { jobs, next }
            }
            Request::ShowJob { job } => match lock(&self.sched).job(job) {
                Some(j) => Response::Job { job: j.clone() },
                None => error(ErrorCode::NotFound, format!("no job {job}")),
            },
            Request::ListWorkers {} => Response::Workers { workers: lock(&self.sched).workers() },
            Request::Stats {} => Response::Stats { stats: lock(&self.sched).stats(now) },
            Request::Register { capabilities } => {
                let worker = lock(&self.sched).register(now, capabilities);
                let cfg = *lock(&self.sched).config();
                Response::Registered {
                    worker,
                    lease_ms: cfg.lease_ms,
                    heartbeat_ms: cfg.heartbeat_ms,
                }
            }
            Request::Heartbeat { worker, leases } => {
                match self.apply(|s| s.heartbeat(now, worker, &leases), vec![]) {
                    Ok((beat, done)) => match Self::durable(done).await {
                        Ok(()) => Response::HeartbeatOk {
                            extended: beat.extended,
                            cancelled: beat.cancelled,
                            lost: beat.lost,
                        },
                        Err(e) => e,
                    },
                    Err(r) => refusal(r),
                }
            }
            Request::Complete { worker, lease, output } => {
                if let Some(out) = &output.output
                    && self.blobs.size(&out.digest) != Some(out.size)
                {
                    return error(
                        ErrorCode::Invalid,
                        format!(
                            "output blob {} ({} bytes) is not stored: upload it first",
                            out.digest, out.size
                        ),
                    );
                }
                self.record(self.apply(|s| s.complete(now, worker, lease, output), vec![]), lease)
                    .await
            }
            Request::Fail { worker, lease, reason, retryable } => {
                let rand = random_u64();
                let r =
                    self.apply(|s| s.fail(now, worker, lease, &reason, retryable, rand), vec![]);
                self.record(r, lease).await
            }
            // Answered in `stream`, which owns the stream they need.
            Request::PutBlob { .. } | Request::GetBlob { .. } | Request::Claim { .. } => {
                error(ErrorCode::Internal, "answered elsewhere")
            }
        }
    }

    async fn record(&self, r: Result<(JobState, Durable), Refusal>, lease: LeaseRef) -> Response {
        match r {
            Ok((state, done)) => match Self::durable(done).await {
                Ok(()) => Response::Recorded { job: lease.job, state },
                Err(e) => e,
            },
            Err(r) => refusal(r),
        }
    }

    async fn submit(&self, plan: Envelope, action: Envelope) -> Response {
        let now = now_ms();
        let now_s = now / 1000;
        let plan_bytes = plan.to_json();
        let action_bytes = action.to_json();
        let vp = match agenix_proto::verify_plan(&plan_bytes, &self.trust, now_s, &Limits::ABSOLUTE)
        {
            Ok(v) => v,
            Err(e) => return error(ErrorCode::Invalid, format!("plan: {e}")),
        };
        let va =
            match agenix_proto::verify_action(&action_bytes, &self.trust, now_s, &self.fingerprint)
            {
                Ok(v) => v,
                Err(e) => return error(ErrorCode::Invalid, format!("action: {e}")),
            };
        if let Err(e) = va.check_plan(&vp) {
            return error(ErrorCode::Invalid, e.to_string());
        }
        let a = va.action();
        let mut missing: Vec<String> = vp
            .plan()
            .wasm_tasks()
            .filter_map(|(_, w)| w.digest)
            .filter(|d| !self.blobs.has(d))
            .map(|d| d.to_string())
            .collect();
        for input in &a.inputs {
            match self.blobs.size(&input.digest) {
                Some(size) if size == input.size => {}
                Some(size) => missing.push(format!(
                    "{} (stored with {size} bytes, the action says {})",
                    input.digest, input.size
                )),
                None => missing.push(input.digest.to_string()),
            }
        }
        if !missing.is_empty() {
            missing.sort();
            missing.dedup();
            return error(
                ErrorCode::Invalid,
                format!("blobs not stored (upload them first): {}", missing.join(", ")),
            );
        }
        let sub = Submission {
            action: a.action_id.clone(),
            payload: Digest::of(va.payload()),
            expires_at: a.expires_at.saturating_mul(1000),
            plan: vp.digest(),
            inputs: a.inputs.clone(),
            priority: a.priority,
            max_attempts: a.max_attempts,
            requirements: Requirements::of(vp.plan()),
        };
        let extra = vec![
            Write::Plan(vp.digest(), plan_bytes),
            Write::ActionEnvelope(a.action_id.clone(), action_bytes),
        ];
        let result = self.apply(
            |s| {
                let (jobs, dup, changes) = s.submit(now, sub)?;
                // Still under the scheduler's lock: no worker can claim a job before the
                // envelopes it is sent with are in place.
                if !dup {
                    lock(&self.plans).insert(vp.digest(), plan);
                    lock(&self.actions).insert(a.action_id.clone(), action);
                }
                Ok(((jobs, dup), changes))
            },
            extra,
        );
        match result {
            Ok(((jobs, duplicate), done)) => {
                if let Err(e) = Self::durable(done).await {
                    return e;
                }
                self.ready.notify_waiters();
                Response::Submitted { jobs, duplicate }
            }
            Err(r) => refusal(r),
        }
    }

    /// Leases up to `max` jobs to `worker`, waiting up to `wait_ms` for one; stops waiting,
    /// leasing nothing, once `gone` resolves. A worker that lets a lease expire while this
    /// claim waits is leased nothing by it either (it may be dead with its connection not
    /// yet timed out; if alive, it claims again).
    async fn claim(
        &self,
        worker: u64,
        max: u32,
        wait_ms: u32,
        gone: impl Future<Output = impl Sized>,
    ) -> Response {
        let max = max.clamp(1, 64);
        let until = Instant::now() + Duration::from_millis(u64::from(wait_ms.min(30_000)));
        let since = now_ms();
        tokio::pin!(gone);
        loop {
            let woken = self.ready.notified();
            let now = now_ms();
            let claimed = self.apply(
                |s| {
                    if s.unresponsive_since(worker, since) {
                        Ok((vec![], vec![]))
                    } else {
                        s.claim(now, worker, max)
                    }
                },
                vec![],
            );
            let (jobs, done) = match claimed {
                Ok(v) => v,
                Err(r) => return refusal(r),
            };
            if !jobs.is_empty() {
                if let Err(e) = Self::durable(done).await {
                    return e;
                }
                let plans = lock(&self.plans);
                let actions = lock(&self.actions);
                let leases = jobs
                    .into_iter()
                    .filter_map(|j| {
                        let JobState::Leased { epoch, deadline, .. } = j.state else { return None };
                        Some(Lease {
                            lease: LeaseRef { job: j.id, epoch },
                            attempt: j.attempts,
                            deadline,
                            plan: plans.get(&j.plan)?.clone(),
                            action: actions.get(&j.action)?.clone(),
                            input: j.input,
                        })
                    })
                    .collect();
                return Response::Leases { leases };
            }
            if Self::durable(done).await.is_err() || Instant::now() >= until {
                return Response::Leases { leases: vec![] };
            }
            tokio::select! {
                _ = tokio::time::timeout_at(until.into(), woken) => {}
                _ = &mut gone => return Response::Leases { leases: vec![] },
            }
        }
    }

    /// The queue's identity.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

/// Applies batches of writes, one transaction per batch, and acknowledges each request once
/// its batch is durable.
async fn committer(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<(Vec<Write>, Ack)>,
    group: bool,
) {
    while let Some(first) = rx.recv().await {
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
        let s = store.clone();
        let result = tokio::task::spawn_blocking(move || s.apply(&writes))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(e) = &result {
            warn!(error = %e, "a commit failed: its requests are answered as unavailable");
        }
        for ack in acks {
            let _ = ack.send(result.clone());
        }
    }
}

/// Re-queues expired leases, promotes backoffs that are over, applies retention.
async fn reaper(queue: std::sync::Weak<Queue>) {
    loop {
        let Some(q) = queue.upgrade() else { return };
        let now = now_ms();
        let wake = lock(&q.sched).next_wakeup().unwrap_or(now + 1000).clamp(now + 10, now + 1000);
        drop(q);
        tokio::time::sleep(Duration::from_millis(wake - now)).await;
        let Some(q) = queue.upgrade() else { return };
        q.forget_idle_addresses();
        let now = now_ms();
        let Ok(((), done)) = q.apply(|s| Ok(((), s.tick(now))), vec![]) else { continue };
        let _ = Queue::durable(done).await;
        if lock(&q.sched).has_ready(now) {
            q.ready.notify_waiters();
        }
    }
}

/// The server's QUIC endpoint: TLS 1.3 only, ALPN agenix/1, no 0-RTT, the stream cap.
pub fn endpoint(
    listen: SocketAddr,
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    settings: &Settings,
) -> anyhow::Result<quinn::Endpoint> {
    let mut tls = rustls::ServerConfig::builder_with_provider(agenix_proto::link::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    tls.alpn_protocols = vec![agenix_proto::wire::ALPN.to_vec()];
    // No 0-RTT: early data could be replayed.
    tls.max_early_data_size = 0;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = agenix_proto::link::transport();
    transport.max_concurrent_bidi_streams(settings.streams_per_connection.into());
    transport.max_concurrent_uni_streams(0u32.into());
    config.transport_config(Arc::new(transport));
    config.migration(false);
    Ok(quinn::Endpoint::server(config, listen)?)
}
