//! Memberships and presence: which devices belong to a subscription, where
//! their durable cursor stands, and whether they are online.
//!
//! A [`Member`] lives in the hub's state (owned by its writer task). The
//! per-stream counters that move on every delivery live in [`StreamShared`],
//! written by the stream's own task with atomics, so delivering never takes
//! the hub's lock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::event::{EventId, Timestamp};
use crate::name::{ChannelName, DeviceId, Pattern};
pub use crate::queue::Delivery;
use crate::queue::{DeliveryQueue, Push, Taken};

/// What a device did last, PERE's `op` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Opened a stream (`GET /feed`).
    Feed,
    /// Sent a receipt (`POST /feedback`).
    Feedback,
    /// Closed its last stream.
    Left,
}

/// The part of an open stream that its task updates on every delivery and
/// the hub reads for presence and cursors.
#[derive(Debug)]
pub struct StreamShared {
    /// Hub-unique stream number.
    pub id: u64,
    /// The device, unless anonymous.
    pub device: Option<DeviceId>,
    /// Highest event id written to the stream.
    pub delivered_upto: AtomicU64,
    /// When that happened (µs), 0 if never.
    pub delivered_at: AtomicI64,
    /// Events written, for metrics.
    pub delivered: AtomicU64,
    /// Of those, events written to its device before (redeliveries).
    pub redelivered: AtomicU64,
    /// Highest event id queued by the writer (dedupes an event that matches
    /// several of the stream's subscriptions). Writer task only.
    pub enqueued_upto: AtomicU64,
    /// Set by the writer when it ends the stream for good (token revoked,
    /// membership removed, too slow): the stream yields nothing more, not
    /// even what is already queued or left of its replay.
    revoked: AtomicBool,
    /// Whether `allowed` applies: the fast path of every delivery is this
    /// one load.
    restricted: AtomicBool,
    /// Whether its writes mark the device's receipts themselves (a single
    /// node); a cluster node's are marked through the log (see
    /// `Subscription::delivered`). Here rather than in the subscription,
    /// where it cost every idle stream 8 bytes: this record has room.
    pub(crate) marks: bool,
    /// When the stream's token lost some grants: only channels matching one
    /// of these patterns are still delivered. Written by the writer task,
    /// read on delivery.
    allowed: Mutex<Option<Arc<[Pattern]>>>,
    /// The events queued for the stream.
    queue: DeliveryQueue,
    /// Why the hub ended the stream, when the client must be told more than
    /// the end itself: the data of a last `pere.gap`.
    farewell: Mutex<Option<Arc<str>>>,
}

impl StreamShared {
    /// A fresh stream record, whose queue holds at most `capacity` events
    /// and `max_bytes` of payload.
    pub fn new(id: u64, device: Option<DeviceId>, capacity: usize, max_bytes: usize) -> Self {
        Self {
            id,
            device,
            delivered_upto: AtomicU64::new(0),
            delivered_at: AtomicI64::new(0),
            delivered: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            enqueued_upto: AtomicU64::new(0),
            revoked: AtomicBool::new(false),
            restricted: AtomicBool::new(false),
            marks: true,
            allowed: Mutex::new(None),
            queue: DeliveryQueue::new(capacity, max_bytes),
            farewell: Mutex::new(None),
        }
    }

