//! The wire protocol between agx/agw and agq: one request per bidirectional QUIC stream,
//! each message a frame of `u32` big-endian length + JSON (at most [`MAX_FRAME`] bytes).
//! Blobs follow their header frame as raw bytes (`put_blobs` in the request, `blob` in the
//! response) and are checked against their digests on arrival.
//!
//! Nothing that grows with user data travels inside a frame unbounded: signed envelopes,
//! inputs, outputs and large per-task reports travel as blobs named by digest; answers that
//! list things (leases, jobs, workers) stop at [`PAGE_BYTES`] and say where to go on.
//!
//! The first request on a connection is [`Request::Hello`]; every later request is checked
//! against the role it authenticated. Planners and observers authenticate with their role's
//! token; a worker with its own key, in the TLS handshake. A worker's requests act for the
//! worker registered on the same connection.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::action::{Fingerprint, InputRef};
use crate::digest::Digest;
use crate::ids::ActionId;
use crate::job::{
    Capabilities, JobId, JobOutput, JobRecord, JobState, Lease, LeaseRef, StateKind, WorkerRecord,
};

/// The ALPN protocol id.
pub const ALPN: &[u8] = b"agenix/1";
/// The protocol version in `Hello`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame, in bytes.
pub const MAX_FRAME: usize = 1 << 20;
/// Most items one listing returns.
pub const MAX_PAGE: u32 = 1000;
/// Most bytes of items (leases, jobs, workers) one answer carries: half a frame, so an
/// answer is never over [`MAX_FRAME`] whatever its items hold.
pub const PAGE_BYTES: usize = MAX_FRAME / 2;
/// Most blobs one `put_blobs` request carries.
pub const MAX_BATCH_BLOBS: usize = 1000;
/// Most leases one heartbeat names.
pub const MAX_HEARTBEAT_LEASES: usize = 4096;
/// Most blobs one `complete` carries (its signed result, its output and its reports).
pub const MAX_COMPLETE_BLOBS: usize = 3;
/// Longest worker instance secret, in bytes.
pub const MAX_INSTANCE: usize = 128;
/// The most jobs one claim (or one `complete` with `claim`) is leased; more is asked as this.
pub const MAX_CLAIM: u32 = 64;

/// Who a client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientRole {
    /// Submits, watches, reads results, cancels.
    Planner,
    /// Registers, claims, heartbeats, completes, fails, reads blobs.
    Worker,
    /// Reads only.
    Observer,
}

impl ClientRole {
    /// Every role.
    pub const ALL: [Self; 3] = [Self::Planner, Self::Worker, Self::Observer];

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Planner => "planner",
            Self::Worker => "worker",
            Self::Observer => "observer",
        }
    }
}

impl std::str::FromStr for ClientRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?} (planner, worker or observer)"))
    }
}

/// Filters for listing jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFilter {
    /// Only jobs in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateKind>,
    /// Only jobs of this action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionId>,
}

