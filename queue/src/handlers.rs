//! One handler per request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agenix_link::write_frame;
use agenix_proto::envelope::MAX_ENVELOPE_BYTES;
use agenix_proto::job::Capabilities;
use agenix_proto::job::{
    JobOutput, JobState, LeaseRef, MAX_INLINE_REPORTS, MAX_REASON, MAX_WORKER_NAME, Reports,
    Requirements,
};
use agenix_proto::wire::{
    ErrorCode, MAX_BATCH_BLOBS, MAX_CLAIM, MAX_COMPLETE_BLOBS, MAX_HEARTBEAT_LEASES, MAX_INSTANCE,
    MAX_PAGE, PAGE_BYTES, Request, Response, json_len,
};
use agenix_proto::{Digest, InputRef, KeyId, Limits};
use agenix_queue_core::{Refusal, Submission};
use tokio::io::AsyncWriteExt;

use crate::blobs::{BlobError, INLINE_MAX, Opened, Pending, Put};
use crate::limits::lock;
use crate::server::{Conn, Durable, Queue, error, now_ms, random_u64, refusal, send_answer};
use crate::store::Write;

/// A worker's id: derived from the key it authenticated with and the secret instance it
/// registers with, so that the same process gets the same id on every connection (and from
/// a restarted queue), and no other process can take it: not without the secret, and never
/// with another key. A lease is bound to its worker's id, hence to its key.
pub fn worker_id(key: &KeyId, instance: &str) -> u64 {
    let d = Digest::of(format!("agenix worker {key} {instance}").as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&d.as_bytes()[..8]);
    u64::from_be_bytes(id)
}

