//! The receipt changes of one channel, kept for a while so that receipts
//! streams (`GET /receipts/:channel`) follow them at their own pace and
//! resume after a break (docs/PROTOCOL.md §5).
//!
//! A bounded channel per listener, as before, had to drop whatever did not
//! fit: one publish to 4,097 offline devices with an acknowledgement
//! deadline made 4,097 overdue notices at once, and the stream ended after
//! 4,096 without a word. Here every change gets a sequence number and goes
//! into one ring per channel; each listener keeps only its position. A
//! listener that falls behind the ring is told what it missed (a gap) and
//! carries on from the oldest change kept; a client that reconnects with the
//! last number it saw gets what came since.
//!
//! Recording costs a lock per change, so a channel records only while
//! somebody listens, and for [`RESUME_GRACE`] after the last listener left
//! (long enough for a client to reconnect). Channels nobody watches pay one
//! atomic load per change.
//!
//! On a cluster node ([`ClusterClock`]) a change's number comes from the
//! log entry that made it, every change is numbered (kept or not), and a
//! channel records while a receipts stream follows it on any node: every
//! node then keeps the same changes under the same numbers, and a stream
//! resumes on any of them (docs/PROTOCOL.md §10).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::event::Timestamp;
use crate::ledger::ReceiptUpdate;
use crate::metrics::HubMetrics;

/// Changes kept per channel: a follower further behind than this is told of
/// a gap. About 100 bytes each.
pub const RECEIPT_LOG_CAPACITY: usize = 65_536;
/// How long a channel keeps recording after its last listener left, so a
/// reconnecting client resumes without a gap.
pub const RESUME_GRACE: Duration = Duration::from_secs(60);
/// Most changes a follower takes per lock.
const BATCH: usize = 256;

/// One channel's recent receipt changes, and who follows them.
#[derive(Debug)]
pub struct ReceiptLog {
    state: Mutex<State>,
    /// Open followers.
    followers: AtomicUsize,
    /// When the last follower left, plus [`RESUME_GRACE`] (µs): recording
    /// goes on until then.
    grace_until: AtomicI64,
    /// A change went unrecorded (nobody followed): whoever resumes from
    /// before now must hear of a gap.
    missed: AtomicBool,
    /// A cluster's numbering and time ([`ClusterClock`]); never set on a
    /// single node.
    clock: Arc<ClusterClock>,
    /// Until when (µs of the cluster's time) a receipts stream on some node
    /// follows this channel: every node records until then.
    shared_until: AtomicI64,
    /// Until when (µs) this node told the cluster it follows the channel.
    announced_until: AtomicI64,
    /// Gaps told to followers, for metrics (shared by a hub's logs).
    gaps: Arc<AtomicU64>,
    /// The hub's measurements, which the channel's receipts keep current
    /// (unacknowledged pairs, overdue notices); a fresh set by default.
    metrics: Arc<HubMetrics>,
}

impl Default for ReceiptLog {
    fn default() -> Self {
        Self::counting_gaps(Arc::default())
    }
}

impl ReceiptLog {
    /// An empty log that counts the gaps it tells in `gaps`.
    pub fn counting_gaps(gaps: Arc<AtomicU64>) -> Self {
        // Nothing before the log existed is known: a resume point from
        // before it (a restart, a channel reclaimed) is a gap.
        let born = u64::try_from(Timestamp::now().0).unwrap_or(0);
        Self {
            state: Mutex::new(State {
                ring: VecDeque::new(),
                last: born,
                dropped_upto: born,
                wakers: HashMap::new(),
                keys: 0,
                closed: false,
            }),
            followers: AtomicUsize::new(0),
            grace_until: AtomicI64::new(0),
            missed: AtomicBool::new(false),
            clock: Arc::default(),
            shared_until: AtomicI64::new(0),
            announced_until: AtomicI64::new(0),
            gaps,
            metrics: Arc::default(),
        }
    }

    /// The same log, counting into the hub's `metrics`.
    pub fn with_metrics(self, metrics: Arc<HubMetrics>) -> Self {
        Self { metrics, ..self }
    }

    /// The same log, numbering its changes by a cluster's `clock`.
    pub fn with_clock(self, clock: Arc<ClusterClock>) -> Self {
        let log = Self { clock, ..self };
        if log.clock.base.load(Ordering::Acquire) != 0 {
            // Nothing before the entry being applied is known here.
            let mut state = lock(&log.state);
            let born = log.before(Timestamp::now());
            state.last = born;
            state.dropped_upto = born;
        }
        log
    }

