//! The AGEniX contract: the plan and action schema v1 and its one validator, content
//! digests, DSSE envelopes signed with ed25519, the trust file, the AU model card, and the
//! task outcome and report that wasm and native tasks share.
//!
//! agx, agq and agw all parse, validate and verify through this crate, so they can never
//! disagree about what a valid plan is. Parsing is strict (duplicate keys, unknown fields and
//! non-UTF-8 are rejected) and every error names its rule and field path.
//!
//! It also holds the wire protocol (`wire`: every message, the role matrix, and a
//! synchronous frame codec); the QUIC link that carries it is the `agenix-link` crate.
//!
//! What this crate does not do: it performs no file or network I/O (its dependencies hold
//! no async runtime, network or TLS stack: `scripts/test.sh` checks), and it never reads a
//! clock or a random source; time and randomness are arguments. Executors accept only
//! [`VerifiedPlan`] and [`VerifiedAction`], which only [`verify_plan`] and
//! [`verify_action`] construct.

pub mod action;
pub mod audit;
pub mod card;
pub mod digest;
pub mod envelope;
pub mod ids;
pub mod job;
pub mod json;
pub mod keys;
pub mod limits;
pub mod plan;
pub mod report;
pub mod result;
pub mod text;
pub mod trust;
pub mod validate;
pub mod wire;

pub use action::{Action, Fingerprint, InputRef};
pub use digest::Digest;
pub use envelope::{
    Envelope, VerifiedAction, VerifiedPlan, VerifyError, verify_action, verify_plan,
};
pub use ids::{ActionId, AuName, MountName, PlanId, PlanName, TaskId, ToolName};
pub use keys::KeyId;
pub use limits::{Limits, TaskLimits, UNMETERED};
pub use plan::{Access, Form, Mount, Plan, Run, Stdin, Task};
pub use report::{Outcome, TaskReport};
pub use result::{ResultStatement, VerifiedResult, sign_result, verify_result};
pub use trust::{Role, Trust};
pub use validate::{Invalid, Violation};
