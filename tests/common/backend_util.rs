//! Helpers for tests that talk to simulated servers (`levee::backend`): a small HTTP client,
//! whole responses, polling with a deadline.
//!
//! Include with `#[path = "common/backend_util.rs"] mod backend_util;`.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use levee::backend::{BackendOptions, SimServer};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Upper bound of every test.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(30);

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub async fn start(opts: BackendOptions) -> SimServer {
    SimServer::start(any_port(), opts)
        .await
        .expect("start simulated server")
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Send a request and read the whole response; any transport error is an `Err`.
pub async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Result<Reply, String> {
    let response = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| format!("{e:?}"))?;
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.to_bytes(),
    })
}

pub async fn get(client: &HttpClient, addr: SocketAddr, path: &str) -> Result<Reply, String> {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Full::default())
        .expect("request");
    send(client, req).await
}

/// Poll `condition` until it holds; panic with `what` past the deadline.
pub async fn wait_for<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if condition().await {
            return;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client that opens a new connection for every request.
pub fn client_without_pool() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

/// Read what is there (at least one byte) from a raw connection.
pub async fn read_some(stream: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.expect("read");
    assert!(n > 0, "connection closed");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}
