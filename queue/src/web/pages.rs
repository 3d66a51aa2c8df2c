//! The dashboard's pages: askama templates (`queue/templates/`, compiled into the binary,
//! every value escaped) and the rows they show, made from the queue's records. Free text
//! from clients is cleaned of control characters and bounded before it is shown.

use agenix_proto::job::{JobRecord, JobState, StateKind, WorkerRecord};
use agenix_proto::text::{clean, clean_line, truncate};
use agenix_proto::wire::QueueStats;
use agenix_proto::{Plan, Run, Stdin, TaskReport};
use askama::Template;

use super::{Sample, Viewer};

/// Longest free text shown in a table cell, in bytes.
const CELL: usize = 200;
/// Longest stderr shown, in bytes (a report keeps at most its task's stderr limit).
const STDERR: usize = 64 << 10;

/// A page's HTML, or an error page if the template failed (it has no fallible parts).
pub(super) trait Page: Template {
    fn html(&self) -> axum::response::Html<String> {
        axum::response::Html(self.render().unwrap_or_else(|e| {
            tracing::error!(error = %e, "a dashboard page could not be rendered");
            "<!doctype html><title>agq</title><p>this page could not be rendered".into()
        }))
    }
}

impl<T: Template> Page for T {}

/// The name shown for the viewer's role: empty when not signed in.
pub(super) fn role_name(v: &Viewer) -> String {
    v.role.map(|r| r.as_str().to_string()).unwrap_or_default()
}

/// What every page's header needs.
#[derive(Debug)]
pub(super) struct Nav {
    role: String,
    csrf: String,
}

impl Nav {
    fn of(v: &Viewer) -> Self {
        Self { role: role_name(v), csrf: v.csrf.clone() }
    }
}

fn cell(s: &str) -> String {
    truncate(&clean_line(s), CELL).into_owned()
}

/// A time as `2026-12-06 13:04:05Z`.
fn when(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string().replace('T', " ")
}

/// How long ago `ms` was, `now` being now: `4s`, `3m`, `2h`, `5d`.
fn ago(ms: u64, now: u64) -> String {
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// One job in a table.
#[derive(Debug)]
pub(super) struct JobRow {
    id: u64,
    state: &'static str,
    detail: String,
    attempts: String,
    submitted: String,
}

impl JobRow {
    pub(super) fn id(&self) -> u64 {
        self.id
    }

    pub(super) fn of(j: &JobRecord) -> Self {
        Self {
            id: j.id.0,
            state: j.state.name(),
            detail: state_detail(&j.state, j.last_error.as_deref()),
            attempts: format!("{}/{}", j.attempts, j.max_attempts),
            submitted: when(j.submitted_at),
        }
    }
}

fn state_detail(s: &JobState, last_error: Option<&str>) -> String {
    match s {
        JobState::Dead { reason } => cell(reason),
        JobState::Leased { worker, .. } => format!("on {}", cell(worker)),
        JobState::Queued { .. } => {
            last_error.map(|e| format!("last: {}", cell(e))).unwrap_or_default()
        }
        JobState::Succeeded | JobState::Cancelled => String::new(),
    }
}

/// A bar of the throughput chart.
#[derive(Debug)]
pub(super) struct Bar {
    x: usize,
    finished_y: u64,
    finished_h: u64,
    submitted_y: u64,
    submitted_h: u64,
    title: String,
}

/// Height of the chart's drawing area, in pixels.
const CHART_H: u64 = 100;
/// Width of one bar slot.
const BAR_W: usize = 6;

#[derive(Template)]
#[template(path = "overview.html")]
pub(super) struct Overview {
    nav: Nav,
    counts: Vec<(&'static str, u64)>,
    submitted_last_minute: u64,
    finished_last_minute: u64,
    workers: u64,
    bars: Vec<Bar>,
    chart_w: usize,
    peak: u64,
    dead: Vec<JobRow>,
    recent: Vec<JobRow>,
}

impl Overview {
    pub(super) fn new(
        v: &Viewer,
        stats: &QueueStats,
        samples: &[Sample],
        dead: Vec<JobRow>,
        recent: Vec<JobRow>,
    ) -> Self {
        let counts = StateKind::ALL
            .iter()
            .map(|k| (k.name(), stats.jobs.get(k.name()).copied().unwrap_or(0)))
            .collect();
        let peak = samples.iter().map(|s| s.finished.max(s.submitted)).max().unwrap_or(0).max(1);
        let scale = |n: u64| n.saturating_mul(CHART_H / 2) / peak;
        let bars = samples
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (fh, sh) = (scale(s.finished), scale(s.submitted));
                Bar {
                    x: i * BAR_W,
                    finished_y: CHART_H / 2 - fh,
                    finished_h: fh,
                    submitted_y: CHART_H - sh,
                    submitted_h: sh,
                    title: format!(
                        "{}: {} finished, {} submitted in the minute before",
                        when(s.at),
                        s.finished,
                        s.submitted
                    ),
                }
            })
            .collect();
        Self {
            nav: Nav::of(v),
            counts,
            submitted_last_minute: stats.submitted_last_minute,
            finished_last_minute: stats.finished_last_minute,
            workers: stats.workers,
            bars,
            chart_w: super::SAMPLES * BAR_W,
            peak,
            dead,
            recent,
        }
    }
}

