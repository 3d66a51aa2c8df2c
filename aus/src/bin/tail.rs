//! `tail`: print the last lines (or bytes) of stdin, or everything from a line (or byte) on,
//! like GNU tail. Binary-safe. `+N` forms stream; the last-N forms buffer their input.

use std::io::{BufRead, Read, Write};

use agenix_aus::{self as au, ArgDoc, Card, Error};
use lexopt::Arg::Short;

const CARD: Card = Card {
    name: "tail",
    description: "Print the last 10 lines of stdin, or as many lines or bytes as asked.",
    capabilities: au::STDIO,
    inputs: &["application/octet-stream"],
    outputs: &["application/octet-stream"],
    args: &[
        ArgDoc {
            flag: "-n [+]N",
            description: "print the last N lines (default 10); with +N, from line N on",
        },
        ArgDoc {
            flag: "-c [+]N",
            description: "print the last N bytes; with +N, from byte N on. N may end in \
                          K, M, G (1024^k), kB, MB, GB (1000^k) or b (512)",
        },
        ArgDoc { flag: "-N", description: "the same as -n N, as the first argument" },
    ],
    usage: "tail [-n [+]N | -c [+]N]",
    exit_codes: &[("0", "ok"), ("1", "reading stdin failed"), ("2", "bad usage")],
    mounts: &[],
};

#[derive(Clone, Copy)]
enum Mode {
    Lines,
    Bytes,
}

fn main() {
    au::main(&CARD, run)
}

/// Parses `[+]N` (a leading `-` is allowed and ignored, as in GNU tail): the count and
/// whether it is a starting position.
fn count(what: &str, value: std::ffi::OsString) -> Result<(u64, bool), Error> {
    let text = au::string(value)?;
    let (from, digits) = match text.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('-').unwrap_or(&text)),
    };
    let n = au::parse_count(digits)
        .ok_or_else(|| au::usage(format!("invalid number of {what}: '{text}'")))?;
    Ok((n, from))
}

fn run(args: Vec<std::ffi::OsString>) -> Result<u8, Error> {
    let (mut mode, mut n, mut from) = (Mode::Lines, 10, false);
    let mut p = au::parser(au::legacy_count(args));
    while let Some(arg) = p.next()? {
        match arg {
            Short('n') => {
                mode = Mode::Lines;
                (n, from) = count("lines", p.value()?)?;
            }
            Short('c') => {
                mode = Mode::Bytes;
                (n, from) = count("bytes", p.value()?)?;
            }
            other => return Err(au::unexpected(other)),
        }
    }
    let mut input = au::stdin();
    let mut out = au::stdout();
    if from {
        // +N starts at line (byte) N; +0 is the same as +1.
        let skip = n.saturating_sub(1);
        match mode {
            Mode::Bytes => {
                std::io::copy(&mut (&mut input).take(skip), &mut std::io::sink())?;
            }
            Mode::Lines => skip_lines(&mut input, skip)?,
        }
        std::io::copy(&mut input, &mut out)?;
    } else {
        let mut data = Vec::new();
        input.read_to_end(&mut data)?;
        let start = match mode {
            Mode::Bytes => data.len().saturating_sub(usize::try_from(n).unwrap_or(usize::MAX)),
            Mode::Lines => start_of_last_lines(&data, n),
        };
        out.write_all(&data[start..])?;
    }
    out.flush()?;
    Ok(au::EXIT_OK)
}

fn skip_lines(input: &mut impl BufRead, mut n: u64) -> std::io::Result<()> {
    while n > 0 {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let mut end = buf.len();
        for (i, _) in buf.iter().enumerate().filter(|(_, b)| **b == b'\n') {
            n -= 1;
            if n == 0 {
                end = i + 1;
                break;
            }
        }
        input.consume(end);
    }
    Ok(())
}

/// Where the last `n` lines of `data` begin; a last line without a newline counts.
fn start_of_last_lines(data: &[u8], n: u64) -> usize {
    if n == 0 {
        return data.len();
    }
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut seen = 0;
    for (i, _) in body.iter().enumerate().rev().filter(|(_, b)| **b == b'\n') {
        seen += 1;
        if seen == n {
            return i + 1;
        }
    }
    0
}
