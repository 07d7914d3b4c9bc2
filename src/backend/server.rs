//! One simulated server: the listener, its connections, its state and its crashes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::processor::Processor;
use super::{BackendOptions, Stats, handler};

/// How long the accept loop pauses after an accept error (such as too many open files).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// One running simulated server (one listen address).
///
/// It serves in the background on the tokio runtime it was started on, until
/// [`SimServer::shutdown`] or drop.
pub struct SimServer {
    shared: Arc<Shared>,
    accept: AbortHandle,
    driver: AbortHandle,
}

impl SimServer {
    /// Bind `addr` (port 0 picks a free port) and serve in the background on the current tokio
    /// runtime.
    pub async fn start(addr: SocketAddr, opts: BackendOptions) -> std::io::Result<SimServer> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(addr, &opts));
        let driver = tokio::spawn(shared.processor.clone().drive()).abort_handle();
        let accept = tokio::spawn(accept_loop(listener, shared.clone())).abort_handle();
        tracing::debug!(%addr, ?opts, "simulated server started");
        Ok(SimServer {
            shared,
            accept,
            driver,
        })
    }

    /// The address the server listens on (with the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Every normal request answers this status from now on (default 200); a `status=N` query
    /// parameter still wins. A status that cannot be a final answer (below 200, above 999) is
    /// answered as 500.
    pub fn set_status(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }

    /// The service time of requests that start from now on (±20% jitter).
    pub fn set_latency(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.shared.latency_ns.store(nanos, Ordering::SeqCst);
    }

    /// The number of concurrent requests served at full speed, from now on (0 is treated as 1).
    pub fn set_capacity(&self, capacity: u32) {
        self.shared.processor.set_capacity(capacity);
    }

    /// `false`: `/health` answers 503 while the server otherwise keeps working.
    pub fn set_healthy(&self, up: bool) {
        self.shared.healthy.store(up, Ordering::SeqCst);
    }

    /// Stop accepting and close every connection (requests in flight are dropped). Idempotent;
    /// also done on drop.
    pub fn shutdown(&self) {
        self.accept.abort();
        self.driver.abort();
        let conns = self.shared.conns().close();
        for conn in conns {
            conn.task.abort();
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for SimServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimServer")
            .field("addr", &self.shared.addr)
            .field("stats", &self.shared.stats())
            .finish()
    }
}

/// State shared by the server handle, the accept loop, the connections and the handlers.
pub(crate) struct Shared {
    pub(crate) addr: SocketAddr,
    /// `x-backend` header value (the listen address).
    pub(crate) addr_header: Option<HeaderValue>,
    /// "ok from ADDR\n", the default body.
    pub(crate) greeting: bytes::Bytes,
    pub(crate) latency_ns: AtomicU64,
    pub(crate) status: AtomicU16,
    pub(crate) healthy: AtomicBool,
    pub(crate) crash_above: Option<u32>,
    down_for: Duration,
    pub(crate) processor: Arc<Processor>,
    max_in_flight: AtomicU64,
    served: AtomicU64,
    crashes: AtomicU64,
    connections: AtomicU64,
    down_until: Mutex<Option<Instant>>,
    conns: Mutex<ConnTable>,
}

impl Shared {
    fn new(addr: SocketAddr, opts: &BackendOptions) -> Shared {
        Shared {
            addr,
            addr_header: HeaderValue::from_str(&addr.to_string()).ok(),
            greeting: format!("ok from {addr}\n").into(),
            latency_ns: AtomicU64::new(u64::try_from(opts.latency.as_nanos()).unwrap_or(u64::MAX)),
            status: AtomicU16::new(200),
            healthy: AtomicBool::new(true),
            crash_above: opts.crash_above,
            down_for: opts.down_for,
            processor: Arc::new(Processor::new(opts.capacity)),
            max_in_flight: AtomicU64::new(0),
            served: AtomicU64::new(0),
            crashes: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            down_until: Mutex::new(None),
            conns: Mutex::new(ConnTable::default()),
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            in_flight: self.processor.in_flight(),
            max_in_flight: self.max_in_flight.load(Ordering::SeqCst),
            served: self.served.load(Ordering::SeqCst),
            crashes: self.crashes.load(Ordering::SeqCst),
            connections: self.connections.load(Ordering::SeqCst),
            down: self.is_down(),
        }
    }

    /// Whether the server is down after a crash.
    pub(crate) fn is_down(&self) -> bool {
        let until = *self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        until.is_some_and(|until| Instant::now() < until)
    }

