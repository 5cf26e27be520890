//! What the hub retains of events: each channel's ledger of receipts, the
//! same receipts by id, what retention dropped (also of channels it
//! reclaimed), and each channel's receipt changes for receipts streams.
//! One structure because an event enters and leaves the channel's ledger
//! and the index by id together, and a channel's watchers and tombstone
//! live and die with its ledger; the fields are private so that only the
//! methods here, which keep those in step, change them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::event::{Event, EventId, Timestamp};
use crate::ledger::{EventReceipts, PartsCursor, PartsError, ReceiptParts};
use crate::log::Evicted;
use crate::metrics::HubMetrics;
use crate::name::{ChannelName, DeviceId, EventType, Pattern};
use crate::receipt_log::{ClusterClock, ReceiptLog};

/// One channel's retained events, oldest first.
#[derive(Debug, Default)]
pub(in crate::hub) struct ChannelLedger {
    /// Its retained events' receipts, in id order.
    pub(in crate::hub) receipts: VecDeque<Arc<EventReceipts>>,
    /// Highest id dropped for retention.
    pub(in crate::hub) evicted_upto: EventId,
}

/// Most reclaimed channels remembered one by one; beyond, they are folded
/// into one floor for all of them (a gap told conservatively).
const MAX_TOMBSTONES: usize = 100_000;

/// What the hub remembers of channels it reclaimed: which ids retention
/// dropped there, so a client resuming below them still hears of the gap.
/// A few dozen bytes each instead of a ledger, and bounded.
#[derive(Debug, Default)]
struct Tombstones {
    upto: HashMap<ChannelName, EventId>,
    order: VecDeque<ChannelName>,
    /// The highest id dropped on any channel forgotten past the bound.
    floor: EventId,
}

impl Tombstones {
    /// Remembers what retention dropped on a reclaimed channel (nothing
    /// for one it never dropped from), forgetting the oldest past the bound.
    fn add(&mut self, channel: ChannelName, upto: EventId) {
        if upto == EventId::ZERO {
            return;
        }
        if self.upto.insert(channel.clone(), upto).is_none() {
            self.order.push_back(channel);
        }
        while self.order.len() > MAX_TOMBSTONES {
            if let Some(old) = self.order.pop_front()
                && let Some(id) = self.upto.remove(&old)
            {
                self.floor = self.floor.max(id);
            }
        }
    }

    /// Takes a reclaimed channel's record back (it has events again).
    fn take(&mut self, channel: &ChannelName) -> EventId {
        match self.upto.remove(channel) {
            Some(id) => {
                self.order.retain(|c| c != channel);
                id
            }
            None => EventId::ZERO,
        }
    }

    /// Whether a client resuming after `after` on `pattern` may have lost
    /// events of a reclaimed channel.
    fn lost_after(&self, pattern: &Pattern, after: EventId) -> bool {
        if after < self.floor {
            return true;
        }
        match pattern.exact() {
            Some(channel) => self.upto.get(channel).is_some_and(|upto| after < *upto),
            None => self
                .upto
                .iter()
                .any(|(channel, upto)| after < *upto && pattern.matches(channel)),
        }
    }
}

/// Retained events' receipts, by channel and by id, and what retention
/// dropped.
#[derive(Debug)]
pub(in crate::hub) struct Ledgers {
    channels: HashMap<ChannelName, ChannelLedger>,
    /// The receipts of `channels`' events, by id.
    by_id: HashMap<EventId, Arc<EventReceipts>>,
    /// Channels reclaimed once retention emptied them, with the highest id
    /// retention dropped there (for `pere.gap`).
    tombstones: Tombstones,
    /// Each channel's receipt changes, for receipts streams.
    watchers: HashMap<ChannelName, Arc<ReceiptLog>>,
    /// Gaps told to receipts streams that fell behind (metrics).
    receipt_gaps: Arc<AtomicU64>,
    /// The hub's measurements, handed to each channel's receipt changes.
    metrics: Arc<HubMetrics>,
    /// A cluster's numbering of receipt changes, handed to each channel's.
    clock: Arc<ClusterClock>,
}

