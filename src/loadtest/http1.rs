//! levee's own lean HTTP/1.1 client side for the load generator: the request is serialized once
//! per scenario and written whole per request; the response is read into a buffer reused by the
//! connection, its head parsed with `httparse`, its body framed (Content-Length, chunked, or until
//! the server closes) and counted, never stored. Nothing is allocated per request.

use std::mem::MaybeUninit;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::stats::ErrorKind;
use crate::proxy::upstream_codec::{
    connection_tokens, content_length_value, last_coding_is_chunked,
};

/// The largest response head accepted (status line and headers, interim responses included);
/// anything longer is a protocol error.
pub const MAX_HEAD: usize = 64 * 1024;

/// The read buffer's initial size (it grows up to [`MAX_HEAD`] only for a long head).
const INITIAL_BUFFER: usize = 16 * 1024;

/// Headers parsed per response head; more is a protocol error.
const MAX_HEADERS: usize = 128;

/// The most bytes of chunk extensions and trailers accepted per response.
const MAX_CHUNK_OVERHEAD: u64 = MAX_HEAD as u64;

/// A connection's read buffer: bytes received and not yet consumed are `buf[start..end]`.
pub struct ReadBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Default for ReadBuffer {
    fn default() -> Self {
        ReadBuffer::new()
    }
}

impl ReadBuffer {
    /// An empty buffer (allocated once per worker, reused by all its connections).
    pub fn new() -> ReadBuffer {
        ReadBuffer {
            buf: vec![0; INITIAL_BUFFER],
            start: 0,
            end: 0,
        }
    }

    /// Bytes received and not consumed yet.
    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Forgets everything (a new connection).
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.clear();
        }
    }

    /// Reads more bytes after those held (moving them to the front, or growing the buffer up to
    /// [`MAX_HEAD`], when it is full). `Ok(0)`: the peer closed the connection.
    async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> std::io::Result<usize> {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < MAX_HEAD {
                let size = (self.buf.len() * 2).clamp(INITIAL_BUFFER, MAX_HEAD);
                self.buf.resize(size, 0);
            } else {
                return Err(std::io::Error::from(std::io::ErrorKind::InvalidData));
            }
        }
        let n = r.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }
}

/// A complete final response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Body bytes (after chunked decoding).
    pub body_bytes: u64,
    /// Whether the connection may carry the next request.
    pub reusable: bool,
}

/// Why an exchange failed, and whether it failed before any byte of a response arrived (on a
/// kept-alive connection, that means the server had closed it meanwhile: worth one resend on a
/// new connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub kind: ErrorKind,
    pub before_response: bool,
}

impl Failure {
    fn after(kind: ErrorKind) -> Failure {
        Failure {
            kind,
            before_response: false,
        }
    }

    fn io(e: &std::io::Error, before_response: bool) -> Failure {
        let kind = match e.kind() {
            std::io::ErrorKind::InvalidData => ErrorKind::Protocol,
            _ => ErrorKind::of_io(e),
        };
        Failure {
            kind,
            before_response,
        }
    }
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD request, 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the server closes the connection.
    UntilClose,
}

/// What a response head says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    /// Bytes of the head (status line, headers, blank line).
    len: usize,
    status: u16,
    framing: Framing,
    /// The server keeps the connection open after this response.
    keep_alive: bool,
}

/// Whether `name` equals `lower` (lowercase letters and `-`) ignoring ASCII case. Cheaper than
/// `eq_ignore_ascii_case` (one OR per byte); exact for header names, which httparse has checked
/// are tokens (the only other byte mapping to `-` this way, CR, is not a token character).
fn eq_lower(name: &[u8], lower: &[u8]) -> bool {
    name.len() == lower.len() && name.iter().zip(lower).all(|(a, b)| a | 0x20 == *b)
}

