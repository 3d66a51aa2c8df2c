//! Tasks' scratch `/tmp`: private directories under the host's scratch directory, and the
//! watch that bounds what a task keeps in its own.
//!
//! Making and removing a directory costs more than running a small AU (on ext4, removal
//! can even wait for the disk), and most tasks never touch `/tmp`. So a directory its task
//! left exactly as it was made (empty, with the same times, size and links) goes back to a
//! pool and serves a later task; any other is removed. Reuse shows a later task nothing:
//! when a task ends its store is gone, and with it every descriptor it held, and what a
//! directory could tell (its entries, times, size) is what it told the task before. The
//! pool holds at most as many directories as tasks may run at once, and is removed with the
//! host.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use super::run::Ended;
use super::{SCRATCH_MAX_ENTRIES, SCRATCH_POLL};

/// Scratch directories no task has touched, ready for the next task.
#[derive(Debug)]
pub(super) struct ScratchPool {
    parent: PathBuf,
    free: Mutex<Vec<(PathBuf, Untouched)>>,
    keep: usize,
}

/// What a directory looks like before a task has it: a later look that differs in any way
/// (an entry made and removed, its times set, it being listed) means a task touched it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Untouched {
    times: [(i64, i64); 3],
    size: u64,
    nlink: u64,
    mode: u32,
}

impl Untouched {
    fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::symlink_metadata(path)?;
        Ok(Self {
            times: [
                (m.atime(), m.atime_nsec()),
                (m.mtime(), m.mtime_nsec()),
                (m.ctime(), m.ctime_nsec()),
            ],
            size: m.size(),
            nlink: m.nlink(),
            mode: m.mode(),
        })
    }
}

impl ScratchPool {
    /// Directories are made in `parent` (which must exist); at most `keep` are kept.
    pub(super) fn new(parent: PathBuf, keep: usize) -> Self {
        Self { parent, free: Mutex::new(Vec::new()), keep }
    }

    /// An empty, private directory for one task: a kept one, or a new one (readable by
    /// this process's user alone).
    pub(super) fn take(self: &Arc<Self>) -> std::io::Result<Scratch> {
        let kept = self.free.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let (path, untouched) = match kept {
            Some(kept) => kept,
            None => {
                let path = tempfile::Builder::new()
                    .prefix("task-")
                    .permissions(std::fs::Permissions::from_mode(0o700))
                    .tempdir_in(&self.parent)?
                    .keep();
                let untouched = Untouched::of(&path)?;
                (path, untouched)
            }
        };
        Ok(Scratch { pool: Arc::clone(self), path, untouched })
    }

    /// Directories kept for later tasks.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.free.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Keeps `path`, untouched, if there is room, else removes it.
    fn keep(&self, path: PathBuf, untouched: Untouched) {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < self.keep {
            free.push((path, untouched));
        } else {
            drop(free);
            remove(&path);
        }
    }
}

fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_dir_all(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %path.display(), error = %e, "cannot remove a task's scratch directory");
    }
}

impl Drop for ScratchPool {
    fn drop(&mut self) {
        let free = std::mem::take(self.free.get_mut().unwrap_or_else(PoisonError::into_inner));
        for (path, _) in free {
            // Empty when kept; a failure leaves an empty directory behind, nothing more.
            let _ = std::fs::remove_dir(&path);
        }
    }
}

/// One task's scratch directory, given back when its task has ended (after the task's
/// store, which holds its descriptors), by [`Scratch::recycle`], [`Scratch::discard`] or
/// dropping it. A directory that is empty again still tells of its task (its times, and on
/// ext4 its size, which never shrinks): only one exactly as it was handed out serves
/// another task.
#[derive(Debug)]
pub(super) struct Scratch {
    pool: Arc<ScratchPool>,
    path: PathBuf,
    untouched: Untouched,
}

impl Scratch {
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the task may have left anything in it: `false` only for a directory that is
    /// exactly as it was handed out.
    pub(super) fn touched(&self) -> bool {
        self.touched_at(&self.path)
    }

    fn touched_at(&self, path: &Path) -> bool {
        Untouched::of(path).map_or(true, |now| now != self.untouched)
            || std::fs::read_dir(path).map_or(true, |mut d| d.next().is_some())
    }

    /// Back to the pool, as [`Scratch::touched`] found it not to be.
    pub(super) fn recycle(mut self) {
        let path = std::mem::take(&mut self.path);
        self.pool.keep(path, self.untouched.clone());
    }

