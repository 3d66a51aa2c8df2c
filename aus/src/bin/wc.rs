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

impl Counts {
    fn text(&mut self, s: &str) {
        for c in s.chars() {
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

    /// Counts the characters and words of `data`; returns how many bytes at its end are the
    /// start of a character that the next read completes.
    fn decode(&mut self, mut data: &[u8]) -> usize {
        loop {
            match std::str::from_utf8(data) {
                Ok(s) => {
                    self.text(s);
                    return 0;
                }
                Err(e) => {
                    let (valid, rest) = data.split_at(e.valid_up_to());
                    if let Ok(s) = std::str::from_utf8(valid) {
                        self.text(s);
                    }
                    match e.error_len() {
                        // Invalid bytes are neither characters nor word boundaries.
                        Some(n) => data = &rest[n..],
                        None => return rest.len(),
                    }
                }
            }
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
        if lines {
            counts.lines += fresh.iter().filter(|&&b| b == b'\n').count() as u64;
        }
        if words || chars {
            let end = carried + n;
            let partial = counts.decode(&buf[..end]);
            buf.copy_within(end - partial..end, 0);
            carried = partial;
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
