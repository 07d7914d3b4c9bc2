//! Response bodies of the simulated server: a small buffer, or N filler bytes generated on the fly.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// Size of the chunks of a filler body.
const CHUNK: usize = 64 * 1024;

/// The bytes every filler chunk is cut from (shared, never copied).
static FILLER: [u8; CHUNK] = [b'x'; CHUNK];

/// A response body of the simulated server.
#[derive(Debug)]
pub(crate) enum SimBody {
    /// A small body sent in one frame (`None` once sent).
    Full(Option<Bytes>),
    /// `remaining` bytes of filler, sent in chunks of 64 KiB; memory stays constant whatever the
    /// size.
    Filler {
        /// Bytes still to send.
        remaining: u64,
    },
}

impl SimBody {
    /// A body of these bytes.
    pub(crate) fn full(bytes: impl Into<Bytes>) -> SimBody {
        let bytes = bytes.into();
        SimBody::Full((!bytes.is_empty()).then_some(bytes))
    }

    /// A body of `size` filler bytes.
    pub(crate) fn filler(size: u64) -> SimBody {
        SimBody::Filler { remaining: size }
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = match self.get_mut() {
            SimBody::Full(bytes) => bytes.take().map(Frame::data),
            SimBody::Filler { remaining } => {
                if *remaining == 0 {
                    None
                } else {
                    let n = usize::try_from(*remaining).map_or(CHUNK, |r| r.min(CHUNK));
                    *remaining -= n as u64;
                    Some(Frame::data(Bytes::from_static(&FILLER).slice(..n)))
                }
            }
        };
        Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            SimBody::Full(bytes) => bytes.is_none(),
            SimBody::Filler { remaining } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SimBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            SimBody::Filler { remaining } => SizeHint::with_exact(*remaining),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn filler_sends_exactly_its_size_in_chunks() {
        let size = 3 * CHUNK as u64 + 17;
        let mut body = SimBody::filler(size);
        assert_eq!(body.size_hint().exact(), Some(size));
        let mut total = 0u64;
        let mut frames = 0;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame;
            let data = frame.into_data().unwrap_or_default();
            assert!(data.len() <= CHUNK);
            total += data.len() as u64;
            frames += 1;
        }
        assert_eq!(total, size);
        assert_eq!(frames, 4);
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn full_body_sends_once() {
        let collected = SimBody::full("ok").collect().await.map(|c| c.to_bytes());
        assert_eq!(collected.ok(), Some(Bytes::from_static(b"ok")));
        assert!(SimBody::full("").is_end_stream());
        assert_eq!(SimBody::full("").size_hint().exact(), Some(0));
    }
}
