//! `grep`: print the lines of stdin that match a regular expression (the regex crate's syntax,
//! close to POSIX ERE, run by its engine `regex-automata`). Lines are bytes: non-UTF-8 input is
//! matched and printed as it is (like `grep -a`); `.` matches one UTF-8 character. `-w` follows
//! GNU grep's algorithm. Exit 0 if a line was selected, 1 if none, 2 on bad usage or a bad
//! pattern.

use std::io::{BufRead, Write};

use agenix_aus::{self as au, ArgDoc, Card, Error};
use lexopt::Arg::{Short, Value};
use regex_automata::meta::Regex;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input};

const CARD: Card = Card {
    name: "grep",
    description: "Print the lines of stdin that match a regular expression.",
    capabilities: au::STDIO,
    inputs: &["text/plain"],
    outputs: &["text/plain"],
    args: &[
        ArgDoc { flag: "PATTERN", description: "the regular expression (unless -e is given)" },
        ArgDoc { flag: "-e PATTERN", description: "a pattern; may be repeated, any one matches" },
        ArgDoc { flag: "-E", description: "extended regular expressions (the default)" },
        ArgDoc { flag: "-F", description: "patterns are fixed strings, not expressions" },
        ArgDoc { flag: "-i", description: "ignore case" },
        ArgDoc { flag: "-v", description: "select the lines that do not match" },
        ArgDoc { flag: "-w", description: "match whole words only" },
        ArgDoc { flag: "-x", description: "match whole lines only" },
        ArgDoc { flag: "-c", description: "print only the number of selected lines" },
        ArgDoc { flag: "-n", description: "prefix each output line with its line number" },
        ArgDoc { flag: "-o", description: "print only the matched parts, one per line" },
        ArgDoc { flag: "-q", description: "print nothing; exit 0 at the first selected line" },
    ],
    usage: "grep [-cEFinoqvwx] [-e PATTERN]... [PATTERN]",
    exit_codes: &[
        ("0", "at least one line was selected"),
        ("1", "no line was selected"),
        ("2", "bad usage or an invalid pattern"),
    ],
    mounts: &[],
};

#[derive(Default)]
struct Opts {
    patterns: Vec<String>,
    fixed: bool,
    ignore_case: bool,
    invert: bool,
    word: bool,
    line: bool,
    count: bool,
    number: bool,
    only: bool,
    quiet: bool,
}

fn main() {
    au::main(&CARD, run)
}

fn parse(args: Vec<std::ffi::OsString>) -> Result<Opts, Error> {
    let mut o = Opts::default();
    let mut positional = None;
    let mut p = au::parser(args);
    while let Some(arg) = p.next()? {
        match arg {
            Short('e') => o.patterns.push(au::string(p.value()?)?),
            Short('E') => o.fixed = false,
            Short('F') => o.fixed = true,
            Short('i') => o.ignore_case = true,
            Short('v') => o.invert = true,
            Short('w') => o.word = true,
            Short('x') => o.line = true,
            Short('c') => o.count = true,
            Short('n') => o.number = true,
            Short('o') => o.only = true,
            Short('q') => o.quiet = true,
            Value(v) if positional.is_none() => positional = Some(au::string(v)?),
            other => return Err(au::unexpected(other)),
        }
    }
    match (positional, o.patterns.is_empty()) {
        (Some(pattern), true) => o.patterns.push(pattern),
        (None, true) => return Err(au::usage("no pattern given")),
        (Some(extra), false) => return Err(au::unexpected(Value(extra.into()))),
        (None, false) => {}
    }
    Ok(o)
}