    /// Removes it, first counting what the task left in it (bytes and entries, as the watch
    /// counts them) if `count`. Blocks: call it off the async threads.
    pub(super) fn discard(mut self, count: bool) -> Option<std::io::Result<(u64, u64)>> {
        let path = std::mem::take(&mut self.path);
        let left = count.then(|| usage(&path));
        remove(&path);
        left
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.path.as_os_str().is_empty() {
            return;
        }
        let path = std::mem::take(&mut self.path);
        if self.touched_at(&path) {
            remove(&path);
        } else {
            self.pool.keep(path, self.untouched.clone());
        }
    }
}

/// Resolves when the scratch directory holds more than `cap` bytes or too many entries. The
/// first count is one poll interval in (the directory starts empty), so a task shorter
/// than that is never counted; the count runs off the async threads.
/// Fails closed: a scratch directory it cannot measure ends the task too.
pub(super) async fn watch(dir: PathBuf, cap: u64) -> Ended {
    let start = tokio::time::Instant::now() + SCRATCH_POLL;
    let mut tick = tokio::time::interval_at(start, SCRATCH_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let d = dir.clone();
        match tokio::task::spawn_blocking(move || usage(&d)).await {
            Ok(Ok((bytes, entries))) => {
                if bytes > cap || entries > SCRATCH_MAX_ENTRIES {
                    return Ended::ScratchFull;
                }
            }
            Ok(Err(e)) => return Ended::ScratchUnmeasured(e.to_string()),
            Err(e) => return Ended::ScratchUnmeasured(e.to_string()),
        }
    }
}

/// Bytes (apparent sizes) and entries in the scratch directory: every file under it, not
/// following symlinks, plus files under it that were deleted while still open (their space
/// stays in use; this process holds their descriptors on the guest's behalf). Stops
/// counting once past the entry cap. A directory that vanished while it was being walked is
/// skipped; any other failure (no descriptors left, say) is an error.
fn usage(dir: &Path) -> std::io::Result<(u64, u64)> {
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let (mut bytes, mut entries) = (0u64, 0u64);
    let mut seen = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        };
        for e in rd {
            let e = match e {
                Ok(e) => e,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            entries += 1;
            if entries > SCRATCH_MAX_ENTRIES {
                return Ok((bytes, entries));
            }
            let Ok(meta) = e.path().symlink_metadata() else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else if seen.insert(meta.ino()) {
                bytes = bytes.saturating_add(meta.len());
            }
        }
    }
    for fd in std::fs::read_dir("/proc/self/fd")? {
        let fd = fd?;
        let Ok(target) = std::fs::read_link(fd.path()) else { continue };
        let target = target.to_string_lossy();
        let Some(path) = target.strip_suffix(" (deleted)") else { continue };
        if !Path::new(path).starts_with(dir) {
            continue;
        }
        if let Ok(meta) = std::fs::metadata(fd.path())
            && seen.insert(meta.ino())
        {
            bytes = bytes.saturating_add(meta.len());
        }
    }
    Ok((bytes, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_untouched_directory_serves_the_next_task_and_a_touched_one_is_removed() {
        let parent = tempfile::tempdir().unwrap();
        let pool = Arc::new(ScratchPool::new(parent.path().to_path_buf(), 1));
        let first = pool.take().unwrap();
        let kept = first.path().to_path_buf();
        let mode = std::fs::metadata(&kept).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "private to this user");
        assert!(!first.touched());
        first.recycle();
        assert_eq!(pool.kept(), 1);
        let second = pool.take().unwrap();
        assert_eq!(second.path(), kept, "an untouched directory is reused");
        std::fs::write(second.path().join("left"), b"x").unwrap();
        assert!(second.touched());
        assert_eq!(second.discard(true).unwrap().unwrap(), (1, 1));
        assert_eq!(pool.kept(), 0);
        assert!(!kept.exists(), "a directory left with a file in it is removed");
        // Empty again, but its times tell of its task: removed too.
        let third = pool.take().unwrap();
        let path = third.path().to_path_buf();
        assert_ne!(path, kept);
        assert_eq!(std::fs::read_dir(&path).unwrap().count(), 0);
        let then = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(12345);
        let times = std::fs::FileTimes::new().set_accessed(then).set_modified(then);
        std::fs::File::open(&path).unwrap().set_times(times).unwrap();
        assert!(third.touched());
        drop(third); // as a task's scratch is, when the host fails before its end
        assert_eq!(pool.kept(), 0);
        assert!(!path.exists(), "a directory whose times were set is removed");
    }

    #[test]
    fn the_pool_keeps_no_more_than_tasks_at_once_and_leaves_nothing_behind() {
        let parent = tempfile::tempdir().unwrap();
        let pool = Arc::new(ScratchPool::new(parent.path().to_path_buf(), 2));
        let taken: Vec<_> = (0..5).map(|_| pool.take().unwrap()).collect();
        drop(taken);
        assert_eq!(pool.kept(), 2);
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 2);
        drop(pool);
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }
}
