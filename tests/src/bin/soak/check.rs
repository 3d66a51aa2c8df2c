//! After the run: every job the queue holds, checked against what was submitted and what
//! each input must give, and the workers' logs searched for a job that succeeded twice.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use agenix_proto::Digest;
use agenix_proto::job::{JobId, JobRecord, JobState, Reports};

use crate::submit::{InputInfo, Submission};
use crate::workload::Kind;

/// What the checks found.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    /// Acknowledged jobs by state name.
    pub(crate) by_state: BTreeMap<String, u64>,
    /// Stored jobs no acknowledgement named, by state name.
    pub(crate) unacked_by_state: BTreeMap<String, u64>,
    /// Acknowledged job ids the queue does not have.
    pub(crate) lost: Vec<JobId>,
    /// Jobs not yet finished.
    pub(crate) unfinished: Vec<String>,
    /// Finished jobs that did not succeed.
    pub(crate) not_succeeded: Vec<String>,
    /// Jobs whose record does not match their submission (plan, input, index).
    pub(crate) mixed_up: Vec<String>,
    /// Succeeded jobs whose output is not what their input gives.
    pub(crate) wrong_output: Vec<String>,
    /// Jobs with more than one "result recorded ... succeeded" in the workers' logs.
    pub(crate) doubled: Vec<String>,
    /// Quotes jobs whose reports were not large enough to travel as a blob.
    pub(crate) small_reports: Vec<String>,
    /// Succeeded jobs checked against their expected output.
    pub(crate) outputs_checked: u64,
    /// Stored jobs of unacknowledged submissions, checked the same way.
    pub(crate) unacked_checked: u64,
    /// Succeeded jobs with no "result recorded" line (a worker killed between the queue's
    /// answer and its log line).
    pub(crate) succeeded_unlogged: u64,
    /// Jobs leased more than once, and the most leases one job had.
    pub(crate) retried: u64,
    pub(crate) most_attempts: u32,
    /// Jobs some worker declined (gave back without an attempt).
    pub(crate) declined: u64,
    /// Quotes jobs whose reports travelled as a blob.
    pub(crate) report_blobs: u64,
    /// Log lines of interest, by what they say.
    pub(crate) log_counts: BTreeMap<&'static str, u64>,
    /// Lines where a process panicked.
    pub(crate) panics: Vec<String>,
    /// What `agq audit verify` said of the log after every kill.
    pub(crate) audit_summary: String,
    /// The audit log broken, or missing a submission or a success.
    pub(crate) audit: Vec<String>,
}

fn short_state(s: &JobState) -> String {
    match s {
        JobState::Dead { reason } => {
            format!("dead ({})", reason.chars().take(300).collect::<String>())
        }
        other => other.name().to_string(),
    }
}

/// Checks `jobs` (every job the queue lists) against the acknowledged submissions and the
/// inputs of the unacknowledged ones.
pub(crate) fn jobs(
    jobs: &[JobRecord],
    acked: &[Submission],
    unacked: &[(Kind, InputInfo)],
) -> Findings {
    let mut f = Findings::default();
    let by_id: HashMap<JobId, &JobRecord> = jobs.iter().map(|j| (j.id, j)).collect();
    let mut acked_ids = HashMap::new();
    for sub in acked {
        for (index, (id, input)) in sub.jobs.iter().zip(&sub.inputs).enumerate() {
            acked_ids.insert(*id, ());
            let Some(job) = by_id.get(id) else {
                f.lost.push(*id);
                continue;
            };
            *f.by_state.entry(job.state.name().to_string()).or_default() += 1;
            let what = format!("job {id} ({}, action {})", sub.kind.name(), sub.seq);
            let input_digest = job.input.as_ref().map_or(Digest::of(b""), |i| i.digest);
            if job.plan != sub.plan || job.index as usize != index || input_digest != input.digest {
                f.mixed_up.push(format!(
                    "{what}: the queue has plan {} input {input_digest} index {}, agx submitted \
                     plan {} input {} index {index}",
                    job.plan, job.index, sub.plan, input.digest
                ));
            }
            one(&mut f, job, sub.kind, input, &what);
        }
    }
    // Jobs of submissions that were not acknowledged (the queue stored them, the answer
    // was lost): found by their input, checked alike.
    let mut by_input: HashMap<Digest, Vec<&(Kind, InputInfo)>> = HashMap::new();
    for u in unacked {
        by_input.entry(u.1.digest).or_default().push(u);
    }
    for job in jobs.iter().filter(|j| !acked_ids.contains_key(&j.id)) {
        *f.unacked_by_state.entry(job.state.name().to_string()).or_default() += 1;
        let digest = job.input.as_ref().map_or(Digest::of(b""), |i| i.digest);
        let what = format!("job {} (not acknowledged)", job.id);
        match by_input.get(&digest).map(Vec::as_slice) {
            Some([(kind, input), ..]) => {
                f.unacked_checked += 1;
                one(&mut f, job, *kind, input, &what);
            }
            _ => f.mixed_up.push(format!("{what}: its input {digest} was never submitted")),
        }
    }
    f
}

