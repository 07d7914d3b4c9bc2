//! What one request came to: a response, or an error of a known kind.

/// Why a request got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The TCP connection could not be opened (refused, unreachable, source address unusable).
    Connect,
    /// No complete response within `--timeout`.
    Timeout,
    /// The connection was reset (TCP RST, broken pipe).
    Reset,
    /// The server closed the connection before a complete response.
    Closed,
    /// The response was not valid HTTP/1.1.
    Protocol,
    /// Open model: due before the end of the run but not sent by 1s after it, every connection
    /// being busy (raise `--connections`, or the server is stalled).
    Unsent,
    /// Anything else (reported with this name).
    Other,
}

impl ErrorKind {
    /// Every kind, in report order.
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::Closed,
        ErrorKind::Protocol,
        ErrorKind::Unsent,
        ErrorKind::Other,
    ];

    /// The name used in reports and thresholds (`errors_timeout`).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::Closed => "closed",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Unsent => "unsent",
            ErrorKind::Other => "other",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Classifies an I/O error met while talking to the server (not while connecting).
    pub fn of_io(e: &std::io::Error) -> ErrorKind {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::ConnectionReset | K::BrokenPipe | K::ConnectionAborted => ErrorKind::Reset,
            K::UnexpectedEof => ErrorKind::Closed,
            K::TimedOut => ErrorKind::Timeout,
            _ => ErrorKind::Other,
        }
    }
}

/// What one request came to.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// A complete response with this status and this many body bytes.
    Response { status: u16, bytes: u64 },
    /// No response.
    Error(ErrorKind),
}
