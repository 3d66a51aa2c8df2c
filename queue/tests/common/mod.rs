//! A real `agq` process on loopback, and what tests need around it: signed plans and
//! actions, uploaded blobs, clients in each role.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::print_stderr,
    reason = "shared by several test binaries; a failing test prints agq's log"
)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use agenix_link::{Client, Credential};
use agenix_proto::action::ACTION_SCHEMA;
use agenix_proto::envelope::{sign_action, sign_plan};
use agenix_proto::job::{JobId, JobOutput, JobRecord, Lease, LeaseRef};
use agenix_proto::keys::{SigningKey, signing_key_from_seed};
use agenix_proto::result::{RESULT_SCHEMA, ResultStatement, TaskStatement, sign_result};
use agenix_proto::wire::{ClientRole, JobFilter, QueueStats, Request, Response};
use agenix_proto::{Action, ActionId, Digest, Envelope, Fingerprint, InputRef, Plan, Role, Trust};

/// A queue directory and, while running, its process.
pub struct Agq {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub fingerprint: Fingerprint,
    pub signer: SigningKey,
    process: agenix_harness::Agq,
}

pub fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

impl Agq {
    /// `agq init`, a trusted signer, then `agq serve` with `args` on a free loopback port.
    pub fn start(args: &[&str]) -> Self {
        Self::start_on(args, agenix_harness::postgres::wanted())
    }

    /// As [`Agq::start`], keeping jobs in a PostgreSQL server of its own when `postgres`.
    pub fn start_on(args: &[&str], postgres: bool) -> Self {
        Self::start_prepared(args, postgres, |_| {})
    }

    /// As [`Agq::start_on`], calling `prepare` with the queue directory between `agq init`
    /// and `agq serve`.
    pub fn start_prepared(args: &[&str], postgres: bool, prepare: impl FnOnce(&Path)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("q");
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_agq"));
        let fingerprint: Fingerprint = agenix_harness::init(&bin, &data).unwrap().parse().unwrap();
        prepare(&data);
        let signer = signing_key_from_seed(&rand16x2());
        let mut trust = Trust::new();
        trust.add("tester", signer.verifying_key(), &Role::SIGNING).unwrap();
        std::fs::write(data.join("trust.json"), trust.to_json()).unwrap();
        let mut serve = agenix_harness::Serve::new(bin, data, dir.path().join("agq.log"));
        serve.args = args.iter().map(|s| s.to_string()).collect();
        serve.postgres = postgres;
        let process = agenix_harness::Agq::start(serve).unwrap();
        assert_eq!(process.fingerprint, fingerprint.to_string(), "the ready file's fingerprint");
        Self { addr: process.addr, dir, fingerprint, signer, process }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("q")
    }

    /// The queue's store, opened to read beside agq or after it: its PostgreSQL database
    /// when it keeps jobs there, else the embedded store in its directory.
    pub fn stored(&self) -> Box<dyn agenix_queue::store::Store> {
        match &self.process.postgres {
            Some(pg) => {
                let password = std::fs::read_to_string(pg.password_file().unwrap()).unwrap();
                let target =
                    agenix_queue::pg::Target::parse(&pg.url(), Some(password.trim())).unwrap();
                Box::new(agenix_queue::pg::PgStore::inspect(target).unwrap())
            }
            None => Box::new(
                agenix_queue::store::RedbStore::open(&self.data().join("queue.redb")).unwrap(),
            ),
        }
    }

