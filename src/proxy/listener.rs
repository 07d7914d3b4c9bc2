//! The client-facing listener: accept (the shield's cheapest point to refuse), connection
//! limits, HTTP/1.1 with size limits, levee's own header, idle, slow-body and slow-read
//! timers, and graceful drain. When `max_connections` is reached, the oldest idle connection
//! is closed to make room; only when none is idle is the new one refused.

use super::conn::{ConnActivity, Limits, TrackedStream, Verdict};
use super::handler;
use super::runtime::Shared;
use crate::clock::now_ms;
use crate::config::shield::Rule;
use crate::observe::metrics::Reason;
use crate::shield::Violation;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

/// Counts open client connections; the drain waits for it to reach zero.
#[derive(Debug, Default)]
pub struct OpenConns(pub AtomicUsize);

/// Idle connections by the time they became idle, so the oldest can be closed first.
#[derive(Debug, Default)]
struct IdleConns {
    map: Mutex<BTreeMap<(u64, u64), Arc<Notify>>>,
    next_id: AtomicU64,
}

impl IdleConns {
    fn insert(&self, since: u64, id: u64, n: &Arc<Notify>) {
        if let Ok(mut m) = self.map.lock() {
            m.insert((since, id), n.clone());
        }
    }
    fn remove(&self, key: (u64, u64)) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(&key);
        }
    }
    /// Tells the oldest idle connection to close. False when none is idle.
    fn close_oldest(&self) -> bool {
        let first = self.map.lock().ok().and_then(|mut m| m.pop_first());
        match first {
            Some((_, n)) => {
                n.notify_one();
                true
            }
            None => false,
        }
    }
}

struct ConnGuard(Arc<OpenConns>, Arc<Shared>);
impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::AcqRel);
        self.1.metrics.open_connections.dec();
    }
}

/// Accepts until `stop` turns true, then tells every connection to finish its current request
/// and close.
pub async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    open: Arc<OpenConns>,
    mut stop: watch::Receiver<bool>,
) {
    let idle = Arc::new(IdleConns::default());
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let peer_ip = super::headers::canonical_ip(peer.ip());
        let ticket = match shared.shield.admit_connection(peer_ip) {
            Ok(t) => t,
            Err(reason) => {
                shared.metrics.reject(reason);
                drop(stream);
                continue;
            }
        };
        let snap = shared.snapshot.load();
        let l = &snap.cfg.listener;
        if open.0.load(Ordering::Acquire) >= l.max_connections && !idle.close_oldest() {
            shared.metrics.reject(Reason::MaxConnections);
            drop(stream);
            continue;
        }
        open.0.fetch_add(1, Ordering::AcqRel);
        shared.metrics.open_connections.inc();
        let guard = ConnGuard(open.clone(), shared.clone());
        let _ = stream.set_nodelay(true);
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            // levee runs its own header timer (see conn.rs): hyper's would also cut idle
            // keep-alive connections at the header timeout.
            .header_read_timeout(None)
            .max_header_size(l.max_header_size)
            // Head and small bodies in one buffer, one write (measured: fewer instructions).
            .writev(false)
            .keep_alive(true);
        let sh = &snap.cfg.shield;
        let limits = Limits {
            header_ms: l.client_header_timeout.as_millis() as u64,
            idle_ms: l.idle_timeout.as_millis() as u64,
            body_grace_ms: sh.body_rate_grace.as_millis() as u64,
            min_body_rate: if sh.enabled { sh.min_body_rate } else { 0 },
            send_timeout_ms: if sh.enabled {
                sh.send_timeout.as_millis() as u64
            } else {
                u64::MAX
            },
        };
        let tick = (l
            .idle_timeout
            .min(l.client_header_timeout)
            .min(sh.send_timeout)
            / 4)
        .clamp(Duration::from_millis(20), Duration::from_secs(1));
        drop(snap);
        let shared = shared.clone();
        let stop = stop.clone();
        let idle = idle.clone();
        // The connection runs in a task of its own that polls nothing else, so a request costs
        // no poll of the watchdog's timers; the watchdog is a second task that wakes once per
        // `tick` and aborts the connection when it must close.
        let activity = ConnActivity::new();
        let svc_shared = shared.clone();
        let svc_act = activity.clone();
        let conn_shared = shared.clone();
        let conn_activity = activity.clone();
        let mut conn_stop = stop.clone();
        let connection = tokio::spawn(async move {
            let _guard = guard;
            let svc = service_fn(move |req| {
                handler::handle(svc_shared.clone(), peer, svc_act.clone(), req)
            });
            let conn = builder
                .serve_connection(TokioIo::new(TrackedStream::new(stream, conn_activity)), svc);
            tokio::pin!(conn);
            let mut closing = *conn_stop.borrow();
            if closing {
                conn.as_mut().graceful_shutdown();
            }
            loop {
                tokio::select! {
                    biased;
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            count_conn_error(&conn_shared, peer_ip, &e);
                        }
                        break;
                    }
                    _ = conn_stop.changed(), if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        });
        let shared = shared.clone();
        let stop = stop.clone();
        let idle = idle.clone();
        tokio::spawn(async move {
            let mut connection = connection;
            let mut ticket = ticket;
            let close_me = Arc::new(Notify::new());
            let id = idle.next_id.fetch_add(1, Ordering::Relaxed);
            let mut idle_key: Option<(u64, u64)> = None;
            let ended = loop {
                let closing = *stop.borrow();
                tokio::select! {
                    _ = &mut connection => break true,
                    _ = close_me.notified() => {
                        // The connection table is full and this is the oldest idle one.
                        shared.metrics.reject(Reason::MaxConnections);
                        idle_key = None;
                        break false;
                    }
                    _ = tokio::time::sleep(tick), if !closing => {
                        if watch(&shared, &activity, &limits, &mut ticket, &idle, &close_me, id, &mut idle_key, peer_ip) {
                            break false;
                        }
                    }
                }
            };
            if !ended {
                // Close it, and wait until it is gone before its ticket goes, so the client's
                // connection count never drops while the socket is still open.
                connection.abort();
                let _ = connection.await;
            }
            if let Some(k) = idle_key {
                idle.remove(k);
            }
            drop(ticket);
        });
    }
}

