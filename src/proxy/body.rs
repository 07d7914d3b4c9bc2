//! Bodies that stream through levee: the request body on its way to a server (with the size
//! limit), and the response body on its way to the client, which holds the server slot and the
//! access-log entry until the last byte has gone out.

use super::conn::ConnActivity;
use super::pool::Permit;
use super::upstream::{UpBody, UpstreamError};
use crate::observe::access_log::{AccessLogger, Entry};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Why a request body could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ReqBodyError {
    /// The body went past `max_body_size`.
    #[error("request body larger than the limit of {0} bytes")]
    TooLarge(u64),
    /// The client's side failed (disconnect, bad chunked encoding, ...).
    #[error("client body: {0}")]
    Client(#[from] hyper::Error),
}

/// The request body sent to a server.
#[derive(Debug)]
pub enum ReqBody {
    Empty,
    /// A body read whole before forwarding (small bodies; replayable for retries).
    Full(Option<Bytes>),
    Stream {
        inner: Incoming,
        remaining: u64,
        limit: u64,
        /// Told of the body's progress (minimum body rate).
        conn: Arc<ConnActivity>,
    },
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = ReqBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ReqBodyError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Stream {
                inner,
                remaining,
                limit,
                conn,
            } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => {
                    if let Some(d) = f.data_ref() {
                        let n = d.len() as u64;
                        if n > *remaining {
                            return Poll::Ready(Some(Err(ReqBodyError::TooLarge(*limit))));
                        }
                        *remaining -= n;
                        conn.body_progress(n);
                    }
                    Poll::Ready(Some(Ok(f)))
                }
                Poll::Ready(Some(Err(e))) => {
                    conn.body_done();
                    Poll::Ready(Some(Err(ReqBodyError::Client(e))))
                }
                Poll::Ready(None) => {
                    conn.body_done();
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Full(b) => b.is_none(),
            ReqBody::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Stream { inner, .. } => inner.size_hint(),
        }
    }
}

/// Things to finish when a response is done: release the slot, write the log line.
#[derive(Debug)]
pub struct Completion {
    pub permit: Option<Permit>,
    pub log: Option<(AccessLogger, Entry)>,
    pub conn: Option<Arc<ConnActivity>>,
    /// The shield's hold on the client's request count.
    pub shield: Option<crate::shield::ReqTicket>,
    pub bytes: u64,
}

impl Drop for Completion {
    fn drop(&mut self) {
        drop(self.permit.take());
        drop(self.shield.take());
        if let Some((logger, mut e)) = self.log.take() {
            e.bytes = self.bytes;
            logger.log(e);
        }
        if let Some(c) = self.conn.take() {
            c.request_done();
        }
    }
}

/// The response body sent to the client.
#[derive(Debug)]
pub struct RespBody {
    kind: RespKind,
    done: Option<Completion>,
}

#[derive(Debug)]
enum RespKind {
    Full(Option<Bytes>),
    Upstream(UpBody),
}

impl RespBody {
    /// A body levee writes itself.
    pub fn full(b: impl Into<Bytes>) -> RespBody {
        let b: Bytes = b.into();
        RespBody {
            kind: RespKind::Full((!b.is_empty()).then_some(b)),
            done: None,
        }
    }
    /// A server's body, streamed.
    pub fn upstream(b: UpBody) -> RespBody {
        RespBody {
            kind: RespKind::Upstream(b),
            done: None,
        }
    }
    /// Attach what to finish when the body is done (or dropped).
    pub fn on_complete(&mut self, c: Completion) {
        let empty = self.is_end_stream();
        self.done = Some(c);
        if empty {
            // Nothing will be polled for an empty body; finish when the response is dropped.
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        let r = match &mut this.kind {
            RespKind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespKind::Upstream(inner) => Pin::new(inner).poll_frame(cx),
        };
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(d), Some(c)) = (f.data_ref(), this.done.as_mut()) {
                    c.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                this.done = None;
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RespKind::Full(b) => b.is_none(),
            RespKind::Upstream(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RespKind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RespKind::Upstream(inner) => inner.size_hint(),
        }
    }
}
