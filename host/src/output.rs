//! Capturing a task's stdout and stderr under a cap, and making stderr safe to log.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use regex::Regex;

/// Bytes of stderr kept in a task report.
pub const REPORT_STDERR_BYTES: usize = 10_000;

/// An in-memory output that keeps at most `cap` bytes; writing past the cap marks it
/// overflowed and fails the write, which stops a wasm guest with a trap.
#[derive(Debug, Clone)]
pub struct CappedPipe {
    inner: Arc<PipeState>,
}

#[derive(Debug)]
struct PipeState {
    cap: usize,
    buf: Mutex<BytesMut>,
    overflowed: AtomicBool,
}

/// How much one write may carry; bigger than any cap remainder would be pointless.
const PERMIT: usize = 1 << 20;

impl CappedPipe {
    /// A pipe keeping at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            inner: Arc::new(PipeState {
                cap,
                buf: Mutex::new(BytesMut::new()),
                overflowed: AtomicBool::new(false),
            }),
        }
    }

    fn buf(&self) -> MutexGuard<'_, BytesMut> {
        // A poisoned lock only means another writer panicked mid-append; the bytes are
        // still a prefix of the output.
        self.inner.buf.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `bytes`, or keeps what fits and reports overflow.
    pub fn push(&self, bytes: &[u8]) -> Result<(), Overflow> {
        let mut buf = self.buf();
        let room = self.inner.cap.saturating_sub(buf.len());
        if bytes.len() > room {
            buf.extend_from_slice(&bytes[..room]);
            self.inner.overflowed.store(true, Ordering::SeqCst);
            return Err(Overflow);
        }
        buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Whether anything was written past the cap.
    pub fn overflowed(&self) -> bool {
        self.inner.overflowed.load(Ordering::SeqCst)
    }

    /// Everything kept so far.
    pub fn contents(&self) -> Bytes {
        self.buf().clone().freeze()
    }

    /// Bytes kept so far.
    pub fn len(&self) -> usize {
        self.buf().len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A write went past the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("output limit exceeded")]
pub struct Overflow;

impl wasmtime_wasi::p2::OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), wasmtime_wasi::p2::StreamError> {
        self.push(&bytes).map_err(|e| wasmtime_wasi::p2::StreamError::Trap(e.into()))
    }

    fn flush(&mut self) -> Result<(), wasmtime_wasi::p2::StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, wasmtime_wasi::p2::StreamError> {
        // Always offer a full permit: a guest writing past the cap must be stopped and
        // reported, not left spinning on a zero-byte permit.
        Ok(PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(self.push(buf).map(|()| buf.len()).map_err(io::Error::other))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl wasmtime_wasi::cli::IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for CappedPipe {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(self.clone())
    }
}

/// Patterns that look like credentials: cloud keys, tokens, private keys, `password=...`.
fn secret_patterns() -> &'static Regex {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        // A constant pattern, exercised by the tests below: it always compiles.
        #[allow(clippy::expect_used, reason = "constant pattern, covered by tests")]
        // Case is ignored only in the words people write either way (`Bearer`, `PASSWORD`):
        // folding the case of whole character classes made compiling this pattern take
        // most of a short `agx au run`. The other forms are fixed by their issuers, and
        // `[[:alpha:]]` in the key header stands for letters of either case.
        Regex::new(concat!(
            r"(?:",
            r"-----BEGIN [[:alpha:] ]*PRIVATE KEY-----[\s\S]*?(?:-----END [[:alpha:] ]*PRIVATE KEY-----|$)",
            r"|\bAKIA[0-9A-Z]{16}\b",
            r"|\bgh[pousr]_[A-Za-z0-9]{30,}\b",
            r"|\bxox[abprs]-[A-Za-z0-9-]{10,}",
            r"|\bsk-[A-Za-z0-9_-]{20,}",
            r"|\b(?i:bearer)\s+[A-Za-z0-9._~+/=-]{16,}",
            r"|\b(?i:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)\s*[=:]\s*\S+",
            r"|\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}",
            r")"
        ))
        .expect("the secret pattern compiles")
    })
}

