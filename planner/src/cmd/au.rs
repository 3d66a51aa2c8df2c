//! `agx au run|describe|check|push|list|new`: AUs on this machine.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use agenix_host::output::sanitize_stderr;
use agenix_host::wasm::{ImportKind, Metering, PrepareError, WasmHost};
use agenix_host::{Grant, WasmTask};
use agenix_proto::card::Card;
use agenix_proto::{Digest, Limits, Outcome};
use agenix_runtime::exec::MountConfig;
use agenix_runtime::store::NameEntry;
use anyhow::{Context, Result, bail};
use bytes::Bytes;

use crate::args::parse_timeout;
use crate::files::{Source, Within, read_within};
use crate::local::{
    LocalHost, StoreArg, parse_bytes, parse_mount, read_component, runtime, runtime_here,
    show_bytes,
};
use crate::output::{Out, STDOUT_CLOSED, is_broken_pipe};
use agenix_proto::text::clean;

mod scaffold;

/// Most stdin `agx au run` reads (refused past it).
const MAX_STDIN: u64 = 1 << 30;

/// AU commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum AuCommand {
    /// Run an AU under the sandbox: stdin in, stdout out, the outcome on stderr.
    #[command(after_help = examples!(
        "# The grep AU on a log, under limits; the AU's arguments after --",
        "agx au run target/wasm32-wasip2/au/au-grep.wasm --memory 64M --timeout 5s -- -i error < examples/data/app.log",
        "# A directory the AU sees at /logs (read-only) and an environment variable",
        "agx au run app.wasm --mount logs=/var/log:ro --env LANG=C.UTF-8 < input.txt",
    ))]
    Run(RunAu),
    /// Print an AU's model card (`AU --describe`, run under small limits).
    #[command(after_help = examples!(
        "agx au describe target/wasm32-wasip2/au/au-grep.wasm",
        "agx au describe target/wasm32-wasip2/au/au-grep.wasm --json",
    ))]
    Describe(Describe),
    /// Check an AU against the agenix:au/unit world: each import granted, denied or refused;
    /// exit 1 naming refused imports.
    #[command(after_help = examples!(
        "agx au check target/wasm32-wasip2/release/shout.wasm",
        "agx au check shout.wasm --json",
    ))]
    Check(Check),
    /// Add an AU to the local store under its card's name; prints its digest.
    #[command(after_help = examples!(
        "# Into the local store under its card's name, and to the queue when one is configured",
        "agx au push target/wasm32-wasip2/au/au-grep.wasm",
        "# An AU without a model card, under a name",
        "agx au push nap.wasm --name nap",
    ))]
    Push(Push),
    /// List the AUs in the local store.
    #[command(after_help = examples!(
        "agx au list",
        "agx au list --json",
    ))]
    List(List),
    /// Stop keeping an AU at the queue: it is removed there once no job needs it.
    #[command(after_help = examples!(
        "# The queue may remove grep once no job needs it; the local store keeps it",
        "agx au unkeep grep",
    ))]
    Unkeep(Unkeep),
    /// Create a new AU project (Rust, Python or JavaScript) that builds to a component and
    /// passes `agx au check`.
    #[command(after_help = examples!(
        "# Rust: a crate that builds as generated",
        "agx au new shout && cd shout && cargo build --release --target wasm32-wasip2",
        "# Python or JavaScript: build.sh installs the toolchain once and builds NAME.wasm",
        "agx au new shout-py --lang python && cd shout-py && ./build.sh",
        "# JavaScript, in ./my-au",
        "agx au new shout-js --lang js --dir my-au",
    ))]
    New(scaffold::New),
}

impl AuCommand {
    pub(crate) fn execute(self, out: Out) -> Result<ExitCode> {
        match self {
            Self::Run(c) => c.execute(out),
            Self::Describe(c) => c.execute(out),
            Self::Check(c) => c.execute(out),
            Self::Push(c) => c.execute(out),
            Self::List(c) => c.execute(out),
            Self::Unkeep(c) => c.execute(out),
            Self::New(c) => c.execute(out),
        }
    }
}

