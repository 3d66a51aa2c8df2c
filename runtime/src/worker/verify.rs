//! What a worker checks of a verified plan before running any of it: that it can give every
//! task what it asks (tools in its allowlist with a ready jail and the variables allowed,
//! mounts configured, limits
//! within its ceilings). A failure is a cause of this worker's own: the job is declined and
//! goes to other workers. Signatures, signers, validity periods and digests are checked in
//! `lease.rs`, through proto.

use agenix_proto::{Run, Task, TaskId, VerifiedPlan};

use crate::exec::Resources;

/// What this worker lacks for a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lack {
    /// A native tool: not allowlisted, or the jail is not ready.
    Tool,
    /// An environment variable the tool's entry does not pass.
    Env,
    /// A mount the task names is not configured.
    Mount,
    /// A limit the task asks is over this worker's ceiling.
    Limit,
}

/// Why this worker cannot run a plan: the first task it cannot give what it asks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task {task}: {detail}")]
pub struct Unfit {
    /// The task.
    pub task: TaskId,
    /// What is missing.
    pub lack: Lack,
    /// Said for people.
    pub detail: String,
}

/// Whether this worker can run a native task as it asks: what it lacks if not, and why.
pub type NativeCheck<'a> = dyn Fn(&Task) -> Result<(), (Lack, String)> + 'a;

/// Whether this worker can give every task what it asks: tools in its allowlist, with a
/// ready jail and the variables and directories asked (as `native` says), mounts
/// configured, limits within its ceilings.
pub fn preflight(
    plan: &VerifiedPlan,
    resources: &Resources,
    native: &NativeCheck<'_>,
) -> Result<(), Unfit> {
    for task in &plan.plan().tasks {
        let unfit =
            |lack: Lack| move |detail: String| Unfit { task: task.id.clone(), lack, detail };
        if let Run::Native(_) = &task.run {
            native(task).map_err(|(lack, detail)| unfit(lack)(detail))?;
        }
        resources.grants(task).map_err(unfit(Lack::Mount))?;
        resources.limits(task).map_err(unfit(Lack::Limit))?;
    }
    Ok(())
}
