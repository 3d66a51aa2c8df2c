//! The check every binary's help passes: each page, found by following the `Commands:`
//! section of each from `BIN --help`, ends with examples (in `-h` too), and every invocation
//! of the binary in them is one its own parser accepts. Run with `--help` added (before a
//! `--`), an example prints the help of a command that runs, with exit 0: so each
//! subcommand exists, each flag is that command's and each value parses, and nothing is
//! executed. A flag the usage line says is required is given, and each page shows its own
//! command at least once.

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

/// What [`check_examples`] went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walked {
    /// Help pages read.
    pub pages: usize,
    /// The longest subcommand path.
    pub deepest: usize,
}

/// Checks the help of the binary at `bin`, called `name` in its examples (`agx`). When
/// `root_runs`, the binary runs without a subcommand too (`agw`), so an example of it with
/// flags only is a command that runs.
pub fn check_examples(bin: &Path, name: &str, root_runs: bool) -> Result<Walked> {
    let mut pending = vec![Vec::<String>::new()];
    let mut walked = Walked { pages: 0, deepest: 0 };
    while let Some(path) = pending.pop() {
        let page = help_page(bin, &path, "--help")?;
        let shown: String = path.iter().fold(name.into(), |s, p| format!("{s} {p}"));
        walked.pages += 1;
        walked.deepest = walked.deepest.max(path.len());
        for sub in section(&page, "Commands:") {
            let Some(sub) = sub.split_whitespace().next() else { continue };
            if sub != "help" {
                pending.push(path.iter().cloned().chain([sub.to_string()]).collect());
            }
        }
        if !help_page(bin, &path, "-h")?.contains("\nExamples:\n") {
            bail!("{shown} -h has no examples");
        }
        let examples = section(&page, "Examples:");
        if examples.is_empty() {
            bail!("{shown} --help has no examples:\n{page}");
        }
        let mut own = 0;
        for line in examples.iter().filter(|l| !l.starts_with('#')) {
            for words in shell_commands(line) {
                // Variables set for the command (`AGQ_LOG=debug agq ...`) come first.
                let mut words =
                    words.into_iter().skip_while(|w| w.contains('=') && !w.starts_with('-'));
                if words.next().as_deref() != Some(name) {
                    continue;
                }
                let args: Vec<String> = words.take_while(|w| w != "--").collect();
                let parsed = help_page(bin, &args, "--help")?;
                let runs_at_root = root_runs && args.first().is_none_or(|a| a.starts_with('-'));
                let group = !section(&parsed, "Commands:").is_empty();
                if group && !runs_at_root {
                    bail!("in the help of {shown}, {line:?} names no command to run:\n{parsed}");
                }
                let Some(usage) = parsed.lines().find(|l| l.starts_with("Usage: ")) else {
                    bail!("{name} {args:?} --help has no usage line:\n{parsed}");
                };
                let words_of_usage: Vec<&str> = usage.split_whitespace().collect();
                for pair in words_of_usage.windows(2) {
                    if pair[0].starts_with("--")
                        && pair[1].starts_with('<')
                        && !args.iter().any(|a| a == pair[0])
                    {
                        bail!("in the help of {shown}, {line:?} lacks {} ({usage})", pair[0]);
                    }
                }
                let runs_this = usage.starts_with(&format!("Usage: {shown} "))
                    || (path.is_empty() && usage.starts_with(&format!("Usage: {name}")));
                own += usize::from(runs_this);
            }
        }
        if own == 0 {
            bail!("no example in the help of {shown} runs it:\n{}", examples.join("\n"));
        }
    }
    Ok(walked)
}

/// `BIN PATH... FLAG`: the help page, which must print with exit 0.
fn help_page(bin: &Path, path: &[String], flag: &str) -> Result<String> {
    let out = Command::new(bin).args(path).arg(flag).output()?;
    if out.status.code() != Some(0) {
        bail!(
            "{} {path:?} {flag}: exit {:?}: {}",
            bin.display(),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The lines of a help page's section `heading` (up to the next blank line), unindented.
fn section<'a>(page: &'a str, heading: &str) -> Vec<&'a str> {
    page.lines()
        .skip_while(|l| *l != heading)
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect()
}

/// The commands of an example line as a shell splits it, closely enough for examples:
/// words, with '...' and "..." quoting; `|`, `&&` and `;` between commands; what follows
/// `<` or `>` is where a stream goes, not an argument.
pub fn shell_commands(line: &str) -> Vec<Vec<String>> {
    let mut commands = vec![Vec::new()];
    let mut word: Option<String> = None;
    let mut redirected = false;
    // A word after `<` or `>` names a file, and is dropped.
    let end_word =
        |word: &mut Option<String>, commands: &mut Vec<Vec<String>>, redirected: bool| {
            if let Some(w) = word.take()
                && !redirected
                && let Some(c) = commands.last_mut()
            {
                c.push(w);
            }
        };
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                let w = word.get_or_insert_with(String::new);
                for d in chars.by_ref() {
                    if d == c {
                        break;
                    }
                    w.push(d);
                }
            }
            ' ' => end_word(&mut word, &mut commands, redirected),
            '|' | '&' | ';' => {
                end_word(&mut word, &mut commands, redirected);
                if commands.last().is_some_and(|c| !c.is_empty()) {
                    commands.push(Vec::new());
                }
                redirected = false;
            }
            '<' | '>' => {
                end_word(&mut word, &mut commands, redirected);
                redirected = true;
            }
            _ => word.get_or_insert_with(String::new).push(c),
        }
    }
    end_word(&mut word, &mut commands, redirected);
    commands.retain(|c| !c.is_empty());
    commands
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_lines_split_as_a_shell_splits_them() {
        assert_eq!(
            shell_commands(r#"echo hi | agx plan draft "a b" --out 'c d' > x.txt; agx au list"#),
            [
                vec!["echo", "hi"],
                vec!["agx", "plan", "draft", "a b", "--out", "c d"],
                vec!["agx", "au", "list"]
            ]
        );
        assert_eq!(
            shell_commands("agx au new s && cd s && ./build.sh"),
            [vec!["agx", "au", "new", "s"], vec!["cd", "s"], vec!["./build.sh"]]
        );
        assert_eq!(
            shell_commands("agx run p --input - < in.log"),
            [["agx", "run", "p", "--input", "-"]]
        );
    }
}
