//! `sort`: sort the lines of stdin, with GNU sort's semantics in the C locale: byte order by
//! default, keys (`-k`) and field separators (`-t`) as GNU counts them, and a last-resort
//! whole-line comparison between lines whose keys compare equal (turned off by `-s` or `-u`).
//! The sort is stable. Buffers its input.

use std::cmp::Ordering;
use std::io::{Read, Write};

use agenix_aus::{self as au, ArgDoc, Card, Error};
use lexopt::Arg::Short;

const CARD: Card = Card {
    name: "sort",
    description: "Sort the lines of stdin (byte order, like LC_ALL=C sort).",
    capabilities: au::STDIO,
    inputs: &["text/plain"],
    outputs: &["text/plain"],
    args: &[
        ArgDoc { flag: "-n", description: "compare by numeric value (leading -, digits, .)" },
        ArgDoc { flag: "-r", description: "reverse the order" },
        ArgDoc { flag: "-u", description: "print only the first of lines whose keys are equal" },
        ArgDoc { flag: "-b", description: "ignore leading blanks in keys" },
        ArgDoc { flag: "-s", description: "stable: no last-resort whole-line comparison" },
        ArgDoc {
            flag: "-k N[.C][OPTS][,M[.C][OPTS]]",
            description: "sort by fields N to M (1-based; OPTS any of b, n, r); may be repeated",
        },
        ArgDoc { flag: "-t SEP", description: "fields are separated by the byte SEP, not blanks" },
    ],
    usage: "sort [-bnrsu] [-t SEP] [-k N[,M]]...",
    exit_codes: &[("0", "ok"), ("1", "reading stdin failed"), ("2", "bad usage")],
    mounts: &[],
};

#[derive(Debug, Clone, Copy, Default)]
struct Order {
    numeric: bool,
    reverse: bool,
    skip_start_blanks: bool,
    skip_end_blanks: bool,
}

impl Order {
    fn is_default(self) -> bool {
        !(self.numeric || self.reverse || self.skip_start_blanks || self.skip_end_blanks)
    }
}

/// A sort key, 0-based as in GNU sort's `struct keyfield`.
#[derive(Debug, Clone, Copy)]
struct Key {
    start_field: usize,
    start_char: usize,
    /// `None`: to the end of the line. Otherwise the field count as GNU's `limfield` uses it.
    end_field: Option<usize>,
    /// 0: the whole end field.
    end_char: usize,
    order: Order,
}

impl Key {
    fn whole_line(order: Order) -> Self {
        Self { start_field: 0, start_char: 0, end_field: None, end_char: 0, order }
    }
}

struct Opts {
    keys: Vec<Key>,
    global: Order,
    tab: Option<u8>,
    unique: bool,
    stable: bool,
}