/// Run FILE.wasm with stdin and ARGS: its stdout on stdout; its stderr and the outcome on
/// stderr.
///
/// The exit code mirrors the AU's; 124 means it timed out (or stdin was still open when the
/// timeout passed), 125 that the sandbox stopped it (fuel, memory, output, trap) or refused
/// it, 141 that stdout was closed before all of the AU's output was written (the outcome is
/// still printed on stderr).
#[derive(Debug, clap::Args)]
pub(crate) struct RunAu {
    /// The component.
    file: PathBuf,
    /// Fuel (roughly, wasm instructions), or `unmetered`: no fuel is counted (faster for
    /// compute-bound AUs) and the timeout alone bounds the AU.
    #[arg(long, value_parser = parse_fuel)]
    fuel: Option<u64>,
    /// Memory limit, in bytes or with a unit (64M, 1G).
    #[arg(long, value_parser = parse_bytes)]
    memory: Option<u64>,
    /// Wall-clock timeout with a unit (`500ms`, `30s`, `2m`; 1ms to 1h), from when agx
    /// starts reading stdin: reading it counts, and the AU gets what is left.
    #[arg(long, value_parser = parse_timeout)]
    timeout: Option<Duration>,
    /// Output limit per stream, in bytes or with a unit.
    #[arg(long, value_parser = parse_bytes)]
    output: Option<u64>,
    /// A directory the AU sees at /NAME: NAME=DIR[:ro|rw] (read-only by default).
    #[arg(long = "mount", value_name = "NAME=DIR[:ro|rw]", value_parser = parse_mount)]
    mounts: Vec<(agenix_proto::MountName, MountConfig)>,
    /// No scratch /tmp for the AU (as a plan's `"scratch": false`).
    #[arg(long)]
    no_scratch: bool,
    /// An environment variable for the AU: KEY=VALUE.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Arguments for the AU (after `--`).
    #[arg(last = true)]
    args: Vec<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected KEY=VALUE")?;
    if k.is_empty() || k.contains('\0') || v.contains('\0') {
        return Err("invalid KEY=VALUE".into());
    }
    Ok((k.to_string(), v.to_string()))
}

/// The process exit code for an AU's outcome.
fn exit_code_for(outcome: &Outcome) -> ExitCode {
    match outcome {
        Outcome::Exited { code } => ExitCode::from(u8::try_from(*code).unwrap_or(1)),
        Outcome::TimedOut => ExitCode::from(124),
        _ => ExitCode::from(125),
    }
}

/// `--fuel`: a whole number in range, or `unmetered`.
fn parse_fuel(s: &str) -> Result<u64, String> {
    if s == agenix_proto::limits::UNMETERED_NAME {
        return Ok(agenix_proto::UNMETERED);
    }
    match s.parse::<u64>() {
        Ok(n @ 1..=agenix_proto::UNMETERED) => Ok(n),
        _ => Err(format!(
            "fuel is a whole number from 1 to {} or \"unmetered\"",
            agenix_proto::UNMETERED
        )),
    }
}

/// How an `agx au run` ended, as reported on stderr.
struct Ending<'a> {
    name: &'a str,
    outcome: &'a Outcome,
    /// `None` when unmetered.
    fuel_consumed: Option<u64>,
    /// From when agx started reading stdin.
    wall: Duration,
    peak_memory: u64,
    /// The AU's stderr, sanitized.
    stderr: &'a str,
    /// The timeout passed while agx was reading stdin: the AU never ran.
    stdin_timed_out: Option<u64>,
    /// Stdout was closed before all of the AU's output was written.
    stdout_closed: bool,
}

