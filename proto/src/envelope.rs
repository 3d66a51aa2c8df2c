//! DSSE envelopes: signing and the verification chain that turns bytes into a
//! [`VerifiedPlan`] or [`VerifiedAction`], the only forms executors accept.
//!
//! The signature covers `PAE("DSSEv1", payloadType, payload)`, so a plan's signature can never
//! be presented as an action's. Signatures are checked with ed25519 `verify_strict` (no weak
//! keys, no malleable signatures), and exactly the verified bytes are then parsed.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _};
use serde::{Deserialize, Serialize};

use crate::action::{Action, Fingerprint, MAX_ACTION_BYTES};
use crate::digest::Digest;
use crate::json::JsonError;
use crate::keys::{KeyId, SigningKey, VerifyingKey};
use crate::limits::Limits;
use crate::plan::{Form, MAX_PLAN_BYTES, Plan};
use crate::trust::{Role, Trust};
use crate::validate::Invalid;

/// The payload type of a signed plan.
pub const PLAN_PAYLOAD_TYPE: &str = "application/vnd.agenix.plan.v1+json";
/// The payload type of a signed action.
pub const ACTION_PAYLOAD_TYPE: &str = "application/vnd.agenix.action.v1+json";
/// Clock skew tolerated between signer, queue and worker, in seconds.
pub const CLOCK_SKEW_SECS: u64 = 120;
/// Largest envelope accepted, in bytes (a full plan, base64-encoded, and its signatures).
pub const MAX_ENVELOPE_BYTES: usize = MAX_PLAN_BYTES * 4 / 3 + 64 * 1024;
/// Most signatures one envelope may carry.
pub const MAX_SIGNATURES: usize = 16;

/// Most signature checks one envelope may cost: signatures without a usable key id are
/// tried against every trusted key.
pub const MAX_TRIALS: usize = 1024;

/// A DSSE envelope as it travels and is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// What the payload is.
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// The payload bytes, standard base64.
    pub payload: String,
    /// Signatures over the PAE of type and payload.
    pub signatures: Vec<EnvelopeSignature>,
}

/// One signature in an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSignature {
    /// A hint at the signer's key: DSSE makes it optional and unauthenticated. Ours is the
    /// signer's [`KeyId`]; an envelope from another tool may carry none, or a name of its
    /// own, and is then checked against every trusted key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyid: Option<String>,
    /// The 64-byte ed25519 signature, standard base64.
    pub sig: String,
}

/// DSSE's pre-authentication encoding: `"DSSEv1" SP len(type) SP type SP len(body) SP body`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

impl Envelope {
    /// Signs `payload` as `payload_type` with `key`.
    pub fn sign(payload_type: &str, payload: &[u8], key: &SigningKey) -> Self {
        let sig = key.sign(&pae(payload_type, payload));
        Self {
            payload_type: payload_type.to_owned(),
            payload: B64.encode(payload),
            signatures: vec![EnvelopeSignature {
                keyid: Some(KeyId::of(&key.verifying_key()).to_string()),
                sig: B64.encode(sig.to_bytes()),
            }],
        }
    }

    /// Parses envelope JSON strictly.
    pub fn from_json(bytes: &[u8]) -> Result<Self, VerifyError> {
        crate::json::from_slice(bytes, MAX_ENVELOPE_BYTES).map_err(VerifyError::Malformed)
    }

    /// The envelope's bytes, pretty-printed with a trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        // Plain data with string keys: serialization cannot fail.
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// The payload bytes, decoded but NOT verified: for display only, never for execution.
    pub fn payload_unverified(&self) -> Result<Vec<u8>, VerifyError> {
        B64.decode(&self.payload).map_err(|_| VerifyError::Base64("payload"))
    }