/// One tick of the connection watchdog; true when the connection must close.
#[allow(clippy::too_many_arguments)]
fn watch(
    shared: &Shared,
    activity: &ConnActivity,
    limits: &Limits,
    ticket: &mut crate::shield::ConnTicket,
    idle: &IdleConns,
    close_me: &Arc<Notify>,
    id: u64,
    idle_key: &mut Option<(u64, u64)>,
    peer_ip: IpAddr,
) -> bool {
    let is_idle = activity.is_idle();
    match (is_idle, *idle_key) {
        (true, None) => {
            let k = (now_ms(), id);
            idle.insert(k.0, k.1, close_me);
            *idle_key = Some(k);
        }
        (false, Some(k)) => {
            idle.remove(k);
            *idle_key = None;
        }
        _ => {}
    }
    if !ticket.set_idle(is_idle) {
        shared.metrics.reject(Reason::IdleCap);
        return true;
    }
    if shared.shield.peer_banned(peer_ip) {
        shared.metrics.reject(Reason::Banned);
        return true;
    }
    match activity.verdict(limits) {
        Verdict::Keep => false,
        Verdict::Idle => true,
        Verdict::HeaderTimeout => {
            // A slow or silent client: close now, nothing is in progress.
            shared.metrics.reject(Reason::HeaderTimeout);
            if activity.received_any() {
                shared.shield.connection_violation(
                    peer_ip,
                    Violation::SlowClient,
                    "request head not sent within the header timeout (slowloris?)",
                );
            }
            true
        }
        Verdict::SlowBody => {
            shared.shield.connection_violation(
                peer_ip,
                Violation::SlowClient,
                "request body slower than the minimum rate (slow POST?)",
            );
            enforced(shared, Rule::SlowBody, Reason::SlowBody)
        }
        Verdict::SlowRead => {
            shared.shield.connection_violation(
                peer_ip,
                Violation::SlowClient,
                "response not read within the send timeout (slow read?)",
            );
            enforced(shared, Rule::SlowRead, Reason::SlowRead)
        }
    }
}

/// Counts a slow-client block, or a would-be block for a dry-run rule (and keeps going).
fn enforced(shared: &Shared, rule: Rule, reason: Reason) -> bool {
    if shared.shield.config().dry(rule) {
        shared.metrics.would_block(reason);
        false
    } else {
        shared.metrics.reject(reason);
        true
    }
}

fn count_conn_error(shared: &Shared, peer: IpAddr, e: &hyper::Error) {
    let reason = if e.is_parse_too_large() {
        Reason::HeaderTooLarge
    } else if e.is_timeout() {
        Reason::HeaderTimeout
    } else if e.is_parse() || e.is_parse_status() {
        Reason::BadRequest
    } else {
        return;
    };
    shared.metrics.reject(reason);
    shared
        .shield
        .connection_violation(peer, Violation::Malformed, reason.as_str());
    tracing::debug!(error = %e, reason = reason.as_str(), "client connection closed");
}
