//! `agx plan chat`: refine a plan in steps with a language model. Each step is checked and
//! shown as a diff against the plan before it; commands run the plan here, save it, sign it
//! and submit it, through the same code as `agx run`, `agx plan sign` and `agx submit`.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agenix_proto::Plan;
use anyhow::{Context, Result, bail};
use clap::Parser;

use super::draft::{Offer, pretty, rounds, show_refused, shown_violations};
use crate::draft::{self, Ask, Catalog, Drafted, Llm, LlmConfig};
use crate::files::{Existing, write_atomic};
use crate::local::StoreArg;
use crate::output::Out;
use crate::show::{diff, render};

/// Most bytes of one line read from a pipe (a terminal's lines are typed).
const MAX_LINE_BYTES: usize = 64 * 1024;
/// Most lines kept in the history file.
const HISTORY_LINES: usize = 1000;

const HELP: &str = "\
Say what the plan should do, or how to change it (\"also count by hour\", \"drop the sort\").
Each answer is checked against every rule and shown as a diff; a refused one changes nothing.
  /show            the plan as it stands
  /json            the plan as JSON
  /undo            back to the plan before the last change
  /save FILE       write the plan to FILE
  /run ARGS        run it here, unsigned: ARGS as for `agx run` (--input FILE, --mount, ...)
  /sign ARGS       sign it: ARGS as for `agx plan sign` (--key FILE --out ENV)
  /submit ARGS     sign and submit it: ARGS as for `agx submit` (--queue, --key, --input, ...)
  /help            this
  /quit            leave (so does end of input)
Arguments are split at spaces (no quoting).";

/// Refine a plan with a language model, a step at a time: each step checked and shown, with
/// commands to run it here, sign it and submit it.
///
/// The model is configured as for `agx plan draft` (AGX_LLM_URL, AGX_LLM_MODEL, and a key
/// in AGX_LLM_API_KEY or AGX_LLM_API_KEY_FILE if the server needs one). On a terminal,
/// lines can be edited and earlier ones recalled; they are kept in
/// $XDG_STATE_HOME/agenix/chat-history (mode 600) unless --no-history.
#[derive(Debug, clap::Args)]
pub(crate) struct Chat {
    /// A plan file to start from.
    plan: Option<PathBuf>,
    /// A file whose start (16 KiB at most) shows the model what the input looks like.
    #[arg(long, value_name = "FILE")]
    input_sample: Option<PathBuf>,
    /// Keep no history file.
    #[arg(long)]
    no_history: bool,
    #[command(flatten)]
    offer: Offer,
    #[command(flatten)]
    store: StoreArg,
}

/// What `/run`, `/sign` and `/submit` stand for.
#[derive(Debug, Parser)]
#[command(no_binary_name = true, disable_help_subcommand = true, name = "/")]
enum Step {
    Run(crate::cmd::run::RunPlan),
    Sign(super::Sign),
    Submit(crate::cmd::submit::Submit),
}

struct Session {
    /// The client; away while a request is in flight (on the thread that makes it).
    llm: Option<Llm>,
    /// To make a new client when a request in flight is abandoned.
    llm_config: LlmConfig,
    catalog: Catalog,
    attempts: u32,
    sample: Option<(String, bool)>,
    /// The input sample's file, which nothing here may replace.
    sample_path: Option<PathBuf>,
    store: StoreArg,
    /// The plan as it stands.
    current: Option<Plan>,
    /// The requests that made it, oldest first.
    requests: Vec<String>,
    /// What `/undo` goes back to: earlier plans, with how many requests made each.
    undo: Vec<(Option<Plan>, usize)>,
}

impl Chat {
    pub(crate) fn execute(self, out: Out) -> Result<ExitCode> {
        if out.json {
            bail!("agx plan chat talks with a person: --json is for `agx plan draft`");
        }
        let (llm, catalog) = self.offer.open(&self.store)?;
        let current = match &self.plan {
            Some(path) => {
                let mut plan = crate::signing::load_plan(path)?;
                agenix_proto::Invalid::check(catalog.check(&mut plan)).with_context(|| {
                    format!("{} cannot be refined with this catalog", path.display())
                })?;
                Some(plan)
            }
            None => None,
        };
        run_session(self, llm, catalog, current)
    }
}

