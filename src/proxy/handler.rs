//! The per-request pipeline: limits → route → admission → forward (with retries) → record.
//!
//! Every step that says no answers at once with the proper status, never reaches a server,
//! and is counted with its reason.

use super::body::{Completion, ReqBody, ReqBodyError, RespBody};
use super::conn::ConnActivity;
use super::headers::{self, X_REQUEST_ID};
use super::pool::{AdmitError, Permit, PoolShared, ServerState};
use super::runtime::{Shared, Snapshot};
use super::upstream::{self, UpBody, UpstreamError};
use crate::config::{Algorithm, Config, HashKey};
use crate::observe::access_log::Entry;
use crate::observe::metrics::Reason;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// What one request carries through the pipeline for logging.
struct Ctx {
    start: Instant,
    /// The client as identified (the peer, or the forwarded address from a trusted proxy).
    client: IpAddr,
    /// The TCP peer.
    peer: IpAddr,
    /// The shield's hold on this client's request count, released when the response ends.
    ticket: Option<crate::shield::ReqTicket>,
    method: Method,
    uri: Uri,
    request_id: HeaderValue,
    pool: Option<Arc<str>>,
    /// Index of the matched route (its metric handles are in `Snapshot::routes`).
    route: Option<usize>,
}

/// Handles one client request.
pub async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    conn: Arc<ConnActivity>,
    mut req: Request<Incoming>,
) -> Result<Response<RespBody>, std::convert::Infallible> {
    conn.request_started();
    let snap = shared.snapshot.load_full();
    let cfg: &Config = &snap.cfg;
    let peer_ip = headers::canonical_ip(peer.ip());
    let client = headers::canonical_ip(crate::shield::identity::client_ip(
        peer_ip,
        req.headers(),
        &cfg.listener.trusted_proxies,
    ));
    let request_id = match req.headers().get(&X_REQUEST_ID) {
        Some(v) if !v.is_empty() && v.len() <= 200 => v.clone(),
        _ => {
            let v = headers::new_request_id();
            req.headers_mut().insert(&X_REQUEST_ID, v.clone());
            v
        }
    };
    let mut ctx = Ctx {
        start: Instant::now(),
        client,
        peer: peer_ip,
        ticket: None,
        method: req.method().clone(),
        uri: req.uri().clone(),
        request_id,
        pool: None,
        route: None,
    };

    // Every request counts towards the client's recent rate, refused ones included: fair
    // admission orders clients by what they send, not by what gets through.
    let score = shared.rates.record(&client);
    match shared.shield.admit_request(client, req.uri().path()) {
        Ok(t) => ctx.ticket = t,
        Err(rej) => {
            let (status, msg) = match rej.status {
                429 => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "429 too many requests: slow down and retry later\n",
                ),
                _ => (
                    StatusCode::FORBIDDEN,
                    "403 forbidden: requests from this address are blocked\n",
                ),
            };
            return Ok(local_response(
                &shared,
                &snap,
                &mut ctx,
                conn,
                status,
                rej.reason,
                msg,
                rej.retry_after_secs,
                rej.close,
            ));
        }
    }

    let uri_len = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    if uri_len > cfg.listener.max_uri_length {
        return Ok(finish_local(
            &shared,
            &snap,
            &mut ctx,
            conn,
            StatusCode::URI_TOO_LONG,
            Reason::UriTooLong,
            "URI too long\n",
        ));
    }
    let content_length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if content_length.is_some_and(|n| n > cfg.listener.max_body_size) {
        return Ok(finish_local(
            &shared,
            &snap,
            &mut ctx,
            conn,
            StatusCode::PAYLOAD_TOO_LARGE,
            Reason::BodyTooLarge,
            "request body too large\n",
        ));
    }

    // Route.
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().host())
        .map(strip_port);
    let path = req.uri().path();
    let route = cfg.routes.iter().position(|r| {
        r.host
            .as_deref()
            .is_none_or(|h| host.is_some_and(|x| x.eq_ignore_ascii_case(h)))
            && path.starts_with(r.path_prefix.as_str())
    });
    ctx.route = route;
    let Some(route) = route.and_then(|i| cfg.routes.get(i)) else {
        return Ok(finish_local(
            &shared,
            &snap,
            &mut ctx,
            conn,
            StatusCode::NOT_FOUND,
            Reason::NoRoute,
            "no route for this host and path\n",
        ));
    };
    let Some(pool) = snap.pools.get(route.pool).cloned() else {
        return Ok(finish_local(
            &shared,
            &snap,
            &mut ctx,
            conn,
            StatusCode::NOT_FOUND,
            Reason::NoRoute,
            "no route for this host and path\n",
        ));
    };
    ctx.pool = Some(pool.name.clone());
    let inner_cfg = pool.inner.load();
    let algorithm = inner_cfg.cfg.algorithm;
    let hash = if algorithm == Algorithm::ConsistentHash {
        request_hash(&inner_cfg.cfg.hash_key, &req, client)
    } else {
        0
    };
    drop(inner_cfg);

    // Small bodies are read whole before a server slot is taken: a slow upload never holds a
    // server (the slow-body timer still applies), and the request can be retried.
    let (parts, incoming) = req.into_parts();
    let inbound = match content_length {
        Some(n) if n > 0 && n <= cfg.listener.buffer_request_body => {
            conn.body_started();
            let stream = ReqBody::Stream {
                inner: incoming,
                remaining: n,
                limit: cfg.listener.max_body_size,
                conn: conn.clone(),
            };
            match http_body_util::BodyExt::collect(stream).await {
                Ok(c) => Inbound::Buffered(c.to_bytes()),
                Err(_) => {
                    return Ok(finish_local(
                        &shared,
                        &snap,
                        &mut ctx,
                        conn,
                        StatusCode::BAD_REQUEST,
                        Reason::BadRequest,
                        "the request body could not be read\n",
                    ));
                }
            }
        }
        _ => Inbound::Stream(incoming),
    };

    // Admission.
    pool.budget.record_request();
    let admit_start = Instant::now();
    let admitted = pool.admit(score, hash).await;
    pool.counters
        .queue_wait
        .observe(admit_start.elapsed().as_secs_f64());
    let permit = match admitted {
        Ok(p) => p,
        Err(e) => {
            let reason = match e {
                AdmitError::NoHealthyServer => Reason::NoHealthyServer,
                AdmitError::QueueFull => Reason::QueueFull,
                AdmitError::QueueTimeout => Reason::QueueTimeout,
            };
            pool.counters.shed(reason);
            let msg = match e {
                AdmitError::NoHealthyServer => {
                    "503 no healthy server: every server of this pool is down\n"
                }
                _ => "503 overloaded: every server is at its limit, try again shortly\n",
            };
            return Ok(finish_local(
                &shared,
                &snap,
                &mut ctx,
                conn,
                StatusCode::SERVICE_UNAVAILABLE,
                reason,
                msg,
            ));
        }
    };

    Ok(forward(
        &shared,
        &snap,
        ctx,
        conn,
        &pool,
        permit,
        hash,
        parts,
        inbound,
        content_length,
    )
    .await)
}

