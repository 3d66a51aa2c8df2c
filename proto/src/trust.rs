//! The trust file: which signers a worker or queue believes, in which roles, over which
//! period, and which keys are revoked. At a queue it also holds the enrolled workers (role
//! `worker`: the keys that may authenticate as workers and sign results); at a planner, the
//! worker keys whose signed results it believes. Rotation ([`Trust::rotate`]) trusts the new key and
//! ends the old one's period after an overlap; revocation is immediate and permanent.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::job::MAX_LABELS;
use crate::keys::{KeyError, KeyId, VerifyingKey, verifying_key_from_raw};
use crate::validate::{Invalid, Report};

/// The `schema` value of a v1 trust file.
pub const TRUST_SCHEMA: &str = "agenix.trust/v1";
/// Largest trust file accepted, in bytes.
pub const MAX_TRUST_BYTES: usize = 1 << 20;

/// What a signer may sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Plans.
    Plan,
    /// Actions (requests to run a plan).
    Action,
    /// A worker: authenticates as one at a queue and signs the results it produces.
    Worker,
}

impl Role {
    /// The roles a new signer gets unless told otherwise: plan and action (a worker's key
    /// is trusted for `worker` alone).
    pub const SIGNING: [Self; 2] = [Self::Plan, Self::Action];

    /// What a key in this role signs, for people: `plans`, `actions`, `results`.
    pub fn signs(self) -> &'static str {
        match self {
            Self::Plan => "plans",
            Self::Action => "actions",
            Self::Worker => "results",
        }
    }

    /// The role's name as the trust file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plan => "plan",
            Self::Action => "action",
            Self::Worker => "worker",
        }
    }
}

/// The file as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustDoc {
    schema: String,
    #[serde(default)]
    signers: Vec<SignerDoc>,
    #[serde(default)]
    revoked: Vec<KeyId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignerDoc {
    name: String,
    /// The raw 32-byte public key, base64.
    key: String,
    roles: Vec<Role>,
    /// Unix seconds from which its signatures are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_before: Option<u64>,
    /// Unix seconds after which they are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_after: Option<u64>,
    /// Labels for operators (enrolled workers).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    labels: BTreeSet<String>,
}

/// One trusted signer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// A name for people (`alice`, `ci-planner`).
    pub name: String,
    /// The public key.
    pub key: VerifyingKey,
    /// What it may sign.
    pub roles: Vec<Role>,
    /// Unix seconds from which its signatures are accepted (at the verifier's clock).
    pub not_before: Option<u64>,
    /// Unix seconds after which they are not.
    pub not_after: Option<u64>,
    /// Labels for operators (an enrolled worker's, shown beside it).
    pub labels: BTreeSet<String>,
}

impl Signer {
    /// Whether its signatures are accepted at `now`, allowing [`CLOCK_SKEW_SECS`] either
    /// way.
    pub fn valid_at(&self, now: u64) -> bool {
        let skew = crate::envelope::CLOCK_SKEW_SECS;
        self.not_before.is_none_or(|t| now.saturating_add(skew) >= t)
            && self.not_after.is_none_or(|t| now <= t.saturating_add(skew))
    }
}

/// A parsed, checked trust file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    signers: BTreeMap<KeyId, Signer>,
    revoked: Vec<KeyId>,
}

/// Why a change to a trust file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The key is already trusted.
    #[error("key {keyid} is already trusted as \"{name}\"")]
    DuplicateKey {
        /// The key's id.
        keyid: KeyId,
        /// Its existing name.
        name: String,
    },
    /// The name is taken by another key.
    #[error("the name \"{0}\" is already used by another signer")]
    DuplicateName(String),
    /// The key was revoked; revocation is permanent.
    #[error("key {0} was revoked; generate a new key instead of trusting it again")]
    Revoked(KeyId),
    /// The name is not acceptable.
    #[error(
        "invalid signer name {0:?}: 1 to 64 printable characters, no control, invisible or bidirectional characters"
    )]
    Name(String),
    /// No roles were given.
    #[error("a signer needs at least one role")]
    NoRoles,
    /// A validity period that ends before it starts.
    #[error("the period from {not_before} to {not_after} ends before it starts")]
    Period {
        /// Its start.
        not_before: u64,
        /// Its end.
        not_after: u64,
    },
    /// No signer has this key.
    #[error("no signer has key {0}")]
    UnknownKey(KeyId),
    /// The labels are not acceptable.
    #[error("invalid labels: {0}")]
    Labels(String),
    /// The key is unusable.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Why a key may not act as a worker. Each names the key id, so the operator of a refused
