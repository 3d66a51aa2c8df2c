//! `agx submit`, `agx jobs list|show|watch|result|cancel`, `agx workers list`,
//! `agx queue stats`: work on a queue.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use agenix_proto::action::ACTION_SCHEMA;
use agenix_proto::envelope::{MAX_ENVELOPE_BYTES, sign_action, sign_plan};
use agenix_proto::job::{JobId, JobRecord, JobState, Reports, WorkerRecord};
use agenix_proto::link::Client;
use agenix_proto::text::clean_line;
use agenix_proto::wire::{ClientRole, JobFilter, MAX_BATCH_BLOBS, MAX_PAGE, Request, Response};
use agenix_proto::{
    Action, ActionId, Digest, Envelope, InputRef, Limits, Plan, PlanId, TaskReport,
};
use agenix_runtime::store::StoreError;
use anyhow::{Context, Result, bail};

use super::plan::{load_key, load_plan_bytes};
use super::{now_unix, random16};
use crate::files::read_capped;
use crate::local::{StoreArg, lock, runtime, task_table};
use crate::output::Out;
use crate::remote::QueueArgs;

/// Most input one file may hold.
const MAX_INPUT: u64 = 1 << 30;
/// Most bytes of blobs agx holds and sends in one upload request.
const BATCH_BYTES: usize = 64 << 20;
/// Largest per-task report list agx reads back from a queue.
const MAX_REPORTS: u64 = 64 << 20;

/// Uploads blobs in requests of at most [`BATCH_BYTES`] (or [`MAX_BATCH_BLOBS`] blobs), so
/// that many inputs cost few requests and agx holds one batch at a time.
struct Batcher<'a> {
    client: &'a Client,
    pending: Vec<(Vec<u8>, String)>,
    bytes: usize,
}

impl<'a> Batcher<'a> {
    fn new(client: &'a Client) -> Self {
        Self { client, pending: Vec::new(), bytes: 0 }
    }

    /// Adds a blob (`what` names it in errors); sends the batch once it is full.
    async fn add(&mut self, bytes: Vec<u8>, what: String) -> Result<InputRef> {
        let r = InputRef { digest: Digest::of(&bytes), size: bytes.len() as u64 };
        if !self.pending.is_empty()
            && (self.bytes + bytes.len() > BATCH_BYTES || self.pending.len() >= MAX_BATCH_BLOBS)
        {
            self.flush().await?;
        }
        self.bytes += bytes.len();
        self.pending.push((bytes, what));
        Ok(r)
    }

    async fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let blobs: Vec<&[u8]> = self.pending.iter().map(|(b, _)| b.as_slice()).collect();
        let names: Vec<&str> = self.pending.iter().map(|(_, w)| w.as_str()).collect();
        self.client.put_many(&blobs, false).await.with_context(|| {
            format!("cannot upload {}", names.join(", ").chars().take(500).collect::<String>())
        })?;
        self.pending.clear();
        self.bytes = 0;
        Ok(())
    }
}

/// Sign an action for PLAN, upload its components and inputs, submit; prints the job ids.
#[derive(Debug, clap::Args)]
pub(crate) struct Submit {
    /// A signed plan, or a plan file (signed here, AUs locked from the store).
    plan: PathBuf,
    /// Input files: one job each (none: one job with empty input).
    #[arg(long = "input", value_name = "FILE")]
    inputs: Vec<PathBuf>,
    /// Watch the jobs until they finish, then print their results.
    #[arg(long)]
    watch: bool,
    /// The signing key [default: from AGX_KEY or the config file].
    #[arg(long, value_name = "FILE", env = "AGX_KEY")]
    key: Option<PathBuf>,
    /// Attempts per job.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// Priority (higher runs first), -1000..=1000.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    priority: i32,
    /// How long the action (and a plan signed here) stays valid.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    expires: Duration,
    #[command(flatten)]
    store: StoreArg,
    #[command(flatten)]
    queue: QueueArgs,
}

