//! Shared plumbing of the standard AGEniX AUs, and nothing else: the model card printed by
//! `AU --describe`, option-parsing helpers (on top of `lexopt`), large-buffer stdio, the
//! error → exit-code mapping of the AU contract, and an [`exit`] whose code survives
//! wasm32-wasip2. Only the bins of this package use it; AUs share no code with the host crates.
//!
//! The contract every AU follows: read stdin, write stdout, write diagnostics on stderr
//! prefixed with the AU's name; exit 0 ok, 1 failure, 2 bad input or usage, 3+ AU-specific.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, BufReader, BufWriter, Read, StdinLock, StdoutLock, Write};

use serde::Serialize;
use serde::ser::{SerializeMap, SerializeStruct, Serializer};

/// Size of the stdin/stdout buffers every AU uses.
pub const BUF_SIZE: usize = 64 * 1024;

/// The schema identifier of a model card.
pub const CARD_SCHEMA: &str = "agenix.au.card/v1";

/// Exit status: success.
pub const EXIT_OK: u8 = 0;
/// Exit status: the AU failed (I/O error, or the AU-specific "nothing found").
pub const EXIT_FAILURE: u8 = 1;
/// Exit status: bad input or bad usage.
pub const EXIT_USAGE: u8 = 2;

/// One flag or operand of an AU, as listed in its model card.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ArgDoc {
    /// The flag as typed (`-n N`), or the operand's name (`PATTERN`).
    pub flag: &'static str,
    /// What it does.
    pub description: &'static str,
}

/// The model card of an AU: what `AU --describe` prints, as one JSON object (schema
/// `agenix.au.card/v1`). The schema and version fields are filled in when serialized.
#[derive(Debug, Clone, Copy)]
pub struct Card {
    /// The AU's name, also the prefix of its diagnostics.
    pub name: &'static str,
    /// One sentence saying what it does.
    pub description: &'static str,
    /// What it touches: `stdin`, `stdout` (and nothing else for the standard AUs).
    pub capabilities: &'static [&'static str],
    /// Media types it reads.
    pub inputs: &'static [&'static str],
    /// Media types it writes.
    pub outputs: &'static [&'static str],
    /// Its flags and operands.
    pub args: &'static [ArgDoc],
    /// A one-line synopsis.
    pub usage: &'static str,
    /// Exit code → meaning, in ascending order.
    pub exit_codes: &'static [(&'static str, &'static str)],
    /// Directories it expects to be mounted (none for the standard AUs).
    pub mounts: &'static [&'static str],
}

/// The default capabilities of a standard AU.
pub const STDIO: &[&str] = &["stdin", "stdout"];

/// The version every card reports: this package's.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

struct ExitCodes(&'static [(&'static str, &'static str)]);

impl Serialize for ExitCodes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (code, meaning) in self.0 {
            map.serialize_entry(code, meaning)?;
        }
        map.end()
    }
}

impl Serialize for Card {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut card = s.serialize_struct("Card", 11)?;
        card.serialize_field("schema", CARD_SCHEMA)?;
        card.serialize_field("name", self.name)?;
        card.serialize_field("version", VERSION)?;
        card.serialize_field("description", self.description)?;
        card.serialize_field("capabilities", self.capabilities)?;
        card.serialize_field("inputs", self.inputs)?;
        card.serialize_field("outputs", self.outputs)?;
        card.serialize_field("args", self.args)?;
        card.serialize_field("usage", self.usage)?;
        card.serialize_field("exit_codes", &ExitCodes(self.exit_codes))?;
        card.serialize_field("mounts", self.mounts)?;
        card.end()
    }
}

