//! A process's own temporary directory (its tasks' scratch, its jails' roots), named after
//! the process, and the sweep of those left by processes of the same kind that are gone:
//! killed, they could not remove their own, and what their tasks wrote would stay.
//!
//! A directory is known to be in use by its lock, not by its name's pid: its process holds
//! an exclusive `flock` on it while it runs, and the kernel lets go when the process ends,
//! however it ends. Pids say nothing across pid namespaces sharing one `/tmp` (containers),
//! and a container's pid 1 always "runs".

use std::fs::{File, TryLockError};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

/// A process's own temporary directory, locked while it lives and removed when dropped.
#[derive(Debug)]
pub struct ProcessDir {
    // Dropped first: the lock is let go only once the directory is gone.
    dir: tempfile::TempDir,
    _lock: File,
}

impl ProcessDir {
    /// Where it is.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A new directory `<prefix><pid>-<random>` in the system's temporary directory, locked by
/// this process. First removes the directories of that form, of this user, that no
/// process holds.
pub fn create(prefix: &str) -> std::io::Result<ProcessDir> {
    let dir =
        tempfile::Builder::new().prefix(&format!("{prefix}{}-", std::process::id())).tempdir()?;
    let lock = File::open(dir.path())?;
    lock.try_lock().map_err(|e| match e {
        TryLockError::WouldBlock => std::io::Error::other("a new directory is locked already"),
        TryLockError::Error(e) => e,
    })?;
    sweep_stale(prefix, dir.path());
    Ok(ProcessDir { dir, _lock: lock })
}

/// Removes the directories beside `ours` named `<prefix><pid>-...`, of the same owner, that
/// no process holds locked.
fn sweep_stale(prefix: &str, ours: &Path) {
    let (Some(tmp), Ok(mine)) = (ours.parent(), ours.metadata()) else { return };
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let of_form = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|rest| rest.split_once('-'))
            .is_some_and(|(pid, _)| pid.parse::<u32>().is_ok());
        // Not following a link: only a directory of ours.
        let path = e.path();
        let mine = path.symlink_metadata().is_ok_and(|m| m.is_dir() && m.uid() == mine.uid());
        if !of_form || !mine || path == ours {
            continue;
        }
        let Ok(dir) = File::open(&path) else { continue };
        match dir.try_lock() {
            Ok(()) => {
                if let Err(err) = std::fs::remove_dir_all(&path) {
                    tracing::warn!(dir = %path.display(), error = %err, "cannot remove a stale temporary directory");
                }
            }
            // Its process runs.
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(err)) => {
                tracing::warn!(dir = %path.display(), error = %err, "cannot tell whether a temporary directory is in use");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_no_process_holds_are_swept_and_held_ones_kept() {
        let prefix = format!("agenix-sweep-test-{}-", std::process::id());
        let tmp = std::env::temp_dir();
        // Left by a process that is gone, whatever its pid (1 runs here, in every namespace).
        let gone = tmp.join(format!("{prefix}1-x"));
        std::fs::create_dir_all(gone.join("task-1")).unwrap();
        std::fs::write(gone.join("task-1/left"), b"data").unwrap();
        // Held by a live one (another process's lock is the same to flock as this one's
        // separate open of the directory).
        let held = create(&prefix).unwrap();
        assert!(!gone.exists(), "the directory no process holds is removed");
        let other = tmp.join(format!("{prefix}notapid"));
        std::fs::create_dir_all(&other).unwrap();
        let second = create(&prefix).unwrap();
        assert!(held.path().is_dir(), "a held directory is kept");
        assert!(other.exists(), "a name not of the form is left alone");
        let path = held.path().to_path_buf();
        drop(held);
        assert!(!path.exists(), "removed when dropped");
        drop(second);
        std::fs::remove_dir_all(&other).unwrap();
    }
}
