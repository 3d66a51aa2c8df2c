//! The jail's root, file by file: the tool, its ELF interpreter, the shared libraries it
//! needs, the data files the operator names for it, and a few the loader and the C library
//! read — and nothing else of the host. So "only the allowlisted tool runs" holds by
//! construction: there is no other program in the root to start, whatever Landlock and
//! seccomp do.
//!
//! The libraries are found as the dynamic loader finds them (`DT_NEEDED`, `RPATH`/`RUNPATH`
//! with `$ORIGIN`, `/etc/ld.so.conf` and the trusted directories), by reading the files
//! (with `object`; read, never mapped, so a file rewritten meanwhile is an error, not a
//! crash), never by running them. This happens once per tool, when the allowlist is
//! loaded; a library that cannot be found refuses the tool then, by name.
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

/// Directories the jail makes itself: no data may be bound there.
fn reserved(p: &Path) -> bool {
    p == Path::new("/etc") || ["/dev", "/proc", "/sys", "/tmp"].iter().any(|r| p.starts_with(r))
}

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
            let resolved = files.add(d, false).map_err(|e| format!("data {e}"))?;
            // The jail makes these itself (checked where a link leads, too).
            for p in [d.as_path(), resolved.as_path()] {
                if reserved(p) {
                    return Err(format!(
                        "data {}: {} is a directory the jail makes itself",
                        d.display(),
                        p.display()
                    ));
                }
            }
        }
        for base in BASE_DATA {
            // Absent on some systems: a jail without them still runs.
            let _ = files.add(Path::new(base), false);
        }
        Ok(files.finish())
    }

    /// Every path the root holds of the host (links and binds).
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.entries.iter().map(|e| match e {
            RootEntry::Link { path, .. } | RootEntry::Bind { path, .. } => path.as_path(),
        })
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
    let exe = Elf::read(tool).map_err(|e| format!("{}: {e}", tool.display()))?;
    let Some(exe) = exe else {
        return Err(format!(
            "{} is not an ELF executable: only compiled programs are allowlisted",
            tool.display()
        ));
    };
    // What a file is, not what it is called: a copy of the loader or of an interpreter
    // under another name is still one.
    if let Some(soname) = &exe.soname {
        return Err(format!(
            "{} is a shared library ({soname}), such as the dynamic loader, not a program",
            tool.display()
        ));
    }
    let runtime =
        exe.needed.iter().find(|n| INTERPRETER_LIBRARIES.iter().any(|l| n.starts_with(l)));
    if let Some(library) = runtime {
        return Err(format!(
            "{} is an interpreter (it loads {library}), which runs whatever code a plan gives \
             it: make that code an AU",
            tool.display()
        ));
    }
    if let Some(symbol) = exe.interpreter_api {
        return Err(format!(
            "{} is an interpreter (it exports {symbol}), which runs whatever code a plan gives \
             it: make that code an AU",
            tool.display()
        ));
    }
    let dirs = system_dirs();
    let mut found: Vec<PathBuf> = exe.interpreter.iter().cloned().collect();
    let mut seen: BTreeMap<String, ()> = BTreeMap::new();
    // (a name, and the directories searched for it before the system's)
    let mut todo: Vec<(String, Vec<PathBuf>)> = Vec::new();
    let first = exe.search_paths(tool, &[]);
    for name in exe.needed.iter().rev() {
        todo.push((name.clone(), first.clone()));
    }
    while let Some((name, first)) = todo.pop() {
        if seen.insert(name.clone(), ()).is_some() {
            continue;
        }
        if seen.len() > MAX_LIBRARIES {
            return Err(format!("{} needs more than {MAX_LIBRARIES} libraries", tool.display()));
        }
        let candidates: Vec<PathBuf> = if name.contains('/') {
            vec![PathBuf::from(&name)]
        } else {
            first.iter().chain(&dirs).map(|d| d.join(&name)).collect()
        };
        let mut hit = None;
        for path in candidates {
            // Another architecture's library of the same name is skipped, as the loader
            // does; an unreadable one too.
            if let Ok(Some(lib)) = Elf::read(&path)
                && lib.class_64 == exe.class_64
                && lib.machine == exe.machine
            {
                hit = Some((path, lib));
                break;
            }
        }
        let Some((path, lib)) = hit else {
            return Err(format!("{} needs {name}, which is not installed here", tool.display()));
        };
        // A library's own RPATH applies (with its loader's) unless it has a RUNPATH.
        let lib_first = lib.search_paths(&path, &first);
        for n in lib.needed.iter().rev() {
            todo.push((n.clone(), lib_first.clone()));
        }
        found.push(path);
    }
    Ok(found)
}