    /// Checks the signatures against `trust` for `role` and returns the verified payload
    /// bytes and the signer.
    pub(crate) fn verify(
        &self,
        expected_type: &str,
        trust: &Trust,
        role: Role,
        now: u64,
    ) -> Result<(Vec<u8>, KeyId), VerifyError> {
        if self.payload_type != expected_type {
            return Err(VerifyError::PayloadType {
                expected: expected_type.to_owned(),
                found: self.payload_type.chars().take(100).collect(),
            });
        }
        let payload = self.payload_unverified()?;
        if self.signatures.is_empty() {
            return Err(VerifyError::NoSignature);
        }
        if self.signatures.len() > MAX_SIGNATURES {
            return Err(VerifyError::TooManySignatures(self.signatures.len()));
        }
        let message = pae(&self.payload_type, &payload);
        let mut first_failure = None;
        let mut trials = 0usize;
        for s in &self.signatures {
            let hinted = s
                .keyid
                .as_deref()
                .and_then(|k| k.parse::<KeyId>().ok())
                .and_then(|k| trust.signer(&k).map(|signer| (k, signer)));
            // The hinted key first; if the signature is not its, as if there were no hint.
            let mut wrong_hint = None;
            if let Some((keyid, signer)) = hinted {
                trials += 1;
                if trust.is_revoked(&keyid) {
                    // Whatever the signature: the key it names is out. (It may still be
                    // another key's: those are tried below.)
                    first_failure
                        .get_or_insert(VerifyError::Revoked { keyid, name: signer.name.clone() });
                } else if check_signature(&signer.key, &message, &s.sig) {
                    let failure = if trust.is_revoked(&keyid) {
                        VerifyError::Revoked { keyid, name: signer.name.clone() }
                    } else if !signer.roles.contains(&role) {
                        VerifyError::NotPermitted { name: signer.name.clone(), role: role.signs() }
                    } else if !signer.valid_at(now) {
                        outside(keyid, signer)
                    } else {
                        return Ok((payload, keyid));
                    };
                    first_failure.get_or_insert(failure);
                    continue;
                } else {
                    wrong_hint =
                        Some(VerifyError::BadSignature { keyid, name: signer.name.clone() });
                }
            }
            // No key id, one that names no trusted key (another tool's), or a wrong one: the
            // key is whichever trusted one the signature verifies with, if any.
            let mut found = false;
            for (keyid, signer) in trust.signers() {
                if hinted.is_some_and(|(h, _)| h == *keyid) {
                    continue;
                }
                trials += 1;
                if trials > MAX_TRIALS {
                    return Err(VerifyError::TooManyTrials(MAX_TRIALS));
                }
                if !check_signature(&signer.key, &message, &s.sig) {
                    continue;
                }
                found = true;
                let failure = if trust.is_revoked(keyid) {
                    VerifyError::Revoked { keyid: *keyid, name: signer.name.clone() }
                } else if !signer.roles.contains(&role) {
                    VerifyError::NotPermitted { name: signer.name.clone(), role: role.signs() }
                } else if !signer.valid_at(now) {
                    outside(*keyid, signer)
                } else {
                    return Ok((payload, *keyid));
                };
                first_failure.get_or_insert(failure);
            }
            // Made by no trusted key, with a trusted key's id: altered, or forged.
            if let (false, Some(failure)) = (found, wrong_hint) {
                first_failure.get_or_insert(failure);
            }
        }
        Err(first_failure.unwrap_or_else(|| VerifyError::UnknownSigner {
            keyids: self
                .signatures
                .iter()
                .map(|s| match s.keyid.as_deref() {
                    Some(k) => crate::text::truncate(&crate::text::clean_line(k), 80).into_owned(),
                    None => "no key id".to_string(),
                })
                .collect::<Vec<_>>()
                .join(", "),
        }))
    }
}

/// Why `signer`'s signature is not accepted now: outside its period.
fn outside(keyid: KeyId, signer: &crate::trust::Signer) -> VerifyError {
    VerifyError::OutsidePeriod {
        keyid,
        name: signer.name.clone(),
        not_before: signer.not_before,
        not_after: signer.not_after,
    }
}

/// `verify_strict` over `message`: refuses weak keys, non-canonical and malleable signatures.
fn check_signature(key: &VerifyingKey, message: &[u8], sig_b64: &str) -> bool {
    let Ok(raw) = B64.decode(sig_b64) else { return false };
    let Ok(sig) = Signature::from_slice(&raw) else { return false };
    key.verify_strict(message, &sig).is_ok()
}

