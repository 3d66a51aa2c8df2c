//! `grep`: print the lines of stdin that match a regular expression (the regex crate's syntax,
//! close to POSIX ERE, run by its engine `regex-automata`). Lines are bytes: non-UTF-8 input is
//! matched and printed as it is (like `grep -a`); `.` matches one UTF-8 character. `-w` follows
//! GNU grep's algorithm. Exit 0 if a line was selected, 1 if none, 2 on bad usage or a bad
//! pattern.

use std::io::Write;

use agenix_aus::{self as au, ArgDoc, Card, Error};
use lexopt::Arg::{Short, Value};
use regex_automata::meta::Regex;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input};
use regex_syntax::hir::{
    Capture, Class, ClassBytes, ClassBytesRange, ClassUnicode, ClassUnicodeRange, Hir, HirKind,
    Literal, Look, Repetition,
};

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

/// Compiles the patterns into one regex (anchored to the whole line with `-x`), twice: the
/// regex a line alone is matched with, and the one that searches a block of lines at once,
/// where `^` and `$` also match at the ends of every line. There is no block regex when the
/// patterns hold `\A` or `\z` (or `^` or `$` in CRLF mode): those mean the ends of each line,
/// which only a line at a time keeps.
fn build(o: &Opts) -> Result<(Regex, Option<Regex>), Error> {
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
    let builder = || {
        let mut b = Regex::builder();
        b.syntax(syntax).configure(Regex::config().utf8_empty(false));
        b
    };
    let compile = |p: &str| {
        let built = builder().build(p);
        built.map_err(|e| e.syntax_error().map_or_else(|| e.to_string(), ToString::to_string))
    };
    let line = compile(&pattern).map_err(|e| {
        // Name the user's pattern, not the combined one, where one alone is at fault.
        let alone = alternatives.iter().filter(|_| !o.fixed);
        let e = alone.filter_map(|p| compile(p).err()).next().unwrap_or(e);
        au::bad_input(format!("invalid pattern: {e}"))
    })?;
    let block = syntax::parse_with(&pattern, &syntax.multi_line(true))
        .ok()
        .filter(block_search_pays)
        .and_then(|hir| {
            // Where the lazy DFA gives up, the bounded backtracker would clear memory in
            // proportion to the rest of the block on every search; the PikeVM does not.
            let mut b = builder();
            b.configure(Regex::config().utf8_empty(false).backtrack(false));
            b.build_from_hir(&without_newline(&hir)).ok()
        });
    Ok((line, block))
}

/// Whether searching a block of lines at once is right and faster for `hir` (the patterns read
/// multi-line) than a line at a time. Not where anchors mean other things in a block: `\A`,
/// `\z`, and `^` `$` in CRLF mode (?R), which sit beside `\r`. Not where a line alone is
/// searched faster: a pattern every match of which ends at `$` (a line alone is searched
/// backwards from its end), or one with a Unicode word boundary (the lazy DFA stops at the
/// first byte past ASCII, and the rest of the block would go through a slower engine).
fn block_search_pays(hir: &Hir) -> bool {
    let looks = hir.properties().look_set();
    let differs = [Look::Start, Look::End, Look::StartCRLF, Look::EndCRLF];
    let unicode_words = [
        Look::WordUnicode,
        Look::WordUnicodeNegate,
        Look::WordStartUnicode,
        Look::WordEndUnicode,
        Look::WordStartHalfUnicode,
        Look::WordEndHalfUnicode,
    ];
    let ends_at_eol = hir.properties().look_set_suffix().contains(Look::EndLF);
    !ends_at_eol && !differs.iter().chain(&unicode_words).any(|&l| looks.contains(l))
}

/// `hir` with every way of matching a newline taken out. Within a line it matches what `hir`
/// matches, and no match of it spans lines: a search of a block finds a match in the line it
/// starts in, never one reaching lines ahead (a search that could would look that far again
/// for each line it passes).
fn without_newline(hir: &Hir) -> Hir {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => hir.clone(),
        HirKind::Literal(Literal(bytes)) if bytes.contains(&b'\n') => Hir::fail(),
        HirKind::Literal(_) => hir.clone(),
        HirKind::Class(Class::Unicode(class)) => {
            let mut class = class.clone();
            class.difference(&ClassUnicode::new([ClassUnicodeRange::new('\n', '\n')]));
            Hir::class(Class::Unicode(class))
        }
        HirKind::Class(Class::Bytes(class)) => {
            let mut class = class.clone();
            class.difference(&ClassBytes::new([ClassBytesRange::new(b'\n', b'\n')]));
            Hir::class(Class::Bytes(class))
        }
        HirKind::Repetition(r) => {
            let sub = Box::new(without_newline(&r.sub));
            Hir::repetition(Repetition { min: r.min, max: r.max, greedy: r.greedy, sub })
        }
        HirKind::Capture(c) => {
            let sub = Box::new(without_newline(&c.sub));
            Hir::capture(Capture { index: c.index, name: c.name.clone(), sub })
        }
        HirKind::Concat(subs) => Hir::concat(subs.iter().map(without_newline).collect()),
        HirKind::Alternation(subs) => Hir::alternation(subs.iter().map(without_newline).collect()),
    }
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

