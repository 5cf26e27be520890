//! [`SseBody`]: an event stream that hyper (or the direct path) polls frame
//! by frame, and the frames it writes.
//!
//! An `SseBody` ends when the hub drops its queue (slow consumer, removed
//! membership, revoked token, shutdown): one mechanism for every reason a
//! stream ends. A receipts stream, which the hub does not track, can also be
//! given an [`SseBody::until`] future that ends it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use pere_core::{Event, Followed, Outgoing, ReceiptFollower, ReceiptUpdate, Subscription};
use tokio::time::{Instant, Sleep};

use crate::server::limits::StreamSlot;
use crate::sse;

/// Largest run of ready events copied into one frame. Beyond it hyper gets
/// the next run as its own frame; the cap keeps a burst from building one
/// huge buffer.
const MAX_COALESCED_BYTES: usize = 64 * 1024;

/// The SSE frame of an event.
pub fn event_frame(event: &Event) -> Bytes {
    let id = event.id.to_string();
    // Ids are digits and types are validated names: encoding cannot fail.
    // Should it ever, an empty frame loses one event for this process
    // rather than corrupting the stream.
    sse::event_frame(
        Some(&id),
        event.kind.as_ref().map(|k| k.as_str()),
        event.payload_str(),
    )
    .unwrap_or_default()
}

/// The SSE frame of an event whose data is the JSON envelope
/// `{"channel","id","type","data"}` (docs/PROTOCOL.md §3.8): what a stream
/// on patterns or several channels asks for to learn each event's channel.
pub fn envelope_frame(event: &Event) -> Bytes {
    let id = event.id.to_string();
    let data = serde_json::json!({
        "channel": event.channel.as_str(),
        "id": id,
        "type": event.kind_str(),
        "data": event.payload_str(),
    });
    sse::event_frame(
        Some(&id),
        event.kind.as_ref().map(|k| k.as_str()),
        &data.to_string(),
    )
    .unwrap_or_default()
}

/// Which encoding of its events a stream writes; its number is the slot in
/// a fan-out's [`pere_core::FrameCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Form {
    /// The payload as the data lines (PERE's clients read this).
    #[default]
    Plain = 0,
    /// `?envelope=json`: the data is `{"channel","id","type","data"}`.
    Envelope = 1,
}

impl Form {
    fn encode(self, event: &Event) -> Bytes {
        match self {
            Form::Plain => event_frame(event),
            Form::Envelope => envelope_frame(event),
        }
    }
}

/// The frame of an outgoing event: encoded once per fan-out and form and
/// shared by its streams (freed with their last delivery), or for this
/// stream alone when it is a replay.
pub fn outgoing_frame(outgoing: &Outgoing, form: Form) -> Bytes {
    match &outgoing.frames {
        Some(frames) => frames.get_or_init(form as usize, || form.encode(&outgoing.event)),
        None => form.encode(&outgoing.event),
    }
}

/// Where an event stream's frames come from.
pub enum Source {
    /// A device's events.
    Events(Subscription),
    /// Receipt changes and overdue notices of a channel
    /// (`GET /receipts/:channel`).
    Receipts(ReceiptFollower),
}

/// An event stream: an opening (retry, hello, gap), then one frame per
/// event, with a keepalive comment after each quiet `keepalive` period.
pub struct SseBody {
    opening: Option<Bytes>,
    source: Source,
    every: Duration,
    timer: Pin<Box<Sleep>>,
    last_write: Instant,
    /// Ends the stream when it resolves (a receipts stream whose token
    /// lost its grant).
    until: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// The stream's place under the server's limits, given back when the
    /// body is dropped: hyper drops it when the stream ends or the client
    /// goes away.
    _slot: Option<StreamSlot>,
    /// How events are encoded.
    form: Form,
}

impl SseBody {
    /// A stream that first sends `opening`, then `source`'s frames.
    pub fn new(opening: Bytes, mut source: Source, keepalive: Duration) -> Self {
        if let Source::Events(sub) = &mut source {
            // Marked delivered when the next frame is asked for (see
            // `poll_frame`), not when handed out.
            sub.hold_marks();
        }
        let every = keepalive.max(Duration::from_millis(10));
        let now = Instant::now();
        Self {
            opening: Some(opening),
            source,
            every,
            timer: Box::pin(tokio::time::sleep_until(now + every)),
            last_write: now,
            until: None,
            _slot: None,
            form: Form::Plain,
        }
    }

    /// Holds `slot` for as long as the stream lives.
    pub fn with_slot(mut self, slot: StreamSlot) -> Self {
        self._slot = Some(slot);
        self
    }

    /// Writes events in `form`.
    pub fn with_form(mut self, form: Form) -> Self {
        self.form = form;
        self
    }

    /// Ends the stream (cleanly, after what was already written) once
    /// `end` resolves.
    pub fn until(mut self, end: impl Future<Output = ()> + Send + 'static) -> Self {
        self.until = Some(Box::pin(end));
        self
    }

