//! Strict JSON: the one way every signed or wire document is parsed.
//!
//! serde_json accepts a document with a repeated key and silently keeps the last value; a
//! signed plan could then mean one thing to a reader that keeps the first. Every parse here
//! first walks the document once to reject duplicate keys, then deserializes the typed value
//! with the field path recorded, so an error names where it is (`tasks[3].run`).

use std::collections::HashSet;
use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor,
};

/// Why a JSON document was rejected, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", path_prefix(.path))]
pub struct JsonError {
    /// The field path (`tasks[3].stdin`), or empty for the document as a whole.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

fn path_prefix(path: &str) -> String {
    if path.is_empty() { String::new() } else { format!("{path}: ") }
}

impl JsonError {
    fn whole(message: impl Into<String>) -> Self {
        Self { path: String::new(), message: message.into() }
    }
}

/// Parses `bytes` as a `T`, rejecting documents over `max_len` bytes, bytes that are not
/// UTF-8, duplicate object keys at any depth, trailing data and anything `T` does not accept
/// (unknown fields included, where `T` denies them).
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8], max_len: usize) -> Result<T, JsonError> {
    if bytes.len() > max_len {
        return Err(JsonError::whole(format!(
            "document is {} bytes, over the limit of {max_len}",
            bytes.len()
        )));
    }
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(JsonError::whole(format!(
            "not UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        )));
    }
    check_duplicate_keys(bytes)?;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        JsonError { path, message: e.into_inner().to_string() }
    })?;
    de.end().map_err(|e| JsonError::whole(e.to_string()))?;
    Ok(value)
}

/// Rejects a document in which any object repeats a key; also rejects malformed JSON.
pub fn check_duplicate_keys(bytes: &[u8]) -> Result<(), JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut found = None;
    let seed = DupSeed { path: String::new(), found: &mut found };
    let result = seed.deserialize(&mut de).and_then(|()| de.end());
    if let Some(dup) = found {
        return Err(dup);
    }
    result.map_err(|e| JsonError::whole(e.to_string()))
}

/// Walks any JSON value, recording the first duplicate key with its path.
struct DupSeed<'a> {
    path: String,
    found: &'a mut Option<JsonError>,
}

impl<'de> DeserializeSeed<'de> for DupSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DupSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0usize;
        loop {
            let path = format!("{}[{index}]", self.path);
            let seed = DupSeed { path, found: &mut *self.found };
            if seq.next_element_seed(seed)?.is_none() {
                return Ok(());
            }
            if self.found.is_some() {
                // Drain the rest without looking: the first duplicate is the one reported.
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                return Ok(());
            }
            index += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path =
                if self.path.is_empty() { key.clone() } else { format!("{}.{key}", self.path) };
            if self.found.is_none() && !seen.insert(key.clone()) {
                *self.found = Some(JsonError {
                    path: path.clone(),
                    message: format!("duplicate key \"{key}\""),
                });
            }
            if self.found.is_some() {
                map.next_value::<IgnoredAny>()?;
            } else {
                map.next_value_seed(DupSeed { path, found: &mut *self.found })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "fields exist to be parsed")]
    struct Doc {
        a: u64,
        #[serde(default)]
        items: Vec<Item>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "fields exist to be parsed")]
    struct Item {
        name: String,
    }

    #[test]
    fn duplicate_key_is_named_with_its_path() {
        let err =
            from_slice::<Doc>(br#"{"a":1,"items":[{"name":"x"},{"name":"y","name":"z"}]}"#, 1024)
                .unwrap_err();
        assert_eq!(err.path, "items[1].name");
        assert_eq!(err.message, "duplicate key \"name\"");
    }

    #[test]
    fn duplicate_top_level_key_is_rejected() {
        let err = from_slice::<Doc>(br#"{"a":1,"a":2}"#, 1024).unwrap_err();
        assert_eq!(err.to_string(), "a: duplicate key \"a\"");
    }

    #[test]
    fn unknown_field_names_its_path() {
        let err =
            from_slice::<Doc>(br#"{"a":1,"items":[{"name":"x","extra":1}]}"#, 1024).unwrap_err();
        assert_eq!(err.path, "items[0].extra");
        assert!(err.message.starts_with("unknown field `extra`"), "{err}");
    }

    #[test]
    fn huge_number_is_rejected() {
        let err = from_slice::<Doc>(br#"{"a":100000000000000000000000}"#, 1024).unwrap_err();
        assert_eq!(err.path, "a");
    }

    #[test]
    fn non_utf8_and_trailing_data_and_size_are_rejected() {
        let err =
            from_slice::<Doc>(b"{\"a\":1,\"items\":[{\"name\":\"\xff\"}]}", 1024).unwrap_err();
        assert!(err.message.starts_with("not UTF-8"), "{err}");
        let err = from_slice::<Doc>(br#"{"a":1} {"a":2}"#, 1024).unwrap_err();
        assert!(err.message.contains("trailing"), "{err}");
        let err = from_slice::<Doc>(br#"{"a":1}"#, 3).unwrap_err();
        assert!(err.message.contains("over the limit of 3"), "{err}");
    }
}
