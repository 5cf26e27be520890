//! Bodies. Responses: [`Body`] is either a whole buffer or an [`SseBody`],
//! an event stream that hyper (or the direct path) polls frame by frame.
//! Requests: [`RequestBody`] is hyper's, handed back to the connection when
//! a handler drops it unread.

mod request;
mod sse;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

pub(crate) use request::{Leftover, RequestBody, Unread};
pub use sse::{
    Form, Source, SseBody, envelope_frame, event_frame, outgoing_frame, overdue_json, receipt_frame,
};

/// A response body.
pub enum Body {
    /// A whole body (possibly empty), sent once.
    Full(Option<Bytes>),
    /// An event stream.
    Sse(Box<SseBody>),
    /// A long answer made piece by piece as it is sent (`/admin/events`):
    /// a client that reads slowly, or not at all, holds one piece, not
    /// the whole answer.
    Chunks(Box<dyn Iterator<Item = Bytes> + Send>),
}

impl Body {
    /// The whole body, for the paths that write an answer at once (the
    /// direct path's answers, errors): a [`Body::Chunks`] is joined (never
    /// one of those in practice); an event stream is handed back.
    pub(crate) fn into_whole(self) -> Result<Bytes, Box<SseBody>> {
        match self {
            Body::Full(bytes) => Ok(bytes.unwrap_or_default()),
            Body::Chunks(chunks) => {
                let mut out = Vec::new();
                for chunk in chunks {
                    out.extend_from_slice(&chunk);
                }
                Ok(Bytes::from(out))
            }
            Body::Sse(sse) => Err(sse),
        }
    }
}

impl Body {
    /// An empty body.
    pub fn empty() -> Self {
        Body::Full(None)
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body::Full(Some(b))
    }
}

impl From<String> for Body {
    fn from(s: String) -> Self {
        Body::Full(Some(Bytes::from(s)))
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Body::Full(Some(Bytes::from_static(s.as_bytes())))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Sse(s) => Pin::new(&mut **s).poll_frame(cx),
            Body::Chunks(chunks) => Poll::Ready(chunks.next().map(|c| Ok(Frame::data(c)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Sse(_) | Body::Chunks(_) => SizeHint::default(),
        }
    }
}