impl Submit {
    pub(crate) fn execute(self, out: Out) -> Result<ExitCode> {
        let file = self.queue.file()?;
        let key_path = self
            .key
            .clone()
            .or(file.key)
            .context("no signing key: pass --key, set AGX_KEY or `key` in the agx config")?;
        let key = load_key(&key_path)?;
        let bytes = read_capped(&self.plan, MAX_ENVELOPE_BYTES as u64)?;
        let now = now_unix();
        let expires = self.expires.as_secs().max(60);
        let is_envelope = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .is_some_and(|v| v.get("payloadType").is_some());
        let plan_env = if is_envelope {
            Envelope::from_json(&bytes)
                .with_context(|| format!("cannot read {}", self.plan.display()))?
        } else {
            let mut plan = load_plan_bytes(&self.plan, &bytes)?;
            plan.validate(agenix_proto::Form::Draft, &Limits::ABSOLUTE)
                .with_context(|| format!("{} is not a valid plan", self.plan.display()))?;
            lock(&mut plan, &self.store.open()?)?;
            plan.plan_id.get_or_insert(PlanId::from_random(random16()?));
            plan.issued_at = Some(now);
            plan.expires_at = Some(now + expires);
            sign_plan(&plan, &key)
                .with_context(|| format!("cannot sign {}", self.plan.display()))?
        };
        let payload = plan_env.payload_unverified()?;
        let plan = Plan::from_json(&payload)
            .with_context(|| format!("{} holds no valid plan", self.plan.display()))?;
        let digest = Digest::of(&payload);
        let store = self.store.open()?;
        let rt = runtime()?;
        let jobs = rt.block_on(async {
            let client = self.queue.connect(ClientRole::Planner).await?;
            // Components the local store has go up with the submission, each once (the
            // queue keeps one copy of each); one the store lacks may be at the queue already.
            // Inputs follow, read one at a time and sent in batches.
            let mut components = BTreeMap::new();
            for (_, w) in plan.wasm_tasks() {
                if let Some(d) = w.digest {
                    components.entry(d).or_insert(&w.name);
                }
            }
            let mut up = Batcher::new(&client);
            for (d, name) in components {
                let component = match store.get(&d) {
                    Ok(c) => c,
                    Err(StoreError::Missing { .. }) => continue,
                    Err(e) => return Err(e).with_context(|| format!("AU {name}")),
                };
                up.add(component, format!("AU {name}")).await?;
            }
            let mut refs = Vec::with_capacity(self.inputs.len());
            for path in &self.inputs {
                let input = read_capped(path, MAX_INPUT)?;
                refs.push(up.add(input, path.display().to_string()).await?);
            }
            let action = Action {
                schema: ACTION_SCHEMA.into(),
                action_id: ActionId::from_random(random16()?),
                plan: digest,
                inputs: refs,
                issued_at: now,
                expires_at: now + expires,
                max_attempts: self.max_attempts,
                priority: self.priority,
                audience: client.queue(),
            };
            let action_env = sign_action(&action, &key).context("cannot sign the action")?;
            // The envelopes travel as blobs too: a plan at its size limit is larger than a
            // frame once signed.
            let plan_blob = up.add(plan_env.to_json(), "the signed plan".into()).await?.digest;
            let action_blob =
                up.add(action_env.to_json(), "the signed action".into()).await?.digest;
            up.flush().await?;
            let jobs = match client
                .request(&Request::Submit { plan: plan_blob, action: action_blob })
                .await?
            {
                Response::Submitted { jobs, .. } => jobs,
                other => bail!("unexpected answer: {other:?}"),
            };
            anyhow::Ok((client, jobs))
        });
        let (client, jobs) = jobs?;
        let ids: Vec<String> = jobs.iter().map(ToString::to_string).collect();
        let line = format!("submitted {} job(s): {}", jobs.len(), ids.join(" "));
        if self.watch && !out.json {
            // With --watch, stdout carries the results only.
            let _ = writeln!(std::io::stderr(), "{line}");
        } else {
            out.emit(
                "submitted",
                &serde_json::json!({ "jobs": jobs, "plan": digest.to_string() }),
                || line,
            )?;
        }
        let code = if self.watch {
            rt.block_on(watch(&client, &jobs, out))
        } else {
            Ok(ExitCode::SUCCESS)
        };
        rt.block_on(client.shutdown());
        code
    }
}

