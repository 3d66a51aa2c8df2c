//! Action v1: a signed request to run a plan on some inputs, at one queue.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::ids::ActionId;
use crate::validate::{Invalid, Report};

/// The `schema` value of a v1 action.
pub const ACTION_SCHEMA: &str = "agenix.action/v1";
/// Largest action payload accepted, in bytes.
pub const MAX_ACTION_BYTES: usize = 256 * 1024;
/// Most inputs (and so jobs) in one action.
pub const MAX_INPUTS: usize = 1000;
/// Most attempts an action may ask for.
pub const MAX_ATTEMPTS: u32 = 20;
/// Attempts when an action does not say.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Priorities lie in `-PRIORITY_RANGE..=PRIORITY_RANGE`; higher runs first.
pub const PRIORITY_RANGE: i32 = 1000;

/// A queue's identity: the SHA-256 of its TLS public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(pub Digest);

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = crate::digest::DigestParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}

/// A request to run the plan with digest `plan` once per input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// Always [`ACTION_SCHEMA`].
    pub schema: String,
    /// 128 random bits; the queue refuses a second, different action with the same id.
    pub action_id: ActionId,
    /// The digest of the signed plan payload.
    pub plan: Digest,
    /// One job per input; none means one job with empty stdin.
    #[serde(default)]
    pub inputs: Vec<InputRef>,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    /// How many times a job may be tried before it is dead.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i32,
    /// The queue this action is for.
    pub audience: Fingerprint,
}

fn default_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

/// One input blob, by digest and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputRef {
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's size in bytes.
    pub size: u64,
}

impl Action {
    /// Parses action JSON strictly.
    pub fn from_json(bytes: &[u8]) -> Result<Self, Invalid> {
        Ok(crate::json::from_slice(bytes, MAX_ACTION_BYTES)?)
    }

    /// The exact bytes that are signed.
    pub fn to_payload(&self) -> Vec<u8> {
        // As for plans: plain data with string keys always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Checks the action's own rules (not its signature, time or audience).
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut r = Report::default();
        if self.schema != ACTION_SCHEMA {
            r.push(
                "schema",
                "schema",
                format!("must be \"{ACTION_SCHEMA}\", found {:?}", self.schema),
            );
        }
        if self.inputs.len() > MAX_INPUTS {
            r.push(
                "inputs",
                "input-count",
                format!("{} inputs, over the limit of {MAX_INPUTS}", self.inputs.len()),
            );
        }
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            r.push(
                "max_attempts",
                "attempts",
                format!("{} is outside 1..={MAX_ATTEMPTS}", self.max_attempts),
            );
        }
        if !(-PRIORITY_RANGE..=PRIORITY_RANGE).contains(&self.priority) {
            r.push(
                "priority",
                "priority",
                format!("{} is outside -{PRIORITY_RANGE}..={PRIORITY_RANGE}", self.priority),
            );
        }
        crate::plan::check_lifetime(&mut r, self.issued_at, self.expires_at);
        r.finish()
    }
}
