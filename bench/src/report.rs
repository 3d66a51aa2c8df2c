//! Figures and how they are written: the median with min–max over the runs, as Markdown.

use std::fmt::Write as _;
use std::time::Duration;

/// What a figure's values are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// Milliseconds (lower is better).
    Ms,
    /// Operations per second (higher is better).
    PerSec,
    /// Megabytes per second (higher is better).
    MbPerSec,
    /// Mebibytes (lower is better).
    MiB,
}

impl Unit {
    fn suffix(self) -> &'static str {
        match self {
            Self::Ms => "ms",
            Self::PerSec => "/s",
            Self::MbPerSec => "MB/s",
            Self::MiB => "MiB",
        }
    }
}

/// One measured figure: a value per run.
#[derive(Debug, Clone)]
pub(crate) struct Figure {
    /// What was measured, for people.
    pub(crate) what: String,
    /// One value per run.
    pub(crate) values: Vec<f64>,
    /// Their unit.
    pub(crate) unit: Unit,
}

impl Figure {
    /// A figure from per-run durations, in milliseconds.
    pub(crate) fn ms(what: impl Into<String>, runs: &[Duration]) -> Self {
        Self {
            what: what.into(),
            values: runs.iter().map(|d| d.as_secs_f64() * 1000.0).collect(),
            unit: Unit::Ms,
        }
    }

    /// A figure from per-run rates.
    pub(crate) fn rate(what: impl Into<String>, values: Vec<f64>, unit: Unit) -> Self {
        Self { what: what.into(), values, unit }
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    /// The median (the lower middle value for an even count).
    pub(crate) fn median(&self) -> f64 {
        let v = self.sorted();
        v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(f64::NAN)
    }
}

fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// A section of the report: a heading, an explanation, rows and notes.
#[derive(Debug, Default)]
pub(crate) struct Section {
    title: String,
    intro: String,
    rows: Vec<Row>,
    notes: Vec<String>,
    commands: Vec<String>,
}

#[derive(Debug)]
enum Row {
    Figure(Figure),
    Skipped { what: String, why: String },
}

impl Section {
    /// A new section.
    pub(crate) fn new(title: &str, intro: &str) -> Self {
        Self { title: title.into(), intro: intro.into(), ..Self::default() }
    }

    /// Adds a figure, and prints it at once (long runs show progress).
    pub(crate) fn add(&mut self, f: Figure) {
        eprintln!("  {}: {} {}", f.what, num(f.median()), f.unit.suffix());
        self.rows.push(Row::Figure(f));
    }

    /// Records that a figure could not be measured here, and why.
    pub(crate) fn skip(&mut self, what: impl Into<String>, why: impl Into<String>) {
        let (what, why) = (what.into(), why.into());
        eprintln!("  {what}: skipped: {why}");
        self.rows.push(Row::Skipped { what, why });
    }

    /// Adds a line under the table.
    pub(crate) fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// Records a command the figures come from (once, however often it ran).
    pub(crate) fn command(&mut self, line: impl Into<String>) {
        let line = line.into();
        if !self.commands.contains(&line) {
            self.commands.push(line);
        }
    }

    /// The section as Markdown.
    pub(crate) fn markdown(&self) -> String {
        let mut s = format!("## {}\n\n{}\n\n", self.title, self.intro);
        s.push_str("| figure | median | min – max | runs |\n|---|---:|---:|---:|\n");
        for r in &self.rows {
            match r {
                Row::Figure(f) => {
                    let v = f.sorted();
                    let (lo, hi) = (v.first().copied(), v.last().copied());
                    let _ = writeln!(
                        s,
                        "| {} | {} {} | {} – {} | {} |",
                        f.what,
                        num(f.median()),
                        f.unit.suffix(),
                        lo.map_or_else(String::new, num),
                        hi.map_or_else(String::new, num),
                        v.len()
                    );
                }
                Row::Skipped { what, why } => {
                    let _ = writeln!(s, "| {what} | not measured: {why} | | |");
                }
            }
        }
        for n in &self.notes {
            let _ = write!(s, "\n{n}\n");
        }
        if !self.commands.is_empty() {
            let _ = write!(s, "\nWhat ran:\n\n```sh\n{}\n```\n", self.commands.join("\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_and_max_come_from_the_sorted_runs() {
        let f = Figure::rate("x", vec![5.0, 1.0, 3.0, 2.0, 4.0], Unit::PerSec);
        assert_eq!(f.median(), 3.0);
        let mut s = Section::new("t", "i");
        s.add(f);
        assert!(s.markdown().contains("| x | 3.00 /s | 1.00 – 5.00 | 5 |"), "{}", s.markdown());
    }
}