/// A request. Variants without fields are empty structs so that unknown fields are refused
/// for them too (serde ignores extra fields of an internally tagged unit variant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Authenticate this connection (first request only). Planners and observers give
    /// their role's token; a worker gives none: it is the key it proved in the TLS
    /// handshake, which the queue must have enrolled.
    Hello {
        /// [`PROTOCOL_VERSION`].
        version: u32,
        /// The role asked for.
        role: ClientRole,
        /// The role's token (planner and observer).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// Store blobs: their bytes follow this frame, one after another, in this order. A
    /// batch counts as one request, however many blobs it holds.
    PutBlobs {
        /// Each blob's digest and size.
        blobs: Vec<InputRef>,
        /// Keep them until removed explicitly (components pushed by `agx au push`), rather
        /// than for as long as a job refers to them.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        keep: bool,
    },
    /// Stop keeping a blob stored with `keep`: it is then collected once nothing refers to
    /// it.
    Unkeep {
        /// The blob.
        digest: Digest,
    },
    /// Fetch a blob; the response's raw bytes follow its frame.
    GetBlob {
        /// The blob.
        digest: Digest,
    },
    /// Submit a signed plan and a signed action for it, each uploaded as a blob first or
    /// carried: the bytes of the envelopes named in `blobs` follow this frame, one after
    /// another in that order, and are stored in the commit that records the submission.
    Submit {
        /// The blob holding the plan envelope.
        plan: Digest,
        /// The blob holding the action envelope.
        action: Digest,
        /// The envelopes carried (at most the two, each at most
        /// [`MAX_ENVELOPE_BYTES`](crate::envelope::MAX_ENVELOPE_BYTES)).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        blobs: Vec<InputRef>,
    },
    /// Cancel a job.
    Cancel {
        /// The job.
        job: JobId,
    },
    /// List jobs, oldest first, after `after`: at most `limit` (capped at [`MAX_PAGE`]) and
    /// at most [`PAGE_BYTES`] of them; the answer says where the next page starts.
    ListJobs {
        /// Filters.
        #[serde(default)]
        filter: JobFilter,
        /// Start after this job.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<JobId>,
        /// At most this many.
        limit: u32,
    },
    /// One job.
    ShowJob {
        /// The job.
        job: JobId,
    },
    /// One job's entries in the audit log, after entry `after`, with their inclusion
    /// proofs in the latest signed checkpoint.
    History {
        /// The job.
        job: JobId,
        /// Start after this entry.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
    },
    /// Registered workers, by id, after `after`, paged like jobs.
    ListWorkers {
        /// Start after this worker id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
        /// At most this many.
        #[serde(default = "default_page")]
        limit: u32,
    },
    /// Counts by state and recent throughput.
    Stats {},
    /// Announce a worker and what it offers, binding it to this connection. A worker that
    /// registers again with the same `instance` (after reconnecting, or after the queue
    /// restarted) is the same worker: same id, same leases.
    Register {
        /// What it offers.
        capabilities: Capabilities,
        /// A secret the worker process chose at random when it started (at most
        /// [`MAX_INSTANCE`] bytes); its id is derived from it.
        instance: String,
    },
    /// Ask for up to `max` jobs, waiting up to `wait_ms` for one.
    Claim {
        /// Most jobs wanted.
        max: u32,
        /// How long to wait when none is ready.
        wait_ms: u32,
    },
    /// Keep leases alive; learn which were cancelled or lost.
    Heartbeat {
        /// The leases held (at most [`MAX_HEARTBEAT_LEASES`]).
        leases: Vec<LeaseRef>,
    },
    /// Report a job's result. The blobs it names are stored first, or carried: their
    /// bytes follow this frame, one after another in the order of `blobs`, and are stored
    /// with the result (at most [`MAX_COMPLETE_BLOBS`]). With `claim`, the same request
    /// asks for up to that many jobs more, leased in the commit that records the result
    /// and answered with it, without waiting when none is ready.
    Complete {
        /// The lease.
        lease: LeaseRef,
        /// What it produced.
        output: JobOutput,
        /// The blobs carried.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        blobs: Vec<InputRef>,
        /// Most jobs wanted with the answer (0: none; at most [`MAX_CLAIM`]).
        #[serde(default, skip_serializing_if = "is_zero")]
        claim: u32,
    },
    /// Report that a job could not be run: it is retried (when `retryable` and attempts
    /// remain) or dead.
    Fail {
        /// The lease.
        lease: LeaseRef,
        /// Why.
        reason: String,
        /// Whether another attempt may succeed.
        retryable: bool,
    },
    /// Give a job back without running it, for a cause local to this worker (its trust
    /// file, its clock, a tool or mount it lacks, a job it already ran): the attempt is not
    /// counted, and the job goes to other workers first.
    Release {
        /// The lease.
        lease: LeaseRef,
        /// Why.
        reason: String,
    },
}