impl Ending<'_> {
    /// Prints the AU's stderr and the outcome line on stderr (with `--json`, one `outcome`
    /// record: `{"type": "outcome", "data": {"outcome", "fuel_consumed", "wall_ms",
    /// "peak_memory_bytes", "stderr", "stdin_timed_out", "stdout_closed"}}`).
    fn print(&self, out: Out) -> std::io::Result<()> {
        let mut err = std::io::stderr().lock();
        let wall_ms = u64::try_from(self.wall.as_millis()).unwrap_or(u64::MAX);
        if out.json {
            let rec = serde_json::json!({
                "type": "outcome",
                "data": {
                    "outcome": self.outcome, "fuel_consumed": self.fuel_consumed,
                    "wall_ms": wall_ms, "peak_memory_bytes": self.peak_memory,
                    "stderr": self.stderr, "stdin_timed_out": self.stdin_timed_out.is_some(),
                    "stdout_closed": self.stdout_closed,
                }
            });
            return writeln!(err, "{rec}");
        }
        let stderr = clean(self.stderr);
        err.write_all(stderr.as_bytes())?;
        if !stderr.is_empty() && !stderr.ends_with('\n') {
            writeln!(err)?;
        }
        let fuel = self.fuel_consumed.map_or_else(|| "unmetered".into(), |f| f.to_string());
        writeln!(
            err,
            "agx: {}: {} (fuel {fuel}, {wall_ms} ms, peak memory {})",
            self.name,
            self.outcome.label(),
            show_bytes(self.peak_memory)
        )?;
        if let Outcome::Trapped { message } | Outcome::Refused { reason: message } = self.outcome {
            writeln!(err, "agx: {}", clean(message))?;
        }
        if let Some(ms) = self.stdin_timed_out {
            writeln!(
                err,
                "agx: the timeout of {ms} ms passed while reading stdin; the AU did not run"
            )?;
        }
        if self.stdout_closed {
            writeln!(err, "agx: stdout was closed before all of the AU's output was written")?;
        }
        Ok(())
    }

    fn exit_code(&self) -> ExitCode {
        if self.stdout_closed { ExitCode::from(STDOUT_CLOSED) } else { exit_code_for(self.outcome) }
    }
}

/// Compiles component bytes read from `file` and prepares them (digest from the bytes),
/// with the reason on failure.
async fn prepare_bytes(
    host: &WasmHost,
    file: &Path,
    bytes: Vec<u8>,
) -> Result<std::sync::Arc<agenix_host::wasm::Prepared>> {
    let digest = Digest::of(&bytes);
    host.prepare(digest, Metering::Fuel, || async { Ok(bytes) })
        .await
        .with_context(|| format!("cannot run {}", file.display()))
}

fn au_name(file: &Path) -> String {
    file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "au".into())
}

