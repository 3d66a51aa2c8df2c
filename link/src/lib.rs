//! The QUIC link between the AGEniX processes: TLS 1.3 over quinn with ALPN `agenix/1`, no
//! 0-RTT, the queue's identity pinned by the sha256 of its public key, and a worker's own
//! key proved in the same handshake (`tls`); frames
//! read and written on QUIC streams (`frame`, over `agenix_proto::wire`'s codec); and the
//! client agx and agw share, with one typed call per request (`client`); and how the
//! daemons log (`logging`).
//!
//! `agenix-proto` is the contract and does no I/O; everything that touches the network, an
//! async runtime or TLS lives here, and the queue's scheduler (`agenix-queue-core`) never
//! depends on it.
//!
//! What this crate does not do: it never decides what a message means beyond its shape and
//! its error code, and it never trusts an answer: blobs are checked against their digests
//! and sizes against the caps the caller gives.

pub mod addr;
mod client;
mod error;
mod frame;
#[cfg(feature = "http")]
pub mod http;
pub mod logging;
mod tls;

pub use addr::{Address, Addresses};
pub use client::{
    Client, Credential, Heartbeat, Page, Recorded, Registration, Submitted, THROTTLE_PATIENCE,
    Upload,
};
pub use error::LinkError;
pub use frame::{read_frame, write_frame};
pub use tls::{
    IDLE_TIMEOUT, KEEP_ALIVE, client_tls, fingerprint_of, key_of, peer_key, provider,
    quic_client_config, transport, worker_verifier,
};
