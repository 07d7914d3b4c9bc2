//! The HTTP/1.1 client side against scripted servers on real loopback sockets: body framings,
//! responses without a body, interim responses, keep-alive decisions, responses split at every
//! offset, garbage and oversized heads. Every test is bounded in time.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::*;

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("test took longer than 10s")
}

/// Reads one request head (up to its blank line) from `stream`; false on EOF.
async fn read_request(stream: &mut TcpStream) -> bool {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => got.push(byte[0]),
            _ => return false,
        }
    }
    true
}

/// A server for one connection: for each request it reads, it writes the next of `answers`
/// (one byte per write when `trickle`), then closes after the last one.
async fn scripted(answers: Vec<Vec<u8>>, trickle: bool) -> TcpStream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        for answer in answers {
            if !read_request(&mut stream).await {
                return;
            }
            if trickle {
                for b in answer {
                    if stream.write_all(&[b]).await.is_err() {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
            } else if stream.write_all(&answer).await.is_err() {
                return;
            }
        }
        let _ = stream.shutdown().await;
    });
    TcpStream::connect(addr).await.expect("connect")
}

/// Sends `GET` and reads the response on `stream` with a fresh buffer.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut ReadBuffer,
    head: bool,
) -> Result<Response, Failure> {
    bounded(round_trip(stream, buf, GET, head)).await
}

fn ok(status: u16, body_bytes: u64, reusable: bool) -> Result<Response, Failure> {
    Ok(Response {
        status,
        body_bytes,
        reusable,
    })
}

const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
    5\r\nhello\r\n1a;name=value;other\r\nabcdefghijklmnopqrstuvwxyz\r\n\
    A \r\n0123456789\r\n0\r\nx-checksum: abc\r\nx-other: 1\r\n\r\n";

#[tokio::test]
async fn chunked_bodies_with_extensions_and_trailers_are_decoded_to_their_end() {
    let upper = b"HTTP/1.1 200 OK\r\nTRANSFER-ENCODING: gzip, CHUNKED\r\n\r\n2\r\nab\r\n0\r\n\r\n";
    let answers = vec![CHUNKED.to_vec(), CHUNKED.to_vec(), upper.to_vec()];
    let mut s = scripted(answers, false).await;
    let mut buf = ReadBuffer::new();
    // 5 + 26 + 10 data bytes; the second exchange on the same connection proves the decoder
    // stopped exactly at the end of the trailers.
    assert_eq!(exchange(&mut s, &mut buf, false).await, ok(200, 41, true));
    assert_eq!(exchange(&mut s, &mut buf, false).await, ok(200, 41, true));
    // Header names and codings in any case.
    assert_eq!(exchange(&mut s, &mut buf, false).await, ok(200, 2, true));
}

#[tokio::test]
async fn content_length_bodies_are_counted_and_the_connection_kept() {
    let mut big = b"HTTP/1.1 201 Created\r\nContent-Length: 100000\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'x', 100_000));
    let small = b"HTTP/1.1 200 OK\r\nCONTENT-LENGTH: 3\r\n\r\nabc".to_vec();
    let empty = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec();
    let mut s = scripted(vec![big, small, empty], false).await;
    let mut buf = ReadBuffer::new();
    assert_eq!(
        exchange(&mut s, &mut buf, false).await,
        ok(201, 100_000, true)
    );
    assert_eq!(exchange(&mut s, &mut buf, false).await, ok(200, 3, true));
    assert_eq!(exchange(&mut s, &mut buf, false).await, ok(200, 0, true));
}

#[tokio::test]
async fn a_body_without_length_lasts_until_the_server_closes() {
    let mut answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n".to_vec();
    answer.extend(std::iter::repeat_n(b'y', 50_000));
    let mut s = scripted(vec![answer], false).await;
    let mut buf = ReadBuffer::new();
    assert_eq!(
        exchange(&mut s, &mut buf, false).await,
        ok(200, 50_000, false)
    );
}

#[tokio::test]
async fn head_204_and_304_responses_have_no_body_whatever_their_headers_say() {
    let head = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n".to_vec();
    let no_content = b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n".to_vec();
    let not_modified = b"HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    let after = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec();
    let mut s = scripted(vec![head, no_content, not_modified, after], false).await;
    let mut buf = ReadBuffer::new();
    assert_eq!(exchange(&mut s, &mut buf, true).await, ok(200, 0, true));
    assert_eq!(exchange(&mut s, &mut buf, false).await, ok(204, 0, true));
    assert_eq!(exchange(&mut s, &mut buf, false).await, ok(304, 0, true));
    // Had a body been awaited above, this response would have been eaten as one.
    assert_eq!(exchange(&mut s, &mut buf, false).await, ok(200, 2, true));
}

#[tokio::test]
async fn interim_responses_are_skipped_for_the_final_one() {
    let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
        HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone"
        .to_vec();
    let mut s = scripted(vec![answer.clone(), answer], false).await;
    let mut buf = ReadBuffer::new();
    assert_eq!(exchange(&mut s, &mut buf, false).await, ok(200, 4, true));
    // The same, one byte per write.
    let mut s = scripted(
        vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nz".to_vec(),
        ],
        true,
    )
    .await;
    assert_eq!(exchange(&mut s, &mut buf, false).await, ok(200, 1, true));
}

#[tokio::test]
async fn bytes_beyond_the_response_make_the_connection_unfit_for_reuse() {
    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n".to_vec();
    let mut s = scripted(vec![answer], false).await;
    let mut buf = ReadBuffer::new();
    // One write by the server: the extra bytes arrive with the response.
    assert_eq!(exchange(&mut s, &mut buf, false).await, ok(200, 2, false));
}

