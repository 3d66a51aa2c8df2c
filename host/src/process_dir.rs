//! A process's own temporary directory (its tasks' scratch, its jails' roots), named after
//! the process, and the sweep of those left by processes of the same kind that are gone:
//! killed, they could not remove their own, and what their tasks wrote would stay.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

/// A new directory `<prefix><pid>-<random>` in the system's temporary directory, removed
/// when dropped. First removes the directories of that form, of this user, whose process no
/// longer runs.
pub fn create(prefix: &str) -> std::io::Result<tempfile::TempDir> {
    let dir =
        tempfile::Builder::new().prefix(&format!("{prefix}{}-", std::process::id())).tempdir()?;
    sweep_stale(prefix, dir.path());
    Ok(dir)
}

/// Removes the directories beside `ours` named `<prefix><pid>-...`, of the same owner,
/// whose process is gone. One whose process still runs is kept (a process that reused the
/// pid keeps it until it ends too).
fn sweep_stale(prefix: &str, ours: &Path) {
    let (Some(tmp), Ok(mine)) = (ours.parent(), ours.metadata()) else { return };
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        // Not following a link: only a directory of ours.
        let ours = e.path().symlink_metadata().is_ok_and(|m| m.is_dir() && m.uid() == mine.uid());
        if ours
            && !Path::new(&format!("/proc/{pid}")).exists()
            && let Err(err) = std::fs::remove_dir_all(e.path())
        {
            tracing::warn!(dir = %e.path().display(), error = %err, "cannot remove a stale temporary directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_of_gone_processes_are_swept_and_live_ones_kept() {
        let prefix = format!("agenix-sweep-test-{}-", std::process::id());
        let tmp = std::env::temp_dir();
        // A pid that cannot run: above the kernel's maximum.
        let gone = tmp.join(format!("{prefix}99999999-x"));
        std::fs::create_dir_all(gone.join("task-1")).unwrap();
        std::fs::write(gone.join("task-1/left"), b"data").unwrap();
        let live = tmp.join(format!("{prefix}1-x"));
        std::fs::create_dir_all(&live).unwrap();
        let other = tmp.join(format!("{prefix}notapid"));
        std::fs::create_dir_all(&other).unwrap();
        let ours = create(&prefix).unwrap();
        assert!(ours.path().is_dir());
        assert!(!gone.exists(), "the directory of a gone process is removed");
        assert!(live.exists(), "pid 1 runs: its directory is kept");
        assert!(other.exists(), "a name not of the form is left alone");
        for d in [&live, &other] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }
}