/// worker sees which key to enroll.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerRefusal {
    /// Nobody enrolled it.
    #[error(
        "worker key {0} is not enrolled here (enroll it: agq worker enroll worker.pub --name NAME)"
    )]
    NotEnrolled(KeyId),
    /// It was revoked.
    #[error("worker key {keyid}{} is revoked", named(.name.as_deref()))]
    Revoked {
        /// The key.
        keyid: KeyId,
        /// Its name, when it is still listed.
        name: Option<String>,
    },
    /// It is trusted, but not as a worker.
    #[error("key {keyid} (\"{name}\") is trusted here, but not as a worker")]
    NotAWorker {
        /// The key.
        keyid: KeyId,
        /// Its name.
        name: String,
    },
    /// Its period has not begun or is over.
    #[error("worker key {keyid} (\"{name}\") is outside its validity period")]
    OutsidePeriod {
        /// The key.
        keyid: KeyId,
        /// Its name.
        name: String,
    },
}

fn named(name: Option<&str>) -> String {
    name.map(|n| format!(" (\"{n}\")")).unwrap_or_default()
}

/// `name` with `suffix`, the name shortened so the whole fits the 64 characters allowed.
fn suffixed(name: &str, suffix: &str) -> String {
    let keep = 64usize.saturating_sub(suffix.chars().count());
    let base: String = name.chars().take(keep).collect();
    format!("{}{suffix}", base.trim_end())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= 64
        && name.trim() == name
        && !name.chars().any(|c| {
            c.is_control() || crate::text::is_bidi_control(c) || crate::text::is_invisible(c)
        })
}

impl Trust {
    /// An empty trust file: nobody is trusted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses and checks a trust file: schema, key encodings, weak keys, duplicate keys and
    /// names, roles.
    pub fn from_json(bytes: &[u8]) -> Result<Self, Invalid> {
        let doc: TrustDoc = crate::json::from_slice(bytes, MAX_TRUST_BYTES)?;
        let mut r = Report::default();
        if doc.schema != TRUST_SCHEMA {
            r.push(
                "schema",
                "schema",
                format!("must be \"{TRUST_SCHEMA}\", found {:?}", doc.schema),
            );
        }
        let mut trust = Self::new();
        for (i, s) in doc.signers.into_iter().enumerate() {
            let at = format!("signers[{i}]");
            let key = match B64.decode(&s.key) {
                Ok(raw) => match verifying_key_from_raw(&raw) {
                    Ok(key) => key,
                    Err(e) => {
                        r.push(format!("{at}.key"), "key", e.to_string());
                        continue;
                    }
                },
                Err(_) => {
                    r.push(format!("{at}.key"), "key", "not base64");
                    continue;
                }
            };
            match trust.insert(s.name, key, s.roles) {
                Ok(keyid) => {
                    if let Err(e) = trust.set_period(&keyid, s.not_before, s.not_after) {
                        r.push(at.clone(), "signer", e.to_string());
                    }
                    if let Err(e) = trust.set_labels(&keyid, s.labels) {
                        r.push(format!("{at}.labels"), "labels", e.to_string());
                    }
                }
                Err(e) => r.push(at, "signer", e.to_string()),
            }
        }
        for (i, k) in doc.revoked.iter().enumerate() {
            if trust.revoked.contains(k) {
                r.push(format!("revoked[{i}]"), "revoked", format!("{k} is listed twice"));
            }
            trust.revoked.push(*k);
        }
        r.finish()?;
        Ok(trust)
    }