/// The request body as it reaches `forward`.
enum Inbound {
    /// Still on the client connection: streamed to the server.
    Stream(Incoming),
    /// Read whole before admission.
    Buffered(bytes::Bytes),
}

fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        return h.split(']').next().map_or(h, |x| x.trim_start_matches('['));
    }
    h.rsplit_once(':').map_or(h, |(a, _)| a)
}

fn request_hash(key: &HashKey, req: &Request<Incoming>, client: IpAddr) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    match key {
        HashKey::Header(name) => match req.headers().get(name) {
            Some(v) => v.as_bytes().hash(&mut h),
            None => client.hash(&mut h),
        },
        HashKey::Client => client.hash(&mut h),
    }
    h.finish()
}

/// Methods that may be sent twice without changing the outcome (RFC 9110 §9.2.2).
pub(crate) fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

enum Outcome {
    Response(Response<UpBody>, f64),
    Error(StatusCode, Reason, &'static str),
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    shared: &Arc<Shared>,
    snap: &Arc<Snapshot>,
    mut ctx: Ctx,
    conn: Arc<ConnActivity>,
    pool: &Arc<PoolShared>,
    mut permit: Permit,
    hash: u64,
    mut parts: http::request::Parts,
    inbound: Inbound,
    content_length: Option<u64>,
) -> Response<RespBody> {
    let cfg = &snap.cfg;
    let inner = pool.inner.load_full();
    let pcfg = &inner.cfg;
    let has_body = !(content_length == Some(0)
        || (content_length.is_none() && !parts.headers.contains_key(header::TRANSFER_ENCODING)));
    let trusted = headers::is_trusted(ctx.peer, &cfg.listener.trusted_proxies);
    let host = parts.headers.get(header::HOST).cloned();
    headers::strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::EXPECT);
    headers::set_forwarded(&mut parts.headers, ctx.peer, trusted, host.as_ref());
    let buffered = match &inbound {
        Inbound::Buffered(b) => Some(b.clone()),
        Inbound::Stream(_) => None,
    };
    let can_retry = pcfg.retry.attempts > 1 && (!has_body || buffered.is_some());
    let mut body = Some(match inbound {
        Inbound::Buffered(b) => ReqBody::Full(Some(b)),
        Inbound::Stream(body) if has_body => ReqBody::Stream {
            inner: body,
            remaining: cfg.listener.max_body_size,
            limit: cfg.listener.max_body_size,
            conn: {
                conn.body_started();
                conn.clone()
            },
        },
        Inbound::Stream(_) => ReqBody::Empty,
    });
    let deadline = ctx.start + pcfg.request_timeout;
    let mut tried: Vec<Arc<ServerState>> = Vec::new();
    let mut attempt = 1;
    // Shared by every attempt (and by an abandoned attempt finishing in the background).
    let parts = Arc::new(parts);
    loop {
        let server = permit.server().clone();
        let attempt_body = match body.take() {
            Some(b) => b,
            None => match &buffered {
                Some(b) => ReqBody::Full(Some(b.clone())),
                None => ReqBody::Empty,
            },
        };
        let sent = Instant::now();
        let budget = pcfg
            .response_header_timeout
            .min(deadline.saturating_duration_since(sent));
        let mut inflight = InFlight {
            fut: Some(Box::pin(upstream::send(
                server.clone(),
                inner.conn_opts,
                parts.clone(),
                attempt_body,
            ))),
            permit: Some(permit),
            linger: pcfg.request_timeout,
        };
        let outcome = match tokio::time::timeout(budget, &mut inflight).await {
            Ok(Ok(resp)) => Outcome::Response(resp, sent.elapsed().as_secs_f64() * 1000.0),
            Ok(Err(e)) => classify(&e),
            Err(_) if Instant::now() >= deadline => Outcome::Error(
                StatusCode::GATEWAY_TIMEOUT,
                Reason::RequestTimeout,
                "504 request timed out\n",
            ),
            Err(_) => Outcome::Error(
                StatusCode::GATEWAY_TIMEOUT,
                Reason::UpstreamTimeout,
                "504 the server did not answer in time\n",
            ),
        };
        if let Some(a) = &pcfg.adaptive {
            // Response times teach the adaptive limit; a timeout is the slowest answer of all.
            if matches!(
                outcome,
                Outcome::Response(..) | Outcome::Error(_, Reason::UpstreamTimeout, _)
            ) {
                server.record_latency(a, sent.elapsed(), crate::clock::now_ms());
            }
        }
        let (retryable, server_failed) = match &outcome {
            Outcome::Response(r, _) => {
                let s = r.status().as_u16();
                (
                    matches!(s, 502..=504) && idempotent(&parts.method),
                    s >= 500,
                )
            }
            Outcome::Error(_, Reason::UpstreamConnect, _) => (true, true),
            Outcome::Error(_, Reason::UpstreamError, _) => (idempotent(&parts.method), true),
            Outcome::Error(_, Reason::BodyTooLarge | Reason::BadRequest, _) => (false, false),
            Outcome::Error(..) => (false, true),
        };
        pool.report(&server, !server_failed);
        // When the server has answered, its slot comes back here; a timed-out request keeps
        // it (lingering in the background) while the server still works on it.
        let held = inflight.done_permit();
        drop(inflight);
        if retryable && can_retry && attempt < pcfg.retry.attempts && Instant::now() < deadline {
            tried.push(server.clone());
            let r = &pcfg.retry;
            if pool.budget.try_retry(
                r.budget_ratio,
                r.budget_window.as_secs(),
                r.budget_min_per_second,
            ) {
                if let Some(next) = pool.try_acquire(hash, &tried) {
                    drop(held);
                    pool.counters.retries.inc();
                    attempt += 1;
                    permit = next;
                    continue;
                }
            } else {
                pool.counters.retry_budget_exhausted.inc();
            }
        }
        return match (outcome, held) {
            (Outcome::Response(resp, upstream_ms), Some(permit)) => {
                respond(snap, ctx, conn, permit, resp, upstream_ms, pool)
            }
            (Outcome::Response(..), None) => {
                pool.counters.upstream_errors.inc();
                finish_local(
                    shared,
                    snap,
                    &mut ctx,
                    conn,
                    StatusCode::BAD_GATEWAY,
                    Reason::UpstreamError,
                    "502 the server sent an invalid or no response\n",
                )
            }
            (Outcome::Error(status, reason, msg), held) => {
                drop(held);
                if reason.is_upstream_error() {
                    pool.counters.upstream_errors.inc();
                }
                finish_local(shared, snap, &mut ctx, conn, status, reason, msg)
            }
        };
    }
}