fn default_page() -> u32 {
    MAX_PAGE
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Request {
    /// The request's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::PutBlobs { .. } => "put_blobs",
            Self::Unkeep { .. } => "unkeep",
            Self::GetBlob { .. } => "get_blob",
            Self::Submit { .. } => "submit",
            Self::Cancel { .. } => "cancel",
            Self::ListJobs { .. } => "list_jobs",
            Self::ShowJob { .. } => "show_job",
            Self::History { .. } => "history",
            Self::ListWorkers { .. } => "list_workers",
            Self::Stats {} => "stats",
            Self::Register { .. } => "register",
            Self::Claim { .. } => "claim",
            Self::Heartbeat { .. } => "heartbeat",
            Self::Complete { .. } => "complete",
            Self::Fail { .. } => "fail",
            Self::Release { .. } => "release",
        }
    }

    /// Whether `role` may make this request.
    pub fn allowed_for(&self, role: ClientRole) -> bool {
        use ClientRole::*;
        match self {
            Self::Hello { .. } => true,
            Self::ListJobs { .. }
            | Self::ShowJob { .. }
            | Self::ListWorkers { .. }
            | Self::Stats {}
            | Self::GetBlob { .. } => true,
            Self::Submit { .. } | Self::Cancel { .. } | Self::Unkeep { .. } => role == Planner,
            Self::History { .. } => role != Worker,
            Self::PutBlobs { keep, .. } => role == Planner || (role == Worker && !keep),
            Self::Register { .. }
            | Self::Claim { .. }
            | Self::Heartbeat { .. }
            | Self::Complete { .. }
            | Self::Fail { .. }
            | Self::Release { .. } => role == Worker,
        }
    }
}

/// Why a request failed; stable for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No valid Hello yet, a wrong token, or a worker key that is not enrolled (or is
    /// revoked).
    Unauthenticated,
    /// The role may not make this request.
    Forbidden,
    /// The request is malformed.
    BadRequest,
    /// A signature, schema or policy check failed.
    Invalid,
    /// No such job or blob.
    NotFound,
    /// The same action id with different bytes, or a cancel of a finished job.
    Conflict,
    /// A lease that is no longer current (fencing).
    StaleLease,
    /// Over a size limit.
    TooLarge,
    /// Too many requests.
    RateLimited,
    /// The queue cannot serve this now; retry.
    Unavailable,
    /// The queue failed.
    Internal,
    /// A worker request on a connection where no worker registered (or the queue forgot
    /// it, having restarted): register, then ask again.
    NotRegistered,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [Self; 12] = [
        Self::Unauthenticated,
        Self::Forbidden,
        Self::BadRequest,
        Self::Invalid,
        Self::NotFound,
        Self::Conflict,
        Self::StaleLease,
        Self::TooLarge,
        Self::RateLimited,
        Self::Unavailable,
        Self::Internal,
        Self::NotRegistered,
    ];

    /// The code's name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::BadRequest => "bad_request",
            Self::Invalid => "invalid",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::StaleLease => "stale_lease",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::NotRegistered => "not_registered",
        }
    }
}

