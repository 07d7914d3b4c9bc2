//! levee's own HTTP/1.1 client towards the servers: per-server keep-alive connections, one
//! request at a time on each, driven inside the client connection's task.
//!
//! hyper's pooled client runs every upstream connection in a task of its own and hands each
//! request and response over channels; here the request is written, and the response read,
//! by the task that serves the client, so a proxied request costs no extra task wake-up, no
//! channel and no per-request allocation beyond the response's headers. The framing rules
//! are in [`super::upstream_codec`].
//!
//! Idle connections are kept per server (in [`ServerState`], so they survive reloads), up to
//! the pool's `max_idle_connections`, most recently used first, for at most
//! [`IDLE_TIMEOUT`]. A kept connection the server closed meanwhile is noticed before it is
//! used (its readiness, without a system call in the common case), and a request that finds
//! it closed anyway before any byte of a response arrived is sent again once on a new
//! connection when its body can be replayed.
//!
//! A body larger than one write is sent while the response is read: a server that answers
//! before the end of the body (refusing it with 413, 401, ...) has its answer passed on, and
//! that connection is not kept.

use super::body::{ReqBody, ReqBodyError};
use super::pool::ServerState;
use super::upstream_codec::{self as codec, Chunk, Framing, Invalid, Parsed};
use bytes::{Bytes, BytesMut};
use http::Response;
use http_body::{Body, Frame, SizeHint};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// How long an idle keep-alive connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Bytes asked of the socket by the first read of a response.
const FIRST_READ: usize = 4096;
/// The most bytes asked of the socket by one read.
const MAX_READ: usize = 32 * 1024;
/// A request body this small is sent in the same write as the head.
const COALESCE_BODY: usize = 16 * 1024;

/// Why a request to a server failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The TCP connection could not be opened (refused, unreachable, timed out).
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    /// Reading the client's request body failed or went past the limit.
    #[error("request body: {0}")]
    Body(#[from] ReqBodyError),
    /// The connection failed while sending or receiving.
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    /// The server closed the connection before a whole response.
    #[error("the server closed the connection before the end of the response")]
    Closed,
    /// The server's answer was not valid HTTP/1.1.
    #[error("invalid response: {0}")]
    Invalid(#[from] Invalid),
}

/// Options of one pool's connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnOpts {
    pub connect_timeout: Duration,
    pub max_idle: usize,
}

/// A server's idle keep-alive connections.
#[derive(Debug, Default)]
pub struct IdleConns {
    conns: Mutex<Vec<UpConn>>,
}

impl IdleConns {
    /// The most recently used connection that is still open, if any.
    fn take(&self, now_ms: u64) -> Option<UpConn> {
        loop {
            let conn = {
                let mut v = self.conns.lock().ok()?;
                v.pop()?
            };
            if now_ms.saturating_sub(conn.idle_since_ms) < IDLE_TIMEOUT.as_millis() as u64
                && conn.still_open()
            {
                return Some(conn);
            }
        }
    }

    /// Keeps a connection for the next request, up to `max` (the oldest go first).
    fn put(&self, mut conn: UpConn, max: usize, now_ms: u64) {
        if max == 0 {
            return;
        }
        conn.idle_since_ms = now_ms;
        let dropped = match self.conns.lock() {
            Ok(mut v) => {
                // Expired connections are at the front (oldest first): drop them now.
                let expired = v
                    .iter()
                    .take_while(|c| {
                        now_ms.saturating_sub(c.idle_since_ms) >= IDLE_TIMEOUT.as_millis() as u64
                    })
                    .count();
                let mut gone: Vec<UpConn> = v.drain(..expired).collect();
                if v.len() >= max {
                    let n = v.len() + 1 - max;
                    gone.extend(v.drain(..n));
                }
                v.push(conn);
                gone
            }
            Err(_) => Vec::new(),
        };
        // Closing sockets happens outside the lock.
        drop(dropped);
    }

    /// Idle connections kept now.
    pub fn len(&self) -> usize {
        self.conns.lock().map_or(0, |v| v.len())
    }