impl Ledgers {
    /// No event retained yet; `metrics` goes to every channel's watchers.
    pub(in crate::hub) fn new(metrics: Arc<HubMetrics>) -> Self {
        Self {
            channels: HashMap::new(),
            by_id: HashMap::new(),
            tombstones: Tombstones::default(),
            watchers: HashMap::new(),
            receipt_gaps: Arc::default(),
            metrics,
            clock: Arc::default(),
        }
    }

    /// The receipts of retained event `id`.
    pub(in crate::hub) fn event(&self, id: &EventId) -> Option<&Arc<EventReceipts>> {
        self.by_id.get(id)
    }

    /// Whether event `id` is still retained.
    pub(in crate::hub) fn holds(&self, id: &EventId) -> bool {
        self.by_id.contains_key(id)
    }

    /// How many events are retained.
    pub(in crate::hub) fn retained(&self) -> usize {
        self.by_id.len()
    }

    /// Every channel with a ledger (some may have no event left until the
    /// next reclaim).
    pub(in crate::hub) fn channels(&self) -> impl Iterator<Item = (&ChannelName, &ChannelLedger)> {
        self.channels.iter()
    }

    /// `channel`'s ledger, if it has one.
    pub(in crate::hub) fn channel(&self, channel: &ChannelName) -> Option<&ChannelLedger> {
        self.channels.get(channel)
    }

    /// Opens `channel`'s ledger for a publish, unless `limit` channels have
    /// one already: then returns false. Opened before the event is applied,
    /// so later publishes of the same batch count it; a channel that was
    /// reclaimed takes back what retention had dropped there.
    pub(in crate::hub) fn open(&mut self, channel: &ChannelName, limit: usize) -> bool {
        if self.channels.contains_key(channel) {
            return true;
        }
        if self.channels.len() >= limit {
            return false;
        }
        let evicted_upto = self.tombstones.take(channel);
        self.channels.insert(
            channel.clone(),
            ChannelLedger {
                receipts: VecDeque::new(),
                evicted_upto,
            },
        );
        true
    }

    /// Retains a new event's receipts, in its channel and by id.
    pub(in crate::hub) fn record(&mut self, receipts: &Arc<EventReceipts>) {
        self.channels
            .entry(receipts.event.channel.clone())
            .or_default()
            .receipts
            .push_back(receipts.clone());
        self.by_id.insert(receipts.id(), receipts.clone());
    }

    /// Notes, at start, that retention dropped `channel`'s events up to
    /// `upto` before.
    pub(in crate::hub) fn note_evicted(&mut self, channel: &ChannelName, upto: EventId) {
        let ledger = self.channels.entry(channel.clone()).or_default();
        ledger.evicted_upto = ledger.evicted_upto.max(upto);
    }

    /// Drops the receipts of evicted events; returns them, oldest first
    /// per channel, for what is owed before they go (overdue notices).
    pub(in crate::hub) fn evict(&mut self, evicted: &[Evicted]) -> Vec<Arc<EventReceipts>> {
        let mut gone = Vec::new();
        for e in evicted {
            let Some(ledger) = self.channels.get_mut(&e.channel) else {
                continue;
            };
            while ledger.receipts.front().is_some_and(|r| r.id() <= e.upto) {
                if let Some(r) = ledger.receipts.pop_front() {
                    self.by_id.remove(&r.id());
                    gone.push(r);
                }
            }
            ledger.evicted_upto = ledger.evicted_upto.max(e.upto);
        }
        gone
    }

