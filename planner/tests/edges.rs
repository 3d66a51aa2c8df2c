//! agx at its edges, as users hit them: every read capped while reading (devices, FIFOs,
//! regular files at and past the cap), input that never ends bounded by the timeout, a
//! reader that closes stdout early, and terminal controls in what others wrote.
//!
//! Timeouts here only detect hangs; nothing asserts how long anything took.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod common;

use common::*;

use agenix_test_programs as programs;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A plan (unsigned, every AU pinned by digest, so no store is needed) whose one task may
/// run for `timeout_ms`.
fn pinned_plan(timeout_ms: u64) -> String {
    format!(
        r#"{{"schema":"agenix.plan/v1","name":"edge","tasks":[
        {{"id":"echo","run":{{"wasm":{{"name":"echo","digest":"{DIGEST}"}}}},
          "stdin":{{"input":true}},"limits":{{"timeout_ms":{timeout_ms}}}}}],"output":"echo"}}"#
    )
}

/// Whether `s` holds a terminal control or a bidirectional control.
fn has_controls(s: &str) -> bool {
    s.chars().any(|c| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    })
}

#[test]
fn au_run_strips_bidi_controls_from_the_aus_stderr() {
    let t = TestDir::new();
    // The echo guest writes its arguments to stderr.
    let out = t.agx(&["au", "run", programs::GUEST_ECHO, "--", "x\u{202e}y\u{2066}z\x1b[2K!"]);
    assert_eq!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(err.contains("arg xyz!\n"), "{err}");
    assert!(!has_controls(&err), "{err:?}");
}

#[test]
fn plan_show_strips_terminal_controls_from_what_others_wrote() {
    let t = TestDir::new();
    t.signer("k");
    let plan = pinned_plan(1000).replace(
        r#""name":"edge","#,
        r#""name":"edge","description":"safe\u202e \u001b]0;owned\u0007text\u001b[2A","#,
    );
    t.write("plan.json", &plan);
    t.ok(&["plan", "sign", "plan.json", "--key", "k.key", "--out", "plan.env"]);
    let shown = t.ok(&["plan", "show", "plan.env", "--trust", "trust.json"]);
    assert!(shown.contains("  safe text\n"), "{shown}");
    assert!(!has_controls(&shown), "{shown:?}");
}
