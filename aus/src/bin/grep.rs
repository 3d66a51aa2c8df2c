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
use regex_syntax::hir::literal::{ExtractKind, Extractor};
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

/// Compiles the patterns into one regex (anchored to the whole line with `-x`) that a line
/// alone is matched with, and says how a block of lines is searched at once, if it can be:
/// - with `-i`, where every match starts with one ASCII literal, for that literal in the
///   block folded to lower case ([`FoldedLiteral`]);
/// - else with the regex compiled again to search the block, `^` and `$` matching at the
///   ends of every line. Not when the patterns hold `\A` or `\z` (or `^` or `$` in CRLF
///   mode): those mean the ends of each line, which only a line at a time keeps.
fn build(o: &Opts) -> Result<(Regex, Option<Scan>), Error> {
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
    // With -i, the regex engine searches for a literal's case variants with one SIMD search
    // (Teddy) on x86-64 and aarch64 only; in WebAssembly it looks for a rarer byte and
    // confirms each hit with two automata. Folding the text and searching it once for the
    // folded literal is faster than either (on 100 MB of logs, 52 against 68 ms natively).
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
    let folded = o
        .ignore_case
        .then(|| syntax::parse_with(&pattern, &syntax).ok())
        .flatten()
        .and_then(|hir| FoldedLiteral::of(&hir));
    Ok((
        line,
        match (folded, block) {
            (Some(literal), block) => Some(Scan::Literal(Box::new(literal), block)),
            (None, block) => block.map(Scan::Regex),
        },
    ))
}

/// How a block of lines is searched at once, where it is (see [`build`]).
enum Scan {
    /// The patterns read multi-line, without a way to match a newline.
    Regex(Regex),
    /// The ASCII literal every match starts with, in any case, and the block regex (if
    /// there is one) to confirm a place it is found.
    Literal(Box<FoldedLiteral>, Option<Regex>),
}

/// A search for the ASCII literal that every match of a case-insensitive pattern starts
/// with: the text is folded to lower case a window at a time and searched for the folded
/// literal with memchr's SIMD substring search. Where the pattern is exactly that literal in
/// every case, each place it is found is a match; else the block regex searches on from
/// there (or the line is matched alone where there is no block regex).
struct FoldedLiteral {
    finder: memchr::memmem::Finder<'static>,
    /// Whether every place the literal is found is a match of the pattern.
    exact: bool,
    /// Where in the block `folded` starts.
    start: usize,
    /// Part of the block, folded: at most `FOLD_WINDOW` bytes, so a long line is not held
    /// twice.
    folded: Vec<u8>,
}

/// The most of a block folded at once.
const FOLD_WINDOW: usize = 32 * 1024;

impl FoldedLiteral {
    /// The search for `hir`, if every match of it starts with one ASCII literal of at least
    /// three bytes in some case, holding a letter and no newline.
    fn of(hir: &Hir) -> Option<Self> {
        let prefixes = Extractor::new().kind(ExtractKind::Prefix).extract(hir);
        let literals = prefixes.literals()?;
        // The ASCII start every prefix has (a case variant past ASCII, as the Kelvin sign is
        // of `k`, ends it).
        let len = literals
            .iter()
            .map(|l| l.as_bytes().iter().take_while(|b| b.is_ascii()).count())
            .min()?;
        let folded = literals.first()?.as_bytes().get(..len)?.to_ascii_lowercase();
        let letters = folded.iter().filter(|b| b.is_ascii_alphabetic()).count();
        if len < 3 || letters == 0 || folded.contains(&b'\n') {
            return None;
        }
        if !literals.iter().all(|l| l.as_bytes()[..len].eq_ignore_ascii_case(&folded)) {
            return None;
        }
        // Only where the prefixes hold every case variant of the literal (`(?-i:ABC)` under
        // -i does not): else most places it is found in would be no match.
        let mut variants: Vec<&[u8]> = literals.iter().map(|l| &l.as_bytes()[..len]).collect();
        variants.sort_unstable();
        variants.dedup();
        let every_variant = u32::try_from(letters)
            .ok()
            .and_then(|n| 1usize.checked_shl(n))
            .is_some_and(|n| variants.len() == n);
        if !every_variant {
            return None;
        }
        // Exact when the prefixes are the whole pattern: no look-around (which prefixes do
        // not show), nothing cut off.
        let exact = prefixes.is_exact()
            && hir.properties().look_set().is_empty()
            && literals.iter().all(|l| l.len() == len);
        let finder = memchr::memmem::Finder::new(&folded).into_owned();
        Some(Self { finder, exact, start: 0, folded: Vec::new() })
    }

