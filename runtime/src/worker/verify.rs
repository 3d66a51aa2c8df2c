//! The verification chain, before anything of a lease runs: the action's signature by a
//! trusted, unrevoked signer, its expiry and audience; the plan's signature, rules and
//! limits within this worker's ceilings; the plan digest the action names; the input the
//! queue names being one the action names; and this worker being able to give every task
//! what it asks (tools, mounts, limits). Any failure: the job fails, non-retryably, and
//! nothing runs. Component and input bytes are checked against their digests when loaded.

use agenix_proto::job::Lease;
use agenix_proto::{
    Fingerprint, Limits, Run, Trust, VerifiedAction, VerifiedPlan, verify_action, verify_plan,
};

use crate::exec::Resources;

/// A lease whose chain verified.
#[derive(Debug)]
pub struct Verified {
    /// The plan.
    pub plan: VerifiedPlan,
    /// The action.
    pub action: VerifiedAction,
}

/// Checks everything a lease claims, at `now` (Unix seconds).
pub fn verify(
    lease: &Lease,
    trust: &Trust,
    now: u64,
    queue: &Fingerprint,
    ceilings: &Limits,
) -> Result<Verified, String> {
    let action = verify_action(&lease.action.to_json(), trust, now, queue)
        .map_err(|e| format!("action: {e}"))?;
    let plan = verify_plan(&lease.plan.to_json(), trust, now, ceilings)
        .map_err(|e| format!("plan: {e}"))?;
    action.check_plan(&plan).map_err(|e| e.to_string())?;
    let inputs = &action.action().inputs;
    let named = match &lease.input {
        None => inputs.is_empty(),
        Some(i) => inputs.contains(i),
    };
    if !named {
        return Err("the queue handed out an input the action does not name".into());
    }
    Ok(Verified { plan, action })
}

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
