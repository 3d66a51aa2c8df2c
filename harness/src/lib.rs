//! The one way tests, the soak and the benchmarks start a real queue: `agq init`, then
//! `agq serve --ready-file F`, waiting for F (the address and fingerprint, written once agq
//! serves) rather than reading its log or its output. Restarts reuse the address; a port
//! another socket holds for a moment after a kill is tried again.
//!
//! `postgres` starts a real PostgreSQL for a queue that keeps its jobs there
//! (`AGENIX_TEST_STORE=postgres` makes every queue started here do so).
//!
//! `netns` makes hosts of network namespaces joined by veth links a test can cut.
//!
//! `help` is the check every binary's `--help` passes: examples on every page, each one its
//! parser accepts.
//!
//! What this crate does not do: it never speaks the protocol and links no AGEniX crate, so
//! every harness above it uses the real client, and a change to agq's start-up is made here
//! once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub mod help;
pub mod netns;
pub mod postgres;

/// A workspace binary (`agq`, `agw`, `agx`) built beside the running executable: a test in
/// `target/<profile>/deps/` or a binary in `target/<profile>/`.
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let mut dir = exe.parent().context("the executable has no directory")?;
    if dir.ends_with("deps") {
        dir = dir.parent().context("deps/ has no parent")?;
    }
    let p = dir.join(name);
    if !p.exists() {
        bail!("{} is not built: run `cargo build --workspace` first", p.display());
    }
    Ok(p)
}

