//! The native tool allowlist as operators write it (in a TOML file or on the command line).
//!
//! ```toml
//! [tools]
//! grep = "/usr/bin/grep"
//! sort = { path = "/usr/bin/sort", sha256 = "sha256:…", data = ["/usr/lib/locale"], env = ["LC_*"] }
//! ```
//!
//! A tool's jail holds the binary, its ELF interpreter and shared libraries (found when the
//! list is loaded: a missing one refuses the tool), the `data` named, and nothing else.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use agenix_host::native::{Allowlist, AllowlistError, ToolEntry};
use agenix_proto::{Digest, ToolName};
use serde::Deserialize;

/// A file holding a `[tools]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolsFile {
    #[serde(default)]
    tools: BTreeMap<ToolName, ToolSpec>,
}

/// One tool: its path, or a table with the path and what else its jail holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolSpec {
    /// Just the absolute path.
    Path(PathBuf),
    /// The path, a pin, data, variables.
    Table(ToolTable),
}

/// `sort = { path = "/usr/bin/sort", sha256 = "sha256:…", data = ["/usr/lib/locale"], env = ["LC_*"] }`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolTable {
    /// The absolute path.
    pub path: PathBuf,
    /// `sha256:<hex>` of the binary, checked on every run.
    #[serde(default)]
    pub sha256: Option<Digest>,
    /// Data files and directories its jail holds (read-only, never executable).
    #[serde(default)]
    pub data: Vec<PathBuf>,
    /// Environment variables a plan may set for it beyond LANG, LC_* and TZ (`NAME`, or a
    /// prefix as `NAME_*`).
    #[serde(default)]
    pub env: Vec<String>,
}

