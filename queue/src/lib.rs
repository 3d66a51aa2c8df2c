//! The AGEniX queue, `agq`: a QUIC server that stores plans and jobs durably and leases
//! them to workers.
//!
//! The scheduling rules live in `agenix-queue-core` (pure, no I/O); this crate is the
//! adapters around it: `store` (redb, behind a narrow trait), `blobs` (content-addressed
//! files with a quota, collected when nothing refers to them), `identity` (TLS key, role
//! tokens), `limits` (connections and request budgets by role), `server` (QUIC,
//! authentication, group commit, the reaper, the collector) and `handlers` (one per
//! request).
//!
//! What it does not do: it never runs a task, and it is not trusted: workers verify every
//! plan, action and blob again. It verifies submissions too (defence in depth).

pub mod blobs;
pub mod handlers;
pub mod identity;
pub mod limits;
pub mod server;
pub mod store;