    /// Whether no connection is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One connection to a server with its buffers (reused from request to request).
#[derive(Debug)]
struct UpConn {
    stream: TcpStream,
    /// Bytes read and not consumed yet.
    buf: BytesMut,
    /// The request head being written.
    wbuf: Vec<u8>,
    /// Where the socket is read into (initialised once, grown for large bodies).
    scratch: Vec<u8>,
    idle_since_ms: u64,
}

impl UpConn {
    fn new(stream: TcpStream) -> UpConn {
        UpConn {
            stream,
            buf: BytesMut::with_capacity(FIRST_READ),
            wbuf: Vec::with_capacity(1024),
            scratch: vec![0; FIRST_READ],
            idle_since_ms: 0,
        }
    }

    /// Whether a kept connection can carry a request: nothing arrived on it while it was idle
    /// (an early close, a reset, or stray bytes all make it unusable).
    fn still_open(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads more bytes into `buf`; `Ok(0)` at the end of the stream.
    ///
    /// The read goes through `poll_read` into initialised memory (`scratch`), which lets
    /// tokio clear the socket's readiness after a short read: that saves the extra read that
    /// would only answer "would block" before the next response. Only the bytes read are
    /// then copied to `buf`.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_fill(&mut self.stream, &mut self.buf, &mut self.scratch, cx)
    }
}

/// [`UpConn::poll_fill`] over any reader.
fn poll_fill<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    scratch: &mut Vec<u8>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    let mut rb = ReadBuf::new(scratch);
    ready!(Pin::new(&mut *rd).poll_read(cx, &mut rb))?;
    let n = rb.filled().len();
    buf.extend_from_slice(rb.filled());
    // Large bodies get larger reads, small answers stay cheap.
    if n == scratch.len() && n < MAX_READ {
        scratch.resize((n * 2).min(MAX_READ), 0);
    }
    Poll::Ready(Ok(n))
}

/// Sends `req` to `server` and returns the response once its head has arrived; the body
/// streams from the server as it is polled. The future owns everything it needs, so it can
/// be finished in the background when the client goes away.
pub async fn send(
    server: Arc<ServerState>,
    opts: ConnOpts,
    parts: Arc<http::request::Parts>,
    mut body: ReqBody,
) -> Result<Response<UpBody>, UpstreamError> {
    // A request the server may have received is only sent again when it is idempotent; one
    // that could not even be written is always safe to send again.
    let idempotent = super::handler::idempotent(&parts.method);
    let replayable = !matches!(body, ReqBody::Stream { .. });
    let reused = server.conns.take(crate::clock::now_ms());
    let was_reused = reused.is_some();
    let mut conn = match reused {
        Some(c) => c,
        None => connect(&server, opts).await?,
    };
    let replay = match &body {
        ReqBody::Full(b) => b.clone(),
        _ => None,
    };
    let host = server.authority.as_str();
    match exchange(&mut conn, &parts, &mut body, host).await {
        Ok(head) => Ok(finish(server, opts, conn, head)),
        Err(Failure {
            error,
            response_started: false,
            written,
        }) if was_reused
            && replayable
            && (idempotent || !written)
            && matches!(error, UpstreamError::Closed | UpstreamError::Io(_)) =>
        {
            // The server closed the kept connection as the request went out: it never saw
            // the request, so it is sent once more on a new connection.
            drop(conn);
            let mut conn = connect(&server, opts).await?;
            let mut body = match replay {
                Some(b) => ReqBody::Full(Some(b)),
                None => ReqBody::Empty,
            };
            let result = exchange(&mut conn, &parts, &mut body, host).await;
            match result {
                Ok(head) => Ok(finish(server, opts, conn, head)),
                Err(f) => Err(f.error),
            }
        }
        Err(f) => Err(f.error),
    }
}

async fn connect(server: &ServerState, opts: ConnOpts) -> Result<UpConn, UpstreamError> {
    let stream =
        match tokio::time::timeout(opts.connect_timeout, TcpStream::connect(server.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(UpstreamError::Connect(e)),
            Err(_) => {
                return Err(UpstreamError::Connect(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connect timed out",
                )));
            }
        };
    stream.set_nodelay(true).map_err(UpstreamError::Connect)?;
    Ok(UpConn::new(stream))
}