fn main() {
    au::main(&CARD, run)
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Parses a number of a key position; `what` names it in the error.
fn parse_position(text: &str, what: &str, spec: &str) -> Result<(usize, usize), Error> {
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let n = text[..digits]
        .parse::<usize>()
        .map_err(|_| au::usage(format!("invalid number at {what} in key '{spec}'")))?;
    Ok((n, digits))
}

fn parse_key_options(text: &str, spec: &str, order: &mut Order, start: bool) -> Result<(), Error> {
    for c in text.chars() {
        match c {
            'n' => order.numeric = true,
            'r' => order.reverse = true,
            'b' if start => order.skip_start_blanks = true,
            'b' => order.skip_end_blanks = true,
            _ => return Err(au::usage(format!("invalid option '{c}' in key '{spec}'"))),
        }
    }
    Ok(())
}

/// Parses `N[.C][OPTS][,M[.C][OPTS]]`.
fn parse_key(spec: &str) -> Result<Key, Error> {
    let (start, end) = match spec.split_once(',') {
        Some((s, e)) => (s, Some(e)),
        None => (spec, None),
    };
    let mut order = Order::default();
    let (field, used) = parse_position(start, "field start", spec)?;
    let mut rest = &start[used..];
    let start_field = field
        .checked_sub(1)
        .ok_or_else(|| au::usage(format!("field number is zero in key '{spec}'")))?;
    let mut start_char = 0;
    if let Some(after) = rest.strip_prefix('.') {
        let (c, used) = parse_position(after, "character start", spec)?;
        start_char = c
            .checked_sub(1)
            .ok_or_else(|| au::usage(format!("character offset is zero in key '{spec}'")))?;
        rest = &after[used..];
    }
    parse_key_options(rest, spec, &mut order, true)?;

    let (mut end_field, mut end_char) = (None, 0);
    if let Some(end) = end {
        let (field, used) = parse_position(end, "field end", spec)?;
        let mut rest = &end[used..];
        let field = field
            .checked_sub(1)
            .ok_or_else(|| au::usage(format!("field number is zero in key '{spec}'")))?;
        if let Some(after) = rest.strip_prefix('.') {
            let (c, used) = parse_position(after, "character end", spec)?;
            end_char = c;
            rest = &after[used..];
        }
        end_field = Some(field);
        parse_key_options(rest, spec, &mut order, false)?;
    }
    Ok(Key { start_field, start_char, end_field, end_char, order })
}

fn parse(args: Vec<std::ffi::OsString>) -> Result<Opts, Error> {
    let mut o = Opts {
        keys: Vec::new(),
        global: Order::default(),
        tab: None,
        unique: false,
        stable: false,
    };
    let mut p = au::parser(args);
    while let Some(arg) = p.next()? {
        match arg {
            Short('n') => o.global.numeric = true,
            Short('r') => o.global.reverse = true,
            Short('b') => (o.global.skip_start_blanks, o.global.skip_end_blanks) = (true, true),
            Short('u') => o.unique = true,
            Short('s') => o.stable = true,
            Short('k') => o.keys.push(parse_key(&au::string(p.value()?)?)?),
            Short('t') => o.tab = Some(au::single_byte("-t", p.value()?)?),
            other => return Err(au::unexpected(other)),
        }
    }
    // Keys without options of their own take the global ones; with no key at all, global
    // options apply to the whole line.
    for key in &mut o.keys {
        if key.order.is_default() {
            key.order = o.global;
        }
    }
    if o.keys.is_empty() && !o.global.is_default() {
        o.keys.push(Key::whole_line(o.global));
    }
    Ok(o)
}

/// Where the key begins in `line` (GNU `begfield`).
fn key_start(line: &[u8], key: &Key, tab: Option<u8>) -> usize {
    let lim = line.len();
    let mut ptr = 0;
    for _ in 0..key.start_field {
        if ptr >= lim {
            break;
        }
        match tab {
            Some(t) => {
                while ptr < lim && line[ptr] != t {
                    ptr += 1;
                }
                if ptr < lim {
                    ptr += 1;
                }
            }
            None => {
                while ptr < lim && is_blank(line[ptr]) {
                    ptr += 1;
                }
                while ptr < lim && !is_blank(line[ptr]) {
                    ptr += 1;
                }
            }
        }
    }
    if key.order.skip_start_blanks {
        while ptr < lim && is_blank(line[ptr]) {
            ptr += 1;
        }
    }
    lim.min(ptr.saturating_add(key.start_char))
}

/// Where the key ends in `line` (GNU `limfield`).
fn key_end(line: &[u8], key: &Key, tab: Option<u8>) -> usize {
    let lim = line.len();
    let Some(end_field) = key.end_field else { return lim };
    let mut words = if key.end_char == 0 { end_field + 1 } else { end_field };
    let mut ptr = 0;
    while ptr < lim && words > 0 {
        words -= 1;
        match tab {
            Some(t) => {
                while ptr < lim && line[ptr] != t {
                    ptr += 1;
                }
                if ptr < lim && (words > 0 || key.end_char > 0) {
                    ptr += 1;
                }
            }
            None => {
                while ptr < lim && is_blank(line[ptr]) {
                    ptr += 1;
                }
                while ptr < lim && !is_blank(line[ptr]) {
                    ptr += 1;
                }
            }
        }
    }
    if key.end_char > 0 {
        if key.order.skip_end_blanks {
            while ptr < lim && is_blank(line[ptr]) {
                ptr += 1;
            }
        }
        ptr = lim.min(ptr.saturating_add(key.end_char));
    }
    ptr
}

fn key_of<'a>(line: &'a [u8], key: &Key, tab: Option<u8>) -> &'a [u8] {
    let start = key_start(line, key, tab);
    let end = key_end(line, key, tab);
    if start < end { &line[start..end] } else { &[] }
}

/// A number as GNU `sort -n` reads it: blanks, an optional `-`, digits, `.`, digits.
/// Returns (negative, integer digits without leading zeros, fraction without trailing zeros).
fn number(text: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut i = 0;
    while i < text.len() && is_blank(text[i]) {
        i += 1;
    }
    let negative = text.get(i) == Some(&b'-');
    if negative {
        i += 1;
    }
    let int_start = i;
    while i < text.len() && text[i].is_ascii_digit() {
        i += 1;
    }
    let mut int = &text[int_start..i];
    while let [b'0', rest @ ..] = int {
        int = rest;
    }
    let mut frac: &[u8] = &[];
    if text.get(i) == Some(&b'.') {
        let frac_start = i + 1;
        let mut j = frac_start;
        while j < text.len() && text[j].is_ascii_digit() {
            j += 1;
        }
        frac = &text[frac_start..j];
        while let [rest @ .., b'0'] = frac {
            frac = rest;
        }
    }
    let zero = int.is_empty() && frac.is_empty();
    (negative && !zero, int, frac)
}

