//! The worker runtime: the DAG executor shared by the worker and `agx run`, the runner that
//! puts each task in its sandbox, the local content-addressed component store, and the
//! worker itself (`worker`: claim loop, verification chain, heartbeats, reconnects).
//!
//! The executor ([`exec::execute`]) accepts only an [`exec::Executable`]: a verified plan,
//! or one the user explicitly ran unsigned. Scheduling inside a job is the pure
//! [`dag::Dag`]; the executor only drives it.
//!
//! What this crate does not do: it does not verify signatures (proto does, before an
//! `Executable` exists) and it does not sandbox anything itself (host does).

pub mod dag;
pub mod exec;
pub mod files;
pub mod store;
pub mod tools;
pub mod worker;