fn run_session(chat: Chat, llm: Llm, catalog: Catalog, current: Option<Plan>) -> Result<ExitCode> {
    let sample = chat.input_sample.as_deref().map(draft::read_sample).transpose()?;
    let mut s = Session {
        llm_config: llm.config().clone(),
        llm: Some(llm),
        catalog,
        attempts: chat.offer.attempts(),
        sample,
        sample_path: chat.input_sample.clone(),
        store: chat.store.clone(),
        current,
        requests: Vec::new(),
        undo: Vec::new(),
    };
    match &s.current {
        Some(plan) => say(&render(plan))?,
        None => say("Say what the plan should do; /help lists the commands.")?,
    }
    let history = if chat.no_history { None } else { history_file() };
    let mut lines = Lines::new(history)?;
    // From a pipe, a session that did not do everything it was asked ends with exit 1, so
    // that a script can tell; a person at a terminal saw each failure as it came.
    let scripted = matches!(lines, Lines::Pipe(_));
    let mut failed = false;
    while let Some(line) = lines.next()? {
        // A line that cannot be read is said, and the session goes on.
        let line = match line {
            Ok(line) => line,
            Err(why) => {
                crate::report(Out { json: false }, &anyhow::anyhow!(why));
                failed = true;
                continue;
            }
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match s.step(line) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e)
                if e.chain().any(|c| {
                    c.downcast_ref::<std::io::Error>().is_some_and(crate::output::is_broken_pipe)
                }) =>
            {
                return Err(e);
            }
            Err(e) => {
                crate::report(Out { json: false }, &e);
                failed = true;
            }
        }
    }
    lines.save();
    Ok(if scripted && failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

impl Session {
    /// Does what one line says; false to leave.
    fn step(&mut self, line: &str) -> Result<bool> {
        let Some(command) = line.strip_prefix('/') else {
            self.revise(line)?;
            return Ok(true);
        };
        let mut words = command.split_whitespace();
        let name = words.next().unwrap_or_default();
        let rest: Vec<&str> = words.collect();
        match (name, rest.as_slice()) {
            ("quit" | "exit" | "q", []) => return Ok(false),
            ("help" | "h" | "?", []) => say(HELP)?,
            ("show", []) => say(&render(self.plan()?))?,
            ("json", []) => say(&pretty(self.plan()?))?,
            ("undo", []) => match self.undo.pop() {
                Some((plan, made_by)) => {
                    let was = self.current.take();
                    self.requests.truncate(made_by);
                    self.current = plan;
                    match (&was, &self.current) {
                        (Some(a), Some(b)) => say(&diff(a, b))?,
                        _ => say("back to no plan")?,
                    }
                }
                None => bail!("nothing to undo"),
            },
            ("save", [file]) => {
                if let Some(sample) = &self.sample_path
                    && crate::files::same_file(Path::new(file), sample)
                {
                    bail!("{file} is the input sample: /save would replace it");
                }
                write_atomic(
                    Path::new(file),
                    pretty(self.plan()?).as_bytes(),
                    0o644,
                    Existing::Replace,
                )?;
                say(&format!("wrote {file}"))?;
            }
            ("run" | "sign" | "submit", args) => return self.command(name, args).map(|()| true),
            _ => bail!("/{name}: not a command, or not with these arguments (/help lists them)"),
        }
        Ok(true)
    }

    fn plan(&self) -> Result<&Plan> {
        self.current.as_ref().context("no plan yet: say what it should do")
    }

    /// Asks for the plan as changed by `request`; shows the change, or why it was refused.
    fn revise(&mut self, request: &str) -> Result<()> {
        let ask = Ask {
            request: request.to_string(),
            earlier: recent(&self.requests),
            sample: self.sample.clone(),
            current: self.current.clone(),
        };
        match self.ask_model(ask)? {
            Drafted::Valid { plan, attempts } => {
                let shown = match &self.current {
                    Some(before) if *before == plan => "(no change)\n".to_string(),
                    Some(before) => diff(before, &plan),
                    None => render(&plan),
                };
                say(&format!("{shown}valid ({})", rounds(attempts)))?;
                self.undo.push((self.current.take(), self.requests.len()));
                self.requests.push(request.to_string());
                self.current = Some(plan);
            }
            Drafted::Refused { answer, plan, violations, attempts } => {
                say(&show_refused(plan.as_ref(), &answer))?;
                let inv = agenix_proto::Invalid::check(shown_violations(violations)).err();
                bail!(
                    "refused ({}); the plan is unchanged:\n{}",
                    rounds(attempts),
                    inv.map(|i| i.to_string()).unwrap_or_default()
                );
            }
        }
        Ok(())
    }

    /// Asks the model on a thread of its own, so that Ctrl-C (SIGINT) abandons the request
    /// and keeps the session, its plan and its history. An abandoned request ends on its
    /// own at its timeout; its answer, if any comes, is dropped.
    fn ask_model(&mut self, ask: Ask) -> Result<Drafted> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::mpsc::RecvTimeoutError;
        let interrupted = std::sync::Arc::new(AtomicBool::new(false));
        let handler = signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted.clone())
            .context("cannot watch for Ctrl-C")?;
        let mut llm = self.llm.take().unwrap_or_else(|| Llm::new(self.llm_config.clone()));
        let (catalog, attempts) = (self.catalog.clone(), self.attempts);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let drafted = draft::draft(&mut llm, &catalog, &ask, attempts);
            let _ = tx.send((llm, drafted));
        });
        let outcome = loop {
            match rx.recv_timeout(std::time::Duration::from_millis(50)) {
                Ok((llm, drafted)) => {
                    self.llm = Some(llm);
                    break Some(drafted);
                }
                Err(RecvTimeoutError::Timeout) if interrupted.load(Ordering::Relaxed) => {
                    break None;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    break Some(Err(anyhow::anyhow!(
                        "the request to the model ended without an answer"
                    )));
                }
            }
        };
        signal_hook::low_level::unregister(handler);
        outcome.unwrap_or_else(|| {
            bail!("interrupted: the request to the model was abandoned; the plan is unchanged")
        })
    }

    /// `/run`, `/sign` or `/submit`: the plan written to a file, then the same command as
    /// on the command line.
    fn command(&self, name: &str, args: &[&str]) -> Result<()> {
        let plan = self.plan()?;
        // The conversation is stdin: a job's input cannot come from it too.
        if args.windows(2).any(|w| w[0] == "--input" && matches!(w[1], "-" | "/dev/stdin")) {
            bail!("/{name} --input -: standard input is this conversation; name a file");
        }
        // Removed when the command ends.
        let scratch = tempfile::Builder::new().prefix("agx-chat-").tempdir()?;
        let file = scratch.path().join(format!("{}.json", plan.name));
        write_atomic(&file, pretty(plan).as_bytes(), 0o600, Existing::Replace)?;
        let file = file.to_string_lossy().into_owned();
        let mut words = vec![name, file.as_str()];
        if name == "run" {
            words.push("--unsigned");
        }
        words.extend_from_slice(args);
        let store = self.store.path_arg();
        if let Some(dir) = &store {
            words.extend(["--store", dir.as_str()]);
        }
        let step = match Step::try_parse_from(&words) {
            Ok(step) => step,
            Err(e) => bail!("{}", e.render().to_string().trim_end()),
        };
        let out = Out { json: false };
        let code = match step {
            Step::Run(c) => c.execute(out)?,
            Step::Sign(c) => c.execute(out)?,
            Step::Submit(c) => c.execute(out)?,
        };
        if code != ExitCode::SUCCESS {
            say(&format!("/{name} did not succeed"))?;
        }
        Ok(())
    }
}