fn one(f: &mut Findings, job: &JobRecord, kind: Kind, input: &InputInfo, what: &str) {
    f.most_attempts = f.most_attempts.max(job.attempts);
    if job.attempts > 1 {
        f.retried += 1;
    }
    if !job.declined.is_empty() {
        f.declined += 1;
    }
    match &job.state {
        JobState::Succeeded => {}
        s if !s.is_terminal() => {
            f.unfinished.push(format!("{what}: {}", short_state(s)));
            return;
        }
        s => {
            let last = job.last_error.as_deref().unwrap_or("");
            f.not_succeeded.push(format!(
                "{what}: {} after {} attempt(s); last error: {}",
                short_state(s),
                job.attempts,
                last.chars().take(300).collect::<String>()
            ));
            return;
        }
    }
    let Some(out) = &job.output else {
        f.wrong_output.push(format!("{what}: succeeded without a result"));
        return;
    };
    f.outputs_checked += 1;
    let (digest, size) = out.output.as_ref().map_or((Digest::of(b""), 0), |o| (o.digest, o.size));
    if !out.succeeded || digest != input.expected.digest || size != input.expected.size {
        let shown = input.expected.bytes.as_deref().map_or(String::new(), |b| {
            format!(" {:?}", String::from_utf8_lossy(&b[..b.len().min(200)]))
        });
        f.wrong_output.push(format!(
            "{what}: output {digest} ({size} bytes), expected {} ({} bytes){shown} for input {}",
            input.expected.digest, input.expected.size, input.digest
        ));
    }
    if kind == Kind::Quotes {
        match &out.reports {
            Reports::Blob(_) => f.report_blobs += 1,
            Reports::Inline(r) => f
                .small_reports
                .push(format!("{what}: its {} task reports came inline, not as a blob", r.len())),
        }
    }
}

/// Searches the workers' logs: "result recorded" lines (agw `deliver`, with `job=ID` and
/// `state=NAME`), and lines worth counting.
/// The audit log, after every kill: it must verify, and hold a `submitted` entry for every
/// acknowledged job and a `completed` entry for every job that succeeded.
pub(crate) fn audit(
    f: &mut Findings,
    cluster: &crate::cluster::Cluster,
    acked: &[Submission],
    succeeded: &[JobId],
) {
    use agenix_proto::audit::{Entry, Event, Step};
    match cluster.agq_audit(&["verify"]) {
        Ok((true, out, _)) => f.audit_summary = out.lines().collect::<Vec<_>>().join("; "),
        Ok((false, _, err)) => f.audit.push(err.trim().to_string()),
        Err(e) => f.audit.push(format!("{e:#}")),
    }
    let text = match cluster.agq_audit(&["export"]) {
        Ok((true, out, _)) => out,
        Ok((false, _, err)) => return f.audit.push(format!("export: {}", err.trim())),
        Err(e) => return f.audit.push(format!("export: {e:#}")),
    };
    let mut submitted = std::collections::HashSet::new();
    let mut completed = std::collections::HashSet::new();
    for line in text.lines() {
        match Entry::from_bytes(line.as_bytes()).map(|e| e.event) {
            Ok(Event::Job(j)) if j.step == Step::Submitted => {
                submitted.insert(j.job);
            }
            Ok(Event::Job(j)) if j.step == Step::Completed => {
                completed.insert(j.job);
            }
            Ok(_) => {}
            Err(e) => f.audit.push(format!("an exported entry does not parse: {e}")),
        }
    }
    let missing: Vec<String> = acked
        .iter()
        .flat_map(|s| &s.jobs)
        .filter(|id| !submitted.contains(id))
        .map(|id| format!("job {id}: no submitted entry"))
        .chain(
            succeeded
                .iter()
                .filter(|id| !completed.contains(id))
                .map(|id| format!("job {id}: succeeded with no completed entry")),
        )
        .collect();
    f.audit.extend(missing);
}

