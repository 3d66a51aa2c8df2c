//! Identifier newtypes. Each is checked when it is parsed, so holding one means it is valid.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a valid identifier of some kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: must match {rule}")]
pub struct IdError {
    /// What kind of identifier was expected.
    pub kind: &'static str,
    /// The offending value (truncated).
    pub value: String,
    /// The syntax it must follow.
    pub rule: &'static str,
}

fn is_slug(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

fn is_hex128(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_tool(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+'))
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $rule:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The identifier as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                let check: fn(&str) -> bool = $check;
                if check(s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(IdError { kind: $kind, value: s.chars().take(80).collect(), rule: $rule })
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A task id within a plan: `[a-z0-9_-]{1,64}`.
    TaskId, "task id", "[a-z0-9_-]{1,64}", |s| is_slug(s, 64)
);
id_type!(
    /// A plan's name: `[a-z0-9_-]{1,64}`.
    PlanName, "plan name", "[a-z0-9_-]{1,64}", |s| is_slug(s, 64)
);
id_type!(
    /// An AU's name as the store and the catalog know it: `[a-z0-9_-]{1,64}`.
    AuName, "AU name", "[a-z0-9_-]{1,64}", |s| is_slug(s, 64)
);
id_type!(
    /// The name of an operator-configured directory: `[a-z0-9_-]{1,64}`.
    MountName, "mount name", "[a-z0-9_-]{1,64}", |s| is_slug(s, 64)
);
id_type!(
    /// A native tool's name in a worker's allowlist: `[A-Za-z0-9_.+-]{1,64}`, never a path.
    ToolName, "tool name", "[A-Za-z0-9_.+-]{1,64} (a name from the worker's allowlist, not a path)",
    is_tool
);
id_type!(
    /// A plan's id: 128 random bits as 32 lowercase hex digits.
    PlanId, "plan id", "32 lowercase hex digits", is_hex128
);
id_type!(
    /// An action's id: 128 random bits as 32 lowercase hex digits.
    ActionId, "action id", "32 lowercase hex digits", is_hex128
);

impl PlanId {
    /// A plan id from 16 random bytes.
    pub fn from_random(bytes: [u8; 16]) -> Self {
        Self(hex::encode(bytes))
    }
}

impl ActionId {
    /// An action id from 16 random bytes.
    pub fn from_random(bytes: [u8; 16]) -> Self {
        Self(hex::encode(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_follow_the_rule() {
        assert!("fetch_2-a".parse::<TaskId>().is_ok());
        assert!("a".repeat(64).parse::<TaskId>().is_ok());
        for bad in ["", "A", "a b", "a/b", "é", &"a".repeat(65)] {
            let e = bad.parse::<TaskId>().unwrap_err();
            assert_eq!(e.rule, "[a-z0-9_-]{1,64}");
        }
    }

    #[test]
    fn tool_names_are_never_paths() {
        assert!("sort".parse::<ToolName>().is_ok());
        assert!("g++".parse::<ToolName>().is_ok());
        for bad in ["/bin/sh", "../sh", "bin/sh", ".", "..", "", "sh -c"] {
            assert!(bad.parse::<ToolName>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn plan_ids_are_128_bit_hex() {
        let id = PlanId::from_random([0xab; 16]);
        assert_eq!(id.as_str(), "abababababababababababababababab");
        assert!(id.as_str().parse::<PlanId>().is_ok());
        assert!("ABABABABABABABABABABABABABABABAB".parse::<PlanId>().is_err());
    }
}
