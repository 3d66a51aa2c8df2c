//! What the sections share: finding programs, spawning them, generated inputs, timing.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;

/// A binary built next to this one (`cargo build --release --workspace` puts it there).
pub(crate) fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("where is agenix-bench")?;
    let p = exe.parent().map(|d| d.join(name)).context("agenix-bench has no directory")?;
    if !p.is_file() {
        bail!("{} is not built (run scripts/bench.sh, which builds it)", p.display());
    }
    Ok(p)
}

/// `name` on PATH (or the path in `env`, when set), if there is one.
pub(crate) fn tool(name: &str, env: Option<&str>) -> Option<PathBuf> {
    if let Some(p) = env.and_then(std::env::var_os).map(PathBuf::from) {
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Where the sections keep their scratch files, shown as `$SCRATCH` in commands.
static SCRATCH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Sets the directory [`show`] prints as `$SCRATCH`.
pub(crate) fn set_scratch(dir: &Path) {
    let _ = SCRATCH.set(dir.to_path_buf());
}

/// `cmd` as one would type it: its environment settings, program and arguments, quoted
/// where needed, with the scratch directory as `$SCRATCH` and paths in the workspace
/// relative to it.
pub(crate) fn show(cmd: &Command) -> String {
    // target/release/agenix-bench
    let root = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.parent()?.to_path_buf()));
    let word = |w: &std::ffi::OsStr| {
        let mut w = w.to_string_lossy().into_owned();
        if let Some(d) = SCRATCH.get().and_then(|d| d.to_str()) {
            w = w.replace(d, "$SCRATCH");
        }
        if let Some(d) = root.as_ref().and_then(|d| d.to_str()) {
            w = w.replace(&format!("{d}/"), "");
        }
        let plain = |c: char| c.is_ascii_alphanumeric() || "/._-=:,$@+".contains(c);
        if !w.is_empty() && w.chars().all(plain) {
            w
        } else {
            format!("'{}'", w.replace('\'', r"'\''"))
        }
    };
    let env =
        cmd.get_envs().filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), word(v?))));
    let argv = std::iter::once(word(cmd.get_program())).chain(cmd.get_args().map(word));
    env.chain(argv).collect::<Vec<_>>().join(" ")
}

/// Runs `cmd` with `input` on stdin; returns its stdout, failing unless it exits 0 (or one
/// of `ok`).
pub(crate) fn run(cmd: &mut Command, input: Bytes, ok: &[i32]) -> Result<Vec<u8>> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let feeder = std::thread::spawn(move || {
        // A program that stops reading early closes the pipe: not an error here.
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output()?;
    let _ = feeder.join();
    let code = out.status.code().unwrap_or(-1);
    if code != 0 && !ok.contains(&code) {
        bail!("{cmd:?} exited {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// Times `per_run` calls of `f`, `runs` times; returns the mean time per call of each run.
pub(crate) fn per_call(
    runs: usize,
    per_run: u32,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        for _ in 0..per_run {
            f()?;
        }
        out.push(t.elapsed() / per_run);
    }
    Ok(out)
}

/// A deterministic pseudo-random sequence (xorshift64).
pub(crate) struct Rng(u64);

impl Rng {
    /// The sequence from `seed` (not zero).
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// The next value.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const LEVELS: [&str; 4] = ["INFO", "WARN", "ERROR", "DEBUG"];
const PARTS: [&str; 6] = ["db", "http", "auth", "cache", "payments", "queue"];

/// About `bytes` of shuffled log lines (sorted input would flatter sort).
pub(crate) fn log_lines(bytes: usize) -> Vec<u8> {
    let mut r = Rng::new(0x2545_f491_4f6c_dd1d);
    let mut out = Vec::with_capacity(bytes + 128);
    while out.len() < bytes {
        let x = r.next_u64();
        let _ = writeln!(
            out,
            "2026-11-25T{:02}:{:02}:{:02}Z {} {}: request {} took {} ms",
            x % 24,
            (x >> 8) % 60,
            (x >> 16) % 60,
            LEVELS[(x >> 24) as usize % 4],
            PARTS[(x >> 32) as usize % 6],
            (x >> 40) % 100_000,
            (x >> 20) % 5000
        );
    }
    out
}

/// About `bytes` of JSON Lines, one log record per line.
pub(crate) fn json_lines(bytes: usize) -> Vec<u8> {
    let mut r = Rng::new(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::with_capacity(bytes + 256);
    while out.len() < bytes {
        let x = r.next_u64();
        let _ = writeln!(
            out,
            r#"{{"ts":{},"level":"{}","part":"{}","request":{},"ms":{},"ok":{}}}"#,
            1_764_000_000 + (x % 100_000),
            LEVELS[(x >> 24) as usize % 4],
            PARTS[(x >> 32) as usize % 6],
            (x >> 40) % 100_000,
            (x >> 20) % 5000,
            (x >> 60).is_multiple_of(2)
        );
    }
    out
}

/// A process's resident set size, from `/proc/PID/status`, in MiB.
pub(crate) fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?
        .parse()?;
    Ok(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_inputs_are_deterministic_and_of_the_asked_size() {
        let a = log_lines(10_000);
        assert_eq!(a, log_lines(10_000));
        assert!(a.len() >= 10_000 && a.len() < 10_200);
        let j = json_lines(5_000);
        for line in j.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            serde_json::from_slice::<serde_json::Value>(line).unwrap();
        }
    }

    #[test]
    fn commands_are_shown_as_one_would_type_them() {
        let mut c = Command::new("/usr/bin/jq");
        c.args(["-c", r#"select(.level == "ERROR")"#, "it's"]).env("LC_ALL", "C");
        assert_eq!(show(&c), r#"LC_ALL=C /usr/bin/jq -c 'select(.level == "ERROR")' 'it'\''s'"#);
    }
}