fn compare_numbers(a: &[u8], b: &[u8]) -> Ordering {
    let (neg_a, int_a, frac_a) = number(a);
    let (neg_b, int_b, frac_b) = number(b);
    if neg_a != neg_b {
        return if neg_a { Ordering::Less } else { Ordering::Greater };
    }
    let magnitude = int_a
        .len()
        .cmp(&int_b.len())
        .then_with(|| int_a.cmp(int_b))
        .then_with(|| frac_a.cmp(frac_b));
    if neg_a { magnitude.reverse() } else { magnitude }
}

fn compare_keys(a: &[u8], b: &[u8], o: &Opts) -> Ordering {
    if o.keys.is_empty() {
        let ord = a.cmp(b);
        return if o.global.reverse { ord.reverse() } else { ord };
    }
    for key in &o.keys {
        let (ka, kb) = (key_of(a, key, o.tab), key_of(b, key, o.tab));
        let ord = if key.order.numeric { compare_numbers(ka, kb) } else { ka.cmp(kb) };
        let ord = if key.order.reverse { ord.reverse() } else { ord };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

fn compare(a: &[u8], b: &[u8], o: &Opts) -> Ordering {
    let ord = compare_keys(a, b, o);
    if ord != Ordering::Equal || o.unique || o.stable || o.keys.is_empty() {
        return ord;
    }
    let last_resort = a.cmp(b);
    if o.global.reverse { last_resort.reverse() } else { last_resort }
}

fn run(args: Vec<std::ffi::OsString>) -> Result<u8, Error> {
    let o = parse(args)?;
    let chunks = read_chunks(std::io::stdin().lock())?;
    let count: usize = chunks.iter().map(|c| memchr::memchr_iter(b'\n', c).count()).sum();
    let mut out = au::stdout();
    if let Some(reverse) = whole_line_order(&o) {
        let mut lines = Vec::with_capacity(count);
        lines.extend(lines_of(&chunks).map(bytewise::Line::new));
        bytewise::sort(&mut lines);
        if reverse {
            lines.reverse();
        }
        let mut previous: Option<&[u8]> = None;
        for line in lines.iter().map(|l| l.text) {
            if o.unique && previous == Some(line) {
                continue;
            }
            previous = Some(line);
            out.write_all(line)?;
        }
        out.flush()?;
        return Ok(au::EXIT_OK);
    }
    let mut lines = Vec::with_capacity(count);
    lines.extend(lines_of(&chunks).map(|l| &l[..l.len() - 1]));
    lines.sort_by(|a, b| compare(a, b, &o));

    let mut previous: Option<&[u8]> = None;
    for line in lines {
        if o.unique {
            if previous.is_some_and(|p| compare_keys(p, line, &o) == Ordering::Equal) {
                continue;
            }
            previous = Some(line);
        }
        out.write_all(line)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(au::EXIT_OK)
}

/// Every line of the pieces, with its newline.
fn lines_of(chunks: &[Vec<u8>]) -> impl Iterator<Item = &[u8]> {
    chunks.iter().flat_map(|chunk| {
        let mut start = 0;
        memchr::memchr_iter(b'\n', chunk).map(move |end| {
            let line = &chunk[start..=end];
            start = end + 1;
            line
        })
    })
}

/// The sizes of the pieces input is read into: each as large as all read before it, within
/// these bounds, so small input takes little memory and large input few pieces.
const CHUNK_MIN: usize = 64 << 10;
const CHUNK_MAX: usize = 16 << 20;

/// All of `input`, in pieces of whole lines each ending with a newline (one is added to a
/// last line without). Pieces, not one buffer: a buffer that grows copies what it holds each
/// time, and holds up to twice the input while it does.
fn read_chunks(mut input: impl Read) -> std::io::Result<Vec<Vec<u8>>> {
    let mut chunks = Vec::new();
    let mut chunk: Vec<u8> = Vec::new();
    let mut total = 0usize;
    loop {
        if chunk.len() == chunk.capacity() {
            // A small read first, so the end of the input costs no new piece.
            let mut probe = [0; 4096];
            let n = loop {
                match input.read(&mut probe) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    other => break other?,
                }
            };
            if n == 0 {
                break;
            }
            // A new piece grows with the input; one line longer than its piece doubles it.
            chunk.reserve(total.clamp(CHUNK_MIN, CHUNK_MAX).max(chunk.len()));
            chunk.extend_from_slice(&probe[..n]);
            total = total.saturating_add(n);
        }
        let room = chunk.capacity() - chunk.len();
        let n = (&mut input).take(room as u64).read_to_end(&mut chunk)?;
        total = total.saturating_add(n);
        if n < room {
            break;
        }
        // Full: its whole lines are a piece; the rest begins the next.
        if let Some(i) = memchr::memrchr(b'\n', &chunk) {
            let rest = chunk[i + 1..].to_vec();
            chunk.truncate(i + 1);
            chunks.push(std::mem::replace(&mut chunk, rest));
        }
    }
    if !chunk.is_empty() {
        if chunk.last() != Some(&b'\n') {
            chunk.reserve_exact(1);
            chunk.push(b'\n');
        }
        chunks.push(chunk);
    }
    Ok(chunks)
}

/// When lines are ordered by their bytes alone (no key, no `-n` or `-b`), whether the order
/// is reversed. Lines that compare equal are then the same bytes, so neither stability nor
/// which of equal lines `-u` keeps can show, and the faster [`bytewise`] sort applies.
fn whole_line_order(o: &Opts) -> Option<bool> {
    match o.keys.as_slice() {
        [] => Some(false),
        [key]
            if key.start_field == 0
                && key.start_char == 0
                && key.end_field.is_none()
                && !(key.order.numeric
                    || key.order.skip_start_blanks
                    || key.order.skip_end_blanks) =>
        {
            Some(key.order.reverse)
        }
        _ => None,
    }
}

/// Sorting lines by their bytes: each line's next 8 bytes are compared as one integer, and
/// only lines whose 8 bytes are the same look further, 8 bytes deeper.
mod bytewise {
    /// A line of the input with its newline, and 8 bytes of it from the depth being sorted,
    /// as a big-endian integer (zeros past its end).
    #[derive(Clone, Copy)]
    pub(super) struct Line<'a> {
        key: u64,
        pub(super) text: &'a [u8],
    }

    impl<'a> Line<'a> {
        /// `text` ends with a newline.
        pub(super) fn new(text: &'a [u8]) -> Self {
            Self { key: 0, text }
        }

        /// The length of the line without its newline.
        fn len(self) -> usize {
            self.text.len().saturating_sub(1)
        }

        /// The line without its newline, from `depth` on.
        fn rest(self, depth: usize) -> &'a [u8] {
            self.text.get(depth..self.len()).unwrap_or(&[])
        }

        /// How many bytes are left past `depth`, counting all above 8 as 9: two lines with
        /// the same key are equal if both have 8 or fewer left, the shorter one is first if
        /// one has fewer, and only if both have more does it take a deeper look.
        fn left(self, depth: usize) -> usize {
            self.len().saturating_sub(depth).min(9)
        }

        fn set_key(&mut self, depth: usize) {
            let rest = self.rest(depth);
            self.key = match rest.first_chunk() {
                Some(bytes) => u64::from_be_bytes(*bytes),
                None => {
                    rest.iter().zip((0..8).rev()).fold(0, |k, (&b, i)| k | u64::from(b) << (8 * i))
                }
            };
        }
    }

    /// Groups this small are sorted by comparing their remaining bytes directly.
    const SMALL: usize = 16;

    /// Sorts `lines` into the byte order of their text. An explicit stack, not recursion:
    /// long equal lines go as deep as their length.
    pub(super) fn sort(lines: &mut [Line<'_>]) {
        let mut todo = vec![(0, lines.len(), 0)];
        while let Some((from, to, depth)) = todo.pop() {
            let group = &mut lines[from..to];
            if group.len() <= SMALL {
                group.sort_unstable_by(|a, b| a.rest(depth).cmp(b.rest(depth)));
                continue;
            }
            for line in group.iter_mut() {
                line.set_key(depth);
            }
            group.sort_unstable_by_key(|l| (l.key, l.left(depth)));
            let mut i = 0;
            while i < group.len() {
                let first = group[i];
                let same = group[i..]
                    .iter()
                    .take_while(|l| l.key == first.key && l.left(depth) == first.left(depth))
                    .count();
                if same > 1 && first.left(depth) > 8 {
                    todo.push((from + i, from + i + same, depth + 8));
                }
                i += same;
            }
        }
    }
}
