//! HTTP/1.1 on the wire towards a server: the request head levee writes, the response head it
//! parses (with httparse) and the framing of the response body (Content-Length, chunked, or
//! until the server closes).
//!
//! Nothing here does I/O: the functions work on byte buffers, so every framing rule is tested
//! on its own, byte by byte, in the unit tests below.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// The most headers a response head may carry (hyper's default is 100 too).
pub const MAX_HEADERS: usize = 100;

/// Why a response from a server was not valid HTTP/1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("malformed response head")]
    Head,
    #[error("response head larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("more than {MAX_HEADERS} response headers")]
    TooManyHeaders,
    #[error("invalid status code")]
    Status,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("malformed chunked body")]
    Chunked,
    #[error("protocol switch (101) is not supported")]
    Upgrade,
}

/// Writes the request head (request line, headers, blank line) into `out`. `chunked` adds
/// `transfer-encoding: chunked` (a streamed body of unknown length); `content_length` sets the
/// length of a body levee holds whole (replacing any the client sent).
pub fn write_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    default_host: &str,
    content_length: Option<usize>,
    chunked: bool,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(if path_and_query.is_empty() {
        b"/"
    } else {
        path_and_query.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut has_host = false;
    for (name, value) in headers {
        if *name == header::HOST {
            has_host = true;
        } else if content_length.is_some() && *name == header::CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !has_host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(default_host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(n) = content_length {
        out.extend_from_slice(b"content-length: ");
        let mut digits = itoa_buf(n as u64);
        out.extend_from_slice(digits.as_slice());
        out.extend_from_slice(b"\r\n");
        digits.clear();
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The decimal digits of `n` (no allocation beyond the small vector's inline use).
fn itoa_buf(mut n: u64) -> DigitBuf {
    let mut b = DigitBuf {
        d: [0; 20],
        start: 20,
    };
    loop {
        b.start -= 1;
        b.d[b.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    b
}

struct DigitBuf {
    d: [u8; 20],
    start: usize,
}

impl DigitBuf {
    fn as_slice(&self) -> &[u8] {
        &self.d[self.start..]
    }
    fn clear(&mut self) {
        self.start = 20;
    }
}

/// The size line of one chunk of a chunked request body.
pub fn write_chunk_size(out: &mut Vec<u8>, n: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut d = [0u8; 16];
    let mut i = 16;
    let mut v = n;
    loop {
        i -= 1;
        d[i] = HEX[v & 15];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&d[i..]);
    out.extend_from_slice(b"\r\n");
}

/// How the response body is delimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304, or Content-Length 0).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked(ChunkedDecoder),
    /// Until the server closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection may carry another request after this response.
    pub keep_alive: bool,
}

/// What [`parse_head`] found at the start of the buffer.
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// An interim (1xx) response of this many bytes, to skip.
    Interim(usize),
    /// A final response head of this many bytes.
    Final(Box<Head>, usize),
}

/// Parses a response head at the start of `buf`. `method` is the request's (a HEAD response
/// has no body whatever its headers say).
pub fn parse_head(buf: &[u8], method: &Method) -> Result<Parsed, Invalid> {
    // Left uninitialised: httparse writes the headers it finds (no 3 KiB to clear per response).
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(Invalid::TooManyHeaders),
        Err(_) => return Err(Invalid::Head),
    };
    let code = resp.code.ok_or(Invalid::Head)?;
    if code == 101 {
        return Err(Invalid::Upgrade);
    }
    if (100..200).contains(&code) {
        return Ok(Parsed::Interim(len));
    }
    let status = StatusCode::from_u16(code).map_err(|_| Invalid::Status)?;
    let version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // One copy of the head; every header value is a slice of it (no allocation per value).
    let head_bytes = Bytes::copy_from_slice(&buf[..len]);
    let base = buf.as_ptr() as usize;
    let mut headers = HeaderMap::with_capacity(resp.headers.len());
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut names_others = false;
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Invalid::Head)?;
        let start = h.value.as_ptr() as usize - base;
        let value = HeaderValue::from_maybe_shared(head_bytes.slice(start..start + h.value.len()))
            .map_err(|_| Invalid::Head)?;
        if name == header::CONTENT_LENGTH {
            let n = content_length_value(h.value).ok_or(Invalid::ContentLength)?;
            if content_length.is_some_and(|c| c != n) {
                return Err(Invalid::ContentLength);
            }
            content_length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoding = true;
            // Chunked must be the last coding; anything else is read until the close.
            chunked = last_coding_is_chunked(h.value);
        }
        let mut keep = !super::headers::is_hop_by_hop(&name);
        if name == header::CONNECTION {
            let (c, k) = connection_tokens(h.value);
            close |= c;
            keep_alive_token |= k;
            // Kept only when it names other headers, for strip_hop_by_hop below (rare).
            keep = names_other_headers(h.value);
            names_others |= keep;
        }
        // Hop-by-hop headers are read here and never forwarded (RFC 9110 §7.6.1).
        if keep {
            headers.append(name, value);
        }
    }
    if names_others {
        // The headers the Connection header names are this hop's too, and so is it.
        super::headers::strip_hop_by_hop(&mut headers);
    }
    let no_body = *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut keep_alive = if version == Version::HTTP_10 {
        keep_alive_token && !close
    } else {
        !close
    };
    let framing = if no_body {
        Framing::Empty
    } else if transfer_encoding {
        // RFC 9112 §6.3: Transfer-Encoding wins over Content-Length; such a message is not
        // safe to reuse the connection after.
        if content_length.is_some() {
            keep_alive = false;
        }
        if chunked {
            Framing::Chunked(ChunkedDecoder::default())
        } else {
            keep_alive = false;
            Framing::UntilClose
        }
    } else {
        match content_length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => {
                keep_alive = false;
                Framing::UntilClose
            }
        }
    };
    Ok(Parsed::Final(
        Box::new(Head {
            status,
            version,
            headers,
            framing,
            keep_alive,
        }),
        len,
    ))
}

/// A Content-Length value: digits only (no sign, no list), at most 19 of them.
pub fn content_length_value(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Whether a Transfer-Encoding value ends with `chunked` (the only coding that delimits a body;
/// any other is read until the connection closes).
pub fn last_coding_is_chunked(v: &[u8]) -> bool {
    v.rsplit(|b| *b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// The `close` and `keep-alive` tokens of a Connection value.
pub fn connection_tokens(v: &[u8]) -> (bool, bool) {
    let (mut close, mut keep_alive) = (false, false);
    for token in v.split(|b| *b == b',') {
        let t = token.trim_ascii();
        close |= t.eq_ignore_ascii_case(b"close");
        keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
    }
    (close, keep_alive)
}

/// Whether a Connection value names a header (a token other than `close` and `keep-alive`).
fn names_other_headers(v: &[u8]) -> bool {
    v.split(|b| *b == b',').map(<[u8]>::trim_ascii).any(|t| {
        !t.is_empty() && !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive")
    })
}

/// The longest chunk-size line (with extensions) or trailer line accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// The most trailer bytes accepted (trailers are read and dropped).
const MAX_TRAILERS: usize = 16 * 1024;

/// Decodes a chunked body from a buffer, in place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// Bytes left in the current chunk.
    remaining: u64,
    trailer_bytes: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data,
    DataEnd,
    Trailers,
    Done,
}

/// One step of [`ChunkedDecoder::decode`].
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Body bytes.
    Data(Bytes),
    /// More input is needed.
    NeedMore,
    /// The body is complete (the terminating chunk and trailers were consumed).
    Done,
}

impl ChunkedDecoder {
    /// Consumes what it can from the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Chunk, Invalid> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(eol) = find_crlf(buf) else {
                        return if buf.len() > MAX_CHUNK_LINE {
                            Err(Invalid::Chunked)
                        } else {
                            Ok(Chunk::NeedMore)
                        };
                    };
                    let line = &buf[..eol];
                    let size_part = line
                        .split(|b| *b == b';')
                        .next()
                        .unwrap_or_default()
                        .trim_ascii();
                    if size_part.is_empty() || size_part.len() > 15 {
                        return Err(Invalid::Chunked);
                    }
                    let mut size = 0u64;
                    for &c in size_part {
                        let d = match c {
                            b'0'..=b'9' => c - b'0',
                            b'a'..=b'f' => c - b'a' + 10,
                            b'A'..=b'F' => c - b'A' + 10,
                            _ => return Err(Invalid::Chunked),
                        };
                        size = size * 16 + u64::from(d);
                    }
                    let _ = buf.split_to(eol + 2);
                    if size == 0 {
                        self.state = ChunkState::Trailers;
                    } else {
                        self.remaining = size;
                        self.state = ChunkState::Data;
                    }
                }
                ChunkState::Data => {
                    if buf.is_empty() {
                        return Ok(Chunk::NeedMore);
                    }
                    let n = usize::try_from(self.remaining)
                        .unwrap_or(usize::MAX)
                        .min(buf.len());
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataEnd;
                    }
                    return Ok(Chunk::Data(buf.split_to(n).freeze()));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Chunk::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Invalid::Chunked);
                    }
                    let _ = buf.split_to(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let Some(eol) = find_crlf(buf) else {
                        return if buf.len() > MAX_CHUNK_LINE {
                            Err(Invalid::Chunked)
                        } else {
                            Ok(Chunk::NeedMore)
                        };
                    };
                    let _ = buf.split_to(eol + 2);
                    if eol == 0 {
                        self.state = ChunkState::Done;
                    } else {
                        self.trailer_bytes += eol + 2;
                        if self.trailer_bytes > MAX_TRAILERS {
                            return Err(Invalid::Chunked);
                        }
                    }
                }
                ChunkState::Done => return Ok(Chunk::Done),
            }
        }
    }

    /// Whether the terminating chunk has been consumed.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, method: &Method) -> Head {
        match parse_head(raw.as_bytes(), method) {
            Ok(Parsed::Final(h, n)) => {
                assert_eq!(n, raw.len());
                *h
            }
            other => panic!("not a final head: {other:?}"),
        }
    }

    #[test]
    fn hop_by_hop_response_headers_are_left_out_with_those_connection_names() {
        let h = head(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n\
             X-Hop: secret\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\n\
             Trailer: x-t\r\nX-Kept: 1\r\nContent-Length: 2\r\n\r\n",
            &Method::GET,
        );
        let mut names: Vec<&str> = h.headers.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "x-kept"]);
        assert!(h.keep_alive);
        assert_eq!(h.framing, Framing::Length(2));
        // Chunked framing is read from Transfer-Encoding, which is not forwarded either.
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            &Method::GET,
        );
        assert!(h.headers.is_empty());
        assert!(!h.keep_alive);
        assert!(matches!(h.framing, Framing::Chunked(_)));
    }

    #[test]
    fn request_head_is_origin_form_with_host_and_length() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        h.insert("x-a", HeaderValue::from_static("1"));
        let mut out = Vec::new();
        write_request_head(
            &mut out,
            &Method::POST,
            "/p?q=1",
            &h,
            "10.0.0.1:80",
            Some(5),
            false,
        );
        let s = String::from_utf8(out).unwrap();
        assert_eq!(
            s,
            "POST /p?q=1 HTTP/1.1\r\nx-a: 1\r\nhost: 10.0.0.1:80\r\ncontent-length: 5\r\n\r\n"
        );
        let mut out = Vec::new();
        h.insert(header::HOST, HeaderValue::from_static("example.com"));
        write_request_head(&mut out, &Method::GET, "", &h, "x", None, true);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("GET / HTTP/1.1\r\n"), "{s}");
        assert!(s.contains("host: example.com\r\n") && !s.contains("host: x"));
        assert!(s.contains("content-length: 99\r\n"));
        assert!(s.ends_with("transfer-encoding: chunked\r\n\r\n"));
    }

    #[test]
    fn chunk_size_lines_are_hex() {
        let mut out = Vec::new();
        write_chunk_size(&mut out, 0);
        write_chunk_size(&mut out, 255);
        write_chunk_size(&mut out, 65536);
        assert_eq!(out, b"0\r\nff\r\n10000\r\n");
    }

    #[test]
    fn framing_follows_the_headers_and_the_method() {
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
        assert_eq!(h.headers.get("x-a").unwrap(), "b");
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            &Method::HEAD,
        );
        assert_eq!(h.framing, Framing::Empty);
        let h = head("HTTP/1.1 204 No Content\r\n\r\n", &Method::GET);
        assert_eq!(h.framing, Framing::Empty);
        assert!(h.keep_alive);
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            &Method::GET,
        );
        assert!(matches!(h.framing, Framing::Chunked(_)));
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            &Method::GET,
        );
        assert!(matches!(h.framing, Framing::Chunked(_)));
        assert!(!h.keep_alive);
        let h = head("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", &Method::GET);
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(!h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", &Method::GET);
        assert!(!h.keep_alive, "HTTP/1.0 closes unless it says keep-alive");
        let h = head(
            "HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n",
            &Method::GET,
        );
        assert!(h.keep_alive);
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(h.framing, Framing::Length(4));
    }

    #[test]
    fn bad_heads_are_refused_with_their_reason() {
        let bad = |raw: &str| parse_head(raw.as_bytes(), &Method::GET).err();
        assert_eq!(bad("garbage\r\n\r\n"), Some(Invalid::Head));
        assert_eq!(
            bad("HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n"),
            Some(Invalid::ContentLength)
        );
        assert_eq!(
            bad("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
            Some(Invalid::ContentLength)
        );
        assert_eq!(
            bad("HTTP/1.1 101 Switching\r\n\r\n"),
            Some(Invalid::Upgrade)
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert_eq!(
            bad(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")),
            Some(Invalid::TooManyHeaders)
        );
    }

    #[test]
    fn a_head_split_at_every_byte_is_partial_until_complete() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let interim = 25;
        for cut in 0..interim {
            assert!(matches!(
                parse_head(&raw[..cut], &Method::GET),
                Ok(Parsed::Partial)
            ));
        }
        assert!(matches!(
            parse_head(raw, &Method::GET),
            Ok(Parsed::Interim(n)) if n == interim
        ));
        let rest = &raw[interim..];
        for cut in 0..rest.len() - 2 {
            assert!(
                matches!(parse_head(&rest[..cut], &Method::GET), Ok(Parsed::Partial)),
                "cut at {cut}"
            );
        }
    }

    /// Feeds `wire` to a decoder `step` bytes at a time and returns the body.
    fn dechunk(wire: &[u8], step: usize) -> Result<(Vec<u8>, usize), Invalid> {
        let mut d = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Chunk::Data(b) => body.extend_from_slice(&b),
                Chunk::Done => return Ok((body, buf.len() + wire.len() - fed)),
                Chunk::NeedMore => {
                    if fed == wire.len() {
                        return Err(Invalid::Head);
                    }
                    let n = step.min(wire.len() - fed);
                    buf.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_sizes() {
        let wire = b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in 1..wire.len() {
            let (body, left) = dechunk(wire, step).unwrap();
            assert_eq!(body, b"hello 0123456789", "step {step}");
            assert_eq!(left, 4, "what follows the body is left alone (step {step})");
        }
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        assert_eq!(dechunk(b"zz\r\n", 64), Err(Invalid::Chunked));
        assert_eq!(dechunk(b"2\r\nabX\r\n", 64), Err(Invalid::Chunked));
        assert_eq!(dechunk(&[b'1'; 5000], 64), Err(Invalid::Chunked));
    }

    /// Mutations of valid responses (bytes flipped, cut, duplicated, garbage inserted): the
    /// parser and the chunked decoder must answer every one with a head, "partial" or an
    /// error, never a panic, and a decoder never yields more bytes than it was fed.
    #[test]
    fn mutated_responses_never_panic() {
        let seeds: [&[u8]; 4] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nT: 1\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 204 No Content\r\nConnection: keep-alive, x\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\nConnection: close\r\n\r\n",
        ];
        let mut rng = fastrand::Rng::with_seed(0x1e7ee);
        for round in 0..20_000 {
            let mut m = seeds[round % seeds.len()].to_vec();
            for _ in 0..rng.usize(1..6) {
                let at = rng.usize(..=m.len());
                match rng.u8(..5) {
                    0 if at < m.len() => m[at] = rng.u8(..),
                    1 => m.truncate(at),
                    2 => m.insert(
                        at,
                        *b"\r\n:; 0aF\x00\xff".get(rng.usize(..12)).unwrap_or(&b'x'),
                    ),
                    3 if at < m.len() => {
                        let end = (at + rng.usize(1..16)).min(m.len());
                        let piece = m[at..end].to_vec();
                        m.splice(at..at, piece);
                    }
                    _ => {}
                }
            }
            let method = if round % 7 == 0 {
                Method::HEAD
            } else {
                Method::GET
            };
            let _ = parse_head(&m, &method);
            let fed = m.len();
            let mut d = ChunkedDecoder::default();
            let mut buf = BytesMut::from(&m[..]);
            let mut out = 0;
            for _ in 0..64 {
                match d.decode(&mut buf) {
                    Ok(Chunk::Data(b)) => out += b.len(),
                    Ok(_) | Err(_) => break,
                }
            }
            assert!(out <= fed);
        }
    }
}