    /// Everything agq wrote to stderr so far (appended across restarts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agq.log")).unwrap_or_default()
    }

    /// Its PostgreSQL server, when it keeps jobs there.
    pub fn postgres(&mut self) -> Option<&mut agenix_harness::postgres::Postgres> {
        self.process.postgres.as_mut()
    }

    /// Whether the agq process is still alive.
    pub fn pid(&self) -> u32 {
        self.process.pid().unwrap()
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts again on the same address with the same data.
    pub fn restart(&mut self) {
        self.process.restart().unwrap();
        assert_eq!(self.process.addr, self.addr);
    }

    pub fn token(&self, role: ClientRole) -> String {
        std::fs::read_to_string(self.data().join(format!("{}.token", role.as_str())))
            .unwrap()
            .trim()
            .to_string()
    }

    /// A client in `role`: a planner or observer with its token, a worker with a new key
    /// enrolled for it.
    pub async fn client(&self, role: ClientRole) -> Client {
        Client::connect(self.addr, self.fingerprint, role, &self.credential(role)).await.unwrap()
    }

    /// What a client in `role` authenticates with: the role's token, or for a worker a new
    /// key, enrolled through `agq worker enroll`.
    pub fn credential(&self, role: ClientRole) -> Credential {
        match role {
            ClientRole::Worker => {
                Credential::Key(self.enroll(&format!("worker-{}", hex(&rand16()))))
            }
            other => Credential::Token(self.token(other)),
        }
    }

    /// A worker client whose key is enrolled as `name` (what the queue shows for it).
    pub async fn worker(&self, name: &str) -> TestWorker {
        self.connect_worker(&self.enroll(name)).await
    }

    /// A worker client proving `key`.
    pub async fn connect_worker(&self, key: &SigningKey) -> TestWorker {
        let credential = Credential::Key(key.clone());
        let client = Client::connect(self.addr, self.fingerprint, ClientRole::Worker, &credential)
            .await
            .unwrap();
        TestWorker { client, key: key.clone(), queue: self.fingerprint }
    }

    /// A new worker key, enrolled as `name` through `agq worker enroll`.
    pub fn enroll(&self, name: &str) -> SigningKey {
        let key = signing_key_from_seed(&rand16x2());
        self.enroll_key(&key, name);
        key
    }

    /// Enrolls `key` as `name` through `agq worker enroll`.
    pub fn enroll_key(&self, key: &SigningKey, name: &str) {
        let public = agenix_proto::keys::verifying_key_to_pem(&key.verifying_key()).unwrap();
        let file = self.dir.path().join(format!("{}.pub", hex(&rand16())));
        std::fs::write(&file, public).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_agq"))
            .args(["worker", "enroll"])
            .arg(&file)
            .args(["--name", name, "--data"])
            .arg(self.data())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// `agq worker revoke` for `key`.
    pub fn revoke(&self, key: &SigningKey) -> String {
        let id = agenix_proto::KeyId::of(&key.verifying_key()).to_string();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_agq"))
            .args(["worker", "revoke", &id, "--data"])
            .arg(self.data())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A signed plan with one AU task pinned to `component` (which the queue stores but
    /// never runs).
    pub fn plan(&self, component: &[u8], tools: &[&str]) -> (Envelope, Digest) {
        let plan = plan_value(component, tools);
        let env = sign_plan(&plan, &self.signer).unwrap();
        (env, Digest::of(&plan.to_payload()))
    }

    /// A signed action for the plan with `digest`, one job per input.
    pub fn action(
        &self,
        plan: Digest,
        inputs: &[&[u8]],
        max_attempts: u32,
    ) -> (Envelope, ActionId) {
        let action = self.unsigned_action(plan, inputs, max_attempts);
        let id = action.action_id.clone();
        (self.sign(&action), id)
    }

    /// Signs `action` with the trusted signer.
    pub fn sign(&self, action: &Action) -> Envelope {
        sign_action(action, &self.signer).unwrap()
    }

    /// An action for this queue, not yet signed (tests alter it, then [`Agq::sign`] it).
    pub fn unsigned_action(&self, plan: Digest, inputs: &[&[u8]], max_attempts: u32) -> Action {
        let id = ActionId::from_random(rand16());
        Action {
            schema: ACTION_SCHEMA.into(),
            action_id: id.clone(),
            plan,
            inputs: inputs
                .iter()
                .map(|i| InputRef { digest: Digest::of(i), size: i.len() as u64 })
                .collect(),
            issued_at: now_s(),
            expires_at: now_s() + 600,
            max_attempts,
            priority: 0,
            audience: self.fingerprint,
        }
    }

    /// Uploads the component and inputs, submits, and returns the job ids.
    pub async fn submit(
        &self,
        planner: &Client,
        inputs: &[&[u8]],
        max_attempts: u32,
    ) -> Vec<JobId> {
        planner.put_blob(COMPONENT).await.unwrap();
        for i in inputs {
            planner.put_blob(i).await.unwrap();
        }
        let (plan, digest) = self.plan(COMPONENT, &[]);
        let (action, _) = self.action(digest, inputs, max_attempts);
        match planner.request(&submit_of(planner, &plan, &action).await).await.unwrap() {
            Response::Submitted { jobs, .. } => jobs,
            other => panic!("{other:?}"),
        }
    }
}

/// Uploads both envelopes as blobs and returns the submit request naming them.
pub async fn submit_of(planner: &Client, plan: &Envelope, action: &Envelope) -> Request {
    let (plan, action) = (plan.to_json(), action.to_json());
    planner.put_many(&[&plan, &action], false).await.unwrap();
    Request::Submit { plan: Digest::of(&plan), action: Digest::of(&action), blobs: vec![] }
}

/// Sends `req` with `blobs` after its frame on a stream of `c`'s connection; the answer.
pub async fn send_with_blobs(c: &Client, req: &Request, blobs: &[&[u8]]) -> Response {
    let (mut send, mut recv) = c.connection().open_bi().await.unwrap();
    agenix_link::write_frame(&mut send, req).await.unwrap();
    for b in blobs {
        if send.write_all(b).await.is_err() {
            break;
        }
    }
    let _ = send.finish();
    agenix_link::read_frame(&mut recv).await.unwrap()
}

/// The bytes [`Agq::submit`] uploads as the plan's component.
pub const COMPONENT: &[u8] = b"not really a component";

impl Drop for Agq {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- agq's log ---\n{}--- end of agq's log ---", self.log());
        }
    }
}

/// An unsigned plan with one AU task pinned to `component`, then one native task per tool.
pub fn plan_value(component: &[u8], tools: &[&str]) -> Plan {
    let mut tasks = vec![format!(
        r#"{{"id":"t0","run":{{"wasm":{{"name":"au","digest":"{}"}}}},"stdin":{{"input":true}}}}"#,
        Digest::of(component)
    )];
    for (i, t) in tools.iter().enumerate() {
        tasks.push(format!(
            r#"{{"id":"n{i}","run":{{"native":{{"tool":"{t}"}}}},"stdin":{{"task":"t0"}}}}"#
        ));
    }
    let json = format!(
        r#"{{"schema":"agenix.plan/v1","plan_id":"{}","name":"t","issued_at":{},"expires_at":{},"tasks":[{}],"output":"t0"}}"#,
        hex(&rand16()),
        now_s(),
        now_s() + 3600,
        tasks.join(",")
    );
    Plan::from_json(json.as_bytes()).unwrap()
}

pub fn rand16() -> [u8; 16] {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).unwrap();
    b
}

