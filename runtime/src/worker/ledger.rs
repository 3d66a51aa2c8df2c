//! The jobs this worker has run, remembered on disk until their actions expire, so that a
//! queue handing out the same job again (by mistake, or to make a job with side effects run
//! twice) gets it declined, also after the worker restarts.
//!
//! A job is named by what a trusted signer signed: the digest of its action's payload and
//! the index of its input. One line of JSON per job, appended and synced before the job
//! runs, and a second one (`done`) once it has run; jobs starting together share one sync
//! ([`Durable::wait`]: each sync covers every line written before it began, so whoever
//! waits finds its line covered by a sync already made or makes one for all); entries past
//! their expiry are dropped
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

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
    /// Lines of started jobs appended so far (their sequence numbers).
    appended: u64,
    syncer: Arc<Syncer>,
}

/// Makes appended lines durable, several writers' with one sync.
#[derive(Debug)]
struct Syncer {
    /// The file, and every line up to which sequence number is synced.
    synced: Mutex<(File, u64)>,
    /// The sequence number of the last line written.
    written: AtomicU64,
    /// Syncs made.
    syncs: AtomicU64,
}

impl Syncer {
    fn new(file: &File, through: u64) -> std::io::Result<Self> {
        Ok(Self {
            synced: Mutex::new((file.try_clone()?, through)),
            written: through.into(),
            syncs: AtomicU64::new(0),
        })
    }

    /// Syncs unless a sync that began after line `seq` was written has been made already.
    fn through(&self, seq: u64) -> std::io::Result<()> {
        let mut synced = self.synced.lock().unwrap_or_else(PoisonError::into_inner);
        if synced.1 >= seq {
            return Ok(());
        }
        // Read before the sync: every line up to it is written, so the sync covers it.
        let target = self.written.load(Ordering::SeqCst);
        synced.0.sync_data()?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        synced.1 = target;
        Ok(())
    }

    /// The ledger was rewritten (and synced whole) into `file`: every line is durable.
    fn replaced(&self, file: &File, through: u64) -> std::io::Result<()> {
        let clone = file.try_clone()?;
        *self.synced.lock().unwrap_or_else(PoisonError::into_inner) = (clone, through);
        Ok(())
    }
}

/// A job's line, appended: durable once [`Durable::wait`] returns.
#[derive(Debug)]
#[must_use = "the line is durable only once waited for"]
pub struct Durable {
    syncer: Arc<Syncer>,
    seq: u64,
}

impl Durable {
    /// Blocks until the line is on disk (a sync of its own, or one it shares).
    pub fn wait(self) -> std::io::Result<()> {
        self.syncer.through(self.seq)
    }
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
        let syncer = Arc::new(Syncer::new(&file, 0)?);
        Ok(Self {
            path: path.to_owned(),
            file,
            live,
            lines,
            compact_at: compact_at(lines),
            appended: 0,
            syncer,
        })
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

    /// Records, durably, that the job is about to run: [`Ledger::append`], then waits.
    pub fn record(&mut self, key: JobKey, until: u64, now: u64) -> std::io::Result<()> {
        self.append(key, until, now)?.wait()
    }

    /// Records that the job is about to run, durable once the answer is waited for (without
    /// this ledger: other jobs append meanwhile, and share the sync). It is remembered until
    /// `until` (Unix seconds), from now on in this process even if the sync fails (the job
    /// is then not run here, nor later: it goes to other workers). `now` drops what expired
    /// when the file is rewritten.
    pub fn append(&mut self, key: JobKey, until: u64, now: u64) -> std::io::Result<Durable> {
        let entry = Entry { action: key.0, input: key.1, until, done: false };
        let mut line = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.live.insert(key, Live { until, done: false, earlier: false });
        self.lines += 1;
        self.appended += 1;
        self.syncer.written.store(self.appended, Ordering::SeqCst);
        if self.lines >= self.compact_at {
            self.live.retain(|_, l| l.until >= now);
            self.file = rewrite(&self.path, &self.live)?;
            self.syncer.replaced(&self.file, self.appended)?;
            self.lines = self.live.len();
            self.compact_at = compact_at(self.lines);
        }
        Ok(Durable { syncer: self.syncer.clone(), seq: self.appended })
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
    fn jobs_starting_together_share_one_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ran.jsonl");
        let mut l = Ledger::open(&path, 100).unwrap();
        let keys: Vec<JobKey> = (0..3).map(|i| (Digest::of(b"j"), i)).collect();
        let waits: Vec<Durable> = keys.iter().map(|k| l.append(*k, 200, 100).unwrap()).collect();
        let syncer = l.syncer.clone();
        let threads: Vec<_> =
            waits.into_iter().map(|w| std::thread::spawn(move || w.wait())).collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        assert_eq!(syncer.syncs.load(Ordering::Relaxed), 1, "one sync covered all three");
        // A line written after that sync needs one of its own.
        l.record((Digest::of(b"j"), 9), 200, 100).unwrap();
        assert_eq!(syncer.syncs.load(Ordering::Relaxed), 2);
        drop(l);
        let l = Ledger::open(&path, 110).unwrap();
        for k in keys {
            assert_eq!(l.ran(&k), Ran::Interrupted, "on disk");
        }
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
        // A rewrite is synced whole: a line appended before it needs no sync of its own.
        let syncs = l.syncer.syncs.load(Ordering::Relaxed);
        let before = l.append((Digest::of(b"y"), 0), 1000, 10).unwrap();
        let mut rewritten = false;
        for i in 1..5000u32 {
            let lines = l.lines;
            drop(l.append((Digest::of(b"y"), i), 1000, 10).unwrap());
            if l.lines <= lines {
                rewritten = true;
                break;
            }
        }
        assert!(rewritten);
        before.wait().unwrap();
        assert_eq!(l.syncer.syncs.load(Ordering::Relaxed), syncs, "covered by the rewrite");
        assert_eq!(l.ran(&(Digest::of(b"x"), 2999)), Ran::Yes);
    }
}