/// An upstream request in flight, holding its server's slot. If it is abandoned before the
/// server answers (the client went away, or levee stopped waiting), the slot stays taken in a
/// background task until the server answers or `linger` passes: the server is still working
/// on it, and counting it free would let levee send the server more than its cap.
type SendFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response<UpBody>, UpstreamError>> + Send>,
>;

struct InFlight {
    fut: Option<SendFuture>,
    permit: Option<Permit>,
    linger: std::time::Duration,
}

impl InFlight {
    /// The slot, once the server has answered (or failed).
    fn done_permit(&mut self) -> Option<Permit> {
        if self.fut.is_none() {
            self.permit.take()
        } else {
            None
        }
    }
}

impl std::future::Future for InFlight {
    type Output = Result<Response<UpBody>, UpstreamError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let Some(fut) = self.fut.as_mut() else {
            return std::task::Poll::Pending;
        };
        match fut.as_mut().poll(cx) {
            std::task::Poll::Ready(r) => {
                self.fut = None;
                std::task::Poll::Ready(r)
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let (Some(fut), Some(permit)) = (self.fut.take(), self.permit.take())
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let linger = self.linger;
            rt.spawn(async move {
                let _ = tokio::time::timeout(linger, fut).await;
                drop(permit);
            });
        }
    }
}

