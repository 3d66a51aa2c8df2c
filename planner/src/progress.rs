//! The progress bar `agx jobs watch` and `agx submit --watch` draw while they wait: how many
//! of the jobs are finished, and how many are in each state.
//!
//! The bar is for a person at a terminal, so it is drawn on stderr (where cargo, curl and
//! wget draw theirs) and only when stderr is a terminal whose `TERM` is set and not `dumb`,
//! and never with `--json`. Results keep going to stdout exactly as without it: a pipe or a
//! file never receives a bar or an escape code, and without a terminal nothing of the bar
//! is written anywhere. It has no colour, so `NO_COLOR` has nothing to turn off.

use std::io::Write;
use std::time::Duration;

use agenix_proto::job::{JobRecord, JobState, StateKind};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output::Out;

/// What the bar shows: a spinner, the bar, how many jobs are finished and for how long they
/// have been watched, then the count in each state, cut to the terminal's width.
const TEMPLATE: &str = "{spinner} [{bar:30}] {pos}/{len} finished, {elapsed} · {wide_msg}";

/// How often the spinner and the elapsed time move between polls.
const TICK: Duration = Duration::from_millis(200);

/// The bar of one watch.
#[derive(Debug)]
pub(crate) struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar for `total` jobs, on stderr when a person can see it (see the module's notes).
    pub(crate) fn new(total: usize, out: Out) -> Self {
        let target =
            if out.json { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
        let p = Self::with_target(total, target);
        if !p.bar.is_hidden() {
            p.bar.enable_steady_tick(TICK);
        }
        p
    }

    fn with_target(total: usize, target: ProgressDrawTarget) -> Self {
        let style = ProgressStyle::with_template(TEMPLATE)
            // The template is a constant, parsed in a test; a bar without it still counts.
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ")
            .tick_chars("-\\|/ ");
        let bar = ProgressBar::with_draw_target(Some(total as u64), target)
            .with_style(style)
            .with_message("asking the queue");
        Self { bar }
    }

    /// Shows where `jobs` stand.
    pub(crate) fn update(&self, jobs: &[JobRecord]) {
        self.show(jobs.iter().map(|j| &j.state));
    }

    fn show<'a>(&self, states: impl Iterator<Item = &'a JobState> + Clone) {
        let finished = states.clone().filter(|s| s.is_terminal()).count();
        self.bar.set_message(by_state(states.map(JobState::kind)));
        self.bar.set_position(finished as u64);
    }

    /// Writes `line` on stderr, above the bar when there is one.
    pub(crate) fn say(&self, line: &str) {
        self.bar.suspend(|| {
            let _ = writeln!(std::io::stderr(), "{line}");
        });
    }

    /// Replaces the bar with a line saying where the jobs ended, before the results are
    /// printed.
    pub(crate) fn finish(&self) {
        self.finish_on(&mut std::io::stderr());
    }

    fn finish_on(&self, w: &mut impl Write) {
        if self.bar.is_finished() {
            return;
        }
        let shown = !self.bar.is_hidden();
        let elapsed = Duration::from_secs(self.bar.elapsed().as_secs());
        let line = format!(
            "{}/{} finished in {} · {}",
            self.bar.position(),
            self.bar.length().unwrap_or(0),
            humantime::format_duration(elapsed),
            self.bar.message()
        );
        // Cleared rather than left: the line after a bar indicatif leaves starts only where
        // the terminal wraps, and its width can be unknown.
        self.bar.finish_and_clear();
        if shown {
            let _ = writeln!(w, "{line}");
        }
    }
}

impl Drop for Progress {
    /// Ends the bar where it stands when the watch ends early (an error from the queue).
    fn drop(&mut self) {
        self.finish();
    }
}

/// How many jobs are in each state that has any, in the order a job goes through them:
/// `2 queued · 1 leased · 5 succeeded · 1 dead`.
fn by_state(states: impl Iterator<Item = StateKind>) -> String {
    let mut counts = [0usize; StateKind::ALL.len()];
    for s in states {
        if let Some(i) = StateKind::ALL.iter().position(|k| *k == s) {
            counts[i] += 1;
        }
    }
    let shown: Vec<String> = StateKind::ALL
        .iter()
        .zip(counts)
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{n} {}", k.name()))
        .collect();
    shown.join(" · ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

    use std::io;
    use std::sync::{Arc, Mutex};

    use indicatif::TermLike;

    use super::*;

    #[test]
    fn the_template_parses() {
        ProgressStyle::with_template(TEMPLATE).unwrap();
    }

    #[test]
    fn counts_follow_the_order_of_states_and_skip_empty_ones() {
        use StateKind::*;
        let states = [Dead, Succeeded, Queued, Succeeded, Leased, Succeeded];
        assert_eq!(by_state(states.into_iter()), "1 queued · 1 leased · 3 succeeded · 1 dead");
        assert_eq!(by_state([Cancelled].into_iter()), "1 cancelled");
        assert_eq!(by_state(std::iter::empty()), "");
    }

    #[test]
    fn with_json_nothing_is_drawn() {
        let p = Progress::new(3, Out { json: true });
        assert!(p.bar.is_hidden());
    }

    /// A terminal 100 columns wide that keeps what is written to it.
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<String>>);

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            100
        }
        fn move_cursor_up(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> io::Result<()> {
            self.write_str(&format!("{s}\n"))
        }
        fn write_str(&self, s: &str) -> io::Result<()> {
            self.0.lock().unwrap().push_str(s);
            Ok(())
        }
        fn clear_line(&self) -> io::Result<()> {
            self.write_str("\r")
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_terminal_sees_how_many_are_finished_and_each_state() {
        let screen = Screen::default();
        let p = Progress::with_target(4, ProgressDrawTarget::term_like(Box::new(screen.clone())));
        let queued = JobState::Queued { not_before: 0 };
        let dead = JobState::Dead { reason: "out of attempts".into() };
        p.show([&queued, &queued, &JobState::Succeeded, &dead].into_iter());
        let mut after = Vec::new();
        p.finish_on(&mut after);
        let shown = screen.0.lock().unwrap().clone();
        assert!(
            shown.contains("] 2/4 finished, 0s · 2 queued · 1 succeeded · 1 dead"),
            "{shown:?}"
        );
        assert!(shown.contains("[===============>"), "{shown:?}");
        assert!(shown.ends_with("\r"), "the bar is cleared at the end: {shown:?}");
        let after = String::from_utf8(after).unwrap();
        assert_eq!(after, "2/4 finished in 0s · 2 queued · 1 succeeded · 1 dead\n");
    }
}
