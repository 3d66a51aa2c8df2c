//! `tail` against GNU tail.

mod common;

use common::{check, check_usage_error, run};

const TAIL: &str = env!("CARGO_BIN_EXE_au-tail");

fn numbers(n: u32) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

#[test]
fn last_lines() {
    check(TAIL, &[], &numbers(12), 0, "3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n");
    check(TAIL, &["-n", "2"], &numbers(12), 0, "11\n12\n");
    check(TAIL, &["-2"], &numbers(12), 0, "11\n12\n");
    check(TAIL, &["-n", "1"], "a\nb", 0, "b");
    check(TAIL, &["-n", "2"], "a\nb", 0, "a\nb");
    check(TAIL, &["-n", "0"], "a\nb\n", 0, "");
    check(TAIL, &["-n", "5"], "a\n", 0, "a\n");
    check(TAIL, &[], "", 0, "");
    check(TAIL, &["-n", "2"], "a\n\n\n", 0, "\n\n");
}

#[test]
fn from_a_line_on() {
    check(TAIL, &["-n", "+11"], &numbers(12), 0, "11\n12\n");
    check(TAIL, &["-n", "+1"], "a\nb", 0, "a\nb");
    check(TAIL, &["-n", "+0"], "a\nb", 0, "a\nb");
    check(TAIL, &["-n", "+5"], "a\nb", 0, "");
}

#[test]
fn bytes() {
    let input: Vec<u8> = (0..=255u8).collect();
    let r = run(TAIL, &["-c", "3"], &input);
    assert_eq!((r.code, r.stdout.as_slice()), (0, &input[253..]));
    let r = run(TAIL, &["-c", "+254"], &input);
    assert_eq!(r.stdout, &input[253..]);
    check(TAIL, &["-c", "3"], "ab\ncd", 0, "\ncd");
    check(TAIL, &["-c", "10"], "ab", 0, "ab");
}

#[test]
fn bad_usage() {
    check_usage_error(TAIL, "tail", &["-n", "x"], "");
    check_usage_error(TAIL, "tail", &["-c", ""], "");
    check_usage_error(TAIL, "tail", &["-f"], "");
}
