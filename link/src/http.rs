//! The HTTP listeners beside QUIC (metrics, the dashboard) bounded, so that clients which
//! open connections and never finish a request cannot take the process's file
//! descriptors or memory: at most [`MAX_CONNECTIONS`] at once (more wait in the kernel's
//! backlog), and a connection that sends nothing for [`IDLE`] is closed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most connections one listener holds at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a connection may send nothing before it is closed.
pub const IDLE: Duration = Duration::from_secs(20);

/// A listener whose connections are counted and time out when idle.
#[derive(Debug)]
pub struct Bounded<L> {
    inner: L,
    slots: Arc<Semaphore>,
}

impl<L> Bounded<L> {
    /// Bounds `inner`.
    pub fn new(inner: L) -> Self {
        Self { inner, slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)) }
    }
}

impl<L: axum::serve::Listener> axum::serve::Listener for Bounded<L> {
    type Io = Guarded<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The semaphore is never closed: a permit always comes, once a connection ends.
        let permit = loop {
            if let Ok(p) = self.slots.clone().acquire_owned().await {
                break p;
            }
        };
        let (io, addr) = self.inner.accept().await;
        (Guarded { io, _permit: permit, idle: Box::pin(tokio::time::sleep(IDLE)) }, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection holding its slot, closed after [`IDLE`] without a byte read.
#[derive(Debug)]
pub struct Guarded<T> {
    io: T,
    _permit: OwnedSemaphorePermit,
    idle: Pin<Box<tokio::time::Sleep>>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    let next = tokio::time::Instant::now() + IDLE;
                    self.idle.as_mut().reset(next);
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                ready!(self.idle.as_mut().poll(cx));
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle connection")))
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
