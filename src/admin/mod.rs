//! The admin listener: `/healthz`, `/metrics`, `/api/status`, `/api/reload`. JSON everywhere;
//! errors as `{"error": "...", "details": [...]}` with a 4xx status. With `admin.token_file`
//! set, every request needs `Authorization: Bearer <token>`.

pub mod bans;
pub mod client;
mod observe_api;

use crate::clock::now_ms;
use crate::proxy::runtime::Shared;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub(crate) type Resp = Response<Full<Bytes>>;

/// Serves the admin API until `stop` turns true.
pub async fn run(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&shared, req).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

pub(crate) fn json_resp(status: StatusCode, v: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// An API error: `{"error": ..., "details": [...]}`.
pub fn error(status: StatusCode, msg: &str, details: &[String]) -> Resp {
    json_resp(status, &json!({ "error": msg, "details": details }))
}

fn authorized(shared: &Shared, req: &Request<Incoming>) -> bool {
    let snap = shared.snapshot.load();
    let Some(token) = snap.cfg.admin.token.as_deref() else {
        return true;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compare in constant time with respect to the token's content.
    given.is_some_and(|g| {
        g.len() == token.len()
            && g.bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

async fn route(shared: &Arc<Shared>, req: Request<Incoming>) -> Resp {
    if !authorized(shared, &req) {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
            &["send Authorization: Bearer <the token in admin.token_file>".into()],
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    if let Some(r) = observe_api::route(shared, req.method(), &path, &query).await {
        return r;
    }
    if path == "/api/bans" || path.starts_with("/api/bans/") {
        return bans::handle(shared, req).await;
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"ok\n")));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            r
        }
        (&Method::GET, "/metrics") => {
            let open_metrics = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("application/openmetrics-text"));
            let text = shared.metrics.encode();
            let (ct, body) = if open_metrics {
                (
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                )
            } else {
                // Prometheus text format 0.0.4: same lines without the OpenMetrics terminator.
                (
                    "text/plain; version=0.0.4; charset=utf-8",
                    text.replace("# EOF\n", ""),
                )
            };
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            r
        }
        (&Method::GET, "/api/status") => json_resp(StatusCode::OK, &status(shared)),
        (&Method::POST, "/api/reload") => match crate::proxy::reload(shared).await {
            Ok(o) => json_resp(
                StatusCode::OK,
                &json!({ "ok": true, "generation": o.generation, "warnings": o.warnings, "findings": o.findings }),
            ),
            Err(crate::proxy::ReloadError::Unsafe { lines, findings }) => json_resp(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({ "error": "config rejected by the review (levee check); the previous config keeps serving", "details": lines, "findings": findings }),
            ),
            Err(e) => error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "config rejected; the previous config keeps serving",
                &e.details(),
            ),
        },
        (_, "/healthz" | "/metrics" | "/api/status" | "/api/reload") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{} is not allowed on {path}", req.method()),
            &[],
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            &format!("no such endpoint: {path}"),
            &["endpoints: GET /healthz, GET /metrics, GET /api/status, POST /api/reload, GET|POST /api/bans, DELETE /api/bans/{target}, GET / (dashboard), GET /api/dashboard, GET /api/events, GET /api/alerts, GET /api/runbook, GET /api/incidents[/{id}[/postmortem]]".into()],
        ),
    }
}

/// The `/api/status` document.
pub fn status(shared: &Shared) -> Value {
    let snap = shared.snapshot.load();
    let now = now_ms();
    let pools: Vec<Value> = snap
        .pools
        .iter()
        .map(|p| {
            let inner = p.inner.load();
            let servers: Vec<Value> = inner
                .servers
                .iter()
                .map(|s| {
                    let ejected = s.ejected(now);
                    json!({
                        "name": &*s.name,
                        "address": s.addr.to_string(),
                        "healthy": s.checks_up() && !ejected,
                        "health_check_up": s.checks_up(),
                        "ejected": ejected,
                        "in_flight": s.in_flight(),
                        "max_concurrency": s.cap(),
                        "weight": s.weight(),
                    })
                })
                .collect();
            json!({
                "name": &*p.name,
                "algorithm": inner.cfg.algorithm.as_str(),
                "queue_depth": p.queue_depth(),
                "queue_size": inner.cfg.queue_size,
                "healthy_servers": inner.servers.iter().filter(|s| s.available(now)).count(),
                "servers": servers,
            })
        })
        .collect();
    json!({
        "generation": snap.generation,
        "config": snap.cfg.path.as_ref().map(|p| p.display().to_string()),
        "listener": snap.cfg.listener.bind.to_string(),
        "pools": pools,
    })
}
