//! `agx au new NAME [--lang rust|python|js]`: a new AU project that builds to a component
//! as generated. The templates for Python and JavaScript live in `templates/`, with the
//! `agenix:au/unit` world (`wit/`) they build against.

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::output::Out;

/// Create the AU project NAME (in ./NAME unless --dir says otherwise): code that reads
/// stdin and answers --describe, and a README. In Rust: a crate with a size-tuned release
/// profile and a test. In Python or JavaScript: app.py or app.js, the agenix:au/unit world
/// in wit/, and build.sh, which installs the pinned toolchain (componentize-py from PyPI in
/// a virtual environment, componentize-js from npm) and builds NAME.wasm.
#[derive(Debug, clap::Args)]
pub(crate) struct New {
    /// The AU's name: lowercase letters, digits, `-` and `_`, starting with a letter.
    name: String,
    /// Where to create it [default: ./NAME].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The language to write it in.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    lang: Lang,
}

/// The languages `agx au new` writes AUs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Lang {
    Rust,
    Python,
    Js,
}

/// The `agenix:au/unit` world, as the Python and JavaScript toolchains read it.
const WIT: &[(&str, &str)] = &[
    ("wit/au.wit", include_str!("../../../../wit/au.wit")),
    ("wit/deps/cli.wit", include_str!("../../../../wit/deps/cli.wit")),
    ("wit/deps/clocks.wit", include_str!("../../../../wit/deps/clocks.wit")),
    ("wit/deps/filesystem.wit", include_str!("../../../../wit/deps/filesystem.wit")),
    ("wit/deps/io.wit", include_str!("../../../../wit/deps/io.wit")),
    ("wit/deps/random.wit", include_str!("../../../../wit/deps/random.wit")),
    ("wit/deps/sockets.wit", include_str!("../../../../wit/deps/sockets.wit")),
];

impl Lang {
    /// Each file: its path in the project, its template, and whether it is executable.
    fn files(self) -> Vec<(&'static str, &'static str, bool)> {
        let mut files = match self {
            Self::Rust => vec![
                ("Cargo.toml", CARGO_TOML, false),
                ("src/main.rs", MAIN_RS, false),
                ("tests/cli.rs", TEST_RS, false),
                ("README.md", README_MD, false),
                (".gitignore", "/target\n", false),
            ],
            Self::Python => vec![
                ("app.py", include_str!("templates/python/app.py"), false),
                ("build.sh", include_str!("templates/python/build.sh"), true),
                ("README.md", PYTHON_README, false),
                (".gitignore", "/.venv\n__pycache__/\n/*.wasm\n", false),
            ],
            Self::Js => vec![
                ("app.js", include_str!("templates/js/app.js"), false),
                ("package.json", include_str!("templates/js/package.json"), false),
                ("build.sh", include_str!("templates/js/build.sh"), true),
                ("README.md", JS_README, false),
                (".gitignore", "/node_modules\n/*.wasm\n", false),
            ],
        };
        if self != Self::Rust {
            files.extend(WIT.iter().map(|&(path, text)| (path, text, false)));
        }
        files
    }

    /// What to type next, after `cd DIR`.
    fn next_steps(self, name: &str) -> String {
        let (build, wasm) = match self {
            Self::Rust => (
                "cargo build --release --target wasm32-wasip2".to_string(),
                format!("target/wasm32-wasip2/release/{name}.wasm"),
            ),
            Self::Python | Self::Js => ("./build.sh".to_string(), format!("{name}.wasm")),
        };
        format!("  {build}\n  agx au check {wasm}\n  echo hello | agx au run {wasm}\n")
    }
}

fn valid_name(name: &str) -> bool {
    name.parse::<agenix_proto::AuName>().is_ok()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
}

