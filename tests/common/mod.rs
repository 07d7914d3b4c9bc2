//! Shared harness: levee and simulated backends on port 0 on loopback, a real HTTP client
//! that can bind any 127.x.y.z source address, and deadline-bounded waits.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use levee::backend::{BackendOptions, SimServer};
use levee::config::Config;
use levee::proxy::Levee;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

/// Starts levee from config text (use port 0 binds).
pub async fn levee(toml: &str) -> Levee {
    let cfg = match Config::parse(toml, "test.toml", None) {
        Ok(c) => c,
        Err(e) => panic!("test config invalid: {e}\n{toml}"),
    };
    Levee::start(cfg).await.expect("levee starts")
}

/// Starts levee from a config file (so reloads can re-read it).
pub async fn levee_from_file(path: &std::path::Path) -> Levee {
    let cfg = Config::load(path).unwrap_or_else(|e| panic!("test config invalid: {e}"));
    Levee::start(cfg).await.expect("levee starts")
}

/// A simulated backend on a free loopback port.
pub async fn backend(opts: BackendOptions) -> SimServer {
    SimServer::start("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .expect("backend starts")
}

/// A fast backend with a large capacity.
pub async fn fast_backend() -> SimServer {
    backend(BackendOptions {
        capacity: 1000,
        latency: Duration::from_millis(1),
        ..Default::default()
    })
    .await
}

/// Config text: listener and admin on port 0, access log off, one pool `web` with these
/// servers and extra pool keys (TOML lines).
pub fn config(servers: &[SocketAddr], pool_extra: &str) -> String {
    config_full(servers, pool_extra, "")
}

/// Like [`config`] with extra top-level text appended after the pool.
pub fn config_full(servers: &[SocketAddr], pool_extra: &str, tail: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    // Health checks go to the simulated server's /health, which its request counts leave out.
    let checks = if pool_extra.contains("[pools.web.health_check]") {
        ""
    } else {
        "[pools.web.health_check]\npath = \"/health\"\n"
    };
    // The core's tests measure the proxy alone; the shield's tests switch it on.
    let shield = if tail.contains("[shield") || pool_extra.contains("[shield") {
        ""
    } else {
        "[shield]\nenabled = false\n"
    };
    format!(
        "[listener]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[pools.web]\nservers = [{}]\n{pool_extra}\n{checks}{tail}\n{shield}",
        list.join(", ")
    )
}

/// A client with keep-alive.
pub fn client() -> TestClient {
    client_from(None)
}

/// A client whose connections come from `ip` (any 127.x.y.z on Linux).
pub fn client_from(ip: Option<IpAddr>) -> TestClient {
    let mut c = HttpConnector::new();
    c.set_local_address(ip);
    c.set_nodelay(true);
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build(c)
}

/// The answer to a request, or the transport error as text.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends a request and reads the whole answer.
pub async fn send(c: &TestClient, req: http::Request<Full<Bytes>>) -> Result<Answer, String> {
    let resp = c.request(req).await.map_err(|e| format!("{e:?}"))?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("{e:?}"))?
        .to_bytes();
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// GET a URL.
pub async fn get(c: &TestClient, url: &str) -> Result<Answer, String> {
    let req = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    send(c, req).await
}

/// Polls `cond` until it holds or the deadline passes; panics with `what` on timeout.
pub async fn wait_until<F: FnMut() -> bool>(within: Duration, what: &str, mut cond: F) {
    let deadline = Instant::now() + within;
    while !cond() {
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls an async condition until it holds or the deadline passes.
pub async fn wait_for<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The admin API's JSON at `path`.
pub async fn admin_json(l: &Levee, path: &str) -> serde_json::Value {
    let a = get(&client(), &format!("http://{}{}", l.admin_addr, path))
        .await
        .expect("admin answers");
    serde_json::from_slice(&a.body).expect("admin JSON")
}

/// The value of a metric line (exact name with labels) in /metrics.
pub async fn metric(l: &Levee, series: &str) -> Option<f64> {
    let a = get(&client(), &format!("http://{}/metrics", l.admin_addr))
        .await
        .ok()?;
    let text = a.text();
    text.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// Runs a future with a hard time limit so no test can hang.
pub async fn bounded<F: std::future::Future>(limit: Duration, f: F) -> F::Output {
    tokio::time::timeout(limit, f)
        .await
        .expect("test exceeded its time bound")
}

/// A child process (the real levee binary), killed on drop.
pub struct Proc(pub std::process::Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first URL's scheme and authority in a line ("http://127.0.0.1:8080").
pub fn url_in(line: &str) -> String {
    let w = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap();
    let rest = &w["http://".len()..];
    format!("http://{}", rest.split('/').next().unwrap())
}

/// Starts the real `levee demo` on port 0; returns it with its URL and admin URL (read from
/// the banner on stderr).
pub async fn start_demo() -> (Proc, String, String) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let p = Proc(child);
    let (url, admin) = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(err).lines();
        let (mut url, mut admin) = (None, None);
        while url.is_none() || admin.is_none() {
            let l = lines.next().expect("demo banner").unwrap();
            let t = l.trim_start();
            if t.starts_with("levee ") && t.contains("http://") {
                url = Some(url_in(t));
            } else if t.starts_with("admin ") {
                admin = Some(url_in(t));
            }
        }
        std::thread::spawn(move || for _ in lines.by_ref() {});
        (url.unwrap(), admin.unwrap())
    })
    .await
    .unwrap();
    (p, url, admin)
}

/// A fresh directory under the system temp dir, unique to this process and call.
pub fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "levee-test-{tag}-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Owned strings of string literals (for argument lists).
pub fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Runs the real binary in a blocking thread, bounded in time; (exit code, stdout, stderr).
pub async fn levee_bin(args: Vec<String>) -> (i32, String, String) {
    let out = bounded(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_levee"))
                .args(&args)
                .output()
        }),
    )
    .await
    .expect("join")
    .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
