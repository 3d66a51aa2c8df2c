//! The AGEniX queue, `agq`: a QUIC server that stores plans and jobs durably and leases
//! them to workers.
//!
//! The scheduling rules live in `agenix-queue-core` (pure, no I/O); this crate is the
//! adapters around it: `store` (redb, behind a narrow trait), `blobs` (content-addressed
//! files), `identity` (TLS key, role tokens), `server` (QUIC, authentication, limits,
//! handlers, group commit, the reaper).
//!
//! What it does not do: it never runs a task, and it is not trusted: workers verify every
//! plan, action and blob again. It verifies submissions too (defence in depth).

pub mod blobs;
pub mod identity;
pub mod server;
pub mod store;
