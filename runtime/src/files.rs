//! Reading the small files an operator names (configuration, tokens, tool allowlists): capped
//! while read, so that a device, a FIFO or a huge file named by mistake is refused with the
//! limit instead of filling memory.

use std::io::{self, Read as _};
use std::path::Path;

/// Most bytes of a configuration or allowlist file.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Most bytes of a token file.
pub const MAX_TOKEN_BYTES: u64 = 4096;

/// The UTF-8 text of the file at `path`, refused past `max` bytes (counted while reading, so
/// devices and FIFOs are held to it too) or if it is a directory.
pub fn read_small(path: &Path, max: u64) -> io::Result<String> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.is_dir() {
        return Err(io::Error::new(io::ErrorKind::IsADirectory, "is a directory"));
    }
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
