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
use std::ffi::CString;
use std::os::fd::OwnedFd;
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
            || !is_empty(path).unwrap_or(false)
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

/// Deepest a scratch directory may nest: deeper counts as over its entry limit. (The walk
/// below holds one descriptor per level, and a tree deeper than a path can name must not
/// hide what it holds.)
const SCRATCH_MAX_DEPTH: usize = 64;

/// Opens a directory for reading without following a link or changing its access time (the
/// host looking must leave no trace a later task could read).
fn open_dir(at: Option<&OwnedFd>, path: &(impl nix::NixPath + ?Sized)) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{OFlag, open, openat};
    use nix::sys::stat::Mode;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let go = |extra| match at {
        Some(dir) => openat(dir, path, flags | extra, Mode::empty()),
        None => open(path, flags | extra, Mode::empty()),
    };
    // O_NOATIME is for the owner: a directory of another owner is read plainly.
    match go(OFlag::O_NOATIME) {
        Err(nix::errno::Errno::EPERM) => go(OFlag::empty()),
        r => r,
    }
    .map_err(std::io::Error::from)
}

/// The names in an open directory, at most `max` of them.
fn names(dir: &OwnedFd, max: u64) -> std::io::Result<Vec<CString>> {
    let mut d = nix::dir::Dir::from_fd(dir.try_clone()?)?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e?;
        let name = e.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        out.push(name.to_owned());
        if out.len() as u64 >= max {
            break;
        }
    }
    Ok(out)
}

/// Whether the directory at `path` has no entry (read without changing its access time).
fn is_empty(path: &Path) -> std::io::Result<bool> {
    Ok(names(&open_dir(None, path)?, 1)?.is_empty())
}

/// Bytes (apparent sizes) and entries in the scratch directory: every file under it, not
/// following symlinks, plus files under it that were deleted while still open (their space
/// stays in use; this process holds their descriptors on the guest's behalf). Walked by
/// descriptors, relative to each directory, so no path is ever too long to look at. Stops
/// counting once past the entry cap; a tree deeper than [`SCRATCH_MAX_DEPTH`] counts as past
/// it. An entry that vanished while it was being walked is skipped; any other failure (no
/// descriptors left, say) is an error.
fn usage(dir: &Path) -> std::io::Result<(u64, u64)> {
    use nix::errno::Errno;
    use nix::fcntl::AtFlags;
    use nix::sys::stat::{SFlag, fstat, fstatat};
    let root = open_dir(None, dir)?;
    let device = fstat(&root)?.st_dev;
    let (mut bytes, mut entries) = (0u64, 0u64);
    let mut seen = HashSet::new();
    let first = names(&root, SCRATCH_MAX_ENTRIES + 1)?;
    let mut stack = vec![(root, first.into_iter())];
    while let Some((fd, mut left)) = stack.pop() {
        let Some(name) = left.next() else { continue };
        entries += 1;
        if entries > SCRATCH_MAX_ENTRIES {
            return Ok((bytes, entries));
        }
        let st = match fstatat(&fd, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => {
                stack.push((fd, left));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let child = if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
            match open_dir(Some(&fd), name.as_c_str()) {
                Ok(c) => Some(c),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            }
        } else {
            if seen.insert(st.st_ino) {
                bytes = bytes.saturating_add(u64::try_from(st.st_size).unwrap_or(0));
            }
            None
        };
        stack.push((fd, left));
        if let Some(child) = child {
            if stack.len() >= SCRATCH_MAX_DEPTH {
                return Ok((bytes, SCRATCH_MAX_ENTRIES + 1));
            }
            let list = names(&child, SCRATCH_MAX_ENTRIES + 1)?;
            stack.push((child, list.into_iter()));
        }
    }
    // Deleted files still open: on the scratch directory's file system, with no link left.
    // One whose former path cannot be read (too long to name) is counted too: failing
    // closed costs only a task that would hold such a file anyway.
    for fd in std::fs::read_dir("/proc/self/fd")? {
        let fd = fd?;
        let Ok(meta) = std::fs::metadata(fd.path()) else { continue };
        if !meta.is_file() || meta.nlink() != 0 || meta.dev() != device {
            continue;
        }
        let ours = match std::fs::read_link(fd.path()) {
            Ok(target) => target
                .to_string_lossy()
                .strip_suffix(" (deleted)")
                .is_some_and(|p| Path::new(p).starts_with(dir)),
            Err(_) => true,
        };
        if ours && seen.insert(meta.ino()) {
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
    fn looking_into_a_scratch_directory_leaves_its_times_alone() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("d");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/f"), b"abc").unwrap();
        // An access time two days old: a plain listing would update it (relatime).
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86400);
        let set = |p: &Path| {
            let t = std::fs::FileTimes::new().set_accessed(old);
            std::fs::File::open(p).unwrap().set_times(t).unwrap();
        };
        set(&dir);
        set(&dir.join("sub"));
        let before = Untouched::of(&dir).unwrap();
        assert!(!is_empty(&dir).unwrap());
        assert_eq!(usage(&dir).unwrap(), (3, 2));
        assert_eq!(Untouched::of(&dir).unwrap(), before, "the host's look changed the directory");
        let sub = std::fs::metadata(dir.join("sub")).unwrap().accessed().unwrap();
        assert_eq!(sub, old);
        // Where the file system keeps access times, a plain listing does change it.
        let _ = std::fs::read_dir(&dir).unwrap().count();
        if Untouched::of(&dir).unwrap() == before {
            println!(
                "this file system does not update access times: the check above proved little"
            );
        }
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