    /// The hub's measurements this channel's receipts keep current.
    pub fn metrics(&self) -> &HubMetrics {
        &self.metrics
    }
}

/// What numbers a cluster node's receipt changes the same on every node:
/// set before each entry of the shared log is applied. Changes made while
/// applying an entry are numbered from its `base`, a function of the
/// entry's position alone, rather than from each node's clock and what it
/// happened to record before; and whether a channel records is decided at
/// the entry's `time`.
#[derive(Debug, Default)]
pub struct ClusterClock {
    /// The numbers of the current entry's changes start here (0: a single
    /// node, which numbers from its own clock).
    base: AtomicU64,
    /// The current entry's time, µs.
    time: AtomicI64,
}

impl ClusterClock {
    /// The entry at log position (`ms`, `seq`), appended at `time`, is
    /// about to be applied. Its changes are numbered from `ms · 2²⁰ +
    /// seq · 2¹⁴`: increasing with the position, 16,384 numbers per entry
    /// and channel (beyond that they run into the next entry's, still
    /// increasing), and far above a single node's µs numbers, so a
    /// cluster that began as one node never numbers backwards.
    pub fn enter(&self, ms: u64, seq: u64, time: Timestamp) {
        let base = (ms << 20) | (seq.min(63) << 14);
        self.base.fetch_max(base, Ordering::AcqRel);
        self.time.store(time.0, Ordering::Release);
    }

    /// The time of the entry being (or last) applied.
    pub fn time(&self) -> Timestamp {
        Timestamp(self.time.load(Ordering::Acquire))
    }
}

#[derive(Debug)]
struct State {
    /// Changes with their numbers, oldest first.
    ring: VecDeque<(u64, ReceiptUpdate)>,
    /// The last number given.
    last: u64,
    /// Changes up to this number are not (or no longer) in the ring.
    dropped_upto: u64,
    /// Followers waiting for a change, by key: one waker each, which its
    /// follower takes back when dropped (a stream that closed while
    /// waiting must not be held until the channel's next change).
    wakers: HashMap<u64, Waker>,
    /// The last follower key given.
    keys: u64,
    /// Shut down: followers end once they read what is left.
    closed: bool,
}

