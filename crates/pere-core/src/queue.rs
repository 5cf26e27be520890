//! The bounded queue between the hub's writer task and one open stream.
//!
//! One per open stream, for hours, so it is small: it lives inside the
//! stream's [`StreamShared`](crate::presence::StreamShared) (no allocation
//! of its own until an event is queued) where tokio's `mpsc` channel cost
//! about 1 KiB per stream (its cache-padded channel state and a first block
//! of 32 slots). The producer (the writer task) takes a short lock per
//! push; the consumer (the stream's task) takes everything queued at once,
//! swapping buffers, so the writer, which pushes to thousands of queues per
//! event, rarely finds one locked. The bound also counts what the consumer
//! took, until it comes back for more: a stream never holds more than its
//! capacity, and no atomic is spent per delivery to keep that count.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::event::FrameCache;
use crate::ledger::EventReceipts;

/// One queued delivery: the event's receipts (which hold the event), the
/// device's slot in its audience, and the encodings shared by the fan-out.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The event and its receipts.
    pub receipts: Arc<EventReceipts>,
    /// The device's audience slot, or [`crate::ledger::NO_SLOT`].
    pub slot: u32,
    /// The transport's encodings of the event, shared by every stream of
    /// this fan-out and freed with the last delivery that holds them.
    pub frames: Arc<FrameCache>,
}

impl Delivery {
    /// What it weighs against a queue's byte bound: an upper estimate of
    /// its encoded size (docs/PROTOCOL.md §3.7).
    pub fn size(&self) -> usize {
        self.receipts.wire_size()
    }
}

/// Items kept allocated once a queue is drained (each of its two buffers):
/// a burst may grow it up to the queue's capacity, an idle stream should
/// not keep that.
const KEEP_ALLOCATED: usize = 16;

/// A bounded single-consumer queue of deliveries; closed when its last
/// sender is gone.
#[derive(Debug)]
pub(crate) struct DeliveryQueue {
    state: Mutex<State>,
    capacity: usize,
    /// Bound in payload bytes, counted like `capacity`.
    max_bytes: usize,
    /// Live [`StreamTx`](crate::presence::StreamTx) handles: the queue
    /// ends when the last one drops.
    senders: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Delivery>,
    /// The consumer, when it found the queue empty.
    waker: Option<Waker>,
    /// No sender left: once drained, the stream ends.
    senders_gone: bool,
    /// The consumer is gone: pushes are refused.
    receiver_gone: bool,
    /// What the consumer held when it last took: it counts against the
    /// capacity until the consumer comes back for more.
    taken: usize,
    /// Payload bytes of `items`, and of what the consumer took.
    bytes: usize,
    taken_bytes: usize,
}

/// What became of a push.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Push {
    /// Queued.
    Queued,
    /// The queue holds `capacity` items, or `max_bytes` of payload: the
    /// consumer is too slow.
    Full,
    /// The consumer is gone.
    Closed,
}