    /// Leaves the stream a last `pere.gap` (its JSON data) to write once
    /// its queue ends.
    pub fn say_farewell(&self, data: String) {
        *self.farewell.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::from(data));
    }

    /// Takes the last word left by [`say_farewell`](Self::say_farewell).
    pub fn take_farewell(&self) -> Option<Arc<str>> {
        self.farewell
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Ends the stream for good: its token was revoked (or no longer covers
    /// anything it asked for), its membership removed, or it was too slow.
    /// Queued and replayed events still to come are not delivered: the
    /// cursor the hub folds when it ends the stream must be the last
    /// event written.
    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
    }

    /// Whether [`revoke`](Self::revoke) was called.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Limits deliveries to channels matching `allowed` (`None` lifts the
    /// limit).
    pub fn restrict(&self, allowed: Option<Arc<[Pattern]>>) {
        let on = allowed.is_some();
        *self.allowed.lock().unwrap_or_else(|e| e.into_inner()) = allowed;
        self.restricted.store(on, Ordering::Release);
    }

    /// Limits deliveries to the channels of `subs`, the subscriptions the
    /// stream still serves (one was removed), within any limit its token
    /// set. What it had queued or left of its replay on the removed one is
    /// then skipped: a write would mark the removed device delivered again.
    pub fn narrow_to(&self, subs: &[Pattern]) {
        let mut allowed = self.allowed.lock().unwrap_or_else(|e| e.into_inner());
        let narrowed: Vec<Pattern> = match allowed.as_deref() {
            None => subs.to_vec(),
            // Each pair's common part: the narrower of two nested patterns,
            // else (two that only overlap, `a.*` and `*.b`) the grant, a
            // little wide on the safe side of the token.
            Some(granted) => granted
                .iter()
                .flat_map(|g| {
                    subs.iter().filter_map(move |s| {
                        if s.is_covered_by(g) {
                            Some(s.clone())
                        } else if g.overlaps(s) {
                            Some(g.clone())
                        } else {
                            None
                        }
                    })
                })
                .collect(),
        };
        *allowed = Some(narrowed.into());
        self.restricted.store(true, Ordering::Release);
    }

    /// Whether an event on `channel` may be delivered to this stream.
    pub fn allows(&self, channel: &ChannelName) -> bool {
        if !self.restricted.load(Ordering::Acquire) {
            return true;
        }
        self.allowed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|p| p.matches(channel)))
    }

    /// Highest event id written to the stream.
    pub fn delivered_upto(&self) -> EventId {
        EventId(self.delivered_upto.load(Ordering::Acquire))
    }

    /// When the last event was written, if any.
    pub fn delivered_at(&self) -> Option<Timestamp> {
        match self.delivered_at.load(Ordering::Acquire) {
            0 => None,
            t => Some(Timestamp(t)),
        }
    }
}

/// A stream's queue, as the hub holds it: the stream ends (once it has
/// written what is queued) when the hub drops the last of these.
#[derive(Debug)]
pub struct StreamTx {
    /// The stream's shared counters, and its queue.
    pub shared: Arc<StreamShared>,
}

impl StreamTx {
    /// The sending side of `shared`'s queue. Crate-only: the hub makes
    /// one pair per stream, and a queue whose senders are all gone has
    /// ended for good.
    pub(crate) fn new(shared: Arc<StreamShared>) -> Self {
        shared.queue.add_sender();
        Self { shared }
    }

    /// Queues a delivery; `Full` when the stream is too slow for its queue.
    pub(crate) fn push(&self, delivery: Delivery) -> Push {
        self.shared.queue.push(delivery)
    }

    /// Whether the stream's reader is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.queue.is_receiver_gone()
    }
}

impl Clone for StreamTx {
    fn clone(&self) -> Self {
        Self::new(self.shared.clone())
    }
}

impl Drop for StreamTx {
    fn drop(&mut self) {
        self.shared.queue.drop_sender();
    }
}

/// A stream's queue, as its reader holds it: dropping it frees what is
/// queued and refuses more.
#[derive(Debug)]
pub struct StreamRx {
    shared: Arc<StreamShared>,
    /// Deliveries taken from the queue in one go, not yet handed out.
    batch: Taken,
}

impl StreamRx {
    /// The receiving side of `shared`'s queue: its only consumer.
    pub(crate) fn new(shared: Arc<StreamShared>) -> Self {
        Self {
            shared,
            batch: Taken::default(),
        }
    }

