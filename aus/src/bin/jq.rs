//! `jq`: run a jq filter over a stream of JSON values read from stdin, using the jaq crates
//! (jaq-core, jaq-std, jaq-json). Input is read value by value (`-s` buffers it all). Output is
//! pretty-printed with two-space indents like jq, or compact with `-c`.

use std::cell::Cell;
use std::ffi::OsString;
use std::io::{self, Write};

use agenix_aus::{self as au, ArgDoc, Card, Error};
use jaq_core::data::{DataT, HasLut};
use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Lut, Vars};
use jaq_json::Val;
use jaq_json::write::Pp;
use jaq_std::input::{HasInputs, Inputs, RcIter};
use lexopt::Arg::{Long, Short, Value};

const CARD: Card = Card {
    name: "jq",
    description: "Run a jq filter over the JSON values of stdin (jaq implementation).",
    capabilities: au::STDIO,
    inputs: &["application/json", "application/jsonl"],
    outputs: &["application/json", "application/jsonl", "text/plain"],
    args: &[
        ArgDoc { flag: "FILTER", description: "the jq program (default '.')" },
        ArgDoc { flag: "-c", description: "compact output: one value per line" },
        ArgDoc { flag: "-r", description: "write strings raw, without quotes" },
        ArgDoc { flag: "-j", description: "like -r, and no newline after each value" },
        ArgDoc { flag: "-s", description: "slurp: read all inputs into one array" },
        ArgDoc { flag: "-n", description: "null input: run the filter once on null" },
        ArgDoc { flag: "-S", description: "sort the keys of objects" },
        ArgDoc { flag: "--arg NAME VALUE", description: "bind $NAME to the string VALUE" },
        ArgDoc { flag: "--argjson NAME JSON", description: "bind $NAME to the JSON value" },
    ],
    usage: "jq [-cjnrsS] [--arg NAME VALUE] [--argjson NAME JSON] [FILTER]",
    exit_codes: &[
        ("0", "ok"),
        ("1", "reading stdin failed"),
        (
            "2",
            "bad usage, a filter that does not compile, or input that is not JSON or nests \
             arrays/objects deeper than 512",
        ),
        ("5", "the filter failed at run time on some input (the others were processed)"),
        ("N", "halt(N) or halt_error(N) in the filter"),
    ],
    mounts: &[],
};

/// Exit status: a run-time error in the filter, as in jq.
const EXIT_RUNTIME: u8 = 5;

/// The deepest nesting of arrays and objects accepted in input. The parser, the printer and
/// dropping a value all recurse once per level, and a wasm stack is small: deeper input is
/// refused as bad input instead of overflowing the stack. (jq 1.6 allowed 256.)
const MAX_DEPTH: usize = 512;

/// Passes JSON text through unchanged while tracking how deeply arrays and objects nest
/// (outside strings and `#` comments, which jaq's reader skips), and fails with
/// `InvalidData` once that passes [`MAX_DEPTH`].
struct DepthGuard<R> {
    inner: R,
    depth: usize,
    in_string: bool,
    escaped: bool,
    in_comment: bool,
}

impl<R> DepthGuard<R> {
    fn new(inner: R) -> Self {
        Self { inner, depth: 0, in_string: false, escaped: false, in_comment: false }
    }

    fn scan(&mut self, bytes: &[u8]) -> io::Result<()> {
        bytes.iter().try_for_each(|&b| self.step(b))
    }

    fn step(&mut self, b: u8) -> io::Result<()> {
        if self.in_comment {
            self.in_comment = b != b'\n';
        } else if self.in_string {
            match b {
                _ if self.escaped => self.escaped = false,
                b'\\' => self.escaped = true,
                b'"' => self.in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => self.in_string = true,
                b'#' => self.in_comment = true,
                b'[' | b'{' => {
                    self.depth += 1;
                    if self.depth > MAX_DEPTH {
                        let message = format!("exceeds the depth limit of {MAX_DEPTH}");
                        return Err(io::Error::new(io::ErrorKind::InvalidData, message));
                    }
                }
                b']' | b'}' => self.depth = self.depth.saturating_sub(1),
                _ => {}
            }
        }
        Ok(())
    }
}

impl<R: io::Read> io::Read for DepthGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.scan(&buf[..n])?;
        Ok(n)
    }
}

