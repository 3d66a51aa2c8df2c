//! Violations: what the one validator reports, each naming its rule and field path.

use std::fmt;

use serde::Serialize;

use crate::json::JsonError;

/// One broken rule at one place in a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The field path (`tasks[3].stdin`); empty for the document as a whole.
    pub path: String,
    /// The rule's short name (`stdin-ref`, `task-count`, ...), stable for scripts.
    pub rule: &'static str,
    /// What is wrong, for people.
    pub message: String,
}

impl Violation {
    /// A violation of `rule` at `path`.
    pub fn new(path: impl Into<String>, rule: &'static str, message: impl Into<String>) -> Self {
        Self { path: path.into(), rule, message: message.into() }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{} [{}]", self.message, self.rule)
        } else {
            write!(f, "{}: {} [{}]", self.path, self.message, self.rule)
        }
    }
}

impl From<JsonError> for Violation {
    fn from(e: JsonError) -> Self {
        Self { path: e.path, rule: "json", message: e.message }
    }
}

/// A document that broke one or more rules. Never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Invalid(Vec<Violation>);

impl Invalid {
    /// The violations, in document order.
    pub fn violations(&self) -> &[Violation] {
        &self.0
    }

    /// Whether any violation is of `rule`.
    pub fn has_rule(&self, rule: &str) -> bool {
        self.0.iter().any(|v| v.rule == rule)
    }

    /// `Ok` when `violations` is empty, else the violations as an error.
    pub fn check(violations: Vec<Violation>) -> Result<(), Self> {
        if violations.is_empty() { Ok(()) } else { Err(Self(violations)) }
    }

    pub(crate) fn one(v: Violation) -> Self {
        Self(vec![v])
    }
}

impl From<JsonError> for Invalid {
    fn from(e: JsonError) -> Self {
        Self::one(e.into())
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

/// Most violations one report lists; the rest are counted.
pub const MAX_VIOLATIONS: usize = 100;

/// Collects violations while a validator walks a document: the first [`MAX_VIOLATIONS`],
/// and how many more there were (a hostile document can break a rule once per byte).
#[derive(Debug, Default)]
pub(crate) struct Report {
    violations: Vec<Violation>,
    more: usize,
}

impl Report {
    pub(crate) fn push(
        &mut self,
        path: impl Into<String>,
        rule: &'static str,
        msg: impl Into<String>,
    ) {
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations.push(Violation::new(path, rule, msg));
        } else {
            self.more += 1;
        }
    }

    pub(crate) fn finish(mut self) -> Result<(), Invalid> {
        if self.more > 0 {
            let more = format!("{} more violations not listed", self.more);
            self.violations.push(Violation::new("", "too-many", more));
        }
        Invalid::check(self.violations)
    }
}
