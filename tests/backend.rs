//! Integration tests of `levee backend`, the simulated web server: real loopback sockets, port 0.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use levee::backend::{BackendArgs, BackendOptions, Stats, parse_duration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

#[path = "common/backend_util.rs"]
mod backend_util;

use backend_util::{
    HttpClient, TEST_TIMEOUT, client, client_without_pool, get, read_some, send, start, wait_for,
};

/// Run `n` identical GETs at once; the time each took, in seconds.
async fn concurrent_latencies(client: &HttpClient, addr: SocketAddr, n: usize) -> Vec<f64> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let reply = get(&client, addr, "/").await.expect("request");
                assert_eq!(reply.status, StatusCode::OK);
                start.elapsed().as_secs_f64()
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(n);
    for task in tasks {
        latencies.push(task.await.expect("request task"));
    }
    latencies
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_stats_and_counting() {
    timeout(TEST_TIMEOUT, async {
        let server = start(BackendOptions::default()).await;
        let addr = server.addr();
        assert_ne!(addr.port(), 0);
        let client = client();

        let reply = get(&client, addr, "/").await.expect("GET /");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), format!("ok from {addr}\n"));
        assert_eq!(reply.headers["x-backend"], addr.to_string().as_str());

        let reply = get(&client, addr, "/health").await.expect("GET /health");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "ok");
        assert_eq!(reply.headers["x-backend"], addr.to_string().as_str());

        for _ in 0..3 {
            get(&client, addr, "/some/path?x=1").await.expect("GET");
        }
        let reply = get(&client, addr, "/stats").await.expect("GET /stats");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.headers["content-type"], "application/json");
        assert_eq!(reply.headers["x-backend"], addr.to_string().as_str());
        let stats = reply.json();
        assert_eq!(stats["served"], 4, "{stats}");
        assert_eq!(stats["in_flight"], 0, "{stats}");
        assert_eq!(stats["crashes"], 0, "{stats}");
        assert_eq!(stats["down"], false, "{stats}");
        assert!(stats["max_in_flight"].as_u64() >= Some(1), "{stats}");
        // /health and /stats are not counted.
        assert_eq!(server.stats().served, 4);

        // Unhealthy: /health fails, the server keeps serving.
        server.set_healthy(false);
        let reply = get(&client, addr, "/health").await.expect("GET /health");
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        let reply = get(&client, addr, "/").await.expect("GET /");
        assert_eq!(reply.status, StatusCode::OK);
        server.set_healthy(true);
        let reply = get(&client, addr, "/health").await.expect("GET /health");
        assert_eq!(reply.status, StatusCode::OK);

        // Bad query values are refused and not counted.
        let served = server.stats().served;
        for query in ["sleep=soon", "status=abc", "size=-3", "echo=maybe"] {
            let reply = get(&client, addr, &format!("/?{query}"))
                .await
                .expect("GET");
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}");
            assert_eq!(reply.headers["x-backend"], addr.to_string().as_str());
        }
        assert_eq!(server.stats().served, served);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_capacity_every_request_slows_down() {
    timeout(TEST_TIMEOUT, async {
        let server = start(BackendOptions {
            capacity: 2,
            latency: Duration::from_millis(50),
            ..BackendOptions::default()
        })
        .await;
        let client = client();

        let within = concurrent_latencies(&client, server.addr(), 2).await;
        let beyond = concurrent_latencies(&client, server.addr(), 8).await;
        let (within, beyond) = (mean(&within), mean(&beyond));
        // 2 on a capacity of 2 take ~50ms; 8 share it and take ~200ms.
        assert!(within >= 0.035, "2-way mean {within:.3}s");
        assert!(
            beyond >= 2.0 * within,
            "8-way mean {beyond:.3}s vs 2-way mean {within:.3}s"
        );
        let stats = server.stats();
        assert_eq!(stats.max_in_flight, 8, "{stats:?}");
        assert_eq!(stats.served, 10, "{stats:?}");
        assert_eq!(stats.in_flight, 0, "{stats:?}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_latency_and_capacity_apply_to_new_requests() {
    timeout(TEST_TIMEOUT, async {
        let server = start(BackendOptions {
            capacity: 1,
            latency: Duration::from_millis(1),
            ..BackendOptions::default()
        })
        .await;
        let client = client();
        server.set_latency(Duration::from_millis(200));
        server.set_capacity(4);
        let latencies = concurrent_latencies(&client, server.addr(), 4).await;
        // 4 within a capacity of 4: each about 200ms ±20%, not 4 times more.
        for latency in latencies {
            assert!((0.15..0.6).contains(&latency), "{latency:.3}s");
        }
        // sleep= sets the exact service time.
        let start = Instant::now();
        get(&client, server.addr(), "/?sleep=300ms")
            .await
            .expect("GET");
        assert!(start.elapsed() >= Duration::from_millis(300));
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_above_resets_connections_and_recovers() {
    timeout(TEST_TIMEOUT, async {
        let server = start(BackendOptions {
            capacity: 4,
            latency: Duration::from_millis(20),
            crash_above: Some(6),
            down_for: Duration::from_millis(500),
        })
        .await;
        let addr = server.addr();
        let client = client();

        let requests: Vec<_> = (0..10)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { get(&client, addr, "/?sleep=2s").await })
            })
            .collect();
        let mut failures = 0;
        for request in requests {
            match request.await.expect("request task") {
                Ok(reply) => panic!("a request was answered by a crashed server: {reply:?}"),
                Err(_) => failures += 1,
            }
        }
        assert_eq!(failures, 10);

        let stats = server.stats();
        assert_eq!(stats.crashes, 1, "{stats:?}");
        assert!(stats.down, "{stats:?}");
        assert!(stats.max_in_flight >= 7, "{stats:?}");
        assert_eq!(stats.served, 0, "{stats:?}");

        // While down: /health fails, /stats answers, anything else is reset.
        let fresh = client_without_pool();
        let reply = get(&fresh, addr, "/health").await.expect("GET /health");
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        let reply = get(&fresh, addr, "/stats").await.expect("GET /stats");
        assert_eq!(reply.json()["down"], true);
        assert_eq!(reply.json()["crashes"], 1);
        let mut raw = TcpStream::connect(addr).await.expect("connect");
        raw.write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 64];
        let read = raw.read(&mut buf).await;
        assert!(
            matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "expected a TCP reset, got {read:?}"
        );

        // The aborted handlers left the count.
        wait_for("in_flight back to 0", Duration::from_secs(5), || async {
            server.stats().in_flight == 0
        })
        .await;

        // Back up after down_for.
        wait_for("/health to answer 200", Duration::from_secs(5), || async {
            get(&fresh, addr, "/health")
                .await
                .is_ok_and(|reply| reply.status == StatusCode::OK)
        })
        .await;
        let stats = server.stats();
        assert!(!stats.down, "{stats:?}");
        let reply = get(&fresh, addr, "/").await.expect("GET / after recovery");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(server.stats().crashes, 1);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_large_bodies_both_ways() {
    timeout(TEST_TIMEOUT, async {
        let server = start(BackendOptions::default()).await;
        let addr = server.addr();
        let client = client();

        let size: u64 = 64 * 1024 * 1024;
        let req = Request::get(format!("http://{addr}/download?size={size}"))
            .body(Full::default())
            .expect("request");
        let response = client.request(req).await.expect("GET size");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-length"],
            size.to_string().as_str()
        );
        let mut body = response.into_body();
        let mut received = 0u64;
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame.expect("body frame").data_ref() {
                received += data.len() as u64;
            }
        }
        assert_eq!(received, size);

        let upload = Bytes::from(vec![b'u'; 16 * 1024 * 1024]);
        let req = Request::post(format!("http://{addr}/upload"))
            .body(Full::new(upload))
            .expect("request");
        let reply = send(&client, req).await.expect("POST");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.json(),
            serde_json::json!({"received_bytes": 16777216})
        );

        let stats = server.stats();
        assert_eq!(stats.served, 2, "{stats:?}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_honoured() {
    timeout(TEST_TIMEOUT, async {
        let server = start(BackendOptions::default()).await;
        let mut raw = TcpStream::connect(server.addr()).await.expect("connect");
        raw.write_all(
            b"POST /up HTTP/1.1\r\nhost: test\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
        )
        .await
        .expect("write head");
        let head = read_some(&mut raw).await;
        assert!(head.starts_with("HTTP/1.1 100 Continue"), "{head}");
        raw.write_all(b"hello").await.expect("write body");
        let mut response = String::new();
        while !response.contains("received_bytes") {
            response.push_str(&read_some(&mut raw).await);
        }
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(response.contains("{\"received_bytes\": 5}"), "{response}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_override_and_echo() {
    timeout(TEST_TIMEOUT, async {
        let server = start(BackendOptions::default()).await;
        let addr = server.addr();
        let client = client();

        server.set_status(503);
        let reply = get(&client, addr, "/").await.expect("GET");
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.headers["x-backend"], addr.to_string().as_str());
        let reply = get(&client, addr, "/health").await.expect("GET /health");
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "set_status leaves /health alone"
        );
        let reply = get(&client, addr, "/?status=201").await.expect("GET");
        assert_eq!(reply.status, StatusCode::CREATED, "the query wins");
        server.set_status(100);
        let reply = get(&client, addr, "/").await.expect("GET");
        assert_eq!(
            reply.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "1xx is no answer"
        );
        server.set_status(200);
        let reply = get(&client, addr, "/").await.expect("GET");
        assert_eq!(reply.status, StatusCode::OK);

        let req = Request::builder()
            .method(Method::PUT)
            .uri(format!("http://{addr}/echo/me?echo=1&status=202"))
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-dup", "a")
            .header("x-dup", "b")
            .body(Full::new(Bytes::from_static(b"body")))
            .expect("request");
        let reply = send(&client, req).await.expect("PUT echo");
        assert_eq!(reply.status, StatusCode::ACCEPTED);
        let echo = reply.json();
        assert_eq!(echo["x-forwarded-for"], "203.0.113.7", "{echo}");
        assert_eq!(echo["x-dup"], "a, b", "{echo}");
        assert_eq!(echo["host"], addr.to_string().as_str(), "{echo}");
        assert_eq!(echo["method"], "PUT", "{echo}");
        assert_eq!(echo["path"], "/echo/me", "{echo}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_requests_leave_the_count() {
    timeout(TEST_TIMEOUT, async {
        let server = start(BackendOptions::default()).await;
        let mut raw = TcpStream::connect(server.addr()).await.expect("connect");
        raw.write_all(b"GET /?sleep=10s HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .expect("write");
        wait_for("the request in flight", Duration::from_secs(5), || async {
            server.stats().in_flight == 1
        })
        .await;
        drop(raw);
        wait_for("in_flight back to 0", Duration::from_secs(5), || async {
            server.stats().in_flight == 0
        })
        .await;
        assert_eq!(server.stats().served, 0);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_listening_and_closes_connections() {
    timeout(TEST_TIMEOUT, async {
        let server = start(BackendOptions::default()).await;
        let addr = server.addr();
        let client = client();
        get(&client, addr, "/").await.expect("GET");
        // A kept-alive connection, idle after one answered request.
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        idle.write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .expect("write");
        let mut response = String::new();
        while !response.contains("ok from") {
            response.push_str(&read_some(&mut idle).await);
        }
        server.shutdown();
        server.shutdown(); // idempotent
        let mut buf = [0u8; 16];
        let read = timeout(Duration::from_secs(5), idle.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "idle connection still open: {read:?}"
        );
        wait_for(
            "the port to refuse connections",
            Duration::from_secs(5),
            || async { TcpStream::connect(addr).await.is_err() },
        )
        .await;
        assert_eq!(
            server.stats(),
            Stats {
                in_flight: 0,
                max_in_flight: 1,
                served: 2,
                crashes: 0,
                down: false,
                connections: server.stats().connections,
            }
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_servers_answer_with_their_own_address() {
    timeout(TEST_TIMEOUT, async {
        let a = start(BackendOptions::default()).await;
        let b = start(BackendOptions::default()).await;
        let client = client();
        for server in [&a, &b] {
            let reply = get(&client, server.addr(), "/").await.expect("GET");
            assert_eq!(
                reply.headers["x-backend"],
                server.addr().to_string().as_str()
            );
        }
    })
    .await
    .expect("test timed out");
}

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    backend: BackendArgs,
}

#[test]
fn cli_arguments() {
    let cli = Cli::try_parse_from(["levee"]).expect("defaults");
    let args = cli.backend;
    assert_eq!(args.listen, vec![SocketAddr::from(([127, 0, 0, 1], 9001))]);
    assert_eq!(args.capacity, 32);
    assert_eq!(args.latency, Duration::from_millis(20));
    assert_eq!(args.crash_above, None);
    assert_eq!(args.down_for, Duration::from_secs(10));

    let cli = Cli::try_parse_from([
        "levee",
        "--listen",
        "127.0.0.1:9101",
        "--listen",
        "127.0.0.1:9102",
        "--capacity",
        "8",
        "--latency",
        "250ms",
        "--crash-above",
        "16",
        "--down-for",
        "1m",
    ])
    .expect("all options");
    let args = cli.backend;
    assert_eq!(args.listen.len(), 2);
    assert_eq!(args.capacity, 8);
    assert_eq!(args.latency, Duration::from_millis(250));
    assert_eq!(args.crash_above, Some(16));
    assert_eq!(args.down_for, Duration::from_secs(60));

    for bad in [
        &["levee", "--latency", "soon"][..],
        &["levee", "--capacity", "0"],
        &["levee", "--listen", "nowhere"],
        &["levee", "--crash-above", "-1"],
    ] {
        assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
    }
    assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
}
