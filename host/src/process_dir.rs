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
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How old a directory left half made (its process killed between making and naming it)
/// must be before a sweep removes it: a younger one may be another process's, a moment from
/// being locked.
const HALF_MADE_AGE: Duration = Duration::from_secs(600);

/// A process's own temporary directory, locked while it lives and removed when dropped.
#[derive(Debug)]
pub struct ProcessDir {
    path: PathBuf,
    _lock: File,
}

impl ProcessDir {
    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ProcessDir {
    fn drop(&mut self) {
        // Before the lock is let go (fields drop after this), so no sweep meets it half gone.
        if let Err(err) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(dir = %self.path.display(), error = %err, "cannot remove a temporary directory");
        }
    }
}

/// A new directory `<prefix><pid>-<random>` in the system's temporary directory, locked by
/// this process. First removes the directories of that form, of this user, that no
/// process holds.
///
/// It is made as `.<prefix><pid>-<random>`, locked, and only then given its name: a sweep
/// by another process never sees it unlocked.
pub fn create(prefix: &str) -> std::io::Result<ProcessDir> {
    let made =
        tempfile::Builder::new().prefix(&format!(".{prefix}{}-", std::process::id())).tempdir()?;
    let lock = File::open(made.path())?;
    lock.try_lock().map_err(|e| match e {
        TryLockError::WouldBlock => std::io::Error::other("a new directory is locked already"),
        TryLockError::Error(e) => e,
    })?;
    let name = made
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix('.'))
        .ok_or_else(|| std::io::Error::other("a new directory has no name"))?
        .to_owned();
    let path = made.path().with_file_name(name);
    // The lock is on the directory itself: it holds under the new name.
    std::fs::rename(made.path(), &path)?;
    let _ = made.keep();
    let dir = ProcessDir { path, _lock: lock };
    sweep_stale(prefix, dir.path());
    Ok(dir)
}

/// Removes the directories beside `ours` named `<prefix><pid>-...`, of the same owner, that
/// no process holds locked, and those named `.<prefix><pid>-...` (made by a process killed
/// before it named them) that no process holds and are old enough to be nobody's.
fn sweep_stale(prefix: &str, ours: &Path) {
    let (Some(tmp), Ok(mine)) = (ours.parent(), ours.metadata()) else { return };
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    let of_form = |name: &str| {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.split_once('-'))
            .is_some_and(|(pid, _)| pid.parse::<u32>().is_ok())
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let half_made = name.strip_prefix('.').is_some_and(of_form);
        // Only names of the form are looked at: a shared /tmp may hold thousands of others.
        if !(of_form(name) || half_made) {
            continue;
        }
        // Not following a link: only a directory of ours.
        let path = e.path();
        let Ok(meta) = path.symlink_metadata() else { continue };
        if !meta.is_dir() || meta.uid() != mine.uid() {
            continue;
        }
        if path == ours {
            continue;
        }
        if half_made {
            let age = meta.modified().ok().and_then(|m| SystemTime::now().duration_since(m).ok());
            if age.is_none_or(|a| a < HALF_MADE_AGE) {
                continue;
            }
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

    #[test]
    fn a_directory_being_made_is_never_swept() {
        let prefix = format!("agenix-race-test-{}-", std::process::id());
        // A directory another process has just made and not yet locked and named.
        let fresh = std::env::temp_dir().join(format!(".{prefix}1-fresh"));
        std::fs::create_dir_all(&fresh).unwrap();
        // Many processes starting at once, each sweeping the others' directories.
        let made: Vec<ProcessDir> = std::thread::scope(|s| {
            let starts: Vec<_> = (0..16).map(|_| s.spawn(|| create(&prefix))).collect();
            starts.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
        });
        for d in &made {
            assert!(d.path().is_dir(), "{} was swept while in use", d.path().display());
            std::fs::create_dir(d.path().join("task")).unwrap();
        }
        assert!(fresh.is_dir(), "a young half-made directory is left for its process");
        // One old enough is nobody's.
        let old = SystemTime::now() - HALF_MADE_AGE - Duration::from_secs(1);
        File::open(&fresh).unwrap().set_modified(old).unwrap();
        drop(create(&prefix).unwrap());
        assert!(!fresh.exists(), "an old half-made directory no process holds is removed");
        let paths: Vec<PathBuf> = made.iter().map(|d| d.path().to_path_buf()).collect();
        drop(made);
        assert!(paths.iter().all(|p| !p.exists()), "removed when dropped");
    }
}