/// What a follower reads next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Followed {
    /// A change, with its number (the SSE `id`).
    Change(u64, ReceiptUpdate),
    /// Changes after `from` up to (not including) `oldest` are no longer
    /// kept: the follower fell behind, or resumed from too long ago.
    Gap {
        /// The last number the follower had.
        from: u64,
        /// The oldest number still kept (the next it reads).
        oldest: u64,
    },
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every critical section leaves the ring consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ReceiptLog {
    /// Whether changes at `now` are recorded: somebody follows, or left
    /// recently enough to come back.
    pub fn recording(&self, now: Timestamp) -> bool {
        self.followers.load(Ordering::Acquire) > 0
            || now.0 < self.grace_until.load(Ordering::Acquire)
            || (self.clock.base.load(Ordering::Acquire) != 0
                && self.clock.time.load(Ordering::Acquire)
                    < self.shared_until.load(Ordering::Acquire))
    }

    /// The least number a change at `now` gets: the cluster's entry base,
    /// or on a single node the clock in µs.
    fn floor(&self, now: Timestamp) -> u64 {
        match self.clock.base.load(Ordering::Acquire) {
            0 => u64::try_from(now.0).unwrap_or(0),
            base => base,
        }
    }

    /// The number before the first change made now: the cluster entry's
    /// base less one (so its first change is numbered as on every other
    /// node), or on a single node the clock in µs.
    fn before(&self, now: Timestamp) -> u64 {
        match self.clock.base.load(Ordering::Acquire) {
            0 => u64::try_from(now.0).unwrap_or(0),
            base => base - 1,
        }
    }

    /// A receipts stream on some node of the cluster follows the channel
    /// until `until` (cluster time, µs): record until then.
    pub fn shared_until(&self, until: Timestamp) {
        self.shared_until.fetch_max(until.0, Ordering::AcqRel);
    }

    /// Until when the cluster records the channel for a receipts stream.
    pub fn shared_window(&self) -> Timestamp {
        Timestamp(self.shared_until.load(Ordering::Acquire))
    }

    /// Whether this node, which has followers, should tell the cluster
    /// again (its last word runs out within half the grace); notes that it
    /// does.
    pub fn announce_due(&self, now: Timestamp) -> bool {
        if self.followers.load(Ordering::Acquire) == 0 {
            return false;
        }
        let until = self.announced_until.load(Ordering::Acquire);
        if now.plus(RESUME_GRACE / 2).0 < until {
            return false;
        }
        self.announced_until
            .store(now.plus(RESUME_GRACE).0, Ordering::Release);
        true
    }

    /// Records a change (when [`recording`](Self::recording)) and wakes the
    /// followers.
    pub fn push(&self, update: ReceiptUpdate, now: Timestamp) {
        let cluster = self.clock.base.load(Ordering::Acquire) != 0;
        let recording = self.recording(now);
        if !recording && !cluster {
            // Read first: a store per change would bounce the cache line
            // between the writer and the streams marking deliveries.
            if !self.missed.load(Ordering::Relaxed) {
                self.missed.store(true, Ordering::Release);
            }
            return;
        }
        let wakers = {
            let mut state = lock(&self.state);
            if state.closed {
                return;
            }
            self.forget_missed(&mut state, now);
            // Numbers keep increasing across restarts, like event ids, so a
            // number from before one never names a change after it.
            let seq = (state.last + 1).max(self.floor(now));
            state.last = seq;
            if !recording {
                // A cluster node numbers every change, kept or not (only
                // its writer makes them, so the lock costs little): the
                // numbers stay those of every other node.
                state.dropped_upto = seq;
                if !state.ring.is_empty() {
                    state.ring.clear();
                }
                return;
            }
            if state.ring.len() == RECEIPT_LOG_CAPACITY
                && let Some((dropped, _)) = state.ring.pop_front()
            {
                state.dropped_upto = dropped;
            }
            state.ring.push_back((seq, update));
            std::mem::take(&mut state.wakers)
        };
        for waker in wakers.into_values() {
            waker.wake();
        }
    }

    /// A follower that reads the changes after number `after` (`None`: from
    /// now on).
    pub fn follow(self: &Arc<Self>, after: Option<u64>) -> ReceiptFollower {
        self.followers.fetch_add(1, Ordering::AcqRel);
        let mut state = lock(&self.state);
        self.forget_missed(&mut state, Timestamp::now());
        // A number not given yet (a clock stepped back since, another
        // node's clock ahead) would skip the changes numbered up to it:
        // the follower goes on from the last one instead.
        let after = after.map_or(state.last, |after| after.min(state.last));
        state.keys += 1;
        ReceiptFollower {
            log: self.clone(),
            key: state.keys,
            after,
            buffer: VecDeque::new(),
        }
    }

    /// After changes went unrecorded: what is kept no longer follows on
    /// from itself, so everything numbered before now counts as dropped,
    /// and a follower resuming from before hears of a gap.
    fn forget_missed(&self, state: &mut State, now: Timestamp) {
        if self.missed.swap(false, Ordering::AcqRel) {
            let mark = state.last.max(self.before(now));
            state.ring.clear();
            state.last = mark;
            state.dropped_upto = mark;
        }
    }

    /// Ends every follower once it has read what is recorded (shutdown).
    pub fn close(&self) {
        let wakers = {
            let mut state = lock(&self.state);
            state.closed = true;
            std::mem::take(&mut state.wakers)
        };
        for waker in wakers.into_values() {
            waker.wake();
        }
    }

    /// Whether nobody follows and the grace has passed: the log can go.
    pub fn idle(&self, now: Timestamp) -> bool {
        !self.recording(now)
    }
}

/// One receipts stream's position in a [`ReceiptLog`].
#[derive(Debug)]
pub struct ReceiptFollower {
    log: Arc<ReceiptLog>,
    /// Its slot in the log's wakers.
    key: u64,
    /// The number of the last change read (or the resume point).
    after: u64,
    /// Read from the ring, not yet handed out by [`poll_next`].
    ///
    /// [`poll_next`]: ReceiptFollower::poll_next
    buffer: VecDeque<Followed>,
}