/// Compiles the patterns into one regex (anchored to the whole line with `-x`).
fn build(o: &Opts) -> Result<Regex, Error> {
    // As in grep, a pattern holding newlines is a list of patterns.
    let alternatives: Vec<String> = o
        .patterns
        .iter()
        .flat_map(|p| p.split('\n'))
        .map(|p| if o.fixed { regex_syntax::escape(p) } else { p.to_owned() })
        .collect();
    let any = alternatives.iter().map(|p| format!("(?:{p})")).collect::<Vec<_>>().join("|");
    let pattern = if o.line { format!("^(?:{any})$") } else { any };
    // Like regex::bytes::Regex: may match invalid UTF-8, empty matches anywhere.
    let syntax = syntax::Config::new().case_insensitive(o.ignore_case).utf8(false);
    let compile = |p: &str| {
        let built =
            Regex::builder().syntax(syntax).configure(Regex::config().utf8_empty(false)).build(p);
        built.map_err(|e| e.syntax_error().map_or_else(|| e.to_string(), ToString::to_string))
    };
    compile(&pattern).map_err(|e| {
        // Name the user's pattern, not the combined one, where one alone is at fault.
        let alone = alternatives.iter().filter(|_| !o.fixed);
        let e = alone.filter_map(|p| compile(p).err()).next().unwrap_or(e);
        au::bad_input(format!("invalid pattern: {e}"))
    })
}

/// A word constituent, as GNU grep defines it.
fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether the character ending at `i` is a word constituent (invalid UTF-8 is not).
fn word_before(text: &[u8], i: usize) -> bool {
    (1..=i.min(4))
        .find_map(|k| std::str::from_utf8(&text[i - k..i]).ok())
        .and_then(|s| s.chars().next_back())
        .is_some_and(is_word)
}

/// Whether the character starting at `i` is a word constituent (invalid UTF-8 is not).
fn word_after(text: &[u8], i: usize) -> bool {
    text[i..].utf8_chunks().next().and_then(|c| c.valid().chars().next()).is_some_and(is_word)
}

/// The first match at or after `at`: with `-w`, the first that is a whole word, found as GNU
/// grep does (try the match, then shorter matches at the same start, then later starts).
fn find(re: &Regex, word: bool, text: &[u8], mut at: usize) -> Option<(usize, usize)> {
    while at <= text.len() {
        let m = re.find(Input::new(text).range(at..))?;
        let (start, mut end) = (m.start(), m.end());
        if !word {
            return Some((start, end));
        }
        loop {
            if !word_before(text, start) && !word_after(text, end) {
                return Some((start, end));
            }
            if end == start {
                break;
            }
            let shorter = Input::new(text).range(start..end - 1).anchored(Anchored::Yes);
            match re.find(shorter) {
                Some(m) if m.end() > start => end = m.end(),
                _ => break,
            }
        }
        at = next_char(text, start);
    }
    None
}

/// The position after the character at `i` (an invalid byte counts as one character).
fn next_char(text: &[u8], i: usize) -> usize {
    let first = text.get(i..).and_then(|t| t.utf8_chunks().next());
    i + first.and_then(|c| c.valid().chars().next()).map_or(1, char::len_utf8)
}

fn run(args: Vec<std::ffi::OsString>) -> Result<u8, Error> {
    let o = parse(args)?;
    let re = build(&o)?;
    let word = o.word && !o.line;
    let mut input = au::stdin();
    let mut out = au::stdout();
    let mut line = Vec::new();
    let (mut number, mut selected) = (0u64, 0u64);
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        number += 1;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let matched = if word { find(&re, true, text, 0).is_some() } else { re.is_match(text) };
        if matched == o.invert {
            continue;
        }
        selected += 1;
        if o.quiet {
            return Ok(au::EXIT_OK);
        }
        if o.count {
            continue;
        }
        if o.only {
            if !o.invert {
                print_matches(&mut out, &re, word, text, o.number.then_some(number))?;
            }
            continue;
        }
        if o.number {
            write!(out, "{number}:")?;
        }
        out.write_all(text)?;
        out.write_all(b"\n")?;
    }
    if o.count && !o.quiet {
        writeln!(out, "{selected}")?;
    }
    out.flush()?;
    Ok(if selected > 0 { au::EXIT_OK } else { au::EXIT_FAILURE })
}

/// `-o`: every non-empty match of the line on its own line.
fn print_matches(
    out: &mut impl Write,
    re: &Regex,
    word: bool,
    text: &[u8],
    number: Option<u64>,
) -> std::io::Result<()> {
    let mut at = 0;
    while let Some((start, end)) = find(re, word, text, at) {
        if start == end {
            at = next_char(text, end);
            continue;
        }
        if let Some(n) = number {
            write!(out, "{n}:")?;
        }
        out.write_all(&text[start..end])?;
        out.write_all(b"\n")?;
        at = end;
    }
    Ok(())
}