/// Why an envelope was not accepted. Every variant means: nothing may run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The envelope is not well-formed JSON of the right shape.
    #[error("malformed envelope: {0}")]
    Malformed(JsonError),
    /// The envelope holds another kind of document.
    #[error(
        "payload type is {found:?}, expected {expected:?}: the envelope holds another kind of document"
    )]
    PayloadType {
        /// What the caller asked for.
        expected: String,
        /// What the envelope says.
        found: String,
    },
    /// A field is not valid base64.
    #[error("{0} is not valid base64")]
    Base64(&'static str),
    /// No signatures at all.
    #[error("the envelope carries no signature")]
    NoSignature,
    /// More signatures than anyone needs.
    #[error("the envelope carries {0} signatures, over the limit of {MAX_SIGNATURES}")]
    TooManySignatures(usize),
    /// The signer's key is trusted, but not at this time (before or after its period).
    #[error("signer \"{name}\" ({keyid}) is trusted from {} to {}, not now", period_end(*not_before), period_end(*not_after))]
    OutsidePeriod {
        /// The key.
        keyid: KeyId,
        /// Its name.
        name: String,
        /// The start of its period, unix seconds.
        not_before: Option<u64>,
        /// The end of its period, unix seconds.
        not_after: Option<u64>,
    },
    /// Signatures without a usable key id cost more checks than allowed.
    #[error(
        "checking the envelope's signatures without a usable key id took over {0} tries against the trusted keys"
    )]
    TooManyTrials(usize),
    /// No signature is by a key in the trust file.
    #[error("no signature is by a trusted key (signed by {keyids})")]
    UnknownSigner {
        /// The key ids the envelope names.
        keyids: String,
    },
    /// The signer's key is revoked.
    #[error("signer \"{name}\" ({keyid}) is revoked")]
    Revoked {
        /// The revoked key.
        keyid: KeyId,
        /// Its name in the trust file.
        name: String,
    },
    /// The signature does not verify: the payload or signature was altered.
    #[error(
        "signature by \"{name}\" ({keyid}) does not verify: the envelope was altered after signing"
    )]
    BadSignature {
        /// The key the signature claims.
        keyid: KeyId,
        /// Its name in the trust file.
        name: String,
    },
    /// The signer is trusted, but not for this kind of document.
    #[error("signer \"{name}\" is not trusted to sign {role}")]
    NotPermitted {
        /// The signer's name.
        name: String,
        /// What the role it lacks signs (`plans`, `actions`, `results`).
        role: &'static str,
    },
    /// The signed document breaks the schema's rules.
    #[error("the signed document is invalid:\n{0}")]
    Invalid(Invalid),
    /// Issued in the future, beyond the skew.
    #[error(
        "not valid yet: issued at {issued_at}, now is {now} (skew allowed: {CLOCK_SKEW_SECS} s)"
    )]
    NotYetValid {
        /// When it says it was issued.
        issued_at: u64,
        /// The verifier's clock.
        now: u64,
    },
    /// Expired, beyond the skew.
    #[error("expired: expires at {expires_at}, now is {now} (skew allowed: {CLOCK_SKEW_SECS} s)")]
    Expired {
        /// When it expires.
        expires_at: u64,
        /// The verifier's clock.
        now: u64,
    },
    /// The action is for another queue.
    #[error("the action is for queue {found}, not this one ({expected})")]
    Audience {
        /// This queue's fingerprint.
        expected: Fingerprint,
        /// The action's audience.
        found: Fingerprint,
    },
    /// The action names a different plan than the one presented.
    #[error("the action is for plan {expected}, but the plan presented is {found}")]
    PlanMismatch {
        /// The digest in the action.
        expected: Digest,
        /// The digest of the plan presented.
        found: Digest,
    },
}

