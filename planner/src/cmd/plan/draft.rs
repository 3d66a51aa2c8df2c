//! `agx plan draft`: a plan from one sentence, drafted by a language model, checked, shown,
//! and written only once a person approves it.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use agenix_proto::wire::ClientRole;
use agenix_proto::{Access, Invalid, MountName, Plan, ToolName, Violation};
use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::args::parse_duration_between;
use crate::draft::{self, Ask, Catalog, Drafted, Llm, LlmConfig};
use crate::files::{Existing, same_file, write_atomic};
use crate::local::{StoreArg, runtime};
use crate::output::Out;
use crate::remote::QueueArgs;
use crate::show::render;

/// Draft a plan from REQUEST with a language model, check it, show it, and write it to
/// --out once approved.
///
/// The model is the one AGX_LLM_URL (an OpenAI-compatible base URL ending in /v1) and
/// AGX_LLM_MODEL name; a key, if the server needs one, comes from AGX_LLM_API_KEY or the
/// file AGX_LLM_API_KEY_FILE names. The model sees the store's AUs (their cards), the tools
/// and mounts offered here, the request and the input sample, and nothing else; whatever
/// it answers is checked against every rule of plan v1 and may use only those. A refused
/// draft is never written to --out: its violations are shown, and written beside it as
/// FILE.rejected.json. Nothing is signed or run.
#[derive(Debug, clap::Args)]
pub(crate) struct Draft {
    /// What the plan should do, in a sentence (at most 4096 bytes).
    #[arg(value_parser = parse_request)]
    request: String,
    /// A file whose start (16 KiB at most) shows the model what the input looks like.
    #[arg(long, value_name = "FILE")]
    input_sample: Option<PathBuf>,
    /// Where to write the plan once approved.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Approve without a prompt (the draft is still checked, and still shown).
    #[arg(long)]
    yes: bool,
    #[command(flatten)]
    offer: Offer,
    #[command(flatten)]
    store: StoreArg,
}

/// What a model is offered and how it is asked: shared by `plan draft` and `plan chat`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Offer {
    /// A native tool the model may use (repeat, or a comma-separated list). Only a hint:
    /// each worker's allowlist still decides what runs.
    #[arg(
        long = "tool",
        value_name = "NAME",
        env = "AGX_PLAN_TOOLS",
        value_delimiter = ',',
        value_parser = parse_offered_tool
    )]
    tools: Vec<ToolName>,
    /// Also offer every native tool the queue's registered workers advertise (`agx workers
    /// list`); the queue is reached as for `agx submit`.
    #[arg(long)]
    tools_from_queue: bool,
    #[command(flatten)]
    queue: QueueArgs,
    /// A mount the model may use, NAME[:ro|rw] (read-only unless :rw). Workers map names
    /// to directories.
    #[arg(long = "mount", value_name = "NAME[:ro|rw]", value_parser = parse_offered_mount)]
    mounts: Vec<(MountName, Access)>,
    /// How many times the model may be asked for one plan, its violations sent back each
    /// time (1 to 10).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=i64::from(draft::MAX_ATTEMPTS)))]
    attempts: u32,
    /// How long one answer may take (1s to 30m).
    #[arg(long, default_value = "120s", value_parser = parse_llm_timeout)]
    llm_timeout: Duration,
}

impl Offer {
    /// The model and the catalog, from the environment and the store.
    pub(crate) fn open(&self, store: &StoreArg) -> Result<(Llm, Catalog)> {
        let cfg = LlmConfig::from_env(self.llm_timeout)?;
        let mut tools = self.tools.clone();
        if self.tools_from_queue {
            tools.extend(self.advertised_tools()?);
        }
        tools.sort();
        tools.dedup();
        let catalog = Catalog::load(&store.open()?, &tools, &self.mounts)?;
        Ok((Llm::new(cfg), catalog))
    }

    /// The tools the queue's workers advertise. What a queue says is a hint like any other
    /// offer; a name no worker may run (a shell, an interpreter) is left out, and said.
    fn advertised_tools(&self) -> Result<Vec<ToolName>> {
        let workers = runtime()?.block_on(async {
            let c = self.queue.connect(ClientRole::Planner).await?;
            let listed = crate::cmd::workers::list_workers(&c).await;
            c.shutdown().await;
            listed
        })?;
        let mut tools = Vec::new();
        for t in workers.into_iter().flat_map(|w| w.capabilities.tools) {
            match agenix_host::native::forbidden(t.as_str()) {
                Some(what) => {
                    tracing::warn!(
                        "the queue lists a worker tool \"{t}\", which is {what}: not offered"
                    );
                }
                None => tools.push(t),
            }
        }
        Ok(tools)
    }

