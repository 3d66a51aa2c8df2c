//! `head` against GNU head.

mod common;

use common::{check, check_usage_error, run};

const HEAD: &str = env!("CARGO_BIN_EXE_au-head");

fn numbers(n: u32) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

#[test]
fn first_lines() {
    check(HEAD, &[], &numbers(12), 0, &numbers(10));
    check(HEAD, &["-n", "3"], &numbers(12), 0, "1\n2\n3\n");
    check(HEAD, &["-n3"], &numbers(12), 0, "1\n2\n3\n");
    check(HEAD, &["-3"], &numbers(12), 0, "1\n2\n3\n");
    check(HEAD, &["-n", "0"], &numbers(12), 0, "");
    check(HEAD, &["-n", "5"], "a\nb", 0, "a\nb");
    check(HEAD, &[], "", 0, "");
}

#[test]
fn all_but_the_last_lines() {
    check(HEAD, &["-n", "-2"], &numbers(5), 0, "1\n2\n3\n");
    check(HEAD, &["-n", "-2"], "a\nb\nc", 0, "a\n");
    check(HEAD, &["-n", "-9"], &numbers(5), 0, "");
    check(HEAD, &["-n", "-0"], "a\nb", 0, "a\nb");
}

#[test]
fn bytes() {
    let input: Vec<u8> = (0..=255u8).collect();
    let r = run(HEAD, &["-c", "5"], &input);
    assert_eq!((r.code, r.stdout.as_slice()), (0, &input[..5]));
    let r = run(HEAD, &["-c", "-250"], &input);
    assert_eq!(r.stdout, &input[..6]);
    let r = run(HEAD, &["-c", "1K"], &vec![7u8; 5000]);
    assert_eq!(r.stdout.len(), 1024);
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let r = run(HEAD, &["-c", "-100000"], &big);
    assert_eq!(r.stdout, &big[..200_000]);
}

#[test]
fn stops_reading_early() {
    let big = "line\n".repeat(1_000_000);
    check(HEAD, &["-n", "1"], &big, 0, "line\n");
}

#[test]
fn bad_usage() {
    check_usage_error(HEAD, "head", &["-n", "abc"], "");
    check_usage_error(HEAD, "head", &["-c", "5X"], "");
    check_usage_error(HEAD, "head", &["-n"], "");
}
