//! The client side of the protocol, shared by agx and agw: one typed call per request, each
//! returning what that request's answer carries; an error answer becomes
//! [`LinkError::Remote`] with its code, any other answer [`LinkError::Unexpected`].

use std::net::SocketAddr;
use std::time::Duration;

use agenix_proto::action::{Fingerprint, InputRef};
use agenix_proto::audit::History;
use agenix_proto::digest::{Digest, Hasher};
use agenix_proto::job::{
    Capabilities, JobId, JobOutput, JobRecord, JobState, Lease, LeaseRef, WorkerRecord,
};
use agenix_proto::wire::{
    ClientRole, ErrorCode, JobFilter, PROTOCOL_VERSION, QueueStats, Request, Response,
};
use tokio::io::AsyncReadExt;

use crate::LinkError;
use crate::addr::{Addresses, MAX_ADDRESSES};
use crate::frame::{read_frame, write_frame};
use crate::tls::{pinned_tls, quic_client_config};

/// How long a handshake (or a name's resolution) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a worker learns when it registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    /// Its id at the queue.
    pub worker: u64,
    /// How long a lease lasts without a heartbeat.
    pub lease: Duration,
    /// How often to heartbeat.
    pub heartbeat: Duration,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// Leases extended.
    pub extended: Vec<LeaseRef>,
    /// Leases whose jobs were cancelled: stop them and report.
    pub cancelled: Vec<LeaseRef>,
    /// Leases no longer held (expired or superseded): stop them.
    pub lost: Vec<LeaseRef>,
}

/// The answer to a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The job's state now.
    pub state: JobState,
    /// The jobs leased with the answer, when the result asked for some.
    pub leases: Vec<Lease>,
}

/// The answer to a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// One job per input, in the action's order.
    pub jobs: Vec<JobId>,
    /// True when this exact action had been submitted before.
    pub duplicate: bool,
}

/// One page of a listing, and where the next one starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T, C> {
    /// The items.
    pub items: Vec<T>,
    /// Where the next page starts, if there is one.
    pub next: Option<C>,
}

/// How a client proves who it is.
#[derive(Clone)]
pub enum Credential {
    /// A planner's or observer's role token.
    Token(String),
    /// A worker's own key, proved in the TLS handshake.
    Key(agenix_proto::keys::SigningKey),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Never the token itself.
            Self::Token(_) => f.write_str("Token(…)"),
            Self::Key(k) => write!(f, "Key({})", agenix_proto::KeyId::of(&k.verifying_key())),
        }
    }
}

/// An authenticated connection to a queue.
#[derive(Debug, Clone)]
pub struct Client {
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
    queue: Fingerprint,
    role: ClientRole,
    max_blob: u64,
}

