//! Drafting plans with a language model: ask, check the answer against the one validator and
//! the catalog, send the violations back, and ask again, a bounded number of times.
//!
//! The model is a peer like any other: its answer is parsed strictly (size, one JSON object
//! and nothing after it, no unknown fields, no duplicate keys), may name only catalog AUs
//! (locked to the store's digests) and offered tools, and is never executed or signed here.
//! What passes is a draft for a person to review; what does not is shown with its
//! violations and never written as a plan.

pub(crate) mod llm;
pub(crate) mod policy;
pub(crate) mod prompt;

use std::io::Read;
use std::path::Path;

use agenix_proto::{Plan, Violation};
use anyhow::{Context, Result};

use crate::show::one_line;

pub(crate) use self::llm::{Llm, LlmConfig};
pub(crate) use self::policy::Catalog;
pub(crate) use self::prompt::Ask;

/// Most rounds (questions to the model) one draft may take.
pub(crate) const MAX_ATTEMPTS: u32 = 10;

/// How a draft ended.
#[derive(Debug)]
pub(crate) enum Drafted {
    /// A plan that follows every rule, its AUs locked to the store's digests.
    Valid {
        /// The plan.
        plan: Plan,
        /// Rounds it took.
        attempts: u32,
    },
    /// Still refused after the last round.
    Refused {
        /// The model's last answer, as given.
        answer: String,
        /// That answer as a plan, when it parsed as one.
        plan: Option<Plan>,
        /// What is wrong with it.
        violations: Vec<Violation>,
        /// Rounds it took.
        attempts: u32,
    },
}

/// Asks `llm` for the plan `ask` describes, at most `attempts` times.
pub(crate) fn draft(llm: &mut Llm, catalog: &Catalog, ask: &Ask, attempts: u32) -> Result<Drafted> {
    prompt::check_request(&ask.request)?;
    let schema = prompt::schema(catalog);
    let mut messages = vec![prompt::system(&schema), prompt::data(ask, catalog)?];
    let mut round = 0;
    loop {
        round += 1;
        let answer = llm.complete(&messages, &schema)?;
        let (plan, violations) = match parse(&answer) {
            Ok(mut plan) => {
                let violations = catalog.check(&mut plan);
                if violations.is_empty() {
                    return Ok(Drafted::Valid { plan, attempts: round });
                }
                (Some(plan), violations)
            }
            Err(violations) => (None, violations),
        };
        // Messages can quote the answer (an unknown field's name): one line each.
        let violations: Vec<Violation> = violations
            .into_iter()
            .map(|v| Violation::new(one_line(&v.path), v.rule, one_line(&v.message)))
            .collect();
        tracing::info!(round, violations = violations.len(), "the draft was refused");
        if round >= attempts {
            return Ok(Drafted::Refused {
                answer: answer.content,
                plan,
                violations,
                attempts: round,
            });
        }
        messages.extend(prompt::refused(&answer.content, &violations));
    }
}

/// Parses an answer strictly as a plan: one JSON object, surrounded by nothing but
/// whitespace.
fn parse(answer: &llm::Answer) -> Result<Plan, Vec<Violation>> {
    if answer.truncated {
        return Err(vec![Violation::new(
            "",
            "answer",
            "the answer was cut off at the server's length limit: write a shorter plan",
        )]);
    }
    let text = answer.content.trim();
    if !text.starts_with('{') {
        return Err(vec![Violation::new(
            "",
            "answer",
            "the answer must be one JSON object and nothing else (no prose, no code fences)",
        )]);
    }
    Plan::from_json(text.as_bytes()).map_err(|inv| inv.violations().to_vec())
}

/// Reads the start of an input sample: at most [`prompt::MAX_SAMPLE_BYTES`], cut at a
/// character boundary. A FIFO nobody writes to is given up on, as for any file agx reads;
/// a device that never ends is read only that far.
pub(crate) fn read_sample(path: &Path) -> Result<(String, bool)> {
    let max = prompt::MAX_SAMPLE_BYTES;
    let file = agenix_runtime::files::open_readable(path, agenix_runtime::files::FIFO_WAIT)
        .with_context(|| format!("cannot read the input sample {}", path.display()))?;
    let mut bytes = Vec::with_capacity(max + 1);
    file.take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read the input sample {}", path.display()))?;
    let cut = bytes.len() > max;
    bytes.truncate(max);
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        // A cut may fall inside a character: keep what precedes it.
        Err(e) if cut && e.utf8_error().error_len().is_none() => {
            let valid = e.utf8_error().valid_up_to();
            let mut bytes = e.into_bytes();
            bytes.truncate(valid);
            String::from_utf8(bytes).unwrap_or_default()
        }
        Err(_) => anyhow::bail!(
            "the input sample {} is not UTF-8 text: a model is shown text only",
            path.display()
        ),
    };
    Ok((text, cut))
}
