//! The jail's root, file by file: the tool, its ELF interpreter, the shared libraries it
//! needs, the data files the operator names for it, and a few the loader and the C library
//! read — and nothing else of the host. So "only the allowlisted tool runs" holds by
//! construction: there is no other program in the root to start, whatever Landlock and
//! seccomp do.
//!
//! The libraries are found as the dynamic loader finds them (`DT_NEEDED`, `RPATH`/`RUNPATH`
//! with `$ORIGIN`, `/etc/ld.so.conf` and the trusted directories), by reading the files,
//! never by running them (the `lddtree` crate). This happens once per tool, when the
//! allowlist is loaded; a library that cannot be found refuses the tool then, by name.
//!
//! Every path is kept as the host spells it: each symbolic link on the way (merged-/usr
//! systems link `/lib` to `usr/lib`; libraries link their soname to a versioned file) is made
//! again inside, and the file it ends at is bound read-only at its real path.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Files every jail holds when the host has them: the loader's cache (so libraries outside
/// the default directories are found), the time zone, and the locale `LANG` names.
const BASE_DATA: &[&str] = &["/etc/ld.so.cache", "/etc/localtime", "/usr/lib/locale/C.utf8"];

/// Most symbolic links followed for one path, as the kernel's own limit.
const MAX_LINKS: usize = 40;

/// One thing in the jail's root, at the same path as on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum RootEntry {
    /// A symbolic link, with the host's target.
    Link {
        /// Where it is.
        path: PathBuf,
        /// What it points to, as written on the host.
        target: PathBuf,
    },
    /// A host file or directory (no symbolic link on its path) bound read-only.
    Bind {
        /// Where it is.
        path: PathBuf,
        /// Whether it may be executed or mapped executable: the tool, its interpreter and
        /// its libraries. Data never is.
        exec: bool,
    },
}

/// What a tool's jail holds of the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemFiles {
    /// In order: links and binds by path, shallower first.
    pub(crate) entries: Vec<RootEntry>,
}

impl SystemFiles {
    /// The files `tool` needs to run, the `data` its operator names, and [`BASE_DATA`].
    pub fn of_tool(tool: &Path, data: &[PathBuf]) -> Result<Self, String> {
        let mut files = Closure::default();
        files.add(tool, true)?;
        for lib in libraries(tool)? {
            files.add(&lib, true)?;
        }
        for d in data {
            if !d.is_absolute() {
                return Err(format!("data {} is not an absolute path", d.display()));
            }
            // The jail makes these itself.
            if d == Path::new("/etc")
                || ["/dev", "/proc", "/sys", "/tmp"].iter().any(|r| d.starts_with(r))
            {
                return Err(format!("data {} is a directory the jail makes itself", d.display()));
            }
            files.add(d, false).map_err(|e| format!("data {e}"))?;
        }
        for base in BASE_DATA {
            // Absent on some systems: a jail without them still runs.
            let _ = files.add(Path::new(base), false);
        }
        Ok(files.finish())
    }

    /// The paths bound from the host (files and directories), with whether each may execute.
    pub fn binds(&self) -> impl Iterator<Item = (&Path, bool)> {
        self.entries.iter().filter_map(|e| match e {
            RootEntry::Bind { path, exec } => Some((path.as_path(), *exec)),
            RootEntry::Link { .. } => None,
        })
    }
}

/// The interpreter and every shared library `tool` loads, as the loader would find them.
fn libraries(tool: &Path) -> Result<Vec<PathBuf>, String> {
    let analyze = || lddtree::DependencyAnalyzer::new("/".into()).analyze(tool);
    // The crate panics on a few malformed inputs; a malformed tool is refused, not fatal.
    let tree = std::panic::catch_unwind(analyze)
        .map_err(|_| format!("{} is not an ELF file this worker can read", tool.display()))?
        .map_err(|e| match e {
            lddtree::Error::Goblin(_) | lddtree::Error::UnsupportedBinary => format!(
                "{} is not an ELF executable: only compiled programs are allowlisted",
                tool.display()
            ),
            other => format!("cannot read the libraries of {}: {other}", tool.display()),
        })?;
    // The interpreter by the path the tool names (the same file may also be found as a
    // library, by another path, and be recorded only under that one).
    let mut found: Vec<PathBuf> = tree.interpreter.iter().map(PathBuf::from).collect();
    let mut libs: Vec<_> = tree.libraries.into_values().collect();
    libs.sort_by(|a, b| a.name.cmp(&b.name));
    for lib in libs {
        if !lib.found() {
            return Err(format!(
                "{} needs {}, which is not installed here",
                tool.display(),
                lib.name
            ));
        }
        found.push(lib.path);
    }
    Ok(found)
}