impl Client {
    /// Connects to the queue at `addr` whose identity is `fingerprint`, and authenticates
    /// as `role` with `credential`.
    pub async fn connect(
        addr: SocketAddr,
        fingerprint: Fingerprint,
        role: ClientRole,
        credential: &Credential,
    ) -> Result<Self, LinkError> {
        let conn_err = |message: String| LinkError::Connect { addr, message };
        let bind: SocketAddr =
            if addr.is_ipv6() { ([0u16; 8], 0).into() } else { ([0u8; 4], 0).into() };
        let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| conn_err(e.to_string()))?;
        let (key, token) = match credential {
            Credential::Token(t) => (None, Some(t.clone())),
            Credential::Key(k) => (Some(k), None),
        };
        let (tls, refused) = pinned_tls(fingerprint, key)?;
        endpoint.set_default_client_config(quic_client_config(tls)?);
        let connecting =
            endpoint.connect(addr, "agenix-queue").map_err(|e| conn_err(e.to_string()))?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| conn_err("timed out".into()))?
            .map_err(|e| {
                match refused.lock().ok().and_then(|mut slot| slot.take()) {
                    // Not the queue it should be: a fact about the configuration, not the link.
                    Some(found) => LinkError::WrongQueue { addr, expected: fingerprint, found },
                    None => conn_err(e.to_string()),
                }
            })?;
        let client = Self { conn, _endpoint: endpoint, queue: fingerprint, role, max_blob: 0 };
        let hello = Request::Hello { version: PROTOCOL_VERSION, role, token };
        let max_blob = client
            .ask(hello, |r| match r {
                Response::HelloOk { max_blob, .. } => Ok(max_blob),
                other => Err(other.name()),
            })
            .await?;
        Ok(Self { max_blob, ..client })
    }

    /// Connects to whichever of `addrs` first answers as the queue `fingerprint` and takes
    /// `credential`. Every address (and every address a name resolves to) is dialled at
    /// once, so a node that is down costs no time; the rest are dropped. When none answers,
    /// the error says the most: a queue's refusal before a wrong identity before a link
    /// failure. An address that answers as another queue is logged even when another
    /// address serves.
    pub async fn connect_any(
        addrs: &Addresses,
        fingerprint: Fingerprint,
        role: ClientRole,
        credential: &Credential,
    ) -> Result<Self, LinkError> {
        use futures::stream::{FuturesUnordered, StreamExt as _};
        let mut tries: FuturesUnordered<_> = addrs
            .iter()
            .map(|a| async move {
                let found = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    tokio::net::lookup_host((a.host(), a.port())),
                )
                .await
                .map_err(|_| format!("{a}: resolving it timed out"))
                .and_then(|r| r.map_err(|e| format!("{a}: cannot resolve it: {e}")));
                (a, found.map(|found| found.collect::<Vec<SocketAddr>>()))
            })
            .collect();
        let mut dials = FuturesUnordered::new();
        let mut failed: Vec<LinkError> = Vec::new();
        loop {
            tokio::select! {
                Some((a, found)) = tries.next() => match found {
                    Ok(found) if found.is_empty() => {
                        failed.push(LinkError::Connection(format!("{a}: resolves to no address")));
                    }
                    // A name's first addresses only: it cannot make a client dial without end.
                    Ok(found) => dials.extend(found.into_iter().take(MAX_ADDRESSES).map(|at| async move {
                        Self::connect(at, fingerprint, role, credential).await
                    })),
                    Err(why) => failed.push(LinkError::Connection(why)),
                },
                Some(dialled) = dials.next() => match dialled {
                    Ok(client) => return Ok(client),
                    Err(e) => {
                        if addrs.len() > 1 && matches!(e, LinkError::WrongQueue { .. }) {
                            tracing::warn!(error = %e, "a queue address answers as another queue");
                        }
                        failed.push(e);
                    }
                },
                else => break,
            }
        }
        // A refusal speaks for the queue; while some address could not be reached, trying
        // again may help (a node taking over), so an identity mismatch elsewhere is not final.
        let rank = |e: &LinkError| match e {
            LinkError::Remote { code: ErrorCode::Unavailable, .. } => 1,
            LinkError::Remote { .. } => 0,
            LinkError::WrongQueue { .. } => 2,
            _ => 3,
        };
        failed.sort_by_key(rank);
        if addrs.len() > 1
            && failed.first().is_some_and(|e| rank(e) > 0)
            && failed.iter().any(|e| rank(e) == 3)
        {
            let each: Vec<String> = failed.iter().map(ToString::to_string).collect();
            return Err(LinkError::Connection(format!(
                "no address of the queue answered ({})",
                each.join("; ")
            )));
        }
        Err(failed
            .into_iter()
            .next()
            .unwrap_or_else(|| LinkError::Connection("no queue address".into())))
    }

    /// The address this connection reached.
    pub fn remote(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// Sends `req` and takes from the answer what `pick` finds there; an answer `pick`
    /// does not expect (it returns that answer's name) is [`LinkError::Unexpected`].
    async fn ask<T>(
        &self,
        req: Request,
        pick: impl FnOnce(Response) -> Result<T, &'static str>,
    ) -> Result<T, LinkError> {
        let answer = self.request(&req).await?;
        pick(answer).map_err(|answer| LinkError::Unexpected { request: req.name(), answer })
    }

    /// Announces this worker and what it offers, binding it to this connection.
    pub async fn register(
        &self,
        capabilities: Capabilities,
        instance: String,
    ) -> Result<Registration, LinkError> {
        self.ask(Request::Register { capabilities, instance }, |r| match r {
            Response::Registered { worker, lease_ms, heartbeat_ms } => Ok(Registration {
                worker,
                lease: Duration::from_millis(lease_ms),
                heartbeat: Duration::from_millis(heartbeat_ms),
            }),
            other => Err(other.name()),
        })
        .await
    }

    /// Asks for up to `max` jobs, waiting up to `wait_ms` for one.
    pub async fn claim(&self, max: u32, wait_ms: u32) -> Result<Vec<Lease>, LinkError> {
        self.ask(Request::Claim { max, wait_ms }, |r| match r {
            Response::Leases { leases } => Ok(leases),
            other => Err(other.name()),
        })
        .await
    }

    /// Keeps `leases` alive; learns which were cancelled or lost.
    pub async fn heartbeat(&self, leases: Vec<LeaseRef>) -> Result<Heartbeat, LinkError> {
        self.ask(Request::Heartbeat { leases }, |r| match r {
            Response::HeartbeatOk { extended, cancelled, lost } => {
                Ok(Heartbeat { extended, cancelled, lost })
            }
            other => Err(other.name()),
        })
        .await
    }

    /// Reports a job's result carrying the blobs it names (stored with it, in one round
    /// trip and one commit), retrying while throttled, and asks for up to `claim` jobs more
    /// in the same commit (none waited for). The answer's leases are as the queue sent
    /// them: at most `claim` of them is the caller's check to make.
    pub async fn complete_carrying(
        &self,
        lease: LeaseRef,
        output: JobOutput,
        blobs: &[&[u8]],
        claim: u32,
    ) -> Result<Recorded, LinkError> {
        let refs = refs_of(blobs);
        throttled(|| async {
            let req =
                Request::Complete { lease, output: output.clone(), blobs: refs.clone(), claim };
            self.upload(&req, blobs).await.and_then(|r| match r {
                Response::Recorded { state, leases, .. } => Ok(Recorded { state, leases }),
                other => Err(LinkError::Unexpected { request: "complete", answer: other.name() }),
            })
        })
        .await
    }

    /// Sends `req` with `blobs` after it, and reads the answer.
    async fn upload(&self, req: &Request, blobs: &[&[u8]]) -> Result<Response, LinkError> {
        let (mut send, recv) =
            self.conn.open_bi().await.map_err(|e| LinkError::Connection(e.to_string()))?;
        write_frame(&mut send, req).await?;
        let left = blobs.iter().map(|b| b.len() as u64).sum();
        let mut up = Upload { send, recv, left, request: req.name() };
        for b in blobs {
            if let Err(e) = up.write(b).await {
                return up.answer(Some(e)).await;
            }
        }
        up.end().await
    }

    /// Reports a job's result (its blobs stored first); the job's state after.
    pub async fn complete(
        &self,
        lease: LeaseRef,
        output: JobOutput,
    ) -> Result<JobState, LinkError> {
        self.recorded(Request::Complete { lease, output, blobs: vec![], claim: 0 }).await
    }

    /// Reports that a job could not be run; the job's state after.
    pub async fn fail(
        &self,
        lease: LeaseRef,
        reason: String,
        retryable: bool,
    ) -> Result<JobState, LinkError> {
        self.recorded(Request::Fail { lease, reason, retryable }).await
    }

    /// Gives a job back unrun, for a cause local to this worker; the job's state after.
    pub async fn release(&self, lease: LeaseRef, reason: String) -> Result<JobState, LinkError> {
        self.recorded(Request::Release { lease, reason }).await
    }

    async fn recorded(&self, req: Request) -> Result<JobState, LinkError> {
        self.ask(req, |r| match r {
            Response::Recorded { state, .. } => Ok(state),
            other => Err(other.name()),
        })
        .await
    }

    /// Submits a plan and an action for it, both already uploaded as blobs.
    pub async fn submit(&self, plan: Digest, action: Digest) -> Result<Submitted, LinkError> {
        self.submit_carrying(plan, action, &[]).await
    }

    /// Submits a plan and an action for it, carrying the envelopes in `carried` (the plan's,
    /// the action's or both, stored with the submission in one round trip and one commit);
    /// one not carried must be uploaded already. Retries while throttled.
    pub async fn submit_carrying(
        &self,
        plan: Digest,
        action: Digest,
        carried: &[&[u8]],
    ) -> Result<Submitted, LinkError> {
        let blobs = refs_of(carried);
        throttled(|| async {
            let req = Request::Submit { plan, action, blobs: blobs.clone() };
            self.upload(&req, carried).await.and_then(|r| match r {
                Response::Submitted { jobs, duplicate } => Ok(Submitted { jobs, duplicate }),
                other => Err(LinkError::Unexpected { request: "submit", answer: other.name() }),
            })
        })
        .await
    }

    /// Cancels a job; its state after.
    pub async fn cancel(&self, job: JobId) -> Result<JobState, LinkError> {
        self.ask(Request::Cancel { job }, |r| match r {
            Response::Cancel { state, .. } => Ok(state),
            other => Err(other.name()),
        })
        .await
    }

    /// One page of jobs after `after`, at most `limit`.
    pub async fn list_jobs(
        &self,
        filter: JobFilter,
        after: Option<JobId>,
        limit: u32,
    ) -> Result<Page<JobRecord, JobId>, LinkError> {
        self.ask(Request::ListJobs { filter, after, limit }, |r| match r {
            Response::Jobs { jobs, next } => Ok(Page { items: jobs, next }),
            other => Err(other.name()),
        })
        .await
    }

    /// One job.
    pub async fn show_job(&self, job: JobId) -> Result<JobRecord, LinkError> {
        self.ask(Request::ShowJob { job }, |r| match r {
            Response::Job { job } => Ok(job),
            other => Err(other.name()),
        })
        .await
    }

    /// One page of `job`'s audit entries after entry `after`: the entries with their
    /// proofs, the queue's latest signed checkpoint and its key (check them with
    /// `agenix_proto::audit::check_history`).
    pub async fn history(
        &self,
        job: JobId,
        after: Option<u64>,
    ) -> Result<(History, Option<u64>), LinkError> {
        self.ask(Request::History { job, after }, |r| match r {
            Response::History { entries, checkpoint, key, next } => {
                Ok((History { entries, checkpoint, key }, next))
            }
            other => Err(other.name()),
        })
        .await
    }

    /// One page of registered workers after the id `after`, at most `limit`.
    pub async fn list_workers(
        &self,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Page<WorkerRecord, u64>, LinkError> {
        self.ask(Request::ListWorkers { after, limit }, |r| match r {
            Response::Workers { workers, next } => Ok(Page { items: workers, next }),
            other => Err(other.name()),
        })
        .await
    }

    /// Counts by state and recent throughput.
    pub async fn stats(&self) -> Result<QueueStats, LinkError> {
        self.ask(Request::Stats {}, |r| match r {
            Response::Stats { stats } => Ok(stats),
            other => Err(other.name()),
        })
        .await
    }

    /// Stops keeping a blob stored with `keep`; whether it was kept.
    pub async fn unkeep(&self, digest: Digest) -> Result<bool, LinkError> {
        self.ask(Request::Unkeep { digest }, |r| match r {
            Response::Unkept { was_kept } => Ok(was_kept),
            other => Err(other.name()),
        })
        .await
    }

    /// The queue's identity.
    pub fn queue(&self) -> Fingerprint {
        self.queue
    }

    /// The largest blob the queue accepts, as it said when this connection authenticated.
    pub fn max_blob(&self) -> u64 {
        self.max_blob
    }

    /// The role this connection authenticated as.
    pub fn role(&self) -> ClientRole {
        self.role
    }

    /// The QUIC connection (for tests that speak raw frames).
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// Sends `req` on a new stream and returns the answer, whatever it is (for tests that
    /// speak the protocol directly; everything else uses the typed calls); an `Error`
    /// answer becomes [`LinkError::Remote`]. A request the queue throttled is sent again after a backoff
    /// (it was not acted on), for up to [`THROTTLE_PATIENCE`].
    pub async fn request(&self, req: &Request) -> Result<Response, LinkError> {
        throttled(|| self.request_once(req)).await
    }

    async fn request_once(&self, req: &Request) -> Result<Response, LinkError> {
        let (mut send, mut recv) =
            self.conn.open_bi().await.map_err(|e| LinkError::Connection(e.to_string()))?;
        write_frame(&mut send, req).await?;
        send.finish().map_err(|e| LinkError::Connection(e.to_string()))?;
        let resp: Response = read_frame(&mut recv).await?;
        check(req.name(), resp)
    }

    /// Uploads `bytes` as one blob (the queue checks the digest), retrying while throttled.
    pub async fn put_blob(&self, bytes: &[u8]) -> Result<(), LinkError> {
        self.put_many(&[bytes], false).await.map(drop)
    }

    /// Uploads several blobs in one request (the queue checks each digest), retrying while
    /// throttled; returns how many the queue already had. `keep`: see [`Client::put_blobs`].
    pub async fn put_many(&self, blobs: &[&[u8]], keep: bool) -> Result<u32, LinkError> {
        let refs = refs_of(blobs);
        throttled(|| async {
            let req = Request::PutBlobs { blobs: refs.clone(), keep };
            self.upload(&req, blobs).await.and_then(stored)
        })
        .await
    }

    /// Starts uploading `blobs` in one request: write their bytes, in order, to the
    /// returned [`Upload`], then [`Upload::finish`] it. `keep`: the queue keeps them until
    /// removed explicitly (planners only).
    pub async fn put_blobs(&self, blobs: &[InputRef], keep: bool) -> Result<Upload, LinkError> {
        let req = Request::PutBlobs { blobs: blobs.to_vec(), keep };
        let (mut send, recv) =
            self.conn.open_bi().await.map_err(|e| LinkError::Connection(e.to_string()))?;
        write_frame(&mut send, &req).await?;
        Ok(Upload { send, recv, left: blobs.iter().map(|b| b.size).sum(), request: "put_blobs" })
    }

    /// Downloads the blob with `digest` (at most `max` bytes), checking it.
    pub async fn get_blob(&self, digest: Digest, max: u64) -> Result<Vec<u8>, LinkError> {
        throttled(|| self.get_blob_once(digest, max)).await
    }

    async fn get_blob_once(&self, digest: Digest, max: u64) -> Result<Vec<u8>, LinkError> {
        let (mut send, mut recv) =
            self.conn.open_bi().await.map_err(|e| LinkError::Connection(e.to_string()))?;
        write_frame(&mut send, &Request::GetBlob { digest }).await?;
        send.finish().map_err(|e| LinkError::Connection(e.to_string()))?;
        let size = match check("get_blob", read_frame(&mut recv).await?)? {
            Response::Blob { size, .. } if size <= max => size,
            Response::Blob { size, .. } => {
                return Err(LinkError::Remote {
                    request: "get_blob",
                    code: ErrorCode::TooLarge,
                    message: format!("blob {digest} is {size} bytes, over the limit of {max}"),
                });
            }
            other => {
                return Err(LinkError::Unexpected { request: "get_blob", answer: other.name() });
            }
        };
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(1 << 26));
        let mut h = Hasher::new();
        let mut chunk = vec![0u8; 64 << 10];
        let mut left = size;
        while left > 0 {
            let want = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
            let n = AsyncReadExt::read(&mut recv, &mut chunk[..want])
                .await
                .map_err(|e| LinkError::Connection(e.to_string()))?;
            if n == 0 {
                return Err(LinkError::Connection("blob ended early".into()));
            }
            h.update(&chunk[..n]);
            bytes.extend_from_slice(&chunk[..n]);
            left -= n as u64;
        }
        let found = h.finish();
        if found != digest {
            return Err(LinkError::BlobMismatch { expected: digest, found });
        }
        Ok(bytes)
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
    }

    /// Closes the connection and waits (briefly) until the queue has been told, so it frees
    /// the connection at once instead of after the idle timeout. Call before a process exits.
    pub async fn shutdown(&self) {
        self.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), self._endpoint.wait_idle()).await;
    }
}