    /// Rounds per plan.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }
}

fn parse_llm_timeout(s: &str) -> Result<Duration, String> {
    parse_duration_between(s, Duration::from_secs(1), Duration::from_secs(30 * 60))
}

fn parse_request(s: &str) -> Result<String, String> {
    draft::prompt::check_request(s).map(|()| s.to_string()).map_err(|e| e.to_string())
}

/// A tool name, refused when it is one no plan may run.
fn parse_offered_tool(s: &str) -> Result<ToolName, String> {
    let name: ToolName = s.parse().map_err(|e| format!("{e}"))?;
    match agenix_host::native::forbidden(name.as_str()) {
        Some(what) => Err(format!("{name} is {what}; no plan may run it")),
        None => Ok(name),
    }
}

fn parse_offered_mount(s: &str) -> Result<(MountName, Access), String> {
    let (name, access) = match s.rsplit_once(':') {
        Some((name, "ro")) => (name, Access::ReadOnly),
        Some((name, "rw")) => (name, Access::ReadWrite),
        Some((_, other)) => return Err(format!("access {other:?} is neither ro nor rw")),
        None => (s, Access::ReadOnly),
    };
    Ok((name.parse().map_err(|e| format!("{e}"))?, access))
}

impl Draft {
    pub(crate) fn execute(self, out: Out) -> Result<ExitCode> {
        if let Some(out) = &self.out {
            // Said before the model is asked: what could not be written need not be drafted.
            crate::files::check_writable(out)?;
            if let Some(sample) = &self.input_sample
                && (same_file(out, sample) || same_file(&rejected_path(out), sample))
            {
                bail!(
                    "--out {} (or its {}) is the input sample: it would be replaced",
                    out.display(),
                    rejected_path(out).display()
                );
            }
        }
        if self.out.is_some() && !self.yes && !std::io::stdin().is_terminal() {
            // Said before the model is asked: nobody could approve what it answers.
            bail!(NO_APPROVER);
        }
        let (mut llm, catalog) = self.offer.open(&self.store)?;
        let sample = self.input_sample.as_deref().map(draft::read_sample).transpose()?;
        let ask = Ask { request: self.request.clone(), sample, ..Ask::default() };
        match draft::draft(&mut llm, &catalog, &ask, self.offer.attempts)? {
            Drafted::Valid { plan, attempts } => {
                out.emit(
                    "draft",
                    &json!({ "plan": plan, "attempts": attempts, "model": llm.model() }),
                    || {
                        let mut s = render(&plan);
                        s.push_str(&format!("valid: follows every rule ({})\n", rounds(attempts)));
                        if self.out.is_none() {
                            s.push_str(&format!("\n{}\n", pretty(&plan)));
                        }
                        s
                    },
                )?;
                if let Some(path) = &self.out {
                    let question = format!("write this plan to {}?", path.display());
                    approve(self.yes, &question, || render(&plan))?;
                    write_atomic(path, pretty(&plan).as_bytes(), 0o644, Existing::Replace)?;
                    // A refusal left by an earlier try no longer describes this file.
                    let _ = std::fs::remove_file(rejected_path(path));
                    out.emit("written", &json!({ "plan": path }), || {
                        format!(
                            "wrote {} (sign it with `agx plan sign {} --key KEY --out ENV`)",
                            path.display(),
                            path.display()
                        )
                    })?;
                }
                Ok(ExitCode::SUCCESS)
            }
            Drafted::Refused { answer, plan, violations, attempts } => {
                out.emit("refused", &json!({ "plan": plan, "answer": answer }), || {
                    show_refused(plan.as_ref(), &answer)
                })?;
                let beside = match &self.out {
                    Some(path) => {
                        let beside = rejected_path(path);
                        write_rejected(&beside, &answer, &violations)?;
                        format!("; the answer and its violations are in {}", beside.display())
                    }
                    None => String::new(),
                };
                let why = match Invalid::check(shown_violations(violations)) {
                    Err(inv) => anyhow::Error::new(inv),
                    Ok(()) => anyhow::anyhow!("refused"),
                };
                Err(why.context(format!(
                    "the model's plan was refused ({}), and nothing was written{beside}",
                    rounds(attempts)
                )))
            }
        }
    }
}

