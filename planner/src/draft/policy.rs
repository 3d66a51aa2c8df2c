//! What a drafted plan may hold, whatever the model says: the catalog (the AUs of the local
//! store, each locked to the store's digest), the tools and mounts the person offered, and
//! arguments that are argv, not a command line. Checked after, and with, the one validator.

use std::collections::{BTreeMap, BTreeSet};

use agenix_proto::plan::MAX_PLAN_BYTES;
use agenix_proto::{Access, AuName, Form, Limits, MountName, Plan, Run, ToolName, Violation};
use agenix_runtime::store::{LocalStore, NameEntry};
use anyhow::{Result, bail};

/// What a draft may use.
#[derive(Debug, Clone)]
pub(crate) struct Catalog {
    /// The store's AUs, by name.
    pub(crate) aus: BTreeMap<AuName, NameEntry>,
    /// Native tools the person offered (a hint: the worker's allowlist still decides).
    pub(crate) tools: BTreeSet<ToolName>,
    /// Mounts the person offered, with the most access a task may ask.
    pub(crate) mounts: BTreeMap<MountName, Access>,
}

impl Catalog {
    /// The store's AUs with the offered tools and mounts. The tools come already sifted:
    /// `--tool` refuses a shell, launcher or interpreter as it is parsed, and those a queue
    /// advertises are left out.
    pub(crate) fn load(
        store: &LocalStore,
        tools: &[ToolName],
        mounts: &[(MountName, Access)],
    ) -> Result<Self> {
        let aus: BTreeMap<_, _> = store.names()?.into_iter().collect();
        if aus.is_empty() && tools.is_empty() {
            bail!(
                "nothing to plan with: the store {} holds no AUs (add some with `agx au push`) \
                 and no native tools were offered (--tool NAME)",
                store.dir().display()
            );
        }
        let mut offered = BTreeMap::new();
        for (name, access) in mounts {
            if offered.insert(name.clone(), *access).is_some() {
                bail!("--mount {name} is given twice");
            }
        }
        Ok(Self { aus, tools: tools.iter().cloned().collect(), mounts: offered })
    }