    /// The next delivery; `Ready(None)` once the hub dropped the stream
    /// and its queue is drained.
    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Delivery>> {
        self.batch.poll_next(&self.shared.queue, cx)
    }

    /// The next delivery, if one is queued.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        self.batch.try_next(&self.shared.queue)
    }
}

impl Drop for StreamRx {
    fn drop(&mut self) {
        self.shared.queue.close_receiver();
    }
}

/// A device's membership of one subscription, with its presence.
#[derive(Debug, Clone)]
pub struct Member {
    /// Whether it is a member (in audiences) or only known from receipts.
    pub is_member: bool,
    /// The head when it joined: events above it are its own.
    pub since: EventId,
    /// When it joined.
    pub joined_at: Timestamp,
    /// The durable cursor: the last event delivered to it (folded in from
    /// its streams when they close and at checkpoints).
    pub cursor: EventId,
    /// When the cursor last moved.
    pub cursor_at: Option<Timestamp>,
    /// The cursor as last written to the journal.
    pub journaled_cursor: EventId,
    /// Its open streams on this node.
    pub streams: Vec<StreamTx>,
    /// Its open streams per node, this one included (a single node counts
    /// its own only): what presence says, the same on every node of a
    /// cluster.
    pub nodes: NodeCounts,
    /// When the current run of connections began.
    pub connected_at: Option<Timestamp>,
    /// When its last connection closed (membership TTL counts from here).
    pub disconnected_at: Option<Timestamp>,
    /// Last activity: connect, disconnect or receipt.
    pub last_seen: Timestamp,
    /// Last event it acknowledged, and when. Once it acknowledged anything
    /// it is an *acknowledging* member: see `unacked`.
    pub last_acked: Option<(EventId, Timestamp)>,
    /// For an acknowledging member, every event of its audience it has not
    /// acknowledged yet, in id order: what it is sent again when it comes
    /// back without `Last-Event-ID` (docs/PROTOCOL.md §5). Empty, and not
    /// kept, for a member that never acknowledged.
    pub unacked: VecDeque<EventId>,
    /// The oldest of its unacknowledged events that retention dropped before
    /// it got them again: told as a `pere.gap` when it comes back.
    pub lost_from: Option<EventId>,
    /// PERE's `op`: what it did last.
    pub op: Op,
    /// PERE's `at`: when.
    pub op_at: Timestamp,
    /// PERE's `Last-Event-Id`: the id it sent with its last feed or feedback.
    pub last_event_id: Option<String>,
}

/// A member's open streams per node. The first node's count is kept in
/// place, others in a list: a single node (one entry, for ever) then pays
/// no allocation per member, where a list of one cost an idle device
/// about 110 bytes (the embedded store must not pay for the cluster).
#[derive(Debug, Clone, Default)]
pub struct NodeCounts {
    first: Option<(Arc<str>, u32)>,
    rest: Vec<(Arc<str>, u32)>,
}

impl NodeCounts {
    /// Each node with streams open, and how many.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32)> {
        self.first
            .iter()
            .chain(&self.rest)
            .map(|(node, n)| (&**node, *n))
    }

    /// Open streams on every node.
    pub fn total(&self) -> usize {
        self.iter().map(|(_, n)| n as usize).sum()
    }

    /// Counts as [`NodeCounts::iter`] lists them (a cluster snapshot's);
    /// nodes without a stream are left out.
    pub(crate) fn from_counts(counts: impl IntoIterator<Item = (Arc<str>, u32)>) -> Self {
        let mut all = counts.into_iter().filter(|(_, n)| *n > 0);
        NodeCounts {
            first: all.next(),
            rest: all.collect(),
        }
    }

    /// One more stream on `node`.
    fn add(&mut self, node: &Arc<str>) {
        match &mut self.first {
            None => self.first = Some((node.clone(), 1)),
            Some((n, count)) if n == node => *count += 1,
            Some(_) => match self.rest.iter_mut().find(|(n, _)| n == node) {
                Some((_, count)) => *count += 1,
                None => self.rest.push((node.clone(), 1)),
            },
        }
    }

    /// One stream fewer on `node` (all of them with `all`); `false` when
    /// it had none.
    fn remove(&mut self, node: &Arc<str>, all: bool) -> bool {
        let count = match &mut self.first {
            Some((n, count)) if n == node => count,
            _ => match self.rest.iter_mut().find(|(n, _)| n == node) {
                Some((_, count)) => count,
                None => return false,
            },
        };
        *count = if all { 0 } else { count.saturating_sub(1) };
        if *count == 0 {
            match self.first.as_ref().is_some_and(|(n, _)| n == node) {
                true => self.first = self.rest.pop(),
                false => self.rest.retain(|(n, _)| n != node),
            }
        }
        true
    }
}