/// The JSON values of a stream. Each top-level array or object is found by scanning its bytes
/// (the same scan that enforces [`MAX_DEPTH`]) and parsed from memory at once. Anything else
/// hands the rest of the stream, from where that value begins, to jaq's byte-at-a-time
/// reader, which then reads it exactly as it would have from the start: a top-level value
/// of another kind or a comment, a value that is not valid JSON or nests too deeply (that
/// reader reports it), and one whose text passes [`HELD`] (read as a stream, not held).
struct Values<R> {
    input: Option<R>,
    buf: Vec<u8>,
    /// Where the next value begins in `buf`.
    pos: usize,
    /// From the first value handed over on.
    rest: Option<Box<dyn Iterator<Item = io::Result<Val>>>>,
}

/// How much is read from the stream at a time.
const READ: usize = 256 * 1024;

/// The most text of one value held to parse it at once.
const HELD: usize = 4 << 20;

impl<R: io::Read + 'static> Values<R> {
    fn new(input: R) -> Self {
        Self { input: Some(input), buf: Vec::new(), pos: 0, rest: None }
    }

    /// Reads more of the stream onto the end of `buf`, first dropping what was parsed;
    /// false at its end.
    fn fill(&mut self) -> io::Result<bool> {
        let Some(input) = &mut self.input else { return Ok(false) };
        self.buf.drain(..self.pos);
        self.pos = 0;
        let len = self.buf.len();
        self.buf.resize(len + READ, 0);
        let read = loop {
            match input.read(&mut self.buf[len..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        let n = *read.as_ref().unwrap_or(&0);
        self.buf.truncate(len + n);
        read?;
        if n == 0 {
            self.input = None;
        }
        Ok(n > 0)
    }

    /// The end of the array or object that begins at `pos` (reading more as needed), or the
    /// end of the stream inside it; `None` when jaq's reader must take it: it nests past
    /// [`MAX_DEPTH`], or its text passes [`HELD`].
    fn value_end(&mut self) -> io::Result<Option<usize>> {
        let mut scan = DepthGuard::new(());
        let mut at = self.pos;
        loop {
            for (i, &b) in self.buf[at..].iter().enumerate() {
                if scan.step(b).is_err() {
                    return Ok(None);
                }
                if scan.depth == 0 {
                    return Ok(Some(at + i + 1));
                }
            }
            // Reading more moves what is kept to the front.
            let scanned = self.buf.len() - self.pos;
            if scanned > HELD {
                return Ok(None);
            }
            if !self.fill()? {
                return Ok(Some(self.buf.len()));
            }
            at = self.pos + scanned;
        }
    }

    /// From here on, jaq's byte-at-a-time reader reads the stream, from `pos`.
    fn hand_over(&mut self) -> &mut dyn Iterator<Item = io::Result<Val>> {
        let buffered = io::Cursor::new(self.buf.split_off(self.pos));
        self.buf = Vec::new();
        let rest: Box<dyn io::Read> = match self.input.take() {
            Some(input) => Box::new(io::Read::chain(buffered, input)),
            None => Box::new(buffered),
        };
        let reader = io::BufReader::with_capacity(au::BUF_SIZE, DepthGuard::new(rest));
        self.rest.insert(Box::new(jaq_json::read::read_many(reader)))
    }

    fn next_value(&mut self) -> Option<io::Result<Val>> {
        if let Some(rest) = &mut self.rest {
            return rest.next();
        }
        loop {
            match self.buf.get(self.pos) {
                None => match self.fill() {
                    Ok(true) => {}
                    Ok(false) => return None,
                    Err(e) => return Some(Err(e)),
                },
                Some(b' ' | b'\t' | b'\n' | b'\r') => self.pos += 1,
                Some(b'[' | b'{') => break,
                Some(_) => return self.hand_over().next(),
            }
        }
        let end = match self.value_end() {
            Ok(Some(end)) => end,
            Ok(None) => return self.hand_over().next(),
            Err(e) => return Some(Err(e)),
        };
        match jaq_json::read::parse_single(&self.buf[self.pos..end]) {
            Ok(value) => {
                self.pos = end;
                Some(Ok(value))
            }
            Err(_) => self.hand_over().next(),
        }
    }
}

impl<R: io::Read + 'static> Iterator for Values<R> {
    type Item = io::Result<Val>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_value()
    }
}