/// Prints a line (or lines) on stdout; a closed stdout is an error.
fn say(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        stdout.write_all(b"\n")?;
    }
    stdout.flush()?;
    Ok(())
}

/// `$XDG_STATE_HOME/agenix/chat-history`, else `~/.local/state/agenix/chat-history`.
fn history_file() -> Option<PathBuf> {
    let base = match (std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME")) {
        (Some(v), _) if !v.is_empty() => PathBuf::from(v),
        (_, Some(home)) if !home.is_empty() => PathBuf::from(home).join(".local/state"),
        _ => return None,
    };
    Some(base.join("agenix/chat-history"))
}

/// Where lines come from: an editor with history on a terminal, else a pipe read line by
/// line, each at most [`MAX_LINE_BYTES`].
enum Lines {
    Terminal { editor: Box<rustyline::DefaultEditor>, history: Option<PathBuf> },
    Pipe(std::io::StdinLock<'static>),
}

impl Lines {
    fn new(history: Option<PathBuf>) -> Result<Self> {
        if !std::io::stdin().is_terminal() {
            return Ok(Self::Pipe(std::io::stdin().lock()));
        }
        let config = rustyline::Config::builder()
            .max_history_size(HISTORY_LINES)
            .context("cannot set up line editing")?
            .auto_add_history(true)
            .build();
        let mut editor =
            rustyline::DefaultEditor::with_config(config).context("cannot set up line editing")?;
        let history = history.filter(|path| match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.is_file() => {
                tracing::warn!(
                    "{} is not a regular file: no history is read or kept",
                    path.display()
                );
                false
            }
            _ => true,
        });
        if let Some(path) = &history {
            let _ = editor.load_history(path);
        }
        Ok(Self::Terminal { editor: Box::new(editor), history })
    }

