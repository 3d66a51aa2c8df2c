//! The fixed world the envelope targets verify in: one trusted signer, a key that is not
//! trusted, a revoked key, a clock, a queue, and a valid plan and action signed by the
//! trusted signer.

use std::sync::OnceLock;

use agenix_proto::action::ACTION_SCHEMA;
use agenix_proto::envelope::{sign_action, sign_plan};
use agenix_proto::keys::{SigningKey, signing_key_from_seed};
use agenix_proto::{Action, ActionId, Digest, Fingerprint, KeyId, Plan, Role, Trust};

/// The verifier's clock, in Unix seconds.
pub const NOW: u64 = 1_764_060_000;

/// The one signer `trust()` believes, for plans and actions.
pub fn trusted_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| signing_key_from_seed(&[1; 32]))
}

/// A key `trust()` has never heard of.
pub fn untrusted_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| signing_key_from_seed(&[2; 32]))
}

/// A key `trust()` lists as revoked (and trusts for nothing).
pub fn revoked_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| signing_key_from_seed(&[3; 32]))
}

/// The trust file: `fuzz` (the trusted key) for both roles, and the revoked key's id.
pub fn trust() -> &'static Trust {
    static TRUST: OnceLock<Trust> = OnceLock::new();
    TRUST.get_or_init(|| {
        let mut t = Trust::new();
        // A fixed, valid name and a key from a fixed seed: adding it cannot fail.
        // Trusted for plans, actions and results alike, so each verification can succeed.
        let _ =
            t.add("fuzz", trusted_key().verifying_key(), &[Role::Plan, Role::Action, Role::Worker]);
        t.revoke(KeyId::of(&revoked_key().verifying_key()));
        t
    })
}

/// [`trust`] after its one signer was revoked: signatures by it must now be refused as revoked.
pub fn trust_revoked() -> &'static Trust {
    static TRUST: OnceLock<Trust> = OnceLock::new();
    TRUST.get_or_init(|| {
        let mut t = trust().clone();
        t.revoke(KeyId::of(&trusted_key().verifying_key()));
        t
    })
}

/// The queue actions are addressed to.
pub fn audience() -> Fingerprint {
    Fingerprint(Digest::of(b"agenix fuzz queue"))
}

/// A valid signed-form plan: wasm and native tasks, fan-out and fan-in, a mount, env, limits.
pub fn plan_json() -> String {
    format!(
        r#"{{"schema":"agenix.plan/v1","plan_id":"{plan_id}","name":"fuzz-seed",
"description":"grep, cut, sort and a fan-in","issued_at":{NOW},"expires_at":{expires},
"tasks":[
{{"id":"errors","run":{{"wasm":{{"name":"grep","digest":"{grep}"}}}},"args":["-i","error"],
"stdin":{{"input":true}},"limits":{{"fuel":1000000,"memory_bytes":16777216,"timeout_ms":5000}}}},
{{"id":"messages","run":{{"wasm":{{"name":"cut","digest":"{cut}"}}}},"args":["-d"," ","-f","3-"],
"stdin":{{"task":"errors"}},"env":{{"LC_ALL":"C"}}}},
{{"id":"sorted","run":{{"native":{{"tool":"sort"}}}},"stdin":{{"task":"messages"}},
"mounts":[{{"name":"data","path":"/data","access":"ro"}}],"limits":{{"pids":4,"file_bytes":1048576}}}},
{{"id":"both","run":{{"native":{{"tool":"cat"}}}},"stdin":{{"tasks":["sorted","errors"]}},
"limits":{{"output_bytes":65536}}}}
],
"output":"both"}}"#,
        plan_id = "0123456789abcdef0123456789abcdef",
        expires = NOW + 3600,
        grep = Digest::of(b"grep component"),
        cut = Digest::of(b"cut component"),
    )
}

/// [`plan_json`], parsed.
pub fn plan() -> &'static Plan {
    static PLAN: OnceLock<Plan> = OnceLock::new();
    PLAN.get_or_init(|| match Plan::from_json(plan_json().as_bytes()) {
        Ok(plan) => plan,
        Err(e) => panic!("the fixture plan does not parse: {e}"),
    })
}

/// A valid action for [`plan`], at [`audience`], with two inputs.
pub fn action() -> Action {
    Action {
        schema: ACTION_SCHEMA.into(),
        action_id: ActionId::from_random([5; 16]),
        plan: Digest::of(&plan().to_payload()),
        inputs: vec![
            agenix_proto::InputRef { digest: Digest::of(b"input one"), size: 9 },
            agenix_proto::InputRef { digest: Digest::of(b"input two"), size: 9 },
        ],
        issued_at: NOW,
        expires_at: NOW + 600,
        max_attempts: 3,
        priority: 10,
        audience: audience(),
    }
}

/// The plan envelope as the trusted signer makes it.
pub fn signed_plan() -> Vec<u8> {
    match sign_plan(plan(), trusted_key()) {
        Ok(env) => env.to_json(),
        Err(e) => panic!("the fixture plan does not sign: {e}"),
    }
}

/// The action envelope as the trusted signer makes it.
pub fn signed_action() -> Vec<u8> {
    match sign_action(&action(), trusted_key()) {
        Ok(env) => env.to_json(),
        Err(e) => panic!("the fixture action does not sign: {e}"),
    }
}

/// A worker's signed result about one job of the fixture action, by the trusted key.
pub fn signed_result() -> Vec<u8> {
    use agenix_proto::result::{RESULT_SCHEMA, ResultStatement, sign_result};
    let statement = ResultStatement {
        schema: RESULT_SCHEMA.into(),
        queue: audience(),
        job: agenix_proto::job::JobId(1),
        epoch: agenix_proto::job::LeaseEpoch(1),
        action: agenix_proto::Digest::of(&action().to_payload()),
        plan: action().plan,
        input: None,
        succeeded: true,
        failure: None,
        tasks: vec![],
        output: None,
        worker: agenix_proto::KeyId::of(&trusted_key().verifying_key()),
        at: 1,
    };
    match sign_result(&statement, trusted_key()) {
        Ok(env) => env.to_json(),
        Err(e) => panic!("the fixture result does not sign: {e}"),
    }
}
