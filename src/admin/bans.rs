//! `/api/bans`: list, add and lift bans by hand.
//!
//! - `GET /api/bans` → `{"bans": [...], "active": N}`
//! - `POST /api/bans` with `{"target": "203.0.113.7" | "203.0.113.0/24", "duration": "1h", "reason": "..."}`
//!   → `201 {"ban": {...}}`
//! - `DELETE /api/bans/{target}` (a CIDR's slash may be written as is or as `%2F`) → `200` or `404`

use super::{Resp, error, json_resp};
use crate::clock::now_ms;
use crate::proxy::runtime::Shared;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBan {
    target: String,
    #[serde(default)]
    duration: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// Parses "203.0.113.7", "203.0.113.0/24", "2001:db8::/48".
pub fn parse_target(s: &str) -> Result<IpNet, String> {
    let t = s.trim();
    t.parse::<IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| t.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!("{t:?} is not an IP address or a CIDR range such as \"203.0.113.0/24\"")
        })
}

fn percent_decode(s: &str) -> String {
    s.replace("%2F", "/")
        .replace("%2f", "/")
        .replace("%3A", ":")
        .replace("%3a", ":")
}

/// Handles a request under `/api/bans`.
pub async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::GET, "/api/bans") => {
            let bans = shared.shield.bans.list(now_ms());
            json_resp(
                StatusCode::OK,
                &json!({ "active": bans.len(), "bans": bans }),
            )
        }
        (Method::POST, "/api/bans") => {
            let body: Bytes = match Limited::new(req.into_body(), 64 * 1024).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "cannot read the request body",
                        &[e.to_string()],
                    );
                }
            };
            let nb: NewBan = match serde_json::from_slice(&body) {
                Ok(n) => n,
                Err(e) => {
                    return error(StatusCode::BAD_REQUEST, "invalid ban", &[format!("line {} column {}: {e}", e.line(), e.column()), "send {\"target\": \"203.0.113.7\", \"duration\": \"1h\", \"reason\": \"...\"}".into()]);
                }
            };
            let target = match parse_target(&nb.target) {
                Ok(t) => t,
                Err(e) => return error(StatusCode::BAD_REQUEST, "invalid ban target", &[e]),
            };
            let duration = match nb.duration.as_deref() {
                None => shared.shield.config().ban_duration,
                Some(d) => match crate::config::units::parse_duration(d) {
                    Ok(d) if !d.is_zero() => d,
                    Ok(_) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "invalid ban duration",
                            &["a ban lasts more than zero seconds".into()],
                        );
                    }
                    Err(e) => return error(StatusCode::BAD_REQUEST, "invalid ban duration", &[e]),
                },
            };
            let reason = nb.reason.unwrap_or_else(|| "banned by an operator".into());
            let ban = shared.shield.manual_ban(target, duration, &reason);
            json_resp(StatusCode::CREATED, &json!({ "ban": ban }))
        }
        (Method::DELETE, p) if p.starts_with("/api/bans/") => {
            let raw = percent_decode(&p["/api/bans/".len()..]);
            let target = match parse_target(&raw) {
                Ok(t) => t,
                Err(e) => return error(StatusCode::BAD_REQUEST, "invalid ban target", &[e]),
            };
            match shared.shield.unban(&target) {
                Some(b) => json_resp(StatusCode::OK, &json!({ "removed": b })),
                None => error(
                    StatusCode::NOT_FOUND,
                    &format!("no ban on {target}"),
                    &["GET /api/bans lists the bans in force".into()],
                ),
            }
        }
        (m, _) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{m} is not allowed on {path}"),
            &["GET /api/bans, POST /api/bans, DELETE /api/bans/{target}".into()],
        ),
    }
}
