//! Plans for people: the tasks as a DAG (what runs, with which arguments, fed by what), and
//! what changed between two drafts. Everything shown is made safe for a terminal first:
//! a plan's free text (its description, its arguments) is whoever wrote it.

use agenix_proto::text::clean;
use agenix_proto::{Plan, Run, Stdin};

/// One line per task (its id, what runs, what feeds its stdin, and whether it is the
/// output), then everything else that changes what it does: its arguments, environment,
/// limits, mounts and whether it has a `/tmp`.
pub(crate) fn describe_tasks(plan: &Plan) -> String {
    let mut s = String::new();
    for t in &plan.tasks {
        let run = match &t.run {
            Run::Wasm(w) => match w.digest {
                Some(d) => format!("wasm {}@{}", w.name, d.short()),
                None => format!("wasm {} (unlocked)", w.name),
            },
            Run::Native(n) => format!("native {}", n.tool),
        };
        let stdin = match &t.stdin {
            None => "(empty)".to_string(),
            Some(Stdin::Input(_)) => "input".to_string(),
            Some(Stdin::Task(id)) => id.to_string(),
            Some(Stdin::Tasks(ids)) => {
                ids.iter().map(ToString::to_string).collect::<Vec<_>>().join("+")
            }
        };
        let marker = if t.id == plan.output { " -> output" } else { "" };
        s.push_str(&format!("  {:<16} {:<32} < {}{}\n", t.id.as_str(), run, stdin, marker));
        if !t.args.is_empty() {
            s.push_str(&format!("  {:<16} args {:?}\n", "", t.args));
        }
        for (name, value) in &t.env {
            s.push_str(&format!("  {:<16} env {name:?}={value:?}\n", ""));
        }
        let limits: Vec<String> = t
            .limits
            .fields()
            .into_iter()
            .filter_map(|(name, v)| {
                v.map(|v| format!("{name}={}", agenix_proto::limits::show_limit(name, v)))
            })
            .collect();
        if !limits.is_empty() {
            s.push_str(&format!("  {:<16} limits {}\n", "", limits.join(" ")));
        }
        for m in &t.mounts {
            let access = match m.access {
                agenix_proto::Access::ReadOnly => "ro",
                agenix_proto::Access::ReadWrite => "rw",
            };
            s.push_str(&format!("  {:<16} mount {} at {} ({access})\n", "", m.name, m.path));
        }
        if !t.scratch {
            s.push_str(&format!("  {:<16} no /tmp\n", ""));
        }
    }
    s
}

/// A plan as a person reviews it: its name and description, then its tasks.
pub(crate) fn render(plan: &Plan) -> String {
    let mut s = format!("plan \"{}\" ({} tasks)\n", plan.name, plan.tasks.len());
    if !plan.description.is_empty() {
        s.push_str(&format!("  {}\n", one_line(&plan.description)));
    }
    s.push_str(&describe_tasks(plan));
    clean(&s).into_owned()
}

/// What changed from `old` to `new`, line by line as [`render`] shows them: `-` before what
/// went, `+` before what came, two spaces before what stayed.
pub(crate) fn diff(old: &Plan, new: &Plan) -> String {
    let (old, new) = (render(old), render(new));
    let mut s = String::new();
    for change in similar::TextDiff::from_lines(&old, &new).iter_all_changes() {
        let sign = match change.tag() {
            similar::ChangeTag::Delete => "-",
            similar::ChangeTag::Insert => "+",
            similar::ChangeTag::Equal => " ",
        };
        s.push_str(sign);
        s.push_str(change.value());
        if !change.value().ends_with('\n') {
            s.push('\n');
        }
    }
    s
}

/// `s` made safe for a terminal and kept on one line: a newline or tab shows as `\n` or
/// `\t`, so text from elsewhere cannot add lines that look like agx's own.
pub(crate) fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in clean(s).chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            // Line and paragraph separators, and characters that show as nothing.
            '\u{2028}' | '\u{2029}' | '\u{200b}' | '\u{feff}' | '\u{ad}' => {
                out.push_str(&c.escape_unicode().to_string());
            }
            c => out.push(c),
        }
    }
    out
}