    /// Starts on a new block: nothing of it is folded yet.
    fn reset(&mut self) {
        self.start = 0;
        self.folded.clear();
    }

    /// Where the literal starts next in `block`, at or after `at`, in any case.
    fn find(&mut self, block: &[u8], mut at: usize) -> Option<usize> {
        let n = self.finder.needle().len();
        loop {
            let end = self.start + self.folded.len();
            if at < self.start || at + n > end {
                // Fold the next window, from `at`. Windows after the first overlap the last
                // by less than the literal, so nothing across their edge is missed.
                if at + n > block.len() {
                    return None;
                }
                let upto = block.len().min(at.saturating_add(FOLD_WINDOW).max(at + n));
                self.start = at;
                self.folded.clear();
                self.folded.extend(block[at..upto].iter().map(u8::to_ascii_lowercase));
                continue;
            }
            if let Some(i) = self.finder.find(&self.folded[at - self.start..]) {
                return Some(at + i);
            }
            if end == block.len() {
                return None;
            }
            at = end + 1 - n;
        }
    }
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
    first_char(text, i).is_some_and(is_word)
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
    i + first_char(text, i).map_or(1, char::len_utf8)
}

/// The character starting at `i`, if it is valid UTF-8. Only its at most four bytes are
/// looked at: checking the rest of a long line on each call made `-w` quadratic.
fn first_char(text: &[u8], i: usize) -> Option<char> {
    let rest = text.get(i..)?;
    let c = rest[..rest.len().min(4)].utf8_chunks().next()?;
    c.valid().chars().next()
}

/// The most input searched at once (a read that completes a line hands over what it has).
const BLOCK: usize = 256 * 1024;

