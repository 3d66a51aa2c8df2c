//! `grep` against GNU grep's behaviour.

mod common;

use common::{check, check_usage_error, run};

const GREP: &str = env!("CARGO_BIN_EXE_au-grep");
const TEXT: &str = "foo bar\nbaz\nFoo foo\nqux foobar\n";

#[test]
fn selects_matching_lines() {
    check(GREP, &["foo"], TEXT, 0, "foo bar\nFoo foo\nqux foobar\n");
    check(GREP, &["^ba"], TEXT, 0, "baz\n");
    check(GREP, &["a(r|z)$"], TEXT, 0, "foo bar\nbaz\nqux foobar\n");
}

#[test]
fn no_match_is_exit_1() {
    check(GREP, &["nothing"], TEXT, 1, "");
    check(GREP, &["x"], "", 1, "");
}

#[test]
fn ignore_case_invert_count_number() {
    check(GREP, &["-i", "^foo"], TEXT, 0, "foo bar\nFoo foo\n");
    check(GREP, &["-v", "foo"], TEXT, 0, "baz\n");
    check(GREP, &["-c", "foo"], TEXT, 0, "3\n");
    check(GREP, &["-c", "zzz"], TEXT, 1, "0\n");
    check(GREP, &["-vc", "o"], TEXT, 0, "1\n");
    check(GREP, &["-n", "ba"], TEXT, 0, "1:foo bar\n2:baz\n4:qux foobar\n");
    check(GREP, &["-in", "FOO B"], TEXT, 0, "1:foo bar\n");
    check(GREP, &["-v", ""], TEXT, 1, "");
}

#[test]
fn only_matching() {
    check(GREP, &["-o", "o+"], "foo boo\nx\n", 0, "oo\noo\n");
    check(GREP, &["-oin", "foo"], TEXT, 0, "1:foo\n3:Foo\n3:foo\n4:foo\n");
    // Empty matches print nothing but still select the line.
    check(GREP, &["-o", "x*"], "ab\n", 0, "");
    // -o -v prints nothing; the status follows the selected lines.
    check(GREP, &["-ov", "foo"], TEXT, 0, "");
}

#[test]
fn whole_words_and_lines() {
    let line = "foo foobar xfoo foo_bar (foo)\n";
    check(GREP, &["-ow", "foo"], line, 0, "foo\nfoo\n");
    check(GREP, &["-w", "foo"], "foobar\nfoo_bar\nbar foo\n", 0, "bar foo\n");
    check(GREP, &["-wo", "foo"], "foo foo\n", 0, "foo\nfoo\n");
    // Non-word characters at the pattern's edge still need a non-word neighbour only.
    check(GREP, &["-w", "@foo"], "a @foo b\na@foo\n", 0, "a @foo b\n");
    // The non-word character before a match may end the previous match.
    check(GREP, &["-ow", "-"], "a --.b\n", 0, "-\n-\n");
    // A shorter match at the same start can be the whole word.
    check(GREP, &["-ow", "[a-z ]*"], "ab cd_x\n", 0, "ab\n");
    // Invalid UTF-8 is not a word constituent; a multibyte letter is.
    let r = run(GREP, &["-ow", "ab"], b"\xffab\xff \xc3\xa9ab\n");
    assert_eq!((r.code, r.stdout.as_slice()), (0, b"ab\n".as_slice()));
    check(GREP, &["-x", "baz"], "baz\nbazz\nxbaz\n", 0, "baz\n");
    check(GREP, &["-x", "a|b"], "a\nb\nab\n", 0, "a\nb\n");
}

#[test]
fn fixed_strings_and_several_patterns() {
    check(GREP, &["-F", "a.b"], "a.b\naxb\n", 0, "a.b\n");
    check(GREP, &["a.b"], "a.b\naxb\n", 0, "a.b\naxb\n");
    check(GREP, &["-F", "(x"], "(x)\n", 0, "(x)\n");
    check(GREP, &["-e", "baz", "-e", "qux"], TEXT, 0, "baz\nqux foobar\n");
    check(GREP, &["-F", "-e", "baz", "-e", "a.b"], "a.b\nbaz\nx\n", 0, "a.b\nbaz\n");
    // A newline in the pattern separates patterns.
    check(GREP, &["baz\nqux"], TEXT, 0, "baz\nqux foobar\n");
    // -- ends the options, so a pattern may begin with a dash.
    check(GREP, &["--", "-x"], "a-x\nb\n", 0, "a-x\n");
}

#[test]
fn quiet_stops_at_the_first_match() {
    check(GREP, &["-q", "foo"], TEXT, 0, "");
    check(GREP, &["-q", "zzz"], TEXT, 1, "");
    let big = "foo\n".repeat(500_000);
    check(GREP, &["-q", "foo"], &big, 0, "");
}

#[test]
fn lines_are_bytes() {
    let r = run(GREP, &["caf"], b"caf\xe9\nbar\n\xff\xfe caf\n");
    assert_eq!((r.code, r.stdout.as_slice()), (0, b"caf\xe9\n\xff\xfe caf\n".as_slice()));
    let r = run(GREP, &["-c", "\u{e9}"], "caf\u{e9}\ncafe\n".as_bytes());
    assert_eq!(r.out(), "1\n");
    let r = run(GREP, &["-v", "a"], b"a\n\x00\x01\n");
    assert_eq!(r.stdout, b"\x00\x01\n");
    // A last line without a newline gets one, as in GNU grep.
    check(GREP, &["b"], "a\nb", 0, "b\n");
    // CR is part of the line.
    check(GREP, &["b$"], "b\r\nb\n", 0, "b\n");
}

#[test]
fn bad_usage_and_patterns_are_exit_2() {
    let r = check_usage_error(GREP, "grep", &["("], TEXT);
    assert!(r.stderr.contains("invalid pattern"), "{}", r.stderr);
    assert!(r.stderr.contains("unclosed group"), "{}", r.stderr);
    check_usage_error(GREP, "grep", &[], TEXT);
    check_usage_error(GREP, "grep", &["-e"], TEXT);
    check_usage_error(GREP, "grep", &["-e", "a", "b"], TEXT);
    check_usage_error(GREP, "grep", &["-j", "a"], TEXT);
}
