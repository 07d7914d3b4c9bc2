//! Client connections: TCP connect from a chosen source address, the request serialized once per
//! scenario, and one exchange per request over levee's own HTTP/1.1 client ([`super::http1`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, Sleep};

use super::http1::{self, ReadBuffer};
use super::plan::{HttpPlan, Plan, SourceIps};
use super::stats::{ErrorKind, Outcome};

/// Opens connections to the target, spreading them over the source addresses.
pub struct Connector {
    addr: SocketAddr,
    source: Option<SourceIps>,
    next_source: AtomicU64,
}

impl Connector {
    pub fn new(plan: &Plan) -> Arc<Connector> {
        Arc::new(Connector {
            addr: plan.target.addr,
            source: plan.source_ips.clone(),
            next_source: AtomicU64::new(0),
        })
    }

    /// A TCP connection, bound to the next source address when a range is set.
    pub async fn tcp(&self) -> std::io::Result<TcpStream> {
        let socket = if self.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(source) = &self.source {
            let i = self.next_source.fetch_add(1, Ordering::Relaxed);
            socket.bind(SocketAddr::new(source.nth(i), 0))?;
        }
        let stream = socket.connect(self.addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// A scenario's request, serialized once: request line, `Host`, `User-Agent`, the scenario's
/// headers, `Content-Length` when there is a body, `Connection: close` without keep-alive, and
/// the body. Every request sends these same bytes with one write.
pub struct RequestTemplate {
    bytes: Bytes,
    body_len: u64,
    keepalive: bool,
    /// A HEAD request: responses have no body whatever their headers say.
    head: bool,
}

impl RequestTemplate {
    pub fn new(plan: &Plan, http: &HttpPlan) -> RequestTemplate {
        use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING, USER_AGENT};
        let mut out = Vec::with_capacity(256 + http.body.len());
        let path = plan
            .target
            .path
            .path_and_query()
            .map_or("/", |p| p.as_str());
        for part in [http.method.as_str(), " ", path, " HTTP/1.1\r\n"] {
            out.extend_from_slice(part.as_bytes());
        }
        let mut header = |name: &[u8], value: &[u8]| {
            for part in [name, b": ", value, b"\r\n"] {
                out.extend_from_slice(part);
            }
        };
        if !http.headers.contains_key(HOST) {
            header(b"host", plan.target.host.as_bytes());
        }
        if !http.headers.contains_key(USER_AGENT) {
            header(b"user-agent", b"levee-loadtest");
        }
        for (name, value) in &http.headers {
            // The body is framed here (by its length); without keep-alive, `close` is sent.
            let framing = name == CONTENT_LENGTH || name == TRANSFER_ENCODING;
            if framing || (!http.keepalive && name == CONNECTION) {
                continue;
            }
            header(name.as_str().as_bytes(), value.as_bytes());
        }
        let expects_body = matches!(http.method, Method::POST | Method::PUT | Method::PATCH);
        if !http.body.is_empty() || expects_body {
            header(b"content-length", http.body.len().to_string().as_bytes());
        }
        if !http.keepalive {
            header(b"connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&http.body);
        RequestTemplate {
            bytes: Bytes::from(out),
            body_len: http.body.len() as u64,
            keepalive: http.keepalive,
            head: http.method == Method::HEAD,
        }
    }

    pub fn keepalive(&self) -> bool {
        self.keepalive
    }

    /// Bytes of request body sent per request.
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// The serialized request, as sent.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A worker's connection slot: a connection opened on demand and kept while keep-alive allows,
/// and the read buffer its connections share (allocated once per worker).
pub struct Slot {
    stream: Option<TcpStream>,
    buf: ReadBuffer,
    /// The request timeout, one timer per worker: moving it later for each request is an atomic
    /// store in tokio (no timer-wheel registration per request).
    timer: Pin<Box<Sleep>>,
}

impl Slot {
    /// A slot without a connection. Call it inside the runtime.
    pub fn new() -> Slot {
        Slot {
            stream: None,
            buf: ReadBuffer::new(),
            timer: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
        }
    }

    /// Opens a connection now, within `timeout`, if the slot has none; whether one was opened.
    /// A failure is not an error: the next request tries again and counts it.
    pub async fn connect(&mut self, connector: &Connector, timeout: Duration) -> bool {
        if self.stream.is_some() {
            return false;
        }
        match tokio::time::timeout(timeout, connector.tcp()).await {
            Ok(Ok(stream)) => {
                self.buf.clear();
                self.stream = Some(stream);
                true
            }
            _ => false,
        }
    }

    /// Drops the connection (the next request opens a new one).
    pub fn close(&mut self) {
        self.stream = None;
    }

    /// Sends one request (opening a connection first if needed) and reads the response to its
    /// end, within `timeout` from `now` (the caller's clock reading, taken just before).
    /// `opened` is called for every new connection opened.
    pub async fn send(
        &mut self,
        connector: &Connector,
        template: &RequestTemplate,
        timeout: Duration,
        now: Instant,
        opened: impl FnMut(),
    ) -> Outcome {
        self.timer.as_mut().reset(now + timeout);
        let result = {
            let work = Slot::exchange(&mut self.stream, &mut self.buf, connector, template, opened);
            tokio::select! {
                biased;
                result = work => Some(result),
                _ = self.timer.as_mut() => None,
            }
        };
        match result {
            Some(Ok(response)) => {
                if !(response.reusable && template.keepalive()) {
                    self.stream = None;
                }
                Outcome::Response {
                    status: response.status,
                    bytes: response.body_bytes,
                }
            }
            Some(Err(kind)) => {
                self.stream = None;
                Outcome::Error(kind)
            }
            None => {
                self.stream = None;
                Outcome::Error(ErrorKind::Timeout)
            }
        }
    }

    /// One request and its response, on the kept connection or a new one. A kept connection the
    /// server closed meanwhile fails before any response byte arrives: the request is then sent
    /// once more on a new connection (only then, and only once).
    async fn exchange(
        slot: &mut Option<TcpStream>,
        buf: &mut ReadBuffer,
        connector: &Connector,
        template: &RequestTemplate,
        mut opened: impl FnMut(),
    ) -> Result<http1::Response, ErrorKind> {
        let mut resent = false;
        loop {
            let reused = slot.is_some();
            let stream = match slot {
                Some(stream) => stream,
                None => {
                    let stream = connector.tcp().await.map_err(|_| ErrorKind::Connect)?;
                    opened();
                    buf.clear();
                    slot.insert(stream)
                }
            };
            match http1::round_trip(stream, buf, template.bytes(), template.head).await {
                Ok(response) => return Ok(response),
                Err(failure) if failure.before_response && reused && !resent => {
                    *slot = None;
                    resent = true;
                }
                Err(failure) => return Err(failure.kind),
            }
        }
    }
}

impl Default for Slot {
    fn default() -> Self {
        Slot::new()
    }
}