#[derive(Template)]
#[template(path = "jobs.html")]
pub(super) struct Jobs {
    nav: Nav,
    state: &'static str,
    states: Vec<&'static str>,
    rows: Vec<JobRow>,
    older: Option<u64>,
}

impl Jobs {
    /// `older`: where the next page starts, if there are older jobs to look at.
    pub(super) fn new(
        v: &Viewer,
        state: Option<StateKind>,
        rows: Vec<JobRow>,
        older: Option<u64>,
    ) -> Self {
        Self {
            nav: Nav::of(v),
            state: state.map_or("", StateKind::name),
            states: StateKind::ALL.iter().map(|k| k.name()).collect(),
            rows,
            older,
        }
    }
}

/// One task of a job: its place in the plan and how it ended.
#[derive(Debug)]
pub(super) struct TaskRow {
    id: String,
    runs: String,
    reads: String,
    outcome: String,
    success: bool,
    exit: String,
    fuel: String,
    wall: String,
    memory: String,
    stderr: String,
}

/// One audit entry.
#[derive(Debug)]
pub(super) struct AuditRow {
    seq: u64,
    at: String,
    what: String,
    subject: String,
    state: String,
}

impl AuditRow {
    fn of(seq: u64, bytes: &[u8]) -> Self {
        let Ok(entry) = agenix_proto::audit::Entry::from_bytes(bytes) else {
            return Self {
                seq,
                at: String::new(),
                what: "(not an entry)".into(),
                subject: String::new(),
                state: String::new(),
            };
        };
        let (what, subject, state) = match &entry.event {
            agenix_proto::audit::Event::Job(j) => {
                (j.step.name().to_string(), format!("job {}", j.job), j.state.name().to_string())
            }
            agenix_proto::audit::Event::Key(k) => (
                format!(
                    "key {}",
                    serde_json::to_value(k.change)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default()
                ),
                format!("{} ({})", cell(&k.name), k.key),
                String::new(),
            ),
            agenix_proto::audit::Event::Trust { file } => {
                ("trust file read".into(), file.to_string(), String::new())
            }
        };
        Self { seq, at: when(entry.at), what, subject, state }
    }
}

#[derive(Template)]
#[template(path = "job.html")]
pub(super) struct JobPage {
    nav: Nav,
    id: u64,
    state: &'static str,
    detail: String,
    cancellable: bool,
    may_cancel: bool,
    plan_name: String,
    description: String,
    plan_digest: String,
    attempts: String,
    submitted: String,
    updated: String,
    input: String,
    failure: String,
    tasks: Vec<TaskRow>,
    declined: Vec<String>,
    history: Vec<AuditRow>,
}