struct Failure {
    error: UpstreamError,
    /// Whether any byte of a response had arrived.
    response_started: bool,
    /// Whether the whole request had been written.
    written: bool,
}

impl<E: Into<UpstreamError>> From<E> for Failure {
    /// A failure while writing the request.
    fn from(e: E) -> Failure {
        Failure {
            error: e.into(),
            response_started: false,
            written: false,
        }
    }
}

/// Writes the request and reads the response head.
async fn exchange(
    conn: &mut UpConn,
    parts: &http::request::Parts,
    body: &mut ReqBody,
    host: &str,
) -> Result<codec::Head, Failure> {
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    conn.wbuf.clear();
    // A body held whole is sent with its length; a streamed one keeps the client's
    // Content-Length, or goes chunked when it had none.
    let (length, chunked) = match body {
        ReqBody::Empty => (None, false),
        ReqBody::Full(b) => (Some(b.as_ref().map_or(0, |b| b.len())), false),
        ReqBody::Stream { .. } => (
            None,
            !parts.headers.contains_key(http::header::CONTENT_LENGTH),
        ),
    };
    codec::write_request_head(
        &mut conn.wbuf,
        &parts.method,
        pq,
        &parts.headers,
        host,
        length,
        chunked,
    );
    match body {
        ReqBody::Empty => conn.stream.write_all(&conn.wbuf).await?,
        ReqBody::Full(b) => {
            let data = b.take().unwrap_or_default();
            if data.len() <= COALESCE_BODY {
                conn.wbuf.extend_from_slice(&data);
                conn.stream.write_all(&conn.wbuf).await?;
            } else {
                conn.stream.write_all(&conn.wbuf).await?;
                return body_and_head(conn, Outgoing::Whole(data), &parts.method).await;
            }
        }
        ReqBody::Stream { .. } => {
            conn.stream.write_all(&conn.wbuf).await?;
            return body_and_head(conn, Outgoing::Stream { body, chunked }, &parts.method).await;
        }
    }
    read_head(conn, &parts.method).await
}

/// A request body still to be written after its head.
enum Outgoing<'a> {
    Whole(Bytes),
    Stream {
        body: &'a mut ReqBody,
        chunked: bool,
    },
}

/// Writes the body while reading the response: a server may answer before it has read the
/// whole body, typically to refuse it (413, 401, 403), and then stop reading. Writing first and
/// reading after would turn that answer into a 502 (the write fails when the server closes) or
/// a hang (when it keeps the connection open without reading).
///
/// - A final answer of 400 or more that arrives before the end of the body stops the body: the
///   answer goes to the client.
/// - Any other early answer waits for the rest of the body to be written, as the server may
///   still be reading it; if that write then fails, the answer still goes to the client.
/// - Either way the connection is not kept, since the server may be in the middle of the body.
/// - Failing to read the client's body (its limit, an error) ends the request at once.
async fn body_and_head(
    conn: &mut UpConn,
    outgoing: Outgoing<'_>,
    method: &http::Method,
) -> Result<codec::Head, Failure> {
    let UpConn {
        stream,
        buf,
        wbuf,
        scratch,
        ..
    } = conn;
    let (mut rd, mut wr) = stream.split();
    let write = async {
        match outgoing {
            Outgoing::Whole(data) => wr.write_all(&data).await.map_err(Failure::from),
            Outgoing::Stream { body, chunked } => stream_body(&mut wr, wbuf, body, chunked).await,
        }
    };
    let read = read_head_from(&mut rd, buf, scratch, method);
    tokio::pin!(write, read);
    let mut head: Option<codec::Head> = None;
    let mut write_error: Option<Failure> = None;
    loop {
        tokio::select! {
            biased;
            written = &mut write, if write_error.is_none() => match written {
                Ok(()) => {
                    return match head {
                        Some(head) => Ok(head),
                        None => (&mut read).await,
                    };
                }
                Err(f) if matches!(f.error, UpstreamError::Body(_)) => return Err(f),
                Err(f) => {
                    if let Some(mut head) = head {
                        head.keep_alive = false;
                        return Ok(head);
                    }
                    // The server may have answered before it closed: read on.
                    write_error = Some(f);
                }
            },
            answer = &mut read, if head.is_none() => match answer {
                Ok(mut answer) => {
                    answer.keep_alive = false;
                    if write_error.is_some() || answer.status.as_u16() >= 400 {
                        return Ok(answer);
                    }
                    head = Some(answer);
                }
                Err(f) => {
                    return Err(match write_error {
                        // Nothing came back from a request that could not be written.
                        Some(w) => Failure {
                            response_started: f.response_started,
                            ..w
                        },
                        None => f,
                    });
                }
            },
        }
    }
}

