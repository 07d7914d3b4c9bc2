//! Benchmark tool: the cheapest HTTP/1.1 server that still answers every request properly, for
//! `bench/loadgen.sh`, where the server must not be the bottleneck when load generators are
//! compared.
//!
//! On the 2-core machines used so far, nginx with one worker (`return 200`) costs about as much
//! CPU per request as the generators themselves (12-13 µs against 11.5-13 µs). It was 93-97%
//! busy under every tool, so it set the pace for all of them and their requests/s could not be
//! told apart. This server does only what a keep-alive GET needs. It reads, finds each request
//! head's end, and writes one fixed answer per head, several in one write when requests arrive
//! pipelined. It costs less per request than the generators, so the generator's core is the one
//! that fills up.
//!
//! It answers `200` with the same headers nginx sends for `return 200` (Server, Date,
//! Content-Type, Content-Length, Connection: keep-alive) and a 19-byte body. Requests with a
//! body are not supported: their connection is closed, as is one whose head exceeds 16 KiB.
//!
//! `cargo run --release --example static_backend -- 127.0.0.1:18181 [more addresses]`
//! runs on one thread until killed.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const BODY: &str = "hello from backend\n";
const MAX_HEAD: usize = 16 * 1024;

fn main() {
    let addrs: Vec<String> = std::env::args().skip(1).collect();
    if addrs.is_empty() {
        eprintln!("usage: static_backend ADDRESS [ADDRESS ...]   (e.g. 127.0.0.1:18181)");
        std::process::exit(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("static_backend: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(serve(addrs)) {
        eprintln!("static_backend: {e}");
        std::process::exit(1);
    }
}

async fn serve(addrs: Vec<String>) -> io::Result<()> {
    // The Date header changes once a second: the current second, updated by a timer.
    let now = Arc::new(AtomicU64::new(unix_now()));
    let clock = now.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            clock.store(unix_now(), Ordering::Relaxed);
        }
    });
    let mut listeners = Vec::new();
    for a in &addrs {
        // A backlog of 1024 (nginx: 511): a generator opening hundreds of connections at once
        // would otherwise overflow the default of 128 and wait a SYN retransmit (1 s).
        let l = listen(a)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {a}: {e}")))?;
        listeners.push(l);
    }
    eprintln!("static_backend listening on {}", addrs.join(", "));
    let mut tasks = tokio::task::JoinSet::new();
    for l in listeners {
        let now = now.clone();
        tasks.spawn(async move {
            loop {
                match l.accept().await {
                    Ok((sock, _)) => {
                        let _ = sock.set_nodelay(true);
                        tokio::spawn(connection(sock, now.clone()));
                    }
                    Err(e) => {
                        eprintln!("static_backend: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The fixed answer for the second `secs`.
fn answer(secs: u64) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nServer: static_backend\r\nDate: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n{BODY}",
        http_date(secs),
        BODY.len()
    )
    .into_bytes()
}

/// An IMF-fixdate (RFC 9110 §5.6.7) for a Unix time.
fn http_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

async fn connection(mut sock: TcpStream, now: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 4096];
    let mut filled = 0;
    let mut out = Vec::with_capacity(4096);
    let mut secs = now.load(Ordering::Relaxed);
    let mut reply = answer(secs);
    loop {
        let n = match sock.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        filled += n;
        // Answer every complete head in the buffer.
        let mut start = 0;
        out.clear();
        while let Some(end) = head_end(&buf[start..filled]) {
            if has_body(&buf[start..start + end]) {
                return;
            }
            let s = now.load(Ordering::Relaxed);
            if s != secs {
                secs = s;
                reply = answer(secs);
            }
            out.extend_from_slice(&reply);
            start += end;
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if filled == buf.len() {
            if buf.len() >= MAX_HEAD {
                return;
            }
            buf.resize(buf.len() * 2, 0);
        }
        if !out.is_empty() && sock.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// The length of the head at the start of `b` (through its blank line), if complete.
fn head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Whether a request head announces a body (Content-Length other than 0, or Transfer-Encoding).
fn has_body(head: &[u8]) -> bool {
    head.split(|&c| c == b'\n').any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            return false;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"content-length") && value != b"0"
    })
}

fn listen(addr: &str) -> io::Result<TcpListener> {
    let sa: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e}")))?;
    let socket = if sa.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(sa)?;
    socket.listen(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_imf_fixdates() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(1_796_176_800), "Wed, 02 Dec 2026 02:00:00 GMT");
        assert_eq!(http_date(951_825_600), "Tue, 29 Feb 2000 12:00:00 GMT");
    }

    #[test]
    fn heads_and_bodies_are_found() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert!(!has_body(
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(has_body(b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\n"));
        assert!(has_body(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
    }
}