fn run(args: Vec<std::ffi::OsString>) -> Result<u8, Error> {
    let o = parse(args)?;
    let (re, mut scan) = build(&o)?;
    let mut g =
        Grep { o: &o, re: &re, word: o.word && !o.line, out: au::stdout(), number: 0, selected: 0 };
    let mut blocks = au::LineBlocks::new(std::io::stdin().lock(), BLOCK);
    while let Some(block) = blocks.next_block()? {
        if g.block(scan.as_mut(), block)? == Flow::Quit {
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
    /// only the line holding a match (or a candidate) is looked at alone; the lines before it
    /// match nothing. Without it (see [`build`]), each line is.
    fn block(&mut self, mut scan: Option<&mut Scan>, block: &[u8]) -> std::io::Result<Flow> {
        if let Some(Scan::Literal(literal, _)) = scan.as_deref_mut() {
            literal.reset();
        }
        let mut pos = 0;
        while pos < block.len() {
            // Where the next line worth a look starts, and whether the block search matched
            // in it (a line at a time, every line is worth one).
            let search = |scan: &Regex, from: usize| {
                scan.find(Input::new(block).range(from..))
                    // A match after the last newline is in no line.
                    .filter(|m| m.start() < block.len() || block.last() != Some(&b'\n'))
                    .map(|m| (m.start(), true))
            };
            let candidate = match scan.as_deref_mut() {
                None => Some((pos, false)),
                Some(Scan::Regex(scan)) => search(scan, pos),
                Some(Scan::Literal(literal, scan)) => match literal.find(block, pos) {
                    Some(at) if literal.exact => Some((at, true)),
                    // The first match from there on: none starts before the literal (the
                    // search still sees the bytes before it, for `\b` and `^`).
                    Some(at) => match scan {
                        Some(scan) => search(scan, at),
                        None => Some((at, false)),
                    },
                    None => None,
                },
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

    use super::*;

    fn literal(pattern: &str) -> Option<FoldedLiteral> {
        let syntax = syntax::Config::new().case_insensitive(true).utf8(false);
        FoldedLiteral::of(&syntax::parse_with(pattern, &syntax).unwrap())
    }

    fn opts(args: &[&str]) -> Opts {
        parse(args.iter().map(Into::into).collect()).unwrap()
    }

    #[test]
    fn a_folded_literal_is_exact_only_for_every_case_of_the_whole_pattern() {
        let exact = |p: &str| literal(p).map(|l| l.exact);
        assert_eq!(exact("error"), Some(true));
        assert_eq!(exact("fail-3x"), Some(true));
        // A match of the literal may not be one of the pattern.
        assert_eq!(exact("error$"), Some(false));
        assert_eq!(exact(r"\berror"), Some(false));
        assert_eq!(exact(r"error\d"), Some(false));
        assert_eq!(exact("errors? found"), Some(false));
        // No single literal starts every match; it is too short or caseless; or some of its
        // case variants are no match.
        for pattern in
            ["error|warn", "[a-z]rror", ".*error", "ab", "123", "", "a\nbc", "(?-i:E)rror"]
        {
            assert!(literal(pattern).is_none(), "{pattern:?}");
        }
        // `k` has a case variant past ASCII (the Kelvin sign), which the ASCII start ends
        // before: too short here, and a shorter literal where it comes later.
        assert!(literal("kernel").is_none());
        assert_eq!(literal("broken").unwrap().finder.needle(), b"bro");
    }

    /// Every place, in any case, and nowhere else: across the edges of the windows folded
    /// at once, and past them.
    #[test]
    fn a_folded_literal_is_found_in_any_case_and_nowhere_else() {
        let mut l = literal("error").unwrap();
        for pad in [0, FOLD_WINDOW - 9, FOLD_WINDOW - 3, FOLD_WINDOW, 3 * FOLD_WINDOW - 2] {
            let block = [&vec![b'e'; pad][..], b"an ERR\nerroR eRrOr\xffERROR erro"].concat();
            l.reset();
            let mut found = Vec::new();
            let mut at = 0;
            while let Some(i) = l.find(&block, at) {
                found.push(i - pad);
                at = i + 1;
            }
            assert_eq!(found, [7, 13, 19], "after {pad} bytes");
            assert_eq!(l.find(&block, block.len() + 1), None);
        }
    }

    /// Lines of the literal, its case variants, near misses and separators, so that each
    /// comes often, whole words among them.
    fn text(mut seed: u64) -> Vec<u8> {
        const PIECES: &[&str] = &[
            "error", "ERROR", "eRr", "rro", "o", "e", "E", "r", " ", " ", "\t", "\n", "-",
            "\u{212a}",
        ];
        let mut text = b"\xff".to_vec();
        while text.len() < 400 << 10 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let piece = usize::try_from(seed >> 33).unwrap() % PIECES.len();
            text.extend_from_slice(PIECES[piece].as_bytes());
        }
        text
    }

    /// What grep prints and selects, given `text` in blocks of 4000 lines (several windows
    /// each), with or without `scan`.
    fn grep(o: &Opts, scan: Option<&mut Scan>, text: &[u8]) -> (Vec<u8>, u64) {
        let re = build(o).unwrap().0;
        let mut g =
            Grep { o, re: &re, word: o.word && !o.line, out: Vec::new(), number: 0, selected: 0 };
        let mut scan = scan;
        for block in text.split_inclusive(|&b| b == b'\n').collect::<Vec<_>>().chunks(4000) {
            let block = block.concat();
            g.block(scan.as_deref_mut(), &block).unwrap();
        }
        (g.out, g.selected)
    }

    /// The literal search selects, numbers and prints what a search of each line alone does,
    /// with the block regex confirming a place or without one (`$` at the end).
    #[test]
    fn the_folded_literal_search_selects_what_each_line_alone_selects() {
        let text = text(0x2545_f491_4f6c_dd1d);
        for pattern in ["error", "err", "error$", r"\berr", "rro", "eRr+o", "rro[^r]"] {
            for flags in [&["-n"][..], &["-v", "-n"], &["-o", "-n"], &["-w"], &["-c"]] {
                let o = opts(&[&["-i", "-e", pattern][..], flags].concat());
                let Some(mut scan) = build(&o).unwrap().1 else { panic!("{pattern:?}") };
                assert!(matches!(scan, Scan::Literal(..)), "{pattern:?} is not searched so");
                let by_line = grep(&o, None, &text);
                let by_literal = grep(&o, Some(&mut scan), &text);
                assert!(by_line == by_literal, "grep -i {pattern:?} {flags:?}");
                assert!(by_line.1 > 0, "grep -i {pattern:?} {flags:?} selected nothing");
            }
        }
    }
}
