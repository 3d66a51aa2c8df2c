//! `agq --help` and `agw --help`, on every page: examples, each one the binary's own parser
//! accepts (`agenix_harness::help`; agx's are checked in `planner/tests/cli.rs`).

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod common;

#[test]
fn every_help_page_of_agq_and_agw_ends_with_examples_that_parse() {
    let agq = agenix_harness::help::check_examples(&common::bin("agq"), "agq", false).unwrap();
    assert!(agq.pages >= 14 && agq.deepest == 2, "{agq:?}");
    let agw = agenix_harness::help::check_examples(&common::bin("agw"), "agw", true).unwrap();
    assert!(agw.pages >= 4, "{agw:?}");
}