/// How long a client keeps sending a request the queue throttles before giving up.
pub const THROTTLE_PATIENCE: Duration = Duration::from_secs(60);

/// Waits between attempts of a throttled request: 50 ms doubling to 2 s, until
/// [`THROTTLE_PATIENCE`] has passed.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    spent: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self { next: Duration::from_millis(50), spent: Duration::ZERO }
    }

    /// Sleeps before the next attempt; false once patience is spent.
    async fn wait(&mut self) -> bool {
        if self.spent >= THROTTLE_PATIENCE {
            return false;
        }
        let d = self.next;
        tokio::time::sleep(d).await;
        self.spent += d;
        self.next = (self.next * 2).min(Duration::from_secs(2));
        true
    }
}

/// An upload under way: the bytes of the blobs announced, in order, then [`Upload::finish`].
#[derive(Debug)]
pub struct Upload {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    left: u64,
    request: &'static str,
}

impl Upload {
    /// Sends the next bytes.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        if bytes.len() as u64 > self.left {
            return Err(LinkError::Connection(format!(
                "{} bytes more than the blobs announced",
                bytes.len() as u64 - self.left
            )));
        }
        self.send.write_all(bytes).await.map_err(|e| LinkError::Connection(e.to_string()))?;
        self.left -= bytes.len() as u64;
        Ok(())
    }

    /// Ends the upload and returns how many of the blobs the queue already had.
    pub async fn finish(self) -> Result<u32, LinkError> {
        self.end().await.and_then(stored)
    }

    /// After [`Upload::write`] failed with `e`: the queue may have refused the upload and
    /// stopped reading, and its answer says why; else `e`.
    pub async fn refused(mut self, e: LinkError) -> Result<u32, LinkError> {
        self.answer(Some(e)).await.and_then(stored)
    }

    async fn end(mut self) -> Result<Response, LinkError> {
        if self.left > 0 {
            return Err(LinkError::Connection(format!(
                "upload ended {} bytes short of the blobs announced",
                self.left
            )));
        }
        let sent = self.send.finish().map_err(|e| LinkError::Connection(e.to_string()));
        self.answer(sent.err()).await
    }

    async fn answer(&mut self, failed: Option<LinkError>) -> Result<Response, LinkError> {
        // The queue may refuse on the header and stop reading: its answer still says why.
        match read_frame::<Response>(&mut self.recv).await {
            Ok(resp) => check(self.request, resp),
            Err(e) => Err(failed.unwrap_or_else(|| e.into())),
        }
    }
}

/// `call` until the queue does not throttle it, backing off in between for up to
/// [`THROTTLE_PATIENCE`] (a throttled request was not acted on).
async fn throttled<T, F: Future<Output = Result<T, LinkError>>>(
    mut call: impl FnMut() -> F,
) -> Result<T, LinkError> {
    let mut backoff = Backoff::new();
    loop {
        match call().await {
            Err(e) if e.code() == Some(ErrorCode::RateLimited) && backoff.wait().await => {}
            other => return other,
        }
    }
}

/// Each blob's digest and size.
fn refs_of(blobs: &[&[u8]]) -> Vec<InputRef> {
    blobs.iter().map(|b| InputRef { digest: Digest::of(b), size: b.len() as u64 }).collect()
}

/// How many blobs an upload's answer says were stored already.
fn stored(resp: Response) -> Result<u32, LinkError> {
    match resp {
        Response::BlobsStored { existed } => Ok(existed),
        other => Err(LinkError::Unexpected { request: "put_blobs", answer: other.name() }),
    }
}

fn check(request: &'static str, resp: Response) -> Result<Response, LinkError> {
    match resp {
        Response::Error { code, message } => Err(LinkError::Remote { request, code, message }),
        other => Ok(other),
    }
}