fn classify(e: &UpstreamError) -> Outcome {
    match e {
        UpstreamError::Body(ReqBodyError::TooLarge(_)) => Outcome::Error(
            StatusCode::PAYLOAD_TOO_LARGE,
            Reason::BodyTooLarge,
            "request body too large\n",
        ),
        UpstreamError::Body(ReqBodyError::Client(_)) => Outcome::Error(
            StatusCode::BAD_REQUEST,
            Reason::BadRequest,
            "the request body could not be read\n",
        ),
        UpstreamError::Connect(_) => Outcome::Error(
            StatusCode::BAD_GATEWAY,
            Reason::UpstreamConnect,
            "502 cannot connect to the server\n",
        ),
        UpstreamError::Io(_) | UpstreamError::Closed | UpstreamError::Invalid(_) => Outcome::Error(
            StatusCode::BAD_GATEWAY,
            Reason::UpstreamError,
            "502 the server sent an invalid or no response\n",
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn respond(
    snap: &Arc<Snapshot>,
    mut ctx: Ctx,
    conn: Arc<ConnActivity>,
    permit: Permit,
    resp: Response<UpBody>,
    upstream_ms: f64,
    pool: &PoolShared,
) -> Response<RespBody> {
    let server = permit.server().clone();
    let (mut parts, body) = resp.into_parts();
    parts.version = http::Version::HTTP_11;
    // No hop-by-hop header here: the response head parser leaves them out (upstream_codec).
    let status = parts.status.as_u16();
    if let Some(c) = server
        .counters
        .by_class
        .get(usize::from(status / 100).saturating_sub(1))
    {
        c.inc();
    }
    let took = ctx.start.elapsed().as_secs_f64();
    pool.counters.duration.observe(took);
    server.counters.duration.observe(took);
    if let Some(r) = ctx.route.and_then(|i| snap.routes.get(i)) {
        r.record(status, took);
    }
    parts.headers.insert(&X_REQUEST_ID, ctx.request_id.clone());
    if let Some(t) = &ctx.ticket {
        t.response_status(status);
    }
    let mut body = RespBody::upstream(body);
    let log = snap.access_log.clone().map(|l| {
        let e = entry(
            &ctx,
            status,
            Some(server.name.clone()),
            Some(upstream_ms),
            None,
        );
        (l, e)
    });
    body.on_complete(Completion {
        permit: Some(permit),
        log,
        conn: Some(conn),
        shield: ctx.ticket.take(),
        bytes: 0,
    });
    Response::from_parts(parts, body)
}

fn entry(
    ctx: &Ctx,
    status: u16,
    server: Option<Arc<str>>,
    upstream_ms: Option<f64>,
    reason: Option<Reason>,
) -> Entry {
    Entry {
        time: SystemTime::now(),
        client: ctx.client,
        method: ctx.method.clone(),
        path: ctx.uri.clone(),
        status,
        pool: ctx.pool.clone(),
        server,
        upstream_ms,
        total_ms: ctx.start.elapsed().as_secs_f64() * 1000.0,
        bytes: 0,
        request_id: Some(ctx.request_id.clone()),
        reason,
    }
}

/// An answer levee writes itself, counted with its reason and logged.
fn finish_local(
    shared: &Arc<Shared>,
    snap: &Arc<Snapshot>,
    ctx: &mut Ctx,
    conn: Arc<ConnActivity>,
    status: StatusCode,
    reason: Reason,
    msg: &'static str,
) -> Response<RespBody> {
    let close = matches!(reason, Reason::BadRequest | Reason::BodyTooLarge);
    local_response(shared, snap, ctx, conn, status, reason, msg, 1, close)
}

/// [`finish_local`] with an explicit Retry-After (for 429 and 503) and connection close.
#[allow(clippy::too_many_arguments)]
fn local_response(
    shared: &Arc<Shared>,
    snap: &Arc<Snapshot>,
    ctx: &mut Ctx,
    conn: Arc<ConnActivity>,
    status: StatusCode,
    reason: Reason,
    msg: &'static str,
    retry_after_secs: u64,
    close: bool,
) -> Response<RespBody> {
    shared.metrics.reject(reason);
    if let Some(r) = ctx.route.and_then(|i| snap.routes.get(i)) {
        r.record(status.as_u16(), ctx.start.elapsed().as_secs_f64());
    }
    let mut body = RespBody::full(msg);
    let log = snap
        .access_log
        .clone()
        .map(|l| (l, entry(ctx, status.as_u16(), None, None, Some(reason))));
    body.on_complete(Completion {
        permit: None,
        log,
        conn: Some(conn),
        shield: ctx.ticket.take(),
        bytes: 0,
    });
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(&X_REQUEST_ID, ctx.request_id.clone());
    if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
        let v = if retry_after_secs <= 1 {
            HeaderValue::from_static("1")
        } else {
            HeaderValue::from(retry_after_secs)
        };
        h.insert(header::RETRY_AFTER, v);
    }
    if close {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
