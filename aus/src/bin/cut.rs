//! `cut`: print selected fields (`-f`, split on `-d`) or byte positions (`-b`/`-c`) of each
//! line of stdin, like GNU cut (whose `-c` also counts bytes). Streams its input.

use std::io::{BufRead, Write};

use agenix_aus::{self as au, ArgDoc, Card, Error};
use lexopt::Arg::{Long, Short};

const CARD: Card = Card {
    name: "cut",
    description: "Print selected fields or byte positions of each line of stdin.",
    capabilities: au::STDIO,
    inputs: &["text/plain"],
    outputs: &["text/plain"],
    args: &[
        ArgDoc {
            flag: "-f LIST",
            description: "select these fields; LIST is like 1,3-5,7- or -2 (1-based)",
        },
        ArgDoc {
            flag: "-d DELIM",
            description: "fields are separated by the byte DELIM (default tab)",
        },
        ArgDoc { flag: "-s", description: "with -f, skip lines that hold no delimiter" },
        ArgDoc { flag: "-b LIST", description: "select these byte positions" },
        ArgDoc { flag: "-c LIST", description: "the same as -b (as in GNU cut)" },
        ArgDoc { flag: "--complement", description: "select everything not in LIST" },
        ArgDoc {
            flag: "--output-delimiter STR",
            description: "join the selected fields (or byte ranges) with STR",
        },
    ],
    usage: "cut (-f LIST [-d DELIM] [-s] | -b LIST | -c LIST) [--complement]",
    exit_codes: &[("0", "ok"), ("1", "reading stdin failed"), ("2", "bad usage or a bad LIST")],
    mounts: &[],
};

/// Inclusive, 1-based, sorted and merged ranges.
struct Selection(Vec<(u64, u64)>);

impl Selection {
    fn parse(list: &str) -> Result<Self, Error> {
        let mut ranges = Vec::new();
        for item in list.split([',', ' ']) {
            let bad = || au::usage(format!("invalid field or byte range '{item}' in '{list}'"));
            let number = |s: &str| s.parse::<u64>().map_err(|_| bad());
            let (lo, hi) = match item.split_once('-') {
                None => {
                    let n = number(item)?;
                    (n, n)
                }
                Some(("", "")) => return Err(bad()),
                Some(("", hi)) => (1, number(hi)?),
                Some((lo, "")) => (number(lo)?, u64::MAX),
                Some((lo, hi)) => (number(lo)?, number(hi)?),
            };
            if lo == 0 || hi == 0 {
                return Err(au::usage("fields and positions are numbered from 1"));
            }
            if lo > hi {
                return Err(au::usage(format!("invalid decreasing range '{item}'")));
            }
            ranges.push((lo, hi));
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (lo, hi) in ranges {
            match merged.last_mut() {
                // Only overlapping ranges merge (as in GNU cut): with --output-delimiter,
                // 1,2 prints two ranges where 1-2 prints one.
                Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        Ok(Self(merged))
    }

    fn complement(&self) -> Self {
        let mut out = Vec::new();
        let mut next = 1u64;
        for &(lo, hi) in &self.0 {
            if lo > next {
                out.push((next, lo - 1));
            }
            next = hi.saturating_add(1);
            if hi == u64::MAX {
                return Self(out);
            }
        }
        out.push((next, u64::MAX));
        Self(out)
    }

    /// The index of the range holding position `i`, if any.
    fn range_of(&self, i: u64) -> Option<usize> {
        let at = self.0.partition_point(|&(_, hi)| hi < i);
        self.0.get(at).is_some_and(|&(lo, _)| lo <= i).then_some(at)
    }

    fn contains(&self, i: u64) -> bool {
        self.range_of(i).is_some()
    }
}

enum Mode {
    Fields,
    Bytes,
}

fn main() {
    au::main(&CARD, run)
}

fn run(args: Vec<std::ffi::OsString>) -> Result<u8, Error> {
    let mut mode = None;
    let (mut delimiter, mut only_delimited, mut complement) = (None, false, false);
    let mut output_delimiter: Option<Vec<u8>> = None;
    let mut p = au::parser(args);
    while let Some(arg) = p.next()? {
        match arg {
            Short('f' | 'b' | 'c') if mode.is_some() => {
                return Err(au::usage("only one list may be specified"));
            }
            Short('f') => mode = Some((Mode::Fields, au::string(p.value()?)?)),
            Short('b' | 'c') => mode = Some((Mode::Bytes, au::string(p.value()?)?)),
            Short('d') => delimiter = Some(au::single_byte("-d", p.value()?)?),
            Short('s') => only_delimited = true,
            Long("complement") => complement = true,
            Long("output-delimiter") => output_delimiter = Some(au::string(p.value()?)?.into()),
            other => return Err(au::unexpected(other)),
        }
    }
    let Some((mode, list)) = mode else {
        return Err(au::usage("you must specify a list of bytes, characters, or fields"));
    };
    let mut selection = Selection::parse(&list)?;
    if complement {
        selection = selection.complement();
    }
    if matches!(mode, Mode::Bytes) && (delimiter.is_some() || only_delimited) {
        return Err(au::usage("-d and -s are only meaningful with -f"));
    }
    let delimiter = delimiter.unwrap_or(b'\t');

    let mut input = au::stdin();
    let mut out = au::stdout();
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        match mode {
            Mode::Fields => {
                if !text.contains(&delimiter) {
                    if !only_delimited {
                        out.write_all(text)?;
                        out.write_all(b"\n")?;
                    }
                    continue;
                }
                let separator =
                    output_delimiter.as_deref().unwrap_or(std::slice::from_ref(&delimiter));
                let mut first = true;
                for (i, field) in text.split(|&b| b == delimiter).enumerate() {
                    if selection.contains(i as u64 + 1) {
                        if !first {
                            out.write_all(separator)?;
                        }
                        out.write_all(field)?;
                        first = false;
                    }
                }
            }
            Mode::Bytes => {
                let mut last_range = None;
                for (i, &b) in text.iter().enumerate() {
                    let Some(range) = selection.range_of(i as u64 + 1) else { continue };
                    if let Some(sep) = &output_delimiter
                        && last_range.is_some_and(|last| last != range)
                    {
                        out.write_all(sep)?;
                    }
                    out.write_all(&[b])?;
                    last_range = Some(range);
                }
            }
        }
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(au::EXIT_OK)
}
