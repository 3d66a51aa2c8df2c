//! `agx jobs list|show|watch|result|history|cancel`: jobs on a queue, and what `agx submit
//! --watch` shows of them.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use agenix_link::Client;
use agenix_proto::envelope::MAX_ENVELOPE_BYTES;
use agenix_proto::job::{JobId, JobRecord, JobState, Reports, StateKind};
use agenix_proto::text::clean_line;
use agenix_proto::wire::{ClientRole, JobFilter, MAX_PAGE};
use agenix_proto::{ActionId, TaskReport, Trust, VerifiedResult};
use anyhow::{Context, Result, bail};

use super::workers::list_workers;
use crate::local::{runtime, task_table};
use crate::output::Out;
use crate::progress::Progress;
use crate::remote::QueueArgs;

/// Largest per-task report list agx reads back from a queue.
const MAX_REPORTS: u64 = 64 << 20;
/// Largest job output agx reads back from a queue.
const MAX_OUTPUT: u64 = 1 << 30;

/// Polls until every job is finished, showing progress on a terminal (a bar on stderr, see
/// [`Progress`]); then prints each result. Exit 0 only when every job succeeded.
pub(super) async fn watch(client: &Client, ids: &[JobId], out: Out) -> Result<ExitCode> {
    let progress = Progress::new(ids.len(), out);
    let mut said = String::new();
    let mut polls = 0u32;
    let jobs = loop {
        let jobs = fetch_jobs(client, ids).await?;
        // Now and then: a job no registered worker can run would be waited for in silence.
        if polls.is_multiple_of(20)
            && let Some(j) = jobs.iter().find(|j| matches!(j.state, JobState::Queued { .. }))
            && let Some(why) = unrunnable(client, j).await?
            && why != said
        {
            if out.json {
                out.emit(
                    "waiting",
                    &serde_json::json!({ "job": j.id, "reason": why }),
                    String::new,
                )?;
            } else {
                progress.say(&format!("agx: job {} waits: {why}", j.id));
            }
            said = why;
        }
        polls = polls.wrapping_add(1);
        progress.update(&jobs);
        if jobs.iter().all(|j| j.state.is_terminal()) {
            progress.finish();
            break jobs;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut ok = true;
    for job in &jobs {
        ok &= print_result(client, job, out, None).await?;
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Why no registered worker can run the queued `job` (`None`: one can, or it is not
/// queued): each worker and what it lacks, as the scheduler matches them.
async fn unrunnable(client: &Client, job: &JobRecord) -> Result<Option<String>> {
    if !matches!(job.state, JobState::Queued { .. }) {
        return Ok(None);
    }
    let workers = list_workers(client).await?;
    if workers.iter().any(|w| job.requirements.met_by(&w.capabilities)) {
        return Ok(None);
    }
    if workers.is_empty() {
        return Ok(Some("no worker is registered".into()));
    }
    const SHOWN: usize = 5;
    let mut each: Vec<String> = workers
        .iter()
        .take(SHOWN)
        .map(|w| {
            let lacks = job.requirements.unmet_by(&w.capabilities).join(", ");
            format!("{}: {}", clean_line(&w.capabilities.name), clean_line(&lacks))
        })
        .collect();
    if workers.len() > SHOWN {
        each.push(format!("and {} more", workers.len() - SHOWN));
    }
    Ok(Some(format!("no registered worker can run it ({})", each.join("; "))))
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
        let page = client.list_jobs(filter.clone(), after, MAX_PAGE).await?;
        found.extend(page.items.into_iter().map(|j| (j.id, j)));
        match page.next {
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
    Ok(client.show_job(id).await?)
}

/// Prints a job's output on stdout and its per-task table on stderr; true when it
/// succeeded. With `trust`, the worker's signed statement of the result is checked first
/// (nothing is printed when it does not hold); without, the result is labelled unverified.
async fn print_result(
    client: &Client,
    job: &JobRecord,
    out: Out,
    trust: Option<&Trust>,
) -> Result<bool> {
    let succeeded =
        job.state == JobState::Succeeded && job.output.as_ref().is_some_and(|o| o.succeeded);
    let output = match job.output.as_ref().and_then(|o| o.output.as_ref()) {
        Some(blob) => client.get_blob(blob.digest, MAX_OUTPUT).await?,
        None => Vec::new(),
    };
    let reports = reports(client, job).await?;
    let verified = match trust {
        Some(trust) => Some(verify_result(client, job, reports.as_deref(), trust).await?),
        None => None,
    };
    if out.json {
        let text = String::from_utf8(output.clone()).ok();
        let (worker, at) = match &verified {
            Some(v) => (Some(v.signer().to_string()), Some(v.statement().at)),
            None => (None, None),
        };
        out.emit(
            "result",
            &serde_json::json!({
                "job": job, "succeeded": succeeded, "output": text,
                "verified": verified.is_some(), "worker": worker, "signed_at_ms": at,
            }),
            String::new,
        )?;
        return Ok(succeeded);
    }
    std::io::stdout().lock().write_all(&output)?;
    let mut err = std::io::stderr().lock();
    let label = match (&verified, trust) {
        (Some(v), Some(t)) => format!(
            " (verified: signed by worker \"{}\", {}, at {})",
            t.signer(&v.signer()).map_or("?", |s| s.name.as_str()),
            v.signer(),
            humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + Duration::from_millis(v.statement().at)
            )
        ),
        _ if job.output.is_some() => {
            " (unverified: --verify checks the worker's signature)".to_string()
        }
        _ => String::new(),
    };
    writeln!(
        err,
        "job {}: {}{}{label}",
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

/// Checks a finished job's result against the worker's signed statement: signed by a key
/// `trust` holds for the `worker` role, about this queue, this job, its plan and input,
/// and saying exactly what the queue says the result is (success, failure, output, every
/// task's report). The output's bytes were already checked against their digest.
async fn verify_result(
    client: &Client,
    job: &JobRecord,
    reports: Option<&[TaskReport]>,
    trust: &Trust,
) -> Result<VerifiedResult> {
    let Some(output) = &job.output else {
        bail!("job {} has no result to verify", job.id);
    };
    let Some(signed) = &output.result else {
        bail!("job {}'s result carries no signed statement: it cannot be verified", job.id);
    };
    let bytes = client
        .get_blob(signed.digest, signed.size.min(MAX_ENVELOPE_BYTES as u64))
        .await
        .with_context(|| format!("cannot fetch the signed result of job {}", job.id))?;
    let v = agenix_proto::verify_result(&bytes, trust, super::now_unix())
        .with_context(|| format!("job {}: the signed result does not verify", job.id))?;
    let s = v.statement();
    let bound = [
        ("queue", client.queue().to_string(), s.queue.to_string()),
        ("job", job.id.to_string(), s.job.to_string()),
        ("lease epoch", job.epoch.0.to_string(), s.epoch.0.to_string()),
        ("plan", job.plan.to_string(), s.plan.to_string()),
        ("input", format!("{:?}", job.input), format!("{:?}", s.input)),
    ];
    for (what, expected, found) in bound {
        if expected != found {
            bail!("job {}: the signed result's {what} is {found}, not {expected}", job.id);
        }
    }
    s.check(output, reports)
        .with_context(|| format!("job {}: the result is not what its worker signed", job.id))?;
    Ok(v)
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
        let page = client.list_jobs(filter.clone(), after, want).await?;
        jobs.extend(page.items);
        match page.next {
            Some(n) if (jobs.len() as u32) < limit => after = Some(n),
            next => return Ok((jobs, next)),
        }
    }
}

/// Job commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum JobsCommand {
    /// List jobs, oldest first.
    #[command(after_help = examples!(
        "agx jobs list",
        "# Dead jobs, 20 at a time: the first 20, then the 20 after job 120",
        "agx jobs list --state dead --limit 20",
        "agx jobs list --state dead --limit 20 --after 120",
        "# Read-only, with the observer token",
        "agx jobs list --role observer --token-file q/observer.token",
    ))]
    List {
        /// Only jobs in this state: queued, leased, succeeded, dead or cancelled.
        #[arg(long)]
        state: Option<StateKind>,
        /// Only jobs of this action.
        #[arg(long)]
        action: Option<ActionId>,
        /// Start after this job id.
        #[arg(long)]
        after: Option<JobId>,
        /// At most this many (at least 1).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        #[command(flatten)]
        queue: QueueArgs,
    },
    /// One job: state, attempts, per-task table.
    #[command(after_help = examples!(
        "agx jobs show 7",
        "agx jobs show 7 --json",
    ))]
    Show {
        /// The job id.
        job: JobId,
        #[command(flatten)]
        queue: QueueArgs,
    },
    /// Wait for jobs to finish, showing progress, then print their results.
    #[command(after_help = examples!(
        "# On a terminal, a bar on stderr counts them by state while they run",
        "agx jobs watch 7 8 9",
        "# Their outputs to a file; each job's state and task table stay on stderr",
        "agx jobs watch 7 8 9 > results.txt",
    ))]
    Watch {
        /// Job ids.
        #[arg(required = true)]
        jobs: Vec<JobId>,
        #[command(flatten)]
        queue: QueueArgs,
    },
    /// A job's output on stdout, its per-task table on stderr; exit 0 if it succeeded.
    /// Unverified unless --verify: then the worker's signed statement of the result is
    /// checked against the worker keys in the trust file, and nothing is printed unless it
    /// holds.
    #[command(after_help = examples!(
        "agx jobs result 7 > out.txt",
        "# Only if a worker whose key the trust file holds signed it",
        "agx jobs result 7 --verify --trust planner-trust.json",
    ))]
    Result {
        /// The job id.
        job: JobId,
        /// Check the worker's signature and that the result is what it signed.
        #[arg(long)]
        verify: bool,
        /// The trust file holding the worker keys believed (`agx trust add worker.pub
        /// --role worker`).
        #[arg(long = "trust", value_name = "FILE", env = "AGX_TRUST")]
        trust: Option<std::path::PathBuf>,
        #[command(flatten)]
        queue: QueueArgs,
    },
    /// A job's entries in the queue's audit log, each proven in a checkpoint the queue
    /// signed (or marked as not yet covered by one).
    #[command(after_help = examples!(
        "agx jobs history 7",
        "agx jobs history 7 --json",
    ))]
    History {
        /// The job id.
        job: JobId,
        #[command(flatten)]
        queue: QueueArgs,
    },
    /// Cancel a job (a running one stops at its worker's next heartbeat).
    #[command(after_help = examples!(
        "agx jobs cancel 7",
    ))]
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
            | Self::History { queue, .. }
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
                    let waits = unrunnable(c, &j).await?;
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
                        if let Some(why) = &waits {
                            s.push_str(&format!("waits: {why}\n"));
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
                    if let (true, Some(why)) = (out.json, &waits) {
                        out.emit(
                            "waiting",
                            &serde_json::json!({ "job": j.id, "reason": why }),
                            String::new,
                        )?;
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Self::Watch { jobs, .. } => watch(c, &jobs, out).await,
                Self::History { job, .. } => super::history::history(c, job, out).await,
                Self::Result { job, verify, trust, .. } => {
                    let trust = match (verify, trust) {
                        (false, _) => None,
                        (true, Some(path)) => Some(super::trust::load_trust(&path)?),
                        (true, None) => bail!(
                            "--verify needs the trust file holding the worker keys you believe: \
                             --trust FILE or AGX_TRUST (agx trust add worker.pub --role worker)"
                        ),
                    };
                    let j = show(c, job).await?;
                    if !j.state.is_terminal() {
                        bail!("job {job} is {} (try agx jobs watch {job})", j.state.name());
                    }
                    Ok(if print_result(c, &j, out, trust.as_ref()).await? {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    })
                }
                Self::Cancel { job, .. } => {
                    let state = c.cancel(job).await?;
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