    /// Forgets channels retention emptied (keeping a tombstone of what it
    /// dropped) and receipt-watcher slots nobody uses: a server that saw a
    /// million short-lived channels holds only what is still retained.
    pub(in crate::hub) fn reclaim(&mut self) {
        let tombstones = &mut self.tombstones;
        self.channels.retain(|channel, ledger| {
            if !ledger.receipts.is_empty() {
                return true;
            }
            tombstones.add(channel.clone(), ledger.evicted_upto);
            false
        });
        if self.channels.capacity() > 2 * self.channels.len() + 64 {
            self.channels.shrink_to_fit();
        }
        let channels = &self.channels;
        let now = Timestamp::now();
        self.watchers
            .retain(|channel, w| !w.idle(now) || channels.contains_key(channel));
        if self.watchers.capacity() > 2 * self.watchers.len() + 64 {
            self.watchers.shrink_to_fit();
        }
        if self.by_id.capacity() > 2 * self.by_id.len() + 1024 {
            self.by_id.shrink_to_fit();
        }
    }

    /// Whether a client resuming after `after` on `pattern` may have lost
    /// events of a channel reclaimed since.
    pub(in crate::hub) fn lost_after(&self, pattern: &Pattern, after: EventId) -> bool {
        self.tombstones.lost_after(pattern, after)
    }

    /// `channel`'s receipt changes, opened on first use.
    pub(in crate::hub) fn watchers_for(&mut self, channel: &ChannelName) -> Arc<ReceiptLog> {
        let (gaps, metrics, clock) = (&self.receipt_gaps, &self.metrics, &self.clock);
        self.watchers
            .entry(channel.clone())
            .or_insert_with(|| {
                Arc::new(
                    ReceiptLog::counting_gaps(gaps.clone())
                        .with_metrics(metrics.clone())
                        .with_clock(clock.clone()),
                )
            })
            .clone()
    }

    /// The clock a cluster node sets before applying each entry.
    pub(in crate::hub) fn clock(&self) -> &ClusterClock {
        &self.clock
    }

    /// A receipts stream follows `channel` on some node: every node records
    /// its changes until `until`.
    pub(in crate::hub) fn watch(&mut self, channel: &ChannelName, until: Timestamp) {
        self.watchers_for(channel).shared_until(until);
    }

    /// Channels this node follows with a receipts stream and has to tell
    /// the cluster about (again), so that every node records them.
    pub(in crate::hub) fn watch_announcements(&self, now: Timestamp) -> Vec<ChannelName> {
        self.watchers
            .iter()
            .filter(|(_, log)| log.announce_due(now))
            .map(|(channel, _)| channel.clone())
            .collect()
    }

    /// Shutdown: every receipts stream ends.
    pub(in crate::hub) fn close_watchers(&self) {
        for watchers in self.watchers.values() {
            watchers.close();
        }
    }

    /// Gaps told to receipts streams that fell behind.
    pub(in crate::hub) fn receipt_gaps(&self) -> u64 {
        self.receipt_gaps.load(Ordering::Relaxed)
    }

    /// How many channels have receipt changes kept (tests of reclaiming).
    #[cfg(test)]
    pub(in crate::hub) fn watched(&self) -> usize {
        self.watchers.len()
    }

    /// The retained events on `pattern`'s channels after `since` that `device`
    /// has not acknowledged, in id order: an acknowledging member's `unacked`
    /// when it starts acknowledging, or after a restart.
    pub(in crate::hub) fn unacked_events(
        &self,
        pattern: &Pattern,
        device: &DeviceId,
        since: EventId,
    ) -> VecDeque<EventId> {
        let mut ids = Vec::new();
        self.each_of(pattern, |ledger| {
            let start = ledger.receipts.partition_point(|r| r.id() <= since);
            ids.extend(
                ledger
                    .receipts
                    .range(start..)
                    .filter(|r| !r.is_acked_by(device))
                    .map(|r| r.id()),
            );
        });
        ids.sort_unstable();
        ids.into()
    }

    /// What a member of `pattern` that joined at `since` has not
    /// acknowledged, in id order: the events of its audience, with those
    /// replayed to it from before it joined.
    pub(in crate::hub) fn unacked_of(
        &self,
        pattern: &Pattern,
        device: &DeviceId,
        since: EventId,
    ) -> VecDeque<EventId> {
        let mut unacked: VecDeque<EventId> = self.late_unacked(pattern, device, since).into();
        unacked.extend(self.unacked_events(pattern, device, since));
        unacked
    }

