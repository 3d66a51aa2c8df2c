//! File helpers: reads never hold more than their cap, whatever the file is (a regular file,
//! a device, a pipe or a FIFO), and whole files are replaced atomically, never left
//! half-written.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use agenix_runtime::files::{FIFO_WAIT, open_readable};
use anyhow::{Context, Result, bail};

/// Bytes asked of the source per read.
const CHUNK: usize = 64 * 1024;

/// Why [`read_to_end_capped`] stopped.
#[derive(Debug)]
enum CappedError {
    /// The source holds more than the cap; nothing past the first byte over it was read.
    OverLimit,
    /// Reading failed.
    Io(io::Error),
}

/// Reads `source` to its end, holding at most `max` bytes: reading stops at the first byte
/// past `max` (at most `max + 1` bytes are ever read), so a source that never ends (a
/// device, a pipe or FIFO that keeps being written) is refused after `max` bytes. `hint`
/// is how many bytes are expected (a regular file's size), to allocate once.
fn read_to_end_capped(source: &mut impl Read, max: u64, hint: u64) -> Result<Vec<u8>, CappedError> {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    let hint = usize::try_from(hint).unwrap_or(usize::MAX);
    let mut buf = Vec::with_capacity(hint.min(max));
    let mut chunk = vec![0u8; CHUNK];
    loop {
        // Never ask for more than one byte past the cap.
        let want = CHUNK.min((max - buf.len()).saturating_add(1));
        let n = match source.read(&mut chunk[..want]) {
            Ok(0) => return Ok(buf),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CappedError::Io(e)),
        };
        if n > max - buf.len() {
            return Err(CappedError::OverLimit);
        }
        if buf.capacity() - buf.len() < n {
            // Grow geometrically, but never past the cap.
            let target = buf.capacity().saturating_mul(2).max(buf.len() + n).max(CHUNK).min(max);
            buf.reserve_exact(target - buf.len());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads a whole file, refusing a directory, a FIFO nobody writes to (after
/// [`FIFO_WAIT`]) and anything holding more than `max` bytes. The cap is enforced while
/// reading, not from the file's reported size: a device or FIFO reports none.
pub(crate) fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>> {
    read_capped_by(path, max, "")
}

/// [`read_capped`], with the limit's origin named when it is exceeded (`why`, such as
/// " (the queue's --max-blob)").
pub(crate) fn read_capped_by(path: &Path, max: u64, why: &str) -> Result<Vec<u8>> {
    let mut file = match open_readable(path, FIFO_WAIT) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::IsADirectory => {
            bail!("{} is a directory", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let meta = file.metadata().with_context(|| format!("cannot read {}", path.display()))?;
    let hint = if meta.is_file() { meta.len() } else { 0 };
    if hint > max {
        bail!("{}: over the limit of {max} bytes{why}", path.display());
    }
    read_to_end_capped(&mut file, max, hint).map_err(|e| match e {
        CappedError::OverLimit => {
            anyhow::anyhow!("{}: over the limit of {max} bytes{why}", path.display())
        }
        CappedError::Io(e) => {
            anyhow::Error::new(e).context(format!("cannot read {}", path.display()))
        }
    })
}

/// Where an input comes from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// Standard input.
    Stdin,
    /// A file: regular, a device, a pipe or a FIFO.
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stdin => f.write_str("stdin"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// What reading an input before a deadline gave.
#[derive(Debug)]
pub(crate) enum Within {
    /// All of it, up to its end.
    Read(Vec<u8>),
    /// It was still open (or, for a FIFO, not yet opened by a writer) when the deadline
    /// passed.
    StillOpen,
}

/// Reads all of `source`, holding at most `max` bytes (refused as soon as it passes `max`,
/// with the limit named), and gives up at `deadline` if it has not ended by then.
///
/// A blocking open or read cannot be interrupted, so a thread reads while this one waits.
/// When the deadline passes, that thread stays blocked, holding what it read (at most `max`
/// bytes); it ends with the process, which exits soon after: agx reads each input once.
pub(crate) fn read_within(source: Source, max: u64, deadline: Instant) -> Result<Within> {
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("input".into())
        .spawn(move || {
            let read = match &source {
                Source::Stdin => {
                    read_to_end_capped(&mut io::stdin().lock(), max, 0).map_err(|e| match e {
                        CappedError::OverLimit => {
                            anyhow::anyhow!("stdin: over the limit of {max} bytes")
                        }
                        CappedError::Io(e) => anyhow::Error::new(e).context("cannot read stdin"),
                    })
                }
                Source::File(path) => read_capped(path, max),
            };
            let _ = tx.send(read);
        })
        .context("cannot start a thread to read the input")?;
    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(read) => read.map(Within::Read),
        Err(mpsc::RecvTimeoutError::Timeout) => Ok(Within::StillOpen),
        Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the thread reading the input stopped"),
    }
}

/// Whether `a` and `b` name the same existing file (by device and inode: links, `..` and
/// symbolic links included).
pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Whether `path` could be written by [`write_atomic`]: its directory exists, and nothing
/// but a regular file is there. Checked before work whose result would go there.
pub(crate) fn check_writable(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!("cannot write {}: {} is not a directory", path.display(), dir.display());
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.is_file() => {
            bail!(
                "{} exists and is not a regular file: agx writes only regular files",
                path.display()
            )
        }
        _ => Ok(()),
    }
}

/// How [`write_atomic`] treats an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Existing {
    /// Leave it and fail.
    Keep,
    /// Replace it.
    Replace,
}

/// Writes `bytes` to `path` via a temporary file in the same directory, synced and renamed
/// into place, so readers see the old file or the new one, never a mix. A new file gets
/// `mode`; a file replaced gets the bits both `mode` and its own mode grant, so replacing
/// never widens who may read it. Only a regular file is ever replaced: a device, a
/// FIFO, a socket, a directory or a symbolic link at `path` is refused, never swapped for
/// a file (`--out /dev/null` would otherwise remove the device).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32, existing: Existing) -> Result<()> {
    let mode = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => meta.permissions().mode() & mode & 0o777,
        Ok(meta) => {
            let t = meta.file_type();
            let what = if t.is_symlink() {
                "a symbolic link"
            } else if t.is_dir() {
                "a directory"
            } else {
                "a device, FIFO or socket"
            };
            bail!("{} is {what}: agx writes only regular files (remove it first)", path.display())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => mode,
        Err(e) => return Err(e).with_context(|| format!("cannot write {}", path.display())),
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".agx-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set permissions in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    match existing {
        Existing::Keep => tmp.persist_noclobber(path).map_err(|e| {
            if e.error.kind() == io::ErrorKind::AlreadyExists {
                anyhow::anyhow!("{} already exists (pass --force to replace it)", path.display())
            } else {
                anyhow::Error::new(e.error).context(format!("cannot write {}", path.display()))
            }
        })?,
        Existing::Replace => tmp.persist(path).map_err(|e| {
            anyhow::Error::new(e.error).context(format!("cannot write {}", path.display()))
        })?,
    };
    // Make the rename itself durable.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An endless source that counts what was read from it.
    struct Endless {
        read: u64,
    }

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            buf.fill(b'z');
            self.read += buf.len() as u64;
            Ok(buf.len())
        }
    }

    #[test]
    fn an_endless_source_is_refused_after_one_byte_past_the_cap() {
        for max in [0, 1, 10, CHUNK as u64 - 1, CHUNK as u64, 3 * CHUNK as u64 + 7] {
            let mut src = Endless { read: 0 };
            assert!(matches!(read_to_end_capped(&mut src, max, 0), Err(CappedError::OverLimit)));
            assert_eq!(src.read, max + 1, "max {max}");
        }
    }

    #[test]
    fn a_source_at_the_cap_is_read_whole_and_one_byte_more_is_refused() {
        let data = vec![7u8; 2 * CHUNK + 3];
        let max = data.len() as u64;
        let read = read_to_end_capped(&mut &data[..], max, 0).unwrap();
        assert_eq!(read, data);
        assert!(read.capacity() as u64 <= max, "never more room than the cap");
        let read = read_to_end_capped(&mut &data[..], max, max).unwrap();
        assert_eq!(read, data);
        assert!(matches!(
            read_to_end_capped(&mut &data[..], max - 1, 0),
            Err(CappedError::OverLimit)
        ));
        assert_eq!(read_to_end_capped(&mut &b""[..], 0, 0).unwrap(), b"");
    }

    #[test]
    fn only_regular_files_are_replaced_and_never_made_more_readable() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
        for (path, what) in [(&fifo, "a device, FIFO or socket"), (&link, "a symbolic link")] {
            let err = write_atomic(path, b"x", 0o644, Existing::Replace).unwrap_err().to_string();
            assert!(err.contains(what), "{err}");
        }
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(
            &fs::symlink_metadata(&fifo).unwrap().file_type()
        ));
        let err = write_atomic(dir.path(), b"x", 0o644, Existing::Replace).unwrap_err();
        assert!(err.to_string().contains("a directory"), "{err}");

        let private = dir.path().join("private.json");
        fs::write(&private, "old").unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&private, b"new", 0o644, Existing::Replace).unwrap();
        assert_eq!(fs::read(&private).unwrap(), b"new");
        assert_eq!(fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o600);
        let new = dir.path().join("new.json");
        write_atomic(&new, b"x", 0o644, Existing::Replace).unwrap();
        assert_eq!(fs::metadata(&new).unwrap().permissions().mode() & 0o777, 0o644);
    }

    #[test]
    fn a_directory_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_capped(dir.path(), 10).unwrap_err().to_string();
        assert_eq!(err, format!("{} is a directory", dir.path().display()));
    }
}
