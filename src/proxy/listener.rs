//! The client-facing listener: accept, connection limits, HTTP/1.1 with header timeout and
//! size limits, idle keep-alive timeout, graceful drain.

use super::body::ConnActivity;
use super::handler;
use super::runtime::Shared;
use crate::clock::now_ms;
use crate::observe::metrics::Reason;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Counts open client connections; the drain waits for it to reach zero.
#[derive(Debug, Default)]
pub struct OpenConns(pub AtomicUsize);

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
        let snap = shared.snapshot.load();
        let l = &snap.cfg.listener;
        if open.0.load(Ordering::Acquire) >= l.max_connections {
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
            .header_read_timeout(l.client_header_timeout)
            .max_header_size(l.max_header_size)
            .keep_alive(true);
        let idle = l.idle_timeout;
        drop(snap);
        let shared = shared.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let activity = Arc::new(ConnActivity::default());
            activity.last_ms.store(now_ms(), Ordering::Relaxed);
            let svc_shared = shared.clone();
            let svc_act = activity.clone();
            let svc = service_fn(move |req| {
                handler::handle(svc_shared.clone(), peer, svc_act.clone(), req)
            });
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let mut closing = *stop.borrow();
            if closing {
                conn.as_mut().graceful_shutdown();
            }
            let tick = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            count_conn_error(&shared, &e);
                        }
                        break;
                    }
                    _ = stop.changed(), if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = tokio::time::sleep(tick), if !closing => {
                        let quiet = now_ms().saturating_sub(activity.last_ms.load(Ordering::Relaxed));
                        if activity.active.load(Ordering::Acquire) == 0 && quiet >= idle.as_millis() as u64 {
                            closing = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
        });
    }
}

fn count_conn_error(shared: &Shared, e: &hyper::Error) {
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
    tracing::debug!(error = %e, reason = reason.as_str(), "client connection closed");
}
