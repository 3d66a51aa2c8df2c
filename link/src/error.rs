//! Why a call over the link failed: the link itself, or the queue's answer (by its code).

use std::net::SocketAddr;

use agenix_proto::Digest;
use agenix_proto::wire::{ErrorCode, FrameError};

/// Why the link failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// TLS or QUIC setup failed.
    #[error("tls: {0}")]
    Tls(String),
    /// Could not connect (unreachable, refused, pin mismatch, timeout).
    #[error("cannot connect to {addr}: {message}")]
    Connect {
        /// The queue's address.
        addr: SocketAddr,
        /// Why.
        message: String,
    },
    /// The server at the address is not the queue whose key was pinned.
    #[error("the queue at {addr} is {found}, not the pinned {expected}: check the fingerprint")]
    WrongQueue {
        /// The address.
        addr: SocketAddr,
        /// The fingerprint pinned.
        expected: agenix_proto::Fingerprint,
        /// The fingerprint it presented.
        found: agenix_proto::Fingerprint,
    },
    /// The connection or a stream failed.
    #[error("connection: {0}")]
    Connection(String),
    /// A frame was bad.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The queue answered with an error.
    #[error("{request}: {code:?}: {message}")]
    Remote {
        /// The request.
        request: &'static str,
        /// The error code.
        code: ErrorCode,
        /// The queue's message.
        message: String,
    },
    /// The queue answered with a message that does not answer the request.
    #[error("{request}: the queue answered with {answer}")]
    Unexpected {
        /// The request.
        request: &'static str,
        /// The name of what came back.
        answer: &'static str,
    },
    /// A blob did not match its digest.
    #[error("blob {expected} arrived with digest {found}")]
    BlobMismatch {
        /// The digest asked for.
        expected: Digest,
        /// What the bytes hash to.
        found: Digest,
    },
}

impl LinkError {
    /// The queue's error code, when it answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Remote { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the link itself failed (no connection, a stream that broke or timed out),
    /// so the same call on a new connection may succeed; false when the queue answered,
    /// a blob was wrong, or a message was malformed or over the cap.
    pub fn is_link_failure(&self) -> bool {
        !matches!(
            self,
            Self::Remote { .. }
                | Self::WrongQueue { .. }
                | Self::Unexpected { .. }
                | Self::BlobMismatch { .. }
                | Self::Frame(FrameError::TooLarge(_) | FrameError::Invalid(_))
        )
    }
}
