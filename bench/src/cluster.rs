//! Real `agq` and `agw` processes on loopback, and a signer and clients to drive them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agenix_link::{Client, Credential};
use agenix_proto::action::ACTION_SCHEMA;
use agenix_proto::envelope::{sign_action, sign_plan};
use agenix_proto::keys::{SigningKey, signing_key_from_seed};
use agenix_proto::wire::ClientRole;
use agenix_proto::{Action, ActionId, Digest, Envelope, Fingerprint, InputRef, Plan, Role, Trust};
use anyhow::{Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::util::{show, sibling};

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// 16 random bytes.
pub(crate) fn rand16() -> Result<[u8; 16]> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(b)
}

/// A queue directory, its signer and, while running, its process.
pub(crate) struct Agq {
    dir: PathBuf,
    pub(crate) addr: String,
    pub(crate) fingerprint: Fingerprint,
    signer: SigningKey,
    process: agenix_harness::Agq,
    workers: Vec<Child>,
    shown: Vec<String>,
}

impl Agq {
    /// `agq init` in `dir`, a signer it trusts, then `agq serve` with `args` on loopback.
    pub(crate) fn start(dir: &Path, args: &[&str]) -> Result<Self> {
        let data = dir.join("queue");
        let agq = sibling("agq")?;
        let fingerprint: Fingerprint = agenix_harness::init(&agq, &data)?.parse()?;
        let mut init = Command::new(&agq);
        init.args(["init", "--data"]).arg(&data);
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let signer = signing_key_from_seed(&seed);
        let mut trust = Trust::new();
        trust.add("bench", signer.verifying_key(), &Role::SIGNING)?;
        std::fs::write(data.join("trust.json"), trust.to_json())?;
        // As it is run (the harness adds where to listen and a ready file to wait for).
        let mut serve_cmd = Command::new(&agq);
        serve_cmd.args(["serve", "--data"]).arg(&data).args(args);
        let mut serve = agenix_harness::Serve::new(agq, data, dir.join("agq.log"));
        serve.args = args.iter().map(|s| s.to_string()).collect();
        let process = agenix_harness::Agq::start(serve)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            addr: process.addr.to_string(),
            fingerprint,
            signer,
            process,
            workers: vec![],
            shown: vec![show(&init), show(&serve_cmd)],
        })
    }

    /// The commands it ran, as [`show`] prints them.
    pub(crate) fn commands(&self) -> &[String] {
        &self.shown
    }

    /// The queue's data directory.
    pub(crate) fn data(&self) -> PathBuf {
        self.dir.join("queue")
    }

    /// The agq process id.
    pub(crate) fn pid(&mut self) -> Option<u32> {
        self.process.child().map(|c| c.id())
    }

    /// SIGKILLs agq, starts it again on the same address and data, and returns how long it
    /// took from the start until a client's first request was answered.
    pub(crate) async fn restart(&mut self) -> Result<Duration> {
        self.process.kill();
        let t = Instant::now();
        self.process.start_again()?;
        let c = self.client(ClientRole::Observer).await?;
        c.stats().await?;
        let took = t.elapsed();
        c.shutdown().await;
        Ok(took)
    }

    fn kill(&mut self) {
        self.process.kill();
    }

    /// A worker client with a new key enrolled for it, and the key (which signs its results).
    pub(crate) async fn worker_client(&self) -> Result<(Client, SigningKey)> {
        let key = self.enroll_key()?;
        let addr = self.addr.parse()?;
        let credential = Credential::Key(key.clone());
        Ok((Client::connect(addr, self.fingerprint, ClientRole::Worker, &credential).await?, key))
    }

    /// A client in `role`: a planner or observer with its token, a worker with a new key
    /// enrolled for it.
    pub(crate) async fn client(&self, role: ClientRole) -> Result<Client> {
        let credential = match role {
            ClientRole::Worker => Credential::Key(self.enroll_key()?),
            other => {
                let file = self.data().join(format!("{}.token", other.as_str()));
                Credential::Token(std::fs::read_to_string(file)?.trim().to_owned())
            }
        };
        let addr = self.addr.parse()?;
        Ok(Client::connect(addr, self.fingerprint, role, &credential).await?)
    }

    /// A new worker key, enrolled through `agq worker enroll`.
    fn enroll_key(&self) -> Result<SigningKey> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let key = signing_key_from_seed(&seed);
        let name = hex(&rand16()?);
        let file = self.dir.join(format!("{name}.pub"));
        std::fs::write(&file, agenix_proto::keys::verifying_key_to_pem(&key.verifying_key())?)?;
        let out = Command::new(sibling("agq")?)
            .args(["worker", "enroll"])
            .arg(&file)
            .args(["--name", &name, "--data"])
            .arg(self.data())
            .output()?;
        if !out.status.success() {
            bail!("agq worker enroll failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(key)
    }

    /// A signed plan running the component `component` with `args` on the job's input.
    pub(crate) fn plan(&self, component: &[u8], args: &[&str]) -> Result<(Envelope, Digest)> {
        let json = serde_json::json!({
            "schema": "agenix.plan/v1",
            "plan_id": hex(&rand16()?),
            "name": "bench",
            "issued_at": now_s(),
            "expires_at": now_s() + 24 * 3600,
            "tasks": [{
                "id": "t0",
                "run": {"wasm": {"name": "au", "digest": Digest::of(component).to_string()}},
                "args": args,
                "stdin": {"input": true},
            }],
            "output": "t0",
        });
        let plan = Plan::from_json(json.to_string().as_bytes())?;
        Ok((sign_plan(&plan, &self.signer)?, Digest::of(&plan.to_payload())))
    }

    /// A signed action for `plan`: one job per input, or one job without input.
    pub(crate) fn action(&self, plan: Digest, inputs: &[InputRef]) -> Result<Envelope> {
        let action = Action {
            schema: ACTION_SCHEMA.into(),
            action_id: ActionId::from_random(rand16()?),
            plan,
            inputs: inputs.to_vec(),
            issued_at: now_s(),
            expires_at: now_s() + 24 * 3600,
            max_attempts: 3,
            priority: 0,
            audience: self.fingerprint,
        };
        Ok(sign_action(&action, &self.signer)?)
    }

    /// Starts a worker named `name` with its artifact cache in `cache`.
    pub(crate) fn worker(&mut self, name: &str, cache: &Path) -> Result<u32> {
        let data = self.data();
        let dir = self.dir.join(format!("worker-{name}"));
        agenix_harness::enroll(&sibling("agw")?, &sibling("agq")?, &data, &dir, name)?;
        let mut cmd = Command::new(sibling("agw")?);
        cmd.args(["--queue", &self.addr, "--fingerprint", &self.fingerprint.to_string()])
            .arg("--data")
            .arg(&dir)
            .arg("--trust")
            .arg(data.join("trust.json"))
            .arg("--cache-dir")
            .arg(cache)
            .args(["--name", name])
            .env("AGW_LOG", "warn");
        self.shown.push(show(&cmd));
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        let pid = child.id();
        self.workers.push(child);
        Ok(pid)
    }

    /// Stops every worker as an operator would (SIGTERM: it drains and says goodbye, so the
    /// queue leases it nothing more).
    pub(crate) fn stop_workers(&mut self) {
        for w in &self.workers {
            if let Ok(pid) = i32::try_from(w.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        for mut w in self.workers.drain(..) {
            let _ = w.wait();
        }
    }

    /// Waits until `n` workers have registered.
    pub(crate) async fn wait_workers(&self, n: usize) -> Result<()> {
        let c = self.client(ClientRole::Observer).await?;
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if c.list_workers(None, 1000).await?.items.len() >= n {
                c.shutdown().await;
                return Ok(());
            }
            if Instant::now() > until {
                bail!("{n} workers did not register within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Agq {
    fn drop(&mut self) {
        for w in &mut self.workers {
            let _ = w.kill();
            let _ = w.wait();
        }
        self.kill();
    }
}

/// Lowercase hex.
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// How many jobs the queue holds in `state`.
pub(crate) async fn count(c: &Client, state: &str) -> Result<u64> {
    Ok(c.stats().await?.jobs.get(state).copied().unwrap_or(0))
}