impl VerifyError {
    /// Whether the failure says something about the verifier rather than the envelope: a
    /// signer its trust file does not know, has revoked or does not trust for this role,
    /// or a validity period its clock puts elsewhere. Another verifier, configured or
    /// clocked differently, may accept the same bytes. Every other failure is a proof that
    /// the bytes are not what a trusted signer signed (or that a trusted signer signed
    /// something no verifier accepts).
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            Self::UnknownSigner { .. }
                | Self::Revoked { .. }
                | Self::NotPermitted { .. }
                | Self::NotYetValid { .. }
                | Self::Expired { .. }
                | Self::TooManyTrials(_)
                | Self::OutsidePeriod { .. }
        )
    }

    /// The variant's name, for counting failures by reason (`bad_signature`, `expired`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::PayloadType { .. } => "payload_type",
            Self::Base64(_) => "base64",
            Self::NoSignature => "no_signature",
            Self::TooManySignatures(_) => "too_many_signatures",
            Self::OutsidePeriod { .. } => "outside_period",
            Self::TooManyTrials(_) => "too_many_trials",
            Self::UnknownSigner { .. } => "unknown_signer",
            Self::Revoked { .. } => "revoked",
            Self::BadSignature { .. } => "bad_signature",
            Self::NotPermitted { .. } => "not_permitted",
            Self::Invalid(_) => "invalid",
            Self::NotYetValid { .. } => "not_yet_valid",
            Self::Expired { .. } => "expired",
            Self::Audience { .. } => "audience",
            Self::PlanMismatch { .. } => "plan_mismatch",
        }
    }
}

/// One end of a period, for people: unix seconds, or unbounded.
fn period_end(t: Option<u64>) -> String {
    t.map_or_else(|| "any time".to_string(), |t| format!("{t} (unix seconds)"))
}

fn check_time(issued_at: u64, expires_at: u64, now: u64) -> Result<(), VerifyError> {
    if issued_at > now.saturating_add(CLOCK_SKEW_SECS) {
        return Err(VerifyError::NotYetValid { issued_at, now });
    }
    if now > expires_at.saturating_add(CLOCK_SKEW_SECS) {
        return Err(VerifyError::Expired { expires_at, now });
    }
    Ok(())
}

/// A plan whose signature, signer, validity period and rules have all been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPlan {
    plan: Plan,
    payload: Vec<u8>,
    digest: Digest,
    signer: KeyId,
}

impl VerifiedPlan {
    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }
    /// The exact payload bytes that were signed.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
    /// The digest of the payload: what actions name.
    pub fn digest(&self) -> Digest {
        self.digest
    }
    /// Who signed it.
    pub fn signer(&self) -> KeyId {
        self.signer
    }
    /// Checks the validity period again at `now` (Unix seconds), for a plan verified
    /// earlier and kept.
    pub fn check_time(&self, now: u64) -> Result<(), VerifyError> {
        match (self.plan.issued_at, self.plan.expires_at) {
            (Some(issued), Some(expires)) => check_time(issued, expires, now),
            // Signed form guarantees both are present.
            _ => Ok(()),
        }
    }
}

/// An action whose signature, signer, validity period, rules and audience have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAction {
    action: Action,
    payload: Vec<u8>,
    signer: KeyId,
}

impl VerifiedAction {
    /// The action.
    pub fn action(&self) -> &Action {
        &self.action
    }
    /// The exact payload bytes that were signed.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
    /// Who signed it.
    pub fn signer(&self) -> KeyId {
        self.signer
    }
    /// Checks the validity period again at `now` (Unix seconds), for an action verified
    /// earlier and kept.
    pub fn check_time(&self, now: u64) -> Result<(), VerifyError> {
        check_time(self.action.issued_at, self.action.expires_at, now)
    }
    /// Checks that this action is for `plan`.
    pub fn check_plan(&self, plan: &VerifiedPlan) -> Result<(), VerifyError> {
        if self.action.plan == plan.digest {
            Ok(())
        } else {
            Err(VerifyError::PlanMismatch { expected: self.action.plan, found: plan.digest })
        }
    }
}

/// Verifies a plan envelope: payload type, a signature by a trusted, unrevoked plan signer,
/// then the plan's rules (with limits under `ceilings`), then its validity period at `now`
/// (Unix seconds).
pub fn verify_plan(
    envelope: &[u8],
    trust: &Trust,
    now: u64,
    ceilings: &Limits,
) -> Result<VerifiedPlan, VerifyError> {
    let env = Envelope::from_json(envelope)?;
    let (payload, signer) = env.verify(PLAN_PAYLOAD_TYPE, trust, Role::Plan, now)?;
    let plan = Plan::from_json(&payload).map_err(VerifyError::Invalid)?;
    plan.validate(Form::Signed, ceilings).map_err(VerifyError::Invalid)?;
    // Signed form guarantees both are present.
    if let (Some(issued), Some(expires)) = (plan.issued_at, plan.expires_at) {
        check_time(issued, expires, now)?;
    }
    let digest = Digest::of(&payload);
    Ok(VerifiedPlan { plan, payload, digest, signer })
}