pub fn rand16x2() -> [u8; 32] {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).unwrap();
    b
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a worker offers: no native tools, the format's maxima.
pub fn caps(name: &str) -> agenix_proto::job::Capabilities {
    agenix_proto::job::Capabilities {
        name: name.into(),
        wasm: true,
        tools: Default::default(),
        mounts: Default::default(),
        ceilings: agenix_proto::Limits::ABSOLUTE,
        concurrency: 4,
        labels: Default::default(),
    }
}

/// Registers a worker named `name` on this connection, with a fresh instance secret.
pub async fn register(worker: &Client, name: &str) -> u64 {
    register_as(worker, name, &hex(&rand16())).await
}

/// Registers the worker of `instance` on this connection.
pub async fn register_as(worker: &Client, name: &str, instance: &str) -> u64 {
    let req = Request::Register { capabilities: caps(name), instance: instance.into() };
    match worker.request(&req).await.unwrap() {
        Response::Registered { worker, .. } => worker,
        other => panic!("{other:?}"),
    }
}

pub async fn claim(worker: &Client, max: u32, wait_ms: u32) -> Vec<Lease> {
    match worker.request(&Request::Claim { max, wait_ms }).await.unwrap() {
        Response::Leases { leases } => leases,
        other => panic!("{other:?}"),
    }
}

pub async fn job(c: &Client, id: JobId) -> JobRecord {
    match c.request(&Request::ShowJob { job: id }).await.unwrap() {
        Response::Job { job } => job,
        other => panic!("{other:?}"),
    }
}

pub fn path(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

pub async fn stats(c: &Client) -> QueueStats {
    match c.request(&Request::Stats {}).await.unwrap() {
        Response::Stats { stats } => stats,
        other => panic!("{other:?}"),
    }
}

/// How many jobs are in `state` (`queued`, `leased`, ...).
pub async fn count(c: &Client, state: &str) -> u64 {
    stats(c).await.jobs.get(state).copied().unwrap_or(0)
}

/// Every job matching `filter`, following pages.
pub async fn list(c: &Client, filter: JobFilter) -> Vec<JobRecord> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let req = Request::ListJobs { filter: filter.clone(), after, limit: 1000 };
        match c.request(&req).await.unwrap() {
            Response::Jobs { jobs, next } => {
                all.extend(jobs);
                match next {
                    Some(n) => after = Some(n),
                    None => return all,
                }
            }
            other => panic!("{other:?}"),
        }
    }
}

