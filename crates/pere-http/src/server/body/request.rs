//! [`RequestBody`]: a request's body as handlers read it.
//!
//! A handler may answer before reading the body (a bad channel name, a bad
//! device, a wrong method). Over HTTP/1.1 the unread body is still on the
//! connection, in front of the client's next request, so an unfinished body
//! is not dropped: it goes back to the connection ([`Leftover`]), which
//! reads it to its end or closes the connection gently (see
//! `server::conn::request`).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;

/// An unread body, handed back by [`RequestBody`]'s drop.
pub(crate) struct Unread {
    pub(crate) body: Incoming,
    /// Whether the handler asked for any of it (hyper then sent `100
    /// Continue` to a client that waited for one).
    pub(crate) polled: bool,
}

/// Where a dropped, unfinished [`RequestBody`] goes; shared by the body and
/// the service that finishes the request.
#[derive(Clone, Default)]
pub(crate) struct Leftover(Arc<Mutex<Option<Unread>>>);

impl Leftover {
    /// The body, if the handler dropped it unfinished.
    pub(crate) fn take(&self) -> Option<Unread> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A request's body as handlers read it: hyper's, except that if the
/// handler drops it unfinished it goes back to the connection (see the
/// module docs) instead of being dropped; or, for a request the server
/// read itself (`server::conn::posts`), the whole body at once.
pub(crate) struct RequestBody {
    inner: Option<Incoming>,
    /// A body read whole with its head, not yet taken.
    whole: Option<Bytes>,
    /// `None` for a request without a body.
    leftover: Option<Leftover>,
    polled: bool,
    ended: bool,
}

impl RequestBody {
    /// Wraps `body`; an unfinished one goes to `leftover` on drop.
    pub(crate) fn new(body: Incoming, leftover: &Leftover) -> Self {
        let empty = body.is_end_stream();
        Self {
            inner: Some(body),
            whole: None,
            leftover: (!empty).then(|| leftover.clone()),
            polled: false,
            ended: empty,
        }
    }

    /// The body read whole, for a request made with [`Self::whole`] and
    /// not read yet.
    pub(crate) fn whole_bytes(&self) -> Option<&Bytes> {
        self.whole.as_ref()
    }

    /// A body already read whole.
    pub(crate) fn whole(body: Bytes) -> Self {
        let empty = body.is_empty();
        Self {
            inner: None,
            whole: (!empty).then_some(body),
            leftover: None,
            polled: false,
            ended: empty,
        }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        this.polled = true;
        if let Some(whole) = this.whole.take() {
            return Poll::Ready(Some(Ok(Frame::data(whole))));
        }
        let Some(body) = this.inner.as_mut() else {
            this.ended = true;
            return Poll::Ready(None);
        };
        let frame = Pin::new(body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.ended = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.ended
            || (self.whole.is_none() && self.inner.as_ref().is_none_or(|b| b.is_end_stream()))
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(whole) = &self.whole {
            return SizeHint::with_exact(whole.len() as u64);
        }
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let (Some(body), Some(leftover)) = (self.inner.take(), &self.leftover)
            && !self.ended
            && !body.is_end_stream()
        {
            *leftover.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(Unread {
                body,
                polled: self.polled,
            });
        }
    }
}
