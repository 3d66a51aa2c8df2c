//! The native tool allowlist as operators write it (in a TOML file or on the command line).
//!
//! ```toml
//! [tools]
//! grep = "/usr/bin/grep"
//! sort = { path = "/usr/bin/sort", sha256 = "sha256:…" }
//! ```

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

/// One tool: a path, or a path with a pinned digest.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ToolSpec {
    /// Just the absolute path.
    Path(PathBuf),
    /// The path and the binary's sha256.
    Pinned {
        /// The absolute path.
        path: PathBuf,
        /// `sha256:<hex>` of the binary.
        sha256: Digest,
    },
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
    fn entry(self) -> ToolEntry {
        match self {
            Self::Path(path) => ToolEntry { path, sha256: None },
            Self::Pinned { path, sha256 } => ToolEntry { path, sha256: Some(sha256) },
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
    Ok((name, ToolEntry { path, sha256: None }))
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
    fn allow_tool_args_resolve_in_usr_bin_then_bin() {
        let (name, entry) = parse_arg("sort").unwrap();
        assert_eq!(name.as_str(), "sort");
        let expected = ["/usr/bin/sort", "/bin/sort"].into_iter().find(|p| Path::new(p).is_file());
        assert_eq!(Some(entry.path.as_path()), expected.map(Path::new));
        assert!(parse_arg("no-such-tool-here").is_err());
        assert!(parse_arg("/bin/sh").is_err());
    }
}