/// The jobs of one action.
pub async fn jobs_of(c: &Client, action: &ActionId) -> Vec<JobRecord> {
    list(c, JobFilter { state: None, action: Some(action.clone()) }).await
}

/// A heartbeat's answer: (extended, cancelled, lost).
pub async fn heartbeat(
    worker: &Client,
    leases: &[LeaseRef],
) -> (Vec<LeaseRef>, Vec<LeaseRef>, Vec<LeaseRef>) {
    let req = Request::Heartbeat { leases: leases.to_vec() };
    match worker.request(&req).await.unwrap() {
        Response::HeartbeatOk { extended, cancelled, lost } => (extended, cancelled, lost),
        other => panic!("{other:?}"),
    }
}

/// A successful result without an output blob.
/// The state an answer recorded (anything else fails the test).
pub fn recorded(r: Response) -> agenix_proto::job::JobState {
    match r {
        Response::Recorded { state, .. } => state,
        other => panic!("{other:?}"),
    }
}

pub fn no_output() -> JobOutput {
    JobOutput {
        succeeded: true,
        failure: None,
        reports: agenix_proto::job::Reports::Inline(vec![]),
        output: None,
        result: None,
    }
}

pub fn now_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// A worker's client and the key it proved, which signs its results.
pub struct TestWorker {
    pub client: Client,
    pub key: SigningKey,
    pub queue: Fingerprint,
}

impl std::ops::Deref for TestWorker {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl TestWorker {
    /// The statement a worker signs about `lease` and `output`, unsigned: the action and
    /// plan digests read from the envelopes the lease names.
    pub async fn statement(&self, lease: &Lease, output: &JobOutput) -> ResultStatement {
        let payload =
            |bytes: Vec<u8>| Envelope::from_json(&bytes).unwrap().payload_unverified().unwrap();
        let action = payload(self.get_blob(lease.action, 1 << 20).await.unwrap());
        let plan = payload(self.get_blob(lease.plan, 2 << 20).await.unwrap());
        let input = Action::from_json(&action).unwrap().inputs.get(lease.input as usize).cloned();
        let tasks = match &output.reports {
            agenix_proto::job::Reports::Inline(r) => r.iter().map(TaskStatement::of).collect(),
            agenix_proto::job::Reports::Blob(_) => vec![],
        };
        ResultStatement {
            schema: RESULT_SCHEMA.into(),
            queue: self.queue,
            job: lease.lease.job,
            epoch: lease.lease.epoch,
            action: Digest::of(&action),
            plan: Digest::of(&plan),
            input,
            succeeded: output.succeeded,
            failure: output.failure.clone(),
            tasks,
            output: output.output.clone(),
            worker: agenix_proto::KeyId::of(&self.key.verifying_key()),
            at: now_ms(),
        }
    }

    /// Signs `statement`, stores the envelope, and returns `output` carrying it.
    pub async fn attach(&self, statement: &ResultStatement, output: JobOutput) -> JobOutput {
        let env = sign_result(statement, &self.key).unwrap().to_json();
        self.put_blob(&env).await.unwrap();
        JobOutput {
            result: Some(InputRef { digest: Digest::of(&env), size: env.len() as u64 }),
            ..output
        }
    }

    /// `output` with its signed statement about `lease`, stored.
    pub async fn signed(&self, lease: &Lease, output: JobOutput) -> JobOutput {
        let statement = self.statement(lease, &output).await;
        self.attach(&statement, output).await
    }

    /// Completes `lease` with `output`, signed.
    pub async fn complete_signed(&self, lease: &Lease, output: JobOutput) -> Response {
        let output = self.signed(lease, output).await;
        self.request(&Request::Complete { lease: lease.lease, output, blobs: vec![], claim: 0 })
            .await
            .unwrap()
    }
}

/// Speaking QUIC to agq without `Client`: own TLS configs, own source addresses, raw frames.
pub mod raw {
    use super::*;

    use agenix_link::{read_frame, write_frame};
    use agenix_proto::wire::PROTOCOL_VERSION;

    /// TLS 1.3, ALPN agenix/1, the queue pinned by `fingerprint`: what `Client` uses.
    pub fn tls(fingerprint: Fingerprint) -> rustls::ClientConfig {
        agenix_link::client_tls(fingerprint, None).unwrap()
    }

    pub fn quic(tls: rustls::ClientConfig) -> quinn::ClientConfig {
        agenix_link::quic_client_config(tls).unwrap()
    }