/// Parses a response head at the start of `data`: `Ok(None)` while it is incomplete.
fn parse_head(data: &[u8], head_request: bool) -> Result<Option<Head>, ErrorKind> {
    // Left uninitialized: httparse writes the headers it finds (no 4 KiB to clear per response).
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .allow_spaces_after_header_name_in_responses(true)
        .allow_multiple_spaces_in_response_status_delimiters(true)
        .parse_response_with_uninit_headers(&mut response, data, &mut headers)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ErrorKind::Protocol),
    };
    let status = response.code.ok_or(ErrorKind::Protocol)?;
    let http11 = response.version == Some(1);
    let (mut length, mut chunked, mut transfer_encoding) = (None, false, false);
    let (mut close, mut keep_alive) = (false, false);
    for h in response.headers.iter() {
        let name = h.name.as_bytes();
        if eq_lower(name, b"content-length") {
            let n = content_length_value(h.value).ok_or(ErrorKind::Protocol)?;
            if length.is_some_and(|l| l != n) {
                return Err(ErrorKind::Protocol);
            }
            length = Some(n);
        } else if eq_lower(name, b"transfer-encoding") {
            // Chunked only if it is the last coding; any other ends with the connection.
            transfer_encoding = true;
            chunked = last_coding_is_chunked(h.value);
        } else if eq_lower(name, b"connection") {
            let (c, k) = connection_tokens(h.value);
            close |= c;
            keep_alive |= k;
        }
    }
    let framing = if head_request || (100..200).contains(&status) || status == 204 || status == 304
    {
        Framing::Empty
    } else if transfer_encoding {
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    let keep_alive = !close
        && (http11 || keep_alive)
        && framing != Framing::UntilClose
        // 101 Switching Protocols: what follows is not HTTP any more.
        && status != 101;
    Ok(Some(Head {
        len,
        status,
        framing,
        keep_alive,
    }))
}

/// Where a chunked decoder is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// At the start of a chunk-size line (no digit yet).
    Size,
    /// Reading the hex digits of the size.
    SizeDigits,
    /// Skipping whitespace or extensions up to the end of the size line.
    Extension,
    /// After the CR of the size line.
    SizeLf,
    /// Inside chunk data (`remaining` bytes left).
    Data,
    /// After chunk data: expecting CR LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final blank line).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// After the CR of the final blank line.
    EndLf,
    Done,
}

/// An incremental decoder of a chunked body, fed whatever bytes have arrived (any split).
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// The chunk size being read, then the data bytes left in the chunk.
    remaining: u64,
    /// Extension and trailer bytes seen (bounded).
    overhead: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> ChunkedDecoder {
        ChunkedDecoder {
            state: ChunkState::Size,
            remaining: 0,
            overhead: 0,
        }
    }

    /// Whether the body (last chunk and trailers) is complete.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes from `input`: returns the bytes consumed and the data bytes among them. Stops at
    /// the end of the body (the rest of `input` is not part of it).
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, u64), ErrorKind> {
        let (mut i, mut data) = (0, 0u64);
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Done => break,
                ChunkState::Data => {
                    let left = usize::try_from(self.remaining).unwrap_or(usize::MAX);
                    let n = left.min(input.len() - i);
                    i += n;
                    data += n as u64;
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::Size | ChunkState::SizeDigits => match (b as char).to_digit(16) {
                    Some(d) => {
                        if self.remaining > u64::MAX >> 4 {
                            return Err(ErrorKind::Protocol);
                        }
                        self.remaining = self.remaining << 4 | u64::from(d);
                        self.state = ChunkState::SizeDigits;
                    }
                    None if self.state == ChunkState::Size => return Err(ErrorKind::Protocol),
                    None => match b {
                        b'\r' => self.state = ChunkState::SizeLf,
                        b'\n' => self.end_size_line(),
                        b';' | b' ' | b'\t' => self.state = ChunkState::Extension,
                        _ => return Err(ErrorKind::Protocol),
                    },
                },
                ChunkState::Extension => match b {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => self.end_size_line(),
                    _ => self.count_overhead()?,
                },
                ChunkState::SizeLf => match b {
                    b'\n' => self.end_size_line(),
                    _ => return Err(ErrorKind::Protocol),
                },
                ChunkState::DataCr => match b {
                    b'\r' => self.state = ChunkState::DataLf,
                    b'\n' => self.state = ChunkState::Size,
                    _ => return Err(ErrorKind::Protocol),
                },
                ChunkState::DataLf => match b {
                    b'\n' => self.state = ChunkState::Size,
                    _ => return Err(ErrorKind::Protocol),
                },
                ChunkState::TrailerStart => match b {
                    b'\r' => self.state = ChunkState::EndLf,
                    b'\n' => self.state = ChunkState::Done,
                    _ => {
                        self.count_overhead()?;
                        self.state = ChunkState::Trailer;
                    }
                },
                ChunkState::Trailer => match b {
                    b'\n' => self.state = ChunkState::TrailerStart,
                    _ => self.count_overhead()?,
                },
                ChunkState::EndLf => match b {
                    b'\n' => self.state = ChunkState::Done,
                    _ => return Err(ErrorKind::Protocol),
                },
            }
            i += 1;
        }
        Ok((i, data))
    }

    fn end_size_line(&mut self) {
        self.state = if self.remaining == 0 {
            ChunkState::TrailerStart
        } else {
            ChunkState::Data
        };
    }

    fn count_overhead(&mut self) -> Result<(), ErrorKind> {
        self.overhead += 1;
        if self.overhead > MAX_CHUNK_OVERHEAD {
            return Err(ErrorKind::Protocol);
        }
        Ok(())
    }
}

