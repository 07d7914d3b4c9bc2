//! levee's HTTP/1.1 client towards the servers, against scripted servers on real sockets:
//! kept connections the server closes, replays that must and must not happen, every way a
//! response body can be delimited, and servers that break the protocol.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a scripted server does with a request.
#[derive(Clone, Copy)]
enum Act {
    /// Write these bytes as the answer and keep the connection.
    Answer(&'static [u8]),
    /// Write these bytes, then close.
    AnswerClose(&'static [u8]),
    /// Read the request and close without answering.
    Close,
}

/// Counts of what a scripted server saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    requests: AtomicUsize,
    /// Requests whose method was POST.
    posts: AtomicUsize,
}

/// The script of a server: `(index of the request on its connection, index among all the
/// server's requests)`, both from 0, to what it does.
type Script = fn(usize, usize) -> Act;

/// A server on a free port that runs its script for every request head it reads.
/// `idle_close` closes a connection that long after each answer.
async fn scripted(script: Script, idle_close: Option<Duration>) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            s2.connections.fetch_add(1, Ordering::SeqCst);
            let seen = s2.clone();
            tokio::spawn(serve_script(sock, script, idle_close, seen));
        }
    });
    (addr, seen)
}

async fn serve_script(
    mut sock: TcpStream,
    script: Script,
    idle_close: Option<Duration>,
    seen: Arc<Seen>,
) {
    let mut buf = Vec::new();
    let mut n = 0;
    loop {
        // Read one request head (and a small Content-Length body).
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let read = match idle_close {
                Some(d) => match tokio::time::timeout(d, sock.read(&mut chunk)).await {
                    Ok(r) => r,
                    Err(_) => return, // idle: close
                },
                None => sock.read(&mut chunk).await,
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let body_len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + body_len {
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        }
        buf.drain(..head_end + body_len);
        let global = seen.requests.fetch_add(1, Ordering::SeqCst);
        if head.starts_with("post ") {
            seen.posts.fetch_add(1, Ordering::SeqCst);
        }
        match script(n, global) {
            Act::Answer(b) => {
                if sock.write_all(b).await.is_err() {
                    return;
                }
            }
            Act::AnswerClose(b) => {
                let _ = sock.write_all(b).await;
                return;
            }
            Act::Close => return,
        }
        n += 1;
    }
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// levee in front of one server, health checks and handler-level retries off (so what is
/// seen is the connection layer alone).
async fn levee_for(server: SocketAddr) -> levee::proxy::Levee {
    levee(&config(
        &[server],
        "[pools.web.health_check]\nenabled = false\n[pools.web.retry]\nattempts = 1\n[pools.web.outlier]\nconsecutive_failures = 1000\n",
    ))
    .await
}

async fn upstream_failures(l: &levee::proxy::Levee) -> f64 {
    let mut n = 0.0;
    for r in [
        "upstream_bad_response",
        "upstream_connect_error",
        "upstream_timeout",
    ] {
        n += metric(l, &format!("levee_rejections_total{{reason=\"{r}\"}}"))
            .await
            .unwrap_or(0.0);
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_connections_the_server_closed_while_idle_are_not_used() {
    bounded(Duration::from_secs(30), async {
        // The server closes every connection 50 ms after its answer.
        let (addr, seen) = scripted(|_, _| Act::Answer(OK), Some(Duration::from_millis(50))).await;
        let l = levee_for(addr).await;
        let c = client();
        let url = format!("http://{}/", l.addr);
        for i in 0..5 {
            let a = get(&c, &url).await.unwrap();
            assert_eq!((a.status, a.text().as_str()), (200, "ok"), "request {i}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(seen.requests.load(Ordering::SeqCst), 5);
        assert_eq!(
            seen.connections.load(Ordering::SeqCst),
            5,
            "a closed connection is never reused"
        );
        assert_eq!(upstream_failures(&l).await, 0.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_the_server_dropped_on_a_kept_connection_is_sent_again_a_post_is_not() {
    bounded(Duration::from_secs(30), async {
        // Every connection answers its first request, then closes on the second without
        // answering (a keep-alive race: the server gave up on the connection).
        let (addr, seen) = scripted(
            |n, _| if n == 0 { Act::Answer(OK) } else { Act::Close },
            None,
        )
        .await;
        let l = levee_for(addr).await;
        let c = client();
        let url = format!("http://{}/", l.addr);
        assert_eq!(get(&c, &url).await.unwrap().status, 200);
        // The GET goes out on the kept connection, which the server drops: levee sends it once
        // more on a new connection, and the client never knows.
        let a = get(&c, &url).await.unwrap();
        assert_eq!((a.status, a.text().as_str()), (200, "ok"));
        assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
        assert_eq!(upstream_failures(&l).await, 0.0);
        // A POST the server may have acted on is never sent twice: 502.
        let req = http::Request::post(&url)
            .body(Full::new(Bytes::from_static(b"pay=1")))
            .unwrap();
        let a = send(&c, req).await.unwrap();
        assert_eq!(a.status, 502);
        assert_eq!(
            seen.posts.load(Ordering::SeqCst),
            1,
            "the POST reached the server once"
        );
        assert_eq!(upstream_failures(&l).await, 1.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_response_body_passes_through_whole() {
    bounded(Duration::from_secs(30), async {
        // Chunked with an extension and a trailer, then a HEAD answer with a length and no
        // body, an interim 100 Continue, and a 204: all on one kept connection.
        let (addr, seen) = scripted(
            |_, n| match n {
                0 => Act::Answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n"),
                1 => Act::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
                2 => Act::Answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone"),
                3 => Act::Answer(b"HTTP/1.1 204 No Content\r\n\r\n"),
                4 => Act::AnswerClose(b"HTTP/1.1 200 OK\r\n\r\nuntil the server closes"),
                _ => Act::Answer(OK),
            },
            None,
        )
        .await;
        let l = levee_for(addr).await;
        let c = client();
        let url = format!("http://{}/", l.addr);
        let a = get(&c, &url).await.unwrap();
        assert_eq!((a.status, a.text().as_str()), (200, "hello, world"));
        let head = http::Request::head(&url).body(Full::new(Bytes::new())).unwrap();
        let a = send(&c, head).await.unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.header("content-length"), Some("1000"));
        assert!(a.body.is_empty());
        let a = get(&c, &url).await.unwrap();
        assert_eq!((a.status, a.text().as_str()), (201, "done"));
        let a = get(&c, &url).await.unwrap();
        assert_eq!(a.status, 204);
        assert_eq!(seen.connections.load(Ordering::SeqCst), 1, "one connection carried all four");
        let a = get(&c, &url).await.unwrap();
        assert_eq!((a.status, a.text().as_str()), (200, "until the server closes"));
        assert_eq!(upstream_failures(&l).await, 0.0);
        // The connection closed by the server is not reused: the next request opens another.
        assert_eq!(get(&c, &url).await.unwrap().status, 200);
        assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_is_never_passed_off_as_complete() {
    bounded(Duration::from_secs(30), async {
        let (addr, _) = scripted(
            |_, n| match n {
                0 => Act::AnswerClose(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part of it",
                ),
                _ => Act::Answer(OK),
            },
            None,
        )
        .await;
        let l = levee_for(addr).await;
        let c = client();
        let url = format!("http://{}/", l.addr);
        let r = get(&c, &url).await;
        assert!(
            r.is_err(),
            "a truncated body must fail at the client, got {r:?}"
        );
        // levee carries on with a new connection.
        let a = get(&c, &url).await.unwrap();
        assert_eq!((a.status, a.text().as_str()), (200, "ok"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_breaking_the_protocol_get_502_for_that_request_only() {
    bounded(Duration::from_secs(30), async {
        let (addr, _) = scripted(
            |_, n| match n {
                0 => Act::AnswerClose(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
                ),
                1 => {
                    Act::AnswerClose(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
                }
                _ => Act::Answer(OK),
            },
            None,
        )
        .await;
        let l = levee_for(addr).await;
        let c = client();
        let url = format!("http://{}/", l.addr);
        // Conflicting lengths: refused before any byte reaches the client.
        assert_eq!(get(&c, &url).await.unwrap().status, 502);
        // A head larger than levee accepts (64 KiB): 502, the server's bytes never relayed.
        let big = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let big_addr = big.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = big.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 4096];
                    let _ = s.read(&mut b).await;
                    let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
                    for i in 0..2000 {
                        head.extend_from_slice(
                            format!("x-h{i}: {}\r\n", "v".repeat(40)).as_bytes(),
                        );
                    }
                    let _ = s.write_all(&head).await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                });
            }
        });
        let lb = levee_for(big_addr).await;
        let a = get(&c, &format!("http://{}/", lb.addr)).await.unwrap();
        assert_eq!(a.status, 502);
        assert_eq!(
            metric(
                &lb,
                "levee_rejections_total{reason=\"upstream_bad_response\"}"
            )
            .await,
            Some(1.0)
        );
        // Bad chunked framing after a good head: the client's body fails, it is not a 200 with
        // a body that ends early and looks whole.
        let r = get(&c, &url).await;
        assert!(
            r.is_err(),
            "a broken chunked body must fail at the client, got {r:?}"
        );
        assert_eq!(get(&c, &url).await.unwrap().status, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_stop_at_levee() {
    bounded(Duration::from_secs(30), async {
        let (addr, _) = scripted(
            |_, _| {
                Act::Answer(
                    b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n\
                      X-Hop: internal\r\nUpgrade: h2c\r\nProxy-Connection: keep-alive\r\n\
                      X-Kept: yes\r\nContent-Length: 2\r\n\r\nok",
                )
            },
            None,
        )
        .await;
        let l = levee_for(addr).await;
        // A raw client, so that nothing between levee and the assertion drops headers.
        let mut s = TcpStream::connect(l.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200"), "{text}");
        assert!(text.contains("\r\nx-kept: yes\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nok"), "{text}");
        for hop in ["keep-alive:", "x-hop:", "upgrade:", "proxy-connection:"] {
            assert!(!text.contains(hop), "{hop} passed: {text}");
        }
        // levee's own Connection header to this client, not the server's.
        assert!(!text.contains("x-hop"), "{text}");
    })
    .await;
}

/// Reads into `buf` until it holds a whole request head; the head's length, or `None` if the
/// connection ended first.
async fn read_head(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        let mut chunk = [0u8; 4096];
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

/// A server that answers `413` as soon as it has a request head, without reading the body,
/// then closes (`close`) or holds the connection open without reading anything more.
async fn refusing_server(close: bool) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            s2.connections.fetch_add(1, Ordering::SeqCst);
            let seen = s2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if read_head(&mut sock, &mut buf).await.is_none() {
                    return;
                }
                seen.requests.fetch_add(1, Ordering::SeqCst);
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n\r\ntoo big\n",
                    )
                    .await;
                if !close {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
        }
    });
    (addr, seen)
}

/// Sends a 32 MiB upload (far more than the sockets buffer) to levee and returns the response
/// text, read while the body is still being written.
async fn upload_32mib(levee: SocketAddr) -> String {
    const LEN: usize = 32 << 20;
    let s = TcpStream::connect(levee).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {LEN}\r\n\r\n");
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b'u'; 64 * 1024];
        for _ in 0..LEN / chunk.len() {
            wr.write_all(&chunk).await?;
        }
        Ok::<_, std::io::Error>(wr)
    });
    // Read until the end of the 413's body, the end of the stream, or 10 s without a byte.
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    while !raw.ends_with(b"too big\n") {
        match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(k)) => raw.extend_from_slice(&chunk[..k]),
        }
    }
    writer.abort();
    String::from_utf8_lossy(&raw).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_an_upload_early_has_its_answer_passed_on() {
    bounded(Duration::from_secs(30), async {
        for close in [true, false] {
            let (addr, seen) = refusing_server(close).await;
            let l = levee_for(addr).await;
            let started = std::time::Instant::now();
            let text = upload_32mib(l.addr).await;
            // The server's own answer, not a 502 (the write failing once the server closed)
            // nor a 504 (waiting for a server that no longer reads).
            assert!(
                text.starts_with("HTTP/1.1 413"),
                "close={close}: {text:?} after {:?}",
                started.elapsed()
            );
            assert!(text.ends_with("too big\n"), "close={close}: {text:?}");
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "close={close}: took {:?}",
                started.elapsed()
            );
            // The connection, in the middle of a body, is not used again.
            let r = get(&client(), &format!("http://{}/next", l.addr))
                .await
                .unwrap();
            assert_eq!(r.status, 413, "close={close}");
            assert_eq!(seen.connections.load(Ordering::SeqCst), 2, "close={close}");
            assert_eq!(upstream_failures(&l).await, 0.0, "close={close}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_success_answer_still_gets_the_whole_body() {
    bounded(Duration::from_secs(30), async {
        // A server that answers 200 at once, then reads the body to its end.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (got_tx, got_rx) = tokio::sync::oneshot::channel::<usize>();
        tokio::spawn(async move {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let Some(head_end) = read_head(&mut sock, &mut buf).await else {
                return;
            };
            let _ = sock
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
            let mut got = buf.len() - head_end;
            let mut chunk = vec![0u8; 64 * 1024];
            while got < 32 << 20 {
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => got += k,
                }
            }
            let _ = got_tx.send(got);
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let l = levee_for(addr).await;
        let c = client();
        let body = Bytes::from(vec![b'u'; 32 << 20]);
        let req = http::Request::post(format!("http://{}/upload", l.addr))
            .body(Full::new(body))
            .unwrap();
        let a = send(&c, req).await.unwrap();
        assert_eq!((a.status, a.text().as_str()), (200, "ok"));
        // Not an answer that refuses the body: all of it went through.
        assert_eq!(got_rx.await.unwrap(), 32 << 20);
    })
    .await;
}