/// Most shared libraries one tool may need.
const MAX_LIBRARIES: usize = 512;

/// Largest ELF file read to find libraries (read, never mapped: a file rewritten meanwhile
/// gives a read error, not a crash).
const MAX_ELF_BYTES: u64 = 1 << 30;

/// What the loader reads of an ELF object.
struct Elf {
    class_64: bool,
    machine: u16,
    interpreter: Option<PathBuf>,
    needed: Vec<String>,
    rpath: Vec<String>,
    runpath: Vec<String>,
    /// DT_SONAME: set in shared libraries (the loader and libc among them), not programs.
    soname: Option<String>,
    /// A symbol of an interpreter's embedding API this object defines, if any.
    interpreter_api: Option<&'static str>,
}

/// Symbols only an interpreter's executable exports (for the extension modules it loads):
/// Python, Perl, Ruby, Lua, Tcl, Node.
const INTERPRETER_APIS: &[&str] = &[
    "Py_BytesMain",
    "Py_Main",
    "perl_run",
    "Perl_eval_pv",
    "ruby_run_node",
    "lua_pcallk",
    "luaL_loadbuffer",
    "Tcl_Eval",
    "_ZN4node5StartEiPPc",
];

/// Libraries that are an interpreter's runtime: a program that needs one is that
/// interpreter under another name.
const INTERPRETER_LIBRARIES: &[&str] =
    &["libperl.", "libpython", "libruby", "liblua", "libluajit", "libtcl", "libnode.", "libjvm."];

impl Elf {
    /// `None` if the file is not ELF.
    fn read(path: &Path) -> Result<Option<Self>, String> {
        use std::io::Read as _;
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let meta = file.metadata().map_err(|e| e.to_string())?;
        if !meta.is_file() {
            return Err("not a regular file".into());
        }
        let mut data = Vec::new();
        file.take(MAX_ELF_BYTES + 1).read_to_end(&mut data).map_err(|e| e.to_string())?;
        if data.len() as u64 > MAX_ELF_BYTES {
            return Err(format!("larger than {MAX_ELF_BYTES} bytes"));
        }
        let parsed = match object::FileKind::parse(&*data) {
            Ok(object::FileKind::Elf64) => {
                Self::parse::<object::elf::FileHeader64<object::Endianness>>(&data)
            }
            Ok(object::FileKind::Elf32) => {
                Self::parse::<object::elf::FileHeader32<object::Endianness>>(&data)
            }
            _ => return Ok(None),
        };
        parsed.map(Some).map_err(|e| format!("not a valid ELF file: {e}"))
    }

    fn parse<H: object::read::elf::FileHeader<Endian = object::Endianness>>(
        data: &[u8],
    ) -> object::read::Result<Self> {
        use object::read::elf::{ProgramHeader as _, Sym as _};
        let header = H::parse(data)?;
        let endian = header.endian()?;
        let mut interpreter = None;
        for ph in header.program_headers(endian, data)? {
            if let Some(p) = ph.interpreter(endian, data)? {
                interpreter = Some(PathBuf::from(String::from_utf8_lossy(p).into_owned()));
            }
        }
        let sections = header.sections(endian, data)?;
        let table = sections.dynamic_table(endian, data)?;
        let (mut needed, mut rpath, mut runpath, mut soname) = (vec![], vec![], vec![], vec![]);
        for d in &table {
            let into = match d.tag {
                object::elf::DT_NEEDED => &mut needed,
                object::elf::DT_RPATH => &mut rpath,
                object::elf::DT_RUNPATH => &mut runpath,
                object::elf::DT_SONAME => &mut soname,
                _ => continue,
            };
            into.push(String::from_utf8_lossy(table.string(d)?).into_owned());
        }
        let mut interpreter_api = None;
        let symbols = sections.symbols(endian, data, object::elf::SHT_DYNSYM)?;
        for sym in symbols.iter() {
            if sym.is_undefined(endian) {
                continue;
            }
            let name = sym.name(endian, symbols.strings())?;
            if let Some(api) = INTERPRETER_APIS.iter().find(|a| a.as_bytes() == name) {
                interpreter_api = Some(*api);
                break;
            }
        }
        Ok(Self {
            class_64: header.is_class_64(),
            machine: header.e_machine(endian),
            interpreter,
            needed,
            rpath,
            runpath,
            soname: soname.pop(),
            interpreter_api,
        })
    }

