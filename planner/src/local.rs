//! What the local commands share: where the store and the artifact cache live, the wasm
//! host, the lock step, and the per-task table.

use std::path::PathBuf;
use std::sync::Arc;

use agenix_host::wasm::{Allocator, WasmConfig, WasmHost};
use agenix_proto::{Invalid, Limits, MountName, Plan, Run, TaskReport, Violation};
use agenix_runtime::exec::MountConfig;
use agenix_runtime::store::{LocalStore, StoreError};
use anyhow::{Context, Result, bail};

use agenix_proto::text::clean;

/// The component store: `--store`, else `$AGX_STORE`, else `$XDG_DATA_HOME/agenix/store`
/// (`~/.local/share/agenix/store`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct StoreArg {
    /// The local component store [default: $XDG_DATA_HOME/agenix/store].
    #[arg(long = "store", value_name = "DIR", env = "AGX_STORE")]
    store: Option<PathBuf>,
}

impl StoreArg {
    /// The directory given with --store (or $AGX_STORE), to pass on to another command.
    pub(crate) fn path_arg(&self) -> Option<String> {
        self.store.as_ref().map(|p| p.to_string_lossy().into_owned())
    }

    pub(crate) fn open(&self) -> Result<LocalStore> {
        Ok(LocalStore::new(match &self.store {
            Some(dir) => dir.clone(),
            None => xdg("XDG_DATA_HOME", ".local/share")
                .context("no store: pass --store DIR")?
                .join("agenix/store"),
        }))
    }
}

/// `$VAR`, else `$HOME/fallback`. Never a shared temporary directory: whoever could write
/// there could plant components or compiled code for this user to run.
fn xdg(var: &str, fallback: &str) -> Result<PathBuf> {
    match (std::env::var_os(var), std::env::var_os("HOME")) {
        (Some(v), _) if !v.is_empty() => Ok(PathBuf::from(v)),
        (_, Some(home)) if !home.is_empty() => Ok(PathBuf::from(home).join(fallback)),
        _ => bail!("neither ${var} nor $HOME is set: pass the directory explicitly"),
    }
}

/// A wasm host for one agx invocation: precompiled artifacts in `$AGX_CACHE` (default
/// `$XDG_CACHE_HOME/agenix`), scratch directories in a temporary directory removed on exit.
pub(crate) struct LocalHost {
    pub(crate) wasm: Arc<WasmHost>,
    scratch: agenix_host::process_dir::ProcessDir,
}

impl LocalHost {
    /// A host for at most `concurrent` tasks at once: its pool of instances is that big.
    pub(crate) fn new(ceilings: Limits, concurrent: u32) -> Result<Self> {
        let cache = match std::env::var_os("AGX_CACHE") {
            Some(v) if !v.is_empty() => PathBuf::from(v),
            _ => xdg("XDG_CACHE_HOME", ".cache")
                .context("no cache directory: set AGX_CACHE")?
                .join("agenix"),
        };
        // Those of agx invocations that were killed are swept.
        let scratch = agenix_host::process_dir::create(SCRATCH_PREFIX)
            .context("cannot create a scratch directory")?;
        let wasm = WasmHost::new(WasmConfig {
            ceilings,
            max_concurrent: concurrent,
            cache_dir: Some(cache),
            scratch_dir: scratch.path().to_path_buf(),
            allocator: Allocator::Auto,
        })?;
        Ok(Self { wasm: Arc::new(wasm), scratch })
    }
}

/// How an invocation's scratch directory is named: this, its process id, a dash, a suffix.
const SCRATCH_PREFIX: &str = "agx-scratch-";

impl LocalHost {
    /// The scratch directory of this invocation (removed on exit).
    pub(crate) fn scratch_dir(&self) -> &std::path::Path {
        self.scratch.path()
    }
}