    /// The file's bytes, pretty-printed with a trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        let doc = TrustDoc {
            schema: TRUST_SCHEMA.into(),
            signers: self
                .signers
                .values()
                .map(|s| SignerDoc {
                    name: s.name.clone(),
                    key: B64.encode(s.key.as_bytes()),
                    roles: s.roles.clone(),
                    not_before: s.not_before,
                    not_after: s.not_after,
                    labels: s.labels.clone(),
                })
                .collect(),
            revoked: self.revoked.clone(),
        };
        // Plain data with string keys: serialization cannot fail.
        let mut out = serde_json::to_vec_pretty(&doc).unwrap_or_default();
        out.push(b'\n');
        out
    }

    fn insert(
        &mut self,
        name: String,
        key: VerifyingKey,
        roles: Vec<Role>,
    ) -> Result<KeyId, TrustError> {
        if !valid_name(&name) {
            return Err(TrustError::Name(name));
        }
        if key.is_weak() {
            return Err(KeyError::Weak.into());
        }
        let mut roles = roles;
        roles.sort();
        roles.dedup();
        if roles.is_empty() {
            return Err(TrustError::NoRoles);
        }
        let keyid = KeyId::of(&key);
        if let Some(existing) = self.signers.get(&keyid) {
            return Err(TrustError::DuplicateKey { keyid, name: existing.name.clone() });
        }
        if self.signers.values().any(|s| s.name == name) {
            return Err(TrustError::DuplicateName(name));
        }
        self.signers.insert(
            keyid,
            Signer { name, key, roles, not_before: None, not_after: None, labels: BTreeSet::new() },
        );
        Ok(keyid)
    }

    /// Sets the period over which `keyid`'s signatures are accepted (`None`: unbounded).
    pub fn set_period(
        &mut self,
        keyid: &KeyId,
        not_before: Option<u64>,
        not_after: Option<u64>,
    ) -> Result<(), TrustError> {
        if let (Some(b), Some(a)) = (not_before, not_after)
            && a < b
        {
            return Err(TrustError::Period { not_before: b, not_after: a });
        }
        let signer = self.signers.get_mut(keyid).ok_or(TrustError::UnknownKey(*keyid))?;
        signer.not_before = not_before;
        signer.not_after = not_after;
        Ok(())
    }

    /// Sets the labels shown beside `keyid` (at most [`MAX_LABELS`] printable labels of 1 to
    /// [`crate::job::MAX_LABEL`] bytes, the bounds a worker's own labels have).
    pub fn set_labels(
        &mut self,
        keyid: &KeyId,
        labels: BTreeSet<String>,
    ) -> Result<(), TrustError> {
        if labels.len() > MAX_LABELS {
            return Err(TrustError::Labels(format!(
                "{} labels, over the limit of {MAX_LABELS}",
                labels.len()
            )));
        }
        for l in &labels {
            crate::job::check_label(l).map_err(TrustError::Labels)?;
        }
        let signer = self.signers.get_mut(keyid).ok_or(TrustError::UnknownKey(*keyid))?;
        signer.labels = labels;
        Ok(())
    }

    /// The enrolled worker with `keyid`, if that key may act as a worker at `now`: trusted
    /// for the `worker` role, not revoked, inside its period.
    pub fn worker(&self, keyid: &KeyId, now: u64) -> Result<&Signer, WorkerRefusal> {
        let Some(signer) = self.signers.get(keyid) else {
            return Err(if self.is_revoked(keyid) {
                WorkerRefusal::Revoked { keyid: *keyid, name: None }
            } else {
                WorkerRefusal::NotEnrolled(*keyid)
            });
        };
        if self.is_revoked(keyid) {
            return Err(WorkerRefusal::Revoked { keyid: *keyid, name: Some(signer.name.clone()) });
        }
        if !signer.roles.contains(&Role::Worker) {
            return Err(WorkerRefusal::NotAWorker { keyid: *keyid, name: signer.name.clone() });
        }
        if !signer.valid_at(now) {
            return Err(WorkerRefusal::OutsidePeriod { keyid: *keyid, name: signer.name.clone() });
        }
        Ok(signer)
    }

    /// Rotates `old` to `new`: trusts `new` for the same roles from `now` under `old`'s
    /// name, renames `old` (`NAME (until T)`, the name shortened to fit) and ends its period
    /// at `until`, so both are accepted in between (an overlap for what `old` already
    /// signed). Returns the new key id.
    pub fn rotate(
        &mut self,
        old: &KeyId,
        new: VerifyingKey,
        now: u64,
        until: u64,
    ) -> Result<KeyId, TrustError> {
        let signer = self.signers.get(old).ok_or(TrustError::UnknownKey(*old))?.clone();
        if self.is_revoked(&KeyId::of(&new)) {
            return Err(TrustError::Revoked(KeyId::of(&new)));
        }
        let retiring = suffixed(&signer.name, &format!(" (until {until})"));
        if self.signers.values().any(|s| s.name == retiring) {
            return Err(TrustError::DuplicateName(retiring));
        }
        let ends = signer.not_after.map_or(until, |t| t.min(until));
        if let Some(b) = signer.not_before
            && ends < b
        {
            return Err(TrustError::Period { not_before: b, not_after: ends });
        }
        // The new key first (under a temporary name), so nothing changes if it is refused.
        let placeholder = suffixed(&signer.name, " (next)");
        let new_id = self.insert(placeholder, new, signer.roles.clone())?;
        if let Some(s) = self.signers.get_mut(old) {
            s.name = retiring;
            s.not_after = Some(ends);
        }
        if let Some(s) = self.signers.get_mut(&new_id) {
            s.name = signer.name;
            s.not_before = Some(now);
        }
        Ok(new_id)
    }

    /// Trusts `key` as `name` for `roles`.
    pub fn add(
        &mut self,
        name: &str,
        key: VerifyingKey,
        roles: &[Role],
    ) -> Result<KeyId, TrustError> {
        let keyid = KeyId::of(&key);
        if self.is_revoked(&keyid) {
            return Err(TrustError::Revoked(keyid));
        }
        self.insert(name.to_owned(), key, roles.to_vec())
    }

    /// Revokes `keyid`. Returns false if it was already revoked. A key id that names no signer
    /// here is still recorded, so the key stays refused if someone adds it later.
    pub fn revoke(&mut self, keyid: KeyId) -> bool {
        if self.is_revoked(&keyid) {
            return false;
        }
        self.revoked.push(keyid);
        true
    }

    /// Whether `keyid` is revoked.
    pub fn is_revoked(&self, keyid: &KeyId) -> bool {
        self.revoked.contains(keyid)
    }

    /// The signer with `keyid`, revoked or not.
    pub fn signer(&self, keyid: &KeyId) -> Option<&Signer> {
        self.signers.get(keyid)
    }

    /// Every signer, by key id.
    pub fn signers(&self) -> impl Iterator<Item = (&KeyId, &Signer)> {
        self.signers.iter()
    }

    /// Every revoked key id.
    pub fn revoked(&self) -> &[KeyId] {
        &self.revoked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::signing_key_from_seed;

    fn key(n: u8) -> VerifyingKey {
        signing_key_from_seed(&[n; 32]).verifying_key()
    }

    #[test]
    fn round_trips_through_json() {
        let mut t = Trust::new();
        let a = t.add("alice", key(1), &Role::SIGNING).unwrap();
        t.add("bob", key(2), &[Role::Plan]).unwrap();
        assert!(t.revoke(a));
        let back = Trust::from_json(&t.to_json()).unwrap();
        assert_eq!(back, t);
        assert!(back.is_revoked(&a));
        assert_eq!(back.signer(&a).unwrap().name, "alice");
    }

    #[test]
    fn duplicates_and_revoked_keys_are_refused() {
        let mut t = Trust::new();
        let a = t.add("alice", key(1), &Role::SIGNING).unwrap();
        assert!(matches!(
            t.add("alice2", key(1), &Role::SIGNING),
            Err(TrustError::DuplicateKey { .. })
        ));
        assert_eq!(
            t.add("alice", key(2), &Role::SIGNING),
            Err(TrustError::DuplicateName("alice".into()))
        );
        t.revoke(a);
        assert!(!t.revoke(a));
        let mut fresh = Trust::new();
        fresh.revoke(a);
        assert_eq!(fresh.add("alice", key(1), &Role::SIGNING), Err(TrustError::Revoked(a)));
        assert_eq!(t.add("x", key(3), &[]), Err(TrustError::NoRoles));
        assert!(matches!(t.add(" x", key(3), &Role::SIGNING), Err(TrustError::Name(_))));
        // A name that would print reversed is refused too.
        let bidi = t.add("a\u{202e}b", key(3), &Role::SIGNING);
        assert!(matches!(bidi, Err(TrustError::Name(_))));
        for unseen in ["a\u{200b}b", "\u{feff}ab", "a\u{2028}b", "a\u{00ad}b", "a\u{3000}b"] {
            let r = t.add(unseen, key(3), &Role::SIGNING);
            assert!(matches!(r, Err(TrustError::Name(_))), "{unseen:?}");
        }
    }

    #[test]
    fn weak_key_in_file_is_rejected() {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let doc = format!(
            r#"{{"schema":"agenix.trust/v1","signers":[{{"name":"w","key":"{}","roles":["plan"]}}]}}"#,
            B64.encode(identity)
        );
        let err = Trust::from_json(doc.as_bytes()).unwrap_err();
        assert_eq!(err.violations()[0].path, "signers[0].key");
        assert!(err.to_string().contains("weak"), "{err}");
    }
}