impl New {
    pub(crate) fn execute(self, out: Out) -> Result<ExitCode> {
        if !valid_name(&self.name) {
            bail!("invalid AU name {:?}: use [a-z][a-z0-9_-]{{0,63}}", self.name);
        }
        let dir = self.dir.clone().unwrap_or_else(|| PathBuf::from(&self.name));
        if dir.exists() {
            bail!("{} already exists", dir.display());
        }
        let files = self.lang.files();
        // Build the crate beside its final place and rename it in, so a failure leaves
        // nothing half-made.
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let staging = tempfile::Builder::new()
            .prefix(".agx-new-")
            .tempdir_in(&parent)
            .with_context(|| format!("cannot create a directory in {}", parent.display()))?;
        for (path, template, executable) in files {
            let p = staging.path().join(path);
            if let Some(d) = p.parent() {
                fs::create_dir_all(d)?;
            }
            fs::write(&p, template.replace("{{name}}", &self.name))
                .with_context(|| format!("cannot write {path}"))?;
            if executable {
                use std::os::unix::fs::PermissionsExt as _;
                fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
                    .with_context(|| format!("cannot make {path} executable"))?;
            }
        }
        let staged = staging.keep();
        if let Err(e) = fs::rename(&staged, &dir) {
            let _ = fs::remove_dir_all(&staged);
            return Err(anyhow::Error::new(e).context(format!("cannot create {}", dir.display())));
        }
        let lang = format!("{:?}", self.lang).to_lowercase();
        let data = serde_json::json!({ "name": self.name, "dir": dir, "lang": lang });
        out.emit("created", &data, || {
            format!(
                "created {dir}\n\n  cd {dir}\n{}",
                self.lang.next_steps(&self.name),
                dir = dir.display()
            )
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

const CARGO_TOML: &str = r#"[package]
name = "{{name}}"
version = "0.1.0"
edition = "2024"
description = "An AGEniX AU"
publish = false

# A crate of its own, even inside another workspace.
[workspace]

# exit-with-code, so exit codes other than 0 and 1 survive on wasm32-wasip2.
[target.'cfg(target_os = "wasi")'.dependencies]
wasip2 = "2"

# Small components that compile fast: cargo build --release --target wasm32-wasip2
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true
panic = "abort"
"#;

const MAIN_RS: &str = r###"//! {{name}}: an AGEniX AU. It reads stdin and writes stdout; diagnostics go to stderr.
//!
//! The AU contract: exit 0 ok, 1 failure, 2 bad input or usage, 3+ your own meanings;
//! `{{name}} --describe` prints the model card below.

use std::io::{self, Read, Write};

/// The model card (schema agenix.au.card/v1): keep it in step with what the AU does.
const CARD: &str = r##"{"schema":"agenix.au.card/v1","name":"{{name}}","version":"0.1.0","description":"Uppercases its input (lowercases it with --lower)","capabilities":["stdin","stdout"],"inputs":["text/plain"],"outputs":["text/plain"],"args":[{"flag":"--lower","description":"lowercase instead of uppercase"}],"usage":"{{name}} [--lower]","exit_codes":{"0":"ok","1":"failure","2":"bad input or usage"},"mounts":[]}"##;

fn main() {
    let code = run();
    exit(code)
}

fn run() -> u8 {
    let mut lower = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--describe" => {
                println!("{CARD}");
                return 0;
            }
            "--lower" => lower = true,
            other => {
                eprintln!("{{name}}: unknown argument {other:?}\nusage: {{name}} [--lower]");
                return 2;
            }
        }
    }
    let mut input = Vec::new();
    if let Err(e) = io::stdin().read_to_end(&mut input) {
        eprintln!("{{name}}: cannot read stdin: {e}");
        return 1;
    }
    let Ok(text) = String::from_utf8(input) else {
        eprintln!("{{name}}: input is not UTF-8");
        return 2;
    };
    let out = if lower { text.to_lowercase() } else { text.to_uppercase() };
    match io::stdout().write_all(out.as_bytes()) {
        Ok(()) => 0,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("{{name}}: cannot write stdout: {e}");
            1
        }
    }
}

