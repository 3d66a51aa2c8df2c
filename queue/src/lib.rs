//! The AGEniX queue, `agq`: a QUIC server that stores plans and jobs durably and leases
//! them to workers.
//!
//! The scheduling rules live in `agenix-queue-core` (pure, no I/O); this crate is the
//! adapters around it: `store` (redb, behind a narrow trait, its records in `record`'s
//! binary encoding; `pg` the same trait on PostgreSQL), `blobs` (content-addressed
//! files with a quota, collected when nothing refers to them), `identity` (TLS key, role
//! tokens), `limits` (connections and request budgets by role), `server` (QUIC,
//! authentication, group commit, the reaper, the collector), `handlers` (one per
//! request), `handoff` (claims waiting for work, leased to by submissions), `trust` (the trust file, read again when it changes) and `audit` (the audit
//! log: entries chained by hash in a Merkle tree, signed checkpoints, verification).
//!
//! What it does not do: it never runs a task, and it is not trusted: workers verify every
//! plan, action and blob again. It verifies submissions too (defence in depth).

pub mod audit;
mod auditor;
pub mod blobs;
pub mod handlers;
pub mod handoff;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod pg;
mod record;
pub mod server;
pub mod store;
pub mod trust;
pub mod web;

/// Reads the regular file at `path`, refusing one over `max` bytes (checked while reading)
/// and anything that is not a regular file: a FIFO, a device or a directory would block or
/// never end (it is opened without blocking, and checked before it is read).
pub fn read_capped(path: &std::path::Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("over the limit of {max} bytes"),
        ));
    }
    Ok(bytes)
}
