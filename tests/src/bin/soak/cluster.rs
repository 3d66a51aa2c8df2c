//! The processes: one `agq`, the `agw` workers, and `agx` as a user runs it. Every child is
//! recorded while it may be alive, so that whatever ends the soak (an error, a panic, a
//! signal) kills them all.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Children that may be alive, by pid; once closed, nothing new may start.
#[derive(Debug, Default)]
struct Registry {
    closed: bool,
    live: BTreeMap<u32, String>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { closed: false, live: BTreeMap::new() });

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts `cmd` and records it (refused once [`kill_all`] ran).
fn spawn(cmd: &mut Command, what: &str) -> Result<Child> {
    let mut reg = registry();
    if reg.closed {
        bail!("stopping: {what} not started");
    }
    let child = cmd.spawn().with_context(|| format!("cannot start {what}"))?;
    reg.live.insert(child.id(), what.to_string());
    Ok(child)
}

/// Whether `child` has exited; once reaped it is forgotten (its pid may then be reused, so
/// it is forgotten under the same lock [`kill_all`] takes).
fn reap(child: &mut Child) -> Result<Option<ExitStatus>> {
    let mut reg = registry();
    let status = child.try_wait()?;
    if status.is_some() {
        reg.live.remove(&child.id());
    }
    Ok(status)
}