impl<'de> Deserialize<'de> for ToolSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ToolSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a path, or a table with path, sha256, data and env")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ToolSpec, E> {
                Ok(ToolSpec::Path(v.into()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<ToolSpec, A::Error> {
                ToolTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(ToolSpec::Table)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Why an allowlist could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid `[tools]` table.
    #[error("{path} is not a valid tool list: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// An entry was refused.
    #[error(transparent)]
    Entry(#[from] AllowlistError),
    /// `NAME[=PATH]` could not be understood or resolved.
    #[error("{0}")]
    Arg(String),
}

impl ToolSpec {
    /// The allowlist entry this describes.
    pub fn entry(self) -> ToolEntry {
        match self {
            Self::Path(path) => ToolEntry::new(path),
            Self::Table(t) => {
                ToolEntry { path: t.path, sha256: t.sha256, data: t.data, env: t.env }
            }
        }
    }
}

/// Adds every tool in the TOML file at `path` to `allow`.
pub fn load_file(path: &Path, allow: &mut Allowlist) -> Result<(), ToolsError> {
    let text = crate::files::read_small(path, crate::files::MAX_CONFIG_BYTES)
        .map_err(|source| ToolsError::Read { path: path.into(), source })?;
    let file: ToolsFile = toml::from_str(&text)
        .map_err(|e| ToolsError::Parse { path: path.into(), message: e.to_string() })?;
    for (name, spec) in file.tools {
        allow.allow(name, spec.entry())?;
    }
    Ok(())
}

/// Parses `NAME[=PATH]`; without a path, the tool is looked up in /usr/bin and /bin.
pub fn parse_arg(arg: &str) -> Result<(ToolName, ToolEntry), ToolsError> {
    let (name, path) = match arg.split_once('=') {
        Some((n, p)) => (n, Some(PathBuf::from(p))),
        None => (arg, None),
    };
    let name: ToolName = name.parse().map_err(|e| ToolsError::Arg(format!("{e}")))?;
    let path = match path {
        Some(p) => p,
        None => ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(name.as_str()))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                ToolsError::Arg(format!(
                    "tool \"{name}\" is not in /usr/bin or /bin; give NAME=PATH"
                ))
            })?,
    };
    Ok((name, ToolEntry::new(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tools_file_allows_paths_and_pins_and_refuses_shells() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tools.toml");
        let pin = Digest::of(b"sort");
        std::fs::write(&f, format!("[tools]\ngrep = \"/usr/bin/grep\"\nsort = {{ path = \"/usr/bin/sort\", sha256 = \"{pin}\" }}\n")).unwrap();
        let mut allow = Allowlist::new();
        load_file(&f, &mut allow).unwrap();
        assert_eq!(allow.get(&"sort".parse().unwrap()).unwrap().sha256, Some(pin));
        std::fs::write(&f, "[tools]\nsh = \"/bin/sh\"\n").unwrap();
        assert!(matches!(
            load_file(&f, &mut allow),
            Err(ToolsError::Entry(AllowlistError::Shell { .. }))
        ));
        std::fs::write(&f, "[tools]\n\"/bin/sort\" = \"/usr/bin/sort\"\n").unwrap();
        assert!(matches!(load_file(&f, &mut allow), Err(ToolsError::Parse { .. })));
    }

    #[test]
    fn a_tool_table_names_data_and_variables_and_is_checked_when_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tools.toml");
        std::fs::write(
            &f,
            "[tools]\nsort = { path = \"/usr/bin/sort\", data = [\"/usr/share\"], env = [\"SORT_*\"] }\n",
        )
        .unwrap();
        let mut allow = Allowlist::new();
        load_file(&f, &mut allow).unwrap();
        let sort = "sort".parse().unwrap();
        let entry = allow.get(&sort).unwrap();
        assert!(entry.allows_env("SORT_BUFFER") && entry.allows_env("LC_ALL"));
        assert!(!entry.allows_env("HOME"));
        let data = allow
            .system_files(&sort)
            .unwrap()
            .binds()
            .any(|(p, x)| p == Path::new("/usr/share") && !x);
        assert!(data, "the data directory is bound, never executable");
        for (table, needle) in [
            ("{ path = \"/usr/bin/sort\", dat = [] }", "unknown field `dat`"),
            ("{ path = \"/usr/bin/sort\", data = [\"/etc\"] }", "the jail makes itself"),
            ("{ path = \"/usr/bin/sort\", data = [\"/no/such/dir\"] }", "/no/such"),
            ("{ path = \"/usr/bin/sort\", env = [\"LD_PRELOAD\"] }", "LD_PRELOAD"),
            ("{ path = \"/etc/passwd\" }", "not an ELF"),
            ("3", "a path, or a table"),
        ] {
            std::fs::write(&f, format!("[tools]\nsort = {table}\n")).unwrap();
            let err = load_file(&f, &mut Allowlist::new()).unwrap_err().to_string();
            assert!(err.contains(needle), "{table}: {err}");
        }
    }

    #[test]
    fn data_reaching_a_directory_the_jail_makes_through_a_link_is_refused() {
        // Not under /tmp, which is itself a directory the jail makes.
        let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")).unwrap();
        let link = dir.path().join("config");
        std::os::unix::fs::symlink("/etc", &link).unwrap();
        let f = dir.path().join("tools.toml");
        std::fs::write(
            &f,
            format!(
                "[tools]\nsort = {{ path = \"/usr/bin/sort\", data = [\"{}\"] }}\n",
                link.display()
            ),
        )
        .unwrap();
        let err = load_file(&f, &mut Allowlist::new()).unwrap_err().to_string();
        assert!(err.contains("/etc is a directory the jail makes itself"), "{err}");
    }

    #[test]
    fn allow_tool_args_resolve_in_usr_bin_then_bin() {
        let (name, entry) = parse_arg("sort").unwrap();
        assert_eq!(name.as_str(), "sort");
        let expected = ["/usr/bin/sort", "/bin/sort"].into_iter().find(|p| Path::new(p).is_file());
        assert_eq!(Some(entry.path.as_path()), expected.map(Path::new));
        assert!(parse_arg("no-such-tool-here").is_err());
        assert!(parse_arg("/bin/sh").is_err());
    }
}
