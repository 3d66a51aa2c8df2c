//! One task in one sandbox.
//!
//! `task` is the contract both sandboxes share: one task spec with one check of its
//! arguments, one result, one error. `wasm` runs AUs (WASI components) on wasmtime under fuel, memory, wall-clock, output and
//! scratch-space limits with only the directories a task was granted; `native` runs
//! allowlisted Unix tools in an unprivileged Linux-namespace jail; `output` captures and
//! sanitizes what tasks print; `report` turns a run into the [`agenix_proto::TaskReport`]
//! that wasm and native tasks share.
//!
//! What this crate does not do: it never talks to the queue, never verifies signatures and
//! never decides what may run — callers hand it verified, resolved work. A guest failing is
//! an [`agenix_proto::Outcome`], not an error; `Err` means the host itself broke.

pub mod native;
pub mod output;
pub mod process_dir;
pub mod report;
pub mod task;
pub mod wasm;

pub use task::{Finished, HostError, NativeTask, Task, WasmTask};

use std::path::PathBuf;

use agenix_proto::Access;

/// A directory granted to a task: an operator-configured host directory, seen by the task
/// at a path its plan names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Where it is on the host (operator configuration, never a plan).
    pub host: PathBuf,
    /// Where the task sees it.
    pub guest: String,
    /// Read-only or read-write.
    pub access: Access,
}