impl Card {
    /// The card as one line of JSON.
    pub fn to_json(&self) -> String {
        // Serializing static strings into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The `--help` text: the usage line and one line per flag.
    pub fn help(&self) -> String {
        let mut text = format!("{}\n\nusage: {}\n\n", self.description, self.usage);
        let width = self.args.iter().map(|a| a.flag.len()).max().unwrap_or(0);
        for arg in self.args {
            text.push_str(&format!("  {:width$}  {}\n", arg.flag, arg.description));
        }
        text.push_str("  --describe  print the JSON model card\n\nexit codes:\n");
        for (code, meaning) in self.exit_codes {
            text.push_str(&format!("  {code}  {meaning}\n"));
        }
        text
    }
}

/// Why an AU stopped early. [`main`] reports it on stderr and maps it to an exit code.
#[derive(Debug)]
pub enum Error {
    /// Bad flags or operands: exit 2, with the usage line.
    Usage(String),
    /// Input the AU cannot process: exit 2.
    BadInput(String),
    /// Any other failure: exit 1.
    Failed(String),
    /// An AU-specific exit code (3+) with its message.
    Code(u8, String),
    /// An I/O error. A broken pipe on stdout is a normal end (exit 0, nothing reported);
    /// anything else is exit 1.
    Io(io::Error),
    /// `--describe` was given: print the card, exit 0.
    Describe,
    /// `--help` was given: print the help, exit 0.
    Help,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(m) | Self::BadInput(m) | Self::Failed(m) | Self::Code(_, m) => {
                f.write_str(m)
            }
            Self::Io(e) => write!(f, "{e}"),
            Self::Describe => f.write_str("--describe"),
            Self::Help => f.write_str("--help"),
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<lexopt::Error> for Error {
    fn from(e: lexopt::Error) -> Self {
        Self::Usage(e.to_string())
    }
}

/// Shorthand for a usage error.
pub fn usage(message: impl Into<String>) -> Error {
    Error::Usage(message.into())
}

/// Shorthand for a bad-input error.
pub fn bad_input(message: impl Into<String>) -> Error {
    Error::BadInput(message.into())
}

/// Turns an argument the AU does not know into the right error: `--describe` and `--help`
/// anywhere among the options are honoured, anything else is a usage error.
pub fn unexpected(arg: lexopt::Arg<'_>) -> Error {
    match arg {
        lexopt::Arg::Long("describe") => Error::Describe,
        lexopt::Arg::Long("help") => Error::Help,
        lexopt::Arg::Value(v) => {
            Error::Usage(format!("unexpected operand {v:?}: AUs read standard input only"))
        }
        other => other.unexpected().into(),
    }
}

/// An option parser over `args` (the arguments after the program name). `-d=` means the
/// value `=`, as in getopt, not an empty value.
pub fn parser(args: Vec<OsString>) -> lexopt::Parser {
    let mut parser = lexopt::Parser::from_args(args);
    parser.set_short_equals(false);
    parser
}

/// An option value as UTF-8 (WASI arguments always are).
pub fn string(value: OsString) -> Result<String, Error> {
    value.into_string().map_err(|v| usage(format!("argument is not UTF-8: {v:?}")))
}

/// A single-byte separator such as `-d ,` or `-t :`. `\t` (two characters) is accepted for a
/// tab, since a literal tab is awkward to pass through a plan.
pub fn single_byte(option: &str, value: OsString) -> Result<u8, Error> {
    let value = string(value)?;
    match value.as_bytes() {
        [b] => Ok(*b),
        b"\\t" => Ok(b'\t'),
        _ => Err(usage(format!("the argument of {option} must be a single byte, got {value:?}"))),
    }
}

/// Stdin, locked and buffered with [`BUF_SIZE`].
pub fn stdin() -> BufReader<StdinLock<'static>> {
    BufReader::with_capacity(BUF_SIZE, io::stdin().lock())
}

/// Stdout, locked and buffered with [`BUF_SIZE`]. Call `flush()` before returning.
pub fn stdout() -> BufWriter<StdoutLock<'static>> {
    BufWriter::with_capacity(BUF_SIZE, io::stdout().lock())
}