#[derive(Default)]
struct Closure {
    /// Path → entry; a path is a link or a bind, never both.
    entries: BTreeMap<PathBuf, RootEntry>,
}

impl Closure {
    /// Adds `path` as the host resolves it: every link on the way, then the file it ends at.
    fn add(&mut self, path: &Path, exec: bool) -> Result<(), String> {
        if !path.is_absolute() {
            return Err(format!("{} is not an absolute path", path.display()));
        }
        let mut todo: Vec<OsString> = components(path);
        todo.reverse();
        let mut at = PathBuf::from("/");
        let mut links = 0;
        while let Some(c) = todo.pop() {
            if c == ".." {
                at.pop();
                continue;
            }
            let next = at.join(&c);
            let meta =
                std::fs::symlink_metadata(&next).map_err(|e| format!("{}: {e}", path.display()))?;
            if !meta.file_type().is_symlink() {
                at = next;
                continue;
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(format!("{}: too many symbolic links", path.display()));
            }
            let target =
                std::fs::read_link(&next).map_err(|e| format!("{}: {e}", next.display()))?;
            if target.is_absolute() {
                at = PathBuf::from("/");
            }
            todo.extend(components(&target).into_iter().rev());
            self.entries.insert(next.clone(), RootEntry::Link { path: next, target });
        }
        if at == Path::new("/") {
            return Err(format!("{} is the whole file system", path.display()));
        }
        let exec =
            exec || matches!(self.entries.get(&at), Some(RootEntry::Bind { exec: true, .. }));
        self.entries.insert(at.clone(), RootEntry::Bind { path: at, exec });
        Ok(())
    }

    /// The entries, shallower paths first (a directory is bound before what is bound on
    /// top of it).
    fn finish(self) -> SystemFiles {
        let mut entries: Vec<RootEntry> = self.entries.into_values().collect();
        let path = |e: &RootEntry| match e {
            RootEntry::Link { path, .. } | RootEntry::Bind { path, .. } => path.clone(),
        };
        entries.sort_by_key(|e| (path(e).components().count(), path(e)));
        SystemFiles { entries }
    }
}

/// The components of a path as names, `..` kept (resolved against what is real so far),
/// `.` and the root dropped.
fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn links_on_the_way_are_kept_and_the_real_file_is_bound() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(d.join("real/lib")).unwrap();
        std::fs::write(d.join("real/lib/libx.so.1.2"), b"x").unwrap();
        symlink("real/lib", d.join("lib")).unwrap();
        symlink("libx.so.1.2", d.join("real/lib/libx.so.1")).unwrap();
        let mut c = Closure::default();
        c.add(&d.join("lib/libx.so.1"), true).unwrap();
        let files = c.finish();
        assert_eq!(
            files.entries,
            vec![
                RootEntry::Link { path: d.join("lib"), target: "real/lib".into() },
                RootEntry::Link {
                    path: d.join("real/lib/libx.so.1"),
                    target: "libx.so.1.2".into()
                },
                RootEntry::Bind { path: d.join("real/lib/libx.so.1.2"), exec: true },
            ]
        );
    }

    #[test]
    fn a_link_loop_and_a_missing_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().canonicalize().unwrap();
        symlink("b", d.join("a")).unwrap();
        symlink("a", d.join("b")).unwrap();
        let mut c = Closure::default();
        assert!(c.add(&d.join("a"), false).unwrap_err().contains("too many symbolic links"));
        assert!(c.add(&d.join("missing"), false).is_err());
        assert!(c.add(Path::new("relative"), false).is_err());
        symlink("/", d.join("root")).unwrap();
        assert!(c.add(&d.join("root"), false).unwrap_err().contains("whole file system"));
    }

    #[test]
    fn a_real_tool_gets_its_loader_and_libraries_and_nothing_else() {
        let Ok(files) = SystemFiles::of_tool(Path::new("/usr/bin/sort"), &[]) else {
            return;
        };
        let binds: Vec<_> = files.binds().collect();
        let canonical = std::fs::canonicalize("/usr/bin/sort").unwrap();
        assert!(binds.contains(&(canonical.as_path(), true)), "{binds:?}");
        assert!(
            binds.iter().any(|(p, exec)| *exec && p.to_string_lossy().contains("libc.so")),
            "{binds:?}"
        );
        assert!(binds.iter().any(|(p, exec)| *exec && p.to_string_lossy().contains("ld-")));
        assert!(!binds.iter().any(|(p, _)| p.ends_with("bin") || p.ends_with("usr")));
        // Data never executes.
        assert!(binds.iter().filter(|(p, _)| p.starts_with("/etc")).all(|(_, exec)| !exec));
        let err = SystemFiles::of_tool(Path::new("/etc/passwd"), &[]).unwrap_err();
        assert!(err.contains("not an ELF"), "{err}");
    }
}