/// Polls until every job is finished, showing progress on a terminal; then prints each
/// result. Exit 0 only when every job succeeded.
async fn watch(client: &Client, ids: &[JobId], out: Out) -> Result<ExitCode> {
    let tty = std::io::stderr().is_terminal() && !out.json;
    let jobs = loop {
        let jobs = fetch_jobs(client, ids).await?;
        let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
        for j in &jobs {
            *by_state.entry(j.state.name()).or_default() += 1;
        }
        if tty {
            let line: Vec<String> = by_state.iter().map(|(s, n)| format!("{n} {s}")).collect();
            let _ = write!(std::io::stderr(), "\r\x1b[2K{}", line.join(" · "));
        }
        if jobs.iter().all(|j| j.state.is_terminal()) {
            if tty {
                let _ = writeln!(std::io::stderr());
            }
            break jobs;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut ok = true;
    for job in &jobs {
        ok &= print_result(client, job, out).await?;
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The jobs `ids`, in that order: one listing per page when they are all of one action (as
/// after `agx submit`), else one request per job.
async fn fetch_jobs(client: &Client, ids: &[JobId]) -> Result<Vec<JobRecord>> {
    let Some(&first) = ids.first() else { return Ok(vec![]) };
    let first = show(client, first).await?;
    let mut found: BTreeMap<JobId, JobRecord> = BTreeMap::new();
    let filter = JobFilter { state: None, action: Some(first.action.clone()) };
    let mut after = None;
    loop {
        let (page, next) = match client
            .request(&Request::ListJobs { filter: filter.clone(), after, limit: MAX_PAGE })
            .await?
        {
            Response::Jobs { jobs, next } => (jobs, next),
            other => bail!("unexpected answer: {other:?}"),
        };
        found.extend(page.into_iter().map(|j| (j.id, j)));
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        match found.remove(id) {
            Some(j) => out.push(j),
            None => out.push(show(client, *id).await?),
        }
    }
    Ok(out)
}

async fn show(client: &Client, id: JobId) -> Result<JobRecord> {
    match client.request(&Request::ShowJob { job: id }).await? {
        Response::Job { job } => Ok(job),
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// Prints a job's output on stdout and its per-task table on stderr; true when it
/// succeeded.
async fn print_result(client: &Client, job: &JobRecord, out: Out) -> Result<bool> {
    let succeeded =
        job.state == JobState::Succeeded && job.output.as_ref().is_some_and(|o| o.succeeded);
    let output = match job.output.as_ref().and_then(|o| o.output.as_ref()) {
        Some(blob) => client.get_blob(blob.digest, MAX_INPUT).await?,
        None => Vec::new(),
    };
    if out.json {
        let text = String::from_utf8(output.clone()).ok();
        out.emit(
            "result",
            &serde_json::json!({ "job": job, "succeeded": succeeded, "output": text }),
            String::new,
        )?;
        return Ok(succeeded);
    }
    let reports = reports(client, job).await?;
    std::io::stdout().lock().write_all(&output)?;
    let mut err = std::io::stderr().lock();
    writeln!(
        err,
        "job {}: {}{}",
        job.id,
        job.state.name(),
        match &job.state {
            JobState::Dead { reason } => format!(" ({})", clean_line(reason)),
            _ => String::new(),
        }
    )?;
    if let Some(r) = reports {
        err.write_all(task_table(&r).as_bytes())?;
    }
    Ok(succeeded)
}

/// A finished job's per-task reports, fetched when the worker stored them as a blob.
async fn reports(client: &Client, job: &JobRecord) -> Result<Option<Vec<TaskReport>>> {
    let Some(o) = &job.output else { return Ok(None) };
    match &o.reports {
        Reports::Inline(r) => Ok(Some(r.clone())),
        Reports::Blob(blob) => {
            let bytes = client
                .get_blob(blob.digest, blob.size.min(MAX_REPORTS))
                .await
                .with_context(|| format!("cannot fetch the reports of job {}", job.id))?;
            let r = serde_json::from_slice(&bytes)
                .with_context(|| format!("the reports of job {} are not valid", job.id))?;
            Ok(Some(r))
        }
    }
}

/// Up to `limit` jobs after `after` matching `filter`, page by page (a page ends where the
/// queue's byte budget does), and where the next ones start.
async fn list_jobs(
    client: &Client,
    filter: &JobFilter,
    mut after: Option<JobId>,
    limit: u32,
) -> Result<(Vec<JobRecord>, Option<JobId>)> {
    let mut jobs = Vec::new();
    loop {
        let want = limit.saturating_sub(jobs.len() as u32).min(MAX_PAGE);
        let (page, next) = match client
            .request(&Request::ListJobs { filter: filter.clone(), after, limit: want })
            .await?
        {
            Response::Jobs { jobs, next } => (jobs, next),
            other => bail!("unexpected answer: {other:?}"),
        };
        jobs.extend(page);
        match next {
            Some(n) if (jobs.len() as u32) < limit => after = Some(n),
            next => return Ok((jobs, next)),
        }
    }
}

/// Every registered worker, page by page.
async fn list_workers(client: &Client) -> Result<Vec<WorkerRecord>> {
    let mut workers = Vec::new();
    let mut after = None;
    loop {
        match client.request(&Request::ListWorkers { after, limit: MAX_PAGE }).await? {
            Response::Workers { workers: page, next } => {
                workers.extend(page);
                match next {
                    Some(n) => after = Some(n),
                    None => return Ok(workers),
                }
            }
            other => bail!("unexpected answer: {other:?}"),
        }
    }
}

/// Job commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum JobsCommand {
    /// List jobs, oldest first.
    List {
        /// Only jobs in this state (queued, leased, succeeded, dead, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Only jobs of this action.
        #[arg(long)]
        action: Option<ActionId>,
        /// Start after this job id.
        #[arg(long)]
        after: Option<JobId>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        queue: QueueArgs,
    },
    /// One job: state, attempts, per-task table.
    Show {
        /// The job id.
        job: JobId,
        #[command(flatten)]
        queue: QueueArgs,
    },
    /// Wait for jobs to finish, showing progress, then print their results.
    Watch {
        /// Job ids.
        #[arg(required = true)]
        jobs: Vec<JobId>,
        #[command(flatten)]
        queue: QueueArgs,
    },
    /// A job's output on stdout, its per-task table on stderr; exit 0 if it succeeded.
    Result {
        /// The job id.
        job: JobId,
        #[command(flatten)]
        queue: QueueArgs,
    },
    /// Cancel a job (a running one stops at its worker's next heartbeat).
    Cancel {
        /// The job id.
        job: JobId,
        #[command(flatten)]
        queue: QueueArgs,
    },
}

impl JobsCommand {
    fn queue(&self) -> &QueueArgs {
        match self {
            Self::List { queue, .. }
            | Self::Show { queue, .. }
            | Self::Watch { queue, .. }
            | Self::Result { queue, .. }
            | Self::Cancel { queue, .. } => queue,
        }
    }

    pub(crate) fn execute(self, out: Out) -> Result<ExitCode> {
        runtime()?.block_on(async {
            let c = self.queue().connect(ClientRole::Planner).await?;
            let result = self.run(&c, out).await;
            c.shutdown().await;
            result
        })
    }

    async fn run(self, c: &Client, out: Out) -> Result<ExitCode> {
        {
            match self {
                Self::List { state, action, after, limit, .. } => {
                    let (jobs, next) =
                        list_jobs(c, &JobFilter { state, action }, after, limit).await?;
                    if out.json {
                        for j in &jobs {
                            out.emit("job", j, String::new)?;
                        }
                        return Ok(ExitCode::SUCCESS);
                    }
                    let mut s =
                        format!("{:>8}  {:<10} {:>8}  {}\n", "job", "state", "attempts", "action");
                    for j in &jobs {
                        s.push_str(&format!(
                            "{:>8}  {:<10} {:>3} of {:<2}  {}\n",
                            j.id,
                            j.state.name(),
                            j.attempts,
                            j.max_attempts,
                            j.action
                        ));
                    }
                    if let Some(n) = next {
                        s.push_str(&format!("(more after {n}: --after {n})\n"));
                    }
                    out.emit("jobs", &(), || s)?;
                    Ok(ExitCode::SUCCESS)
                }
                Self::Show { job, .. } => {
                    let j = show(c, job).await?;
                    let reports = reports(c, &j).await?;
                    out.emit("job", &j, || {
                        let mut s = format!(
                            "job {}: {} (attempt {} of {})\naction {}\nplan   {}\n",
                            j.id,
                            j.state.name(),
                            j.attempts,
                            j.max_attempts,
                            j.action,
                            j.plan
                        );
                        if let JobState::Dead { reason } = &j.state {
                            s.push_str(&format!("dead: {}\n", clean_line(reason)));
                        }
                        if let Some(e) = &j.last_error {
                            s.push_str(&format!("last error: {}\n", clean_line(e)));
                        }
                        for d in &j.declined {
                            s.push_str(&format!(
                                "declined by {} ({}): {}\n",
                                clean_line(&d.worker),
                                d.worker_id,
                                clean_line(&d.reason)
                            ));
                        }
                        if let Some(r) = &reports {
                            s.push_str(&task_table(r));
                        }
                        s
                    })?;
                    Ok(ExitCode::SUCCESS)
                }
                Self::Watch { jobs, .. } => watch(c, &jobs, out).await,
                Self::Result { job, .. } => {
                    let j = show(c, job).await?;
                    if !j.state.is_terminal() {
                        bail!("job {job} is {} (try agx jobs watch {job})", j.state.name());
                    }
                    Ok(if print_result(c, &j, out).await? {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    })
                }
                Self::Cancel { job, .. } => {
                    let state = match c.request(&Request::Cancel { job }).await? {
                        Response::Cancel { state, .. } => state,
                        other => bail!("unexpected answer: {other:?}"),
                    };
                    out.emit("cancel", &serde_json::json!({ "job": job, "state": state }), || match state {
                        JobState::Cancelled => format!("job {job} cancelled"),
                        _ => format!("job {job}: cancel requested; its worker stops it at the next heartbeat"),
                    })?;
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
    }
}

/// Registered workers.
#[derive(Debug, clap::Args)]
pub(crate) struct Workers {
    #[command(flatten)]
    queue: QueueArgs,
}

impl Workers {
    pub(crate) fn execute(self, out: Out) -> Result<ExitCode> {
        runtime()?.block_on(async {
            let c = self.queue.connect(ClientRole::Planner).await?;
            let answer = list_workers(&c).await;
            c.shutdown().await;
            let workers = answer?;
            if out.json {
                for w in &workers {
                    out.emit("worker", w, String::new)?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            let mut s = format!(
                "{:>20}  {:<20} {:>6} {:>6} {:>8}  {}\n",
                "id", "name", "leases", "slots", "declined", "native tools"
            );
            for w in &workers {
                let tools: Vec<String> =
                    w.capabilities.tools.iter().map(ToString::to_string).collect();
                s.push_str(&format!(
                    "{:>20}  {:<20} {:>6} {:>6} {:>8}  {}\n",
                    w.id,
                    clean_line(&w.capabilities.name),
                    w.leases,
                    w.capabilities.concurrency,
                    w.declined,
                    tools.join(",")
                ));
                if let Some(why) = &w.last_declined {
                    s.push_str(&format!("{:>20}  last declined: {}\n", "", clean_line(why)));
                }
            }
            out.emit("workers", &(), || s)?;
            Ok(ExitCode::SUCCESS)
        })
    }
}

/// Counts by state and throughput.
#[derive(Debug, clap::Args)]
pub(crate) struct Stats {
    #[command(flatten)]
    queue: QueueArgs,
}

impl Stats {
    pub(crate) fn execute(self, out: Out) -> Result<ExitCode> {
        runtime()?.block_on(async {
            let c = self.queue.connect(ClientRole::Planner).await?;
            let answer = c.request(&Request::Stats {}).await;
            c.shutdown().await;
            let stats = match answer? {
                Response::Stats { stats } => stats,
                other => bail!("unexpected answer: {other:?}"),
            };
            out.emit("stats", &stats, || {
                let jobs: Vec<String> =
                    stats.jobs.iter().map(|(k, v)| format!("{v} {k}")).collect();
                format!(
                    "jobs: {}\nlast minute: {} submitted, {} finished\nworkers: {}",
                    if jobs.is_empty() { "none".into() } else { jobs.join(", ") },
                    stats.submitted_last_minute,
                    stats.finished_last_minute,
                    stats.workers
                )
            })?;
            Ok(ExitCode::SUCCESS)
        })
    }
}