/// Lines of a refused draft shown on the terminal; the whole of it is in the refusal file.
const SHOWN_LINES: usize = 40;
/// Characters of one such line shown.
const SHOWN_LINE_CHARS: usize = 200;
/// Violations listed on the terminal.
const SHOWN_VIOLATIONS: usize = 50;

/// A refused draft for people: as a plan when it parsed as one, else the start of the
/// answer, made safe for a terminal, and bounded (a hostile answer can be megabytes).
pub(crate) fn show_refused(plan: Option<&Plan>, answer: &str) -> String {
    let (head, text) = match plan {
        Some(plan) => ("refused draft:", render(plan)),
        None => ("refused answer (not a plan):", agenix_proto::text::clean(answer).into_owned()),
    };
    let total = text.lines().count();
    let mut s = format!("{head}\n");
    for line in text.lines().take(SHOWN_LINES) {
        let short: String = line.chars().take(SHOWN_LINE_CHARS).collect();
        let cut = if short.len() < line.len() { " …" } else { "" };
        s.push_str(&format!("  {}{cut}\n", short.trim_start_matches(' ')));
    }
    if total > SHOWN_LINES {
        s.push_str(&format!("  … and {} more lines\n", total - SHOWN_LINES));
    }
    s
}

/// The violations shown on the terminal: the first [`SHOWN_VIOLATIONS`], and how many more.
pub(crate) fn shown_violations(mut v: Vec<Violation>) -> Vec<Violation> {
    if v.len() > SHOWN_VIOLATIONS {
        let more = v.len() - SHOWN_VIOLATIONS;
        v.truncate(SHOWN_VIOLATIONS);
        v.push(Violation::new(
            "",
            "more",
            format!("and {more} more violations (--out keeps them all in FILE.rejected.json)"),
        ));
    }
    v
}

pub(crate) fn rounds(n: u32) -> String {
    if n == 1 { "1 round".into() } else { format!("{n} rounds") }
}

/// A plan as written to a file: pretty JSON and a newline.
pub(crate) fn pretty(plan: &Plan) -> String {
    let mut s = serde_json::to_string_pretty(plan).unwrap_or_default();
    s.push('\n');
    s
}

/// Where a refused draft for `out` is kept: `plan.json` gives `plan.rejected.json`.
pub(crate) fn rejected_path(out: &Path) -> PathBuf {
    match out.extension() {
        Some(ext) if ext == "json" => out.with_extension("rejected.json"),
        _ => {
            let mut s = out.as_os_str().to_owned();
            s.push(".rejected.json");
            PathBuf::from(s)
        }
    }
}

/// Keeps a refused answer for a person to look at: the answer (as JSON when it is JSON)
/// and its violations. It is never a plan file: its top level is not a plan.
pub(crate) fn write_rejected(path: &Path, answer: &str, violations: &[Violation]) -> Result<()> {
    let answer = serde_json::from_str::<serde_json::Value>(answer.trim())
        .unwrap_or_else(|_| serde_json::Value::String(answer.to_string()));
    let doc = json!({ "refused": true, "answer": answer, "violations": violations });
    let mut text = serde_json::to_string_pretty(&doc)?;
    text.push('\n');
    write_atomic(path, text.as_bytes(), 0o644, Existing::Replace)
}

const NO_APPROVER: &str =
    "not approved: no terminal to ask on (pass --yes to approve without a prompt)";

/// Asks the person on the terminal, unless `yes`. Without a terminal and without `yes`,
/// nothing is approved.
///
/// What is approved must have been seen: when stdout is not the terminal (it was
/// redirected), `shown` is printed on stderr before the question.
pub(crate) fn approve(yes: bool, question: &str, shown: impl FnOnce() -> String) -> Result<()> {
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!(NO_APPROVER);
    }
    if !std::io::stdout().is_terminal() && !std::io::stderr().is_terminal() {
        bail!(
            "not approved: neither stdout nor stderr is a terminal, so the plan cannot be shown where it would be approved (pass --yes to approve without a prompt)"
        );
    }
    let mut err = std::io::stderr().lock();
    if !std::io::stdout().is_terminal() {
        err.write_all(shown().as_bytes())?;
    }
    write!(err, "{question} [y/N] ")?;
    err.flush()?;
    let mut line = String::new();
    stdin.lock().read_line(&mut line).context("cannot read the answer")?;
    if matches!(line.trim(), "y" | "Y" | "yes" | "Yes") {
        Ok(())
    } else {
        bail!("not approved: nothing was written")
    }
}
