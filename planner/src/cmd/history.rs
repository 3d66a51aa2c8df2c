//! `agx jobs history N`: one job's entries in the queue's audit log, each checked against a
//! checkpoint signed by the queue pinned (its inclusion proof), or said to be not yet
//! covered by one.

use std::process::ExitCode;

use agenix_link::Client;
use agenix_proto::audit::{self, Checked, Event, JobEvent};
use agenix_proto::job::JobId;
use anyhow::{Context, Result, bail};

use crate::output::Out;

/// Most entries agx reads for one job (a queue that keeps answering is refused past it).
const MAX_ENTRIES: usize = 100_000;

/// Prints `job`'s history; fails when anything the queue sent does not check.
pub(super) async fn history(client: &Client, job: JobId, out: Out) -> Result<ExitCode> {
    let queue = client.queue();
    let mut checked: Vec<Checked> = Vec::new();
    let mut after = None;
    loop {
        let (page, next) = client.history(job, after).await?;
        let entries = audit::check_history(&queue, job, &page)
            .with_context(|| format!("the queue's audit log does not check for job {job}"))?;
        if let (Some(last), Some(first)) = (checked.last(), entries.first())
            && first.entry.seq <= last.entry.seq
        {
            bail!("the queue's audit log answered entry {} again", first.entry.seq);
        }
        checked.extend(entries);
        if checked.len() > MAX_ENTRIES {
            bail!("job {job} has over {MAX_ENTRIES} audit entries: refusing to read more");
        }
        match next {
            Some(n) if after.is_none_or(|a| n > a) => after = Some(n),
            Some(n) => bail!("the queue's audit log pages backwards (to entry {n})"),
            None => break,
        }
    }
    let proven = checked.iter().filter(|c| c.proven_in.is_some()).count();
    if out.json {
        for c in &checked {
            let record = serde_json::json!({ "entry": c.entry, "proven_in": c.proven_in });
            out.emit("audit_entry", &record, String::new)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let signed = checked.iter().filter_map(|c| c.proven_in).max();
    let mut s = format!("job {job}: {} audit entries from queue {queue}\n", checked.len());
    s.push_str(&match (proven, signed) {
        (0, _) | (_, None) => "none is covered by a signed checkpoint yet\n".to_string(),
        (n, Some(size)) if n == checked.len() => {
            format!("all proven in the queue's signed checkpoint of {size} entries\n")
        }
        (n, Some(size)) => format!(
            "{n} proven in the queue's signed checkpoint of {size} entries; {} after it, not yet signed\n",
            checked.len() - n
        ),
    });
    s.push_str(&format!(
        "{:>8}  {:<24}  {:<16} {:<10} details\n",
        "entry", "time (UTC)", "step", "state"
    ));
    for c in &checked {
        let Event::Job(e) = &c.entry.event else { continue };
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(c.entry.at);
        s.push_str(&format!(
            "{:>8}{} {:<24}  {:<16} {:<10} {}\n",
            c.entry.seq,
            if c.proven_in.is_some() { ' ' } else { '*' },
            humantime::format_rfc3339_millis(at).to_string(),
            step_name(e),
            e.state.name(),
            details(e)
        ));
    }
    if proven < checked.len() {
        s.push_str("(* not yet covered by a signed checkpoint)\n");
    }
    out.emit("history", &(), || s)?;
    Ok(ExitCode::SUCCESS)
}

fn step_name(e: &JobEvent) -> String {
    serde_json::to_value(e.step)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn details(e: &JobEvent) -> String {
    let mut d = Vec::new();
    if let Some(a) = &e.action {
        d.push(format!("action {a}"));
    }
    if let Some(p) = &e.plan {
        d.push(format!("plan {}", p.short()));
    }
    if let Some(i) = &e.input {
        d.push(format!("input {}", i.short()));
    }
    if let Some(k) = &e.signer {
        d.push(format!("signed by {k}"));
    }
    if let Some(ep) = &e.epoch {
        d.push(format!("lease {}", ep.0));
    }
    if let Some(w) = &e.worker {
        d.push(format!("worker {w}"));
    }
    if let Some(o) = &e.output {
        d.push(format!("output {}", o.short()));
    }
    if let Some(r) = &e.result {
        d.push(format!("signed result {}", r.short()));
    }
    if let Some(r) = &e.reason {
        d.push(format!("reason {}", r.short()));
    }
    d.join(", ")
}