/// Verifies an action envelope: payload type, a signature by a trusted, unrevoked action
/// signer, the action's rules, its validity period at `now`, and that it is for `audience`.
pub fn verify_action(
    envelope: &[u8],
    trust: &Trust,
    now: u64,
    audience: &Fingerprint,
) -> Result<VerifiedAction, VerifyError> {
    let env = Envelope::from_json(envelope)?;
    let (payload, signer) = env.verify(ACTION_PAYLOAD_TYPE, trust, Role::Action, now)?;
    let action = Action::from_json(&payload).map_err(VerifyError::Invalid)?;
    action.validate().map_err(VerifyError::Invalid)?;
    check_time(action.issued_at, action.expires_at, now)?;
    if action.audience != *audience {
        return Err(VerifyError::Audience { expected: *audience, found: action.audience });
    }
    Ok(VerifiedAction { action, payload, signer })
}

/// Signs a plan after checking it in signed form against the format's absolute limits,
/// its size included: what signing adds (digests, an id, two times) can take a draft under
/// the limit past it, and nobody would accept that envelope.
pub fn sign_plan(plan: &Plan, key: &SigningKey) -> Result<Envelope, Invalid> {
    plan.validate(Form::Signed, &Limits::ABSOLUTE)?;
    let payload = plan.to_payload();
    within("plan", payload.len(), MAX_PLAN_BYTES)?;
    Ok(Envelope::sign(PLAN_PAYLOAD_TYPE, &payload, key))
}

/// Signs an action after checking its rules and its size.
pub fn sign_action(action: &Action, key: &SigningKey) -> Result<Envelope, Invalid> {
    action.validate()?;
    let payload = action.to_payload();
    within("action", payload.len(), MAX_ACTION_BYTES)?;
    Ok(Envelope::sign(ACTION_PAYLOAD_TYPE, &payload, key))
}

