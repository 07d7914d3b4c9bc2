//! The client-facing listener: accept, connection limits, HTTP/1.1 with header timeout and
//! size limits, idle keep-alive timeout, graceful drain.

use super::conn::{ConnActivity, TrackedStream, Verdict};
use super::handler;
use super::runtime::Shared;
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
            // levee runs its own header timer (see conn.rs): hyper's would also cut idle
            // keep-alive connections at the header timeout.
            .header_read_timeout(None)
            .max_header_size(l.max_header_size)
            .keep_alive(true);
        let idle_ms = l.idle_timeout.as_millis() as u64;
        let header_ms = l.client_header_timeout.as_millis() as u64;
        let tick = (l.idle_timeout.min(l.client_header_timeout) / 4)
            .clamp(Duration::from_millis(20), Duration::from_secs(1));
        drop(snap);
        let shared = shared.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let activity = ConnActivity::new();
            let svc_shared = shared.clone();
            let svc_act = activity.clone();
            let svc = service_fn(move |req| {
                handler::handle(svc_shared.clone(), peer, svc_act.clone(), req)
            });
            let conn = builder.serve_connection(
                TokioIo::new(TrackedStream::new(stream, activity.clone())),
                svc,
            );
            tokio::pin!(conn);
            let mut closing = *stop.borrow();
            if closing {
                conn.as_mut().graceful_shutdown();
            }
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
                        match activity.verdict(header_ms, idle_ms) {
                            Verdict::Keep => {}
                            Verdict::HeaderTimeout => {
                                // A slow or silent client: close now, nothing is in progress.
                                shared.metrics.reject(Reason::HeaderTimeout);
                                break;
                            }
                            Verdict::Idle => break,
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
