//! The jobs this worker has run, remembered on disk until their actions expire, so that a
//! queue handing out the same job again (by mistake, or to make a job with side effects run
//! twice) gets it declined, also after the worker restarts.
//!
//! A job is named by what a trusted signer signed: the digest of its action's payload and
//! the index of its input. One line of JSON per job, appended and synced before the job
//! runs, and a second one (`done`) once it has run; entries past their expiry are dropped
//! when the file is opened again and when it is rewritten (each time it has grown by as
//! many lines as it held, and at least 1024).
//!
//! A job that was running when a previous process of this worker stopped (its first line
//! without its second) is `Interrupted`: the worker runs it again only if it changes
//! nothing outside its sandbox (`Worker::mark_active`). Otherwise a job whose every
//! worker crashed while running it could never run anywhere.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use agenix_proto::Digest;
use serde::{Deserialize, Serialize};

/// One job: its action's payload digest and its input index.
pub type JobKey = (Digest, u32);

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    action: Digest,
    input: u32,
    /// Unix seconds after which no verifier accepts the action.
    until: u64,
    /// It has run (it was not cut short by the worker stopping).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    done: bool,
}

/// What the ledger knows of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ran {
    /// It never ran here.
    No,
    /// It ran here, or is running now.
    Yes,
    /// It was running here when an earlier process of this worker stopped.
    Interrupted,
}

/// A job's entry: until when it is remembered, whether it ran to its end, and whether an
/// earlier process started it.
#[derive(Debug, Clone, Copy)]
struct Live {
    until: u64,
    done: bool,
    earlier: bool,
}

/// The ledger.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    file: File,
    live: HashMap<JobKey, Live>,
    lines: usize,
    compact_at: usize,
}

impl Ledger {
    /// Opens (or creates) the ledger at `path`, at `now` (Unix seconds). Lines that cannot
    /// be read (a write cut short by a crash) are skipped.
    pub fn open(path: &Path, now: u64) -> std::io::Result<Self> {
        let mut live: HashMap<JobKey, Live> = HashMap::new();
        if let Ok(f) = File::open(path) {
            for line in BufReader::new(f).lines() {
                let Ok(e) = serde_json::from_str::<Entry>(&line?) else { continue };
                if e.until >= now {
                    let entry = live.entry((e.action, e.input)).or_insert(Live {
                        until: e.until,
                        done: false,
                        earlier: true,
                    });
                    entry.done |= e.done;
                }
            }
        }
        let file = rewrite(path, &live)?;
        let lines = live.len();
        Ok(Self { path: path.to_owned(), file, live, lines, compact_at: compact_at(lines) })
    }

    /// Whether the job has run here.
    pub fn ran(&self, key: &JobKey) -> Ran {
        match self.live.get(key) {
            None => Ran::No,
            Some(l) if l.earlier && !l.done => Ran::Interrupted,
            Some(_) => Ran::Yes,
        }
    }

    /// Records that the job ran to its end (not synced: lost in a crash, the job only
    /// looks interrupted, which runs again only what changes nothing outside its sandbox).
    pub fn finish(&mut self, key: JobKey) -> std::io::Result<()> {
        let Some(l) = self.live.get_mut(&key) else { return Ok(()) };
        l.done = true;
        let entry = Entry { action: key.0, input: key.1, until: l.until, done: true };
        let mut line = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.lines += 1;
        Ok(())
    }

    /// Records, durably, that the job is about to run; it is remembered until `until`
    /// (Unix seconds). `now` drops what expired when the file is rewritten.
    pub fn record(&mut self, key: JobKey, until: u64, now: u64) -> std::io::Result<()> {
        let entry = Entry { action: key.0, input: key.1, until, done: false };
        let mut line = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        self.live.insert(key, Live { until, done: false, earlier: false });
        self.lines += 1;
        if self.lines >= self.compact_at {
            self.live.retain(|_, l| l.until >= now);
            self.file = rewrite(&self.path, &self.live)?;
            self.lines = self.live.len();
            self.compact_at = compact_at(self.lines);
        }
        Ok(())
    }

    /// How many jobs are remembered.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

fn compact_at(lines: usize) -> usize {
    lines + lines.max(1024)
}

/// Replaces the file with exactly `live` (through a synced temporary file and a rename)
/// and returns it open for appending.
fn rewrite(path: &Path, live: &HashMap<JobKey, Live>) -> std::io::Result<File> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    for ((action, input), l) in live {
        // A job running in this process is written as done: if the process stops now, it
        // is declined rather than run again (rewrites are rare; the cost is liveness only).
        let done = l.done || !l.earlier;
        let e = Entry { action: *action, input: *input, until: l.until, done };
        let mut line = serde_json::to_vec(&e).map_err(std::io::Error::other)?;
        line.push(b'\n');
        tmp.write_all(&line)?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    if let Ok(d) = File::open(dir) {
        d.sync_all()?;
    }
    OpenOptions::new().append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_remembered_across_reopening_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ran.jsonl");
        let a = (Digest::of(b"a"), 0);
        let b = (Digest::of(b"b"), 3);
        let mut l = Ledger::open(&path, 100).unwrap();
        l.record(a, 200, 100).unwrap();
        l.record(b, 150, 100).unwrap();
        assert!(l.ran(&a) == Ran::Yes && l.ran(&b) == Ran::Yes);
        assert_eq!(l.ran(&(Digest::of(b"a"), 1)), Ran::No);
        l.finish(a).unwrap();
        drop(l);
        // A torn last line (a crash mid-write) is skipped.
        OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"act").unwrap();
        let l = Ledger::open(&path, 160).unwrap();
        assert_eq!(l.ran(&a), Ran::Yes, "still live, and it ran to its end");
        assert_eq!(l.ran(&b), Ran::No, "expired");
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn a_job_cut_short_by_a_stop_is_interrupted_and_one_run_to_its_end_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ran.jsonl");
        let (cut, whole) = ((Digest::of(b"cut"), 0), (Digest::of(b"whole"), 0));
        let mut l = Ledger::open(&path, 100).unwrap();
        l.record(cut, 200, 100).unwrap();
        l.record(whole, 200, 100).unwrap();
        l.finish(whole).unwrap();
        assert_eq!(l.ran(&cut), Ran::Yes, "running in this process");
        drop(l);
        let mut l = Ledger::open(&path, 110).unwrap();
        assert_eq!(l.ran(&cut), Ran::Interrupted);
        assert_eq!(l.ran(&whole), Ran::Yes);
        // Run again, and this time to its end.
        l.record(cut, 200, 110).unwrap();
        assert_eq!(l.ran(&cut), Ran::Yes);
        l.finish(cut).unwrap();
        drop(l);
        assert_eq!(Ledger::open(&path, 120).unwrap().ran(&cut), Ran::Yes);
    }

    #[test]
    fn the_file_is_compacted_as_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ran.jsonl");
        let mut l = Ledger::open(&path, 0).unwrap();
        for i in 0..3000u32 {
            // All but the last few expire at once.
            l.record((Digest::of(b"x"), i), if i >= 2990 { 1000 } else { 5 }, 10).unwrap();
        }
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines < 1100, "{lines} lines");
        assert_eq!(l.ran(&(Digest::of(b"x"), 2999)), Ran::Yes);
    }
}
