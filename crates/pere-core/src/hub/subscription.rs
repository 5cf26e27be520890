//! [`Subscription`]: one open stream as its owner sees it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use super::{Command, Gap, Hello};
use crate::event::{Event, EventId, FrameCache, Timestamp};
use crate::ledger::{EventReceipts, Mark, NO_SLOT};
use crate::metrics::HubMetrics;
use crate::name::DeviceId;
use crate::presence::{StreamRx, StreamShared};

/// Tells the writer that a stream ended, however its owner was dropped.
pub(super) struct StreamGuard {
    pub(super) id: u64,
    pub(super) commands: mpsc::UnboundedSender<Command>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        // If the writer is gone the hub is shut down and nothing is left to
        // clean up.
        let _ = self.commands.send(Command::Closed(self.id));
    }
}

/// An event a stream hands out, with the encodings its transport may share
/// with the other streams of the same fan-out.
#[derive(Debug)]
pub struct Outgoing {
    /// The event.
    pub event: Arc<Event>,
    /// The fan-out's cache of encodings; `None` for a replayed event (it is
    /// encoded for this stream alone).
    pub frames: Option<Arc<FrameCache>>,
}

/// An open stream: first the replayed events, then live ones.
///
/// Yielding an event marks it delivered to the device and moves the
/// stream's cursor, or, after [`hold_marks`](Self::hold_marks), the next
/// [`written`](Self::written) does. Dropping the subscription closes the
/// stream and updates the device's presence.
pub struct Subscription {
    pub(super) hello: Hello,
    pub(super) gap: Option<Gap>,
    pub(super) replay: VecDeque<Arc<EventReceipts>>,
    pub(super) rx: StreamRx,
    pub(super) shared: Arc<StreamShared>,
    pub(super) device: Option<DeviceId>,
    /// Where the publish → delivered latency goes.
    pub(super) metrics: Arc<HubMetrics>,
    /// Tells the hub the stream ended (on drop), or finished its replay.
    pub(super) guard: StreamGuard,
    /// Events handed out and not yet marked delivered, once the owner
    /// said it tells when they are written ([`Subscription::hold_marks`]).
    pub(super) held: Option<Vec<(Arc<EventReceipts>, u32)>>,
    /// The replay's end, to tell the hub once its last event is marked.
    pub(super) replay_done_held: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.shared.id)
            .field("hello", &self.hello)
            .field("gap", &self.gap)
            .field("replay", &self.replay.len())
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// What to say first (`pere.hello`).
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Events lost to this client, if any (`pere.gap`).
    pub fn gap(&self) -> Option<Gap> {
        self.gap
    }

    /// The stream's hub-unique number.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The last `pere.gap` data the hub left when it ended the stream
    /// (taken once).
    pub fn farewell(&self) -> Option<Arc<str>> {
        self.shared.take_farewell()
    }

    /// The last event id written to this stream.
    pub fn delivered_upto(&self) -> EventId {
        self.shared.delivered_upto()
    }

    fn delivered(&self, receipts: &EventReceipts, slot: u32, now: Timestamp) {
        let id = receipts.id();
        let shared = &self.shared;
        if let Some(device) = &self.device {
            // A single node's writes mark the device's receipt; a cluster
            // node's do not: every node, this one included, marks them
            // when the stream's cursor comes back through the log, so every
            // node records the same receipt changes in the same order (a
            // receipts stream resumes on any node: docs/PROTOCOL.md §10).
            let mark = if !shared.marks {
                // For this node's measurements only.
                match receipts.delivered_to(device, slot) {
                    true => Mark::Again,
                    false => Mark::First,
                }
            } else if slot == NO_SLOT {
                receipts.mark_delivered(device, now)
            } else {
                receipts.mark_delivered_slot(slot, now)
            };
            match mark {
                Mark::Again => {
                    shared.redelivered.fetch_add(1, Ordering::Relaxed);
                }
                Mark::First => self
                    .metrics
                    .publish_to_delivered
                    .observe_between(receipts.event.time, now),
            }
        }
        if id.0 > shared.delivered_upto.load(Ordering::Relaxed) {
            shared.delivered_upto.store(id.0, Ordering::Release);
        }
        shared.delivered_at.store(now.0, Ordering::Release);
        shared.delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// Polls for the next event; `None` once the hub ended the stream (slow
    /// consumer, membership removed, token revoked, shutdown).
    ///
    /// Events on channels the stream's token no longer grants are skipped
    /// here, even if they were queued before the change.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Arc<Event>>> {
        self.poll_next_outgoing(cx).map(|o| o.map(|o| o.event))
    }

    /// The next event without waiting, if one is ready (to write several in
    /// one go).
    pub fn try_next(&mut self) -> Option<Arc<Event>> {
        self.try_next_outgoing().map(|o| o.event)
    }

    /// Like [`poll_next`](Self::poll_next), with the cache of encodings the
    /// event's fan-out shares (none for replayed events).
    pub fn poll_next_outgoing(&mut self, cx: &mut Context<'_>) -> Poll<Option<Outgoing>> {
        loop {
            if self.shared.is_revoked() {
                return Poll::Ready(None);
            }
            let (receipts, slot, frames) = match self.replay.pop_front() {
                Some(receipts) => match self.admit_replayed(receipts) {
                    Some(event) => {
                        return Poll::Ready(Some(Outgoing {
                            event,
                            frames: None,
                        }));
                    }
                    None => continue,
                },
                None => match self.rx.poll_recv(cx) {
                    Poll::Ready(Some(d)) => (d.receipts, d.slot, Some(d.frames)),
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Pending => return Poll::Pending,
                },
            };
            if let Some(event) = self.admit(receipts, slot) {
                return Poll::Ready(Some(Outgoing { event, frames }));
            }
        }
    }

    /// Like [`try_next`](Self::try_next), with the fan-out's encodings.
    pub fn try_next_outgoing(&mut self) -> Option<Outgoing> {
        loop {
            if self.shared.is_revoked() {
                return None;
            }
            let (receipts, slot, frames) = match self.replay.pop_front() {
                Some(receipts) => match self.admit_replayed(receipts) {
                    Some(event) => {
                        return Some(Outgoing {
                            event,
                            frames: None,
                        });
                    }
                    None => continue,
                },
                None => {
                    let d = self.rx.try_recv()?;
                    (d.receipts, d.slot, Some(d.frames))
                }
            };
            if let Some(event) = self.admit(receipts, slot) {
                return Some(Outgoing { event, frames });
            }
        }
    }

    /// From now on, events handed out are marked delivered (and move the
    /// cursor) only at the next [`written`](Self::written): for an owner
    /// that writes them to a socket and tells when it did. What it never
    /// wrote (the client stopped taking bytes and the stream was cut, the
    /// socket failed) is then neither counted delivered nor skipped by a
    /// resume from the device's cursor (docs/PROTOCOL.md §3.7, §5).
    pub fn hold_marks(&mut self) {
        self.held.get_or_insert_with(Vec::new);
    }

    /// The events handed out since the last call were written: marks them
    /// delivered.
    pub fn written(&mut self) {
        let Some(mut held) = self.held.take() else {
            return;
        };
        if !held.is_empty() {
            let now = Timestamp::now();
            for (receipts, slot) in held.drain(..) {
                self.delivered(&receipts, slot, now);
            }
            // An idle stream keeps no more than a few entries' room.
            if held.capacity() > 64 {
                held = Vec::new();
            }
        }
        self.held = Some(held);
        // After the marks it covers (its last event may also have been one
        // the grants no longer cover, with nothing held).
        if std::mem::take(&mut self.replay_done_held) {
            self.replay_done();
        }
    }

    /// Tells the hub the replay was written, which journals what it wrote
    /// (its device joined those events' audience) without waiting for its
    /// chores.
    fn replay_done(&self) {
        let _ = self
            .guard
            .commands
            .send(Command::ReplayDone(self.shared.id));
    }

    /// [`admit`](Self::admit) for an event of the replay; the last one
    /// tells the hub, once marked.
    fn admit_replayed(&mut self, receipts: Arc<EventReceipts>) -> Option<Arc<Event>> {
        let event = self.admit(receipts, NO_SLOT);
        if self.replay.is_empty() && self.device.is_some() {
            match self.held {
                Some(_) => self.replay_done_held = true,
                None => self.replay_done(),
            }
        }
        event
    }

    /// Marks an event delivered (or holds the mark for [`written`]) and
    /// returns it, unless the stream's grants no longer cover its channel.
    ///
    /// [`written`]: Self::written
    fn admit(&mut self, receipts: Arc<EventReceipts>, slot: u32) -> Option<Arc<Event>> {
        if !self.shared.allows(&receipts.event.channel) {
            return None;
        }
        let event = receipts.event.clone();
        // Moved, not cloned, into the held marks: one fan-out's receipts
        // are shared by all its streams, and every count on them is a
        // cache line bounced between cores.
        match &mut self.held {
            Some(held) => held.push((receipts, slot)),
            None => self.delivered(&receipts, slot, Timestamp::now()),
        }
        Some(event)
    }

    /// Waits for the next event; `None` once the hub ended the stream.
    pub async fn next(&mut self) -> Option<Arc<Event>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }
}