impl RunAu {
    fn execute(self, out: Out) -> Result<ExitCode> {
        let limits = Limits {
            fuel: self.fuel.unwrap_or(Limits::DEFAULT.fuel),
            memory_bytes: self.memory.unwrap_or(Limits::DEFAULT.memory_bytes),
            timeout_ms: self.timeout.map_or(Limits::DEFAULT.timeout_ms, |t| {
                t.as_millis().try_into().unwrap_or(u64::MAX)
            }),
            output_bytes: self.output.unwrap_or(Limits::DEFAULT.output_bytes),
            ..Limits::DEFAULT
        };
        // Every value in range (fuel at the maximum is `unmetered`).
        for ((name, v), (_, max)) in limits.fields().into_iter().zip(Limits::ABSOLUTE.fields()) {
            if v > max || v == 0 {
                bail!("--{name}: {v} is outside 1..={max}");
            }
        }
        if !self.no_scratch && self.mounts.iter().any(|(name, _)| name.as_str() == "tmp") {
            bail!(
                "--mount tmp=...: /tmp is the AU's scratch directory; pass --no-scratch to \
                 mount a directory there"
            );
        }
        let grants = self
            .mounts
            .iter()
            .map(|(name, cfg)| Grant {
                host: cfg.host.clone(),
                guest: format!("/{name}"),
                access: cfg.access,
            })
            .collect();
        let name = au_name(&self.file);
        let local = LocalHost::new(Limits::ABSOLUTE, 1)?;
        let rt = runtime_here()?;
        let bytes = read_component(&self.file)?;
        // A component the sandbox refuses ends like one it stopped: exit 125.
        let prepared = rt
            .block_on(
                local
                    .wasm
                    .prepare(Digest::of(&bytes), Metering::of(&limits), || async { Ok(bytes) }),
            )
            .map_err(|e| crate::output::Coded {
                code: 125,
                message: format!("the sandbox refuses {}: {e}", self.file.display()),
            })?;

        // The timeout covers reading stdin; the AU gets what is left of it.
        let timeout = Duration::from_millis(limits.timeout_ms);
        let start = Instant::now();
        // At most Limits::ABSOLUTE's hour (checked above): the sum cannot overflow.
        let stdin = match read_within(Source::Stdin, MAX_STDIN, start + timeout)? {
            Within::Read(bytes) => Some(bytes),
            Within::StillOpen => None,
        };
        let left_ms =
            u64::try_from(timeout.saturating_sub(start.elapsed()).as_millis()).unwrap_or(u64::MAX);
        let (Some(stdin), 1..) = (stdin, left_ms) else {
            let ending = Ending {
                name: &name,
                outcome: &Outcome::TimedOut,
                fuel_consumed: limits.is_metered().then_some(0),
                wall: start.elapsed(),
                peak_memory: 0,
                stderr: "",
                stdin_timed_out: Some(limits.timeout_ms),
                stdout_closed: false,
            };
            ending.print(out)?;
            return Ok(ending.exit_code());
        };
        let task = WasmTask {
            program: name.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            stdin: Bytes::from(stdin),
            grants,
            limits: Limits { timeout_ms: left_ms, ..limits },
            scratch: !self.no_scratch,
        };
        let run = rt.block_on(local.wasm.run(&prepared, task))?;
        let wall = start.elapsed();
        // An AU stopped inside a blocking host call (opening a FIFO in a mount that no one
        // writes, say) leaves its thread blocked: don't wait for it to end.
        rt.shutdown_background();

        let mut stdout = std::io::stdout().lock();
        let written = stdout.write_all(&run.stdout).and_then(|()| stdout.flush());
        drop(stdout);
        let (stdout_closed, write_error) = match written {
            Ok(()) => (false, None),
            Err(e) if is_broken_pipe(&e) => (true, None),
            Err(e) => (false, Some(e)),
        };
        let stderr = sanitize_stderr(&run.stderr);
        let ending = Ending {
            name: &name,
            outcome: &run.outcome,
            fuel_consumed: run.fuel_consumed,
            wall,
            peak_memory: run.peak_memory,
            stderr: &stderr,
            stdin_timed_out: None,
            stdout_closed,
        };
        ending.print(out)?;
        if let Some(e) = write_error {
            return Err(anyhow::Error::new(e).context("cannot write stdout"));
        }
        Ok(ending.exit_code())
    }
}

/// Print FILE's model card.
#[derive(Debug, clap::Args)]
pub(crate) struct Describe {
    /// The component.
    file: PathBuf,
}

/// Runs `--describe` of the component `bytes` (read from `file`) under small limits and
/// parses the card.
pub(crate) async fn describe(host: &WasmHost, file: &Path, bytes: Vec<u8>) -> Result<Card> {
    let prepared = prepare_bytes(host, file, bytes).await?;
    let limits = Limits {
        fuel: 2_000_000_000,
        memory_bytes: 64 << 20,
        timeout_ms: 10_000,
        output_bytes: 256 << 10,
        ..Limits::DEFAULT
    };
    let task = WasmTask {
        program: au_name(file),
        args: vec!["--describe".into()],
        env: vec![],
        stdin: Bytes::new(),
        grants: vec![],
        limits,
        // Reading the card needs no files.
        scratch: false,
    };
    let run = host.run(&prepared, task).await?;
    if !run.outcome.is_success() {
        bail!(
            "{} --describe ended with {}: {}",
            file.display(),
            run.outcome.label(),
            sanitize_stderr(&run.stderr).trim()
        );
    }
    Card::from_json(run.stdout.trim_ascii())
        .with_context(|| format!("{} --describe printed no valid model card", file.display()))
}

