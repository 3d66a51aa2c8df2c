//! Content-addressed blobs (components, inputs, outputs) as files:
//! `DIR/blobs/sha256/<hex>`. An upload is hashed while it streams in, refused past the size
//! cap or on a digest mismatch, and made durable (fsync, rename) before it is acknowledged.
//! Identical uploads are stored once.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use agenix_proto::Digest;
use agenix_proto::digest::Hasher;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The blob store.
#[derive(Debug, Clone)]
pub struct Blobs {
    dir: PathBuf,
    max: u64,
}

/// An upload was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Over the size cap.
    #[error("blob of {size} bytes is over the limit of {max}")]
    TooLarge {
        /// What was announced.
        size: u64,
        /// The cap.
        max: u64,
    },
    /// The bytes do not hash to the announced digest.
    #[error("blob announced as {expected} hashes to {found}")]
    Mismatch {
        /// Announced.
        expected: Digest,
        /// Found.
        found: Digest,
    },
    /// The stream ended before `size` bytes.
    #[error("blob ended after {got} of {size} bytes")]
    Short {
        /// Bytes received.
        got: u64,
        /// Bytes announced.
        size: u64,
    },
    /// Storage failed.
    #[error("blob storage: {0}")]
    Io(#[from] std::io::Error),
}

impl Blobs {
    /// The store under `dir`, refusing blobs over `max` bytes.
    pub fn new(dir: &Path, max: u64) -> std::io::Result<Self> {
        let dir = dir.join("blobs/sha256");
        fs::create_dir_all(&dir)?;
        Ok(Self { dir, max })
    }

    fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    /// The size cap.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Whether the blob is stored.
    pub fn has(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    /// The blob's size, if stored.
    pub fn size(&self, d: &Digest) -> Option<u64> {
        fs::metadata(self.path(d)).ok().map(|m| m.len())
    }

    /// Opens a stored blob.
    pub fn open(&self, d: &Digest) -> std::io::Result<(tokio::fs::File, u64)> {
        let file = fs::File::open(self.path(d))?;
        let size = file.metadata()?.len();
        Ok((tokio::fs::File::from_std(file), size))
    }

    /// Reads exactly `size` bytes from `from`, hashing them, and stores them under `digest`.
    /// Returns whether the blob was already stored.
    pub async fn put(
        &self,
        digest: Digest,
        size: u64,
        from: &mut (impl AsyncRead + Unpin),
    ) -> Result<bool, BlobError> {
        if size > self.max {
            return Err(BlobError::TooLarge { size, max: self.max });
        }
        let tmp = tempfile::Builder::new().prefix(".upload-").tempfile_in(&self.dir)?;
        let (file, tmp_path) = tmp.into_parts();
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut h = Hasher::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut got = 0u64;
        while got < size {
            let want = usize::try_from((size - got).min(buf.len() as u64)).unwrap_or(buf.len());
            let n = from.read(&mut buf[..want]).await?;
            if n == 0 {
                return Err(BlobError::Short { got, size });
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            got += n as u64;
        }
        let found = h.finish();
        if found != digest {
            return Err(BlobError::Mismatch { expected: digest, found });
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        let path = self.path(&digest);
        if path.is_file() {
            return Ok(true);
        }
        let (path2, dir) = (path.clone(), self.dir.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            file.sync_all()?;
            tmp_path.persist(&path2).map_err(|e| e.error)?;
            fs::File::open(&dir)?.sync_all()
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(false)
    }
}
