//! The tools a worker runs natively, as its operator allowlists them: by name, each an
//! absolute path to a compiled program with what its jail holds of the host (its libraries,
//! the data its entry names) and the variables a plan may set for it. Shells, launchers,
//! interpreters, the loader and this very program never enter, under any name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use agenix_proto::{Digest, ToolName};

use super::root::SystemFiles;

/// Names that are shells, or launchers whose work is starting another program: never
/// allowlisted, whatever the path.
pub const NEVER_ALLOWED: &[&str] = &[
    "sh",
    "bash",
    "dash",
    "zsh",
    "ksh",
    "mksh",
    "csh",
    "tcsh",
    "fish",
    "ash",
    "busybox",
    "toybox",
    "env",
    "sudo",
    "su",
    "doas",
    "pkexec",
    "runuser",
    "xargs",
    "nohup",
    "timeout",
    "nice",
    "ionice",
    "stdbuf",
    "setsid",
    "chrt",
    "taskset",
    "chroot",
    "unshare",
    "nsenter",
    "flock",
    "watch",
    "time",
    "strace",
    "ltrace",
    "gdb",
    "valgrind",
    "script",
    "expect",
    "parallel",
    "rbash",
    "yash",
    "posh",
    "elvish",
    "nu",
    "xonsh",
    "oksh",
    "loksh",
    "cmd",
    "powershell",
    "systemd-run",
    "at",
    "batch",
    "crontab",
    "screen",
    "tmux",
    "sg",
    "newgrp",
    "capsh",
    "setpriv",
    "prlimit",
    "numactl",
    "firejail",
    "bwrap",
    "podman",
    "docker",
    "ssh",
    "make",
    "npx",
    "uvx",
    "pipx",
    "run-parts",
    "start-stop-daemon",
    "xdg-open",
];

/// Interpreters, whose program is whatever their arguments carry (a plan's code): never
/// allowlisted; such code belongs in an AU. Text tools with a language of their own (`awk`,
/// `sed`, `jq`) may be allowlisted: what they might start (`system()` in awk) the jail
/// refuses to execute.
pub const INTERPRETERS: &[&str] = &[
    "python",
    "perl",
    "ruby",
    "node",
    "nodejs",
    "deno",
    "bun",
    "php",
    "lua",
    "luajit",
    "tclsh",
    "wish",
    "guile",
    "Rscript",
    "julia",
    "java",
    "jshell",
    "pwsh",
    "osascript",
    "vi",
    "vim",
    "view",
    "ex",
    "rvim",
    "rview",
    "nvim",
    "emacs",
    "pypy",
    "irb",
    "ipython",
    "jupyter",
    "r",
    "sbcl",
    "clisp",
    "erl",
    "escript",
    "elixir",
    "iex",
    "groovy",
    "scala",
    "kotlin",
    "clojure",
    "racket",
    "ocaml",
    "ghci",
    "runghc",
    "swift",
    "octave",
];

/// Why a program's name (its allowlist name, or the base name of its path or of what that
/// resolves to) keeps it off the allowlist, if it does. The planner asks it too, so that no
/// draft names a program no worker would run.
///
/// Names are compared without regard to case and without an `.exe` ending, and a name
/// matches with a version or build after it (`python3.11`, `perl5.36`, `bash-5.2`,
/// `sh.static`, `node_18`).
pub fn forbidden(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    let bare = lower.strip_suffix(".exe").unwrap_or(&lower);
    let is = |base: &&str| {
        bare.strip_prefix(base.to_ascii_lowercase().as_str()).is_some_and(|rest| {
            rest.is_empty() || rest.starts_with(|c: char| c.is_ascii_digit() || ".-_".contains(c))
        })
    };
    if NEVER_ALLOWED.iter().any(is) {
        Some("a shell or launcher")
    } else if INTERPRETERS.iter().any(is) {
        Some("an interpreter, which runs whatever code a plan gives it (make that code an AU)")
    } else if bare.starts_with("ld-linux")
        || bare.starts_with("ld.so")
        || bare.starts_with("ld64.so")
    {
        Some("the dynamic loader, which runs other programs")
    } else {
        None
    }
}

/// Environment variables every tool may be given by a plan: the locale and the time zone.
/// A tool entry adds names of its own ([`ToolEntry::env`]); any other is refused.
pub const BASE_ENV: &[&str] = &["LANG", "LC_*", "TZ"];

/// Where a system's shells, launchers and interpreters are installed.
const PROGRAM_DIRS: &[&str] = &["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"];

/// Whether `file` is the very file (device and inode) of a program in [`PROGRAM_DIRS`] whose
/// name is [`forbidden`]: a hard link under an innocent name.
fn same_file_as_forbidden(file: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(file) else { return false };
    if m.nlink() < 2 {
        return false;
    }
    PROGRAM_DIRS.iter().filter_map(|d| std::fs::read_dir(d).ok()).flatten().flatten().any(|e| {
        forbidden(&e.file_name().to_string_lossy()).is_some()
            && std::fs::metadata(e.path()).is_ok_and(|o| o.dev() == m.dev() && o.ino() == m.ino())
    })
}

/// One allowlisted tool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolEntry {
    /// Its absolute path.
    pub path: PathBuf,
    /// Its pinned sha256, checked on every run.
    pub sha256: Option<Digest>,
    /// Files and directories of data it reads (a locale, a dictionary), bound read-only and
    /// never executable into its jail beside its libraries.
    pub data: Vec<PathBuf>,
    /// Environment variables a plan may set for it, beyond [`BASE_ENV`].
    pub env: Vec<String>,
}

