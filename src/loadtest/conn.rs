//! Client connections: TCP connect from a chosen source address, the hyper HTTP/1.1 handshake,
//! and one request with its response read to the end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use std::future::Future;
use std::pin::Pin;

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Sleep;

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

    /// An HTTP/1.1 connection. Its driver is polled by the worker that uses it (no task of its
    /// own: no wake-up of another task per request).
    pub async fn http1(&self) -> Result<Open, ErrorKind> {
        let stream = self.tcp().await.map_err(|_| ErrorKind::Connect)?;
        // Small requests: one flattened write is cheaper than a vectored one.
        let (sender, conn) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ErrorKind::of_hyper(&e))?;
        Ok(Open { sender, conn })
    }
}

/// The request template of a scenario (cloned per request: the body is shared, not copied).
pub struct RequestTemplate {
    plan: HttpPlan,
    path: http::Uri,
    headers: http::HeaderMap,
}

impl RequestTemplate {
    pub fn new(plan: &Plan, http: &HttpPlan) -> RequestTemplate {
        let mut headers = http.headers.clone();
        if !headers.contains_key(http::header::HOST) {
            headers.insert(http::header::HOST, plan.target.host.clone());
        }
        if !headers.contains_key(http::header::USER_AGENT) {
            headers.insert(
                http::header::USER_AGENT,
                http::HeaderValue::from_static("levee-loadtest"),
            );
        }
        if !http.keepalive {
            headers.insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        RequestTemplate {
            plan: http.clone(),
            path: plan.target.path.clone(),
            headers,
        }
    }

    pub fn keepalive(&self) -> bool {
        self.plan.keepalive
    }

    /// Bytes of request body sent per request.
    pub fn body_len(&self) -> u64 {
        self.plan.body.len() as u64
    }

    fn build(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.plan.body.clone()));
        *req.method_mut() = self.plan.method.clone();
        *req.uri_mut() = self.path.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// An open HTTP/1.1 connection: the request side and the connection driver.
pub struct Open {
    sender: SendRequest<Full<Bytes>>,
    conn: http1::Connection<TokioIo<TcpStream>, Full<Bytes>>,
}

/// A worker's connection slot: opened on demand, kept while keep-alive allows.
pub struct Slot {
    sender: Option<Open>,
    /// The request timeout, one timer per worker: moving it later for each request is an atomic
    /// store in tokio (no timer-wheel registration per request).
    timer: Pin<Box<Sleep>>,
}

impl Slot {
    /// A slot without a connection. Call it inside the runtime.
    pub fn new() -> Slot {
        Slot {
            sender: None,
            timer: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
        }
    }

    /// Drops the connection (the next request opens a new one).
    pub fn close(&mut self) {
        self.sender = None;
    }

    /// Sends one request (opening a connection first if needed) and reads the response to its
    /// end, within `timeout`. `opened` is called when a new connection was opened.
    pub async fn send(
        &mut self,
        connector: &Connector,
        template: &RequestTemplate,
        timeout: Duration,
        opened: impl FnOnce(),
    ) -> Outcome {
        self.timer
            .as_mut()
            .reset(tokio::time::Instant::now() + timeout);
        let result = {
            let work = Slot::exchange(&mut self.sender, connector, template, opened);
            tokio::select! {
                biased;
                result = work => Some(result),
                _ = self.timer.as_mut() => None,
            }
        };
        match result {
            Some(Ok((status, bytes))) => {
                if !template.keepalive() {
                    self.sender = None;
                }
                Outcome::Response { status, bytes }
            }
            Some(Err(kind)) => {
                self.sender = None;
                Outcome::Error(kind)
            }
            None => {
                self.sender = None;
                Outcome::Error(ErrorKind::Timeout)
            }
        }
    }

    async fn exchange(
        slot: &mut Option<Open>,
        connector: &Connector,
        template: &RequestTemplate,
        opened: impl FnOnce(),
    ) -> Result<(u16, u64), ErrorKind> {
        // A kept connection the server closed meanwhile: notice it now (poll its driver once)
        // rather than fail the request on it.
        if let Some(open) = slot.as_mut() {
            let ended = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(std::pin::Pin::new(&mut open.conn).poll(cx).is_ready())
            })
            .await;
            if ended || open.sender.is_closed() {
                *slot = None;
            }
        }
        let open = match slot {
            Some(open) => open,
            None => {
                let open = connector.http1().await?;
                opened();
                slot.insert(open)
            }
        };
        let (result, ended) = {
            let Open { sender, conn } = open;
            let work = async {
                sender.ready().await.map_err(|e| ErrorKind::of_hyper(&e))?;
                let response = sender
                    .send_request(template.build())
                    .await
                    .map_err(|e| ErrorKind::of_hyper(&e))?;
                let status = response.status().as_u16();
                let mut body = response.into_body();
                let mut bytes = 0u64;
                while let Some(frame) = body.frame().await {
                    let frame = frame.map_err(|e| ErrorKind::of_hyper(&e))?;
                    if let Some(data) = frame.data_ref() {
                        bytes += data.len() as u64;
                    }
                }
                Ok((status, bytes))
            };
            tokio::pin!(work);
            // Drive the connection and the request together; if the connection ends first, what it
            // delivered may still complete the response.
            tokio::select! {
                biased;
                result = &mut work => (result, false),
                driven = conn => match driven {
                    Ok(()) => (work.await, true),
                    Err(e) => (work.await.map_err(|_| ErrorKind::of_hyper(&e)), true),
                },
            }
        };
        if ended {
            *slot = None;
        }
        result
    }
}

impl Default for Slot {
    fn default() -> Self {
        Slot::new()
    }
}
