//! A cluster of real processes: one agq, any number of agw, and agx as a newcomer runs it.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    reason = "shared by several test binaries"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use agenix_test_programs as programs;

/// A workspace binary, next to the test executable.
pub fn bin(name: &str) -> PathBuf {
    agenix_harness::workspace_bin(name).unwrap()
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub addr: String,
    pub fingerprint: String,
    agq: agenix_harness::Agq,
    pub workers: Vec<(String, Child)>,
    /// `AGW_LOG` for the workers started from now on (`info`).
    pub agw_log: String,
    /// The hosts, when the queue and workers each run in a network namespace of their own
    /// (agx runs in the queue's).
    pub net: Option<agenix_harness::netns::Net>,
}

impl Cluster {
    /// A queue on loopback that trusts the signer `signer.key`.
    pub fn start(agq_args: &[&str]) -> Self {
        Self::start_logging(agq_args, "warn")
    }

    /// [`Cluster::start`], with the queue logging at `level` (`AGQ_LOG`) to `agq.log`.
    pub fn start_logging(agq_args: &[&str], level: &str) -> Self {
        Self::start_on(agq_args, level, None, agenix_harness::postgres::wanted())
    }

    /// [`Cluster::start`], the queue keeping its jobs in a PostgreSQL server of its own.
    pub fn start_postgres(agq_args: &[&str]) -> Self {
        Self::start_on(agq_args, "info", None, true)
    }

    /// A queue in the hub namespace of `net` (listening on all its addresses), whose
    /// workers start on `net`'s hosts ([`Cluster::worker_on`]).
    pub fn start_net(agq_args: &[&str], net: agenix_harness::netns::Net) -> Self {
        Self::start_on(agq_args, "info", Some(net), agenix_harness::postgres::wanted())
    }

