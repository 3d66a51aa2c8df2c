//! Text that crosses a trust boundary (a worker's name, a failure reason, a task's stderr, a
//! model card) made safe to keep and to print.
//!
//! On a terminal, control characters and escape sequences can move the cursor, rewrite what
//! was printed before, set the window title or hide text, and Unicode bidirectional controls
//! can make text read differently from the bytes it holds (CVE-2021-42574). [`clean`]
//! removes all of these; [`truncate`] bounds a length. JSON output needs neither: JSON
//! escapes what it must, and scripts get the data.

use std::borrow::Cow;

/// Makes `s` safe to print on a terminal: removes C0 and C1 control characters (keeping
/// `\n` and `\t`) and DEL, whole escape sequences (CSI, OSC, DCS, SOS, PM, APC and the
/// two- and three-character ones, whether introduced by ESC or by their C1 code), and the
/// Unicode bidirectional controls: the embeddings and overrides U+202A..=U+202E, the
/// isolates U+2066..=U+2069 and the marks U+200E, U+200F and U+061C. Everything else is
/// kept as it is; a string with nothing to remove is returned borrowed.
pub fn clean(s: &str) -> Cow<'_, str> {
    let Some(first) = s.find(removed) else {
        return Cow::Borrowed(s);
    };
    let mut out = String::with_capacity(s.len());
    out.push_str(&s[..first]);
    let mut chars = s[first..].chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => skip_escape(&mut chars),
            // CSI as one C1 character: parameters up to a final byte.
            '\u{9b}' => skip_csi(&mut chars),
            // DCS, SOS, OSC, PM and APC as one C1 character: a string up to its terminator.
            '\u{90}' | '\u{98}' | '\u{9d}' | '\u{9e}' | '\u{9f}' => skip_string(&mut chars),
            c if removed(c) => {}
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Whether `c` is never printed: a control character other than `\n` and `\t`, or a
/// bidirectional control.
fn removed(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t') || is_bidi_control(c)
}

/// The Unicode bidirectional formatting characters: marks, embeddings, overrides and
/// isolates.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Characters that print as nothing or as a line break where a name should show one line:
/// zero-width spaces and joiners, the word joiner and invisible operators, the byte order
/// mark, the soft hyphen, and every whitespace other than the plain space (the line and
/// paragraph separators among them). Two names differing by them look the same.
pub fn is_invisible(c: char) -> bool {
    matches!(c, '\u{00ad}' | '\u{200b}'..='\u{200d}' | '\u{2060}'..='\u{2064}' | '\u{feff}')
        || (c.is_whitespace() && c != ' ')
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

/// Skips what follows an ESC: a whole sequence, or nothing when what follows cannot be
/// part of one (the ESC alone is dropped then).
fn skip_escape(chars: &mut Chars<'_>) {
    let Some(&c) = chars.peek() else { return };
    match c {
        '[' => {
            chars.next();
            skip_csi(chars);
        }
        // OSC, DCS, SOS, PM, APC: a string up to its terminator.
        ']' | 'P' | 'X' | '^' | '_' => {
            chars.next();
            skip_string(chars);
        }
        // nF: intermediates in 0x20..=0x2f, then one final character (ESC ( B).
        ' '..='/' => {
            while chars.next_if(|c| (' '..='/').contains(c)).is_some() {}
            chars.next_if(|c| ('0'..='~').contains(c));
        }
        // ESC and one character: ESC 7, ESC c, ESC M, ...
        '0'..='~' => {
            chars.next();
        }
        _ => {}
    }
}

/// Skips a control sequence: parameters and intermediates (0x20..=0x3f), then its final
/// character (0x40..=0x7e) if there is one.
fn skip_csi(chars: &mut Chars<'_>) {
    while chars.next_if(|c| (' '..='?').contains(c)).is_some() {}
    chars.next_if(|c| ('@'..='~').contains(c));
}

/// Skips a control string up to BEL, ST (ESC \) or the C1 ST character.
fn skip_string(chars: &mut Chars<'_>) {
    while let Some(c) = chars.next() {
        match c {
            '\u{7}' | '\u{9c}' => break,
            '\u{1b}' => {
                chars.next_if_eq(&'\\');
                break;
            }
            _ => {}
        }
    }
}

/// [`clean`], on one line: newlines and tabs become spaces too.
pub fn clean_line(s: &str) -> String {
    clean(s).chars().map(|c| if c == '\n' || c == '\t' { ' ' } else { c }).collect()
}

/// `s` cut to at most `max` bytes on a character boundary, marked with `…` when cut.
pub fn truncate(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mark = "…";
    let mut cut = max.saturating_sub(mark.len());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!("{}{mark}", &s[..cut]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        let s = "task \"sorted\" failed:\texit 1\nnext line, ünïcödé, 日本語, العربية";
        assert!(matches!(clean(s), Cow::Borrowed(t) if t == s));
        assert!(matches!(clean(""), Cow::Borrowed("")));
    }

    #[test]
    fn c0_c1_and_del_are_removed_but_newlines_and_tabs_kept() {
        assert_eq!(clean("a\rb\x08c\x00d\x07e\x7ff\u{85}g\u{9c}h\n\ti"), "abcdefgh\n\ti");
    }

    #[test]
    fn escape_sequences_are_removed_whole() {
        // SGR colours, cursor movement, erase line, a title (OSC ended by BEL and by ST),
        // a hyperlink, DCS, charset selection, ESC c (reset) and ESC 7.
        let raw = "\x1b[31mred\x1b[0m \x1b[2A\x1b[2Kup \x1b]0;title\x07t \x1b]2;x\x1b\\x \
                   \x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\ \x1bPq#0\x1b\\d \x1b(Bb \x1bcr \x1b7s";
        assert_eq!(clean(raw), "red up t x link d b r s");
    }

    #[test]
    fn c1_introduced_sequences_are_removed_whole() {
        assert_eq!(clean("a\u{9b}31mb\u{9b}0m c\u{9d}0;title\u{9c}d \u{90}data\u{7}e"), "ab cd e");
    }

    #[test]
    fn bidi_controls_and_overrides_are_removed() {
        // The Trojan Source example: an override that makes code read as something else.
        let raw = "access \u{202e}\u{2066}// check\u{2069}\u{2066}granted";
        assert_eq!(clean(raw), "access // checkgranted");
        for c in [
            '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200e}', '\u{200f}', '\u{061c}',
        ] {
            assert_eq!(clean(&format!("x{c}y")), "xy", "U+{:04X}", u32::from(c));
        }
        // Right-to-left text itself is text.
        assert_eq!(clean("שלום"), "שלום");
    }

    #[test]
    fn one_line_and_truncation_keep_characters_whole() {
        assert_eq!(clean_line("a\nb\tc\u{200F}"), "a b c");
        assert_eq!(truncate("short", 10), "short");
        let long = "é".repeat(10);
        let cut = truncate(&long, 7);
        assert!(cut.len() <= 7 && cut.ends_with('…'), "{cut}");
        assert_eq!(truncate("abcdef", 4).chars().count(), 2);
    }

    #[test]
    fn broken_sequences_take_nothing_after_them() {
        assert_eq!(clean("ok\x1b[12"), "ok");
        assert_eq!(clean("ok\x1b"), "ok");
        assert_eq!(clean("a\x1b\nb"), "a\nb");
        assert_eq!(clean("a\x1b[1\nb"), "a\nb");
        // An unterminated control string hides the rest of this string, and nothing else.
        assert_eq!(clean("ok\x1b]0;never ends"), "ok");
    }
}
