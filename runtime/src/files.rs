//! Reading the small files an operator names (configuration, tokens, tool allowlists): capped
//! while read, so that a device, a FIFO or a huge file named by mistake is refused with the
//! limit instead of filling memory.

use std::fs::File;
use std::io::{self, Read as _};
use std::os::fd::AsFd as _;
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::Path;
use std::time::Duration;

/// Most bytes of a configuration or allowlist file.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Most bytes of a token file.
pub const MAX_TOKEN_BYTES: u64 = 4096;

/// How long a FIFO named as a file may go without a writer before it is given up on.
pub const FIFO_WAIT: Duration = Duration::from_secs(30);

/// Opens `path` for reading without ever blocking in `open`: a directory is refused, and a
/// FIFO (a named pipe, or a pipe such as `<(command)`) must have something to read, or its
/// writer must have closed, within `wait`; else it is refused with the time it was given.
/// Regular files and devices open at once. The file returned reads blocking.
pub fn open_readable(path: &Path, wait: Duration) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_dir() {
        return Err(io::Error::new(io::ErrorKind::IsADirectory, "is a directory"));
    }
    if kind.is_fifo() {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut fds, PollTimeout::from(ms)).map_err(io::Error::from)?;
        if ready == 0 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("a pipe nobody wrote to or closed within {} s", wait.as_secs()),
            ));
        }
    }
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()))
        .map_err(io::Error::from)?;
    Ok(file)
}

/// The UTF-8 text of the file at `path`, refused past `max` bytes (counted while reading, so
/// devices and FIFOs are held to it too), if it is a directory, or if it is a FIFO nobody
/// writes to ([`open_readable`]).
pub fn read_small(path: &Path, max: u64) -> io::Result<String> {
    let file = open_readable(path, FIFO_WAIT)?;
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("over the limit of {max} bytes"),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_files_are_read_up_to_the_cap_and_refused_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("at");
        std::fs::write(&at, "x".repeat(10)).unwrap();
        assert_eq!(read_small(&at, 10).unwrap(), "x".repeat(10));
        let e = read_small(&at, 9).unwrap_err();
        assert_eq!(e.to_string(), "over the limit of 9 bytes");
        let e = read_small(Path::new("/dev/zero"), 4096).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        let e = read_small(dir.path(), 4096).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::IsADirectory);
        std::fs::write(&at, [0xff, 0xfe]).unwrap();
        assert_eq!(read_small(&at, 10).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
