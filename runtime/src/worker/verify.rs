//! What a worker checks of a verified plan before running any of it: that it can give every
//! task what it asks (tools in its allowlist with a ready jail, mounts configured, limits
//! within its ceilings). A failure is a cause of this worker's own: the job is declined and
//! goes to other workers. Signatures, signers, validity periods and digests are checked in
//! `lease.rs`, through proto.

use agenix_proto::{Run, VerifiedPlan};

use crate::exec::Resources;

/// Whether this worker can give every task what it asks: tools in its allowlist (with a
/// ready jail), mounts configured, limits within its ceilings.
pub fn preflight(
    plan: &VerifiedPlan,
    resources: &Resources,
    tools: &dyn Fn(&agenix_proto::ToolName) -> Result<(), String>,
) -> Result<(), String> {
    for task in &plan.plan().tasks {
        if let Run::Native(n) = &task.run {
            tools(&n.tool).map_err(|e| format!("task {}: {e}", task.id))?;
        }
        resources.grants(task).map_err(|e| format!("task {}: {e}", task.id))?;
        resources.limits(task).map_err(|e| format!("task {}: {e}", task.id))?;
    }
    Ok(())
}
