//! The AU model card: what `AU --describe` prints, stored with the component's digest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `schema` value of a v1 card.
pub const CARD_SCHEMA: &str = "agenix.au.card/v1";
/// Largest card accepted, in bytes.
pub const MAX_CARD_BYTES: usize = 64 * 1024;

/// An AU's description of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Card {
    /// Always [`CARD_SCHEMA`].
    pub schema: String,
    /// The AU's name: what plans call it.
    pub name: crate::AuName,
    /// Its version.
    pub version: String,
    /// What it does.
    pub description: String,
    /// What it uses (`stdin`, `stdout`, `fs-read`, ...).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Media types it reads.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Media types it writes.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Its flags.
    #[serde(default)]
    pub args: Vec<CardArg>,
    /// A usage line.
    #[serde(default)]
    pub usage: String,
    /// What each exit code means.
    #[serde(default)]
    pub exit_codes: BTreeMap<String, String>,
    /// Mount paths it expects.
    #[serde(default)]
    pub mounts: Vec<serde_json::Value>,
}

/// One flag on a card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardArg {
    /// The flag (`-i`).
    pub flag: String,
    /// What it does.
    pub description: String,
}

impl Card {
    /// Parses a card strictly (size, UTF-8, duplicate keys, types) and checks its schema.
    pub fn from_json(bytes: &[u8]) -> Result<Self, crate::Invalid> {
        let card: Self = crate::json::from_slice(bytes, MAX_CARD_BYTES)?;
        if card.schema != CARD_SCHEMA {
            return Err(crate::Invalid::one(crate::Violation::new(
                "schema",
                "schema",
                format!("must be \"{CARD_SCHEMA}\", found {:?}", card.schema),
            )));
        }
        Ok(card)
    }
}
