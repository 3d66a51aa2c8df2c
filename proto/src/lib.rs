//! The AGEniX contract: the plan and action schema v1 and its one validator, content
//! digests, DSSE envelopes signed with ed25519, the trust file, the AU model card, and the
//! task outcome and report that wasm and native tasks share.
//!
//! agx, agq and agw all parse, validate and verify through this crate, so they can never
//! disagree about what a valid plan is. Parsing is strict (duplicate keys, unknown fields and
//! non-UTF-8 are rejected) and every error names its rule and field path.
//!
//! It also holds the wire protocol (`wire`: messages and framing) and the QUIC link
//! (`link`: TLS 1.3 with the queue's key pinned, and the client side agx and agw share).
//!
//! What this crate does not do: apart from the link helpers it performs no file or network
//! I/O, and it never reads a clock or a random source; time and randomness are arguments. Executors accept only
//! [`VerifiedPlan`] and [`VerifiedAction`], which only [`verify_plan`] and
//! [`verify_action`] construct.

pub mod action;
pub mod card;
pub mod digest;
pub mod envelope;
pub mod ids;
pub mod job;
pub mod json;
pub mod keys;
pub mod limits;
pub mod link;
pub mod plan;
pub mod report;
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
pub use limits::{Limits, TaskLimits};
pub use plan::{Access, Form, Mount, Plan, Run, Stdin, Task};
pub use report::{Outcome, TaskReport};
pub use trust::{Role, Trust};
pub use validate::{Invalid, Violation};