    /// The next line (or why it cannot be read), or None at the end of input.
    fn next(&mut self) -> Result<Option<Result<String, String>>> {
        match self {
            Self::Terminal { editor, .. } => loop {
                match editor.readline("plan> ") {
                    Ok(line) => return Ok(Some(Ok(line))),
                    // Ctrl-C drops the line being typed; Ctrl-D leaves.
                    Err(rustyline::error::ReadlineError::Interrupted) => continue,
                    Err(rustyline::error::ReadlineError::Eof) => return Ok(None),
                    Err(e) => return Err(e).context("cannot read a line"),
                }
            },
            Self::Pipe(stdin) => {
                let mut line = Vec::new();
                let n = Read::take(&mut *stdin, MAX_LINE_BYTES as u64 + 1)
                    .read_until(b'\n', &mut line)
                    .context("cannot read a line")?;
                if n == 0 {
                    return Ok(None);
                }
                if line.len() > MAX_LINE_BYTES && !line.ends_with(b"\n") {
                    // Skip the rest of it, a bounded piece at a time.
                    let mut rest = Vec::new();
                    loop {
                        rest.clear();
                        let n = Read::take(&mut *stdin, MAX_LINE_BYTES as u64)
                            .read_until(b'\n', &mut rest)
                            .context("cannot read a line")?;
                        if n == 0 || rest.ends_with(b"\n") {
                            break;
                        }
                    }
                    return Ok(Some(Err(format!(
                        "a line of input is over {MAX_LINE_BYTES} bytes: skipped"
                    ))));
                }
                Ok(Some(
                    String::from_utf8(line)
                        .map_err(|_| "a line of input is not UTF-8: skipped".to_string()),
                ))
            }
        }
    }

    /// Keeps the history (mode 600: requests can say private things); a failure is said,
    /// not fatal.
    fn save(&mut self) {
        if let Self::Terminal { editor, history: Some(path) } = self {
            use std::os::unix::fs::PermissionsExt;
            let path = &*path;
            // Never through a link planted since it was read, nor into anything but a file.
            if std::fs::symlink_metadata(path).is_ok_and(|m| !m.is_file()) {
                tracing::warn!("{} is not a regular file: the history is not kept", path.display());
                return;
            }
            let saved = path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .map_err(anyhow::Error::from)
                .and_then(|()| editor.save_history(path).map_err(anyhow::Error::from))
                .and_then(|()| {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                        .map_err(anyhow::Error::from)
                });
            if let Err(e) = saved {
                tracing::warn!("cannot keep the history in {}: {e:#}", path.display());
            }
        }
    }
}

/// Most bytes of earlier requests sent with a revision: the newest that fit.
const EARLIER_BYTES: usize = 16 * 1024;

/// The newest of `requests` that fit in [`EARLIER_BYTES`], oldest first.
fn recent(requests: &[String]) -> Vec<String> {
    let mut total = 0;
    let mut kept: Vec<String> = requests
        .iter()
        .rev()
        .take_while(|r| {
            total += r.len();
            total <= EARLIER_BYTES
        })
        .cloned()
        .collect();
    kept.reverse();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earlier_requests_are_the_newest_that_fit() {
        let r = |n: usize, c: char| c.to_string().repeat(n);
        let all = vec![r(10, 'a'), r(EARLIER_BYTES - 10, 'b'), r(10, 'c')];
        // The newest two fill the budget exactly; the oldest is dropped.
        assert_eq!(recent(&all), vec![r(EARLIER_BYTES - 10, 'b'), r(10, 'c')]);
        let over = vec![r(1, 'a'), r(EARLIER_BYTES, 'b')];
        assert_eq!(recent(&over), vec![r(EARLIER_BYTES, 'b')]);
        assert!(recent(&[r(EARLIER_BYTES + 1, 'x')]).is_empty());
    }
}
