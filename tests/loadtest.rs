//! `levee loadtest`: the load models, honest latency, source addresses, scenarios, thresholds and
//! reports, against in-process simulated backends and through the real binary. Every run is a
//! few seconds of bounded load on loopback.

mod common;

use common::*;
use levee::backend::BackendOptions;
use levee::loadtest::{self, LoadtestArgs, results::ScenarioResult};
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn args(url: &str) -> LoadtestArgs {
    LoadtestArgs {
        url: Some(url.to_owned()),
        method: "GET".into(),
        timeout: Duration::from_secs(5),
        quiet: true,
        ..Default::default()
    }
}

/// Runs the load test in-process and returns its only scenario's results.
async fn run_one(a: LoadtestArgs) -> ScenarioResult {
    let plans = loadtest::plans_of(&a).unwrap_or_else(|e| panic!("bad args: {e}"));
    let mut outcome = bounded(Duration::from_secs(30), loadtest::execute(plans, 2, false)).await;
    assert_eq!(outcome.results.len(), 1);
    outcome.results.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_model_counts_add_up_with_the_server() {
    let b = fast_backend().await;
    let mut a = args(&format!("http://{}/", b.addr()));
    a.requests = Some(300);
    a.connections = Some(4);
    let r = run_one(a).await;
    assert_eq!(r.model, "closed");
    assert_eq!(r.requests, 300);
    assert_eq!(r.status(200), 300);
    assert_eq!(r.error_total(), 0);
    assert_eq!(r.success_rate, 100.0);
    assert_eq!(
        r.connections_opened, 4,
        "keep-alive: one connection per worker"
    );
    assert_eq!(
        b.stats().served,
        300,
        "the server saw exactly what was counted"
    );
    let timeline: u64 = r.timeline.iter().map(|p| p.requests).sum();
    assert_eq!(timeline, 300, "the timeline adds up");
    let histogram: u64 = r.histogram.iter().map(|b| b.count).sum();
    assert_eq!(histogram, 300, "the histogram holds every response");
    assert!(r.bytes_received > 0);
    assert!(r.latency.p50_ms > 0.0 && r.latency.p50_ms <= r.latency.max_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_model_sends_at_the_intended_rate_and_no_keepalive_opens_a_connection_per_request() {
    let b = fast_backend().await;
    let mut a = args(&format!("http://{}/", b.addr()));
    a.rate = Some(200.0);
    a.duration = Some(Duration::from_secs(2));
    a.no_keepalive = true;
    let r = run_one(a).await;
    assert_eq!(r.model, "open");
    // Intended times 0, 5ms, 10ms... below 2s: exactly 400.
    assert_eq!(r.requests, 400);
    assert_eq!(r.status(200), 400);
    assert_eq!(r.connections_opened, 400);
    assert_eq!(b.stats().connections, 400);
    assert!((170.0..=210.0).contains(&r.rps), "rps {}", r.rps);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_model_stages_ramp_the_rate() {
    let b = fast_backend().await;
    let mut a = args(&format!("http://{}/", b.addr()));
    a.model = Some("open".into());
    a.stages = Some("1s:100,1s:100".into());
    let r = run_one(a).await;
    // 0 -> 100/s over 1s (about 50), then 100/s for 1s (100).
    assert!((135..=165).contains(&r.requests), "{}", r.requests);
    assert_eq!(r.config.stages.as_deref(), Some("1s:100,1s:100"));

    // Closed model: the stages set the number of connections (up to 4, then back to 0).
    let mut a = args(&format!("http://{}/", b.addr()));
    a.stages = Some("500ms:4,500ms:4,500ms:0".into());
    let r = run_one(a).await;
    assert_eq!(r.model, "closed");
    assert_eq!(r.connections_opened, 4);
    assert!(b.stats().max_in_flight <= 4, "{:?}", b.stats());
    assert!(r.requests > 0 && r.error_total() == 0, "{:?}", r.errors);
    assert!((1.4..2.5).contains(&r.duration_s), "{}", r.duration_s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_shows_in_corrected_latency_and_not_in_uncorrected() {
    let b = backend(BackendOptions {
        capacity: 1000,
        latency: Duration::from_millis(1),
        ..Default::default()
    })
    .await;
    let mut a = args(&format!("http://{}/", b.addr()));
    a.rate = Some(250.0);
    a.connections = Some(2);
    a.duration = Some(Duration::from_secs(5));
    let plans = loadtest::plans_of(&a).expect("plan");
    let run = tokio::spawn(loadtest::execute(plans, 2, false));
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.set_latency(Duration::from_secs(1));
    tokio::time::sleep(Duration::from_secs(1)).await;
    b.set_latency(Duration::from_millis(1));
    let mut outcome = bounded(Duration::from_secs(30), run).await.expect("join");
    let r = outcome.results.remove(0);
    assert_eq!(r.error_total(), 0);
    assert!(
        r.latency.p99_ms >= 500.0,
        "corrected p99 must show the 1s stall: {:?}",
        r.latency
    );
    assert!(
        r.latency_uncorrected.p99_ms < 250.0,
        "uncorrected p99 hides it (only the requests in flight saw it): {:?}",
        r.latency_uncorrected
    );
    assert!(
        r.latency_uncorrected.max_ms >= 700.0,
        "{:?}",
        r.latency_uncorrected
    );
}

/// A minimal HTTP server that records the peer address of every connection and answers
/// `200 ok` with `Connection: close`.
async fn peer_recorder() -> (std::net::SocketAddr, Arc<Mutex<Vec<IpAddr>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = peers.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            seen.lock().expect("lock").push(peer.ip());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, peers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_come_from_every_address_of_the_source_range() {
    let (addr, peers) = peer_recorder().await;
    let mut a = args(&format!("http://{addr}/"));
    a.requests = Some(24);
    a.connections = Some(2);
    a.no_keepalive = true;
    a.source_ips = Some("127.10.0.0/29".into());
    let r = run_one(a).await;
    assert_eq!(r.status(200), 24, "{:?}", r.errors);
    let peers = peers.lock().expect("lock").clone();
    assert_eq!(peers.len(), 24);
    let distinct: HashSet<IpAddr> = peers.iter().copied().collect();
    let expected: HashSet<IpAddr> = (1..=6)
        .map(|i| format!("127.10.0.{i}").parse().expect("ip"))
        .collect();
    assert_eq!(
        distinct, expected,
        "the 6 usable addresses of the /29, each used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_model_counts_requests_never_sent_when_every_connection_stays_busy() {
    let b = fast_backend().await;
    let mut a = args(&format!("http://{}/?sleep=3s", b.addr()));
    a.rate = Some(50.0);
    a.connections = Some(1);
    a.duration = Some(Duration::from_secs(1));
    let r = run_one(a).await;
    // The first request holds the only connection for 3s; the 49 others due within the 1s run
    // could not be sent before the end (+1s of grace): they are failures, not silently dropped.
    assert_eq!(r.requests, 50, "{:?}", r.errors);
    assert_eq!(r.status(200), 1);
    assert_eq!(r.errors.get("unsent"), Some(&49), "{:?}", r.errors);
    assert!((r.success_rate - 2.0).abs() < 1e-9, "{}", r.success_rate);
    assert!(
        r.duration_s < 4.0,
        "the run ends after the one request in flight: {}",
        r.duration_s
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_refused_connections_are_errors_by_kind() {
    let b = fast_backend().await;
    let mut a = args(&format!("http://{}/?sleep=2s", b.addr()));
    a.requests = Some(4);
    a.connections = Some(2);
    a.timeout = Duration::from_millis(200);
    let r = run_one(a).await;
    assert_eq!(r.errors.get("timeout"), Some(&4), "{:?}", r.errors);
    assert_eq!(r.success_rate, 0.0);

    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let mut a = args(&format!("http://127.0.0.1:{port}/"));
    a.requests = Some(3);
    a.connections = Some(1);
    let r = run_one(a).await;
    assert_eq!(r.errors.get("connect"), Some(&3), "{:?}", r.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_decide_the_exit_code_and_expected_statuses_count_as_success() {
    let b = fast_backend().await;
    let url = format!("http://{}/?status=429", b.addr());
    let base = [
        "loadtest",
        &url,
        "-n",
        "50",
        "-c",
        "2",
        "--expect-status",
        "429,503",
    ];
    let mut pass = strings(&base);
    pass.extend(strings(&[
        "--threshold",
        "success_rate > 99.5%",
        "--threshold",
        "status_429 > 0",
        "--threshold",
        "p99 < 5s",
    ]));
    let (code, out, err) = levee_bin(pass).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("PASS success_rate > 99.5% (observed 100.00%)"),
        "{out}"
    );
    assert!(out.contains("PASS status_429 > 0 (observed 50)"), "{out}");
    assert!(out.contains("statuses      429: 50"), "{out}");
    assert!(out.contains("thresholds: 3 passed, 0 failed"), "{out}");

    let mut fail = strings(&base[..6]);
    fail.extend(strings(&[
        "--threshold",
        "success_rate > 99.5%",
        "--threshold",
        "rps > 1000000",
    ]));
    let (code, out, _) = levee_bin(fail).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL success_rate > 99.5% (observed 0.00%)"),
        "{out}"
    );
    assert!(out.contains("FAIL rps > 1000000 (observed"), "{out}");
    assert!(out.contains("0 passed, 2 failed -> exit 1"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_exits_2_with_a_message() {
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["loadtest", "http://127.0.0.1:9/", "--threshold", "p99 <"],
            "bad threshold",
        ),
        (vec!["loadtest", "https://127.0.0.1:9/"], "only http://"),
        (
            vec!["loadtest", "http://127.0.0.1:9/", "--stages", "30s"],
            "bad stage",
        ),
        (
            vec!["loadtest", "http://127.0.0.1:9/", "--source-ips", "nowhere"],
            "bad source",
        ),
        (
            vec![
                "loadtest",
                "http://127.0.0.1:9/",
                "--body",
                "@/nonexistent/levee",
            ],
            "cannot read",
        ),
        (
            vec!["loadtest", "--scenario", "/nonexistent/levee.toml"],
            "cannot read",
        ),
        (vec!["loadtest"], "required"),
        (
            vec!["loadtest", "http://127.0.0.1:9/", "--rate=0"],
            "rate must be above 0",
        ),
    ];
    for (a, needle) in cases {
        let (code, out, err) = levee_bin(strings(&a)).await;
        assert_eq!(code, 2, "{a:?}\n{out}\n{err}");
        assert!(err.contains(needle), "{a:?}: {err}");
    }
    let dir = tempdir("bad");
    let file = dir.join("s.toml");
    std::fs::write(
        &file,
        "url = \"http://127.0.0.1:9/\"\n[scenarios.a]\nrate = 5\nburst = 3\n",
    )
    .expect("write");
    let (code, _, err) = levee_bin(strings(&[
        "loadtest",
        "--scenario",
        &file.display().to_string(),
    ]))
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("s.toml:4:1:") && err.contains("unknown field `burst`"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenario_file_runs_legit_flood_and_slowloris_at_once() {
    let b = fast_backend().await;
    let l = levee(&config_full(&[b.addr()], "", "").replace(
        "[listener]\nbind = \"127.0.0.1:0\"\n",
        "[listener]\nbind = \"127.0.0.1:0\"\nclient_header_timeout = \"500ms\"\n",
    ))
    .await;
    let text = format!(
        r#"
url = "http://{levee}/"
duration = "3s"

[scenarios.legit]
rate = 50
source_ips = "127.30.0.0/24"
source_ip_count = 5
thresholds = ["success_rate > 99%", "p99 < 2s"]

[scenarios.flood]
connections = 4
start = "1s"
duration = "1s"
url = "http://{backend}/"
expect_status = [429, 503]
thresholds = ["requests > 10", "status_5xx == 0"]

[scenarios.slowloris]
kind = "slowloris"
connections = 3
byte_interval = "50ms"
"#,
        levee = l.addr,
        backend = b.addr()
    );
    let plans = loadtest::scenario::parse(&text, "s.toml", None).unwrap_or_else(|e| panic!("{e}"));
    let outcome = bounded(Duration::from_secs(30), loadtest::execute(plans, 2, false)).await;
    let by_name = |n: &str| {
        outcome
            .results
            .iter()
            .find(|r| r.name == n)
            .unwrap_or_else(|| panic!("no {n}"))
    };
    let legit = by_name("legit");
    assert_eq!(legit.model, "open");
    assert_eq!(legit.requests, 150, "50/s for 3s");
    assert!(legit.passed(), "{:?}", legit.thresholds);
    assert_eq!(legit.config.source_ip_count, Some(5));
    let flood = by_name("flood");
    assert_eq!(flood.model, "closed");
    assert!(
        (0.9..1.5).contains(&flood.started_at_s),
        "{}",
        flood.started_at_s
    );
    assert!(flood.duration_s < 1.6, "{}", flood.duration_s);
    assert!(flood.passed(), "{:?}", flood.thresholds);
    let slow = by_name("slowloris");
    assert_eq!(slow.model, "slowloris");
    // levee closes a connection whose head does not arrive within 500ms; slowloris reopens.
    assert!(slow.requests >= 6, "{slow:?}");
    assert!(slow.connections_opened >= 9, "{}", slow.connections_opened);
    assert!(
        slow.latency.max_ms < 1500.0 && slow.latency.min_ms >= 400.0,
        "{:?}",
        slow.latency
    );
    assert!(slow.bytes_sent > 0);
    assert!(outcome.results.iter().all(|r| r.passed()));
}

#[test]
fn the_example_scenario_file_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/loadtest.toml");
    let plans = loadtest::scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<_> = plans.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["legit", "flood", "slowloris"]);
}

/// How a [`raw_server`] answers the requests of a connection.
#[derive(Clone, Copy)]
enum RawMode {
    /// `200` with `Connection: close`, then closes.
    CloseHeader,
    /// `200` (keep-alive), then closes the connection at once, as an idle timeout would.
    IdleClose,
    /// Bytes that are not HTTP.
    Garbage,
    /// `200` with a chunked body, keep-alive.
    Chunked,
}

/// Counts of a [`raw_server`]: connections accepted, and every request head it read.
#[derive(Default)]
struct RawSeen {
    connections: u64,
    requests: Vec<Vec<u8>>,
}

/// A hand-written HTTP/1.1 server answering every connection as `mode` says.
async fn raw_server(mode: RawMode) -> (std::net::SocketAddr, Arc<Mutex<RawSeen>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(RawSeen::default()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            record.lock().expect("lock").connections += 1;
            let record = record.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 4096];
                loop {
                    // One request: its head, and its body if it has a content-length.
                    let head_end = loop {
                        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
                    let body_len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while got.len() < head_end + body_len {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let request: Vec<u8> = got.drain(..head_end + body_len).collect();
                    record.lock().expect("lock").requests.push(request);
                    let answer: &[u8] = match mode {
                        RawMode::CloseHeader => {
                            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
                        }
                        RawMode::IdleClose => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                        RawMode::Garbage => b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
                        RawMode::Chunked => {
                            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                              3;x=y\r\nabc\r\n4\r\ndefg\r\n0\r\nx-t: 1\r\n\r\n"
                        }
                    };
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                    if !matches!(mode, RawMode::Chunked) {
                        let _ = stream.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_connection_close_gets_a_new_connection_per_request() {
    let (addr, seen) = raw_server(RawMode::CloseHeader).await;
    let mut a = args(&format!("http://{addr}/"));
    a.requests = Some(30);
    a.connections = Some(2);
    let r = run_one(a).await;
    assert_eq!(r.status(200), 30, "{:?}", r.errors);
    assert_eq!(r.error_total(), 0, "{:?}", r.errors);
    assert_eq!(r.connections_opened, 30, "one connection per response");
    assert_eq!(seen.lock().expect("lock").connections, 30);
    assert_eq!(r.bytes_received, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_closing_idle_kept_alive_connections_costs_no_error() {
    let (addr, seen) = raw_server(RawMode::IdleClose).await;
    let mut a = args(&format!("http://{addr}/"));
    a.requests = Some(40);
    a.connections = Some(2);
    let r = run_one(a).await;
    // Each connection is closed by the server after one response, without saying so: the next
    // request on it fails before any answer and is sent again on a new connection.
    assert_eq!(r.status(200), 40, "{:?}", r.errors);
    assert_eq!(r.error_total(), 0, "{:?}", r.errors);
    assert_eq!(r.requests, 40);
    let seen = seen.lock().expect("lock");
    assert_eq!(r.connections_opened, seen.connections);
    assert!(seen.connections >= 40, "{}", seen.connections);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_garbage_counts_protocol_errors() {
    let (addr, _) = raw_server(RawMode::Garbage).await;
    let mut a = args(&format!("http://{addr}/"));
    a.requests = Some(10);
    a.connections = Some(2);
    let r = run_one(a).await;
    assert_eq!(r.requests, 10);
    assert_eq!(r.errors.get("protocol"), Some(&10), "{:?}", r.errors);
    assert_eq!(r.responses, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_responses_are_counted_on_a_kept_connection() {
    let (addr, seen) = raw_server(RawMode::Chunked).await;
    let mut a = args(&format!("http://{addr}/"));
    a.requests = Some(50);
    a.connections = Some(1);
    let r = run_one(a).await;
    assert_eq!(r.status(200), 50, "{:?}", r.errors);
    assert_eq!(r.bytes_received, 50 * 7, "body bytes after decoding");
    assert_eq!(r.connections_opened, 1);
    assert_eq!(seen.lock().expect("lock").connections, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_carries_method_headers_body_and_connection_close() {
    let (addr, seen) = raw_server(RawMode::CloseHeader).await;
    let dir = tempdir("loadtest-request");
    let body = dir.join("body.json");
    std::fs::write(&body, b"{\"k\":1}").expect("write body");
    let mut a = args(&format!("http://{addr}/submit?x=1"));
    a.method = "POST".into();
    a.headers = vec!["X-Test: yes".into(), "Content-Length: 999".into()];
    a.body = Some(format!("@{}", body.display()));
    a.requests = Some(2);
    a.connections = Some(1);
    a.no_keepalive = true;
    let r = run_one(a).await;
    assert_eq!(r.status(200), 2, "{:?}", r.errors);
    assert_eq!(r.bytes_sent, 14);
    let seen = seen.lock().expect("lock");
    let expected = format!(
        "POST /submit?x=1 HTTP/1.1\r\nhost: {addr}\r\nuser-agent: levee-loadtest\r\n\
         x-test: yes\r\ncontent-length: 7\r\nconnection: close\r\n\r\n{{\"k\":1}}"
    );
    for request in &seen.requests {
        assert_eq!(String::from_utf8_lossy(request), expected);
    }
    assert_eq!(seen.requests.len(), 2);
}

/// A keep-alive server answering every request at once, except during its first `stall` (from
/// its first request), when answers wait until the stall is over. Records, for every request, the
/// connection it came on and when it was answered.
async fn stalling_server(
    stall: Duration,
) -> (
    std::net::SocketAddr,
    Arc<Mutex<Vec<(usize, std::time::Instant)>>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let first = Arc::new(std::sync::OnceLock::<tokio::time::Instant>::new());
    tokio::spawn(async move {
        let mut id = 0;
        while let Ok((mut stream, _)) = listener.accept().await {
            id += 1;
            let (record, first) = (record.clone(), first.clone());
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 4096];
                loop {
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        got.drain(..i + 4);
                    }
                    let t0 = *first.get_or_init(tokio::time::Instant::now);
                    tokio::time::sleep_until(t0 + stall).await;
                    record
                        .lock()
                        .expect("lock")
                        .push((id, std::time::Instant::now()));
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_model_keeps_few_connections_busy_after_a_stall_grew_the_pool() {
    // 300 ms of stall at 1,000 requests/s: every connection is busy, the pool grows to its cap
    // of 64. After the stall a request takes well under a millisecond, so a couple of connections
    // are enough: the next request goes to the connection freed last, and the others stay idle
    // (a server pays more per request when the same load is spread over many connections).
    let (addr, seen) = stalling_server(Duration::from_millis(300)).await;
    let mut a = args(&format!("http://{addr}/"));
    a.rate = Some(1000.0);
    a.connections = Some(64);
    a.duration = Some(Duration::from_secs(2));
    let r = run_one(a).await;
    assert_eq!(r.error_total(), 0, "{:?}", r.errors);
    assert!(r.connections_opened >= 48, "{}", r.connections_opened);
    let seen = seen.lock().expect("lock");
    let (_, first) = seen[0];
    let late: Vec<usize> = seen
        .iter()
        // The first answer comes at the end of the stall (0.3 s): these are the last 0.8 s.
        .filter(|(_, at)| at.duration_since(first) > Duration::from_millis(900))
        .map(|(id, _)| *id)
        .collect();
    assert!(
        late.len() > 500,
        "{} requests in the last 0.8 s",
        late.len()
    );
    let used: HashSet<usize> = late.iter().copied().collect();
    assert!(
        used.len() <= 16,
        "{} connections of {} used for the last {} requests",
        used.len(),
        r.connections_opened,
        late.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_ends_an_open_model_run_at_once_and_still_reports() {
    let b = fast_backend().await;
    let json = std::env::temp_dir().join(format!("levee-ctrl-c-{}.json", std::process::id()));
    let started = std::time::Instant::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["loadtest", &format!("http://{}/", b.addr())])
        .args(["--rate", "300", "-c", "16", "-d", "60s", "-q", "--json"])
        .arg(&json)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = bounded(Duration::from_secs(10), child.wait())
        .await
        .unwrap();
    // Stopped, not run to its 60 s: the idle connections end with the schedule, the busy
    // ones after their request.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Some(0));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    let responses = v["scenarios"][0]["responses"].as_u64().unwrap();
    // About 1.5 s at 300/s were answered before the stop.
    assert!((200..=700).contains(&responses), "{responses} responses");
    // No request failed. A few due just before the stop may have been late and never sent
    // (the machine busy with other tests): those are counted as unsent, and only those.
    let errors = &v["scenarios"][0]["errors"];
    let unsent = errors["unsent"].as_u64().unwrap_or(0);
    assert_eq!(
        v["scenarios"][0]["failures"].as_u64(),
        Some(unsent),
        "{errors:#}"
    );
    assert!(unsent <= 10, "{errors:#}");
}