/// Sends `request` (one write) and reads the final response to its end. `buf` must hold nothing
/// from an earlier response. A failure flagged `before_response` happened before any response
/// byte arrived (the write failed, or the connection was closed or reset first).
pub async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut ReadBuffer,
    request: &[u8],
    head_request: bool,
) -> Result<Response, Failure> {
    stream
        .write_all(request)
        .await
        .map_err(|e| Failure::io(&e, true))?;
    read_response(stream, buf, head_request).await
}

/// Reads one final response (skipping interim 1xx ones) to the end of its body.
pub async fn read_response<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut ReadBuffer,
    head_request: bool,
) -> Result<Response, Failure> {
    let mut received = !buf.is_empty();
    let head = loop {
        let parsed = if buf.is_empty() {
            None
        } else {
            parse_head(buf.data(), head_request).map_err(Failure::after)?
        };
        match parsed {
            Some(head) if (100..200).contains(&head.status) && head.status != 101 => {
                // An interim response (100 Continue...): the final one follows.
                buf.consume(head.len);
            }
            Some(head) => {
                buf.consume(head.len);
                break head;
            }
            None => {
                if buf.data().len() >= MAX_HEAD {
                    return Err(Failure::after(ErrorKind::Protocol));
                }
                let n = buf
                    .fill(stream)
                    .await
                    .map_err(|e| Failure::io(&e, !received))?;
                if n == 0 {
                    return Err(Failure {
                        kind: ErrorKind::Closed,
                        before_response: !received,
                    });
                }
                received = true;
            }
        }
    };
    let body_bytes = read_body(stream, buf, head.framing).await?;
    Ok(Response {
        status: head.status,
        body_bytes,
        // Bytes beyond the response (nothing was asked for): the connection is not trusted.
        reusable: head.keep_alive && buf.is_empty(),
    })
}

/// Reads (and discards) a body framed as `framing`; returns its length.
async fn read_body<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut ReadBuffer,
    framing: Framing,
) -> Result<u64, Failure> {
    let mut total = 0u64;
    match framing {
        Framing::Empty => {}
        Framing::Length(len) => loop {
            let n = buf
                .data()
                .len()
                .min(usize::try_from(len - total).unwrap_or(usize::MAX));
            buf.consume(n);
            total += n as u64;
            if total == len {
                break;
            }
            if fill(stream, buf).await? == 0 {
                return Err(Failure::after(ErrorKind::Closed));
            }
        },
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            loop {
                let (used, data) = decoder.feed(buf.data()).map_err(Failure::after)?;
                buf.consume(used);
                total += data;
                if decoder.is_done() {
                    break;
                }
                if fill(stream, buf).await? == 0 {
                    return Err(Failure::after(ErrorKind::Closed));
                }
            }
        }
        Framing::UntilClose => loop {
            total += buf.data().len() as u64;
            buf.clear();
            if fill(stream, buf).await? == 0 {
                break;
            }
        },
    }
    Ok(total)
}

/// Reads more body bytes (the buffer holds none still needed).
async fn fill<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut ReadBuffer,
) -> Result<usize, Failure> {
    buf.fill(stream).await.map_err(|e| Failure::io(&e, false))
}

#[cfg(test)]
#[path = "http1_tests.rs"]
mod tests;
