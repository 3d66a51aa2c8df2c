//! `csv2json`: turn CSV with a header row into JSON Lines, one object per record, keys from
//! the header in its order, every value a string. Streams its input.

use std::io::Write;

use agenix_aus::{self as au, ArgDoc, Card, Error};
use lexopt::Arg::Short;

const CARD: Card = Card {
    name: "csv2json",
    description: "Turn CSV with a header row into JSON Lines: one object per record.",
    capabilities: au::STDIO,
    inputs: &["text/csv"],
    outputs: &["application/jsonl"],
    args: &[ArgDoc {
        flag: "-d DELIM",
        description: "the field delimiter, one byte (default ','; '\\t' for tab)",
    }],
    usage: "csv2json [-d DELIM]",
    exit_codes: &[
        ("0", "ok"),
        ("1", "reading stdin failed"),
        ("2", "bad usage, or malformed CSV (the message names the line)"),
    ],
    mounts: &[],
};

fn main() {
    au::main(&CARD, run)
}

/// A csv error as the contract wants it: I/O errors stay I/O errors, the rest is bad input
/// with the line it was found on.
fn csv_error(e: csv::Error) -> Error {
    let line = e.position().map(csv::Position::line);
    let text = e.to_string();
    match e.into_kind() {
        csv::ErrorKind::Io(io) => Error::Io(io),
        kind => {
            let what = match kind {
                csv::ErrorKind::Utf8 { err, .. } => {
                    format!("invalid UTF-8 in field {}", err.field() + 1)
                }
                csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
                    format!("record has {len} fields, but the header has {expected_len}")
                }
                _ => text,
            };
            match line {
                Some(line) => au::bad_input(format!("line {line}: {what}")),
                None => au::bad_input(what),
            }
        }
    }
}

fn run(args: Vec<std::ffi::OsString>) -> Result<u8, Error> {
    let mut delimiter = b',';
    let mut p = au::parser(args);
    while let Some(arg) = p.next()? {
        match arg {
            Short('d') => delimiter = au::single_byte("-d", p.value()?)?,
            other => return Err(au::unexpected(other)),
        }
    }
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .buffer_capacity(au::BUF_SIZE)
        .from_reader(std::io::stdin().lock());
    let mut out = au::stdout();
    // Keys are encoded once; `"key":` for each header field.
    let keys: Vec<Vec<u8>> = reader
        .headers()
        .map_err(csv_error)?
        .iter()
        .map(|k| {
            let mut key = serde_json::to_vec(k).unwrap_or_default();
            key.push(b':');
            key
        })
        .collect();
    let mut record = csv::StringRecord::new();
    while reader.read_record(&mut record).map_err(csv_error)? {
        out.write_all(b"{")?;
        for (i, (key, value)) in keys.iter().zip(record.iter()).enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            out.write_all(key)?;
            serde_json::to_writer(&mut out, value).map_err(std::io::Error::from)?;
        }
        out.write_all(b"}\n")?;
    }
    out.flush()?;
    Ok(au::EXIT_OK)
}