impl Member {
    /// A member that joined at `head` at `now`.
    pub fn joined(head: EventId, now: Timestamp) -> Self {
        Self {
            is_member: true,
            since: head,
            joined_at: now,
            cursor: head,
            cursor_at: None,
            journaled_cursor: head,
            streams: Vec::new(),
            nodes: NodeCounts::default(),
            connected_at: None,
            disconnected_at: Some(now),
            last_seen: now,
            last_acked: None,
            unacked: VecDeque::new(),
            lost_from: None,
            op: Op::Feed,
            op_at: now,
            last_event_id: None,
        }
    }

    /// Whether it ever acknowledged an event here, and so is sent again what
    /// it has not acknowledged.
    pub fn acknowledges(&self) -> bool {
        self.last_acked.is_some()
    }

    /// Forgets an acknowledged event from `unacked`.
    pub fn forget_unacked(&mut self, id: EventId) {
        if self.unacked.front() == Some(&id) {
            // Devices acknowledge in order, mostly.
            self.unacked.pop_front();
        } else if let Ok(i) = self.unacked.binary_search(&id) {
            self.unacked.remove(i);
        }
    }

    /// The cursor including what its open streams delivered since.
    pub fn effective_cursor(&self) -> (EventId, Option<Timestamp>) {
        let mut best = (self.cursor, self.cursor_at);
        for s in &self.streams {
            let upto = s.shared.delivered_upto();
            if upto > best.0 {
                best = (upto, s.shared.delivered_at());
            }
        }
        best
    }

    /// Number of open streams, on every node.
    pub fn connections(&self) -> usize {
        self.nodes.total()
    }

    /// A stream of it opened on `node` at `now`.
    pub fn attach(&mut self, node: &Arc<str>, now: Timestamp) {
        if self.connections() == 0 {
            self.connected_at = Some(now);
        }
        self.nodes.add(node);
        self.disconnected_at = None;
        self.last_seen = now;
        self.op = Op::Feed;
        self.op_at = now;
    }

    /// A stream of it on `node` closed at `now` (or all of them, when the
    /// node is gone). Returns whether that was its last stream anywhere.
    pub fn detach(&mut self, node: &Arc<str>, all: bool, now: Timestamp) -> bool {
        if !self.nodes.remove(node, all) {
            return false;
        }
        self.last_seen = now;
        if self.connections() > 0 {
            return false;
        }
        self.connected_at = None;
        self.disconnected_at = Some(now);
        self.op = Op::Left;
        self.op_at = now;
        true
    }