    /// The first retained event at or after `id` on the channels `pattern`
    /// matches.
    pub(in crate::hub) fn first_from(&self, pattern: &Pattern, id: EventId) -> Option<EventId> {
        let mut first: Option<EventId> = None;
        self.each_of(pattern, |ledger| {
            let at = ledger.receipts.partition_point(|r| r.id() < id);
            if let Some(r) = ledger.receipts.get(at) {
                first = Some(first.map_or(r.id(), |f| f.min(r.id())));
            }
        });
        first
    }

    /// The first event retention dropped above each channel's `bound` on
    /// the channels `pattern` matches: just after the lowest such bound.
    pub(in crate::hub) fn first_loss(
        &self,
        pattern: &Pattern,
        bound: impl Fn(&ChannelName) -> EventId,
    ) -> Option<EventId> {
        let mut first: Option<EventId> = None;
        let mut check = |channel: &ChannelName, ledger: &ChannelLedger| {
            let b = bound(channel);
            if ledger.evicted_upto > b {
                let from = EventId(b.0 + 1);
                first = Some(first.map_or(from, |f| f.min(from)));
            }
        };
        match pattern.exact() {
            Some(channel) => {
                if let Some(ledger) = self.channels.get(channel) {
                    check(channel, ledger);
                }
            }
            None => {
                for (channel, ledger) in &self.channels {
                    if pattern.matches(channel) {
                        check(channel, ledger);
                    }
                }
            }
        }
        first
    }

    /// Events of `pattern`'s channels up to `upto` that `device` got as a
    /// late joiner (replayed to it before it was a member) and has not
    /// acknowledged, in id order: they are in its audience too
    /// (docs/PROTOCOL.md §5).
    pub(in crate::hub) fn late_unacked(
        &self,
        pattern: &Pattern,
        device: &DeviceId,
        upto: EventId,
    ) -> Vec<EventId> {
        let mut ids = Vec::new();
        self.each_of(pattern, |ledger| {
            let end = ledger.receipts.partition_point(|r| r.id() <= upto);
            ids.extend(
                ledger
                    .receipts
                    .range(..end)
                    .filter(|r| r.late_unacked_by(device))
                    .map(|r| r.id()),
            );
        });
        ids.sort_unstable();
        ids
    }

    /// Marks events of `pattern`'s channels with ids in `(after, upto]`
    /// delivered to `device` at `at` (deliveries known from a cursor: after a
    /// restart, or made on another node).
    pub(in crate::hub) fn mark_delivered_between(
        &self,
        pattern: &Pattern,
        device: &DeviceId,
        after: EventId,
        upto: EventId,
        at: Timestamp,
    ) {
        self.each_of(pattern, |ledger| {
            let start = ledger.receipts.partition_point(|r| r.id() <= after);
            for r in ledger.receipts.range(start..) {
                if r.id() > upto {
                    break;
                }
                r.mark_delivered(device, at);
            }
        });
    }

    /// Calls `f` with the ledger of each channel `pattern` matches: one
    /// lookup for a channel's name, a pass over them all for a wildcard.
    fn each_of(&self, pattern: &Pattern, mut f: impl FnMut(&ChannelLedger)) {
        match pattern.exact() {
            Some(channel) => {
                if let Some(ledger) = self.channels.get(channel) {
                    f(ledger);
                }
            }
            None => {
                for (channel, ledger) in &self.channels {
                    if pattern.matches(channel) {
                        f(ledger);
                    }
                }
            }
        }
    }
}