#[tokio::test]
async fn connection_close_and_http10_without_keep_alive_end_the_connection() {
    let cases: [(&[u8], bool); 5] = [
        (
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nConnection: Upgrade, Close\r\ncontent-length: 0\r\n\r\n",
            false,
        ),
        (b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", false),
        (
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n",
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n",
            true,
        ),
    ];
    for (answer, reusable) in cases {
        let mut s = scripted(vec![answer.to_vec()], false).await;
        let mut buf = ReadBuffer::new();
        let got = exchange(&mut s, &mut buf, false).await;
        assert_eq!(
            got,
            ok(200, 0, reusable),
            "{}",
            String::from_utf8_lossy(answer)
        );
    }
}

/// Delivers at most `first` bytes on the first read, then at most `rest` per read: a response
/// split wherever the test wants, over a real socket.
struct Split {
    inner: TcpStream,
    first: usize,
    rest: usize,
    reads: usize,
}

impl AsyncRead for Split {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let cap = if self.reads == 0 {
            self.first
        } else {
            self.rest
        };
        let mut small = vec![0u8; cap.min(buf.remaining())];
        let mut part = ReadBuf::new(&mut small);
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, &mut part) {
            Poll::Ready(Ok(())) => {
                this.reads += 1;
                buf.put_slice(part.filled());
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Split {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn responses_split_at_every_offset_or_one_byte_per_write_parse_alike() {
    let length = b"HTTP/1.1 200 OK\r\nserver: t\r\ncontent-length: 11\r\n\r\nhello world".to_vec();
    let interim =
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\nok"
            .to_vec();
    let expected = [
        (CHUNKED.to_vec(), 200, 41),
        (length, 200, 11),
        (interim, 202, 2),
    ];
    for (answer, status, body) in expected {
        // Two pieces, split at every offset; the response follows itself once more, so the
        // end of the first is found exactly.
        for first in 1..answer.len() {
            let inner = scripted(vec![answer.clone(), answer.clone()], false).await;
            let mut s = Split {
                inner,
                first,
                rest: usize::MAX,
                reads: 0,
            };
            let mut buf = ReadBuffer::new();
            for _ in 0..2 {
                let got = exchange(&mut s, &mut buf, false).await;
                assert_eq!(got, ok(status, body, true), "split at {first}");
            }
        }
        // One byte per read, and one byte per write by the server.
        let inner = scripted(vec![answer.clone(), answer.clone()], true).await;
        let mut s = Split {
            inner,
            first: 1,
            rest: 1,
            reads: 0,
        };
        let mut buf = ReadBuffer::new();
        for _ in 0..2 {
            assert_eq!(
                exchange(&mut s, &mut buf, false).await,
                ok(status, body, true)
            );
        }
    }
}

#[tokio::test]
async fn garbage_truncated_and_oversized_responses_are_errors_of_their_kind() {
    let protocol = |before_response| {
        Err(Failure {
            kind: ErrorKind::Protocol,
            before_response,
        })
    };
    let closed = |before_response| {
        Err(Failure {
            kind: ErrorKind::Closed,
            before_response,
        })
    };
    let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
    while huge.len() <= MAX_HEAD {
        huge.extend_from_slice(b"x-filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..=MAX_HEADERS {
        many.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let cases: Vec<(Vec<u8>, Result<Response, Failure>)> = vec![
        (b"garbage garbage\r\n\r\n".to_vec(), protocol(false)),
        (b"HTTP/1.1 abc OK\r\n\r\n".to_vec(), protocol(false)),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n".to_vec(),
            protocol(false),
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab".to_vec(),
            protocol(false),
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".to_vec(),
            protocol(false),
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloXY".to_vec(),
            protocol(false),
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n11111111111111111\r\n".to_vec(),
            protocol(false),
        ),
        (huge, protocol(false)),
        (many, protocol(false)),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc".to_vec(),
            closed(false),
        ),
        (b"HTTP/1.1 200 OK\r\ncontent-le".to_vec(), closed(false)),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel".to_vec(),
            closed(false),
        ),
        (Vec::new(), closed(true)),
    ];
    for (answer, expected) in cases {
        let mut s = scripted(vec![answer.clone()], false).await;
        let mut buf = ReadBuffer::new();
        let got = exchange(&mut s, &mut buf, false).await;
        let shown = String::from_utf8_lossy(&answer[..answer.len().min(80)]).into_owned();
        assert_eq!(got, expected, "{shown}");
    }
}

#[tokio::test]
async fn a_reset_before_any_response_byte_is_flagged_for_a_resend() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        if let Ok((mut stream, _)) = listener.accept().await {
            read_request(&mut stream).await;
            // Unread data at close: the kernel answers with a RST.
            let _ = stream.set_zero_linger();
            drop(stream);
        }
    });
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut buf = ReadBuffer::new();
    let got = exchange(&mut s, &mut buf, false)
        .await
        .expect_err("no response");
    assert!(got.before_response, "{got:?}");
    assert!(
        matches!(got.kind, ErrorKind::Reset | ErrorKind::Closed),
        "{got:?}"
    );
}

#[test]
fn the_chunked_decoder_stops_at_the_end_of_the_body() {
    let mut d = ChunkedDecoder::new();
    let input = b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1";
    assert_eq!(d.feed(input), Ok((13, 3)));
    assert!(d.is_done());
    assert_eq!(d.feed(b"more"), Ok((0, 0)));
}