    /// The presence view of this member.
    pub fn presence(&self) -> Presence {
        let (cursor, cursor_at) = self.effective_cursor();
        // The cursor starts where the device joined: at it, nothing was
        // written in order yet.
        let mut delivered = (cursor > self.since).then_some((cursor, cursor_at));
        if let Some((acked, at)) = self.last_acked
            && delivered.is_none_or(|(d, _)| acked > d)
        {
            // An acknowledgement implies the delivery, which a cluster
            // node learns up to a checkpoint later, and which the cursor
            // does not show for an event replayed from before the device
            // joined: never show an acknowledged event as not delivered.
            delivered = Some((acked, Some(at)));
        }
        let (last_delivered, last_delivered_at) = delivered.unzip();
        Presence {
            member: self.is_member,
            online: self.connections() > 0,
            connections: self.connections(),
            joined_at: self.is_member.then_some(self.joined_at),
            connected_at: self.connected_at,
            last_seen: self.last_seen,
            last_delivered,
            last_delivered_at: last_delivered_at.flatten(),
            last_acked: self.last_acked.map(|(id, _)| id),
            last_acked_at: self.last_acked.map(|(_, at)| at),
            op: self.op,
            at: self.op_at,
            last_event_id: self.last_event_id.clone(),
        }
    }
}

/// A device's presence on one subscription (docs/PROTOCOL.md §5 and PERE's fields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presence {
    /// Whether it is a member (in audiences).
    pub member: bool,
    /// Whether it has at least one open stream.
    pub online: bool,
    /// Open streams.
    pub connections: usize,
    /// When it became a member.
    pub joined_at: Option<Timestamp>,
    /// When its current run of connections began.
    pub connected_at: Option<Timestamp>,
    /// Last activity.
    pub last_seen: Timestamp,
    /// Last event delivered to it.
    pub last_delivered: Option<EventId>,
    /// When.
    pub last_delivered_at: Option<Timestamp>,
    /// Last event it acknowledged.
    pub last_acked: Option<EventId>,
    /// When.
    pub last_acked_at: Option<Timestamp>,
    /// PERE's `op`.
    pub op: Op,
    /// PERE's `at`.
    pub at: Timestamp,
    /// PERE's `Last-Event-Id`.
    pub last_event_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_narrowed_to_its_remaining_subscriptions_keeps_its_token_limit() {
        let pats = |p: &[&str]| {
            p.iter()
                .map(|p| Pattern::new(p).unwrap())
                .collect::<Vec<_>>()
        };
        let allows = |s: &StreamShared, c: &str| s.allows(&ChannelName::new(c).unwrap());
        let open = StreamShared::new(1, None, 8, 1024);
        open.narrow_to(&pats(&["b", "c.*"]));
        assert!(allows(&open, "b") && allows(&open, "c.x"));
        assert!(!allows(&open, "a") && !allows(&open, "c"));
        // A token that grants only `c.eu` and `d.**`: the common part.
        let granted = StreamShared::new(2, None, 8, 1024);
        granted.restrict(Some(pats(&["c.eu", "d.**"]).into()));
        granted.narrow_to(&pats(&["b", "c.*", "d.x.*"]));
        assert!(allows(&granted, "c.eu") && allows(&granted, "d.x.y"));
        for refused in ["b", "c.us", "d.y", "d.x"] {
            assert!(!allows(&granted, refused), "{refused}");
        }
    }

    fn counts(c: &NodeCounts) -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = c.iter().map(|(n, k)| (n.to_string(), k)).collect();
        v.sort();
        v
    }

    #[test]
    fn node_counts_keep_every_node_s_streams_and_drop_nodes_at_zero() {
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        let mut n = NodeCounts::default();
        assert!(!n.remove(&a, false));
        n.add(&a);
        n.add(&a);
        assert!(n.rest.is_empty(), "one node never allocates");
        n.add(&b);
        n.add(&c);
        assert_eq!(n.total(), 4);
        // The inline node leaves: another takes its place.
        assert!(n.remove(&a, true));
        assert_eq!(counts(&n), [("b".into(), 1), ("c".into(), 1)]);
        assert!(n.remove(&c, false));
        assert!(n.remove(&b, false));
        assert_eq!(n.total(), 0);
        assert!(n.first.is_none() && n.rest.is_empty());
        assert!(!n.remove(&b, false));
        n.add(&b);
        n.add(&a);
        assert!(n.remove(&a, false));
        assert_eq!(counts(&n), [("b".into(), 1)]);
    }
}
