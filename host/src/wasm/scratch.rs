//! Tasks' scratch `/tmp`: private directories under the host's scratch directory, and the
//! watch that bounds what a task keeps in its own.
//!
//! Making and removing a directory costs more than running a small AU (on ext4, removal
//! can even wait for the disk), and most tasks never write to `/tmp`. So a directory a task
//! left empty goes back to a pool and serves a later task; one it left anything in is
//! removed. Reuse shows a later task nothing: when a task ends its store is gone, and with
//! it every descriptor it held, so an empty directory has no name and no open file left in
//! it. The pool holds at most as many directories as tasks may run at once, and is removed
//! with the host.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use super::run::Ended;
use super::{SCRATCH_MAX_ENTRIES, SCRATCH_POLL};

/// Empty scratch directories, ready for the next task.
#[derive(Debug)]
pub(super) struct ScratchPool {
    parent: PathBuf,
    free: Mutex<Vec<PathBuf>>,
    keep: usize,
}

impl ScratchPool {
    /// Directories are made in `parent` (which must exist); at most `keep` are kept empty.
    pub(super) fn new(parent: PathBuf, keep: usize) -> Self {
        Self { parent, free: Mutex::new(Vec::new()), keep }
    }

    /// An empty, private directory for one task: a kept one, or a new one.
    pub(super) fn take(&self) -> std::io::Result<Scratch<'_>> {
        let kept = self.free.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let path = match kept {
            Some(path) => path,
            None => tempfile::Builder::new().prefix("task-").tempdir_in(&self.parent)?.keep(),
        };
        Ok(Scratch { pool: self, path })
    }

    /// Directories kept empty for later tasks.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.free.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Keeps `path` if it is empty and there is room, else removes it.
    fn give_back(&self, path: PathBuf) {
        let empty = std::fs::read_dir(&path).map(|mut d| d.next().is_none()).unwrap_or(false);
        if empty {
            let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
            if free.len() < self.keep {
                free.push(path);
                return;
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %path.display(), error = %e, "cannot remove a task's scratch directory");
        }
    }
}

impl Drop for ScratchPool {
    fn drop(&mut self) {
        let free = std::mem::take(self.free.get_mut().unwrap_or_else(PoisonError::into_inner));
        for path in free {
            // Empty when kept; a failure leaves an empty directory behind, nothing more.
            let _ = std::fs::remove_dir(&path);
        }
    }
}

/// One task's scratch directory, given back to its pool when dropped (after the task's
/// store, which holds its descriptors).
#[derive(Debug)]
pub(super) struct Scratch<'a> {
    pool: &'a ScratchPool,
    path: PathBuf,
}

impl Scratch<'_> {
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.path));
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
    fn an_emptied_directory_serves_the_next_task_and_one_left_full_is_removed() {
        let parent = tempfile::tempdir().unwrap();
        let pool = ScratchPool::new(parent.path().to_path_buf(), 1);
        let first = pool.take().unwrap();
        let kept = first.path().to_path_buf();
        drop(first);
        assert_eq!(pool.kept(), 1);
        let second = pool.take().unwrap();
        assert_eq!(second.path(), kept, "an empty directory is reused");
        std::fs::write(second.path().join("left"), b"x").unwrap();
        drop(second);
        assert_eq!(pool.kept(), 0);
        assert!(!kept.exists(), "a directory left with a file in it is removed");
        let third = pool.take().unwrap();
        assert_ne!(third.path(), kept);
        assert_eq!(std::fs::read_dir(third.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_pool_keeps_no_more_than_tasks_at_once_and_leaves_nothing_behind() {
        let parent = tempfile::tempdir().unwrap();
        let pool = ScratchPool::new(parent.path().to_path_buf(), 2);
        let taken: Vec<_> = (0..5).map(|_| pool.take().unwrap()).collect();
        drop(taken);
        assert_eq!(pool.kept(), 2);
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 2);
        drop(pool);
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }
}