/// Exits with `code`. On wasm32-wasip2, `std::process::exit` reports every failure as 1;
/// `wasi:cli/exit.exit-with-code` keeps the code.
fn exit(code: u8) -> ! {
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    #[cfg(target_os = "wasi")]
    wasip2::cli::exit::exit_with_code(code);
    std::process::exit(i32::from(code))
}
"###;

const TEST_RS: &str = r###"//! Runs the native build of the AU: the same code the component runs.

use std::io::Write;
use std::process::{Command, Stdio};

fn run(args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_{{name}}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the AU starts");
    child.stdin.take().expect("stdin is piped").write_all(stdin).expect("stdin is writable");
    let out = child.wait_with_output().expect("the AU finishes");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("UTF-8 output");
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

#[test]
fn uppercases_stdin() {
    assert_eq!(run(&[], b"hello, au\n"), (0, "HELLO, AU\n".into(), String::new()));
    assert_eq!(run(&["--lower"], b"MiXeD").1, "mixed");
}

#[test]
fn describe_prints_the_card() {
    let (code, out, _) = run(&["--describe"], b"");
    assert_eq!(code, 0);
    assert!(out.starts_with(r#"{"schema":"agenix.au.card/v1","name":"{{name}}""#), "{out}");
}

#[test]
fn bad_usage_exits_2() {
    let (code, _, err) = run(&["--nope"], b"");
    assert_eq!(code, 2);
    assert!(err.starts_with("{{name}}: unknown argument"), "{err}");
}
"###;

const README_MD: &str = r#"# {{name}}

An AGEniX AU: a WASI component that reads stdin and writes stdout.

    cargo test                                          # the native build, same code
    cargo build --release --target wasm32-wasip2        # the component
    agx au check target/wasm32-wasip2/release/{{name}}.wasm
    echo hello | agx au run target/wasm32-wasip2/release/{{name}}.wasm
    agx au push target/wasm32-wasip2/release/{{name}}.wasm   # then name it in plans

The contract: stdin in, stdout out, stderr for diagnostics; exit 0 ok, 1 failure, 2 bad
input or usage, 3+ your own; `--describe` prints the model card. An AU imports the
`agenix:au/unit` world (`agx au check` lists each import): no network. The sockets and http
interfaces some libraries link are there, but every call to them is denied.
"#;

const PYTHON_README: &str = r#"# {{name}}

An AGEniX AU in Python: app.py, built to a WASI component by componentize-py against the
`agenix:au/unit` world in wit/.

    ./build.sh                          # installs componentize-py 0.25.1 in .venv once
    agx au check {{name}}.wasm
    echo hello | agx au run {{name}}.wasm
    agx au push {{name}}.wasm           # then name it in plans

The contract: stdin in, stdout out, stderr for diagnostics; exit 0 ok, 1 failure, 2 bad
input or usage, 3+ your own (through `exit.exit_with_code`: `sys.exit(n)` reports every
failure as 1); `--describe` prints the model card. There is no network: `socket` and
`urllib` are there, and every connection or lookup raises `PermissionError`. Files: only
/tmp (private scratch) and the directories a plan mounts.
"#;

const JS_README: &str = r#"# {{name}}

An AGEniX AU in JavaScript: app.js, built to a WASI component by componentize-js against the
`agenix:au/unit` world in wit/.

    ./build.sh                          # installs componentize-js with npm once
    agx au check {{name}}.wasm
    echo hello | agx au run {{name}}.wasm
    agx au push {{name}}.wasm           # then name it in plans

The contract: stdin in, stdout out, stderr for diagnostics; exit 0 ok, 1 failure, 2 bad
input or usage, 3+ your own (through `exitWithCode`); `--describe` prints the model card.
Standard input, arguments and the exit code come from the `wasi:cli` interfaces (imported by
name, as app.js shows). There is no network: `fetch` is there and always fails.
"#;