    /// Count a request in flight until the guard drops. Never awaits.
    pub(crate) fn enter(&self) -> InFlight<'_> {
        let count = self.processor.enter();
        self.max_in_flight.fetch_max(count, Ordering::SeqCst);
        InFlight {
            shared: self,
            count,
            completed: false,
        }
    }

    fn conns(&self) -> MutexGuard<'_, ConnTable> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Crash: go down for `down_for` (unless already down) and reset every connection,
    /// including the caller's.
    pub(crate) fn crash(&self) {
        let now = Instant::now();
        {
            let mut until = self
                .down_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !until.is_some_and(|until| now < until) {
                *until = Some(now + self.down_for);
                let crashes = self.crashes.fetch_add(1, Ordering::SeqCst) + 1;
                tracing::warn!(addr = %self.addr, crashes, down_for = ?self.down_for,
                    "simulated server crashed: too many requests in flight");
            }
        }
        let conns: Vec<Conn> = self.conns().conns.drain().map(|(_, conn)| conn).collect();
        for conn in conns {
            conn.reset();
        }
    }

    /// Reset one connection (TCP RST) and abort its task.
    pub(crate) fn reset_connection(&self, id: u64) {
        let conn = self.conns().conns.remove(&id);
        if let Some(conn) = conn {
            conn.reset();
        }
    }
}

/// A request counted in flight; leaves the count on drop (also when the request is cancelled).
pub(crate) struct InFlight<'a> {
    shared: &'a Shared,
    /// Requests in flight when this one entered, itself included.
    pub(crate) count: u64,
    completed: bool,
}

impl InFlight<'_> {
    /// The request was handled to completion: count it as served.
    pub(crate) fn complete(mut self) {
        self.completed = true;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.completed {
            self.shared.served.fetch_add(1, Ordering::SeqCst);
        }
        self.shared.processor.leave();
    }
}

/// The open connections of a server, so that a crash or a shutdown can kill them all.
#[derive(Default)]
struct ConnTable {
    closed: bool,
    next_id: u64,
    conns: HashMap<u64, Conn>,
}

impl ConnTable {
    /// Refuse new connections from now on and hand back the open ones.
    fn close(&mut self) -> Vec<Conn> {
        self.closed = true;
        self.conns.drain().map(|(_, conn)| conn).collect()
    }
}

/// One open connection.
struct Conn {
    task: AbortHandle,
    /// A duplicate of the connection's socket, to set `SO_LINGER` 0 on it before killing the task
    /// so that the close sends a TCP RST, as a crashing server would. `None` when the server
    /// cannot crash, or if the socket could not be duplicated (the connection is then closed
    /// with a FIN instead). `SO_LINGER` 0 is not set at accept because then every close, also
    /// after a `Connection: close` answer, would be a reset that can discard unsent data.
    socket: Option<std::net::TcpStream>,
}

impl Conn {
    /// Kill the connection with a TCP RST.
    fn reset(self) {
        // Registering the duplicate with tokio needs a runtime; without one, close normally.
        if let Some(socket) = self.socket
            && tokio::runtime::Handle::try_current().is_ok()
            && let Ok(socket) = TcpStream::from_std(socket)
        {
            // The option belongs to the socket, so it applies when the task's own handle, the
            // last one, closes.
            let _ = socket.set_zero_linger();
        }
        self.task.abort();
    }
}

/// Removes a finished connection from the table.
struct ConnGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.conns().conns.remove(&self.id);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                tracing::warn!(addr = %shared.addr, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        shared.connections.fetch_add(1, Ordering::SeqCst);
        // Only a server that can crash ever resets a connection: spare the extra descriptor.
        let (stream, socket) = if shared.crash_above.is_some() {
            match duplicate(stream) {
                Some(split) => split,
                None => continue,
            }
        } else {
            (stream, None)
        };
        let mut table = shared.conns();
        if table.closed {
            return;
        }
        let id = table.next_id;
        table.next_id += 1;
        let task = tokio::spawn(serve_connection(shared.clone(), id, stream)).abort_handle();
        table.conns.insert(id, Conn { task, socket });
    }
}

/// Split off a duplicate handle of the socket (see [`Conn::socket`]). `None` if the stream was
/// lost on the way (it is closed then).
fn duplicate(stream: TcpStream) -> Option<(TcpStream, Option<std::net::TcpStream>)> {
    let std_stream = stream.into_std().ok()?;
    let socket = std_stream.try_clone().ok();
    let stream = TcpStream::from_std(std_stream).ok()?;
    Some((stream, socket))
}

async fn serve_connection(shared: Arc<Shared>, id: u64, stream: TcpStream) {
    let _guard = ConnGuard {
        shared: shared.clone(),
        id,
    };
    let service = {
        let shared = shared.clone();
        service_fn(move |req| handler::handle(shared.clone(), id, req))
    };
    let result = http1::Builder::new()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = result {
        tracing::debug!(addr = %shared.addr, error = %e, "connection ended with an error");
    }
}