/// Refuses a payload of `len` bytes over `max`, as parsing it would.
fn within(what: &str, len: usize, max: usize) -> Result<(), Invalid> {
    if len > max {
        return Err(Invalid::one(crate::Violation::new(
            "",
            "size",
            format!("signed {what} is {len} bytes, over the limit of {max}"),
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::Verifier as _;

    use super::*;
    use crate::keys::signing_key_from_seed;

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // From the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    /// DSSE makes `keyid` an optional hint: an envelope whose signature carries none, an
    /// empty one or another tool's name for the key verifies against the trusted key it was
    /// made with, and nothing else changes: an untrusted, revoked or unpermitted key is
    /// still refused, and the checks one envelope may cost are bounded.
    #[test]
    fn signatures_without_our_key_id_are_checked_against_every_trusted_key() {
        let alice = signing_key_from_seed(&[1; 32]);
        let bob = signing_key_from_seed(&[2; 32]);
        let mut trust = Trust::new();
        let alice_id = trust.add("alice", alice.verifying_key(), &[Role::Plan]).unwrap();
        let bob_id = trust.add("bob", bob.verifying_key(), &[Role::Action]).unwrap();
        let signed = |key: &SigningKey, hint: Option<&str>| {
            let mut env = Envelope::sign("t", b"payload", key);
            env.signatures[0].keyid = hint.map(str::to_owned);
            // Through JSON, as another tool would hand it over.
            Envelope::from_json(&env.to_json()).unwrap()
        };
        for hint in [None, Some(""), Some("alice-2026"), Some("sha256:zz")] {
            let (payload, signer) =
                signed(&alice, hint).verify("t", &trust, Role::Plan, 0).unwrap();
            assert_eq!((payload.as_slice(), signer), (&b"payload"[..], alice_id), "{hint:?}");
        }
        // A wrong hint (another trusted key's id) is only a wrong hint.
        let (_, signer) =
            signed(&alice, Some(&bob_id.to_string())).verify("t", &trust, Role::Plan, 0).unwrap();
        assert_eq!(signer, alice_id);
        // Without a key id the field is absent from the JSON, as DSSE allows.
        let json = String::from_utf8(signed(&alice, None).to_json()).unwrap();
        assert!(!json.contains("keyid"), "{json}");
        // Signed by a key the trust file lacks: named as the envelope names it.
        let mallory = signing_key_from_seed(&[3; 32]);
        let err = signed(&mallory, None).verify("t", &trust, Role::Plan, 0).unwrap_err();
        assert_eq!(err.to_string(), "no signature is by a trusted key (signed by no key id)");
        // A trusted key without the role, or revoked: refused as with our own key id.
        let err =
            signed(&bob, Some("bob's laptop")).verify("t", &trust, Role::Plan, 0).unwrap_err();
        assert!(matches!(err, VerifyError::NotPermitted { .. }), "{err}");
        trust.revoke(bob_id);
        let err = signed(&bob, None).verify("t", &trust, Role::Action, 0).unwrap_err();
        assert!(matches!(err, VerifyError::Revoked { .. }), "{err}");
        // An altered payload verifies with no key.
        let mut altered = signed(&alice, None);
        altered.payload = B64.encode(b"payloaD");
        assert!(matches!(
            altered.verify("t", &trust, Role::Plan, 0).unwrap_err(),
            VerifyError::UnknownSigner { .. }
        ));
        // Many trusted keys and many signatures without a key id: bounded.
        let mut many = Trust::new();
        for i in 0..100u8 {
            let k = signing_key_from_seed(&[i.wrapping_add(10); 32]);
            many.add(&format!("k{i}"), k.verifying_key(), &[Role::Plan]).unwrap();
        }
        let mut env = signed(&mallory, None);
        env.signatures = vec![env.signatures[0].clone(); MAX_SIGNATURES];
        assert_eq!(
            env.verify("t", &many, Role::Plan, 0).unwrap_err(),
            VerifyError::TooManyTrials(MAX_TRIALS)
        );
    }

    /// A key is accepted only within its period (with the clock skew allowed); rotation
    /// keeps the old key accepted until the overlap ends and the new one from its start.
    #[test]
    fn a_key_outside_its_period_is_refused_and_rotation_overlaps() {
        let old = signing_key_from_seed(&[4; 32]);
        let new = signing_key_from_seed(&[5; 32]);
        let mut trust = Trust::new();
        let old_id = trust.add("ci", old.verifying_key(), &Role::SIGNING).unwrap();
        let (t0, until) = (1_000_000u64, 1_000_000 + 7 * 86_400);
        let new_id = trust.rotate(&old_id, new.verifying_key(), t0, until).unwrap();
        assert_eq!(trust.signer(&new_id).unwrap().name, "ci");
        assert_eq!(trust.signer(&old_id).unwrap().name, format!("ci (until {until})"));
        // Through the file, as agq and agw read it.
        let trust = Trust::from_json(&trust.to_json()).unwrap();
        let sign = |k: &SigningKey| Envelope::sign("t", b"p", k);
        let at = |k: &SigningKey, now: u64| sign(k).verify("t", &trust, Role::Plan, now);
        assert_eq!(at(&old, t0).unwrap().1, old_id);
        assert_eq!(at(&old, until + CLOCK_SKEW_SECS).unwrap().1, old_id, "at the end, skew");
        let err = at(&old, until + CLOCK_SKEW_SECS + 1).unwrap_err();
        assert!(matches!(err, VerifyError::OutsidePeriod { .. }) && err.is_local(), "{err}");
        assert!(err.to_string().contains(&format!("\"ci (until {until})\"")), "{err}");
        assert_eq!(at(&new, t0).unwrap().1, new_id);
        assert_eq!(at(&new, until + 1_000_000).unwrap().1, new_id);
        let err = at(&new, t0 - CLOCK_SKEW_SECS - 1).unwrap_err();
        assert!(matches!(err, VerifyError::OutsidePeriod { .. }), "{err}");
        // A signer rotates again, and a long name still fits with its suffix.
        let mut again = trust.clone();
        let third = signing_key_from_seed(&[6; 32]);
        again.rotate(&new_id, third.verifying_key(), t0 + 10, until + 10).unwrap();
        let long = "n".repeat(64);
        let mut t = Trust::new();
        let id = t.add(&long, old.verifying_key(), &Role::SIGNING).unwrap();
        t.rotate(&id, new.verifying_key(), t0, until).unwrap();
        assert!(t.signer(&id).unwrap().name.ends_with(&format!("(until {until})")));
        assert_eq!(t.signer(&id).unwrap().name.chars().count(), 64);
        // A period that ends before it starts is refused, in the file too.
        let mut bad = Trust::new();
        let id = bad.add("x", old.verifying_key(), &Role::SIGNING).unwrap();
        assert!(bad.set_period(&id, Some(10), Some(5)).is_err());
        bad.set_period(&id, Some(10), Some(20)).unwrap();
        let json = String::from_utf8(bad.to_json()).unwrap();
        let broken = json.replacen("\"not_after\": 20", "\"not_after\": 5", 1);
        assert_ne!(broken, json);
        let err = Trust::from_json(broken.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("ends before it starts"), "{err}");
    }

    /// The check budget at its limit and one past it: 15 junk signatures without a key id
    /// cost one check per trusted key each, then a valid one is found by the last key
    /// tried. With 64 keys that is exactly `MAX_TRIALS` checks and verifies; with 65 keys
    /// the budget runs out first.
    #[test]
    fn the_check_budget_holds_at_its_limit_and_stops_one_past_it() {
        assert_eq!(MAX_TRIALS, 15 * 64 + 64);
        for (keys, verifies) in [(64u8, true), (65u8, false)] {
            let mut trust = Trust::new();
            let signers: Vec<SigningKey> =
                (0..keys).map(|i| signing_key_from_seed(&[i.wrapping_add(100); 32])).collect();
            for (i, k) in signers.iter().enumerate() {
                trust.add(&format!("k{i}"), k.verifying_key(), &[Role::Plan]).unwrap();
            }
            // The key tried last: trust lists signers in key id order.
            let last_id = *trust.signers().last().unwrap().0;
            let last = signers.iter().find(|k| KeyId::of(&k.verifying_key()) == last_id).unwrap();
            let mut env = Envelope::sign("t", b"p", last);
            let good = EnvelopeSignature { keyid: None, sig: env.signatures[0].sig.clone() };
            let junk = EnvelopeSignature { keyid: None, sig: B64.encode([7u8; 64]) };
            env.signatures = vec![junk; 15];
            env.signatures.push(good);
            let got = env.verify("t", &trust, Role::Plan, 0);
            if verifies {
                assert_eq!(got.unwrap().1, last_id);
            } else {
                assert_eq!(got.unwrap_err(), VerifyError::TooManyTrials(MAX_TRIALS));
            }
        }
    }

    #[test]
    fn weak_key_signature_is_refused_by_verify_strict() {
        // With A = identity, R = identity and S = 0, cofactorless verification holds for any
        // message; verify_strict must still refuse it.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = VerifyingKey::from_bytes(&identity).unwrap();
        let mut sig = [0u8; 64];
        sig[0] = 1;
        let sig_b64 = B64.encode(sig);
        let parsed = Signature::from_bytes(&sig);
        assert!(weak.verify(b"anything", &parsed).is_ok(), "precondition: lax verify accepts");
        assert!(!check_signature(&weak, b"anything", &sig_b64));
    }

    #[test]
    fn signature_with_s_plus_l_is_refused() {
        let sk = signing_key_from_seed(&[9; 32]);
        let msg = b"message";
        let mut sig = sk.sign(msg).to_bytes();
        // Add the group order L to S (little-endian): same signature mathematically,
        // non-canonical encoding.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut carry = 0u16;
        for i in 0..32 {
            let v = u16::from(sig[32 + i]) + u16::from(L[i]) + carry;
            sig[32 + i] = v as u8;
            carry = v >> 8;
        }
        assert!(!check_signature(&sk.verifying_key(), msg, &B64.encode(sig)));
        assert!(check_signature(&sk.verifying_key(), msg, &B64.encode(sk.sign(msg).to_bytes())));
    }
}
