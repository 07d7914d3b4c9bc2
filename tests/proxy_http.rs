//! Proxy correctness: streaming, chunked, HEAD, Expect: 100-continue, hop-by-hop headers,
//! X-Forwarded-*, X-Request-Id, keep-alive pooling to servers, the access log.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn raw_exchange(addr: std::net::SocketAddr, req: &[u8], until: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if String::from_utf8_lossy(&out).contains(until) {
                        break;
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_request_id_and_hop_by_hop() {
    bounded(Duration::from_secs(30), async {
        let b = fast_backend().await;
        let l = levee(&config(&[b.addr()], "")).await;
        let req = http::Request::get(format!("http://{}/?echo=1", l.addr))
            .header("host", "shop.example")
            .header("x-forwarded-for", "6.6.6.6")
            .header("connection", "keep-alive, x-secret-hop")
            .header("x-secret-hop", "must not pass")
            .header("keep-alive", "timeout=5")
            .header("x-custom", "passes")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let a = send(&client(), req).await.unwrap();
        assert_eq!(a.status, 200);
        let echo: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        // The untrusted client's forged X-Forwarded-For is replaced by its real address.
        assert_eq!(echo["x-forwarded-for"], "127.0.0.1");
        assert_eq!(echo["x-forwarded-proto"], "http");
        assert_eq!(echo["x-forwarded-host"], "shop.example");
        assert_eq!(echo["host"], "shop.example");
        assert_eq!(echo["x-custom"], "passes");
        assert!(
            echo.get("x-secret-hop").is_none(),
            "headers named in Connection are hop-by-hop: {echo}"
        );
        assert!(echo.get("keep-alive").is_none());
        // A request id is generated, passed to the server and returned to the client.
        let rid = a.header("x-request-id").unwrap().to_string();
        assert_eq!(rid.len(), 32);
        assert_eq!(echo["x-request-id"], rid.as_str());
        // An incoming request id is kept.
        let req = http::Request::get(format!("http://{}/?echo=1", l.addr))
            .header("x-request-id", "abc-123")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let a = send(&client(), req).await.unwrap();
        assert_eq!(a.header("x-request-id"), Some("abc-123"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxy_chain_is_kept() {
    bounded(Duration::from_secs(30), async {
        let b = fast_backend().await;
        let l = levee(
            &config(&[b.addr()], "")
                .replace("[admin]", "trusted_proxies = [\"127.0.0.0/8\"]\n[admin]"),
        )
        .await;
        let req = http::Request::get(format!("http://{}/?echo=1", l.addr))
            .header("x-forwarded-for", "203.0.113.9")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let echo: serde_json::Value =
            serde_json::from_slice(&send(&client(), req).await.unwrap().body).unwrap();
        assert_eq!(echo["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_head_and_expect_continue() {
    bounded(Duration::from_secs(30), async {
        let b = fast_backend().await;
        let l = levee(&config(&[b.addr()], "")).await;
        // Chunked request body passes through whole.
        let r = raw_exchange(l.addr, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "}").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains("\"received_bytes\": 11"), "{r}");
        // HEAD: headers, no body.
        let r = raw_exchange(l.addr, b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", "\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.ends_with("\r\n\r\n"), "HEAD has no body: {r:?}");
        // Expect: 100-continue gets the interim answer before the body is sent.
        let mut s = TcpStream::connect(l.addr).await.unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"), "{:?}", String::from_utf8_lossy(&buf[..n]));
        s.write_all(b"data").await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while !String::from_utf8_lossy(&out).contains('}') {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.contains("200") && out.contains("\"received_bytes\": 4"), "{out}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_servers_are_reused() {
    bounded(Duration::from_secs(30), async {
        let b = fast_backend().await;
        let l = levee(&config(&[b.addr()], "")).await;
        let c = client();
        for _ in 0..50 {
            assert_eq!(
                get(&c, &format!("http://{}/", l.addr))
                    .await
                    .unwrap()
                    .status,
                200
            );
        }
        let st = b.stats();
        assert_eq!(st.served, 50);
        assert!(
            st.connections <= 3,
            "50 sequential requests should reuse pooled connections, opened {}",
            st.connections
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_writes_one_json_line_per_request() {
    bounded(Duration::from_secs(30), async {
        let b = fast_backend().await;
        let dir = std::env::temp_dir().join(format!("levee-al-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let _ = std::fs::remove_file(&path);
        let text = config(&[b.addr()], "max_concurrency = 1\nqueue_size = 0").replace(
            "[access_log]\nenabled = false",
            &format!(
                "[access_log]\nenabled = true\npath = \"{}\"",
                path.display()
            ),
        );
        let l = levee(&text).await;
        let c = client();
        let req = http::Request::get(format!("http://{}/hello?x=1", l.addr))
            .header("x-request-id", "rid-1")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(send(&c, req).await.unwrap().status, 200);
        assert_eq!(
            get(&c, &format!("http://{}/{}", l.addr, "a".repeat(9000)))
                .await
                .unwrap()
                .status,
            414
        );
        wait_until(Duration::from_secs(5), "two log lines", || {
            std::fs::read_to_string(&path)
                .map(|s| s.lines().count() >= 2)
                .unwrap_or(false)
        })
        .await;
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let ok = &lines[0];
        assert_eq!(ok["status"], 200);
        assert_eq!(ok["method"], "GET");
        assert_eq!(ok["path"], "/hello?x=1");
        assert_eq!(ok["client"], "127.0.0.1");
        assert_eq!(ok["pool"], "web");
        assert_eq!(ok["server"], b.addr().to_string());
        assert_eq!(ok["request_id"], "rid-1");
        assert!(ok["bytes"].as_u64().unwrap() > 0);
        assert!(ok["upstream_ms"].as_f64().is_some() && ok["total_ms"].as_f64().is_some());
        assert!(ok["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(lines[1]["status"], 414);
        assert_eq!(lines[1]["reason"], "uri_too_long");
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