/// SIGKILLs `child` and reaps it.
fn sigkill(child: &mut Child) {
    {
        let mut reg = registry();
        reg.live.remove(&child.id());
        // Not reaped yet, so the pid is still this child's.
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// SIGKILLs every child still alive and lets no new one start.
pub(crate) fn kill_all() {
    let mut reg = registry();
    reg.closed = true;
    for pid in std::mem::take(&mut reg.live).into_keys() {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// The workspace's binaries.
#[derive(Debug, Clone)]
pub(crate) struct Bins {
    pub(crate) agq: PathBuf,
    pub(crate) agw: PathBuf,
    pub(crate) agx: PathBuf,
}

impl Bins {
    /// The binaries in `dir`.
    pub(crate) fn in_dir(dir: &Path) -> Result<Self> {
        // Absolute: the processes run in the soak's directory.
        let dir = &dir.canonicalize().with_context(|| format!("no directory {}", dir.display()))?;
        let find = |name: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                bail!("{} is not built (cargo build --release --bins)", p.display())
            }
        };
        Ok(Self { agq: find("agq")?, agw: find("agw")?, agx: find("agx")? })
    }
}

/// What one `agx` run gave.
#[derive(Debug)]
pub(crate) struct Ran {
    pub(crate) status: Option<ExitStatus>,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: String,
    pub(crate) took: Duration,
}

impl Ran {
    pub(crate) fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// The JSON Lines of `--json` output.
    pub(crate) fn records(&self) -> Vec<serde_json::Value> {
        String::from_utf8_lossy(&self.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Why it failed, in one line.
    pub(crate) fn why(&self) -> String {
        let status = match self.status {
            Some(s) => s.to_string(),
            None => format!("killed after {:?}", self.took),
        };
        // With --json, agx reports its error on stdout.
        let errors: Vec<String> = self
            .records()
            .into_iter()
            .filter(|r| r["type"] == "error")
            .map(|r| r["data"].to_string())
            .collect();
        let err = format!("{} {}", errors.join(" | "), self.stderr.trim().replace('\n', " | "));
        format!("{status}: {}", err.chars().take(600).collect::<String>())
    }
}

/// `agx`, configured for the queue through its environment as a user would.
#[derive(Debug, Clone)]
pub(crate) struct Agx {
    bin: PathBuf,
    dir: PathBuf,
    addr: String,
    fingerprint: String,
    seq: Arc<AtomicU64>,
}

impl Agx {
    /// Runs `agx ARGS` with `store` as its component store; killed after `limit`.
    pub(crate) fn run<S: AsRef<OsStr>>(
        &self,
        args: &[S],
        store: &str,
        limit: Duration,
    ) -> Result<Ran> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let out_dir = self.dir.join("agx-out");
        std::fs::create_dir_all(&out_dir)?;
        let (out_path, err_path) =
            (out_dir.join(format!("{n}.out")), out_dir.join(format!("{n}.err")));
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .current_dir(&self.dir)
            .env("AGX_QUEUE", &self.addr)
            .env("AGX_FINGERPRINT", &self.fingerprint)
            .env("AGX_TOKEN_FILE", self.dir.join("queue/planner.token"))
            .env("AGX_KEY", self.dir.join("signer.key"))
            .env("AGX_STORE", self.dir.join(store))
            .env("AGX_CACHE", self.dir.join("agx-cache"))
            .env("HOME", &self.dir)
            .env_remove("AGX_TRUST")
            .env_remove("AGX_CONFIG")
            .env_remove("AGX_LOG")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_DATA_HOME")
            .env_remove("XDG_CACHE_HOME")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path)?)
            .stderr(std::fs::File::create(&err_path)?);
        let start = Instant::now();
        let mut child = spawn(&mut cmd, "agx")?;
        let status = loop {
            if let Some(s) = reap(&mut child)? {
                break Some(s);
            }
            if start.elapsed() > limit {
                sigkill(&mut child);
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let ran = Ran {
            status,
            stdout: std::fs::read(&out_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
            took: start.elapsed(),
        };
        let _ = std::fs::remove_file(&out_path);
        let _ = std::fs::remove_file(&err_path);
        Ok(ran)
    }

    /// Runs `agx ARGS` and fails unless it succeeds.
    pub(crate) fn ok<S: AsRef<OsStr>>(&self, args: &[S], limit: Duration) -> Result<Ran> {
        let ran = self.run(args, "store", limit)?;
        if !ran.ok() {
            let shown: Vec<String> =
                args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
            bail!("agx {} failed: {}", shown.join(" "), ran.why());
        }
        Ok(ran)
    }
}

/// A worker slot: its name, cache directory and, while it runs, its process.
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) name: String,
    child: Option<Child>,
    /// How many times it was started.
    pub(crate) runs: u32,
    /// When to start it again after a kill.
    pub(crate) restart_at: Option<Instant>,
}

impl Worker {
    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// One queue and its workers on loopback.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) dir: PathBuf,
    bins: Bins,
    pub(crate) addr: String,
    pub(crate) fingerprint: String,
    /// `agw --concurrency`.
    concurrency: u32,
    /// The first node (it owns the PostgreSQL server, when there is one).
    agq: agenix_harness::Agq,
    /// The other nodes, standing by, on the same directory and database.
    standbys: Vec<agenix_harness::Agq>,
    /// Which node serves (0: `agq`, i: `standbys[i - 1]`), while one does.
    serving: Option<usize>,
    /// Times a node stopped because another took its place (after a database outage).
    pub(crate) handovers: u32,
    /// When the node serving was last killed, and the longest from a kill to a node
    /// serving again.
    killed_at: Option<Instant>,
    pub(crate) slowest_takeover: Duration,
    /// How many times agq was started.
    pub(crate) agq_runs: u32,
    /// When the running agq said it was serving.
    pub(crate) agq_since: Instant,
    pub(crate) workers: Vec<Worker>,
    /// Processes that exited without being killed, with how.
    pub(crate) unexpected_exits: Vec<String>,
    agx_seq: Arc<AtomicU64>,
}

/// How long agq may take to say it serves (it loads every stored job first).
const AGQ_START: Duration = Duration::from_secs(120);

impl Cluster {
    /// `agq init`, a signer the queue trusts (`agx keygen`, `agx trust add`), then `agq
    /// serve AGQ_ARGS` on a free loopback port. Workers added later run `concurrency` jobs
    /// each. With `nodes` over 1 (PostgreSQL only), that many agq serve the queue, each
    /// `--standby` on a port of its own: one serves, the others wait to take over.
    pub(crate) fn start(
        dir: &Path,
        bins: Bins,
        mut agq_args: Vec<String>,
        concurrency: u32,
        nodes: usize,
    ) -> Result<Self> {
        let fingerprint = agenix_harness::init(&bins.agq, &dir.join("queue"))?;
        let agx = Agx {
            bin: bins.agx.clone(),
            dir: dir.to_path_buf(),
            addr: String::new(),
            fingerprint: fingerprint.clone(),
            seq: Arc::new(AtomicU64::new(0)),
        };
        let limit = Duration::from_secs(60);
        agx.ok(&["keygen", "--out", "signer.key"], limit)?;
        agx.ok(
            &["trust", "add", "signer.key.pub", "--name", "soak", "--trust", "queue/trust.json"],
            limit,
        )?;
        let mut serve = agenix_harness::Serve::new(
            bins.agq.clone(),
            dir.join("queue"),
            dir.join("logs/agq.log"),
        );
        if nodes > 1 {
            agq_args.push("--standby".into());
        }
        serve.args = agq_args;
        serve.log_level = "info".into();
        serve.patience = AGQ_START;
        let agq = agenix_harness::Agq::start(serve.clone())?;
        let mut addrs = vec![agq.addr.to_string()];
        let mut standbys = Vec::new();
        if nodes > 1 {
            let Some(pg) = &agq.postgres else {
                bail!("several agq nodes need PostgreSQL (AGENIX_TEST_STORE=postgres)");
            };
            serve.postgres = false;
            serve.store = Some((pg.url(), pg.password_file()?));
            for i in 1..nodes {
                let mut node = serve.clone();
                node.log = dir.join(format!("logs/agq-node{i}.log"));
                node.ready = Some(dir.join(format!("queue-node{i}.ready")));
                let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
                let node = agenix_harness::Agq::launch(node, ([127, 0, 0, 1], port).into())?;
                addrs.push(node.addr.to_string());
                standbys.push(node);
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            bins,
            addr: addrs.join(","),
            fingerprint,
            concurrency,
            agq,
            standbys,
            serving: Some(0),
            handovers: 0,
            killed_at: None,
            slowest_takeover: Duration::ZERO,
            agq_runs: 1,
            agq_since: Instant::now(),
            workers: vec![],
            unexpected_exits: vec![],
            agx_seq: agx.seq,
        })
    }

    /// `agx` for this queue (its address never changes once it first served).
    /// `agq audit ARGS --data QUEUE`: whether it succeeded, and its stdout and stderr.
    pub(crate) fn agq_audit(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let mut cmd = Command::new(&self.bins.agq);
        cmd.arg("audit").args(args).arg("--data").arg(self.dir.join("queue"));
        let out = self.agq.store_args(&mut cmd)?.output().context("cannot run agq audit")?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Ok((out.status.success(), text(&out.stdout), text(&out.stderr)))
    }

    pub(crate) fn agx(&self) -> Agx {
        Agx {
            bin: self.bins.agx.clone(),
            dir: self.dir.clone(),
            addr: self.addr.clone(),
            fingerprint: self.fingerprint.clone(),
            seq: self.agx_seq.clone(),
        }
    }

    pub(crate) fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    /// How long the slowest start of agq took, from spawning to serving.
    pub(crate) fn slowest_start(&self) -> Duration {
        self.agq.slowest_start
    }

    pub(crate) fn agq_is_up(&self) -> bool {
        self.serving.is_some()
    }

    fn node(&mut self, i: usize) -> &mut agenix_harness::Agq {
        match i.checked_sub(1) {
            Some(j) => &mut self.standbys[j],
            None => &mut self.agq,
        }
    }

    /// How many agq nodes serve the queue.
    pub(crate) fn nodes(&self) -> usize {
        1 + self.standbys.len()
    }

    /// Whether the queue keeps its jobs in PostgreSQL (`AGENIX_TEST_STORE=postgres`).
    pub(crate) fn on_postgres(&self) -> bool {
        self.agq.postgres.is_some()
    }

    /// SIGKILLs the queue's PostgreSQL server and starts it again, under the running queue.
    pub(crate) fn restart_database(&mut self) -> Result<()> {
        match self.agq.postgres.as_mut() {
            Some(pg) => pg.restart(),
            None => Ok(()),
        }
    }

    /// SIGKILLs the agq node serving.
    pub(crate) fn kill_agq(&mut self) {
        if let Some(i) = self.serving.take() {
            self.node(i).kill();
            self.killed_at = Some(Instant::now());
        }
    }

    /// Starts the node killed again on the same address and data. With one node, waits
    /// for it to serve; with several, it stands by, and this waits for whichever node takes
    /// over.
    pub(crate) fn restart_agq(&mut self) -> Result<()> {
        if self.standbys.is_empty() {
            self.agq.restart()?;
            self.serving = Some(0);
        } else {
            for i in 0..self.nodes() {
                if self.node(i).pid().is_none() {
                    self.node(i).relaunch()?;
                }
            }
            let until = Instant::now() + AGQ_START;
            'wait: loop {
                for i in 0..self.nodes() {
                    if self.node(i).poll_serving()? {
                        self.serving = Some(i);
                        break 'wait;
                    }
                }
                if Instant::now() > until {
                    bail!("no agq node took over in {AGQ_START:?}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some(at) = self.killed_at.take() {
            self.slowest_takeover = self.slowest_takeover.max(at.elapsed());
        }
        self.agq_runs += 1;
        self.agq_since = Instant::now();
        Ok(())
    }

    /// Adds a worker named `name` (its key in `name-key`, enrolled at the queue; its cache
    /// directory is `name-cache`) and starts it.
    pub(crate) fn add_worker(&mut self, name: &str) -> Result<()> {
        agenix_harness::enroll(
            &self.bins.agw,
            &self.bins.agq,
            &self.dir.join("queue"),
            &self.dir.join(format!("{name}-key")),
            name,
        )?;
        self.workers.push(Worker { name: name.into(), child: None, runs: 0, restart_at: None });
        self.start_worker(self.workers.len() - 1)
    }

    /// Starts worker `i` with its cache directory and name; each run logs to its own file.
    pub(crate) fn start_worker(&mut self, i: usize) -> Result<()> {
        let (addr, fp) = (self.addr.clone(), self.fingerprint.clone());
        let dir = self.dir.clone();
        let w = &mut self.workers[i];
        w.runs += 1;
        let log = dir.join(format!("logs/{}-{}.log", w.name, w.runs));
        let mut cmd = Command::new(&self.bins.agw);
        cmd.args(["--queue", &addr, "--fingerprint", &fp])
            .arg("--data")
            .arg(dir.join(format!("{}-key", w.name)))
            .arg("--trust")
            .arg(dir.join("worker-trust.json"))
            .arg("--cache-dir")
            .arg(dir.join(format!("{}-cache", w.name)))
            .args(["--name", &w.name])
            .args(["--concurrency", &self.concurrency.to_string()])
            .env("AGW_LOG", "info")
            .env_remove("AGW_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        w.child = Some(spawn(&mut cmd, &format!("agw {}", w.name))?);
        w.restart_at = None;
        Ok(())
    }

    /// SIGKILLs worker `i`; it is started again at `restart_at`.
    pub(crate) fn kill_worker(&mut self, i: usize, restart_at: Instant) {
        let w = &mut self.workers[i];
        if let Some(mut c) = w.child.take() {
            sigkill(&mut c);
        }
        w.restart_at = Some(restart_at);
    }

    /// Starts the workers whose time has come; notes (and restarts) any process that
    /// exited by itself.
    pub(crate) fn tend(&mut self) -> Result<()> {
        for i in 0..self.nodes() {
            let node = self.node(i);
            let log = node.log_path().to_path_buf();
            let Some(status) = node.child().map(reap).transpose()?.flatten() else { continue };
            node.kill();
            // A node another took over from (while it could not reach the database) stops:
            // that is what it must do.
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail = text.get(text.len().saturating_sub(4096)..).unwrap_or("");
            if self.nodes() > 1 && tail.contains("another agq took over this database") {
                self.handovers += 1;
            } else {
                self.unexpected_exits.push(format!(
                    "agq node {i} exited by itself: {status}; see {}",
                    log.display()
                ));
            }
            if self.serving == Some(i) {
                self.serving = None;
            }
        }
        if self.serving.is_none() || (1..self.nodes()).any(|i| self.node(i).pid().is_none()) {
            self.restart_agq()?;
        }
        for i in 0..self.workers.len() {
            let w = &mut self.workers[i];
            if let Some(c) = w.child.as_mut()
                && let Some(status) = reap(c)?
            {
                w.child = None;
                self.unexpected_exits.push(format!(
                    "worker {} (run {}) exited by itself: {status}; see logs/{}-{}.log",
                    w.name, w.runs, w.name, w.runs
                ));
                w.restart_at = Some(Instant::now());
            }
            if self.workers[i].restart_at.is_some_and(|t| t <= Instant::now()) {
                self.start_worker(i)?;
            }
        }
        Ok(())
    }

    /// Every log file the processes wrote.
    pub(crate) fn logs(&self, prefix: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.path("logs"))
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name().and_then(OsStr::to_str).is_some_and(|n| n.starts_with(prefix))
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Stops every process.
    pub(crate) fn stop(&mut self) {
        for w in &mut self.workers {
            if let Some(mut c) = w.child.take() {
                sigkill(&mut c);
            }
            w.restart_at = None;
        }
        self.kill_agq();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}