    /// A QUIC connection with no Hello sent yet.
    #[derive(Debug)]
    pub struct Raw {
        pub endpoint: quinn::Endpoint,
        pub conn: quinn::Connection,
    }

    /// A client endpoint on `ip` (any port) using `config`.
    pub fn endpoint(ip: IpAddr, config: quinn::ClientConfig) -> quinn::Endpoint {
        let mut endpoint = quinn::Endpoint::client(SocketAddr::new(ip, 0)).unwrap();
        endpoint.set_default_client_config(config);
        endpoint
    }

    /// Connects from `ip` to agq (no Hello yet); the handshake's error if it is refused.
    pub async fn connect_from(ip: IpAddr, q: &Agq) -> Result<Raw, quinn::ConnectionError> {
        connect_with(ip, q, None).await
    }

    /// [`connect_from`], proving `key` in the handshake as a worker does.
    pub async fn connect_with(
        ip: IpAddr,
        q: &Agq,
        key: Option<&SigningKey>,
    ) -> Result<Raw, quinn::ConnectionError> {
        let endpoint = endpoint(ip, quic(agenix_link::client_tls(q.fingerprint, key).unwrap()));
        let connecting = endpoint.connect(q.addr, "agenix-queue").unwrap();
        let conn = tokio::time::timeout(std::time::Duration::from_secs(10), connecting)
            .await
            .expect("the handshake neither completed nor failed within 10 s")?;
        Ok(Raw { endpoint, conn })
    }

    /// Connects from `ip` and authenticates as `role` (a worker with a new enrolled key).
    pub async fn client_from(ip: IpAddr, q: &Agq, role: ClientRole) -> Raw {
        let (raw, token) = match q.credential(role) {
            Credential::Key(k) => (connect_with(ip, q, Some(&k)).await.unwrap(), None),
            Credential::Token(t) => (connect_from(ip, q).await.unwrap(), Some(t)),
        };
        let hello = raw.hello(role, token.as_deref()).await;
        assert!(matches!(hello, Response::HelloOk { .. }), "{hello:?}");
        raw
    }

    impl Raw {
        /// One request, one answer (an `Error` answer is returned, not raised).
        pub async fn ask(&self, req: &Request) -> Response {
            let (mut send, mut recv) = self.conn.open_bi().await.unwrap();
            write_frame(&mut send, req).await.unwrap();
            send.finish().unwrap();
            read_frame(&mut recv).await.unwrap()
        }

        pub async fn hello(&self, role: ClientRole, token: Option<&str>) -> Response {
            let token = token.map(str::to_owned);
            self.ask(&Request::Hello { version: PROTOCOL_VERSION, role, token }).await
        }

        /// Sends `bytes` as a whole stream and returns everything the queue answered.
        pub async fn exchange(&self, bytes: &[u8]) -> Result<Vec<u8>, quinn::ReadToEndError> {
            exchange(&self.conn, bytes).await
        }
    }

    /// Sends `bytes` as a whole stream on `conn` and returns everything the queue answered.
    pub async fn exchange(
        conn: &quinn::Connection,
        bytes: &[u8],
    ) -> Result<Vec<u8>, quinn::ReadToEndError> {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(bytes).await.unwrap();
        send.finish().unwrap();
        recv.read_to_end(1 << 20).await
    }

    /// A frame: `u32` big-endian length, then `body`.
    pub fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    /// The one response frame in `bytes` (and nothing after it).
    pub fn response(bytes: &[u8]) -> Response {
        assert!(bytes.len() >= 4, "no frame in {bytes:?}");
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(bytes.len(), 4 + len, "one frame expected: {}", String::from_utf8_lossy(bytes));
        serde_json::from_slice(&bytes[4..]).unwrap()
    }
}

/// The code and message of an `Error` answer (anything else fails the test).
pub fn remote(e: agenix_link::LinkError) -> (agenix_proto::wire::ErrorCode, String) {
    match e {
        agenix_link::LinkError::Remote { code, message, .. } => (code, message),
        other => panic!("expected an error answer, got {other}"),
    }
}

/// Sends `req`, expecting an `Error` answer: its code and message.
pub async fn refused(c: &Client, req: &Request) -> (agenix_proto::wire::ErrorCode, String) {
    match c.request(req).await {
        Ok(resp) => panic!("{} was accepted: {resp:?}", req.name()),
        Err(e) => remote(e),
    }
}