    /// Where the loader looks for this object's needs before the system's directories: its
    /// RPATH and its loader's (`inherited`) when it has no RUNPATH, else its RUNPATH alone;
    /// `$ORIGIN` is this object's directory. (LD_LIBRARY_PATH, which would come between, is
    /// never set in the jail.)
    fn search_paths(&self, path: &Path, inherited: &[PathBuf]) -> Vec<PathBuf> {
        let origin = std::fs::canonicalize(path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        let expand = |list: &[String]| -> Vec<PathBuf> {
            list.iter()
                .flat_map(|l| l.split(':'))
                .filter(|d| !d.is_empty())
                .filter_map(|d| {
                    let d = d.replace("${ORIGIN}", "$ORIGIN");
                    let d = d.replace("$ORIGIN", &origin.to_string_lossy());
                    // $LIB and $PLATFORM name what this host is: left to the system's
                    // directories.
                    (!d.contains('$') && d.starts_with('/')).then(|| PathBuf::from(d))
                })
                .collect()
        };
        if self.runpath.is_empty() {
            let mut first = expand(&self.rpath);
            first.extend(inherited.iter().cloned());
            first
        } else {
            expand(&self.runpath)
        }
    }
}

/// The directories the loader searches when a name is in no RPATH or RUNPATH: those of
/// /etc/ld.so.conf (which its cache indexes), then the trusted ones.
fn system_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    ld_so_conf(Path::new("/etc/ld.so.conf"), 0, &mut dirs);
    let multiarch = match std::env::consts::ARCH {
        "x86_64" => Some("x86_64-linux-gnu"),
        "aarch64" => Some("aarch64-linux-gnu"),
        _ => None,
    };
    for base in ["/lib", "/usr/lib"] {
        if let Some(m) = multiarch {
            dirs.push(Path::new(base).join(m));
        }
    }
    for d in ["/lib64", "/usr/lib64", "/lib", "/usr/lib"] {
        dirs.push(d.into());
    }
    let mut unique = Vec::new();
    for d in dirs {
        if !unique.contains(&d) {
            unique.push(d);
        }
    }
    unique
}

/// The directories an ld.so.conf names, following `include` (at most 8 deep).
fn ld_so_conf(path: &Path, depth: usize, dirs: &mut Vec<PathBuf>) {
    let Ok(text) = std::fs::read_to_string(path) else { return };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(pattern) = line.strip_prefix("include").map(str::trim) {
            if depth >= 8 || pattern.is_empty() {
                continue;
            }
            let pattern = match path.parent() {
                Some(parent) if !pattern.starts_with('/') => {
                    parent.join(pattern).to_string_lossy().into_owned()
                }
                _ => pattern.to_string(),
            };
            let Ok(paths) = glob::glob(&pattern) else { continue };
            let mut paths: Vec<PathBuf> = paths.flatten().collect();
            paths.sort();
            for p in paths {
                ld_so_conf(&p, depth + 1, dirs);
            }
        } else if line.starts_with('/') {
            dirs.push(PathBuf::from(line));
        }
    }
}

#[derive(Default)]
struct Closure {
    /// Path → entry; a path is a link or a bind, never both.
    entries: BTreeMap<PathBuf, RootEntry>,
}

