//! One client connection's activity, for the header timeout and the idle keep-alive timeout.
//!
//! hyper's own header timeout also runs while a keep-alive connection waits for its next
//! request, which would make every idle timeout longer than it meaningless. So levee keeps its
//! own clock: the header timer starts when the connection opens or when the first byte of a new
//! request arrives after the previous response, and stops when the request head is complete;
//! the idle timer runs while no request is in progress and no byte of a new one has arrived.

use crate::clock::now_ms;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What the connection watchdog reads.
#[derive(Debug, Default)]
pub struct ConnActivity {
    /// Requests whose head has been read and whose response has not finished.
    active: AtomicU32,
    /// When the previous response finished (ms clock).
    last_done_ms: AtomicU64,
    /// When the head now being read started arriving; 0 when none is.
    head_since_ms: AtomicU64,
}

/// What the watchdog should do with a connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// A request head has been arriving for longer than the header timeout.
    HeaderTimeout,
    /// No request for longer than the idle timeout.
    Idle,
}

impl ConnActivity {
    /// A new connection: waiting for the first request head.
    pub fn new() -> Arc<ConnActivity> {
        let now = now_ms();
        Arc::new(ConnActivity {
            active: AtomicU32::new(0),
            last_done_ms: AtomicU64::new(now),
            head_since_ms: AtomicU64::new(now),
        })
    }

    /// A request head is complete.
    pub fn request_started(&self) {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.head_since_ms.store(0, Ordering::Release);
    }

    /// A response has been sent (or abandoned).
    pub fn request_done(&self) {
        self.last_done_ms.store(now_ms(), Ordering::Release);
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    fn bytes_arrived(&self) {
        if self.active.load(Ordering::Acquire) == 0
            && self.head_since_ms.load(Ordering::Acquire) == 0
        {
            self.head_since_ms.store(now_ms(), Ordering::Release);
        }
    }

    /// Checks the timers.
    pub fn verdict(&self, header_timeout_ms: u64, idle_timeout_ms: u64) -> Verdict {
        if self.active.load(Ordering::Acquire) > 0 {
            return Verdict::Keep;
        }
        let now = now_ms();
        let head = self.head_since_ms.load(Ordering::Acquire);
        if head != 0 {
            if now.saturating_sub(head) >= header_timeout_ms {
                return Verdict::HeaderTimeout;
            }
            return Verdict::Keep;
        }
        if now.saturating_sub(self.last_done_ms.load(Ordering::Acquire)) >= idle_timeout_ms {
            return Verdict::Idle;
        }
        Verdict::Keep
    }
}

/// A client socket that tells its [`ConnActivity`] when bytes arrive.
#[derive(Debug)]
pub struct TrackedStream {
    inner: TcpStream,
    activity: Arc<ConnActivity>,
}

impl TrackedStream {
    pub fn new(inner: TcpStream, activity: Arc<ConnActivity>) -> TrackedStream {
        TrackedStream { inner, activity }
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.bytes_arrived();
        }
        r
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