impl JobPage {
    pub(super) fn new(
        v: &Viewer,
        j: &JobRecord,
        plan: Option<&Plan>,
        reports: &[TaskReport],
        history: Vec<(u64, Vec<u8>)>,
    ) -> Self {
        let report = |id: &str| reports.iter().find(|r| r.task.as_str() == id);
        let row = |id: &str, runs: String, reads: String| {
            let r = report(id);
            TaskRow {
                id: id.to_string(),
                runs,
                reads,
                outcome: r.map_or_else(|| "not reported".into(), |r| r.outcome.label()),
                success: r.is_some_and(|r| r.outcome.is_success()),
                exit: r
                    .and_then(|r| r.outcome.exit_code())
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                fuel: r.and_then(|r| r.fuel_consumed).map(|f| f.to_string()).unwrap_or_default(),
                wall: r.map(|r| format!("{} ms", r.wall_ms)).unwrap_or_default(),
                memory: r.map(|r| bytes(r.peak_memory_bytes)).unwrap_or_default(),
                stderr: r
                    .map(|r| truncate(&clean(&r.stderr), STDERR).into_owned())
                    .unwrap_or_default(),
            }
        };
        let tasks = match plan {
            Some(p) => p
                .tasks
                .iter()
                .map(|t| {
                    let runs = match &t.run {
                        Run::Wasm(w) => match w.digest {
                            Some(d) => format!("AU {} @ {}", w.name, short(&d.to_string())),
                            None => format!("AU {}", w.name),
                        },
                        Run::Native(n) => format!("tool {}", n.tool),
                    };
                    let reads = match &t.stdin {
                        None | Some(Stdin::Input(false)) => "nothing".into(),
                        Some(Stdin::Input(true)) => "the job's input".into(),
                        Some(Stdin::Task(id)) => id.to_string(),
                        Some(Stdin::Tasks(ids)) => {
                            ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(" + ")
                        }
                    };
                    row(t.id.as_str(), runs, reads)
                })
                .collect(),
            // The action is gone (expired): the reports still say how each task ended.
            None => {
                reports.iter().map(|r| row(r.task.as_str(), String::new(), String::new())).collect()
            }
        };
        Self {
            nav: Nav::of(v),
            id: j.id.0,
            state: j.state.name(),
            detail: state_detail(&j.state, None),
            cancellable: !j.state.is_terminal() && !j.cancel_requested,
            may_cancel: v.may_cancel(),
            plan_name: plan.map(|p| p.name.to_string()).unwrap_or_default(),
            description: plan
                .map(|p| truncate(&clean(&p.description), 4096).into_owned())
                .unwrap_or_default(),
            plan_digest: j.plan.to_string(),
            attempts: format!("{} of {}", j.attempts, j.max_attempts),
            submitted: when(j.submitted_at),
            updated: when(j.updated_at),
            input: j
                .input
                .as_ref()
                .map(|i| format!("{} ({})", i.digest, bytes(i.size)))
                .unwrap_or_else(|| "none".into()),
            failure: j
                .output
                .as_ref()
                .and_then(|o| o.failure.as_deref())
                .or(j.last_error.as_deref())
                .map(cell)
                .unwrap_or_default(),
            tasks,
            declined: j
                .declined
                .iter()
                .map(|d| cell(&format!("{}: {}", d.worker, d.reason)))
                .collect(),
            history: history.iter().map(|(seq, b)| AuditRow::of(*seq, b)).collect(),
        }
    }
}

fn short(digest: &str) -> String {
    digest.strip_prefix("sha256:").unwrap_or(digest).chars().take(12).collect()
}

fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// One worker.
#[derive(Debug)]
pub(super) struct WorkerRow {
    name: String,
    labels: String,
    key: String,
    runs: String,
    load: String,
    seen: String,
    declined: String,
}

#[derive(Template)]
#[template(path = "workers.html")]
pub(super) struct Workers {
    nav: Nav,
    rows: Vec<WorkerRow>,
}

impl Workers {
    pub(super) fn new(v: &Viewer, list: &[WorkerRecord], now: u64) -> Self {
        let rows = list
            .iter()
            .map(|w| {
                let c = &w.capabilities;
                let mut runs = Vec::new();
                if c.wasm {
                    runs.push("AUs".to_string());
                }
                if !c.tools.is_empty() {
                    let tools: Vec<String> = c.tools.iter().map(ToString::to_string).collect();
                    runs.push(format!("tools: {}", tools.join(", ")));
                }
                if !c.mounts.is_empty() {
                    let mounts: Vec<String> = c.mounts.iter().map(ToString::to_string).collect();
                    runs.push(format!("mounts: {}", mounts.join(", ")));
                }
                WorkerRow {
                    name: cell(&c.name),
                    labels: c.labels.iter().map(|l| cell(l)).collect::<Vec<_>>().join(", "),
                    key: w.key.to_string(),
                    runs: runs.join("; "),
                    load: format!("{} of {}", w.leases, c.concurrency),
                    seen: format!("{} ago", ago(w.last_seen, now)),
                    declined: match (&w.last_declined, w.declined) {
                        (_, 0) => String::new(),
                        (Some(why), n) => format!("{n}, last: {}", cell(why)),
                        (None, n) => n.to_string(),
                    },
                }
            })
            .collect();
        Self { nav: Nav::of(v), rows }
    }
}

#[derive(Template)]
#[template(path = "audit.html")]
pub(super) struct Audit {
    nav: Nav,
    rows: Vec<AuditRow>,
    checkpoint: String,
    problem: String,
}

impl Audit {
    pub(super) fn new(
        v: &Viewer,
        entries: Vec<(u64, Vec<u8>)>,
        checkpoint: Option<u64>,
        problem: Option<String>,
    ) -> Self {
        Self {
            nav: Nav::of(v),
            rows: entries.iter().map(|(seq, b)| AuditRow::of(*seq, b)).collect(),
            checkpoint: checkpoint
                .map_or_else(|| "none yet".into(), |n| format!("the first {n} entries")),
            problem: problem.unwrap_or_default(),
        }
    }
}

#[derive(Template)]
#[template(path = "login.html")]
pub(super) struct Login<'a> {
    pub(super) viewer_role: String,
    pub(super) problem: &'a str,
}

#[derive(Template)]
#[template(path = "error.html")]
pub(super) struct ErrorPage<'a> {
    pub(super) message: &'a str,
}