/// The most input searched at once (a read that completes a line hands over what it has).
const BLOCK: usize = 256 * 1024;

fn run(args: Vec<std::ffi::OsString>) -> Result<u8, Error> {
    let o = parse(args)?;
    let (re, scan) = build(&o)?;
    let mut g =
        Grep { o: &o, re: &re, word: o.word && !o.line, out: au::stdout(), number: 0, selected: 0 };
    let mut blocks = au::LineBlocks::new(std::io::stdin().lock(), BLOCK);
    while let Some(block) = blocks.next_block()? {
        if g.block(scan.as_ref(), block)? == Flow::Quit {
            return Ok(au::EXIT_OK);
        }
    }
    if o.count && !o.quiet {
        writeln!(g.out, "{}", g.selected)?;
    }
    g.out.flush()?;
    Ok(if g.selected > 0 { au::EXIT_OK } else { au::EXIT_FAILURE })
}

#[derive(PartialEq)]
enum Flow {
    Go,
    /// `-q` selected a line: nothing more to read.
    Quit,
}

struct Grep<'a, W> {
    o: &'a Opts,
    re: &'a Regex,
    word: bool,
    out: W,
    /// Lines read before the current position.
    number: u64,
    selected: u64,
}

impl<W: Write> Grep<'_, W> {
    /// Searches a block of whole lines. With `scan`, the whole block is searched at once and
    /// only the line holding a match is looked at alone; the lines before it match nothing.
    /// Without it (see [`build`]), each line is.
    fn block(&mut self, scan: Option<&Regex>, block: &[u8]) -> std::io::Result<Flow> {
        let mut pos = 0;
        while pos < block.len() {
            // Where the next line worth a look starts, and whether the block search matched
            // in it (a line at a time, every line is worth one).
            let candidate = match scan {
                None => Some((pos, false)),
                Some(scan) => scan
                    .find(Input::new(block).range(pos..))
                    // A match after the last newline is in no line.
                    .filter(|m| m.start() < block.len() || block.last() != Some(&b'\n'))
                    .map(|m| (m.start(), true)),
            };
            let Some((start, found)) = candidate else {
                return self.unmatched(&block[pos..]);
            };
            let line_start =
                memchr::memrchr(b'\n', &block[pos..start]).map_or(pos, |i| pos + i + 1);
            let line_end =
                memchr::memchr(b'\n', &block[start..]).map_or(block.len(), |i| start + i);
            if self.unmatched(&block[pos..line_start])? == Flow::Quit {
                return Ok(Flow::Quit);
            }
            let line = &block[line_start..line_end];
            self.number += 1;
            // A block match is a match of its line alone: it cannot cross a newline, and the
            // block search is multi-line, so `^` and `$` hold at the line's ends and nowhere
            // else in it. Only `-w` has more to check.
            let matched = if self.word {
                find(self.re, true, line, 0).is_some()
            } else {
                found || self.re.is_match(line)
            };
            if self.line(line, matched)? == Flow::Quit {
                return Ok(Flow::Quit);
            }
            pos = line_end + 1;
        }
        Ok(Flow::Go)
    }

    /// Lines known to match nothing (whole lines, the last one's newline possibly missing).
    fn unmatched(&mut self, lines: &[u8]) -> std::io::Result<Flow> {
        if lines.is_empty() {
            return Ok(Flow::Go);
        }
        if !self.o.invert {
            if self.o.number {
                self.number += line_count(lines);
            }
            return Ok(Flow::Go);
        }
        if self.o.quiet {
            self.selected += 1;
            return Ok(Flow::Quit);
        }
        if self.o.count || self.o.only || !self.o.number {
            let n = line_count(lines);
            self.number += n;
            self.selected += n;
            // `-o -v` selects lines but prints nothing of them.
            if !(self.o.count || self.o.only) {
                self.out.write_all(lines)?;
                if lines.last() != Some(&b'\n') {
                    self.out.write_all(b"\n")?;
                }
            }
            return Ok(Flow::Go);
        }
        let body = lines.strip_suffix(b"\n").unwrap_or(lines);
        for line in body.split(|&b| b == b'\n') {
            self.number += 1;
            self.line(line, false)?;
        }
        Ok(Flow::Go)
    }

    /// One line (without its newline), counted, and whether it matched.
    fn line(&mut self, text: &[u8], matched: bool) -> std::io::Result<Flow> {
        if matched == self.o.invert {
            return Ok(Flow::Go);
        }
        self.selected += 1;
        let o = self.o;
        if o.quiet {
            return Ok(Flow::Quit);
        }
        if o.count {
            return Ok(Flow::Go);
        }
        if o.only {
            if !o.invert {
                let number = o.number.then_some(self.number);
                print_matches(&mut self.out, self.re, self.word, text, number)?;
            }
            return Ok(Flow::Go);
        }
        if o.number {
            write!(self.out, "{}:", self.number)?;
        }
        self.out.write_all(text)?;
        self.out.write_all(b"\n")?;
        Ok(Flow::Go)
    }
}

/// The number of lines in `lines`: its newlines, and one more if the last has none.
fn line_count(lines: &[u8]) -> u64 {
    let newlines = memchr::memchr_iter(b'\n', lines).count() as u64;
    newlines + u64::from(lines.last().is_some_and(|&b| b != b'\n'))
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
