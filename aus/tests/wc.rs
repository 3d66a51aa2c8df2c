//! `wc` against GNU wc's output for standard input.

mod common;

use common::{Rng, check, check_usage_error, run};

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

/// What GNU wc counts as words and characters, a character at a time: white space (Unicode's,
/// and the no-break spaces U+2007 and U+2060) ends a word, a control character neither starts
/// nor ends one, invalid UTF-8 is neither.
fn words_and_chars(bytes: &[u8]) -> (u64, u64) {
    let (mut words, mut chars, mut in_word) = (0, 0, false);
    for c in bytes.utf8_chunks().flat_map(|chunk| chunk.valid().chars()) {
        chars += 1;
        if c.is_whitespace() || matches!(c, '\u{2007}' | '\u{2060}') {
            in_word = false;
        } else if !c.is_control() && !in_word {
            words += 1;
            in_word = true;
        }
    }
    (words, chars)
}

/// The ASCII fast path counts what a character at a time counts: every ASCII byte, white
/// space and control character among multibyte ones and invalid bytes, split across reads.
#[test]
fn words_and_characters_agree_with_a_character_at_a_time() {
    const PIECES: &[&str] = &[
        "a",
        "b",
        " ",
        "\t",
        "\n",
        "\x0b",
        "\x0c",
        "\r",
        "\x00",
        "\x01",
        "\x1f",
        "\x7f",
        "\u{85}",
        "\u{a0}",
        "\u{2007}",
        "\u{2060}",
        "\u{2028}",
        "\u{3000}",
        "\u{e9}",
        "\u{1f600}",
    ];
    let mut r = Rng(0x853c_49e6_748f_ea9b);
    let mut text = Vec::new();
    while text.len() < 300 << 10 {
        match r.below(40) {
            0 => text.push(0xff),
            1 => text.extend_from_slice(&"\u{1f600}".as_bytes()[..2]),
            _ => text.extend_from_slice(PIECES[r.below(PIECES.len())].as_bytes()),
        }
    }
    let (words, chars) = words_and_chars(&text);
    let lines = text.iter().filter(|&&b| b == b'\n').count();
    let r = run(WC, &["-lwmc"], &text);
    assert_eq!(r.out(), format!("{lines:>7} {words:>7} {chars:>7} {:>7}\n", text.len()));
}
