//! `head`: print the first lines (or bytes) of stdin, like GNU head. Binary-safe; streams its
//! input and stops reading once it has printed what was asked.

use std::collections::VecDeque;
use std::io::{BufRead, Read, Write};

use agenix_aus::{self as au, ArgDoc, Card, Error};
use lexopt::Arg::Short;

const CARD: Card = Card {
    name: "head",
    description: "Print the first 10 lines of stdin, or as many lines or bytes as asked.",
    capabilities: au::STDIO,
    inputs: &["application/octet-stream"],
    outputs: &["application/octet-stream"],
    args: &[
        ArgDoc {
            flag: "-n [-]N",
            description: "print the first N lines (default 10); with -N, all but the last N",
        },
        ArgDoc {
            flag: "-c [-]N",
            description: "print the first N bytes; with -N, all but the last N. N may end in \
                          K, M, G (1024^k), kB, MB, GB (1000^k) or b (512)",
        },
        ArgDoc { flag: "-N", description: "the same as -n N, as the first argument" },
    ],
    usage: "head [-n [-]N | -c [-]N]",
    exit_codes: &[("0", "ok"), ("1", "reading stdin failed"), ("2", "bad usage")],
    mounts: &[],
};

enum Mode {
    Lines,
    Bytes,
}

fn main() {
    au::main(&CARD, run)
}

/// Parses `[-]N`: the count and whether it means "all but the last N".
fn count(what: &str, value: std::ffi::OsString) -> Result<(u64, bool), Error> {
    let text = au::string(value)?;
    let (all_but, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.as_str()),
    };
    let n = au::parse_count(digits)
        .ok_or_else(|| au::usage(format!("invalid number of {what}: '{text}'")))?;
    Ok((n, all_but))
}

fn run(args: Vec<std::ffi::OsString>) -> Result<u8, Error> {
    let (mut mode, mut n, mut all_but) = (Mode::Lines, 10, false);
    let mut p = au::parser(au::legacy_count(args));
    while let Some(arg) = p.next()? {
        match arg {
            Short('n') => {
                mode = Mode::Lines;
                (n, all_but) = count("lines", p.value()?)?;
            }
            Short('c') => {
                mode = Mode::Bytes;
                (n, all_but) = count("bytes", p.value()?)?;
            }
            other => return Err(au::unexpected(other)),
        }
    }
    let mut input = au::stdin();
    let mut out = au::stdout();
    match (mode, all_but) {
        (Mode::Bytes, false) => {
            std::io::copy(&mut (&mut input).take(n), &mut out)?;
        }
        (Mode::Lines, false) => first_lines(&mut input, &mut out, n)?,
        (Mode::Lines, true) => all_but_last_lines(&mut input, &mut out, n)?,
        (Mode::Bytes, true) => all_but_last_bytes(&mut input, &mut out, n)?,
    }
    out.flush()?;
    Ok(au::EXIT_OK)
}

fn first_lines(input: &mut impl BufRead, out: &mut impl Write, mut n: u64) -> std::io::Result<()> {
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
        out.write_all(&buf[..end])?;
        input.consume(end);
    }
    Ok(())
}

fn all_but_last_lines(
    input: &mut impl BufRead,
    out: &mut impl Write,
    n: u64,
) -> std::io::Result<()> {
    let keep = usize::try_from(n).unwrap_or(usize::MAX);
    let mut held: VecDeque<Vec<u8>> = VecDeque::new();
    loop {
        let mut line = Vec::new();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        held.push_back(line);
        if held.len() > keep
            && let Some(first) = held.pop_front()
        {
            out.write_all(&first)?;
        }
    }
}

fn all_but_last_bytes(
    input: &mut impl BufRead,
    out: &mut impl Write,
    n: u64,
) -> std::io::Result<()> {
    let keep = usize::try_from(n).unwrap_or(usize::MAX);
    let mut held = Vec::new();
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            if held.len() > keep {
                out.write_all(&held[..held.len() - keep])?;
            }
            return Ok(());
        }
        held.extend_from_slice(buf);
        let len = buf.len();
        input.consume(len);
        if held.len() > keep.saturating_add(au::BUF_SIZE) {
            let ready = held.len() - keep;
            out.write_all(&held[..ready])?;
            held.drain(..ready);
        }
    }
}