/// A tokio runtime for the commands that run tasks.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A tokio runtime on this thread alone, for a command that runs one task: no worker threads
/// to start, and no hand-off between threads when the task ends. Blocking calls (a WASI file
/// operation among them) still go to blocking threads, so a timer fires while one waits.
pub(crate) fn runtime_here() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The lock step: pins every AU named without a digest to the digest the store has under
/// that name. Names the store lacks are violations at `tasks[i].run.wasm.name`.
pub(crate) fn lock(plan: &mut Plan, store: &LocalStore) -> Result<usize> {
    let mut violations = Vec::new();
    let mut locked = 0;
    for (i, task) in plan.tasks.iter_mut().enumerate() {
        let Run::Wasm(w) = &mut task.run else { continue };
        if w.digest.is_some() {
            continue;
        }
        match store.name(&w.name) {
            Ok(entry) => {
                w.digest = Some(entry.digest);
                locked += 1;
            }
            Err(e @ StoreError::UnknownName { .. }) => {
                violations.push(Violation::new(
                    format!("tasks[{i}].run.wasm.name"),
                    "lock",
                    e.to_string(),
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Invalid::check(violations).context("cannot lock the plan's AUs")?;
    Ok(locked)
}

/// Parses `NAME=DIR[:ro|rw]` (read-only when the mode is left out).
pub(crate) fn parse_mount(s: &str) -> Result<(MountName, MountConfig), String> {
    MountConfig::parse(s)
}

/// Parses a byte count with an optional unit: `1048576`, `64K`, `256M`, `1G`, `512KiB`.
pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a byte count (try 64M)"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("unknown unit {unit:?} (use K, M or G)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

/// Bytes for people: `512 B`, `1.5 KiB`, `12.0 MiB`.
pub(crate) fn show_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// The per-task table: task, outcome, exit, fuel, ms, peak memory; then, for each task that
/// did not succeed, why and the first lines of its stderr. Reports can come from a queue and
/// its workers, so everything they say is made safe for a terminal first.
pub(crate) fn task_table(reports: &[TaskReport]) -> String {
    let width = reports.iter().map(|r| r.task.as_str().len()).max().unwrap_or(4).max(4);
    let mut s = format!(
        "{:<width$}  {:<24} {:>4} {:>14} {:>8} {:>10}\n",
        "task", "outcome", "exit", "fuel", "ms", "peak mem"
    );
    for r in reports {
        let exit = r.outcome.exit_code().map(|c| c.to_string()).unwrap_or_else(|| "-".into());
        let fuel = r.fuel_consumed.map(|f| f.to_string()).unwrap_or_else(|| "-".into());
        let label: String = clean(&r.outcome.label()).chars().take(24).collect();
        s.push_str(&format!(
            "{:<width$}  {:<24} {:>4} {:>14} {:>8} {:>10}\n",
            clean(r.task.as_str()),
            label,
            exit,
            fuel,
            r.wall_ms,
            show_bytes(r.peak_memory_bytes)
        ));
    }
    for r in reports {
        let why = match &r.outcome {
            agenix_proto::Outcome::Refused { reason } => format!("refused: {reason}"),
            agenix_proto::Outcome::Trapped { message } => format!("trapped: {message}"),
            agenix_proto::Outcome::Skipped { because } => {
                format!("skipped: task \"{because}\" did not succeed")
            }
            _ => String::new(),
        };
        let task = clean(r.task.as_str());
        if let Some(line) = why.lines().next() {
            s.push_str(&format!("{task}: {}\n", clean(line)));
        }
        if !r.outcome.is_success() {
            for line in r.stderr.lines().take(5) {
                s.push_str(&format!("{task} stderr: {}\n", clean(line)));
            }
        }
    }
    s
}

/// Refuses to treat a path that does not exist as a component.
pub(crate) fn read_component(path: &std::path::Path) -> Result<Vec<u8>> {
    if !path.exists() {
        bail!("{} does not exist", path.display());
    }
    crate::files::read_capped(path, agenix_runtime::store::MAX_COMPONENT_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_parse_with_units() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("512KiB"), Ok(512 << 10));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5T").is_err());
        assert!(parse_bytes("99999999999999999999G").is_err());
        assert_eq!(show_bytes(1536), "1.5 KiB");
    }

    fn report(task: &str, outcome: agenix_proto::Outcome, stderr: &str) -> TaskReport {
        let mut r = TaskReport::not_run(task.parse().unwrap(), outcome);
        r.stderr = stderr.into();
        r
    }

    #[test]
    fn the_task_table_shows_what_workers_say_without_terminal_controls() {
        use agenix_proto::Outcome;
        let table = task_table(&[
            report(
                "a",
                Outcome::Refused { reason: "no\x1b]0;owned\x07 \u{202e}way\x1b[2K".into() },
                "",
            ),
            report("b", Outcome::Trapped { message: "\u{9b}31mtrap\r".into() }, ""),
            report(
                "c",
                Outcome::Exited { code: 1 },
                "\x1b[1A\x1b[2Kfine\u{2066}\u{200f}\nsecond\u{85}\u{061c} line",
            ),
            // A stream name long enough to be cut in the middle of a character.
            report("d", Outcome::OutputExceeded { stream: "ééééé\u{202d}é".into() }, ""),
        ]);
        assert!(table.contains("a: refused: no way\n"), "{table}");
        assert!(table.contains("b: trapped: trap\n"), "{table}");
        assert!(table.contains("c stderr: fine\nc stderr: second line\n"), "{table}");
        assert!(table.contains("output-exceeded (éééééé)"), "{table}");
        for c in table.chars() {
            assert!(
                c == '\n'
                    || !(c.is_control()
                        || ('\u{2066}'..='\u{2069}').contains(&c)
                        || ('\u{202a}'..='\u{202e}').contains(&c)
                        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}')),
                "U+{:04X} in {table:?}",
                u32::from(c)
            );
        }
    }
}