/// Streams the client's body to the server as it arrives.
async fn stream_body<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    wbuf: &mut Vec<u8>,
    body: &mut ReqBody,
    chunked: bool,
) -> Result<(), Failure> {
    loop {
        let frame = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await;
        match frame {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers are not forwarded
                };
                if data.is_empty() {
                    continue;
                }
                if chunked {
                    wbuf.clear();
                    codec::write_chunk_size(wbuf, data.len());
                    wr.write_all(wbuf).await?;
                    wr.write_all(&data).await?;
                    wr.write_all(b"\r\n").await?;
                } else {
                    wr.write_all(&data).await?;
                }
            }
            Some(Err(e)) => return Err(e.into()),
            None => {
                if chunked {
                    wr.write_all(b"0\r\n\r\n").await?;
                }
                return Ok(());
            }
        }
    }
}

/// Reads until a final response head is complete (interim 1xx answers are skipped).
async fn read_head(conn: &mut UpConn, method: &http::Method) -> Result<codec::Head, Failure> {
    let UpConn {
        stream,
        buf,
        scratch,
        ..
    } = conn;
    read_head_from(stream, buf, scratch, method).await
}

/// [`read_head`] over any reader (the read half of a connection being written meanwhile).
async fn read_head_from<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    scratch: &mut Vec<u8>,
    method: &http::Method,
) -> Result<codec::Head, Failure> {
    let mut started = false;
    let fail = |error: UpstreamError, started: bool| Failure {
        error,
        response_started: started,
        written: true,
    };
    loop {
        if !buf.is_empty() {
            started = true;
            match codec::parse_head(buf, method) {
                Ok(Parsed::Final(head, n)) => {
                    let _ = buf.split_to(n);
                    return Ok(*head);
                }
                Ok(Parsed::Interim(n)) => {
                    let _ = buf.split_to(n);
                    continue;
                }
                Ok(Parsed::Partial) if buf.len() >= MAX_HEAD => {
                    return Err(fail(Invalid::HeadTooLarge(MAX_HEAD).into(), true));
                }
                Ok(Parsed::Partial) => {}
                Err(e) => return Err(fail(e.into(), true)),
            }
        }
        match poll_fn(|cx| poll_fill(rd, buf, scratch, cx)).await {
            Ok(0) => return Err(fail(UpstreamError::Closed, started)),
            Ok(_) => {}
            Err(e) => return Err(fail(e.into(), started)),
        }
    }
}

