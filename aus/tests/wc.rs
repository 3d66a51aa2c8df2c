//! `wc` against GNU wc's output for standard input.

mod common;

use common::{check, check_usage_error, run};

const WC: &str = env!("CARGO_BIN_EXE_au-wc");

#[test]
fn default_is_lines_words_bytes_in_7_columns() {
    check(WC, &[], "hello world\n", 0, "      1       2      12\n");
    check(WC, &[], "", 0, "      0       0       0\n");
    check(WC, &[], " a  b\tc\n\nd\r\ne\x0bf\x0cg", 0, "      3       7      17\n");
}

#[test]
fn one_count_is_not_padded() {
    check(WC, &["-l"], "a\nb\nc\n", 0, "3\n");
    check(WC, &["-l"], "no newline", 0, "0\n");
    check(WC, &["-w"], "no newline", 0, "2\n");
    check(WC, &["-c"], "h\u{e9}llo\n", 0, "7\n");
    check(WC, &["-m"], "h\u{e9}llo\n", 0, "6\n");
}

#[test]
fn counts_come_in_gnu_order_whatever_the_flag_order() {
    check(WC, &["-w", "-l"], "one two\nthree\n", 0, "      2       3\n");
    check(WC, &["-cm"], "\u{e9}\n", 0, "      2       3\n");
    check(WC, &["-lwmc"], "a b\n", 0, "      1       2       4       4\n");
}

#[test]
fn bytes_are_counted_as_they_are() {
    let input: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let r = run(WC, &["-c"], &input);
    assert_eq!((r.code, r.out().as_str()), (0, "100000\n"));
    let r = run(WC, &["-l"], &input);
    assert_eq!(r.out(), format!("{}\n", input.iter().filter(|&&b| b == b'\n').count()));
    // GNU wc in a UTF-8 locale: invalid bytes are neither characters nor word material,
    // and control characters do not make a word.
    let r = run(WC, &["-lwmc"], b"\xff\xfe\x00 \xff\n");
    assert_eq!(r.out(), "      1       0       3       6\n");
    let r = run(WC, &["-lwmc"], b"caf\xc3\xa9 \xff\xfe\n");
    assert_eq!(r.out(), "      1       1       6       9\n");
    check(WC, &["-w"], "a\x01b c\n", 0, "2\n");
    check(WC, &["-w"], "\x01 \x02\n", 0, "0\n");
    // Unicode white space and no-break spaces separate words.
    check(WC, &["-lwmc"], "\u{e9} \u{2003} x\n", 0, "      1       2       6       9\n");
    check(WC, &["-w"], "a\u{a0}b\n", 0, "2\n");
}

#[test]
fn bad_usage() {
    check_usage_error(WC, "wc", &["-x"], "");
    check_usage_error(WC, "wc", &["file"], "");
}