/// Makes a task's stderr safe to store and show: lossy UTF-8, ANSI escape sequences and
/// other control characters removed (newlines and tabs kept), Unicode bidirectional
/// controls removed (they make text read differently from what it holds), secret-looking
/// tokens replaced by `[REDACTED]`, and at most [`REPORT_STDERR_BYTES`] bytes kept (marked
/// when cut).
pub fn sanitize_stderr(raw: &[u8]) -> String {
    if raw.is_empty() {
        return String::new();
    }
    // Look at a bounded prefix: a flood is cut anyway.
    let window = &raw[..raw.len().min(REPORT_STDERR_BYTES * 4)];
    let text = String::from_utf8_lossy(window);
    let plain = agenix_proto::text::clean(&text);
    let redacted = secret_patterns().replace_all(&plain, "[REDACTED]");
    let mut out = redacted.into_owned();
    if out.len() > REPORT_STDERR_BYTES || raw.len() > window.len() {
        let mut cut = REPORT_STDERR_BYTES.min(out.len());
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("\n[stderr truncated]");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_keeps_up_to_the_cap_then_overflows() {
        let p = CappedPipe::new(5);
        p.push(b"abc").unwrap();
        assert_eq!(p.push(b"def"), Err(Overflow));
        assert!(p.overflowed());
        assert_eq!(&p.contents()[..], b"abcde");
        let exact = CappedPipe::new(3);
        exact.push(b"abc").unwrap();
        assert!(!exact.overflowed());
    }

    #[test]
    fn ansi_and_controls_are_stripped() {
        let raw = b"\x1b[31mred\x1b[0m \x1b]0;title\x07ok\x1b(B\r\x08\x00 done\n\tnext";
        assert_eq!(sanitize_stderr(raw), "red ok done\n\tnext");
    }

    #[test]
    fn bidi_controls_and_overrides_are_stripped() {
        let raw = "if \u{202e}\u{2066}admin\u{2069}\u{2066} ok \u{202a}\u{202b}\u{202c}\u{202d}\
                   \u{2067}\u{2068}\u{200e}\u{200f}\u{061c}end";
        assert_eq!(sanitize_stderr(raw.as_bytes()), "if admin ok end");
        // Right-to-left text itself is kept.
        assert_eq!(sanitize_stderr("שלום مرحبا".as_bytes()), "שלום مرحبا");
    }

    #[test]
    fn secrets_are_redacted() {
        let raw = "key AKIAABCDEFGHIJKLMNOP and password=hunter2 and Bearer abcdefghijklmnop1234 \
                   ghp_abcdefghijklmnopqrstuvwxyz0123456789\n-----BEGIN OPENSSH PRIVATE KEY-----\nxyz\n\
                   -----END OPENSSH PRIVATE KEY-----\nafter";
        let out = sanitize_stderr(raw.as_bytes());
        for secret in ["AKIAABCDEFGHIJKLMNOP", "hunter2", "abcdefghijklmnop1234", "ghp_", "xyz"] {
            assert!(!out.contains(secret), "{secret} leaked: {out}");
        }
        assert!(out.ends_with("after"), "{out}");
        assert_eq!(out.matches("[REDACTED]").count(), 5, "{out}");
        // The words people write in any case are matched in any case.
        let raw = "PASSWORD: s3cret1 BEARER abcdefghijklmnop5678 Api_Key=k3y9 tOkEn = t0k\n";
        let out = sanitize_stderr(raw.as_bytes());
        for secret in ["s3cret1", "abcdefghijklmnop5678", "k3y9", "t0k"] {
            assert!(!out.contains(secret), "{secret} leaked: {out}");
        }
        assert_eq!(sanitize_stderr(b""), "");
    }

    #[test]
    fn long_stderr_is_capped_on_a_char_boundary() {
        let raw = "é".repeat(REPORT_STDERR_BYTES);
        let out = sanitize_stderr(raw.as_bytes());
        assert!(out.len() <= REPORT_STDERR_BYTES + 20);
        assert!(out.ends_with("[stderr truncated]"));
        assert_eq!(sanitize_stderr(&vec![b'x'; 1 << 20]).len(), REPORT_STDERR_BYTES + 19);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_dropped() {
        assert_eq!(sanitize_stderr(b"a\xffb"), "a\u{fffd}b");
    }
}
