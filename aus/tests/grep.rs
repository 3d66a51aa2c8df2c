//! `grep` against GNU grep's behaviour.

mod common;

use common::{Rng, check, check_usage_error, run};

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

/// Lines from a few bytes, so patterns match often and across lines; some empty, one much
/// longer than the block grep searches at once, and no newline at the very end.
fn lines(seed: u64) -> Vec<u8> {
    const BYTES: &[u8] = b"aabbAB \t\r\xff_";
    let mut r = Rng(seed);
    let mut text = Vec::new();
    let mut long = true;
    while text.len() < 900 << 10 {
        let len = match r.below(50) {
            _ if long && text.len() > 300 << 10 => {
                long = false;
                300 << 10
            }
            0 => 0,
            _ => r.below(30),
        };
        text.extend((0..len).map(|_| BYTES[r.below(BYTES.len())]));
        text.push(b'\n');
    }
    text.extend_from_slice(b"ab b");
    text
}

/// grep searches a block of lines at once and looks at a line alone only where the block
/// holds a match; what it selects must be what a search of each line alone selects, for
/// patterns that match at line ends, match a newline, or anchor to the text's ends.
#[test]
fn block_search_selects_what_each_line_alone_selects() {
    let text = lines(0x9e37_79b9_7f4a_7c15);
    let patterns = [
        "a", "^a", "a$", "^$", "$", "", r"\s", "[^a]", r"a\sb", r"a\nb", r"\Aa", r"b\z", r"\bab\b",
        "(?s)a.b", "(?m)^b", r"\xff", "aaaa|^bb", "A", "(?R)a$", "(?R)a\r$", "(?R)^b", "(?R)$",
        r"a[^x]*b", r"\D+\s",
    ];
    for pattern in patterns {
        for flags in [&[][..], &["-i"], &["-x"]] {
            let mut builder = regex::bytes::RegexBuilder::new(&if flags == ["-x"] {
                format!("^(?:{pattern})$")
            } else {
                pattern.to_owned()
            });
            let re = builder.case_insensitive(flags == ["-i"]).build();
            let re = re.unwrap_or_else(|e| panic!("the reference cannot compile {pattern:?}: {e}"));
            let body = text.strip_suffix(b"\n").unwrap_or(&text);
            let numbered: Vec<(usize, &[u8])> =
                body.split(|&b| b == b'\n').enumerate().map(|(i, l)| (i + 1, l)).collect();
            for invert in [false, true] {
                let chosen: Vec<(usize, &[u8])> =
                    numbered.iter().copied().filter(|(_, l)| re.is_match(l) != invert).collect();
                let mut args = flags.to_vec();
                args.extend(["-n", "-e", pattern]);
                if invert {
                    args.push("-v");
                }
                let mut expected = Vec::new();
                for (n, line) in &chosen {
                    expected.extend(format!("{n}:").bytes());
                    expected.extend_from_slice(line);
                    expected.push(b'\n');
                }
                let r = run(GREP, &args, &text);
                assert_eq!(r.code, if chosen.is_empty() { 1 } else { 0 }, "{args:?}: {}", r.stderr);
                assert!(r.stdout == expected, "grep {args:?} selected other lines");
                // Without -n the same lines; -c counts them; -q answers for them.
                args.retain(|&a| a != "-n");
                let plain: Vec<u8> =
                    chosen.iter().flat_map(|(_, l)| [*l, b"\n"].concat()).collect();
                assert!(run(GREP, &args, &text).stdout == plain, "grep {args:?}");
                let count = run(GREP, &[&args[..], &["-c"]].concat(), &text);
                assert_eq!(count.out(), format!("{}\n", chosen.len()), "grep -c {args:?}");
                let quiet = run(GREP, &[&args[..], &["-q"]].concat(), &text);
                assert_eq!(quiet.code, count.code, "grep -q {args:?}");
            }
        }
    }
}

/// A stream that pauses is searched up to where it paused: `-q` answers at the first match,
/// not when a block fills or the input ends.
#[test]
fn quiet_answers_before_the_input_ends() {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let mut child = Command::new(GREP)
        .args(["-q", "a"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn grep");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"b\na\n").expect("write");
    // The pipe stays open: grep must not wait for more.
    let until = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < until, "grep -q still waiting for input after its match");
        std::thread::sleep(Duration::from_millis(10));
    };
    drop(stdin);
    assert_eq!(status.code(), Some(0));
}
