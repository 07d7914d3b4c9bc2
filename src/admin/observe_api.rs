//! The observing part of the admin API: `/` (the dashboard), `/api/dashboard`, `/api/events`,
//! `/api/alerts`, `/api/incidents`, `/api/incidents/{id}`, `/api/incidents/{id}/postmortem`.

use super::{Resp, error, json_resp};
use crate::journal::{self, JournalError, report, store};
use crate::observe::history::{self, History};
use crate::observe::latency;
use crate::proxy::runtime::Shared;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use std::sync::Arc;

const DASHBOARD: &str = include_str!("dashboard.html");

/// Answers the endpoints above; `None` for any other path.
pub async fn route(shared: &Arc<Shared>, method: &Method, path: &str, query: &str) -> Option<Resp> {
    let get = method == Method::GET;
    let r = match path {
        "/" | "/dashboard" if get => text(DASHBOARD, "text/html; charset=utf-8"),
        "/api/dashboard" if get => json_resp(StatusCode::OK, &dashboard(shared).await),
        "/api/events" if get => {
            let limit = param(query, "limit").unwrap_or(100).clamp(1, 500);
            let events = shared.observe.recent_events(limit as usize);
            let events: Vec<&crate::events::Event> = events.iter().map(|e| &**e).collect();
            json_resp(StatusCode::OK, &json!({ "events": events }))
        }
        "/api/alerts" if get => json_resp(StatusCode::OK, &json!({ "alerts": alerts(shared) })),
        "/api/runbook" if get => text(
            &crate::observe::rules::runbook_markdown(),
            "text/markdown; charset=utf-8",
        ),
        p if get && (p == "/api/incidents" || p.starts_with("/api/incidents/")) => {
            incidents(shared, p).await
        }
        "/" | "/dashboard" | "/api/dashboard" | "/api/events" | "/api/alerts" | "/api/runbook" => {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{method} is not allowed on {path}"),
                &[],
            )
        }
        p if p.starts_with("/api/incidents") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{method} is not allowed on {path}"),
            &[],
        ),
        _ => return None,
    };
    Some(r)
}

fn text(body: &str, ct: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn param(query: &str, name: &str) -> Option<u64> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
}

fn alerts(shared: &Shared) -> Vec<Value> {
    let url = crate::observe::notify::external_url(shared);
    shared
        .observe
        .alert_list()
        .iter()
        .map(|a| a.to_json("firing", None, &url))
        .collect()
}

async fn incidents(shared: &Arc<Shared>, path: &str) -> Resp {
    let Some(j) = shared.observe.journal.get() else {
        return error(
            StatusCode::NOT_FOUND,
            "the incident journal is off",
            &["set [journal] path = \"levee-journal.db\" in the config and restart".into()],
        );
    };
    let file = j.path.clone();
    let rest = path
        .trim_start_matches("/api/incidents")
        .trim_matches('/')
        .to_string();
    let parts: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let (id, postmortem) = match parts.as_slice() {
        [] => (None, false),
        [id] => (Some(id.clone()), false),
        [id, pm] if pm == "postmortem" => (Some(id.clone()), true),
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                &format!("no such endpoint: {path}"),
                &[],
            );
        }
    };
    let id = match id.as_deref().map(str::parse::<i64>) {
        None => None,
        Some(Ok(i)) => Some(i),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "the incident id must be a number",
                &[],
            );
        }
    };
    let done = tokio::task::spawn_blocking(move || -> Result<Resp, JournalError> {
        let c = store::open_read(&file)?;
        let Some(id) = id else {
            let list = store::incidents(&c).map_err(store::err(&file))?;
            return Ok(json_resp(StatusCode::OK, &json!({ "incidents": list })));
        };
        let inc = report::pick(&c, Some(id))?;
        let r = report::build(&c, &inc).map_err(store::err(&file))?;
        Ok(if postmortem {
            text(
                &journal::postmortem::markdown(&r),
                "text/markdown; charset=utf-8",
            )
        } else {
            json_resp(
                StatusCode::OK,
                &serde_json::to_value(&r).unwrap_or(Value::Null),
            )
        })
    })
    .await;
    match done {
        Ok(Ok(r)) => r,
        Ok(Err(e @ JournalError::NoIncident(_))) => {
            error(StatusCode::NOT_FOUND, &e.to_string(), &[])
        }
        Ok(Err(e)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot read the journal",
            &[e.to_string()],
        ),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot read the journal",
            &[e.to_string()],
        ),
    }
}

fn p99_ms(b: &latency::Buckets) -> Value {
    latency::quantile(b, 0.99).map_or(Value::Null, |s| json!(s * 1000.0))
}

/// The open incident's headline figures, read from the journal off the runtime threads.
async fn open_incident(shared: &Shared) -> Option<Value> {
    let path = shared.observe.journal.get()?.path.clone();
    tokio::task::spawn_blocking(move || {
        let c = store::open_read(&path).ok()?;
        let inc = store::open_incident(&c).ok()??;
        let r = report::build(&c, &inc).ok()?;
        Some(json!({ "id": r.id, "title": r.title, "start_ms": r.start_ms, "duration_secs": r.duration_secs, "impact": r.impact }))
    })
    .await
    .ok()
    .flatten()
}

