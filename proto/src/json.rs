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
///
/// The walk keeps no path while it goes (building one per value would cost the depth times
/// the document's size); the path of a duplicate is put together on the way back up, one
/// segment per level, each cut to [`MAX_SEGMENT`] bytes.
pub fn check_duplicate_keys(bytes: &[u8]) -> Result<(), JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut found = None;
    let result = DupSeed { found: &mut found }.deserialize(&mut de).and_then(|()| de.end());
    if let Some(dup) = found {
        let mut segments = dup.segments;
        segments.reverse();
        let mut path = String::new();
        for s in segments {
            match s {
                Segment::Index(i) => path.push_str(&format!("[{i}]")),
                Segment::Key(k) => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(&k);
                }
            }
        }
        return Err(JsonError { path, message: dup.message });
    }
    result.map_err(|e| JsonError::whole(e.to_string()))
}

/// Longest key kept in a reported path, in bytes.
pub const MAX_SEGMENT: usize = 64;

enum Segment {
    Index(usize),
    Key(String),
}

/// A duplicate key: its path from the innermost level outwards, and the message.
struct Duplicate {
    segments: Vec<Segment>,
    message: String,
}

fn segment(key: &str) -> Segment {
    Segment::Key(crate::text::truncate(key, MAX_SEGMENT).into_owned())
}

/// Walks any JSON value, recording the first duplicate key.
struct DupSeed<'a> {
    found: &'a mut Option<Duplicate>,
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
            if seq.next_element_seed(DupSeed { found: &mut *self.found })?.is_none() {
                return Ok(());
            }
            if let Some(dup) = self.found.as_mut() {
                dup.segments.push(Segment::Index(index));
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
            if self.found.is_some() {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            if seen.contains(&key) {
                *self.found = Some(Duplicate {
                    segments: vec![segment(&key)],
                    message: format!(
                        "duplicate key \"{}\"",
                        crate::text::truncate(&key, MAX_SEGMENT)
                    ),
                });
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            map.next_value_seed(DupSeed { found: &mut *self.found })?;
            if let Some(dup) = self.found.as_mut() {
                dup.segments.push(segment(&key));
            } else {
                seen.insert(key);
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
    fn a_duplicate_deep_under_long_keys_costs_its_depth_not_the_depth_times_the_keys() {
        // 60 levels, each under a 10 KB key: building a path per value would copy 18 MB.
        let key = "k".repeat(10_000);
        let mut doc = String::from(r#"{"a":1,"a":2}"#);
        for _ in 0..60 {
            doc = format!(r#"{{"{key}":[{doc}]}}"#);
        }
        let err = check_duplicate_keys(doc.as_bytes()).unwrap_err();
        assert_eq!(err.message, "duplicate key \"a\"");
        assert!(err.path.ends_with("[0].a"), "{}", err.path);
        assert!(err.path.len() < 60 * (MAX_SEGMENT + 8), "{} bytes of path", err.path.len());
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