/// Parses one JSON value given on the command line, with the same depth limit as input.
fn parse_arg(text: &str) -> Result<Val, String> {
    DepthGuard::new(()).scan(text.as_bytes()).map_err(|e| e.to_string())?;
    jaq_json::read::parse_single(text.as_bytes()).map_err(|e| e.to_string())
}

/// The data the filter runs with: the lookup table and the input stream (for `input(s)`).
struct Data;

impl DataT for Data {
    type V<'a> = Val;
    type Data<'a> = &'a Global<'a>;
}

struct Global<'a> {
    lut: &'a Lut<Data>,
    inputs: Inputs<'a, Val>,
}

impl<'a> HasLut<'a, Data> for &'a Global<'a> {
    fn lut(&self) -> &'a Lut<Data> {
        self.lut
    }
}

impl<'a> HasInputs<'a, Val> for &'a Global<'a> {
    fn inputs(&self) -> Inputs<'a, Val> {
        self.inputs
    }
}

#[derive(Default)]
struct Opts {
    filter: Option<String>,
    compact: bool,
    raw: bool,
    join: bool,
    slurp: bool,
    null_input: bool,
    sort_keys: bool,
    /// `$NAME` and its value.
    vars: Vec<(String, Val)>,
}

/// Where jaq's `stderr`, `halt_error` and `debug` write (through the `log` crate): `stderr`
/// and `halt_error` text as it is, `debug` as `["DEBUG:",VALUE]` lines, like jq.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let mut err = io::stderr().lock();
        let _ = match record.level() {
            log::Level::Error => write!(err, "{}", record.args()),
            _ => writeln!(err, "[\"DEBUG:\",{}]", record.args()),
        };
    }

    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

fn main() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
    au::main(&CARD, run)
}

fn parse(args: Vec<OsString>) -> Result<Opts, Error> {
    let mut o = Opts::default();
    let mut p = au::parser(args);
    while let Some(arg) = p.next()? {
        match arg {
            Short('c') => o.compact = true,
            Short('r') => o.raw = true,
            Short('j') => (o.raw, o.join) = (true, true),
            Short('s') => o.slurp = true,
            Short('n') => o.null_input = true,
            Short('S') => o.sort_keys = true,
            Long("arg") => {
                let name = au::string(p.value()?)?;
                let value = au::string(p.value()?)?;
                o.vars.push((format!("${name}"), Val::from(value)));
            }
            Long("argjson") => {
                let name = au::string(p.value()?)?;
                let text = au::string(p.value()?)?;
                let value = parse_arg(&text)
                    .map_err(|e| au::usage(format!("--argjson {name}: invalid JSON: {e}")))?;
                o.vars.push((format!("${name}"), value));
            }
            Value(v) if o.filter.is_none() => o.filter = Some(au::string(v)?),
            other => return Err(au::unexpected(other)),
        }
    }
    Ok(o)
}

/// `$ENV`: the environment as an object.
fn env_object() -> Val {
    let map = std::env::vars().map(|(k, v)| (Val::from(k), Val::from(v))).collect();
    Val::obj(map)
}