/// The ledgers as plain data, for a cluster snapshot: each channel's
/// retained events with their receipts, and the tombstones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(in crate::hub) struct LedgersParts {
    /// By channel name.
    channels: Vec<ChannelPart>,
    /// Oldest first.
    tombstones: Vec<(ChannelName, u64)>,
    tombstone_floor: u64,
    /// Channels a receipts stream follows somewhere, and until when
    /// (cluster time, µs) every node records their changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    watched: Vec<(ChannelName, i64)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ChannelPart {
    channel: ChannelName,
    evicted_upto: u64,
    events: Vec<EventPart>,
}

/// A retained event and its receipts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct EventPart {
    id: u64,
    time: i64,
    payload: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<EventType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device: Option<DeviceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idem: Option<String>,
    receipts: ReceiptParts,
}

impl Ledgers {
    /// Everything retained, as plain data in a stable order.
    pub(in crate::hub) fn parts(&self) -> LedgersParts {
        let mut channels: Vec<ChannelPart> = self
            .channels
            .iter()
            .map(|(channel, ledger)| {
                let mut cursor = PartsCursor::default();
                ChannelPart {
                    channel: channel.clone(),
                    evicted_upto: ledger.evicted_upto.0,
                    events: ledger
                        .receipts
                        .iter()
                        .map(|r| EventPart {
                            id: r.event.id.0,
                            time: r.event.time.0,
                            // Events are UTF-8: publish and recovery check it.
                            payload: String::from_utf8_lossy(&r.event.payload).into_owned(),
                            kind: r.event.kind.clone(),
                            device: r.event.device.clone(),
                            idem: r.event.idempotency_key.as_deref().map(str::to_owned),
                            receipts: r.parts(&mut cursor),
                        })
                        .collect(),
                }
            })
            .collect();
        channels.sort_unstable_by(|a, b| a.channel.as_str().cmp(b.channel.as_str()));
        let t = &self.tombstones;
        let mut watched: Vec<(ChannelName, i64)> = self
            .watchers
            .iter()
            .map(|(c, log)| (c.clone(), log.shared_window().0))
            // What expired (and some node without followers may have
            // reclaimed) is not shared state any more.
            .filter(|(_, until)| *until > self.clock.time().0)
            .collect();
        watched.sort_unstable_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        LedgersParts {
            watched,
            channels,
            tombstones: t
                .order
                .iter()
                .map(|c| (c.clone(), t.upto.get(c).map_or(0, |id| id.0)))
                .collect(),
            tombstone_floor: t.floor.0,
        }
    }

    /// Takes the ledgers back from [`Ledgers::parts`] (into an empty
    /// one); returns the events, for the store.
    pub(in crate::hub) fn restore(
        &mut self,
        parts: LedgersParts,
    ) -> Result<Vec<Arc<Event>>, PartsError> {
        let mut events = Vec::new();
        for part in parts.channels {
            let watchers = self.watchers_for(&part.channel);
            let mut ledger = ChannelLedger {
                receipts: VecDeque::with_capacity(part.events.len()),
                evicted_upto: EventId(part.evicted_upto),
            };
            let mut previous = None;
            for e in part.events {
                let event = Arc::new(Event {
                    id: EventId(e.id),
                    channel: part.channel.clone(),
                    kind: e.kind,
                    device: e.device,
                    time: Timestamp(e.time),
                    payload: bytes::Bytes::from(e.payload),
                    idempotency_key: e.idem.map(String::into_boxed_str),
                });
                let receipts = Arc::new(EventReceipts::restore(
                    event.clone(),
                    e.receipts,
                    &mut previous,
                    watchers.clone(),
                )?);
                self.by_id.insert(event.id, receipts.clone());
                ledger.receipts.push_back(receipts);
                events.push(event);
            }
            self.channels.insert(part.channel, ledger);
        }
        for (channel, upto) in parts.tombstones {
            self.tombstones.add(channel, EventId(upto));
        }
        self.tombstones.floor = self.tombstones.floor.max(EventId(parts.tombstone_floor));
        for (channel, until) in parts.watched {
            self.watchers_for(&channel).shared_until(Timestamp(until));
        }
        events.sort_unstable_by_key(|e| e.id);
        Ok(events)
    }
}
