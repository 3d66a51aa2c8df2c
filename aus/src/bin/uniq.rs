//! `uniq`: collapse runs of identical adjacent lines of stdin, like GNU uniq. Lines are
//! compared as bytes; streams its input.

use std::io::{BufRead, Write};

use agenix_aus::{self as au, ArgDoc, Card, Error};
use lexopt::Arg::Short;

const CARD: Card = Card {
    name: "uniq",
    description: "Collapse runs of identical adjacent lines of stdin into one.",
    capabilities: au::STDIO,
    inputs: &["text/plain"],
    outputs: &["text/plain"],
    args: &[
        ArgDoc { flag: "-c", description: "prefix each line with its run length (%7d %s)" },
        ArgDoc { flag: "-d", description: "print only lines that are repeated" },
        ArgDoc { flag: "-u", description: "print only lines that are not repeated" },
    ],
    usage: "uniq [-cdu]",
    exit_codes: &[("0", "ok"), ("1", "reading stdin failed"), ("2", "bad usage")],
    mounts: &[],
};

struct Opts {
    count: bool,
    repeated: bool,
    unique: bool,
}

fn main() {
    au::main(&CARD, run)
}

fn emit(out: &mut impl Write, o: &Opts, line: &[u8], n: u64) -> std::io::Result<()> {
    if (o.repeated && n < 2) || (o.unique && n > 1) {
        return Ok(());
    }
    if o.count {
        write!(out, "{n:>7} ")?;
    }
    out.write_all(line)?;
    out.write_all(b"\n")
}

fn run(args: Vec<std::ffi::OsString>) -> Result<u8, Error> {
    let mut o = Opts { count: false, repeated: false, unique: false };
    let mut p = au::parser(args);
    while let Some(arg) = p.next()? {
        match arg {
            Short('c') => o.count = true,
            Short('d') => o.repeated = true,
            Short('u') => o.unique = true,
            other => return Err(au::unexpected(other)),
        }
    }
    let mut input = au::stdin();
    let mut out = au::stdout();
    let (mut current, mut next) = (Vec::new(), Vec::new());
    let mut run_length = 0u64;
    loop {
        next.clear();
        if input.read_until(b'\n', &mut next)? == 0 {
            break;
        }
        if next.last() == Some(&b'\n') {
            next.pop();
        }
        if run_length > 0 && next == current {
            run_length += 1;
            continue;
        }
        if run_length > 0 {
            emit(&mut out, &o, &current, run_length)?;
        }
        std::mem::swap(&mut current, &mut next);
        run_length = 1;
    }
    if run_length > 0 {
        emit(&mut out, &o, &current, run_length)?;
    }
    out.flush()?;
    Ok(au::EXIT_OK)
}
