//! `wc`: count the lines, words, characters and bytes of stdin, printed like GNU wc prints
//! them for standard input, with GNU wc's rules in a UTF-8 locale: a word is a run of
//! printable characters and non-printable ones between white space (Unicode white space and
//! no-break spaces); invalid UTF-8 bytes count as bytes only. Binary-safe; streams its input.

use std::io::{Read, Write};

use agenix_aus::{self as au, ArgDoc, Card, Error};
use lexopt::Arg::Short;

const CARD: Card = Card {
    name: "wc",
    description: "Count the lines, words, characters and bytes of stdin.",
    capabilities: au::STDIO,
    inputs: &["application/octet-stream"],
    outputs: &["text/plain"],
    args: &[
        ArgDoc { flag: "-l", description: "print the number of newlines" },
        ArgDoc { flag: "-w", description: "print the number of words" },
        ArgDoc { flag: "-m", description: "print the number of UTF-8 characters" },
        ArgDoc { flag: "-c", description: "print the number of bytes" },
    ],
    usage: "wc [-lwmc]",
    exit_codes: &[("0", "ok"), ("1", "reading stdin failed"), ("2", "bad usage")],
    mounts: &[],
};

#[derive(Default)]
struct Counts {
    lines: u64,
    words: u64,
    chars: u64,
    bytes: u64,
    in_word: bool,
}

/// What an ASCII byte is to the word count: white space ends a word, a control character
/// neither starts nor ends one, anything else starts one or continues it.
#[derive(Clone, Copy, PartialEq)]
enum Class {
    Control,
    Space,
    Word,
}

const CLASSES: [Class; 128] = {
    let mut classes = [Class::Word; 128];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        classes[b] = if c.is_ascii_whitespace() || c == 0x0b {
            Class::Space
        } else if c.is_ascii_control() {
            Class::Control
        } else {
            Class::Word
        };
        b += 1;
    }
    classes
};

impl Counts {
    /// Counts the lines, characters and words of `data`; returns how many bytes at its end
    /// are the start of a character that the next read completes.
    fn decode(&mut self, data: &[u8]) -> usize {
        let mut i = 0;
        while i < data.len() {
            // Sixteen ASCII bytes a round, by table and without a branch: one test per round.
            while let Some(round) = data.get(i..i + 16).and_then(|r| <&[u8; 16]>::try_from(r).ok())
            {
                if u128::from_ne_bytes(*round) & u128::from_ne_bytes([0x80; 16]) != 0 {
                    break;
                }
                self.ascii(round);
                i += 16;
            }
            let Some(&b) = data.get(i) else { break };
            if b.is_ascii() {
                self.ascii(&[b]);
                i += 1;
                continue;
            }
            // A stretch without ASCII, decoded whole: its characters, and invalid bytes
            // (neither characters nor word boundaries).
            let stretch = data[i..].iter().position(u8::is_ascii).map_or(data.len(), |n| i + n);
            let mut rest = &data[i..stretch];
            i = stretch;
            loop {
                let (valid, error) = match std::str::from_utf8(rest) {
                    Ok(s) => (s, None),
                    Err(e) => {
                        (std::str::from_utf8(&rest[..e.valid_up_to()]).unwrap_or_default(), Some(e))
                    }
                };
                valid.chars().for_each(|c| self.char(c));
                let Some(e) = error else { break };
                rest = &rest[e.valid_up_to()..];
                match e.error_len() {
                    Some(n) => rest = &rest[n..],
                    // Cut off by the end of the read: the next read completes it.
                    None if stretch == data.len() => return rest.len(),
                    // Cut off by ASCII: invalid.
                    None => break,
                }
            }
        }
        0
    }

    fn ascii(&mut self, bytes: &[u8]) {
        self.chars += bytes.len() as u64;
        let (mut lines, mut words, mut in_word) = (0, 0, self.in_word);
        for &b in bytes {
            let class = CLASSES[usize::from(b & 0x7f)];
            let word = class == Class::Word;
            lines += u64::from(b == b'\n');
            words += u64::from(word && !in_word);
            in_word = word || (in_word && class == Class::Control);
        }
        self.lines += lines;
        self.words += words;
        self.in_word = in_word;
    }

    fn char(&mut self, c: char) {
        self.chars += 1;
        if c.is_whitespace() || matches!(c, '\u{2007}' | '\u{2060}') {
            self.in_word = false;
        } else if !c.is_control() && !self.in_word {
            // Control characters neither start nor end a word.
            self.words += 1;
            self.in_word = true;
        }
    }
}

fn main() {
    au::main(&CARD, run)
}

fn run(args: Vec<std::ffi::OsString>) -> Result<u8, Error> {
    let (mut lines, mut words, mut chars, mut bytes) = (false, false, false, false);
    let mut p = au::parser(args);
    while let Some(arg) = p.next()? {
        match arg {
            Short('l') => lines = true,
            Short('w') => words = true,
            Short('m') => chars = true,
            Short('c') => bytes = true,
            other => return Err(au::unexpected(other)),
        }
    }
    if !(lines || words || chars || bytes) {
        (lines, words, bytes) = (true, true, true);
    }

    let mut input = std::io::stdin().lock();
    let mut counts = Counts::default();
    // A partial character left at the end of one read is moved to the front for the next.
    let mut buf = vec![0; au::BUF_SIZE + 4];
    let mut carried = 0;
    loop {
        let n = match input.read(&mut buf[carried..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        let fresh = &buf[carried..carried + n];
        counts.bytes += n as u64;
        if words || chars {
            // Counts the lines too.
            let end = carried + n;
            let partial = counts.decode(&buf[..end]);
            buf.copy_within(end - partial..end, 0);
            carried = partial;
        } else if lines {
            counts.lines += fresh.iter().filter(|&&b| b == b'\n').count() as u64;
        }
    }

    let counts: Vec<u64> = [
        (lines, counts.lines),
        (words, counts.words),
        (chars, counts.chars),
        (bytes, counts.bytes),
    ]
    .into_iter()
    .filter_map(|(on, n)| on.then_some(n))
    .collect();
    // GNU wc pads to 7 columns for standard input unless it prints a single count.
    let width = if counts.len() == 1 { 1 } else { 7 };
    let line: Vec<String> = counts.iter().map(|n| format!("{n:>width$}")).collect();
    let mut out = au::stdout();
    writeln!(out, "{}", line.join(" "))?;
    out.flush()?;
    Ok(au::EXIT_OK)
}
