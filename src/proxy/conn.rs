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
    /// When the request body now being received started; 0 when none is.
    body_since_ms: AtomicU64,
    /// Bytes of that body received so far.
    body_bytes: AtomicU64,
    /// Since when a response write has been waiting for the client to read; 0 when none is.
    write_blocked_ms: AtomicU64,
    /// Whether the client ever sent a byte.
    received: std::sync::atomic::AtomicBool,
}

/// What the watchdog should do with a connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// A request head has been arriving for longer than the header timeout.
    HeaderTimeout,
    /// No request for longer than the idle timeout.
    Idle,
    /// A request body arrives slower than the minimum rate.
    SlowBody,
    /// The client has not read the response for longer than the send timeout.
    SlowRead,
}

/// The limits the watchdog applies, in milliseconds and bytes per second.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_ms: u64,
    pub idle_ms: u64,
    pub body_grace_ms: u64,
    pub min_body_rate: u64,
    pub send_timeout_ms: u64,
}

impl ConnActivity {
    /// A new connection: waiting for the first request head.
    pub fn new() -> Arc<ConnActivity> {
        let now = now_ms();
        Arc::new(ConnActivity {
            last_done_ms: AtomicU64::new(now),
            head_since_ms: AtomicU64::new(now),
            ..ConnActivity::default()
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
        self.body_done();
    }

    /// A request body starts streaming in.
    pub fn body_started(&self) {
        self.body_bytes.store(0, Ordering::Relaxed);
        self.body_since_ms.store(now_ms(), Ordering::Release);
    }

    /// Bytes of the request body arrived.
    pub fn body_progress(&self, n: u64) {
        self.body_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// The request body is complete (or abandoned).
    pub fn body_done(&self) {
        self.body_since_ms.store(0, Ordering::Release);
    }

    /// No request in progress and no byte of a new one yet.
    pub fn is_idle(&self) -> bool {
        self.active.load(Ordering::Acquire) == 0 && self.head_since_ms.load(Ordering::Acquire) == 0
    }

    /// Did the client send anything at all?
    pub fn received_any(&self) -> bool {
        self.received.load(Ordering::Relaxed)
    }

    fn bytes_arrived(&self) {
        if !self.received.load(Ordering::Relaxed) {
            self.received.store(true, Ordering::Relaxed);
        }
        if self.active.load(Ordering::Acquire) == 0
            && self.head_since_ms.load(Ordering::Acquire) == 0
        {
            self.head_since_ms.store(now_ms(), Ordering::Release);
        }
    }

    /// Checks the timers.
    pub fn verdict(&self, l: &Limits) -> Verdict {
        let now = now_ms();
        let blocked = self.write_blocked_ms.load(Ordering::Acquire);
        if blocked != 0 && now.saturating_sub(blocked) >= l.send_timeout_ms {
            return Verdict::SlowRead;
        }
        if self.active.load(Ordering::Acquire) > 0 {
            let body = self.body_since_ms.load(Ordering::Acquire);
            if body != 0 && l.min_body_rate > 0 {
                let took = now.saturating_sub(body);
                if took >= l.body_grace_ms
                    && self.body_bytes.load(Ordering::Relaxed).saturating_mul(1000) / took.max(1)
                        < l.min_body_rate
                {
                    return Verdict::SlowBody;
                }
            }
            return Verdict::Keep;
        }
        let head = self.head_since_ms.load(Ordering::Acquire);
        if head != 0 {
            if now.saturating_sub(head) >= l.header_ms {
                return Verdict::HeaderTimeout;
            }
            return Verdict::Keep;
        }
        if now.saturating_sub(self.last_done_ms.load(Ordering::Acquire)) >= l.idle_ms {
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

impl TrackedStream {
    /// A write that cannot proceed means the client is not reading: note since when.
    fn track_write(&self, pending: bool) {
        let w = &self.activity.write_blocked_ms;
        if pending {
            if w.load(Ordering::Relaxed) == 0 {
                w.store(now_ms(), Ordering::Relaxed);
            }
        } else if w.load(Ordering::Relaxed) != 0 {
            w.store(0, Ordering::Relaxed);
        }
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        this.track_write(r.is_pending());
        r
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.track_write(r.is_pending());
        r
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