    fn poll_source(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        match &mut self.source {
            Source::Events(sub) => {
                let Poll::Ready(first) = sub.poll_next_outgoing(cx) else {
                    return Poll::Pending;
                };
                let Some(first) = first else {
                    // The hub ended it with a last word (docs/PROTOCOL.md §10).
                    return Poll::Ready(sub.farewell().map(|data| {
                        sse::event_frame(None, Some("pere.gap"), &data).unwrap_or_default()
                    }));
                };
                let frame = outgoing_frame(&first, self.form);
                // Several events ready at once go out as one frame: one
                // chunk, one write, instead of one per event.
                let Some(second) = sub.try_next_outgoing() else {
                    return Poll::Ready(Some(frame));
                };
                let mut buf = BytesMut::with_capacity(frame.len() * 4);
                buf.extend_from_slice(&frame);
                buf.extend_from_slice(&outgoing_frame(&second, self.form));
                while buf.len() < MAX_COALESCED_BYTES {
                    match sub.try_next_outgoing() {
                        Some(e) => buf.extend_from_slice(&outgoing_frame(&e, self.form)),
                        None => break,
                    }
                }
                Poll::Ready(Some(buf.freeze()))
            }
            Source::Receipts(follower) => {
                // A batch of changes goes out as one chunk.
                let mut batch = Vec::new();
                if !std::task::ready!(follower.poll_batch(cx, &mut batch)) {
                    return Poll::Ready(None);
                }
                let mut buf = BytesMut::new();
                for item in &batch {
                    buf.extend_from_slice(&followed_frame(item));
                }
                Poll::Ready(Some(buf.freeze()))
            }
        }
    }
}

/// What a receipts stream writes for what its follower read: a change or
/// notice with its number as the SSE `id`, or `pere.gap` when it fell
/// behind what the channel keeps (never a silent loss).
fn followed_frame(item: &Followed) -> Bytes {
    match item {
        Followed::Change(seq, update) => receipt_frame(update, Some(*seq)),
        Followed::Gap { from, oldest } => {
            // Info, not a warning: any client resuming from an old id
            // gets one (pere_receipt_stream_gaps_total counts them).
            tracing::info!(
                from,
                oldest,
                "a receipts stream was told of a gap: it fell behind, or resumed from before, what its channel keeps"
            );
            let data = serde_json::json!({
                "from": from.to_string(),
                "oldest": oldest.to_string(),
                "reason": "receipt changes past what the channel keeps were dropped",
            });
            sse::event_frame(None, Some("pere.gap"), &data.to_string()).unwrap_or_default()
        }
    }
}

/// The SSE frame of a receipt change (`event: receipt`) or an overdue
/// notice (`event: overdue`), with `seq` as its id.
pub fn receipt_frame(update: &ReceiptUpdate, seq: Option<u64>) -> Bytes {
    let (kind, data) = match update {
        ReceiptUpdate::Change(change) => (
            "receipt",
            serde_json::json!({
                "id": change.id.to_string(),
                "channel": change.channel.as_str(),
                "device": change.device.as_str(),
                "state": change.state.as_str(),
                "status": change.status.as_deref(),
                "at": change.at.to_rfc3339(),
            }),
        ),
        ReceiptUpdate::Overdue(notice) => ("overdue", overdue_json(notice)),
    };
    let id = seq.map(|s| s.to_string());
    sse::event_frame(id.as_deref(), Some(kind), &data.to_string()).unwrap_or_default()
}

/// The JSON of an overdue notice, as the receipts stream and the webhook
/// send it.
pub fn overdue_json(notice: &pere_core::OverdueNotice) -> serde_json::Value {
    serde_json::json!({
        "type": "overdue",
        "id": notice.id.to_string(),
        "channel": notice.channel.as_str(),
        "device": notice.device.as_str(),
        // docs/PROTOCOL.md §5.6: `expired` when retention dropped the event
        // before the device acknowledged it; `was` says where it stood.
        "state": if notice.expired { "expired" } else { notice.state.as_str() },
        "was": notice.state.as_str(),
        "published_at": notice.published_at.to_rfc3339(),
        "deadline": notice.deadline.to_rfc3339(),
    })
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        // The events of the frame before this one were written, as far as
        // this body can tell: the direct path asks for the next frame only
        // once the last is in the socket, hyper once it has taken it into
        // its buffers. A frame never asked past (the stream cut by the send
        // timeout, the socket failed) is not counted delivered, and a
        // resume from the device's cursor gets it again.
        if let Source::Events(sub) = &mut this.source {
            sub.written();
        }
        if let Some(opening) = this.opening.take() {
            return Poll::Ready(Some(Ok(Frame::data(opening))));
        }
        if let Some(end) = &mut this.until
            && end.as_mut().poll(cx).is_ready()
        {
            this.until = None;
            return Poll::Ready(None);
        }
        match this.poll_source(cx) {
            Poll::Ready(Some(bytes)) => {
                this.last_write = Instant::now();
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        // The timer is not reset on every event (that costs a timer-wheel
        // update per delivery); when it fires early it is re-armed from the
        // last write instead.
        loop {
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let due = this.last_write + this.every;
            let now = Instant::now();
            if due > now {
                this.timer.as_mut().reset(due);
                continue;
            }
            this.last_write = now;
            this.timer.as_mut().reset(now + this.every);
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(sse::KEEPALIVE)))));
        }
    }
}
