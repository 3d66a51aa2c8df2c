//! `agw.toml`: how an operator configures a worker. Flags and environment variables
//! override it (see `agw --help`).
//!
//! ```toml
//! queue = "127.0.0.1:7411"            # or its nodes: ["a.example.net:7411", "b.example.net:7411"]
//! fingerprint = "sha256:…"            # agq fingerprint --data DIR
//! data = "/var/lib/agw"               # holds worker.key (agw init)
//! trust = "/etc/agenix/trust.json"
//! name = "worker-1"                   # default: the host name
//! concurrency = 4
//! cache_dir = "/var/cache/agw"
//! labels = ["ssd"]
//!
//! [ceilings]                          # the most any task may ask for
//! memory_bytes = 1073741824
//! timeout_ms = 600000
//!
//! [mounts]                            # directories tasks may mount, by name
//! logs = { path = "/var/log/app", access = "ro" }
//!
//! [tools]                             # native tools, by name
//! grep = "/usr/bin/grep"
//! sort = { path = "/usr/bin/sort", data = ["/usr/lib/locale"], env = ["SORT_*"] }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use agenix_proto::{Access, Fingerprint, Limits, MountName, ToolName};
use serde::Deserialize;

use crate::tools::ToolSpec;

/// The file, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The queue's address, or its nodes' (`"A:1,B:2"` or `["A:1", "B:2"]`).
    pub queue: Option<agenix_link::Addresses>,
    /// The queue's pinned fingerprint.
    pub fingerprint: Option<Fingerprint>,
    /// The worker's directory, holding its key.
    pub data: Option<PathBuf>,
    /// The trust file.
    pub trust: Option<PathBuf>,
    /// A name for operators.
    pub name: Option<String>,
    /// Jobs at once.
    pub concurrency: Option<u32>,
    /// Component and artifact cache.
    pub cache_dir: Option<PathBuf>,
    /// Labels shown to operators.
    #[serde(default)]
    pub labels: BTreeSet<String>,
    /// The most a task may ask for.
    #[serde(default)]
    pub ceilings: CeilingsConfig,
    /// Named directories.
    #[serde(default)]
    pub mounts: BTreeMap<MountName, MountSpec>,
    /// Native tools.
    #[serde(default)]
    pub tools: BTreeMap<ToolName, ToolSpec>,
    /// Run native tools without a complete jail (logged on every task).
    #[serde(default)]
    pub danger_degraded: bool,
}

/// Ceilings as written: every field optional.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CeilingsConfig {
    /// Wasm fuel.
    pub fuel: Option<u64>,
    /// Memory in bytes.
    pub memory_bytes: Option<u64>,
    /// Timeout in ms.
    pub timeout_ms: Option<u64>,
    /// Output bytes per stream.
    pub output_bytes: Option<u64>,
    /// Processes (native).
    pub pids: Option<u64>,
    /// File size in bytes.
    pub file_bytes: Option<u64>,
}

impl CeilingsConfig {
    /// The ceilings: what is written, the format's maxima for the rest (4 GiB of memory).
    /// A value of 0 or past the format's maximum is refused, naming the field, never
    /// clamped.
    pub fn resolve(&self) -> Result<Limits, String> {
        let a = Limits::ABSOLUTE;
        let pick = |name: &str, asked: Option<u64>, default: u64, max: u64| match asked {
            None => Ok(default),
            Some(v) if (1..=max).contains(&v) => Ok(v),
            Some(v) => Err(format!("ceilings.{name} {v} is outside 1..={max}")),
        };
        Ok(Limits {
            fuel: pick("fuel", self.fuel, a.fuel, a.fuel)?,
            memory_bytes: pick("memory_bytes", self.memory_bytes, 4 << 30, a.memory_bytes)?,
            timeout_ms: pick("timeout_ms", self.timeout_ms, a.timeout_ms, a.timeout_ms)?,
            output_bytes: pick("output_bytes", self.output_bytes, a.output_bytes, a.output_bytes)?,
            pids: pick("pids", self.pids, a.pids, a.pids)?,
            file_bytes: pick("file_bytes", self.file_bytes, a.file_bytes, a.file_bytes)?,
        })
    }
}

/// A mount as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    /// The host directory.
    pub path: PathBuf,
    /// `ro` or `rw`.
    pub access: Access,
}

impl FileConfig {
    /// Parses `agw.toml`.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_config_parses_and_unknown_keys_are_refused() {
        let c = FileConfig::parse(
            r#"
queue = "127.0.0.1:7411"
fingerprint = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
data = "/var/lib/agw"
trust = "/trust.json"
concurrency = 2
labels = ["ssd"]
[ceilings]
timeout_ms = 1000
[mounts]
logs = { path = "/var/log", access = "ro" }
[tools]
grep = "/usr/bin/grep"
"#,
        )
        .unwrap();
        assert_eq!(c.concurrency, Some(2));
        assert_eq!(c.ceilings.resolve().unwrap().timeout_ms, 1000);
        let over =
            CeilingsConfig { pids: Some(Limits::ABSOLUTE.pids + 1), ..CeilingsConfig::default() };
        assert_eq!(
            over.resolve().unwrap_err(),
            format!(
                "ceilings.pids {} is outside 1..={}",
                Limits::ABSOLUTE.pids + 1,
                Limits::ABSOLUTE.pids
            )
        );
        let zero = CeilingsConfig { timeout_ms: Some(0), ..CeilingsConfig::default() };
        assert!(zero.resolve().is_err());
        assert_eq!(c.mounts.len(), 1);
        let err = FileConfig::parse("queue = \"127.0.0.1:1\"\nqeueu = 1\n").unwrap_err();
        assert!(err.contains("unknown field `qeueu`"), "{err}");
    }
}