/// The response with its body; a body already complete in the buffer is handed over whole
/// and the connection goes back to the idle list at once.
fn finish(
    server: Arc<ServerState>,
    opts: ConnOpts,
    mut conn: UpConn,
    head: codec::Head,
) -> Response<UpBody> {
    let codec::Head {
        status,
        version: _,
        headers,
        framing,
        keep_alive,
    } = head;
    let body = match framing {
        Framing::Empty => {
            if keep_alive && conn.buf.is_empty() {
                server
                    .conns
                    .put(conn, opts.max_idle, crate::clock::now_ms());
            }
            UpBody::done(None)
        }
        Framing::Length(n) if conn.buf.len() as u64 == n => {
            let data = conn.buf.split().freeze();
            if keep_alive {
                server
                    .conns
                    .put(conn, opts.max_idle, crate::clock::now_ms());
            }
            UpBody::done(Some(data))
        }
        framing => UpBody {
            state: BodyState::Streaming(Box::new(Streaming {
                conn,
                framing,
                keep_alive,
                server,
                opts,
            })),
        },
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// A server's response body on its way to the client.
#[derive(Debug)]
pub struct UpBody {
    state: BodyState,
}

#[derive(Debug)]
enum BodyState {
    /// The whole body (or none), already read.
    Done(Option<Bytes>),
    /// Still arriving on the connection.
    Streaming(Box<Streaming>),
}

#[derive(Debug)]
struct Streaming {
    conn: UpConn,
    framing: Framing,
    keep_alive: bool,
    server: Arc<ServerState>,
    opts: ConnOpts,
}

impl UpBody {
    fn done(data: Option<Bytes>) -> UpBody {
        UpBody {
            state: BodyState::Done(data.filter(|d| !d.is_empty())),
        }
    }
}

impl Streaming {
    /// The next piece of the body; `None` at its end.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, UpstreamError>>> {
        loop {
            match &mut self.framing {
                Framing::Empty | Framing::Length(0) => return Poll::Ready(None),
                Framing::Length(rem) => {
                    if !self.conn.buf.is_empty() {
                        let n = usize::try_from(*rem)
                            .unwrap_or(usize::MAX)
                            .min(self.conn.buf.len());
                        *rem -= n as u64;
                        return Poll::Ready(Some(Ok(self.conn.buf.split_to(n).freeze())));
                    }
                }
                Framing::Chunked(dec) => match dec.decode(&mut self.conn.buf) {
                    Ok(Chunk::Data(d)) => return Poll::Ready(Some(Ok(d))),
                    Ok(Chunk::Done) => return Poll::Ready(None),
                    Ok(Chunk::NeedMore) => {}
                    Err(e) => return Poll::Ready(Some(Err(e.into()))),
                },
                Framing::UntilClose => {
                    if !self.conn.buf.is_empty() {
                        return Poll::Ready(Some(Ok(self.conn.buf.split().freeze())));
                    }
                }
            }
            match ready!(self.conn.poll_fill(cx)) {
                Ok(0) if matches!(self.framing, Framing::UntilClose) => {
                    self.framing = Framing::Empty;
                    self.keep_alive = false;
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(UpstreamError::Closed))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }

    /// Whether nothing of the body is left to read.
    fn complete(&self) -> bool {
        match &self.framing {
            Framing::Empty | Framing::Length(0) => true,
            Framing::Chunked(d) => d.is_done(),
            _ => false,
        }
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        let s = match &mut this.state {
            BodyState::Done(d) => return Poll::Ready(d.take().map(|d| Ok(Frame::data(d)))),
            BodyState::Streaming(s) => s,
        };
        let r = ready!(s.poll_next(cx));
        match r {
            Some(Ok(d)) => {
                if s.complete() {
                    // The last bytes: the connection can serve the next request already.
                    this.release();
                }
                Poll::Ready(Some(Ok(Frame::data(d))))
            }
            None => {
                this.release();
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                this.state = BodyState::Done(None);
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            BodyState::Done(d) => d.is_none(),
            BodyState::Streaming(s) => s.complete() && s.conn.buf.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            BodyState::Done(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            BodyState::Streaming(s) => match s.framing {
                Framing::Length(n) => SizeHint::with_exact(n),
                Framing::Empty => SizeHint::with_exact(0),
                _ => SizeHint::default(),
            },
        }
    }
}

impl UpBody {
    /// The body has been read to its end: keep the connection when it can be reused.
    fn release(&mut self) {
        if let BodyState::Streaming(s) = std::mem::replace(&mut self.state, BodyState::Done(None)) {
            let Streaming {
                conn,
                framing: _,
                keep_alive,
                server,
                opts,
            } = *s;
            if keep_alive && conn.buf.is_empty() {
                server
                    .conns
                    .put(conn, opts.max_idle, crate::clock::now_ms());
            }
        }
    }
}
