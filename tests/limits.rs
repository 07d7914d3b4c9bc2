//! Timeouts and limits, each with its status and its counter; bad client input and bad
//! server answers get a clear status and affect nothing else.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use levee::backend::BackendOptions;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Sends raw bytes and reads until the server closes or `wait` passes.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_get_431_414_413() {
    bounded(Duration::from_secs(30), async {
        let b = fast_backend().await;
        let l = levee(&config_full(&[b.addr()], "", "")
            .replace("[admin]", "max_header_size = \"4KiB\"\nmax_uri_length = 1024\nmax_body_size = \"1KiB\"\n[admin]"))
        .await;
        let c = client();
        let url = format!("http://{}/", l.addr);
        // Header too large: 431 from the header parser. hyper's smallest read buffer is 8 KiB.
        let big = "x".repeat(20_000);
        let r = raw(l.addr, format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n").as_bytes(), Duration::from_secs(2)).await;
        assert!(r.starts_with("HTTP/1.1 431"), "{r}");
        // URI too long: 414.
        let a = get(&c, &format!("{url}{}", "a".repeat(2000))).await.unwrap();
        assert_eq!(a.status, 414);
        // Body too large by Content-Length: 413 before reaching the server.
        let req = http::Request::post(&url).body(Full::new(Bytes::from(vec![b'x'; 4096]))).unwrap();
        assert_eq!(send(&c, req).await.unwrap().status, 413);
        // Body too large, chunked (no Content-Length): 413 once the limit is crossed.
        let chunked = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n{}\r\n0\r\n\r\n", "y".repeat(4096));
        let r = raw(l.addr, chunked.as_bytes(), Duration::from_secs(3)).await;
        assert!(r.starts_with("HTTP/1.1 413"), "{r}");
        assert_eq!(b.stats().served, 0, "none of these reached the server");
        for (reason, min) in [("header_too_large", 1.0), ("uri_too_long", 1.0), ("body_too_large", 2.0)] {
            let v = metric(&l, &format!("levee_rejections_total{{reason=\"{reason}\"}}")).await.unwrap();
            assert!(v >= min, "{reason} counted {v}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_client_is_cut_off_after_the_header_timeout() {
    bounded(Duration::from_secs(30), async {
        let b = fast_backend().await;
        let l = levee(
            &config(&[b.addr()], "")
                .replace("[admin]", "client_header_timeout = \"500ms\"\n[admin]"),
        )
        .await;
        let mut s = TcpStream::connect(l.addr).await.unwrap();
        let t = Instant::now();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
        // Trickle one header byte at a time, never finishing the head.
        let mut closed = false;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(b"X").await.is_err() {
                closed = true;
                break;
            }
            let mut buf = [0u8; 256];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await
                && (n == 0 || String::from_utf8_lossy(&buf[..n]).contains("408"))
            {
                closed = true;
                break;
            }
        }
        assert!(
            closed,
            "slowloris connection still open after {:?}",
            t.elapsed()
        );
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "closed after {:?}",
            t.elapsed()
        );
        wait_for(Duration::from_secs(3), "header timeout counted", || async {
            metric(&l, "levee_rejections_total{reason=\"header_timeout\"}")
                .await
                .unwrap_or(0.0)
                >= 1.0
        })
        .await;
        // A client that connects and sends nothing is cut off too.
        let mut silent = TcpStream::connect(l.addr).await.unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
            .await
            .expect("silent connection closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert!(
            t.elapsed() >= Duration::from_millis(400) && t.elapsed() < Duration::from_secs(3),
            "{:?}",
            t.elapsed()
        );
        // Normal clients are unaffected.
        assert_eq!(
            get(&client(), &format!("http://{}/", l.addr))
                .await
                .unwrap()
                .status,
            200
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed() {
    bounded(Duration::from_secs(30), async {
        let b = fast_backend().await;
        let l =
            levee(&config(&[b.addr()], "").replace("[admin]", "idle_timeout = \"800ms\"\nclient_header_timeout = \"200ms\"\n[admin]"))
                .await;
        let mut s = TcpStream::connect(l.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        let t = Instant::now();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed by levee")
            .unwrap_or(0);
        assert_eq!(n, 0, "levee closes the idle connection");
        assert!(
            t.elapsed() >= Duration::from_millis(700),
            "not before the idle timeout (the shorter header timeout does not cut idle connections): {:?}",
            t.elapsed()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_server_gets_504_and_dead_server_502() {
    bounded(Duration::from_secs(30), async {
        let slow = backend(BackendOptions {
            capacity: 100,
            latency: Duration::from_secs(3),
            ..Default::default()
        })
        .await;
        let l = levee(&config(
            &[slow.addr()],
            "response_header_timeout = \"300ms\"\n[pools.web.retry]\nattempts = 1",
        ))
        .await;
        let t = Instant::now();
        let a = get(&client(), &format!("http://{}/", l.addr))
            .await
            .unwrap();
        assert_eq!(a.status, 504);
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_eq!(
            metric(&l, "levee_rejections_total{reason=\"upstream_timeout\"}").await,
            Some(1.0)
        );

        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let l2 = levee(&config(
            &[dead],
            "[pools.web.retry]\nattempts = 1\n[pools.web.health_check]\nenabled = false",
        ))
        .await;
        let a = get(&client(), &format!("http://{}/", l2.addr))
            .await
            .unwrap();
        assert_eq!(a.status, 502);
        assert_eq!(
            metric(
                &l2,
                "levee_rejections_total{reason=\"upstream_connect_error\"}"
            )
            .await,
            Some(1.0)
        );

        // Whole-request timeout.
        let l3 = levee(&config(
            &[slow.addr()],
            "request_timeout = \"400ms\"\n[pools.web.retry]\nattempts = 1",
        ))
        .await;
        let a = get(&client(), &format!("http://{}/", l3.addr))
            .await
            .unwrap();
        assert_eq!(a.status, 504);
        assert_eq!(
            metric(&l3, "levee_rejections_total{reason=\"request_timeout\"}").await,
            Some(1.0)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_server_is_a_502_for_that_request_only() {
    bounded(Duration::from_secs(30), async {
        let garbage = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gaddr = garbage.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = garbage.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(b"this is not HTTP at all\r\n\r\n").await;
                });
            }
        });
        let good = fast_backend().await;
        let text = format!(
            "[listener]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n\
             [pools.bad]\nservers = [\"{gaddr}\"]\n[pools.bad.health_check]\nenabled = false\n[pools.bad.retry]\nattempts = 1\n\
             [pools.good]\nservers = [\"{}\"]\n\
             [[routes]]\npath_prefix = \"/bad\"\npool = \"bad\"\n[[routes]]\npath_prefix = \"/\"\npool = \"good\"\n",
            good.addr()
        );
        let l = levee(&text).await;
        let c = client();
        assert_eq!(get(&c, &format!("http://{}/bad", l.addr)).await.unwrap().status, 502);
        assert_eq!(get(&c, &format!("http://{}/fine", l.addr)).await.unwrap().status, 200);
        assert_eq!(metric(&l, "levee_rejections_total{reason=\"upstream_bad_response\"}").await, Some(1.0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_client_request_gets_400_and_levee_carries_on() {
    bounded(Duration::from_secs(30), async {
        let b = fast_backend().await;
        let l = levee(&config(&[b.addr()], "")).await;
        let r = raw(
            l.addr,
            b"GARBAGE\x01\x02 nonsense\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r:?}");
        let r = raw(
            l.addr,
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r:?}");
        assert_eq!(b.stats().served, 0);
        assert_eq!(
            get(&client(), &format!("http://{}/", l.addr))
                .await
                .unwrap()
                .status,
            200
        );
        assert!(
            metric(&l, "levee_rejections_total{reason=\"bad_request\"}")
                .await
                .unwrap()
                >= 2.0
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_small_upload_never_holds_a_server_slot() {
    bounded(Duration::from_secs(30), async {
        let b = fast_backend().await;
        let l = levee(&config(&[b.addr()], "max_concurrency = 1\nqueue_size = 0")).await;
        // A client announces 100 bytes, sends 10, then dawdles.
        let mut slow = TcpStream::connect(l.addr).await.unwrap();
        slow.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The only slot of the only server is free for everybody else meanwhile (with
        // buffer_request_body = 0 these get 503: the upload holds the slot).
        for _ in 0..5 {
            assert_eq!(
                get(&client(), &format!("http://{}/", l.addr))
                    .await
                    .unwrap()
                    .status,
                200
            );
        }
        assert_eq!(b.stats().max_in_flight, 1);
        // The slow client finishes; its request is forwarded whole.
        slow.write_all(&[b'x'; 90]).await.unwrap();
        let mut buf = vec![0u8; 2048];
        let n = tokio::time::timeout(Duration::from_secs(3), slow.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let r = String::from_utf8_lossy(&buf[..n]);
        assert!(
            r.starts_with("HTTP/1.1 200") && r.contains("\"received_bytes\": 100"),
            "{r}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_post_is_retried_on_another_server_when_a_connection_fails() {
    bounded(Duration::from_secs(30), async {
        let good = fast_backend().await;
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let l = levee(&config(
            &[dead, good.addr()],
            "algorithm = \"round_robin\"\n[pools.web.health_check]\nenabled = false\n[pools.web.outlier]\nconsecutive_failures = 0\n[pools.web.retry]\nattempts = 2\nbudget_min_per_second = 100",
        ))
        .await;
        for _ in 0..6 {
            let req = http::Request::post(format!("http://{}/", l.addr)).body(Full::new(Bytes::from_static(b"hello"))).unwrap();
            let a = send(&client(), req).await.unwrap();
            assert_eq!(a.status, 200);
            assert!(a.text().contains("\"received_bytes\": 5"), "{}", a.text());
        }
    })
    .await;
}