fn run(args: Vec<OsString>) -> Result<u8, Error> {
    let mut o = parse(args)?;
    o.vars.push(("$ENV".to_owned(), env_object()));
    let code = o.filter.take().unwrap_or_else(|| ".".to_owned());

    let arena = Arena::default();
    let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
    let modules = Loader::new(defs)
        .load(&arena, File { code: code.as_str(), path: () })
        .map_err(|errs| au::bad_input(load_errors(&code, errs)))?;
    let input_funs =
        jaq_std::input::funs::<Data>().into_vec().into_iter().map(jaq_core::native::run::<Data>);
    let funs = jaq_core::funs().chain(jaq_std::funs()).chain(input_funs).chain(jaq_json::funs());
    let filter = Compiler::default()
        .with_funs(funs)
        .with_global_vars(o.vars.iter().map(|(name, _)| name.as_str()))
        .compile(modules)
        .map_err(|errs| au::bad_input(compile_errors(errs)))?;

    // Input errors end the run; remember whether one was an I/O error (exit 1) or bad JSON (2).
    let io_failed = Cell::new(false);
    let note = |e: io::Error| {
        io_failed.set(e.kind() != io::ErrorKind::InvalidData);
        e.to_string()
    };
    let values = Values::new(io::stdin().lock()).map(|r| r.map_err(note));
    let slurped: Box<dyn Iterator<Item = Result<Val, String>>> = if o.slurp {
        let all: Result<Vec<Val>, String> = values.collect();
        Box::new(std::iter::once(all.map(|vs| vs.into_iter().collect())))
    } else {
        Box::new(values)
    };
    let inputs = RcIter::new(slurped);
    let global = Global { lut: &filter.lut, inputs: &inputs };
    let vars = Vars::new(o.vars.iter().map(|(_, v)| v.clone()));
    let ctx = Ctx::<Data>::new(&global, vars);

    let pp = Pp {
        indent: (!o.compact).then(|| "  ".to_owned()),
        sort_keys: o.sort_keys,
        sep_space: !o.compact,
        ..Pp::default()
    };
    let mut out = au::stdout();
    let mut status = au::EXIT_OK;
    let mut run_on = |input: Val| -> Result<(), Error> {
        for output in filter.id.run((ctx.clone(), input)) {
            match output {
                Ok(v) => write_value(&mut out, &pp, &o, &v)?,
                Err(exn) => match exn.get_err() {
                    Ok(e) => {
                        out.flush()?;
                        au::warn("jq", &error_message(e));
                        status = EXIT_RUNTIME;
                        return Ok(());
                    }
                    Err(exn) => {
                        let code = exn.get_halt().unwrap_or(i32::from(EXIT_RUNTIME));
                        out.flush()?;
                        au::exit(u8::try_from(code.rem_euclid(256)).unwrap_or(EXIT_RUNTIME));
                    }
                },
            }
        }
        Ok(())
    };
    if o.null_input {
        run_on(Val::Null)?;
    } else {
        for input in &inputs {
            match input {
                Ok(v) => run_on(v)?,
                Err(e) if io_failed.get() => return Err(Error::Failed(format!("read error: {e}"))),
                Err(e) => {
                    out.flush()?;
                    return Err(au::bad_input(format!("error: cannot parse input: {e}")));
                }
            }
        }
    }
    out.flush()?;
    Ok(status)
}

/// A run-time error as jq words it: a string raised by `error` as it is, any other value
/// marked as such.
fn error_message(e: jaq_core::Error<Val>) -> String {
    match e.into_val() {
        Val::TStr(s) => format!("error: {}", jaq_json::bstr(&**s)),
        other => format!("error (not a string): {other}"),
    }
}

fn write_value(out: &mut impl Write, pp: &Pp, o: &Opts, v: &Val) -> io::Result<()> {
    match v {
        Val::TStr(s) | Val::BStr(s) if o.raw => out.write_all(s)?,
        _ => jaq_json::write::write(out, pp, 0, v)?,
    }
    if !o.join {
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Lex and parse errors, with the byte offset where each was found.
fn load_errors(code: &str, errs: jaq_core::load::Errors<&str, ()>) -> String {
    use jaq_core::load::Error as E;
    // Where `part`, a slice of `code`, begins (checked, unlike `jaq_core::load::span`).
    let offset = |part: &str| {
        let start = (part.as_ptr() as usize).checked_sub(code.as_ptr() as usize);
        start.filter(|&s| s <= code.len()).map_or_else(|| "?".to_owned(), |s| s.to_string())
    };
    let mut messages = Vec::new();
    for (_, e) in errs {
        match e {
            E::Io(errs) => {
                messages.extend(errs.into_iter().map(|(path, e)| format!("{path}: {e}")))
            }
            E::Lex(errs) => messages.extend(errs.into_iter().map(|(expect, at)| {
                format!("syntax error at offset {}: expected {}", offset(at), expect.as_str())
            })),
            E::Parse(errs) => messages.extend(errs.into_iter().map(|(expect, found)| {
                let at = offset(found);
                let found =
                    if found.is_empty() { "end of input".to_owned() } else { format!("'{found}'") };
                format!("syntax error at offset {at}: expected {}, found {found}", expect.as_str())
            })),
        }
    }
    format!("error: cannot compile the filter: {}", messages.join("; "))
}

/// Undefined names.
fn compile_errors(errs: jaq_core::compile::Errors<&str, ()>) -> String {
    let messages: Vec<String> = errs
        .into_iter()
        .flat_map(|(_, errs)| errs)
        .map(|(name, undefined)| match undefined {
            jaq_core::compile::Undefined::Filter(arity) => {
                format!("undefined filter {name}/{arity}")
            }
            other => format!("undefined {} {name}", other.as_str()),
        })
        .collect();
    format!("error: cannot compile the filter: {}", messages.join("; "))
}
