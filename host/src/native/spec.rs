//! What the worker tells the jail helper, and what the helper reports back, over the
//! helper's fd 3 (a Unix socket): one length-prefixed JSON frame each way.
//!
//! This is an internal boundary between two processes of the same binary, not part of the
//! wire protocol; it is serializable for that reason only.

use std::io::{Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::cgroup::{Dirs, Used};
use super::root::RootEntry;

/// Largest frame either side accepts.
pub(crate) const MAX_FRAME: usize = 1 << 20;

/// The jail to build and the tool to run in it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JailSpec {
    /// The tool's absolute host path (from the allowlist).
    pub tool: PathBuf,
    /// Its pinned sha256, checked on the very file descriptor that is executed.
    pub tool_sha256: Option<[u8; 32]>,
    /// `argv[0]`.
    pub argv0: String,
    /// The arguments after it.
    pub args: Vec<String>,
    /// The whole environment.
    pub env: Vec<(String, String)>,
    /// Directories to bind: host path, path inside, writable.
    pub mounts: Vec<SpecMount>,
    /// What the root holds of the host: the tool, its loader and libraries, its data.
    pub system: Vec<RootEntry>,
    /// An empty directory the helper may mount the new root on.
    pub root: PathBuf,
    /// Bytes the private /tmp may hold.
    pub tmp_bytes: Option<u64>,
    /// Address-space limit (RLIMIT_AS), when no memory cgroup enforces memory.
    pub rlimit_as: Option<u64>,
    /// Process limit (RLIMIT_NPROC), when no pids cgroup enforces it.
    pub rlimit_nproc: Option<u64>,
    /// Largest file the tool may write.
    pub rlimit_fsize: u64,
    /// CPU seconds, a backstop behind the worker's wall-clock timeout.
    pub rlimit_cpu: u64,
    /// The task's cgroup(s), which the sandbox's init is moved into; the helper reads what
    /// the task used of them and removes them.
    pub cgroup: Option<Dirs>,
    /// Which isolation features to use (all of them unless the operator chose degraded mode).
    pub features: Features,
}

/// A directory bound into the jail.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SpecMount {
    /// Where it is on the host.
    pub host: PathBuf,
    /// Where the tool sees it.
    pub guest: String,
    /// Whether the tool may write.
    pub writable: bool,
}

/// Isolation features the helper applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Features {
    /// User, mount, pid, network, IPC and UTS namespaces, a private root, pivot_root.
    pub namespaces: bool,
    /// A cgroup namespace.
    pub cgroup_ns: bool,
    /// The seccomp filter.
    pub seccomp: bool,
    /// Landlock rules (best effort for the kernel's ABI).
    pub landlock: bool,
    /// mount_setattr(2), to seal the root in one call.
    pub mount_setattr: bool,
}

/// How the tool ended, as its init saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Ended {
    /// Exited with a code.
    Exited(i32),
    /// Killed by a signal.
    Signaled(i32),
}

/// The helper's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum JailReport {
    /// The tool ran.
    Ran {
        /// How it ended.
        ended: Ended,
        /// Its peak resident set, in bytes.
        max_rss: u64,
        /// The largest virtual size seen while it ran, in bytes (0 when not sampled).
        vm_peak: u64,
        /// When the tool was executed, on the system's monotonic clock (ns): with when the
        /// worker asked, how long building the jail took.
        #[serde(default)]
        exec_at_ns: u64,
    },
    /// The jail could not be built or the tool not started: nothing ran.
    Failed {
        /// Why.
        reason: String,
    },
}

/// What the helper answers the worker: its sandbox's report, and what the task used of its
/// cgroup (read before the helper removes it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Answer {
    /// The report.
    pub report: JailReport,
    /// What the task used of its cgroup, if it had one.
    pub cgroup: Option<Used>,
}

/// Writes one frame: a u32 big-endian length, then JSON.
pub(crate) fn write_frame<T: Serialize>(w: &mut impl Write, value: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(std::io::Error::other)?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(&body)?;
    w.flush()
}

/// Reads one frame written by [`write_frame`].
pub(crate) fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let mut body = vec![0u8; frame_len(len)?];
    r.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(std::io::Error::other)
}

/// [`read_frame`] from an asynchronous reader (the worker's end).
pub(crate) async fn read_frame_async<T: for<'de> Deserialize<'de>>(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
) -> std::io::Result<T> {
    use tokio::io::AsyncReadExt as _;
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let mut body = vec![0u8; frame_len(len)?];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(std::io::Error::other)
}

/// A frame's length from its prefix, refused over [`MAX_FRAME`].
fn frame_len(prefix: [u8; 4]) -> std::io::Result<usize> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("frame of {len} bytes is over the limit")));
    }
    Ok(len)
}
