//! `sha256sum`: print the SHA-256 digest of stdin as GNU sha256sum prints it for standard
//! input (`<hex>  -`). Binary-safe; streams its input.

use std::io::{Read, Write};

use agenix_aus::{self as au, Card, Error};
use sha2::{Digest, Sha256};

const CARD: Card = Card {
    name: "sha256sum",
    description: "Print the SHA-256 digest of stdin, as `<hex>  -`.",
    capabilities: au::STDIO,
    inputs: &["application/octet-stream"],
    outputs: &["text/plain"],
    args: &[],
    usage: "sha256sum",
    exit_codes: &[("0", "ok"), ("1", "reading stdin failed"), ("2", "bad usage")],
    mounts: &[],
};

fn main() {
    au::main(&CARD, run)
}

fn run(args: Vec<std::ffi::OsString>) -> Result<u8, Error> {
    let mut p = au::parser(args);
    if let Some(arg) = p.next()? {
        return Err(au::unexpected(arg));
    }
    let mut input = std::io::stdin().lock();
    let mut hasher = Sha256::new();
    let mut buf = vec![0; au::BUF_SIZE];
    loop {
        match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let hex: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{hex}  -")?;
    out.flush()?;
    Ok(au::EXIT_OK)
}