    /// Checks a drafted plan against every rule of plan v1 and this catalog, then locks its
    /// AUs to the store's digests. Every violation is returned, each with its path.
    pub(crate) fn check(&self, plan: &mut Plan) -> Vec<Violation> {
        let mut v = match plan.validate(Form::Draft, &Limits::ABSOLUTE) {
            Ok(()) => Vec::new(),
            Err(inv) => inv.violations().to_vec(),
        };
        for (field, set) in [
            ("plan_id", plan.plan_id.is_some()),
            ("issued_at", plan.issued_at.is_some()),
            ("expires_at", plan.expires_at.is_some()),
        ] {
            if set {
                v.push(Violation::new(field, "draft-field", "set when signing, never by a draft"));
            }
        }
        for (i, task) in plan.tasks.iter_mut().enumerate() {
            let at = format!("tasks[{i}]");
            match &mut task.run {
                Run::Wasm(w) => match self.aus.get(&w.name) {
                    None => v.push(Violation::new(
                        format!("{at}.run.wasm.name"),
                        "catalog",
                        format!(
                            "AU \"{}\" is not in the catalog; use one of: {}",
                            w.name,
                            self.au_names()
                        ),
                    )),
                    Some(entry) if w.digest.is_some_and(|d| d != entry.digest) => {
                        v.push(Violation::new(
                            format!("{at}.run.wasm.digest"),
                            "catalog",
                            "digests come from the store: leave it out",
                        ))
                    }
                    Some(entry) => w.digest = Some(entry.digest),
                },
                Run::Native(n) => {
                    if let Some(what) = agenix_host::native::forbidden(n.tool.as_str()) {
                        v.push(Violation::new(
                            format!("{at}.run.native.tool"),
                            "tool-forbidden",
                            format!("\"{}\" is {what}: no plan may run it", n.tool),
                        ));
                    } else if !self.tools.contains(&n.tool) {
                        v.push(Violation::new(
                            format!("{at}.run.native.tool"),
                            "tool-offered",
                            format!(
                                "tool \"{}\" was not offered; use one of: {}",
                                n.tool,
                                self.tool_names()
                            ),
                        ));
                    }
                }
            }
            for (j, arg) in task.args.iter().enumerate() {
                if let Some(why) = shell_syntax(arg) {
                    v.push(Violation::new(format!("{at}.args[{j}]"), "argv-not-shell", why));
                }
            }
            for (name, value) in &task.env {
                if let Some(why) = shell_syntax(value) {
                    v.push(Violation::new(format!("{at}.env.{name}"), "argv-not-shell", why));
                }
            }
            for (j, m) in task.mounts.iter().enumerate() {
                match self.mounts.get(&m.name) {
                    None => v.push(Violation::new(
                        format!("{at}.mounts[{j}].name"),
                        "mount-offered",
                        format!(
                            "mount \"{}\" was not offered (offer it with --mount {})",
                            m.name, m.name
                        ),
                    )),
                    Some(Access::ReadOnly) if m.access == Access::ReadWrite => {
                        v.push(Violation::new(
                            format!("{at}.mounts[{j}].access"),
                            "mount-offered",
                            format!("mount \"{}\" was offered read-only", m.name),
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        if v.is_empty() {
            let size = crate::signing::signed_size(plan);
            if size > MAX_PLAN_BYTES {
                v.push(Violation::new(
                    "",
                    "size",
                    format!("signed it would be {size} bytes, over the limit of {MAX_PLAN_BYTES}"),
                ));
            }
        }
        v
    }

    fn au_names(&self) -> String {
        list(self.aus.keys().map(AuName::as_str))
    }

    fn tool_names(&self) -> String {
        list(self.tools.iter().map(ToolName::as_str))
    }
}

fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<_> = names.collect();
    if names.is_empty() { "(none)".into() } else { names.join(", ") }
}

/// Shell operators: an argument that is exactly one of these means the draft wrote a
/// command line and split it into words. Nothing reads a plan's arguments as a shell would.
const SHELL_OPERATORS: &[&str] = &[
    "|", "||", "|&", "&", "&&", ";", ";;", ">", ">>", "<", "<<", "<<<", "<>", "1>", "1>>", "2>",
    "2>>", "2>&1", "1>&2", ">&2", "2>&-", "&>", "&>>", ">&",
];

/// Why `arg` carries shell syntax, if it does: a whole argument that is a shell operator,
/// or a command substitution (backticks or `$(`). A program receives its arguments as they
/// are; a draft that needs a shell to mean what it says does not do what it claims.
pub(crate) fn shell_syntax(arg: &str) -> Option<String> {
    let word = arg.trim();
    let why = if SHELL_OPERATORS.contains(&word) {
        format!("{word:?} is a shell operator")
    } else if word.starts_with("<(") || word.starts_with(">(") {
        "a process substitution".into()
    } else if arg.contains('`') {
        "a backtick command substitution".into()
    } else if arg.contains("$(") {
        "a $(...) command substitution".into()
    } else {
        return None;
    };
    Some(format!(
        "{why}: arguments go to the program as they are, never through a shell; make each \
         step its own task, fed by the one before"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_syntax_is_told_from_program_text() {
        for arg in [
            "|",
            " && ",
            ";",
            "2>&1",
            ">&2",
            "1>&2",
            "<>",
            "<(ls)",
            "`id`",
            "$(curl x | sh)",
            "x$(id)",
        ] {
            assert!(shell_syntax(arg).is_some(), "{arg:?}");
        }
        // jq, grep and awk text that only looks like it.
        for arg in
            [".[] | select(.n > 3)", "reduce .[] as $x (0; . + $x)", "a|b", "$NF", "-c", "x > 1"]
        {
            assert_eq!(shell_syntax(arg), None, "{arg:?}");
        }
    }
}
