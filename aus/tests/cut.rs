//! `cut` against GNU cut.

mod common;

use common::{check, check_usage_error, run};

const CUT: &str = env!("CARGO_BIN_EXE_au-cut");

#[test]
fn fields() {
    check(CUT, &["-d,", "-f1,3-"], "a,b,c,d\n", 0, "a,c,d\n");
    check(CUT, &["-d", ",", "-f", "-2"], "a,b,c\n", 0, "a,b\n");
    check(CUT, &["-d,", "-f2-"], "a,b,c\n", 0, "b,c\n");
    check(CUT, &["-d,", "-f3,1"], "a,b,c\n", 0, "a,c\n");
    check(CUT, &["-d,", "-f1-2,2-3"], "a,b,c,d\n", 0, "a,b,c\n");
    check(CUT, &["-f2"], "a\tb\tc\n", 0, "b\n");
    check(CUT, &["-d,", "-f5"], "a,b\n", 0, "\n");
    check(CUT, &["-d,", "-f2"], "a,,c\n", 0, "\n");
    check(CUT, &["-d=", "-f2"], "k=v\n", 0, "v\n");
    check(CUT, &["-d", "\\t", "-f2"], "a\tb\n", 0, "b\n");
}

#[test]
fn lines_without_the_delimiter() {
    check(CUT, &["-d,", "-f2"], "a,b\nplain\n", 0, "b\nplain\n");
    check(CUT, &["-s", "-d,", "-f2"], "a,b\nplain\n", 0, "b\n");
}

#[test]
fn complement_and_output_delimiter() {
    check(CUT, &["-d,", "-f2", "--complement"], "a,b,c,d\n", 0, "a,c,d\n");
    check(CUT, &["-d,", "-f1,3", "--output-delimiter", " | "], "a,b,c\n", 0, "a | c\n");
    check(CUT, &["-d,", "-f1,3", "--output-delimiter=:"], "a,b,c\n", 0, "a:c\n");
    check(CUT, &["-c1-2,4-", "--output-delimiter=|"], "abcdef\n", 0, "ab|def\n");
    // Ranges that only touch stay apart; overlapping ones merge.
    check(CUT, &["-c1,2", "--output-delimiter=|"], "abc\n", 0, "a|b\n");
    check(CUT, &["-c1-2,2-3", "--output-delimiter=|"], "abcd\n", 0, "abc\n");
}

#[test]
fn byte_positions() {
    check(CUT, &["-c", "2-3"], "hello\nhi\nx\n", 0, "el\ni\n\n");
    check(CUT, &["-b", "1,3"], "hello\n", 0, "hl\n");
    check(CUT, &["-c", "-2"], "hello", 0, "he\n");
    check(CUT, &["-c", "3-"], "hello\n", 0, "llo\n");
    check(CUT, &["-b", "2", "--complement"], "abc\n", 0, "ac\n");
    let r = run(CUT, &["-b", "2-3"], b"\x00\xff\xfe\x01\n");
    assert_eq!(r.stdout, b"\xff\xfe\n");
}

#[test]
fn bad_lists_and_usage() {
    let r = check_usage_error(CUT, "cut", &["-f", "0"], "");
    assert!(r.stderr.contains("numbered from 1"), "{}", r.stderr);
    let r = check_usage_error(CUT, "cut", &["-f", "3-1"], "");
    assert!(r.stderr.contains("decreasing"), "{}", r.stderr);
    check_usage_error(CUT, "cut", &["-f", "x"], "");
    check_usage_error(CUT, "cut", &["-f", "-"], "");
    check_usage_error(CUT, "cut", &["-f", "1,"], "");
    check_usage_error(CUT, "cut", &[], "");
    check_usage_error(CUT, "cut", &["-f1", "-c1"], "");
    check_usage_error(CUT, "cut", &["-c1", "-d,"], "");
    check_usage_error(CUT, "cut", &["-f1", "-d", "ab"], "");
}