/// `agq init --data DATA`: creates the queue directory; returns the queue's fingerprint.
pub fn init(agq: &Path, data: &Path) -> Result<String> {
    let out = Command::new(agq)
        .args(["init", "--data"])
        .arg(data)
        .output()
        .with_context(|| format!("cannot run {}", agq.display()))?;
    if !out.status.success() {
        bail!("agq init failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_owned)
        .context("agq init printed no fingerprint")
}

/// `agw init --data WORKER`, then `agq worker enroll WORKER/worker.pub --name NAME --data
/// QUEUE`: a worker the queue accepts. Returns the worker key's id.
pub fn enroll(agw: &Path, agq: &Path, queue: &Path, worker: &Path, name: &str) -> Result<String> {
    let run = |cmd: &mut Command, what: &str| -> Result<String> {
        let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
        if !out.status.success() {
            bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let id = run(Command::new(agw).args(["init", "--data"]).arg(worker), "agw init")?;
    run(
        Command::new(agq)
            .args(["worker", "enroll"])
            .arg(worker.join("worker.pub"))
            .args(["--name", name, "--data"])
            .arg(queue),
        "agq worker enroll",
    )?;
    Ok(id)
}

/// How to run `agq serve`.
#[derive(Debug, Clone)]
pub struct Serve {
    /// The agq binary.
    pub bin: PathBuf,
    /// The queue directory from [`init`].
    pub data: PathBuf,
    /// Further arguments to `agq serve`.
    pub args: Vec<String>,
    /// `AGQ_LOG`.
    pub log_level: String,
    /// Where agq's stderr is appended (across restarts).
    pub log: PathBuf,
    /// How long agq may take to serve (it loads every stored job first).
    pub patience: Duration,
    /// A command prefix agq runs under (`ip netns exec NAME`: [`netns::Host::wrap`]).
    pub wrap: Vec<std::ffi::OsString>,
    /// The address it listens on (a free port of it): loopback unless set.
    pub listen: std::net::IpAddr,
    /// Keep jobs in a PostgreSQL server of its own (started with it, migrated by `agq
    /// migrate`) instead of the embedded store; `AGENIX_TEST_STORE=postgres` sets it.
    pub postgres: bool,
    /// Keep jobs in this PostgreSQL store (URL, password file), another node's.
    pub store: Option<(String, PathBuf)>,
    /// The ready file [default: the queue directory's path with the extension `ready`].
    pub ready: Option<PathBuf>,
}

impl Serve {
    /// `agq serve` for the queue directory `data`, logging at `warn` to `log`.
    pub fn new(bin: PathBuf, data: PathBuf, log: PathBuf) -> Self {
        Self {
            bin,
            data,
            args: vec![],
            log_level: "warn".into(),
            log,
            patience: Duration::from_secs(120),
            wrap: vec![],
            listen: std::net::IpAddr::from([127, 0, 0, 1]),
            postgres: postgres::wanted(),
            store: None,
            ready: None,
        }
    }
}

/// A running `agq serve`.
#[derive(Debug)]
pub struct Agq {
    serve: Serve,
    child: Option<Child>,
    /// Where it serves (the same across restarts).
    pub addr: SocketAddr,
    /// Its fingerprint, as its ready file says.
    pub fingerprint: String,
    /// How long the slowest start took, from spawning to the ready file.
    pub slowest_start: Duration,
    /// Its PostgreSQL server, when it keeps jobs there.
    pub postgres: Option<postgres::Postgres>,
}

impl Agq {
    /// Starts `agq serve` on a free loopback port and waits until it serves.
    pub fn start(serve: Serve) -> Result<Self> {
        let mut q = Self::prepare(serve)?;
        q.spawn()?;
        Ok(q)
    }

    /// Starts `agq serve` on `addr` and returns at once (a standby serves only once it takes
    /// over): [`Agq::wait_serving`] waits for it.
    pub fn launch(serve: Serve, addr: SocketAddr) -> Result<Self> {
        let mut q = Self::prepare(serve)?;
        q.addr = addr;
        q.launch_child()?;
        Ok(q)
    }

    /// Waits until the agq [`Agq::launch`] started serves, for up to its patience.
    pub fn wait_serving(&mut self) -> Result<()> {
        let until = Instant::now() + self.serve.patience;
        self.wait_child(until, Instant::now())
    }

    fn prepare(serve: Serve) -> Result<Self> {
        let mut q = Self {
            child: None,
            addr: SocketAddr::new(serve.listen, 0),
            fingerprint: String::new(),
            slowest_start: Duration::ZERO,
            postgres: None,
            serve,
        };
        if q.serve.postgres {
            let pg = postgres::Postgres::start(postgres::fsync_wanted())?;
            pg.migrate(&q.serve.bin)?;
            q.postgres = Some(pg);
        }
        Ok(q)
    }

    /// The ready file (in the queue directory's parent, so a test sees it beside its data).
    fn ready_file(&self) -> PathBuf {
        self.serve.ready.clone().unwrap_or_else(|| self.serve.data.with_extension("ready"))
    }

    /// Starts agq on [`Agq::addr`]; tries again while a port just freed by a kill is still
    /// held by another socket, for up to the patience.
    fn spawn(&mut self) -> Result<()> {
        let until = Instant::now() + self.serve.patience;
        let mut failures = Vec::new();
        loop {
            match self.spawn_once(until) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < until && self.addr.port() != 0 => {
                    failures.push(format!("{e:#}"));
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => {
                    failures.push(format!("{e:#}"));
                    bail!("agq did not start on {}: {}", self.addr, failures.join("; "));
                }
            }
        }
    }

    fn spawn_once(&mut self, until: Instant) -> Result<()> {
        let start = Instant::now();
        self.launch_child()?;
        self.wait_child(until, start)
    }

    /// Spawns agq into [`Agq::child`].
    fn launch_child(&mut self) -> Result<()> {
        let ready = self.ready_file();
        match std::fs::remove_file(&ready) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot remove {}", ready.display()));
            }
            _ => {}
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.serve.log)
            .with_context(|| format!("cannot open {}", self.serve.log.display()))?;
        let mut cmd = match self.serve.wrap.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&self.serve.bin);
                cmd
            }
            None => Command::new(&self.serve.bin),
        };
        cmd.args(["serve", "--data"])
            .arg(&self.serve.data)
            .args(["--listen", &self.addr.to_string()])
            .arg("--ready-file")
            .arg(&ready)
            .args(&self.serve.args);
        if let Some(pg) = &self.postgres {
            cmd.args(["--store", &pg.url()]).env("AGQ_STORE_PASSWORD_FILE", pg.password_file()?);
        } else if let Some((url, password_file)) = &self.serve.store {
            cmd.args(["--store", url]).env("AGQ_STORE_PASSWORD_FILE", password_file);
        }
        let child = cmd
            .env("AGQ_LOG", &self.serve.log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {}", self.serve.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits for the ready file of the agq in [`Agq::child`] (started at `start`).
    fn wait_child(&mut self, until: Instant, start: Instant) -> Result<()> {
        while !self.poll_serving()? {
            if Instant::now() > until {
                self.kill();
                bail!("agq did not serve in time: {}", self.last_log_line());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.slowest_start = self.slowest_start.max(start.elapsed());
        Ok(())
    }

    /// Whether the agq started serves now (its ready file is written); an error once it
    /// has exited without serving, or serves elsewhere than [`Agq::addr`].
    pub fn poll_serving(&mut self) -> Result<bool> {
        let ready = self.ready_file();
        let Some(child) = self.child.as_mut() else { bail!("agq is not running") };
        let Ok(text) = std::fs::read_to_string(&ready) else {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!("agq exited ({status}) before serving: {}", self.last_log_line());
            }
            return Ok(false);
        };
        let (addr, fingerprint) = parse_ready(&text)?;
        if self.addr.port() != 0 && addr != self.addr {
            self.kill();
            bail!("agq serves on {addr}, not on {}", self.addr);
        }
        self.addr = addr;
        self.fingerprint = fingerprint;
        Ok(true)
    }

    /// SIGKILLs agq and starts it again on the same address and data, without waiting for
    /// it to serve ([`Agq::poll_serving`]).
    pub fn relaunch(&mut self) -> Result<()> {
        self.kill();
        self.launch_child()
    }

    fn last_log_line(&self) -> String {
        let log = std::fs::read_to_string(&self.serve.log).unwrap_or_default();
        log.lines().last().unwrap_or("").chars().take(300).collect()
    }

    /// Points `cmd` (an `agq audit` command) at this queue's store: with `--store URL` and
    /// its password file when the queue keeps jobs in PostgreSQL; as it is otherwise.
    pub fn store_args<'c>(&self, cmd: &'c mut Command) -> Result<&'c mut Command> {
        if let Some(pg) = &self.postgres {
            cmd.args(["--store", &pg.url()]).env("AGQ_STORE_PASSWORD_FILE", pg.password_file()?);
        }
        Ok(cmd)
    }

    /// Where its stderr goes.
    pub fn log_path(&self) -> &Path {
        &self.serve.log
    }

    /// The process, while it runs.
    pub fn child(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// The process id, while agq runs (or until its exit is noticed).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether agq is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// SIGKILLs agq and starts it again on the same address and data.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// Starts agq again after [`Agq::kill`], on the same address and data.
    pub fn start_again(&mut self) -> Result<()> {
        self.spawn()
    }
}

impl Drop for Agq {
    fn drop(&mut self) {
        self.kill();
    }
}

/// SIGKILLs the process in `child`, if any, and reaps it.
fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The address and fingerprint in a ready file.
fn parse_ready(text: &str) -> Result<(SocketAddr, String)> {
    let v: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("a bad ready file: {text:?}"))?;
    let addr = v["address"].as_str().context("the ready file names no address")?.parse()?;
    let fingerprint =
        v["fingerprint"].as_str().context("the ready file names no fingerprint")?.to_owned();
    Ok((addr, fingerprint))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

    use super::*;

    #[test]
    fn ready_files_are_read_strictly() {
        let (addr, fp) =
            parse_ready(r#"{"address":"127.0.0.1:7411","fingerprint":"sha256:ab"}"#).unwrap();
        assert_eq!(addr, SocketAddr::from(([127, 0, 0, 1], 7411)));
        assert_eq!(fp, "sha256:ab");
        assert!(parse_ready(r#"{"address":"127.0.0.1:7411""#).is_err());
        assert!(parse_ready(r#"{"fingerprint":"sha256:ab"}"#).is_err());
    }
}
