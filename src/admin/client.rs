//! A small client of the admin API, for `levee ban`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use std::time::Duration;

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminCallError {
    #[error("invalid admin URL {0:?}: write it like http://127.0.0.1:9090")]
    Url(String),
    #[error("cannot reach the admin API at {url}: {msg}")]
    Unreachable { url: String, msg: String },
    #[error("the admin API did not answer within 10s ({0})")]
    Timeout(String),
}

/// Sends a request and returns (status, body).
pub async fn call(
    method: http::Method,
    url: &str,
    token: Option<&str>,
    body: Option<String>,
) -> Result<(u16, Bytes), AdminCallError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| AdminCallError::Url(url.to_string()))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(AdminCallError::Url(url.to_string()));
    }
    let mut b = http::Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        b = b.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if body.is_some() {
        b = b.header(http::header::CONTENT_TYPE, "application/json");
    }
    let req = b
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|_| AdminCallError::Url(url.to_string()))?;
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let fut = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| AdminCallError::Unreachable {
                url: url.to_string(),
                msg: e.to_string(),
            })?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| AdminCallError::Unreachable {
                url: url.to_string(),
                msg: e.to_string(),
            })?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| AdminCallError::Timeout(url.to_string()))?
}