impl ToolEntry {
    /// The binary at `path`, unpinned, with no data and no variables of its own.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), ..Self::default() }
    }

    /// Whether a plan may set `name` for this tool: [`BASE_ENV`] or the entry's own names.
    pub fn allows_env(&self, name: &str) -> bool {
        let matches = |pattern: &str| match pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == pattern,
        };
        agenix_proto::plan::check_env_name(name).is_ok()
            && BASE_ENV.iter().copied().chain(self.env.iter().map(String::as_str)).any(matches)
    }
}

/// An allowed tool and what its jail holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Allowed {
    pub(super) entry: ToolEntry,
    pub(super) system: Arc<SystemFiles>,
}

/// The tools this worker runs natively: name → binary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    pub(super) tools: BTreeMap<ToolName, Allowed>,
}

/// Why an allowlist entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AllowlistError {
    /// The path is relative.
    #[error("tool \"{name}\": {path} is not an absolute path")]
    Relative {
        /// The tool.
        name: ToolName,
        /// Its path.
        path: PathBuf,
    },
    /// A shell, launcher, interpreter, the loader or this very program.
    #[error("tool \"{name}\" ({path}) is {what}; never allowlisted")]
    Shell {
        /// The tool.
        name: ToolName,
        /// Its path.
        path: PathBuf,
        /// What it is.
        what: &'static str,
    },
    /// Not a regular file.
    #[error("tool \"{name}\": {path} is not a regular file ({why})")]
    NotAFile {
        /// The tool.
        name: ToolName,
        /// Its path.
        path: PathBuf,
        /// What it is instead.
        why: String,
    },
    /// Its libraries or data files could not be found.
    #[error("tool \"{name}\": {why}")]
    Files {
        /// The tool.
        name: ToolName,
        /// Why.
        why: String,
    },
    /// An environment variable name a plan may never set.
    #[error("tool \"{name}\": env {var:?}: {why}")]
    Env {
        /// The tool.
        name: ToolName,
        /// The variable.
        var: String,
        /// Why.
        why: String,
    },
}

impl Allowlist {
    /// An empty allowlist: every native task is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows `name` to run `entry`, refusing relative paths, shells and launchers (by name,
    /// by path and by what the path resolves to) and anything that is not a regular file.
    pub fn allow(&mut self, name: ToolName, entry: ToolEntry) -> Result<(), AllowlistError> {
        if !entry.path.is_absolute() {
            return Err(AllowlistError::Relative { name, path: entry.path });
        }
        let resolved =
            std::fs::canonicalize(&entry.path).map_err(|e| AllowlistError::NotAFile {
                name: name.clone(),
                path: entry.path.clone(),
                why: e.to_string(),
            })?;
        let base =
            |p: &Path| p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(what) =
            [name.to_string(), base(&entry.path), base(&resolved)].iter().find_map(|n| forbidden(n))
        {
            return Err(AllowlistError::Shell { name, path: entry.path, what });
        }
        if same_file_as_forbidden(&resolved) {
            let what = "another name (a hard link) of a shell, launcher or interpreter";
            return Err(AllowlistError::Shell { name, path: entry.path, what });
        }
        // This very program (agw, agx): it embeds the jail helper and the zygote.
        let me = std::env::current_exe().and_then(std::fs::canonicalize).ok();
        if me.as_deref() == Some(resolved.as_path()) {
            let what = "this program itself";
            return Err(AllowlistError::Shell { name, path: entry.path, what });
        }
        match std::fs::metadata(&resolved) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(AllowlistError::NotAFile {
                    name,
                    path: entry.path,
                    why: "not a file".into(),
                });
            }
            Err(e) => {
                return Err(AllowlistError::NotAFile {
                    name,
                    path: entry.path,
                    why: e.to_string(),
                });
            }
        }
        for var in &entry.env {
            let pattern = var.strip_suffix('*').unwrap_or(var);
            if let Err(why) = agenix_proto::plan::check_env_name(pattern) {
                return Err(AllowlistError::Env { name, var: var.clone(), why: why.into() });
            }
        }
        let system = SystemFiles::of_tool(&entry.path, &entry.data)
            .map_err(|why| AllowlistError::Files { name: name.clone(), why })?;
        self.tools.insert(name, Allowed { entry, system: Arc::new(system) });
        Ok(())
    }

    /// The entry for `name`.
    pub fn get(&self, name: &ToolName) -> Option<&ToolEntry> {
        self.tools.get(name).map(|a| &a.entry)
    }

    /// What `name`'s jail holds of the host.
    pub fn system_files(&self, name: &ToolName) -> Option<&SystemFiles> {
        self.tools.get(name).map(|a| a.system.as_ref())
    }

    /// Every allowed tool name.
    pub fn names(&self) -> impl Iterator<Item = &ToolName> {
        self.tools.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::forbidden;

    #[test]
    fn shells_and_interpreters_are_known_under_any_case_version_or_ending() {
        for name in [
            "sh",
            "Bash",
            "SH",
            "bash5",
            "bash-5.2",
            "sh.static",
            "sh_",
            "zsh5",
            "rbash",
            "cmd.exe",
            "powershell",
            "pwsh.exe",
            "python3.11",
            "PYTHON3",
            "pypy3",
            "irb",
            "ipython",
            "R",
            "node_18",
            "perl5.36",
            "docker",
            "systemd-run",
            "su-exec",
            "ld-linux-x86-64.so.2",
        ] {
            assert!(forbidden(name).is_some(), "{name}");
        }
        // Names that only begin like one.
        for name in [
            "sha256sum",
            "shuf",
            "sum",
            "envsubst",
            "expand",
            "rev",
            "rm",
            "atq",
            "timeouts",
            "awk",
            "gawk",
            "sed",
            "jq",
            "grep",
            "sort",
            "viewer",
            "nodes",
        ] {
            assert_eq!(forbidden(name), None, "{name}");
        }
    }
}