impl Queue {
    pub(crate) async fn handle(&self, client: &Conn, req: Request) -> Response {
        let now = now_ms();
        match req {
            Request::Hello { .. } => error(ErrorCode::BadRequest, "already authenticated"),
            // Read with its stream (`Queue::submit`); here only without one (the web).
            Request::Submit { blobs, .. } if !blobs.is_empty() => {
                error(ErrorCode::BadRequest, "carried envelopes are sent over the queue's link")
            }
            Request::Submit { plan, action, .. } => self.submit(plan, action, vec![], None).await,
            Request::Unkeep { digest } => {
                let was_kept = lock(&self.kept).contains(&digest);
                if !was_kept {
                    return Response::Unkept { was_kept };
                }
                match self.apply(|_| Ok(((), vec![])), vec![Write::Unkeep(digest)]) {
                    Ok(((), done)) => match Self::durable(done).await {
                        Ok(()) => {
                            lock(&self.kept).remove(&digest);
                            Response::Unkept { was_kept }
                        }
                        Err(e) => e,
                    },
                    Err(r) => refusal(r),
                }
            }
            Request::Cancel { job } => match self.apply(|s| s.cancel(now, job), vec![]) {
                Ok((state, done)) => match Self::durable(done).await {
                    Ok(()) => Response::Cancel { job, state },
                    Err(e) => e,
                },
                // Nothing to cancel: the job is done, which is no lease's fault.
                Err(r @ Refusal::Finished(_)) => error(ErrorCode::Conflict, r.to_string()),
                Err(r) => refusal(r),
            },
            Request::ListJobs { filter, after, limit } => match self.current() {
                Ok(s) => {
                    let (jobs, next) = s.list(&filter, after, limit.min(MAX_PAGE), PAGE_BYTES);
                    Response::Jobs { jobs, next }
                }
                Err(r) => refusal(r),
            },
            Request::ShowJob { job } => match self.current().map(|s| s.job(job)) {
                Ok(Some(j)) => Response::Job { job: j },
                Ok(None) => error(ErrorCode::NotFound, format!("no job {job}")),
                Err(r) => refusal(r),
            },
            Request::History { job, after } => self.history(job, after).await,
            Request::ListWorkers { after, limit } => match self.current() {
                Ok(s) => {
                    let (workers, next) = s.workers(after, limit.min(MAX_PAGE), PAGE_BYTES);
                    Response::Workers { workers, next }
                }
                Err(r) => refusal(r),
            },
            Request::Stats {} => match self.current() {
                Ok(s) => Response::Stats { stats: s.stats(now) },
                Err(r) => refusal(r),
            },
            Request::Register { capabilities, instance } => {
                self.register(client, capabilities, &instance).await
            }
            Request::Heartbeat { leases } => {
                let Some(worker) = registered(client) else { return unregistered() };
                if leases.len() > MAX_HEARTBEAT_LEASES {
                    return error(
                        ErrorCode::TooLarge,
                        format!(
                            "{} leases in one heartbeat, over the limit of {MAX_HEARTBEAT_LEASES}",
                            leases.len()
                        ),
                    );
                }
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
            // Read with its stream (`Queue::complete`); here only without one (the web).
            Request::Complete { .. } => {
                error(ErrorCode::BadRequest, "a result is sent over the queue's link")
            }
            Request::Fail { lease, reason, retryable } => {
                let Some(worker) = registered(client) else { return unregistered() };
                let rand = random_u64();
                let r =
                    self.apply(|s| s.fail(now, worker, lease, &reason, retryable, rand), vec![]);
                self.record(r, lease).await
            }
            Request::Release { lease, reason } => {
                let Some(worker) = registered(client) else { return unregistered() };
                let r = self.apply(|s| s.release(now, worker, lease, &reason), vec![]);
                let answer = self.record(r, lease).await;
                self.ready.notify_waiters();
                answer
            }
            // Answered in `stream`, which owns the stream they need.
            Request::PutBlobs { .. } | Request::GetBlob { .. } | Request::Claim { .. } => {
                error(ErrorCode::Internal, "answered elsewhere")
            }
        }
    }

    async fn register(
        &self,
        client: &Conn,
        capabilities: Capabilities,
        instance: &str,
    ) -> Response {
        if instance.is_empty() || instance.len() > MAX_INSTANCE {
            return error(
                ErrorCode::BadRequest,
                format!("the instance must be 1 to {MAX_INSTANCE} bytes"),
            );
        }
        let Some(key) = client.key else { return unregistered() };
        // What the worker sent is checked as sent, though its name is then replaced.
        if let Err(e) = capabilities.check() {
            return error(ErrorCode::BadRequest, format!("cannot register: {e}"));
        }
        // Operators see the name and labels they enrolled the key with, not what the
        // worker says of itself (its own labels stand when none were enrolled).
        let mut capabilities = capabilities;
        match self.workers_trust().await.map(|t| t.worker(&key, now_ms() / 1000).cloned()) {
            Ok(Ok(enrolled)) => {
                // Cut where it must be, marked: names cut alike stay told apart by the mark.
                capabilities.name =
                    agenix_proto::text::truncate(&enrolled.name, MAX_WORKER_NAME).into_owned();
                if !enrolled.labels.is_empty() {
                    capabilities.labels = enrolled.labels;
                }
            }
            Ok(Err(refusal)) => return error(ErrorCode::Unauthenticated, refusal.to_string()),
            Err(refused) => return refused,
        }
        let id = worker_id(&key, instance);
        let concurrency = capabilities.concurrency;
        let mut bound = lock(&client.worker);
        if bound.is_some_and(|(w, _)| w != id) {
            return error(
                ErrorCode::BadRequest,
                "another worker is already registered on this connection",
            );
        }
        let now = now_ms();
        let registered = self.current().and_then(|mut s| s.register(now, id, key, capabilities));
        match registered {
            Ok(worker) => {
                if bound.is_none() {
                    // The connection's budget is now sized by its concurrency: start it full.
                    *lock(&client.bucket) = crate::limits::Bucket::default();
                }
                *bound = Some((worker, concurrency));
                let cfg = *lock(&self.sched).config();
                Response::Registered {
                    worker,
                    lease_ms: cfg.lease_ms,
                    heartbeat_ms: cfg.heartbeat_ms,
                }
            }
            Err(r) => refusal(r),
        }
    }

    /// A result must name only blobs that are stored, and keep its inline reports small.
    fn check_output(
        &self,
        output: &JobOutput,
        carried: &BTreeMap<Digest, Arc<[u8]>>,
    ) -> Result<(), (ErrorCode, String)> {
        if let Reports::Inline(r) = &output.reports
            && json_len(r) > MAX_INLINE_REPORTS
        {
            return Err((
                ErrorCode::TooLarge,
                format!("inline reports are over {MAX_INLINE_REPORTS} bytes: send them as a blob"),
            ));
        }
        for blob in output.blobs() {
            let size = match carried.get(&blob.digest) {
                Some(b) => Some(b.len() as u64),
                None => self.blobs.size(&blob.digest),
            };
            if size != Some(blob.size) {
                return Err((
                    ErrorCode::Invalid,
                    format!(
                        "blob {} ({} bytes) is not stored: upload it first",
                        blob.digest, blob.size
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A result must carry its worker's signed statement: signed by the key this
    /// connection proved, about this queue, this job under this lease, its action, plan and
    /// input, and saying what the result says (success, failure, output, and the per-task
    /// reports when they travel inline; reports stored as a blob are checked by whoever
    /// reads them, `agx jobs result --verify`).
    async fn check_signed(
        &self,
        client: &Conn,
        worker: u64,
        lease: LeaseRef,
        output: &JobOutput,
        carried: &BTreeMap<Digest, Arc<[u8]>>,
    ) -> Result<(), Response> {
        // A lease that is not this worker's, or no longer current, is refused as such first.
        let (plan, input, action) = {
            let sched = self.current().map_err(refusal)?;
            let job = sched.owned(worker, lease).map_err(refusal)?;
            let action = sched.action(job.action()).map(|a| a.payload);
            (job.plan(), job.input().cloned(), action)
        };
        let invalid = |m: String| error(ErrorCode::Invalid, m);
        // Kept as sent, so that what is kept is what was signed.
        if let Some(f) = &output.failure
            && agenix_proto::job::bounded_reason(f) != *f
        {
            return Err(invalid(format!(
                "the failure must be at most {MAX_REASON} bytes of text without terminal controls"
            )));
        }
        let Some(blob) = &output.result else {
            return Err(invalid("the result carries no signed statement: it is refused".into()));
        };
        let bytes = match carried.get(&blob.digest) {
            Some(b) => b.to_vec(),
            None => self
                .blobs
                .read(&blob.digest, MAX_ENVELOPE_BYTES as u64)
                .await
                .map_err(|e| invalid(format!("signed result: {e}")))?,
        };
        let trust = self.workers_trust().await?;
        let verified = agenix_proto::verify_result(&bytes, &trust, now_ms() / 1000)
            .map_err(|e| invalid(format!("signed result: {e}")))?;
        if Some(verified.signer()) != client.key {
            return Err(error(
                ErrorCode::Forbidden,
                format!(
                    "the result is signed by worker key {}, not by this connection's",
                    verified.signer()
                ),
            ));
        }
        let s = verified.statement();
        let bound = [
            ("queue", self.fingerprint.to_string(), s.queue.to_string()),
            ("job", lease.job.to_string(), s.job.to_string()),
            ("lease epoch", lease.epoch.0.to_string(), s.epoch.0.to_string()),
            ("plan", plan.to_string(), s.plan.to_string()),
            ("input", format!("{input:?}"), format!("{:?}", s.input)),
        ];
        for (what, expected, found) in bound {
            if expected != found {
                return Err(invalid(format!(
                    "the signed result's {what} is {found}, not {expected}"
                )));
            }
        }
        // (An action already forgotten has expired: its job cannot complete anyway.)
        if let Some(action) = action
            && action != s.action
        {
            return Err(invalid(format!(
                "the signed result's action is {}, not {action}",
                s.action
            )));
        }
        let inline = match &output.reports {
            Reports::Inline(r) => Some(r.as_slice()),
            Reports::Blob(_) => None,
        };
        s.check(output, inline).map_err(|e| invalid(e.to_string()))
    }

    async fn record(&self, r: Result<(JobState, Durable), Refusal>, lease: LeaseRef) -> Response {
        match r {
            Ok((state, done)) => match Self::durable(done).await {
                Ok(()) => Response::Recorded { job: lease.job, state, leases: vec![] },
                Err(e) => e,
            },
            Err(r) => refusal(r),
        }
    }

    pub(crate) async fn get_blob(&self, digest: Digest, mut send: quinn::SendStream) {
        let Ok((opened, size)) = self.blobs.open(&digest) else {
            send_answer(
                "get_blob",
                &mut send,
                &error(ErrorCode::NotFound, format!("no blob {digest}")),
            )
            .await;
            return;
        };
        crate::metrics::answered("get_blob", &Response::Blob { digest, size }, true);
        if write_frame(&mut send, &Response::Blob { digest, size }).await.is_err() {
            tracing::warn!(%digest, "a blob could not be sent");
            return;
        }
        let sent = match opened {
            Opened::Bytes(b) => send.write_all(&b).await.map_err(std::io::Error::from),
            Opened::File(mut file) => tokio::io::copy(&mut file, &mut send).await.map(drop),
        };
        match sent {
            Ok(()) => {
                let _ = send.flush().await;
                let _ = send.finish();
            }
            Err(e) => tracing::debug!(%digest, error = %e, "a blob download stopped"),
        }
    }

    /// Stores a batch of blobs read one after another from the stream. Each is checked on
    /// its own; the first that fails stops the batch (those before it are stored).
    pub(crate) async fn put_blobs(
        &self,
        blobs: Vec<InputRef>,
        keep: bool,
        recv: &mut quinn::RecvStream,
    ) -> Response {
        if blobs.len() > MAX_BATCH_BLOBS {
            return stop_reading(
                recv,
                error(
                    ErrorCode::TooLarge,
                    format!(
                        "{} blobs in one batch, over the limit of {MAX_BATCH_BLOBS}",
                        blobs.len()
                    ),
                ),
            );
        }
        let until = self.upload_deadline(&blobs);
        let mut existed = 0;
        // Small blobs are held in memory until committed: a commit every HELD_BYTES of them.
        for group in held_groups(&blobs) {
            let Received { existed: had, pending, failed } = self.receive(group, recv, until).await;
            existed += had;
            let (writes, rooms) = split(pending);
            if !writes.is_empty() {
                // Not stored: said so, whatever else failed.
                if let Err(e) = self.commit(writes).await {
                    return e;
                }
                drop(rooms);
            }
            if let Some(failed) = failed {
                return failed;
            }
        }
        if keep {
            let digests: Vec<Digest> = blobs.iter().map(|b| b.digest).collect();
            if let Err(e) = self.commit(digests.iter().map(|d| Write::Keep(*d)).collect()).await {
                return e;
            }
            lock(&self.kept).extend(digests);
        }
        Response::BlobsStored { existed }
    }

    /// Commits `writes` (blobs among them), and counts the store's blobs again.
    async fn commit(&self, writes: Vec<Write>) -> Result<(), Response> {
        let done = match self.apply(|_| Ok(((), vec![])), writes) {
            Ok(((), done)) => done,
            Err(r) => return Err(refusal(r)),
        };
        let durable = Self::durable(done).await;
        self.blobs.committed();
        durable
    }

    /// When an upload of `blobs` must be done: at least 1 MB/s, and never less than the
    /// request timeout.
    fn upload_deadline(&self, blobs: &[InputRef]) -> Instant {
        let total = blobs.iter().fold(0u64, |t, b| t.saturating_add(b.size));
        Instant::now() + self.settings.request_timeout + Duration::from_secs(total / (1 << 20))
    }

    /// Reads `blobs` from the stream, one after another: large ones are stored as files at
    /// once, small ones handed back to be committed. Stops at the first that fails, with
    /// the answer saying why (the stream is then no longer read).
    async fn receive(
        &self,
        blobs: &[InputRef],
        recv: &mut quinn::RecvStream,
        until: Instant,
    ) -> Received {
        let mut got = Received { existed: 0, pending: Vec::new(), failed: None };
        for blob in blobs {
            let room = match self.blobs.reserve(blob.size) {
                Ok(r) => r,
                Err(e) => {
                    got.failed = Some(stop_reading(recv, blob_error(e)));
                    break;
                }
            };
            let put = self.blobs.put(blob.digest, blob.size, room, recv);
            match tokio::time::timeout_at(until.into(), put).await {
                Err(_) => {
                    let slow = error(ErrorCode::BadRequest, "upload too slow");
                    got.failed = Some(stop_reading(recv, slow));
                    break;
                }
                Ok(Ok(Put::Existed)) => got.existed += 1,
                Ok(Ok(Put::Stored)) => {}
                // The same blob twice: the second finds the first.
                Ok(Ok(Put::Pending(p))) if got.pending.iter().any(|q| q.digest == p.digest) => {
                    got.existed += 1;
                }
                Ok(Ok(Put::Pending(p))) => {
                    got.existed += u32::from(p.existed);
                    got.pending.push(*p);
                }
                Ok(Err(e)) => {
                    got.failed = Some(stop_reading(recv, blob_error(e)));
                    break;
                }
            }
        }
        got
    }

    /// Records a job's result, storing the blobs it carries (`blobs`, read from the stream)
    /// in the same transaction. A blob that fails refuses the result.
    pub(crate) async fn complete(
        &self,
        client: &Conn,
        lease: LeaseRef,
        output: JobOutput,
        blobs: Vec<InputRef>,
        claim: u32,
        recv: &mut quinn::RecvStream,
    ) -> Response {
        let since = now_ms();
        let Some(worker) = registered(client) else {
            return stop_reading(recv, unregistered());
        };
        if blobs.len() > MAX_COMPLETE_BLOBS {
            let message = format!(
                "{} blobs carried by a result, over the limit of {MAX_COMPLETE_BLOBS}",
                blobs.len()
            );
            return stop_reading(recv, error(ErrorCode::TooLarge, message));
        }
        // Only what the result names, as it names it: nothing else is read or stored.
        if let Some(b) = blobs.iter().find(|b| !output.blobs().any(|o| o == *b)) {
            let message = format!(
                "carried blob {} ({} bytes) is not one the result names with that size",
                b.digest, b.size
            );
            return stop_reading(recv, error(ErrorCode::Invalid, message));
        }
        // Before any blob is looked at: a collection that removes one after this is seen.
        let removals = self.blobs.removals();
        let until = self.upload_deadline(&blobs);
        let Received { pending, failed, .. } = self.receive(&blobs, recv, until).await;
        if let Some(failed) = failed {
            return failed;
        }
        let carried: BTreeMap<Digest, Arc<[u8]>> =
            pending.iter().map(|p| (p.digest, p.bytes.clone())).collect();
        if let Err((code, message)) = self.check_output(&output, &carried) {
            return error(code, message);
        }
        if let Err(answer) = self.check_signed(client, worker, lease, &output, &carried).await {
            return answer;
        }
        let (mut writes, rooms) = split(pending);
        // The blobs named and stored before: renewed with the result, and checked again under
        // the scheduler's lock (a collection may have removed one since they were looked at).
        let named: Vec<Digest> = output
            .blobs()
            .map(|b| b.digest)
            .filter(|d| !carried.contains_key(d) && self.blobs.renew(d, &mut writes))
            .collect();
        // The worker's key was checked at this request's start (`Queue::stream`), as for
        // a claim. No more is leased than the worker said it runs at once.
        let concurrency = lock(&client.worker).map_or(0, |(_, c)| c);
        let claim = claim.min(MAX_CLAIM).min(concurrency);
        let now = now_ms();
        let recorded = self.apply(
            |s| {
                if self.blobs.removed_since(removals, &named) {
                    return Ok((None, vec![]));
                }
                let (state, mut changes) = s.complete(now, worker, lease, output)?;
                // The next jobs, leased in the commit that records this result. The result
                // is applied by now, so a refused claim (it refuses only before changing
                // anything) leases nothing rather than failing the request.
                let mut leases = vec![];
                if claim > 0
                    && !s.unresponsive_since(worker, since)
                    && let Ok((more, claimed)) = s.claim(now, worker, claim, PAGE_BYTES)
                {
                    leases = more;
                    changes.extend(claimed);
                }
                Ok((Some((state, leases)), changes))
            },
            writes,
        );
        let answer = match recorded {
            Ok((None, _)) => error(
                ErrorCode::Unavailable,
                "a blob this result names was removed as unused: upload it again and report \
                 again",
            ),
            Ok((Some((state, leases)), done)) => match Self::durable(done).await {
                Ok(()) => Response::Recorded { job: lease.job, state, leases },
                Err(e) => e,
            },
            Err(r) => refusal(r),
        };
        if !rooms.is_empty() {
            self.blobs.committed();
        }
        answer
    }

    /// Records a submission, storing the envelopes it carries (`blobs`, read from `recv`)
    /// in the same transaction.
    pub(crate) async fn submit(
        &self,
        plan_blob: Digest,
        action_blob: Digest,
        blobs: Vec<InputRef>,
        recv: Option<&mut quinn::RecvStream>,
    ) -> Response {
        // Before any blob is looked at: a collection that removes one after this is seen.
        let removals = self.blobs.removals();
        let (carried, writes, rooms) = match recv {
            Some(recv) => {
                match self.carried_envelopes(plan_blob, action_blob, &blobs, recv).await {
                    Ok(got) => got,
                    Err(answer) => return answer,
                }
            }
            None => Default::default(),
        };
        let answer = self.submit_received(plan_blob, action_blob, removals, &carried, writes).await;
        if !rooms.is_empty() {
            self.blobs.committed();
        }
        answer
    }

    /// Reads the envelopes a submission carries: only its own two, each once and within
    /// the envelope's size limit. Small ones come back as writes for the submission's
    /// commit (and as bytes, not to be read back), large ones are stored as files at once.
    async fn carried_envelopes(
        &self,
        plan_blob: Digest,
        action_blob: Digest,
        blobs: &[InputRef],
        recv: &mut quinn::RecvStream,
    ) -> Result<Carried, Response> {
        let cap = MAX_ENVELOPE_BYTES as u64;
        let named = |b: &InputRef| b.digest == plan_blob || b.digest == action_blob;
        if let Some(b) = blobs.iter().find(|b| !named(b)) {
            let message = format!(
                "carried blob {} is neither the plan's nor the action's envelope",
                b.digest
            );
            return Err(stop_reading(recv, error(ErrorCode::Invalid, message)));
        }
        if blobs.len() > 2 || (blobs.len() == 2 && blobs[0].digest == blobs[1].digest) {
            let message = "a submission carries each of its two envelopes at most once";
            return Err(stop_reading(recv, error(ErrorCode::BadRequest, message)));
        }
        if let Some(b) = blobs.iter().find(|b| b.size > cap) {
            let message = format!(
                "carried envelope {} is {} bytes, over the limit of {cap}",
                b.digest, b.size
            );
            return Err(stop_reading(recv, error(ErrorCode::TooLarge, message)));
        }
        let until = self.upload_deadline(blobs);
        let Received { pending, failed, .. } = self.receive(blobs, recv, until).await;
        if let Some(failed) = failed {
            return Err(failed);
        }
        let carried = pending.iter().map(|p| (p.digest, p.bytes.clone())).collect();
        let (writes, rooms) = split(pending);
        Ok((carried, writes, rooms))
    }

    async fn submit_received(
        &self,
        plan_blob: Digest,
        action_blob: Digest,
        removals: u64,
        carried: &BTreeMap<Digest, Arc<[u8]>>,
        writes: Vec<Write>,
    ) -> Response {
        let now = now_ms();
        let now_s = now / 1000;
        let cap = MAX_ENVELOPE_BYTES as u64;
        let read = |d: Digest| async move {
            match carried.get(&d) {
                Some(bytes) => Ok(bytes.to_vec()),
                None => self.blobs.read(&d, cap).await,
            }
        };
        let (plan_bytes, action_bytes) = match (read(plan_blob).await, read(action_blob).await) {
            (Ok(p), Ok(a)) => (p, a),
            (Err(e), _) => return error(ErrorCode::Invalid, format!("plan envelope: {e}")),
            (_, Err(e)) => return error(ErrorCode::Invalid, format!("action envelope: {e}")),
        };
        let trust = match self.current_trust().await {
            Ok(t) => t,
            Err(refused) => return refused,
        };
        let vp = match agenix_proto::verify_plan(&plan_bytes, &trust, now_s, &Limits::ABSOLUTE) {
            Ok(v) => v,
            Err(e) => return error(ErrorCode::Invalid, format!("plan: {e}")),
        };
        let va = match agenix_proto::verify_action(&action_bytes, &trust, now_s, &self.fingerprint)
        {
            Ok(v) => v,
            Err(e) => return error(ErrorCode::Invalid, format!("action: {e}")),
        };
        if let Err(e) = va.check_plan(&vp) {
            return error(ErrorCode::Invalid, e.to_string());
        }
        let a = va.action();
        let components: Vec<Digest> =
            vp.plan().wasm_tasks().filter_map(|(_, w)| w.digest).collect();
        // Small blobs are renewed by writes committed with the submission.
        let mut renewals = writes;
        let mut missing: Vec<String> = components
            .iter()
            .filter(|d| !self.blobs.renew(d, &mut renewals))
            .map(|d| d.to_string())
            .collect();
        for input in &a.inputs {
            match self.blobs.size(&input.digest) {
                Some(size) if size == input.size => {
                    self.blobs.renew(&input.digest, &mut renewals);
                }
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
            envelope: action_blob,
            plan_envelope: plan_blob,
            components,
            expires_at: a.expires_at.saturating_mul(1000),
            plan: vp.digest(),
            inputs: a.inputs.clone(),
            priority: a.priority,
            max_attempts: a.max_attempts,
            requirements: Requirements::of(vp.plan()),
            signer: Some(va.signer()),
        };
        // What this commit writes (the small envelopes it carries) is not the store's to
        // lose meanwhile.
        let named: Vec<Digest> = [plan_blob, action_blob]
            .into_iter()
            .chain(sub.components.iter().copied())
            .chain(sub.inputs.iter().map(|i| i.digest))
            .filter(|d| !carried.contains_key(d))
            .collect();
        // Claims waiting for work are leased this submission's jobs in its commit; a key
        // that stopped being accepted is leased nothing (its claim finds out itself).
        let mut waiters = Vec::new();
        for w in self.waiting.take(a.inputs.len().max(1)) {
            if self.worker_refusal(w.key).await.is_none() {
                waiters.push(w);
            }
        }
        let result = self.apply(
            |s| {
                // Decided under the scheduler's lock, which a collection holds while it
                // chooses what to remove: a blob it chose, or removed since this
                // submission looked, is refused here; one this submission names first is
                // kept by it.
                if self.blobs.removed_since(removals, &named) {
                    return Ok((None, vec![]));
                }
                let (jobs, dup, mut changes) = s.submit(now, sub)?;
                let mut handed = Vec::with_capacity(waiters.len());
                for w in waiters {
                    if s.unresponsive_since(w.worker, w.since) {
                        continue;
                    }
                    // A claim refuses only before it changes anything; what it changed
                    // while leasing nothing (jobs promoted or expired) is stored too.
                    if let Ok((leases, claimed)) = s.claim(now, w.worker, w.max, PAGE_BYTES) {
                        changes.extend(claimed);
                        if !leases.is_empty() {
                            handed.push((w, leases));
                        }
                    }
                }
                Ok((Some((jobs, dup, handed)), changes))
            },
            renewals,
        );
        match result {
            Ok((None, _)) => error(
                ErrorCode::Unavailable,
                "a blob this submission names is being removed as unused: upload its blobs \
                 again and submit again",
            ),
            Ok((Some((jobs, duplicate, handed)), done)) => {
                if let Err(e) = Self::durable(done).await {
                    return e;
                }
                for (w, leases) in handed {
                    let worker = w.worker;
                    if let Err(leases) = w.answer(leases) {
                        self.take_back(worker, &leases).await;
                    }
                }
                self.ready.notify_waiters();
                tracing::info!(
                    jobs = jobs.len(),
                    duplicate,
                    plan = %vp.digest(),
                    signer = %va.signer(),
                    "submitted"
                );
                Response::Submitted { jobs, duplicate }
            }
            Err(r) => refusal(r),
        }
    }

    /// Leases up to `max` jobs to the worker registered on `client`, waiting up to `wait_ms`
    /// for one; stops waiting, leasing nothing, once `gone` resolves. A worker that lets a
    /// lease expire while this claim waits is leased nothing by it either (it may be dead
    /// with its connection not yet timed out; if alive, it claims again). The answer holds
    /// at most [`PAGE_BYTES`] of leases.
    pub(crate) async fn claim(
        &self,
        client: &Conn,
        max: u32,
        wait_ms: u32,
        gone: impl Future<Output = impl Sized>,
    ) -> Response {
        let Some(worker) = registered(client) else { return unregistered() };
        let max = max.clamp(1, MAX_CLAIM);
        let until = Instant::now() + Duration::from_millis(u64::from(wait_ms.min(30_000)));
        let since = now_ms();
        tokio::pin!(gone);
        loop {
            // A key that stopped being accepted while this claim waited is leased nothing.
            if let Some(refused) = self.worker_refusal(client.key).await {
                return refused;
            }
            let woken = self.ready.notified();
            let now = now_ms();
            let claimed = self.apply(
                |s| {
                    if s.unresponsive_since(worker, since) {
                        Ok((vec![], vec![]))
                    } else {
                        s.claim(now, worker, max, PAGE_BYTES)
                    }
                },
                vec![],
            );
            let (leases, done) = match claimed {
                Ok(v) => v,
                Err(r) => return refusal(r),
            };
            if !leases.is_empty() {
                if let Err(e) = Self::durable(done).await {
                    return e;
                }
                return Response::Leases { leases };
            }
            if Self::durable(done).await.is_err() || Instant::now() >= until {
                return Response::Leases { leases: vec![] };
            }
            // A submission may lease to this claim in its own commit (`handoff`).
            let (id, mut handed) = self.waiting.register(worker, client.key, max, since);
            let went = tokio::select! {
                biased;
                // Taken and given nothing: claim again.
                answer = &mut handed => match answer {
                    Ok(leases) => return Response::Leases { leases },
                    Err(_) => continue,
                },
                _ = tokio::time::timeout_at(until.into(), woken) => false,
                _ = &mut gone => true,
            };
            // Taken by a submission meanwhile: its answer is this claim's, or, the worker
            // gone, taken back.
            let leases =
                if self.waiting.leave(id) { vec![] } else { handed.await.unwrap_or_default() };
            if went {
                if !leases.is_empty() {
                    self.take_back(worker, &leases).await;
                }
                return Response::Leases { leases: vec![] };
            }
            if !leases.is_empty() {
                return Response::Leases { leases };
            }
        }
    }
}

/// Envelopes a submission carried: their bytes by digest, the writes storing the small
/// ones, and the room they hold until that commit has counted them.
type Carried = (BTreeMap<Digest, Arc<[u8]>>, Vec<Write>, Vec<crate::blobs::Reservation>);

/// The worker registered on this connection.
fn registered(client: &Conn) -> Option<u64> {
    lock(&client.worker).map(|(id, _)| id)
}

/// The answer to a worker request on a connection where no worker registered.
fn unregistered() -> Response {
    error(ErrorCode::NotRegistered, "no worker is registered on this connection: register first")
}

fn blob_error(e: BlobError) -> Response {
    let code = match &e {
        BlobError::TooLarge { .. } | BlobError::Quota { .. } => ErrorCode::TooLarge,
        BlobError::Mismatch { .. } | BlobError::Short { .. } => ErrorCode::Invalid,
        BlobError::Io(_) => ErrorCode::Internal,
    };
    error(code, e.to_string())
}

/// The answer to an upload refused part way: the rest of its bytes are not read.
fn stop_reading(recv: &mut quinn::RecvStream, answer: Response) -> Response {
    let _ = recv.stop(0u32.into());
    answer
}

/// Most bytes of small blobs one upload holds in memory before it commits them.
const HELD_BYTES: u64 = 1 << 20;

/// `blobs` in runs whose small blobs (those kept in the store) add up to at most
/// [`HELD_BYTES`]: each run is read, then committed, before the next.
fn held_groups(blobs: &[InputRef]) -> impl Iterator<Item = &[InputRef]> {
    let mut rest = blobs;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut held = 0u64;
        let mut end = 0;
        while end < rest.len() {
            let size = if rest[end].size <= INLINE_MAX { rest[end].size } else { 0 };
            if end > 0 && held + size > HELD_BYTES {
                break;
            }
            held += size;
            end += 1;
        }
        let (group, tail) = rest.split_at(end);
        rest = tail;
        Some(group)
    })
}

/// Blobs read from a request's stream.
struct Received {
    /// How many were stored already.
    existed: u32,
    /// Small ones, to be committed.
    pending: Vec<Pending>,
    /// The answer when one failed (those before it were read).
    failed: Option<Response>,
}

/// The writes that store `pending`, and the rooms they take until the store's count
/// includes them.
fn split(pending: Vec<Pending>) -> (Vec<Write>, Vec<crate::blobs::Reservation>) {
    pending.into_iter().map(|p| p.split()).unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_holds_at_most_held_bytes_of_small_blobs_at_once() {
        let blob = |size| InputRef { digest: Digest::of(b""), size };
        let small = INLINE_MAX;
        // 16 small blobs of 64 KiB fill 1 MiB; the 17th starts the next run. A large blob
        // (a file, streamed) holds nothing, and a run always takes at least one blob.
        let mut blobs = vec![blob(small); 17];
        blobs.insert(10, blob(INLINE_MAX + 1));
        let runs: Vec<usize> = held_groups(&blobs).map(<[InputRef]>::len).collect();
        assert_eq!(runs, vec![17, 1]);
        for run in held_groups(&blobs) {
            let held: u64 = run.iter().map(|b| b.size).filter(|s| *s <= INLINE_MAX).sum();
            assert!(held <= HELD_BYTES);
        }
        assert_eq!(held_groups(&[]).count(), 0);
        assert_eq!(held_groups(&[blob(1 << 30)]).count(), 1);
    }
}
