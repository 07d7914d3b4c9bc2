//! Request handling of the simulated server: `/health`, `/stats` and normal requests.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::header::{CONTENT_TYPE, HeaderName};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::body::SimBody;
use super::parse_duration;
use super::server::Shared;

/// Header naming the server that answered.
const X_BACKEND: HeaderName = HeaderName::from_static("x-backend");

/// Handle one request on connection `conn`.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    conn: u64,
    req: Request<Incoming>,
) -> Result<Response<SimBody>, Infallible> {
    let response = match req.uri().path() {
        "/stats" => stats(&shared),
        "/health" => health(&shared),
        _ => normal(&shared, conn, req).await,
    };
    Ok(with_backend_header(&shared, response))
}

fn stats(shared: &Shared) -> Response<SimBody> {
    match serde_json::to_vec(&shared.stats()) {
        Ok(json) => respond(StatusCode::OK, "application/json", SimBody::full(json)),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode stats: {e}\n"),
        ),
    }
}

fn health(shared: &Shared) -> Response<SimBody> {
    if shared.is_down() {
        text(StatusCode::SERVICE_UNAVAILABLE, "down")
    } else if !shared.healthy.load(Ordering::SeqCst) {
        text(StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
    } else {
        text(StatusCode::OK, "ok")
    }
}

/// A normal request: counted in flight, paced by the processor, may crash the server.
async fn normal(shared: &Shared, conn: u64, req: Request<Incoming>) -> Response<SimBody> {
    if shared.is_down() {
        // A crashed server does not answer: reset the connection.
        shared.reset_connection(conn);
        return std::future::pending().await;
    }
    let params = match Params::parse(req.uri().query()) {
        Ok(params) => params,
        Err(message) => return text(StatusCode::BAD_REQUEST, format!("{message}\n")),
    };
    // Counted before any await, so the count is never behind the truth.
    let in_flight = shared.enter();
    if shared
        .crash_above
        .is_some_and(|limit| in_flight.count > u64::from(limit))
    {
        shared.crash();
        // Our own connection is being reset too; wait for the abort.
        return std::future::pending().await;
    }
    let start = Instant::now();

    let echo = params
        .echo
        .then(|| echo_json(req.method(), req.uri().path(), req.headers()));
    let has_body = !req.body().is_end_stream();
    let received = match count_body(req.into_body()).await {
        Ok(n) => n,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}\n"),
            );
        }
    };

    match params.sleep {
        Some(sleep) => tokio::time::sleep_until(start + sleep).await,
        None => shared.processor.work(service_time(shared)).await,
    }

    let status = params.status.unwrap_or_else(|| configured_status(shared));
    let response = if let Some(echo) = echo {
        respond(status, "application/json", SimBody::full(echo))
    } else if let Some(size) = params.size {
        respond(status, "application/octet-stream", SimBody::filler(size))
    } else if has_body {
        let json = format!("{{\"received_bytes\": {received}}}\n");
        respond(status, "application/json", SimBody::full(json))
    } else {
        respond(status, "text/plain", SimBody::full(shared.greeting.clone()))
    };
    in_flight.complete();
    response
}

/// The status set by [`super::SimServer::set_status`]; 500 if it cannot be a final answer
/// (below 200 or above 999).
fn configured_status(shared: &Shared) -> StatusCode {
    let status = shared.status.load(Ordering::SeqCst);
    StatusCode::from_u16(status)
        .ok()
        .filter(|s| !s.is_informational())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The service time of a new request: the latency with ±20% uniform jitter.
fn service_time(shared: &Shared) -> Duration {
    let latency = Duration::from_nanos(shared.latency_ns.load(Ordering::SeqCst));
    latency.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// Read the request body to its end without keeping it; returns its length.
async fn count_body(mut body: Incoming) -> Result<u64, hyper::Error> {
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            received += data.len() as u64;
        }
    }
    Ok(received)
}