    fn start_on(
        agq_args: &[&str],
        level: &str,
        net: Option<agenix_harness::netns::Net>,
        postgres: bool,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("queue");
        let fingerprint = agenix_harness::init(&bin("agq"), &data).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new(bin("agx")).args(args).current_dir(dir.path()).output().unwrap();
            assert!(out.status.success(), "agx {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&["keygen", "--out", "signer.key"]);
        run(&["trust", "add", "signer.key.pub", "--name", "e2e", "--trust", "queue/trust.json"]);
        // The workers' own trust file starts as a copy of the queue's.
        std::fs::copy(data.join("trust.json"), dir.path().join("worker-trust.json")).unwrap();
        let mut serve = agenix_harness::Serve::new(bin("agq"), data, dir.path().join("agq.log"));
        serve.args = agq_args.iter().map(|s| s.to_string()).collect();
        serve.log_level = level.into();
        serve.postgres = postgres;
        if let Some(net) = &net {
            serve.wrap = net.hub.wrap();
            serve.listen = std::net::IpAddr::from([0, 0, 0, 0]);
        }
        let agq = agenix_harness::Agq::start(serve).unwrap();
        // agx runs beside the queue: on loopback in its namespace.
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], agq.addr.port())).to_string();
        Self { addr, dir, fingerprint, agq, workers: vec![], agw_log: "info".into(), net }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// The queue's process (its PostgreSQL server, when it has one).
    pub fn agq(&mut self) -> &mut agenix_harness::Agq {
        &mut self.agq
    }

    /// The running queue's process id.
    pub fn agq_pid(&self) -> u32 {
        self.agq.pid().unwrap()
    }

    pub fn kill_agq(&mut self) {
        self.agq.kill();
    }

    /// SIGKILL the queue and start it again on the same address and data.
    pub fn restart_agq(&mut self) {
        self.agq.restart().unwrap();
    }

    /// Starts a worker named `name`; its log goes to `<name>.log`.
    pub fn worker(&mut self, name: &str, extra: &[&str]) {
        self.worker_trusting(name, "worker-trust.json", extra);
    }

    /// The directory of the worker named `name` (its key), made and enrolled at the queue
    /// the first time.
    pub fn worker_dir(&self, name: &str) -> PathBuf {
        let dir = self.path(&format!("{name}-key"));
        if !dir.join("worker.key").exists() {
            agenix_harness::enroll(&bin("agw"), &bin("agq"), &self.path("queue"), &dir, name)
                .unwrap();
        }
        dir
    }

    /// Starts a worker named `name` from the agw binary at `agw` (another build of it).
    pub fn worker_from(&mut self, agw: &Path, name: &str, extra: &[&str]) {
        self.start_worker(Command::new(agw), self.addr.clone(), name, "worker-trust.json", extra);
    }

    /// Starts a worker named `name` with its own trust file `trust` (in the cluster's
    /// directory).
    pub fn worker_trusting(&mut self, name: &str, trust: &str, extra: &[&str]) {
        self.start_worker(Command::new(bin("agw")), self.addr.clone(), name, trust, extra);
    }

    /// Starts a worker named `name` on host `i` of the cluster's network, reaching the
    /// queue across its link.
    pub fn worker_on(&mut self, i: usize, name: &str, extra: &[&str]) {
        let net = self.net.as_ref().unwrap();
        let queue =
            std::net::SocketAddr::from((net.hub_addr_for(i).unwrap(), self.agq.addr.port()));
        let cmd = net.hosts[i].command(bin("agw"));
        self.start_worker(cmd, queue.to_string(), name, "worker-trust.json", extra);
    }

    fn start_worker(
        &mut self,
        mut cmd: Command,
        queue: String,
        name: &str,
        trust: &str,
        extra: &[&str],
    ) {
        let log = std::fs::File::create(self.path(&format!("{name}.log"))).unwrap();
        let child = cmd
            .args(["--queue", &queue, "--fingerprint", &self.fingerprint])
            .arg("--data")
            .arg(self.worker_dir(name))
            .arg("--trust")
            .arg(self.path(trust))
            .arg("--cache-dir")
            .arg(self.path(&format!("{name}-cache")))
            .args(["--name", name])
            .args(extra)
            .env("AGW_LOG", &self.agw_log)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.workers.push((name.to_string(), child));
    }

    /// The process id of the running worker named `name`.
    pub fn worker_pid(&self, name: &str) -> u32 {
        self.workers.iter().find(|(n, _)| n == name).map(|(_, c)| c.id()).unwrap()
    }

    pub fn kill_worker(&mut self, name: &str) {
        if let Some(i) = self.workers.iter().position(|(n, _)| n == name) {
            let (_, mut c) = self.workers.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a worker SIGTERM, as an operator stopping it would; [`Cluster::wait_exit`]
    /// waits for it to finish its running jobs and exit.
    pub fn terminate_worker(&mut self, name: &str) -> Child {
        let i = self.workers.iter().position(|(n, _)| n == name).unwrap();
        let (_, c) = self.workers.remove(i);
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        c
    }

    pub fn wait_exit(&self, name: &str, mut c: Child, within: Duration) -> ExitStatus {
        let until = Instant::now() + within;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > until {
                let _ = c.kill();
                panic!("worker {name} did not exit within {within:?}:\n{}", self.log(name));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
    }

    /// Runs agx in the cluster's directory, configured for its queue.
    pub fn agx(&self, args: &[&str]) -> Output {
        self.agx_cmd(args).output().unwrap()
    }

    /// Runs agx with `stdin` on its standard input.
    pub fn agx_in(&self, args: &[&str], stdin: &[u8]) -> Output {
        use std::io::Write as _;
        let mut child = self
            .agx_cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    /// agx in the cluster's directory, configured for its queue.
    pub fn agx_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = match &self.net {
            Some(net) => net.hub.command(bin("agx")),
            None => Command::new(bin("agx")),
        };
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("AGX_QUEUE", &self.addr)
            .env("AGX_FINGERPRINT", &self.fingerprint)
            .env("AGX_TOKEN_FILE", self.path("queue/planner.token"))
            .env("AGX_KEY", self.path("signer.key"))
            .env("AGX_STORE", self.path("store"))
            .env("AGX_CACHE", self.path("cache"))
            .env_remove("AGX_TRUST")
            .env_remove("AGX_CONFIG");
        cmd
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.agx(args);
        assert!(out.status.success(), "agx {args:?}\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Pushes the standard AUs (and `nap`, a guest that sleeps then echoes) to the store and
    /// the queue.
    pub fn push_aus(&self) {
        for (_, path) in programs::ALL_AUS {
            self.ok(&["au", "push", path]);
        }
        self.ok(&["au", "push", programs::GUEST_NAP, "--name", "nap"]);
    }

    /// `agx --json jobs show ID` as JSON.
    pub fn job(&self, id: &str) -> serde_json::Value {
        let out = self.ok(&["--json", "jobs", "show", id]);
        serde_json::from_str::<serde_json::Value>(out.lines().next().unwrap()).unwrap()["data"]
            .clone()
    }

    /// Runs agx until it succeeds and `accept` takes its output, for up to `limit`: across a
    /// takeover or a database restart, a query answered `unavailable` meanwhile (or sent to
    /// a node that is not serving yet) is asked again; the last answer is in the panic.
    fn agx_until(&self, args: &[&str], limit: Duration, accept: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + limit;
        loop {
            let out = self.agx(args);
            let seen = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && accept(&seen) {
                return seen;
            }
            assert!(
                Instant::now() < until,
                "agx {args:?} never got there:\n{seen}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// [`Cluster::ok`] across a takeover or a database restart, for up to a minute.
    pub fn ok_through_faults(&self, args: &[&str]) -> String {
        self.agx_until(args, Duration::from_secs(60), |_| true)
    }

    /// [`Cluster::wait_job`] across a takeover or a database restart.
    pub fn wait_job_through_faults(
        &self,
        id: &str,
        limit: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let data = |out: &str| {
            let first = out.lines().next().unwrap_or_default();
            serde_json::from_str::<serde_json::Value>(first).unwrap()["data"].clone()
        };
        let out = self.agx_until(&["--json", "jobs", "show", id], limit, |out| check(&data(out)));
        data(&out)
    }

    /// Waits until `check` holds for the job (or panics after `limit`).
    pub fn wait_job(
        &self,
        id: &str,
        limit: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let until = Instant::now() + limit;
        loop {
            let j = self.job(id);
            if check(&j) {
                return j;
            }
            assert!(Instant::now() < until, "job {id} never got there: {j}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Submits `plan` with `inputs` and returns the job ids.
    pub fn submit(&self, plan: &str, inputs: &[&str]) -> Vec<String> {
        let mut args = vec!["--json", "submit", plan];
        for i in inputs {
            args.extend(["--input", i]);
        }
        let out = self.ok(&args);
        let rec: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        rec["data"]["jobs"].as_array().unwrap().iter().map(|j| j.to_string()).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, c) in &mut self.workers {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.kill_agq();
    }
}

/// A plan whose one task sleeps `ms` then echoes its input (the `nap` guest).
pub fn nap_plan(c: &Cluster, ms: u64) -> String {
    let p = c.path(&format!("nap{ms}.json"));
    std::fs::write(
        &p,
        format!(
            r#"{{"schema":"agenix.plan/v1","name":"nap","tasks":[{{"id":"nap","run":{{"wasm":{{"name":"nap"}}}},"args":["{ms}"],"stdin":{{"input":true}}}}],"output":"nap"}}"#
        ),
    )
    .unwrap();
    p.to_str().unwrap().to_string()
}

pub fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

pub fn state(j: &serde_json::Value) -> &str {
    j["state"]["state"].as_str().unwrap_or("")
}