impl Closure {
    /// Adds `path` as the host resolves it: every link on the way, then the file it ends at
    /// (returned).
    fn add(&mut self, path: &Path, exec: bool) -> Result<PathBuf, String> {
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
        self.entries.insert(at.clone(), RootEntry::Bind { path: at.clone(), exec });
        Ok(at)
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

    /// The libraries found by reading the files are the ones the real loader maps
    /// (`ldd`, which runs it, for trusted system binaries only here).
    #[test]
    fn the_libraries_found_are_the_ones_ldd_reports() {
        let mut compared = 0;
        for tool in
            ["/usr/bin/sort", "/usr/bin/grep", "/usr/bin/ls", "/usr/bin/curl", "/usr/bin/ssh"]
        {
            let out = match std::process::Command::new("ldd").arg(tool).output() {
                Ok(out) => out,
                Err(e) => {
                    println!("skipped: ldd does not run here ({e}), nothing to compare with");
                    return;
                }
            };
            if !out.status.success() {
                continue;
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let mut expected: Vec<PathBuf> = text
                .lines()
                .filter_map(|l| {
                    let path = match l.split_once("=>") {
                        Some((_, rest)) => rest.split_whitespace().next()?,
                        None => l.split_whitespace().next()?,
                    };
                    path.starts_with('/').then(|| std::fs::canonicalize(path).ok()).flatten()
                })
                .collect();
            expected.sort();
            expected.dedup();
            let mut found: Vec<PathBuf> = libraries(Path::new(tool))
                .unwrap()
                .into_iter()
                .map(|p| std::fs::canonicalize(p).unwrap())
                .collect();
            found.sort();
            found.dedup();
            assert_eq!(found, expected, "{tool}");
            compared += 1;
        }
        assert!(compared > 0, "no tool to compare with ldd");
    }

    /// A copy of the loader or of an interpreter under another name is still refused: by
    /// what it is (a SONAME, an interpreter's exported API), not what it is called.
    #[test]
    fn copies_of_the_loader_and_of_interpreters_are_refused_by_what_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let mut tried = 0;
        for (original, needle) in [
            ("/lib64/ld-linux-x86-64.so.2", "is a shared library"),
            ("/lib/ld-linux-aarch64.so.1", "is a shared library"),
            ("/usr/bin/perl", "is an interpreter"),
            ("/usr/bin/python3", "is an interpreter"),
        ] {
            let Ok(bytes) = std::fs::read(original) else { continue };
            let copy = dir.path().join("report");
            std::fs::write(&copy, bytes).unwrap();
            let err = libraries(&copy).unwrap_err();
            assert!(err.contains(needle), "{original}: {err}");
            tried += 1;
        }
        assert!(tried >= 2, "no loader or interpreter to copy here");
    }

    #[test]
    fn rpath_and_runpath_are_searched_as_the_loader_does() {
        let elf = |rpath: &[&str], runpath: &[&str]| Elf {
            class_64: true,
            machine: 62,
            interpreter: None,
            needed: vec![],
            rpath: rpath.iter().map(|s| s.to_string()).collect(),
            runpath: runpath.iter().map(|s| s.to_string()).collect(),
            soname: None,
            interpreter_api: None,
        };
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().canonicalize().unwrap().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("tool"), b"").unwrap();
        let tool = bin.join("tool");
        let inherited = vec![PathBuf::from("/opt/parent")];
        let with_rpath = elf(&["$ORIGIN/../lib:/opt/x", "${ORIGIN}", "$LIB/y", "relative"], &[]);
        assert_eq!(
            with_rpath.search_paths(&tool, &inherited),
            vec![bin.join("../lib"), "/opt/x".into(), bin.clone(), "/opt/parent".into()]
        );
        // RUNPATH replaces RPATH and inherits nothing.
        let with_runpath = elf(&["/opt/ignored"], &["/opt/run"]);
        assert_eq!(with_runpath.search_paths(&tool, &inherited), vec![PathBuf::from("/opt/run")]);
    }

    #[test]
    fn a_file_that_is_not_elf_or_not_a_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("script");
        std::fs::write(&script, b"#!/bin/sh\necho hi\n").unwrap();
        assert!(libraries(&script).unwrap_err().contains("not an ELF executable"));
        let truncated = dir.path().join("truncated");
        let sort =
            std::fs::read("/usr/bin/sort").unwrap_or_else(|_| b"\x7fELF\x02\x01\x01".to_vec());
        std::fs::write(&truncated, &sort[..64.min(sort.len())]).unwrap();
        assert!(libraries(&truncated).is_err());
        assert!(libraries(dir.path()).unwrap_err().contains("not a regular file"));
        assert!(libraries(Path::new("/dev/zero")).unwrap_err().contains("not a regular file"));
    }

    #[test]
    fn a_real_tool_gets_its_loader_and_libraries_and_nothing_else() {
        // Every system these tests run on has coreutils' sort: failing to read it fails.
        let files = SystemFiles::of_tool(Path::new("/usr/bin/sort"), &[]).unwrap();
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