/// The JSON object of the request headers (duplicates joined with ", "), method and path.
fn echo_json(method: &Method, path: &str, headers: &HeaderMap) -> Vec<u8> {
    let mut object = serde_json::Map::new();
    for name in headers.keys() {
        let values: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        object.insert(name.as_str().to_owned(), values.join(", ").into());
    }
    object.insert("method".to_owned(), method.as_str().into());
    object.insert("path".to_owned(), path.into());
    let mut json = serde_json::Value::Object(object).to_string().into_bytes();
    json.push(b'\n');
    json
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<SimBody> {
    respond(status, "text/plain", SimBody::full(body))
}

fn respond(status: StatusCode, content_type: &'static str, body: SimBody) -> Response<SimBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

fn with_backend_header(shared: &Shared, mut response: Response<SimBody>) -> Response<SimBody> {
    if let Some(value) = &shared.addr_header {
        response.headers_mut().insert(X_BACKEND, value.clone());
    }
    response
}

/// Query parameters of a normal request.
#[derive(Debug, Default, PartialEq, Eq)]
struct Params {
    /// `sleep=DUR`: exact service time, instead of the paced latency.
    sleep: Option<Duration>,
    /// `status=N`: answer this status.
    status: Option<StatusCode>,
    /// `size=N`: answer N filler bytes.
    size: Option<u64>,
    /// `echo=1`: answer the request headers as JSON.
    echo: bool,
}

impl Params {
    /// Parse the known parameters; others are ignored, bad values are an error.
    fn parse(query: Option<&str>) -> Result<Params, String> {
        let mut params = Params::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sleep" => {
                    params.sleep =
                        Some(parse_duration(value).map_err(|e| format!("bad sleep: {e}"))?);
                }
                "status" => {
                    let status = value
                        .parse::<u16>()
                        .ok()
                        .filter(|s| (200..=599).contains(s))
                        .and_then(|s| StatusCode::from_u16(s).ok())
                        .ok_or_else(|| format!("bad status {value:?}: expected 200 to 599"))?;
                    params.status = Some(status);
                }
                "size" => {
                    let size = value
                        .parse::<u64>()
                        .map_err(|_| format!("bad size {value:?}: expected a number of bytes"))?;
                    params.size = Some(size);
                }
                "echo" => {
                    params.echo = match value {
                        "1" | "true" | "" => true,
                        "0" | "false" => false,
                        _ => return Err(format!("bad echo {value:?}: expected 1 or 0")),
                    };
                }
                _ => {}
            }
        }
        Ok(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_parameters() {
        assert_eq!(Params::parse(None), Ok(Params::default()));
        assert_eq!(
            Params::parse(Some(
                "sleep=250ms&status=503&size=1073741824&echo=1&other=x"
            )),
            Ok(Params {
                sleep: Some(Duration::from_millis(250)),
                status: Some(StatusCode::SERVICE_UNAVAILABLE),
                size: Some(1 << 30),
                echo: true,
            })
        );
        assert_eq!(Params::parse(Some("echo&&")).map(|p| p.echo), Ok(true));
    }

    #[test]
    fn rejects_bad_values() {
        for query in [
            "sleep=soon",
            "status=abc",
            "status=99",
            "status=100",
            "status=600",
            "size=-1",
            "size=1k",
            "echo=yes",
        ] {
            assert!(Params::parse(Some(query)).is_err(), "{query}");
        }
    }

    #[test]
    fn echo_joins_duplicate_headers() {
        let mut headers = HeaderMap::new();
        headers.append("x-dup", http::HeaderValue::from_static("a"));
        headers.append("x-dup", http::HeaderValue::from_static("b"));
        headers.insert("host", http::HeaderValue::from_static("example"));
        let json: serde_json::Value =
            serde_json::from_slice(&echo_json(&Method::POST, "/p", &headers)).unwrap_or_default();
        assert_eq!(json["x-dup"], "a, b");
        assert_eq!(json["host"], "example");
        assert_eq!(json["method"], "POST");
        assert_eq!(json["path"], "/p");
    }
}