/// Counts and throughput.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueStats {
    /// Jobs by state name.
    pub jobs: BTreeMap<String, u64>,
    /// Jobs submitted in the last minute.
    pub submitted_last_minute: u64,
    /// Jobs finished in the last minute.
    pub finished_last_minute: u64,
    /// Workers seen in the last minute.
    pub workers: u64,
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[allow(
    clippy::large_enum_variant,
    reason = "one message per stream, moved once, never stored in bulk"
)]
pub enum Response {
    /// Authenticated.
    HelloOk {
        /// [`PROTOCOL_VERSION`].
        version: u32,
        /// The queue's identity (the audience of its actions).
        queue: Fingerprint,
        /// The largest blob it accepts, in bytes (`agq serve --max-blob`): a client reads
        /// no more of an input than the queue would take.
        max_blob: u64,
    },
    /// The blobs are stored.
    BlobsStored {
        /// How many of them were already there.
        existed: u32,
    },
    /// A blob is no longer kept on purpose.
    Unkept {
        /// Whether it was kept before.
        was_kept: bool,
    },
    /// The blob's raw bytes follow.
    Blob {
        /// Its digest.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// The action's jobs.
    Submitted {
        /// One per input.
        jobs: Vec<JobId>,
        /// True when this exact action had been submitted before.
        duplicate: bool,
    },
    /// A job after a cancel request.
    Cancel {
        /// The job.
        job: JobId,
        /// Its state now (`leased` with cancel requested until its worker stops).
        state: JobState,
    },
    /// A page of jobs.
    Jobs {
        /// The jobs.
        jobs: Vec<JobRecord>,
        /// Where the next page starts, if there is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<JobId>,
    },
    /// One job.
    Job {
        /// The job.
        job: JobRecord,
    },
    /// A page of a job's audit entries.
    History {
        /// The entries, oldest first.
        entries: Vec<crate::audit::Proven>,
        /// The latest checkpoint the queue signed (C2SP signed note), which each entry's
        /// proof leads to; none before the first.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checkpoint: Option<String>,
        /// The queue's identity key that signs checkpoints (base64 of its 32 bytes): its
        /// fingerprint is the one the client pinned.
        key: String,
        /// Where the next page starts, if there is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<u64>,
    },
    /// A page of workers.
    Workers {
        /// The workers.
        workers: Vec<WorkerRecord>,
        /// Where the next page starts, if there is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<u64>,
    },
    /// Stats.
    Stats {
        /// The stats.
        stats: QueueStats,
    },
    /// A worker's id and timing.
    Registered {
        /// Its id.
        worker: u64,
        /// How long a lease lasts without a heartbeat, in ms.
        lease_ms: u64,
        /// How often to heartbeat, in ms.
        heartbeat_ms: u64,
    },
    /// Jobs to run (possibly none).
    Leases {
        /// The leases.
        leases: Vec<Lease>,
    },
    /// Heartbeat answer.
    HeartbeatOk {
        /// Leases extended.
        extended: Vec<LeaseRef>,
        /// Leases whose jobs were cancelled: stop them and report.
        cancelled: Vec<LeaseRef>,
        /// Leases no longer held (expired or superseded): stop them.
        lost: Vec<LeaseRef>,
    },
    /// A result or failure was recorded.
    Recorded {
        /// The job.
        job: JobId,
        /// Its state now.
        state: JobState,
        /// The jobs a `complete` with `claim` was leased (possibly none).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        leases: Vec<Lease>,
    },
    /// The request failed.
    Error {
        /// Why, for scripts.
        code: ErrorCode,
        /// Why, for people.
        message: String,
    },
}

impl Response {
    /// The answer's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::HelloOk { .. } => "hello_ok",
            Self::BlobsStored { .. } => "blobs_stored",
            Self::Unkept { .. } => "unkept",
            Self::Blob { .. } => "blob",
            Self::Submitted { .. } => "submitted",
            Self::Cancel { .. } => "cancel",
            Self::Jobs { .. } => "jobs",
            Self::Job { .. } => "job",
            Self::History { .. } => "history",
            Self::Workers { .. } => "workers",
            Self::Stats { .. } => "stats",
            Self::Registered { .. } => "registered",
            Self::Leases { .. } => "leases",
            Self::HeartbeatOk { .. } => "heartbeat_ok",
            Self::Recorded { .. } => "recorded",
            Self::Error { .. } => "error",
        }
    }
}

/// A frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The stream failed or ended early.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    /// The frame is over the limit.
    #[error("frame of {0} bytes is over the limit of {MAX_FRAME}")]
    TooLarge(usize),
    /// The frame is not a valid message.
    #[error("invalid message: {0}")]
    Invalid(String),
}

/// How many bytes `msg` takes in a frame (its JSON).
pub fn json_len<T: Serialize>(msg: &T) -> usize {
    serde_json::to_vec(msg).map_or(usize::MAX, |v| v.len())
}