impl ReceiptFollower {
    /// The number of the last change read.
    pub fn position(&self) -> u64 {
        self.after
    }

    /// The next change or gap; `Ready(None)` once the log closed and
    /// everything was read.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Followed>> {
        if self.buffer.is_empty() {
            let mut batch = Vec::new();
            if !std::task::ready!(self.poll_batch(cx, &mut batch)) {
                return Poll::Ready(None);
            }
            self.buffer.extend(batch);
        }
        Poll::Ready(self.buffer.pop_front())
    }

    /// Waits for the next change or gap; `None` once the log closed.
    pub async fn next(&mut self) -> Option<Followed> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Takes up to a batch of what comes next into `out`; `Ready(false)`
    /// once the log closed and everything was read.
    pub fn poll_batch(&mut self, cx: &mut Context<'_>, out: &mut Vec<Followed>) -> Poll<bool> {
        let state = lock(&self.log.state);
        // Behind the ring (or resuming from before it): say so once, then go
        // on from the oldest change kept.
        if self.after < state.dropped_upto {
            self.log.gaps.fetch_add(1, Ordering::Relaxed);
            out.push(Followed::Gap {
                from: self.after,
                oldest: state.ring.front().map_or(state.last + 1, |(seq, _)| *seq),
            });
            self.after = state.dropped_upto;
        }
        let start = state.ring.partition_point(|(seq, _)| *seq <= self.after);
        for (seq, update) in state.ring.range(start..).take(BATCH) {
            out.push(Followed::Change(*seq, update.clone()));
            self.after = *seq;
        }
        if !out.is_empty() {
            return Poll::Ready(true);
        }
        if state.closed {
            return Poll::Ready(false);
        }
        let mut state = state;
        let waker = cx.waker();
        if !state
            .wakers
            .get(&self.key)
            .is_some_and(|w| w.will_wake(waker))
        {
            // The one replaced goes after the lock: dropping a waker may
            // drop a task.
            let replaced = state.wakers.insert(self.key, waker.clone());
            drop(state);
            drop(replaced);
        }
        Poll::Pending
    }
}