/// The `/api/dashboard` document.
pub async fn dashboard(shared: &Arc<Shared>) -> Value {
    let open_incident = open_incident(shared).await;
    let obs = &shared.observe;
    let (pools, series, totals) = match obs.history.lock() {
        Ok(h) => pools_and_series(&h),
        Err(_) => (Vec::new(), Vec::new(), Value::Null),
    };
    let shield = obs.shield.lock().map(|s| s.clone()).unwrap_or_default();
    let mut bans: Vec<&Arc<crate::events::Event>> = shield.bans.values().collect();
    bans.sort_by_key(|e| std::cmp::Reverse(e.time));
    json!({
        "time_ms": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        "generation": shared.snapshot.load().generation,
        "totals": totals,
        "pools": pools,
        "series": series,
        "shield": {
            "attack_active": shield.attack.is_some(),
            "attack": shield.attack.as_ref().or(shield.last_attack.as_ref()).map(|e| json!({ "event": &**e, "active": shield.attack.is_some() })),
            "active_bans": shield.bans.len(),
            "recent_bans": bans.iter().take(10).map(|e| json!({ "client": e.client, "reason": e.data.get("reason"), "duration_secs": e.data.get("duration_secs") })).collect::<Vec<_>>(),
        },
        "alerts": alerts(shared),
        "incident": open_incident,
        "journal": obs.journal.get().map(|j| j.path.display().to_string()),
        "events": obs.recent_events(30).iter().map(|e| &**e).collect::<Vec<_>>(),
        "process": {
            "resident_memory_bytes": crate::observe::process::resident_memory_bytes(),
            "open_fds": crate::observe::process::open_fds(),
            "open_connections": shared.metrics.open_connections.get(),
        },
        "notifications": {
            "delivered": obs.notify.delivered.load(std::sync::atomic::Ordering::Relaxed),
            "failed": obs.notify.failed.load(std::sync::atomic::Ordering::Relaxed),
            "dropped": obs.notify.dropped.load(std::sync::atomic::Ordering::Relaxed),
        },
    })
}

fn pools_and_series(h: &History) -> (Vec<Value>, Vec<Value>, Value) {
    let last = h.last(121);
    let series: Vec<Value> = last
        .windows(2)
        .map(|w| {
            let d = history::delta(&w[0], &w[1]);
            json!({
                "t": w[1].t,
                "requests": d.requests,
                "errors": d.errors + d.upstream_errors,
                "shed": d.shed,
                "blocked": d.blocked,
                "p99_ms": p99_ms(&d.latency),
            })
        })
        .collect();
    let Some(now) = h.latest() else {
        return (Vec::new(), series, Value::Null);
    };
    let w5 = h.window(5);
    let secs = w5.secs.max(1) as f64;
    let totals = json!({
        "requests_per_sec": w5.requests as f64 / secs,
        "errors_per_sec": (w5.errors + w5.upstream_errors) as f64 / secs,
        "shed_per_sec": w5.shed as f64 / secs,
        "blocked_per_sec": w5.blocked as f64 / secs,
        "p99_ms": p99_ms(&h.window(60).latency),
        "open_connections": now.open_connections,
    });
    let before5 = h.ago(5).cloned();
    let before60 = h.ago(60).cloned();
    let pools = now
        .pools
        .iter()
        .map(|p| {
            let d5 = h.pool_window(&p.name, 5);
            let d60 = h.pool_window(&p.name, 60);
            let s5 = d5.secs.max(1) as f64;
            let find = |s: &Option<Arc<history::Sample>>, name: &str| {
                s.as_ref()
                    .and_then(|s| s.pools.iter().find(|x| x.name == p.name).cloned())
                    .and_then(|bp| bp.servers.iter().find(|x| &*x.name == name).cloned())
            };
            let servers: Vec<Value> = p
                .servers
                .iter()
                .map(|s| {
                    let b5 = find(&before5, &s.name);
                    let b60 = find(&before60, &s.name);
                    let r5 = s.requests.saturating_sub(b5.as_ref().map_or(0, |x| x.requests));
                    let e5 = s.errors.saturating_sub(b5.as_ref().map_or(0, |x| x.errors));
                    let lat = b60.as_ref().map_or(s.latency, |x| latency::sub(&s.latency, &x.latency));
                    json!({
                        "name": &*s.name,
                        "up": s.up,
                        "ejected": s.ejected,
                        "requests_per_sec": r5 as f64 / s5,
                        "error_ratio": if r5 == 0 { 0.0 } else { e5 as f64 / r5 as f64 },
                        "p99_ms": p99_ms(&lat),
                        "in_flight": s.in_flight,
                        "max_concurrency": s.cap,
                    })
                })
                .collect();
            json!({
                "name": &*p.name,
                "healthy": p.healthy(),
                "servers_total": p.servers.len(),
                "requests_per_sec": d5.requests as f64 / s5,
                "error_ratio": if d5.requests == 0 { 0.0 } else { d5.errors as f64 / d5.requests as f64 },
                "shed_per_sec": d5.shed as f64 / s5,
                "p99_ms": p99_ms(&d60.latency),
                "queue_depth": p.queue_depth,
                "queue_size": p.queue_size,
                "servers": servers,
            })
        })
        .collect();
    (pools, series, totals)
}