/// Encodes one frame: the body's length as a big-endian `u32`, then the body (the
/// message's JSON). Refused, with nothing produced, when the body is over [`MAX_FRAME`].
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let body = serde_json::to_vec(msg).map_err(|e| FrameError::Invalid(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge(body.len()))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// The body length a frame header announces, refused when over [`MAX_FRAME`] (before any
/// of the body is read).
pub fn frame_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Parses a frame's body strictly (duplicate keys and unknown fields rejected).
pub fn decode_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    crate::json::from_slice(body, MAX_FRAME).map_err(|e| FrameError::Invalid(e.to_string()))
}

/// Splits the first frame off `bytes` and parses it: the message and the bytes after it.
/// Bytes that end inside the frame are [`FrameError::Io`] (`UnexpectedEof`).
pub fn decode_frame<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<(T, &[u8]), FrameError> {
    let eof = || FrameError::Io(std::io::ErrorKind::UnexpectedEof.into());
    let (header, rest) = bytes.split_first_chunk::<4>().ok_or_else(eof)?;
    let len = frame_len(*header)?;
    let (body, rest) = rest.split_at_checked(len).ok_or_else(eof)?;
    Ok((decode_body(body)?, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire form of requests is pinned: agx, agw and agq must never drift apart.
    #[test]
    fn wire_form_is_pinned() {
        let cases = [
            (
                Request::Hello { version: 1, role: ClientRole::Planner, token: Some("t".into()) },
                r#"{"type":"hello","version":1,"role":"planner","token":"t"}"#,
            ),
            (
                Request::Hello { version: 1, role: ClientRole::Worker, token: None },
                r#"{"type":"hello","version":1,"role":"worker"}"#,
            ),
            (Request::History { job: JobId(3), after: None }, r#"{"type":"history","job":3}"#),
            (
                Request::ListWorkers { after: None, limit: 5 },
                r#"{"type":"list_workers","limit":5}"#,
            ),
            (
                Request::Heartbeat {
                    leases: vec![LeaseRef { job: JobId(3), epoch: crate::job::LeaseEpoch(2) }],
                },
                r#"{"type":"heartbeat","leases":[{"job":3,"epoch":2}]}"#,
            ),
            (
                Request::Release {
                    lease: LeaseRef { job: JobId(3), epoch: crate::job::LeaseEpoch(2) },
                    reason: "r".into(),
                },
                r#"{"type":"release","lease":{"job":3,"epoch":2},"reason":"r"}"#,
            ),
            (
                Request::Complete {
                    lease: LeaseRef { job: JobId(3), epoch: crate::job::LeaseEpoch(2) },
                    output: JobOutput {
                        succeeded: true,
                        failure: None,
                        reports: crate::job::Reports::Inline(vec![]),
                        output: None,
                        result: None,
                    },
                    blobs: vec![InputRef { digest: Digest::of(b""), size: 0 }],
                    claim: 0,
                },
                concat!(
                    r#"{"type":"complete","lease":{"job":3,"epoch":2},"#,
                    r#""output":{"succeeded":true,"reports":{"inline":[]}},"blobs":[{"digest":"#,
                    r#""sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","#,
                    r#""size":0}]}"#
                ),
            ),
            (
                Request::Complete {
                    lease: LeaseRef { job: JobId(3), epoch: crate::job::LeaseEpoch(2) },
                    output: JobOutput {
                        succeeded: false,
                        failure: None,
                        reports: crate::job::Reports::Inline(vec![]),
                        output: None,
                        result: None,
                    },
                    blobs: vec![],
                    claim: 2,
                },
                concat!(
                    r#"{"type":"complete","lease":{"job":3,"epoch":2},"#,
                    r#""output":{"succeeded":false,"reports":{"inline":[]}},"claim":2}"#
                ),
            ),
            (
                Request::Submit {
                    plan: Digest::of(b""),
                    action: Digest::of(b""),
                    blobs: vec![InputRef { digest: Digest::of(b""), size: 0 }],
                },
                concat!(
                    r#"{"type":"submit","#,
                    r#""plan":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","#,
                    r#""action":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","#,
                    r#""blobs":[{"digest":"#,
                    r#""sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","#,
                    r#""size":0}]}"#
                ),
            ),
        ];
        for (req, json) in cases {
            assert_eq!(serde_json::to_string(&req).unwrap(), json);
            assert_eq!(
                crate::json::from_slice::<Request>(json.as_bytes(), MAX_FRAME).unwrap(),
                req
            );
        }
        let recorded = Response::Recorded {
            job: JobId(3),
            state: JobState::Succeeded,
            leases: vec![Lease {
                lease: LeaseRef { job: JobId(4), epoch: crate::job::LeaseEpoch(1) },
                attempt: 1,
                deadline: 9,
                plan: Digest::of(b""),
                action: Digest::of(b""),
                input: 0,
            }],
        };
        let json = concat!(
            r#"{"type":"recorded","job":3,"state":{"state":"succeeded"},"leases":[{"lease":"#,
            r#"{"job":4,"epoch":1},"attempt":1,"deadline":9,"#,
            r#""plan":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","#,
            r#""action":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","#,
            r#""input":0}]}"#
        );
        assert_eq!(serde_json::to_string(&recorded).unwrap(), json);
        assert_eq!(
            crate::json::from_slice::<Response>(json.as_bytes(), MAX_FRAME).unwrap(),
            recorded
        );
        let err = Response::Error { code: ErrorCode::StaleLease, message: "m".into() };
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"type":"error","code":"stale_lease","message":"m"}"#
        );
    }

    #[test]
    fn unknown_fields_and_types_are_rejected() {
        assert!(
            crate::json::from_slice::<Request>(br#"{"type":"stats","x":1}"#, MAX_FRAME).is_err()
        );
        assert!(crate::json::from_slice::<Request>(br#"{"type":"shell"}"#, MAX_FRAME).is_err());
    }

    #[test]
    fn error_code_names_are_their_wire_names() {
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn roles_are_enforced_per_request() {
        let submit = Request::Cancel { job: JobId(1) };
        assert!(submit.allowed_for(ClientRole::Planner));
        assert!(!submit.allowed_for(ClientRole::Worker));
        assert!(!submit.allowed_for(ClientRole::Observer));
        let claim = Request::Claim { max: 1, wait_ms: 0 };
        assert!(claim.allowed_for(ClientRole::Worker));
        assert!(!claim.allowed_for(ClientRole::Planner));
        assert!(Request::Stats {}.allowed_for(ClientRole::Observer));
        let keep = Request::PutBlobs { blobs: vec![], keep: true };
        assert!(keep.allowed_for(ClientRole::Planner));
        assert!(!keep.allowed_for(ClientRole::Worker), "only planners keep blobs");
        assert!(Request::PutBlobs { blobs: vec![], keep: false }.allowed_for(ClientRole::Worker));
    }

    #[test]
    fn frames_round_trip_and_oversized_frames_are_refused() {
        let mut buf = encode_frame(&Request::Stats {}).unwrap();
        buf.extend_from_slice(b"after");
        let (back, rest): (Request, _) = decode_frame(&buf).unwrap();
        assert_eq!(back, Request::Stats {});
        assert_eq!(rest, b"after");
        let mut huge = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(matches!(decode_frame::<Request>(&huge), Err(FrameError::TooLarge(_))));
        assert_eq!(frame_len((MAX_FRAME as u32).to_be_bytes()).unwrap(), MAX_FRAME);
        let mut truncated = 100u32.to_be_bytes().to_vec();
        truncated.extend_from_slice(b"{\"type\"");
        assert!(matches!(decode_frame::<Request>(&truncated), Err(FrameError::Io(_))));
        assert!(matches!(decode_frame::<Request>(&[0, 0]), Err(FrameError::Io(_))));
        let big = Response::Error { code: ErrorCode::Internal, message: "x".repeat(MAX_FRAME) };
        assert!(matches!(encode_frame(&big), Err(FrameError::TooLarge(_))));
    }
}