/// Reads its input in blocks of whole lines, for AUs that search a block at a time instead of
/// a line at a time. Every block but the last ends with `\n`; the last holds what follows the
/// final newline, if anything. A block is handed out as soon as a read completes a line, so a
/// stream that pauses is searched up to where it paused; a line longer than the buffer grows
/// the buffer.
#[derive(Debug)]
pub struct LineBlocks<R> {
    input: R,
    buf: Vec<u8>,
    /// Where the bytes not yet handed out begin, and end.
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> LineBlocks<R> {
    /// Blocks of up to `size` bytes (or one line, if longer) from `input`.
    pub fn new(input: R, size: usize) -> Self {
        Self { input, buf: vec![0; size.max(1)], start: 0, end: 0, eof: false }
    }

    /// The next block, or `None` at the end of the input.
    pub fn next_block(&mut self) -> io::Result<Option<&[u8]>> {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        loop {
            if self.eof {
                let n = std::mem::take(&mut self.end);
                return Ok((n > 0).then(|| &self.buf[..n]));
            }
            if self.end == self.buf.len() {
                // One line fills the buffer: make room for the rest of it.
                self.buf.resize(self.buf.len().saturating_mul(2), 0);
            }
            let read = self.end;
            match self.input.read(&mut self.buf[read..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            // Only what this read brought can hold the first newline: what came before
            // was searched.
            if let Some(i) = memchr::memrchr(b'\n', &self.buf[read..self.end]) {
                self.start = read + i + 1;
                return Ok(Some(&self.buf[..self.start]));
            }
        }
    }
}

/// Runs an AU: `run` gets the arguments after the program name and returns the exit code.
/// Errors are reported on stderr as `NAME: message` and mapped to the contract's codes;
/// `--describe` prints the card and `--help` the help on stdout. Never returns.
pub fn main(card: &Card, run: impl FnOnce(Vec<OsString>) -> Result<u8, Error>) -> ! {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let code = match run(args) {
        Ok(code) => code,
        Err(e) => report(card, e),
    };
    exit(code)
}

/// Reports `e` the way [`main`] does and returns the exit code it maps to.
pub fn report(card: &Card, e: Error) -> u8 {
    let (code, message) = match e {
        Error::Describe => return emit(&format!("{}\n", card.to_json())),
        Error::Help => return emit(&card.help()),
        Error::Io(e) if e.kind() == io::ErrorKind::BrokenPipe => return EXIT_OK,
        Error::Usage(m) => (EXIT_USAGE, format!("{m}\nusage: {}", card.usage)),
        Error::BadInput(m) => (EXIT_USAGE, m),
        Error::Failed(m) => (EXIT_FAILURE, m),
        Error::Code(code, m) => (code, m),
        Error::Io(e) => (EXIT_FAILURE, e.to_string()),
    };
    warn(card.name, &message);
    code
}

/// Writes `NAME: message` on stderr. A failure to write a diagnostic is ignored: there is
/// nowhere left to report it.
pub fn warn(name: &str, message: &str) {
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "{name}: {message}");
}

fn emit(text: &str) -> u8 {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => EXIT_FAILURE,
        _ => EXIT_OK,
    }
}

/// Flushes stdout and stderr, then exits with `code`, which survives on wasm32-wasip2:
/// there Rust's `std::process::exit` reports every non-zero code as 1, so this goes through
/// `wasi:cli/exit.exit-with-code` instead.
pub fn exit(code: u8) -> ! {
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    #[cfg(all(target_os = "wasi", target_env = "p2"))]
    wasip2::cli::exit::exit_with_code(code);
    #[allow(clippy::exit, reason = "this is the one place an AU ends its process")]
    std::process::exit(i32::from(code))
}

/// Parses a count such as `10`, `1K` (1024), `1kB` (1000), `2MiB`, `512b` (512-byte
/// blocks), as GNU head and tail accept for `-n` and `-c`.
pub fn parse_count(text: &str) -> Option<u64> {
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    if digits == 0 {
        return None;
    }
    let (number, suffix) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let multiplier: u64 = match suffix {
        "" => 1,
        "b" => 512,
        "kB" | "KB" => 1000,
        "K" | "k" | "KiB" | "kiB" => 1 << 10,
        "MB" => 1000 * 1000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1000 * 1000 * 1000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1000 * 1000 * 1000 * 1000,
        "T" | "TiB" => 1 << 40,
        _ => return None,
    };
    Some(number.saturating_mul(multiplier))
}

/// Rewrites a leading `-N` (as in `head -5`) into `-n N`, the historical short form that
/// head and tail still accept.
pub fn legacy_count(mut args: Vec<OsString>) -> Vec<OsString> {
    let rewrite =
        args.first().and_then(|a| a.to_str()).and_then(|a| a.strip_prefix('-')).and_then(|n| {
            (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then(|| n.to_owned())
        });
    if let Some(n) = rewrite {
        args.splice(0..1, [OsString::from("-n"), OsString::from(n)]);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    const CARD: Card = Card {
        name: "t",
        description: "a test",
        capabilities: STDIO,
        inputs: &["text/plain"],
        outputs: &["text/plain"],
        args: &[ArgDoc { flag: "-x", description: "x" }],
        usage: "t [-x]",
        exit_codes: &[("0", "ok"), ("2", "usage")],
        mounts: &[],
    };

    #[test]
    fn card_has_the_schema_fields_in_order() {
        let json = CARD.to_json();
        assert!(json.starts_with(r#"{"schema":"agenix.au.card/v1","name":"t","version":"#));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["exit_codes"]["2"], "usage");
        assert_eq!(v["args"][0]["flag"], "-x");
        assert_eq!(v["mounts"], serde_json::json!([]));
    }

    #[test]
    fn counts_with_suffixes() {
        assert_eq!(parse_count("10"), Some(10));
        assert_eq!(parse_count("1K"), Some(1024));
        assert_eq!(parse_count("1kB"), Some(1000));
        assert_eq!(parse_count("2b"), Some(1024));
        assert_eq!(parse_count("x"), None);
        assert_eq!(parse_count("5X"), None);
        assert_eq!(parse_count(""), None);
    }

    #[test]
    fn legacy_count_form() {
        let args = legacy_count(vec!["-5".into(), "-q".into()]);
        assert_eq!(args, vec![OsString::from("-n"), "5".into(), "-q".into()]);
        let args = legacy_count(vec!["-c".into(), "5".into()]);
        assert_eq!(args, vec![OsString::from("-c"), "5".into()]);
    }
}
