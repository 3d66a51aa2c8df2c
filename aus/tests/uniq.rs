//! `uniq` against GNU uniq.

mod common;

use common::{check, check_usage_error, run};

const UNIQ: &str = env!("CARGO_BIN_EXE_au-uniq");
const RUNS: &str = "a\na\nb\nc\nc\nc\n";

#[test]
fn collapses_adjacent_runs() {
    check(UNIQ, &[], RUNS, 0, "a\nb\nc\n");
    check(UNIQ, &[], "a\nb\na\n", 0, "a\nb\na\n");
    check(UNIQ, &[], "a\na", 0, "a\n");
    check(UNIQ, &[], "", 0, "");
    check(UNIQ, &[], "\n\n", 0, "\n");
}

#[test]
fn counts_and_filters() {
    check(UNIQ, &["-c"], RUNS, 0, "      2 a\n      1 b\n      3 c\n");
    check(UNIQ, &["-d"], RUNS, 0, "a\nc\n");
    check(UNIQ, &["-u"], RUNS, 0, "b\n");
    check(UNIQ, &["-cd"], RUNS, 0, "      2 a\n      3 c\n");
    check(UNIQ, &["-du"], RUNS, 0, "");
    let many = "x\n".repeat(12_345_678 / 1000);
    check(UNIQ, &["-c"], &many, 0, "  12345 x\n");
}

#[test]
fn lines_are_bytes() {
    let r = run(UNIQ, &["-c"], b"\xff\n\xff\n\xfe\n");
    assert_eq!(r.stdout, b"      2 \xff\n      1 \xfe\n");
}

#[test]
fn bad_usage() {
    check_usage_error(UNIQ, "uniq", &["-f", "1"], "");
}