pub(crate) fn worker_logs(f: &mut Findings, logs: &[PathBuf], succeeded: &[JobId]) {
    let mut recorded: HashMap<u64, Vec<String>> = HashMap::new();
    for path in logs {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            count(f, &name, n, line);
            if !line.contains("result recorded") {
                continue;
            }
            if let (Some(job), Some(state)) = (field(line, "job"), field(line, "state"))
                && state == "succeeded"
                && let Ok(job) = job.parse::<u64>()
            {
                recorded.entry(job).or_default().push(format!("{name}:{}", n + 1));
            }
        }
    }
    let mut doubled: Vec<(&u64, &Vec<String>)> =
        recorded.iter().filter(|(_, at)| at.len() > 1).collect();
    doubled.sort();
    for (job, at) in doubled {
        f.doubled.push(format!("job {job}: succeeded {} times ({})", at.len(), at.join(", ")));
    }
    f.succeeded_unlogged = succeeded.iter().filter(|j| !recorded.contains_key(&j.0)).count() as u64;
}

/// Counts lines of any process's log worth reporting; notes panics.
pub(crate) fn count(f: &mut Findings, name: &str, n: usize, line: &str) {
    const WATCHED: &[(&str, &str)] = &[
        ("result recorded", "results recorded"),
        ("result refused", "results refused (stale lease)"),
        ("lease lost", "leases lost"),
        ("job declined", "jobs declined"),
        ("lost the queue", "workers lost the queue"),
        ("job failed", "jobs failed (retryable or not)"),
        ("could not be sent", "answers that could not be sent"),
    ];
    for (needle, label) in WATCHED {
        if line.contains(needle) {
            *f.log_counts.entry(label).or_default() += 1;
        }
    }
    if line.contains(" ERROR ") {
        *f.log_counts.entry("ERROR lines").or_default() += 1;
    }
    if line.contains("panicked") {
        f.panics.push(format!("{name}:{}: {}", n + 1, line.chars().take(300).collect::<String>()));
    }
}

/// The value of `key=VALUE` in a tracing line (quotes removed).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!(" {key}=");
    let at = line.find(&pat)? + pat.len();
    let rest = &line[at..];
    let rest = rest.strip_prefix('"').unwrap_or(rest);
    let end = rest.find(|c: char| c == '"' || c.is_whitespace()).unwrap_or(rest.len());
    Some(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_recorded_as_succeeded_twice_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let line = |job: u64, state: &str| {
            format!(
                "2026-12-05T10:00:00Z  INFO agenix_runtime::worker: result recorded job={job} state=\"{state}\"\n"
            )
        };
        let a = dir.path().join("w0-1.log");
        let b = dir.path().join("w1-1.log");
        std::fs::write(&a, line(5, "succeeded") + &line(6, "succeeded") + &line(7, "dead"))
            .unwrap();
        std::fs::write(&b, line(5, "succeeded") + &line(7, "succeeded")).unwrap();
        let mut f = Findings::default();
        worker_logs(&mut f, &[a, b], &[JobId(5), JobId(6), JobId(7), JobId(8)]);
        assert_eq!(f.doubled.len(), 1, "{:?}", f.doubled);
        assert!(f.doubled[0].starts_with("job 5: succeeded 2 times"), "{:?}", f.doubled);
        assert_eq!(f.succeeded_unlogged, 1);
    }

    #[test]
    fn an_acknowledged_job_the_queue_does_not_hold_is_lost() {
        let input = InputInfo {
            digest: Digest::of(b"in"),
            expected: crate::workload::Expected {
                digest: Digest::of(b"out"),
                size: 3,
                bytes: None,
            },
        };
        let sub = Submission {
            seq: 0,
            kind: Kind::Sha,
            plan: Digest::of(b"plan"),
            jobs: vec![JobId(9)],
            inputs: vec![input],
        };
        let f = jobs(&[], &[sub], &[]);
        assert_eq!(f.lost, [JobId(9)]);
    }

    #[test]
    fn fields_are_found_with_and_without_quotes() {
        let line = r#"2026-12-05T10:00:00.1Z  INFO agenix_runtime::worker: result recorded job=17 state="succeeded""#;
        assert_eq!(field(line, "job"), Some("17"));
        assert_eq!(field(line, "state"), Some("succeeded"));
        assert_eq!(field("x state=dead", "state"), Some("dead"));
        assert_eq!(field("x", "state"), None);
    }
}