impl Describe {
    fn execute(self, out: Out) -> Result<ExitCode> {
        let local = LocalHost::new(Limits::ABSOLUTE, 1)?;
        let bytes = read_component(&self.file)?;
        let card = runtime()?.block_on(describe(&local.wasm, &self.file, bytes))?;
        out.emit("card", &card, || {
            let mut s = format!(
                "{} {} — {}\nusage: {}\n",
                card.name, card.version, card.description, card.usage
            );
            let w = card.args.iter().map(|a| a.flag.len()).max().unwrap_or(0);
            for a in &card.args {
                s.push_str(&format!("  {:w$}  {}\n", a.flag, a.description));
            }
            s.push_str(&format!(
                "reads {} · writes {}\n",
                card.inputs.join(", "),
                card.outputs.join(", ")
            ));
            for (code, meaning) in &card.exit_codes {
                s.push_str(&format!("exit {code}: {meaning}\n"));
            }
            // The card is whatever the AU printed.
            clean(&s).into_owned()
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Check FILE against the agenix:au/unit world: lists every import as granted (usable),
/// denied (linked, but every network call fails) or refused (exit 1, each named).
#[derive(Debug, clap::Args)]
pub(crate) struct Check {
    /// The component.
    file: PathBuf,
}

impl Check {
    fn execute(self, out: Out) -> Result<ExitCode> {
        let bytes = read_component(&self.file)?;
        let local = LocalHost::new(Limits::ABSOLUTE, 1)?;
        let component = runtime()?
            .block_on(local.wasm.compile_unchecked(bytes.clone()))
            .with_context(|| format!("{} is not an AU", self.file.display()))?;
        let (imports, verdict) = local.wasm.conformance(&component);
        let digest = Digest::of(&bytes);
        let listed: Vec<serde_json::Value> = imports
            .iter()
            .map(|i| {
                let reason = match i.kind {
                    ImportKind::Refused(why) => Some(why.reason()),
                    _ => None,
                };
                serde_json::json!({"name": i.name, "kind": i.kind.as_str(), "reason": reason})
            })
            .collect();
        let data = serde_json::json!({
            "file": self.file, "digest": digest.to_string(), "imports": listed,
            "conforms": verdict.is_ok(), "error": verdict.as_ref().err().map(ToString::to_string),
        });
        out.emit("check", &data, || {
            let head = match &verdict {
                Ok(()) => "conforms to agenix:au/unit",
                Err(_) => "does not conform to agenix:au/unit",
            };
            let mut text = format!("{}: {head}\ndigest   {digest}", self.file.display());
            for kind in [ImportKind::Granted, ImportKind::Denied] {
                let names: Vec<&str> =
                    imports.iter().filter(|i| i.kind == kind).map(|i| i.name.as_str()).collect();
                if !names.is_empty() {
                    let what = match kind {
                        ImportKind::Denied => "denied   (linked; every network call fails)",
                        _ => "granted",
                    };
                    text += &format!("\n{what}\n  {}", clean(&names.join("\n  ")));
                }
            }
            let refused: Vec<String> = imports
                .iter()
                .filter_map(|i| match i.kind {
                    ImportKind::Refused(why) => Some(format!("{}: {}", i.name, why.reason())),
                    _ => None,
                })
                .collect();
            if !refused.is_empty() {
                text += &format!("\nrefused\n  {}", clean(&refused.join("\n  ")));
            }
            text
        })?;
        if let Err(e) = verdict {
            return Err(anyhow::Error::new(e)
                .context(format!("{} does not conform to agenix:au/unit", self.file.display())));
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Add FILE to the local store; its name comes from its model card (or --name).
#[derive(Debug, clap::Args)]
pub(crate) struct Push {
    /// The component.
    file: PathBuf,
    #[command(flatten)]
    store: StoreArg,
    /// The name to store it under, when it has no model card.
    #[arg(long)]
    name: Option<agenix_proto::AuName>,
    /// Also upload it to this queue (when one is configured, it always is).
    #[command(flatten)]
    queue: crate::remote::QueueArgs,
}

impl Push {
    fn execute(self, out: Out) -> Result<ExitCode> {
        let store = self.store.open()?;
        let bytes = read_component(&self.file)?;
        let local = LocalHost::new(Limits::ABSOLUTE, 1)?;
        // Refuse what could never run here before storing it, then ask these very bytes for
        // their card.
        let card = runtime()?.block_on(async {
            let digest = Digest::of(&bytes);
            let b = bytes.clone();
            local.wasm.prepare(digest, Metering::Fuel, || async { Ok(b) }).await.map_err(
                |e: PrepareError| {
                    anyhow::Error::new(e).context(format!("cannot push {}", self.file.display()))
                },
            )?;
            Ok::<_, anyhow::Error>(describe(&local.wasm, &self.file, bytes.clone()).await)
        })?;
        let (name, card) = match (self.name, card) {
            (Some(name), card) => (name, card.ok()),
            (None, Ok(card)) => (card.name.clone(), Some(card)),
            (None, Err(e)) => {
                return Err(e.context("pass --name NAME to push an AU without a model card"));
            }
        };
        let digest = store.put(&bytes)?;
        store.set_name(&name, &NameEntry { digest, card })?;
        let uploaded = if self.queue.configured()? {
            runtime()?.block_on(async {
                let client = self.queue.connect(agenix_proto::wire::ClientRole::Planner).await?;
                // Kept at the queue until removed explicitly, not only while a job needs it.
                let put = client.put_many(&[&bytes], true).await;
                client.shutdown().await;
                put.context("cannot upload to the queue")?;
                anyhow::Ok(true)
            })?
        } else {
            false
        };
        out.emit(
            "pushed",
            &serde_json::json!({ "name": name, "digest": digest.to_string(), "store": store.dir(), "queue": uploaded }),
            || {
                let queue = if uploaded { " and the queue" } else { "" };
                format!("{digest}\npushed {} as \"{name}\" to {}{queue}", self.file.display(), store.dir().display())
            },
        )?;
        Ok(ExitCode::SUCCESS)
    }
}

/// List the AUs in the local store.
#[derive(Debug, clap::Args)]
pub(crate) struct List {
    #[command(flatten)]
    store: StoreArg,
}

impl List {
    fn execute(self, out: Out) -> Result<ExitCode> {
        let store = self.store.open()?;
        let names = store.names()?;
        if out.json {
            for (name, entry) in &names {
                out.emit("au", &serde_json::json!({ "name": name, "digest": entry.digest.to_string(), "card": entry.card }), String::new)?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        let mut s = String::new();
        if names.is_empty() {
            s = format!("no AUs in {}\n", store.dir().display());
        }
        for (name, entry) in &names {
            let desc = entry.card.as_ref().map(|c| c.description.as_str()).unwrap_or("");
            s.push_str(&format!("{:<12} {}  {desc}\n", name.as_str(), entry.digest));
        }
        // Descriptions come from the AUs' own model cards.
        out.emit("aus", &(), || clean(&s).into_owned())?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Stop keeping an AU at the queue (`agx au push` keeps it there until this is run): the
/// queue then removes it once no job that may still run needs it. The local store keeps it.
#[derive(Debug, clap::Args)]
pub(crate) struct Unkeep {
    /// The AU: a name in the local store, or its digest (`sha256:…`).
    au: String,
    #[command(flatten)]
    store: StoreArg,
    #[command(flatten)]
    queue: crate::remote::QueueArgs,
}

impl Unkeep {
    fn execute(self, out: Out) -> Result<ExitCode> {
        let digest = match self.au.parse::<Digest>() {
            Ok(d) => d,
            Err(_) => {
                let name: agenix_proto::AuName = self.au.parse().map_err(|e| {
                    anyhow::anyhow!("{:?} is neither a digest nor an AU name: {e}", self.au)
                })?;
                self.store.open()?.name(&name)?.digest
            }
        };
        let was_kept = runtime()?.block_on(async {
            let client = self.queue.connect(agenix_proto::wire::ClientRole::Planner).await?;
            let answer = client.unkeep(digest).await;
            client.shutdown().await;
            anyhow::Ok(answer?)
        })?;
        out.emit(
            "unkept",
            &serde_json::json!({ "digest": digest.to_string(), "was_kept": was_kept }),
            || {
                if was_kept {
                    format!("{digest}: no longer kept at the queue; removed once no job needs it")
                } else {
                    format!("{digest}: was not kept at the queue")
                }
            },
        )?;
        Ok(ExitCode::SUCCESS)
    }
}