impl DeliveryQueue {
    /// An empty queue of at most `capacity` items (at least one) and
    /// `max_bytes` of payload (one item larger than that passes when the
    /// queue is empty), with no sender yet.
    pub(crate) fn new(capacity: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            max_bytes,
            senders: AtomicUsize::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing panics while holding the lock; if something did, the
        // queue's data is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `delivery` unless the queue is full or its consumer gone.
    pub(crate) fn push(&self, delivery: Delivery) -> Push {
        let waker = {
            let mut state = self.state();
            if state.receiver_gone {
                return Push::Closed;
            }
            let held = state.items.len() + state.taken;
            let size = delivery.size();
            if held >= self.capacity
                || (held > 0 && state.bytes + state.taken_bytes + size > self.max_bytes)
            {
                return Push::Full;
            }
            state.bytes += size;
            state.items.push_back(delivery);
            state.waker.take()
        };
        // Woken outside the lock: the consumer may run at once, elsewhere.
        if let Some(waker) = waker {
            waker.wake();
        }
        Push::Queued
    }

    /// Moves every queued delivery into `batch` (the consumer's own
    /// buffer, whose allocation the queue keeps for the next ones): one
    /// short lock per batch, so the writer, which pushes to thousands of
    /// queues per event, rarely finds one locked. `Ready(false)` once every sender is
    /// gone and nothing was queued. Spends one unit of tokio's cooperative
    /// budget per batch, not per delivery.
    fn poll_take(&self, cx: &mut Context<'_>, batch: &mut VecDeque<Delivery>) -> Poll<bool> {
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let mut state = self.state();
        take_all(&mut state, batch);
        if !batch.is_empty() {
            coop.made_progress();
            return Poll::Ready(true);
        }
        if state.senders_gone {
            coop.made_progress();
            return Poll::Ready(false);
        }
        match &mut state.waker {
            Some(waker) => waker.clone_from(cx.waker()),
            None => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Like [`poll_take`](Self::poll_take) without waiting: whether
    /// anything was taken.
    fn try_take(&self, batch: &mut VecDeque<Delivery>) -> bool {
        let before = batch.len();
        take_all(&mut self.state(), batch);
        batch.len() > before
    }

    /// A sender handle was made (from the first one, or a live one: once
    /// the last is gone the queue has ended for good).
    pub(crate) fn add_sender(&self) {
        let before = self.senders.fetch_add(1, Ordering::Relaxed);
        debug_assert!(before > 0 || !self.state().senders_gone);
    }

    /// A sender handle was dropped: the last one closes the queue.
    pub(crate) fn drop_sender(&self) {
        if self.senders.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let waker = {
            let mut state = self.state();
            state.senders_gone = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The consumer is gone: what is queued is dropped now (it holds
    /// events) and later pushes are refused.
    pub(crate) fn close_receiver(&self) {
        let items = {
            let mut state = self.state();
            state.receiver_gone = true;
            state.waker = None;
            state.bytes = 0;
            std::mem::take(&mut state.items)
        };
        drop(items);
    }

    /// Whether the consumer is gone.
    pub(crate) fn is_receiver_gone(&self) -> bool {
        self.state().receiver_gone
    }
}

/// Moves the queued items behind `batch`'s, in order, and counts what the
/// consumer now holds against the capacity.
fn take_all(state: &mut State, batch: &mut VecDeque<Delivery>) {
    if state.items.is_empty() {
        // Nothing new: each side keeps its allocation. The consumer comes
        // back with an empty batch (`Taken` does), so it holds nothing now.
        state.taken_bytes = batch.iter().map(Delivery::size).sum();
    } else if batch.is_empty() {
        std::mem::swap(&mut state.items, batch);
        state.taken_bytes = state.bytes;
    } else {
        // Not how `Taken` calls it, but the order and counts must hold anyway.
        batch.append(&mut state.items);
        state.taken_bytes = batch.iter().map(Delivery::size).sum();
    }
    state.bytes = 0;
    state.taken = batch.len();
}

/// The consumer's side of a queue: what it took and has not handed out yet.
#[derive(Debug, Default)]
pub(crate) struct Taken(VecDeque<Delivery>);

impl Taken {
    /// The next delivery, taking the queue's items when these are handed
    /// out; `Ready(None)` once every sender is gone and all was handed out.
    pub(crate) fn poll_next(
        &mut self,
        queue: &DeliveryQueue,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Delivery>> {
        if self.0.is_empty() && !std::task::ready!(queue.poll_take(cx, &mut self.0)) {
            return Poll::Ready(None);
        }
        Poll::Ready(self.pop())
    }

    /// The next delivery, if one is queued or held.
    pub(crate) fn try_next(&mut self, queue: &DeliveryQueue) -> Option<Delivery> {
        if self.0.is_empty() && !queue.try_take(&mut self.0) {
            return None;
        }
        self.pop()
    }

    /// A drained batch gives back a burst's memory; a small one keeps its
    /// allocation for reuse.
    fn pop(&mut self) -> Option<Delivery> {
        let delivery = self.0.pop_front()?;
        if self.0.is_empty() && self.0.capacity() > KEEP_ALLOCATED {
            self.0 = VecDeque::new();
        }
        Some(delivery)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::event::{Event, EventId, Timestamp};
    use crate::ledger::EventReceipts;
    use crate::name::ChannelName;
    use crate::receipt_log::ReceiptLog;
    use bytes::Bytes;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::task::Wake;

    fn delivery(id: u64) -> Delivery {
        let event = Event {
            id: EventId(id),
            channel: ChannelName::new("c").unwrap(),
            kind: None,
            device: None,
            time: Timestamp(1),
            payload: Bytes::from(format!("e{id}")),
            idempotency_key: None,
        };
        let watchers = Arc::new(ReceiptLog::default());
        Delivery {
            receipts: Arc::new(EventReceipts::new(Arc::new(event), Arc::from([]), watchers)),
            slot: 0,
            frames: Arc::default(),
        }
    }

    fn id(d: Option<Delivery>) -> Option<u64> {
        d.map(|d| d.receipts.id().0)
    }

    /// The consumer's side, as `StreamRx` uses it, giving ids.
    #[derive(Default)]
    struct Consumer(Taken);

    impl Consumer {
        fn try_pop(&mut self, q: &DeliveryQueue) -> Option<u64> {
            id(self.0.try_next(q))
        }

        fn poll_pop(&mut self, q: &DeliveryQueue, cx: &mut Context<'_>) -> Poll<Option<u64>> {
            self.0.poll_next(q, cx).map(id)
        }
    }

    #[derive(Default)]
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    impl Flag {
        fn taken(&self) -> bool {
            self.0.swap(false, Ordering::SeqCst)
        }
    }

    #[test]
    fn delivers_in_order_up_to_its_capacity() {
        let q = DeliveryQueue::new(3, usize::MAX);
        q.add_sender();
        let mut c = Consumer::default();
        for i in 1..=3 {
            assert_eq!(q.push(delivery(i)), Push::Queued);
        }
        assert_eq!(q.push(delivery(4)), Push::Full);
        // What the consumer took still counts until it comes back for more.
        assert_eq!(c.try_pop(&q), Some(1));
        assert_eq!(q.push(delivery(4)), Push::Full);
        assert_eq!(c.try_pop(&q), Some(2));
        assert_eq!(c.try_pop(&q), Some(3));
        assert_eq!(c.try_pop(&q), None);
        for i in 4..=6 {
            assert_eq!(q.push(delivery(i)), Push::Queued);
        }
        assert_eq!(q.push(delivery(7)), Push::Full);
        let ids: Vec<_> = std::iter::from_fn(|| c.try_pop(&q)).collect();
        assert_eq!(ids, [4, 5, 6]);
        assert_eq!(q.state().taken, 0);
    }

    #[test]
    fn a_waiting_consumer_is_woken_by_a_push_and_by_the_last_sender_leaving() {
        let q = DeliveryQueue::new(8, usize::MAX);
        q.add_sender();
        q.add_sender();
        let mut c = Consumer::default();
        let flag = Arc::new(Flag::default());
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(c.poll_pop(&q, &mut cx).is_pending());
        q.push(delivery(1));
        assert!(flag.taken(), "a push wakes the consumer");
        assert_eq!(ready(c.poll_pop(&q, &mut cx)), Some(1));
        assert!(c.poll_pop(&q, &mut cx).is_pending());
        q.drop_sender();
        assert!(!flag.taken(), "one sender is still there");
        assert!(c.poll_pop(&q, &mut cx).is_pending());
        q.push(delivery(2));
        q.drop_sender();
        assert!(flag.taken());
        // What was queued before the end is still delivered, then the end.
        assert_eq!(ready(c.poll_pop(&q, &mut cx)), Some(2));
        assert!(matches!(c.poll_pop(&q, &mut cx), Poll::Ready(None)));
    }

    #[test]
    fn a_gone_consumer_frees_what_was_queued_and_refuses_more() {
        let q = DeliveryQueue::new(8, usize::MAX);
        q.add_sender();
        let d = delivery(1);
        let receipts = d.receipts.clone();
        q.push(d);
        assert_eq!(Arc::strong_count(&receipts), 2);
        assert!(!q.is_receiver_gone());
        q.close_receiver();
        assert!(q.is_receiver_gone());
        assert_eq!(Arc::strong_count(&receipts), 1, "the queued event is freed");
        assert_eq!(q.push(delivery(2)), Push::Closed);
    }

    #[test]
    fn a_drained_queue_gives_back_a_burst_s_memory() {
        let q = DeliveryQueue::new(4096, usize::MAX);
        q.add_sender();
        let mut c = Consumer::default();
        for i in 0..1000 {
            q.push(delivery(i));
        }
        while c.try_pop(&q).is_some() {}
        assert_eq!(c.0.0.capacity(), 0);
        assert_eq!(q.state().items.capacity(), 0, "swapped for the empty batch");
        // Small batches keep their allocations, to be reused.
        for i in 0..3 {
            q.push(delivery(i));
        }
        while c.try_pop(&q).is_some() {}
        assert!(c.0.0.capacity() >= 3);
    }

    #[test]
    fn a_take_behind_a_non_empty_batch_keeps_the_order() {
        let q = DeliveryQueue::new(8, usize::MAX);
        q.add_sender();
        let mut taken = Taken::default();
        q.push(delivery(1));
        q.push(delivery(2));
        assert!(q.try_take(&mut taken.0));
        assert_eq!(id(taken.pop()), Some(1));
        q.push(delivery(3));
        assert!(q.try_take(&mut taken.0));
        assert_eq!(q.state().taken, 2);
        let ids: Vec<_> = std::iter::from_fn(|| id(taken.pop())).collect();
        assert_eq!(ids, [2, 3]);
    }

    fn sized(id: u64, bytes: usize) -> Delivery {
        let mut d = delivery(id);
        let event = &d.receipts.event;
        let event = Event {
            id: event.id,
            channel: event.channel.clone(),
            kind: None,
            device: None,
            time: event.time,
            payload: Bytes::from(vec![b'x'; bytes]),
            idempotency_key: None,
        };
        let watchers = Arc::new(ReceiptLog::default());
        d.receipts = Arc::new(EventReceipts::new(Arc::new(event), Arc::from([]), watchers));
        d
    }

    #[test]
    fn bytes_bound_the_queue_as_well_as_events() {
        // Sizes are encoded estimates: the payload plus a fixed overhead.
        let w = |n: usize| sized(0, n).size();
        let bound = 2 * w(400) + w(200);
        let q = DeliveryQueue::new(100, bound);
        q.add_sender();
        let mut c = Consumer::default();
        assert_eq!(q.push(sized(1, 400)), Push::Queued);
        assert_eq!(q.push(sized(2, 400)), Push::Queued);
        assert_eq!(q.push(sized(3, 400)), Push::Full, "over the bound");
        assert_eq!(q.push(sized(3, 200)), Push::Queued, "exactly at the bound");
        // Taken, not yet handed out: still counted.
        assert_eq!(c.try_pop(&q), Some(1));
        assert_eq!(q.push(sized(4, 1)), Push::Full);
        assert_eq!(c.try_pop(&q), Some(2));
        assert_eq!(c.try_pop(&q), Some(3));
        assert_eq!(c.try_pop(&q), None);
        // Drained: the bytes are free again, and one event larger than the
        // whole bound still passes an empty queue (it could never pass
        // otherwise), but nothing joins it.
        assert_eq!(q.push(sized(5, 5 * bound)), Push::Queued);
        assert_eq!(q.push(sized(6, 1)), Push::Full);
        assert_eq!(c.try_pop(&q), Some(5));
        assert_eq!(c.try_pop(&q), None);
        assert_eq!(q.push(sized(6, 600)), Push::Queued);
        assert_eq!(
            q.push(sized(7, 400)),
            Push::Queued,
            "nothing taken is still counted"
        );
        assert_eq!(c.try_pop(&q), Some(6));
        assert_eq!(c.try_pop(&q), Some(7));
        assert_eq!(c.try_pop(&q), None);
        assert_eq!(q.push(sized(8, 999)), Push::Queued);
        assert_eq!(q.push(sized(9, 1)), Push::Queued);
    }

    #[test]
    fn a_payload_of_line_breaks_weighs_what_it_encodes_to() {
        let lines = sized(1, 0);
        let event = Event {
            payload: Bytes::from(vec![b'\n'; 1000]),
            ..(*lines.receipts.event).clone()
        };
        let receipts = EventReceipts::new(Arc::new(event), Arc::from([]), Arc::default());
        assert!(receipts.wire_size() >= 7 * 1000, "{}", receipts.wire_size());
    }

    #[test]
    fn concurrent_producers_lose_nothing_and_keep_their_order() {
        const PRODUCERS: u64 = 4;
        const EACH: u64 = 2_000;
        let q = Arc::new(DeliveryQueue::new(8, usize::MAX));
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                q.add_sender();
                let q = q.clone();
                std::thread::spawn(move || {
                    for n in 0..EACH {
                        let mut tries = 0u32;
                        while q.push(delivery(p * 1_000_000 + n)) == Push::Full {
                            tries += 1;
                            assert!(tries < 10_000_000, "the consumer stalled");
                            std::thread::yield_now();
                        }
                    }
                    q.drop_sender();
                })
            })
            .collect();
        let mut c = Consumer::default();
        let mut next = [0u64; PRODUCERS as usize];
        let flag = Arc::new(Flag::default());
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            assert!(std::time::Instant::now() < deadline, "no end: {next:?}");
            let held = {
                let state = q.state();
                state.items.len() + state.taken
            };
            assert!(held <= 8, "{held} items held with a capacity of 8");
            match c.poll_pop(&q, &mut cx) {
                Poll::Ready(Some(id)) => {
                    let (p, n) = ((id / 1_000_000) as usize, id % 1_000_000);
                    assert_eq!(n, next[p], "producer {p}'s order");
                    next[p] += 1;
                }
                Poll::Ready(None) => break,
                Poll::Pending => std::thread::yield_now(),
            }
        }
        for p in producers {
            p.join().unwrap();
        }
        assert_eq!(next, [EACH; PRODUCERS as usize]);
    }

    fn ready<T>(poll: Poll<T>) -> T {
        match poll {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("expected Ready"),
        }
    }
}