impl Drop for ReceiptFollower {
    fn drop(&mut self) {
        let until = Timestamp::now().plus(RESUME_GRACE);
        self.log.grace_until.fetch_max(until.0, Ordering::AcqRel);
        self.log.followers.fetch_sub(1, Ordering::AcqRel);
        let waker = lock(&self.log.state).wakers.remove(&self.key);
        drop(waker);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::event::EventId;
    use crate::ledger::{ReceiptChange, ReceiptState};
    use crate::name::{ChannelName, DeviceId};
    use std::task::Wake;

    fn change(n: u64) -> ReceiptUpdate {
        ReceiptUpdate::Change(ReceiptChange {
            id: EventId(n),
            channel: ChannelName::new("c").unwrap(),
            device: DeviceId::new("d").unwrap(),
            state: ReceiptState::Delivered,
            status: None,
            at: Timestamp(1),
        })
    }

    struct Nop;
    impl Wake for Nop {
        fn wake(self: Arc<Self>) {}
    }

    fn read(f: &mut ReceiptFollower) -> Vec<Followed> {
        let waker = Waker::from(Arc::new(Nop));
        let mut cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        loop {
            let mut batch = Vec::new();
            match f.poll_batch(&mut cx, &mut batch) {
                Poll::Ready(true) => out.extend(batch),
                Poll::Ready(false) | Poll::Pending => return out,
            }
        }
    }

    fn ids(items: &[Followed]) -> Vec<u64> {
        items
            .iter()
            .filter_map(|f| match f {
                Followed::Change(_, ReceiptUpdate::Change(c)) => Some(c.id.0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn nothing_is_recorded_while_nobody_follows() {
        let log = Arc::new(ReceiptLog::default());
        log.push(change(1), Timestamp::now());
        let mut f = log.follow(None);
        log.push(change(2), Timestamp::now());
        assert_eq!(ids(&read(&mut f)), [2]);
    }

    #[test]
    fn a_follower_resuming_after_the_grace_hears_of_what_was_not_recorded() {
        let log = Arc::new(ReceiptLog::default());
        let mut f = log.follow(None);
        log.push(change(1), Timestamp::now());
        let got = read(&mut f);
        assert_eq!(ids(&got), [1]);
        let Followed::Change(seen, _) = got[0] else {
            panic!("{got:?}");
        };
        drop(f);
        // Past the grace, nobody follows: this change is not recorded.
        let later = Timestamp::now()
            .plus(RESUME_GRACE)
            .plus(Duration::from_secs(1));
        log.push(change(2), later);
        // A client that saw 1 comes back: it must hear that it missed
        // something, not silently skip 2.
        let mut f = log.follow(Some(seen));
        let got = read(&mut f);
        assert!(
            matches!(got.first(), Some(Followed::Gap { from, .. }) if *from == seen),
            "{got:?}"
        );
        log.push(change(3), Timestamp::now());
        assert_eq!(ids(&read(&mut f)), [3]);
    }

    #[test]
    fn a_follower_resumes_after_the_number_it_saw_within_the_grace() {
        let log = Arc::new(ReceiptLog::default());
        let mut f = log.follow(None);
        log.push(change(1), Timestamp::now());
        let items = read(&mut f);
        let Followed::Change(seen, _) = items[0] else {
            panic!("{items:?}")
        };
        drop(f);
        // Recorded while it is away.
        log.push(change(2), Timestamp::now());
        log.push(change(3), Timestamp::now());
        let mut f = log.follow(Some(seen));
        assert_eq!(ids(&read(&mut f)), [2, 3]);
    }

    #[test]
    fn falling_behind_the_ring_is_a_gap_not_an_end() {
        let log = Arc::new(ReceiptLog::default());
        let mut f = log.follow(None);
        let n = RECEIPT_LOG_CAPACITY as u64 + 10;
        for i in 1..=n {
            log.push(change(i), Timestamp::now());
        }
        let items = read(&mut f);
        assert!(
            matches!(items[0], Followed::Gap { .. }),
            "{:?}",
            &items[..1]
        );
        let got = ids(&items);
        assert_eq!(got.len(), RECEIPT_LOG_CAPACITY);
        assert_eq!((got[0], *got.last().unwrap()), (11, n));
        log.push(change(n + 1), Timestamp::now());
        assert_eq!(ids(&read(&mut f)), [n + 1], "and it goes on");
    }

    #[test]
    fn a_resume_point_older_than_the_ring_is_a_gap() {
        let log = Arc::new(ReceiptLog::default());
        let _keep = log.follow(None);
        log.push(change(1), Timestamp::now());
        let mut f = log.follow(Some(1));
        let items = read(&mut f);
        assert!(
            matches!(items[0], Followed::Gap { from: 1, .. }),
            "a number from before the log: {items:?}"
        );
        assert_eq!(ids(&items), [1]);
    }

    #[test]
    fn closing_ends_followers_after_what_is_recorded() {
        let log = Arc::new(ReceiptLog::default());
        let mut f = log.follow(None);
        log.push(change(1), Timestamp::now());
        log.close();
        let waker = Waker::from(Arc::new(Nop));
        let mut cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        assert_eq!(f.poll_batch(&mut cx, &mut out), Poll::Ready(true));
        out.clear();
        assert_eq!(f.poll_batch(&mut cx, &mut out), Poll::Ready(false));
    }

    #[test]
    fn a_follower_that_goes_away_takes_its_waker_with_it() {
        let log = Arc::new(ReceiptLog::default());
        let mut last = None;
        for _ in 0..1000 {
            let mut f = log.follow(None);
            let task = Arc::new(Nop);
            let waker = Waker::from(task.clone());
            let mut cx = Context::from_waker(&waker);
            assert!(f.poll_batch(&mut cx, &mut Vec::new()).is_pending());
            // Polled again by the same task: still one slot.
            assert!(f.poll_batch(&mut cx, &mut Vec::new()).is_pending());
            drop(f);
            drop(waker);
            last = Some(task);
        }
        let held = lock(&log.state).wakers.len();
        assert_eq!(held, 0, "wakers of followers that went away are held");
        assert_eq!(Arc::strong_count(last.as_ref().unwrap()), 1);
    }

    #[test]
    fn a_resume_point_not_given_yet_goes_on_from_the_last_change() {
        let log = Arc::new(ReceiptLog::default());
        let _keep = log.follow(None);
        let mut ahead = log.follow(Some(u64::MAX));
        log.push(change(1), Timestamp::now());
        assert_eq!(ids(&read(&mut ahead)), [1]);
    }
}
