//! The receipt ledger: per event, its audience and each device's state,
//! `pending` → `delivered` → `acked`.
//!
//! An [`EventReceipts`] is created when its event is published, with the
//! audience fixed at that moment; devices the event later reaches outside it
//! (late joiners, replays) are added as they receive or acknowledge it.
//!
//! Delivery is the hot path — one mark per device per event, from many
//! stream tasks at once — so it is a compare-and-swap on the device's slot,
//! with no lock and no allocation. Acks, late joiners and the device index
//! are rarer and sit behind a mutex per event.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::event::{Event, EventId, Timestamp};
use crate::name::{ChannelName, DeviceId};
use crate::receipt_log::ReceiptLog;

mod snapshot;
pub(crate) use snapshot::{PartsCursor, PartsError, ReceiptParts};

/// A device's progress with one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiptState {
    /// In the audience, not yet written to any of its streams.
    Pending,
    /// Written to one of its streams.
    Delivered,
    /// Acknowledged with a receipt.
    Acked,
}

impl ReceiptState {
    /// The state's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptState::Pending => "pending",
            ReceiptState::Delivered => "delivered",
            ReceiptState::Acked => "acked",
        }
    }
}

/// One device's receipt for one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceReceipt {
    /// Current state.
    pub state: ReceiptState,
    /// When it was first written to the device.
    pub delivered_at: Option<Timestamp>,
    /// When the device first acknowledged it: the proof, never moved by a
    /// later status update.
    pub acked_at: Option<Timestamp>,
    /// The device's latest status text, once acked.
    pub status: Option<Arc<str>>,
    /// When the latest status arrived (equals `acked_at` until an update).
    pub status_at: Option<Timestamp>,
    /// How many times the event was written to the device's streams: more
    /// than one after a redelivery (docs/PROTOCOL.md §5); 0 for a device
    /// that acknowledged an event it was never sent.
    pub deliveries: u32,
}

/// A change of one device's receipt, as the receipts stream reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptChange {
    /// The event.
    pub id: EventId,
    /// Its channel.
    pub channel: ChannelName,
    /// The device.
    pub device: DeviceId,
    /// The state it reached.
    pub state: ReceiptState,
    /// Its status, for `acked`.
    pub status: Option<Arc<str>>,
    /// When.
    pub at: Timestamp,
}

/// A device that has not acknowledged an event by its deadline
/// (`--ack-deadline`): sent to the publisher's webhook and on the receipts
/// stream as `event: overdue`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverdueNotice {
    /// The event.
    pub id: EventId,
    /// Its channel.
    pub channel: ChannelName,
    /// The device that has not acknowledged it.
    pub device: DeviceId,
    /// Where that device stands: `pending` or `delivered`.
    pub state: ReceiptState,
    /// When the event was published.
    pub published_at: Timestamp,
    /// When its acknowledgement was due.
    pub deadline: Timestamp,
    /// Retention (`--history`, `--max-age`) dropped the event before the
    /// device acknowledged it (possibly before its deadline): it will not
    /// be delivered again (`"state":"expired"` on the wire).
    pub expired: bool,
}

/// What a receipts stream carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiptUpdate {
    /// A device's receipt changed state.
    Change(ReceiptChange),
    /// A device missed its acknowledgement deadline.
    Overdue(OverdueNotice),
}

/// The summary of an event's receipts (docs/PROTOCOL.md §5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptSummary {
    /// The event id.
    pub id: EventId,
    /// Its channel.
    pub channel: ChannelName,
    /// When it was published.
    pub published_at: Timestamp,
    /// Size of the audience.
    pub recipients: usize,
    /// Devices delivered or acked.
    pub delivered: usize,
    /// Devices acked.
    pub acked: usize,
    /// Devices still `pending` (not yet written to any of their streams),
    /// sorted.
    pub pending: Vec<DeviceId>,
    /// Devices not yet acked (`pending` or `delivered`), sorted.
    pub unacked: Vec<DeviceId>,
    /// Every device's receipt, sorted by device.
    pub devices: Vec<(DeviceId, DeviceReceipt)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves its data consistent at each step,
    // so a poisoned lock still guards valid data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What an ack did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// First ack of this event by this device.
    Acked,
    /// The device had acked before; the status and time were updated.
    Updated,
}

/// What marking a delivery found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// The first time the event was written to that device.
    First,
    /// It had been written to that device before: a redelivery (a second
    /// stream of the device, or a resume after a broken stream).
    Again,
}

#[derive(Debug)]
struct Ack {
    /// The first acknowledgement.
    at: Timestamp,
    /// The latest status, and when it came.
    status: Arc<str>,
    status_at: Timestamp,
    /// The ack claimed the device's delivery without any write (it
    /// acknowledged an event it got some other way): the first real write
    /// then counts as its first delivery, not a redelivery.
    implied_delivery: bool,
}

#[derive(Debug, Default)]
struct Slow {
    /// Acks by slot.
    acks: HashMap<u32, Ack>,
    /// Writes after the first, by slot (redeliveries are rare, so they are
    /// counted here rather than in a per-slot counter every event pays for).
    again: HashMap<u32, u32>,
    /// Devices outside the publish-time audience, with their delivery time;
    /// their slots follow the audience's.
    late: Vec<(DeviceId, Option<Timestamp>)>,
    /// Device → slot, built on first lookup (acks and replays need it, live
    /// fan-out does not).
    index: Option<HashMap<DeviceId, u32>>,
}

/// The receipts of one event.
#[derive(Debug)]
pub struct EventReceipts {
    /// The event.
    pub event: Arc<Event>,
    audience: Arc<[DeviceId]>,
    /// Delivery time per audience slot in µs; 0 = not delivered.
    delivered_at: Box<[AtomicI64]>,
    /// Devices (audience and late) not yet delivered.
    undelivered: AtomicUsize,
    /// Devices (audience and late) not yet acked.
    unacked: AtomicUsize,
    /// Whether it has late joiners, read without the lock by a resume's
    /// walk over every retained event (`Ledgers::late_unacked`).
    has_late: AtomicBool,
    slow: Mutex<Slow>,
    /// Woken when `undelivered` or `unacked` reaches zero.
    settled: Notify,
    watchers: Arc<ReceiptLog>,
    /// Upper estimate of the event's encoded size (see [`wire_size`]).
    ///
    /// [`wire_size`]: EventReceipts::wire_size
    wire_size: usize,
}

/// Bytes an encoded event takes beyond its payload lines, at most: its
/// `id:` and `event:` lines, the end of the event, and an envelope's keys.
const WIRE_OVERHEAD: usize = 512;

impl Drop for EventReceipts {
    /// An event leaves retention: its unacknowledged pairs leave the gauge.
    fn drop(&mut self) {
        let left = i64::try_from(self.unacked.load(Ordering::Acquire)).unwrap_or(i64::MAX);
        self.watchers.metrics().add_unacked(-left);
    }
}

/// Slot number meaning "not in the audience" (anonymous streams, late
/// joiners resolved through the index).
pub const NO_SLOT: u32 = u32::MAX;

/// The estimate [`EventReceipts::wire_size`] returns for `event`: SSE
/// writes a `data: ` prefix and a line end per payload line.
fn wire_size_of(event: &Event) -> usize {
    let breaks = event
        .payload
        .iter()
        .filter(|&&b| b == b'\n' || b == b'\r')
        .count();
    event.payload.len() + 7 * (breaks + 1) + WIRE_OVERHEAD
}

impl EventReceipts {
    /// Receipts for `event` with `audience` (sorted or not; duplicates are the
    /// caller's bug) all pending.
    pub fn new(event: Arc<Event>, audience: Arc<[DeviceId]>, watchers: Arc<ReceiptLog>) -> Self {
        let n = audience.len();
        let wire_size = wire_size_of(&event);
        watchers
            .metrics()
            .add_unacked(i64::try_from(n).unwrap_or(i64::MAX));
        Self {
            wire_size,
            event,
            delivered_at: (0..n).map(|_| AtomicI64::new(0)).collect(),
            audience,
            undelivered: AtomicUsize::new(n),
            unacked: AtomicUsize::new(n),
            has_late: AtomicBool::new(false),
            slow: Mutex::default(),
            settled: Notify::new(),
            watchers,
        }
    }

    /// The event id.
    pub fn id(&self) -> EventId {
        self.event.id
    }

    /// An upper estimate of the event's encoded size on a stream: its
    /// payload, a `data: ` prefix and line end per line, and the id and type
    /// lines. A payload of line breaks only encodes to 7 bytes per byte.
    pub fn wire_size(&self) -> usize {
        self.wire_size
    }

    /// The audience at publish time.
    pub fn audience(&self) -> &[DeviceId] {
        &self.audience
    }

    /// Recipients: the audience plus late joiners.
    pub fn recipients(&self) -> usize {
        self.audience.len() + lock(&self.slow).late.len()
    }

    /// Devices not yet delivered.
    pub fn undelivered(&self) -> usize {
        self.undelivered.load(Ordering::Acquire)
    }

    /// Devices not yet acked.
    pub fn unacked(&self) -> usize {
        self.unacked.load(Ordering::Acquire)
    }

    /// Resolves once `done()` holds, checking after every settlement.
    /// No polling: it sleeps until a counter reaches zero.
    pub async fn settled_when(&self, done: impl Fn(&Self) -> bool) {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(self) {
                return;
            }
            notified.await;
        }
    }

    fn slot_of(&self, slow: &mut Slow, device: &DeviceId) -> Option<u32> {
        let index = slow.index.get_or_insert_with(|| {
            self.audience
                .iter()
                .enumerate()
                .map(|(i, d)| (d.clone(), i as u32))
                .collect()
        });
        index.get(device).copied()
    }

    fn add_late(&self, slow: &mut Slow, device: &DeviceId, delivered: Option<Timestamp>) -> u32 {
        let slot = (self.audience.len() + slow.late.len()) as u32;
        slow.late.push((device.clone(), delivered));
        self.has_late.store(true, Ordering::Release);
        if let Some(index) = slow.index.as_mut() {
            index.insert(device.clone(), slot);
        }
        if delivered.is_none() {
            self.undelivered.fetch_add(1, Ordering::AcqRel);
        }
        self.unacked.fetch_add(1, Ordering::AcqRel);
        self.watchers.metrics().add_unacked(1);
        slot
    }

    fn settle(&self, counter: &AtomicUsize) {
        if counter.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.settled.notify_waiters();
        }
    }

    fn announce(
        &self,
        device: &DeviceId,
        state: ReceiptState,
        status: Option<Arc<str>>,
        at: Timestamp,
    ) {
        if self.watchers.recording(at) {
            self.watchers.push(
                ReceiptUpdate::Change(ReceiptChange {
                    id: self.event.id,
                    channel: self.event.channel.clone(),
                    device: device.clone(),
                    state,
                    status,
                    at,
                }),
                at,
            );
        }
    }

    /// Marks the event delivered to audience slot `slot` (live fan-out knows
    /// the slot).
    pub fn mark_delivered_slot(&self, slot: u32, at: Timestamp) -> Mark {
        let Some(cell) = self.delivered_at.get(slot as usize) else {
            return Mark::Again;
        };
        if cell
            .compare_exchange(0, at.0.max(1), Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Written before, or claimed by an ack: the rare path.
            return self.written_again(&mut lock(&self.slow), slot, at);
        }
        self.settle(&self.undelivered);
        self.announce(
            &self.audience[slot as usize],
            ReceiptState::Delivered,
            None,
            at,
        );
        Mark::First
    }

    /// A write to a slot whose delivery was already recorded: the first
    /// real one if an ack had claimed it, else a redelivery.
    fn written_again(&self, slow: &mut Slow, slot: u32, at: Timestamp) -> Mark {
        if let Some(ack) = slow.acks.get_mut(&slot)
            && ack.implied_delivery
        {
            ack.implied_delivery = false;
            // The claim held the ack's time; the write's own (reported
            // late by another node) is when it was delivered. Never after
            // the ack, whatever the nodes' clocks say.
            let at = at.min(ack.at);
            match (slot as usize).checked_sub(self.audience.len()) {
                None => self.delivered_at[slot as usize].store(at.0.max(1), Ordering::Release),
                Some(i) => slow.late[i].1 = Some(at),
            }
            return Mark::First;
        }
        *slow.again.entry(slot).or_insert(0) += 1;
        Mark::Again
    }

    /// Marks the event delivered to `device`, adding it to the audience when
    /// it was not in it (replay to a late joiner).
    pub fn mark_delivered(&self, device: &DeviceId, at: Timestamp) -> Mark {
        let mut slow = lock(&self.slow);
        match self.slot_of(&mut slow, device) {
            Some(slot) if (slot as usize) < self.audience.len() => {
                drop(slow);
                self.mark_delivered_slot(slot, at)
            }
            Some(slot) => {
                let i = slot as usize - self.audience.len();
                if slow.late[i].1.is_some() {
                    return self.written_again(&mut slow, slot, at);
                }
                slow.late[i].1 = Some(at);
                drop(slow);
                self.settle(&self.undelivered);
                self.announce(device, ReceiptState::Delivered, None, at);
                Mark::First
            }
            None => {
                self.add_late(&mut slow, device, Some(at));
                drop(slow);
                self.announce(device, ReceiptState::Delivered, None, at);
                Mark::First
            }
        }
    }

    /// Whether the event is recorded as delivered to `device` (`slot`, its
    /// audience slot when known, spares the lookup). Reads only.
    pub fn delivered_to(&self, device: &DeviceId, slot: u32) -> bool {
        if let Some(cell) = self.delivered_at.get(slot as usize) {
            return cell.load(Ordering::Acquire) != 0;
        }
        self.receipt_of(device)
            .is_some_and(|r| r.delivered_at.is_some())
    }

    /// Whether `device` acknowledged the event.
    pub fn is_acked_by(&self, device: &DeviceId) -> bool {
        let mut slow = lock(&self.slow);
        if slow.acks.is_empty() {
            return false;
        }
        self.slot_of(&mut slow, device)
            .is_some_and(|slot| slow.acks.contains_key(&slot))
    }

    /// Whether `device` was added to the audience after the publish (a
    /// late joiner, by a replay or a receipt). Few are: a scan, without the
    /// device index.
    pub fn has_late_joiner(&self, device: &DeviceId) -> bool {
        self.has_late.load(Ordering::Acquire)
            && lock(&self.slow).late.iter().any(|(d, _)| d == device)
    }

    /// Whether `device` got the event outside its publish-time audience (a
    /// late joiner: a replay) and has not acknowledged it.
    pub fn late_unacked_by(&self, device: &DeviceId) -> bool {
        if !self.has_late.load(Ordering::Acquire) {
            return false;
        }
        let mut slow = lock(&self.slow);
        if slow.late.is_empty() {
            return false;
        }
        let audience = self.audience.len() as u32;
        self.slot_of(&mut slow, device)
            .is_some_and(|slot| slot >= audience && !slow.acks.contains_key(&slot))
    }

    /// [`Self::may_ack`] and, if it may, [`Self::is_acked_by`], under one
    /// lock: `None` when `device` may not acknowledge the event.
    pub fn standing(&self, device: &DeviceId) -> Option<bool> {
        let mut slow = lock(&self.slow);
        let slot = self.slot_of(&mut slow, device)?;
        Some(slow.acks.contains_key(&slot))
    }

    /// [`Self::standing`] of several devices under one lock: a batch of
    /// receipts checked one lock each would contend with the writer
    /// recording them.
    pub fn standings<'a>(&self, devices: impl Iterator<Item = &'a DeviceId>) -> Vec<Option<bool>> {
        let mut slow = lock(&self.slow);
        devices
            .map(|device| {
                let slot = self.slot_of(&mut slow, device)?;
                Some(slow.acks.contains_key(&slot))
            })
            .collect()
    }

    /// Whether `device` may acknowledge the event: it is in the audience, or
    /// the event was written to one of its streams (a late joiner that got
    /// it by replay). Once true it stays true, so a check made outside the
    /// writer cannot be contradicted by it.
    pub fn may_ack(&self, device: &DeviceId) -> bool {
        let mut slow = lock(&self.slow);
        self.slot_of(&mut slow, device).is_some()
    }

    /// Records `device`'s receipt with `status`. A device outside the
    /// audience is added to it: the hub refuses those ([`Self::may_ack`]),
    /// but receipts journaled before it did are still recovered. An ack
    /// implies delivery. A second receipt keeps the first
    /// one's time (the proof) and updates the status.
    pub fn ack(&self, device: &DeviceId, status: Arc<str>, at: Timestamp) -> AckOutcome {
        let mut slow = lock(&self.slow);
        let slot = match self.slot_of(&mut slow, device) {
            Some(slot) => slot,
            None => self.add_late(&mut slow, device, None),
        };
        if let Some(ack) = slow.acks.get_mut(&slot) {
            ack.status = status.clone();
            ack.status_at = ack.at.max(at);
            drop(slow);
            self.announce(device, ReceiptState::Acked, Some(status), at);
            return AckOutcome::Updated;
        }
        let was_delivered = match (slot as usize).checked_sub(self.audience.len()) {
            None => {
                // Claim the delivery so a later mark does not count it again;
                // a delivery time later than the ack (only a time rebuilt
                // from a cursor after a restart can be) moves back to it, so
                // the times never contradict the states' order.
                let cell = &self.delivered_at[slot as usize];
                match cell.compare_exchange(0, at.0.max(1), Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => false,
                    Err(_) => {
                        cell.fetch_min(at.0.max(1), Ordering::AcqRel);
                        true
                    }
                }
            }
            Some(i) => {
                let late = &mut slow.late[i].1;
                let was = late.is_some();
                *late = Some(late.map_or(at, |t| t.min(at)));
                was
            }
        };
        slow.acks.insert(
            slot,
            Ack {
                at,
                status: status.clone(),
                status_at: at,
                implied_delivery: !was_delivered,
            },
        );
        drop(slow);
        if !was_delivered {
            self.settle(&self.undelivered);
            // Every transition shows on the receipts stream, the delivery
            // an ack implies too (a cluster node learns of a write from
            // the cursor, which may come after the device's receipt).
            self.announce(device, ReceiptState::Delivered, None, at);
        }
        self.settle(&self.unacked);
        self.watchers.metrics().add_unacked(-1);
        self.announce(device, ReceiptState::Acked, Some(status), at);
        AckOutcome::Acked
    }

    /// Devices that have not acknowledged the event, with their state.
    pub fn unacked_devices(&self) -> Vec<(DeviceId, ReceiptState)> {
        let slow = lock(&self.slow);
        self.audience
            .iter()
            .chain(slow.late.iter().map(|(d, _)| d))
            .enumerate()
            .filter(|(slot, _)| !slow.acks.contains_key(&(*slot as u32)))
            .map(|(slot, device)| (device.clone(), self.receipt_at(&slow, slot as u32).state))
            .collect()
    }

    /// Tells the channel's receipt listeners that a device is overdue, as
    /// found at `now` (the hub's time for the check: a cluster's entry's).
    pub fn announce_overdue(&self, notice: &OverdueNotice, now: Timestamp) {
        self.watchers
            .metrics()
            .overdue
            .fetch_add(1, Ordering::Relaxed);
        if self.watchers.recording(now) {
            self.watchers
                .push(ReceiptUpdate::Overdue(notice.clone()), now);
        }
    }

    /// `device`'s receipt, if it is in the audience.
    pub fn receipt_of(&self, device: &DeviceId) -> Option<DeviceReceipt> {
        let mut slow = lock(&self.slow);
        let slot = self.slot_of(&mut slow, device)?;
        Some(self.receipt_at(&slow, slot))
    }

    /// The receipts of the devices of its audience (late joiners too) that
    /// `wanted` picks, found by walking the audience: unlike
    /// [`receipt_of`](Self::receipt_of) this builds no index, which a view
    /// walking many events would leave behind on each (a review: 100 MB for
    /// 1,000 events of 3,000 devices).
    pub fn receipts_among(
        &self,
        mut wanted: impl FnMut(&DeviceId) -> bool,
    ) -> Vec<(DeviceId, DeviceReceipt)> {
        let slow = lock(&self.slow);
        let late = slow.late.iter().map(|(d, _)| d);
        self.audience
            .iter()
            .chain(late)
            .enumerate()
            .filter(|(_, d)| wanted(d))
            .map(|(slot, d)| (d.clone(), self.receipt_at(&slow, slot as u32)))
            .collect()
    }

    fn receipt_at(&self, slow: &Slow, slot: u32) -> DeviceReceipt {
        let delivered_at = match (slot as usize).checked_sub(self.audience.len()) {
            None => match self.delivered_at[slot as usize].load(Ordering::Acquire) {
                0 => None,
                t => Some(Timestamp(t)),
            },
            Some(i) => slow.late[i].1,
        };
        let ack = slow.acks.get(&slot);
        let deliveries = if delivered_at.is_none() || ack.is_some_and(|a| a.implied_delivery) {
            0
        } else {
            1 + slow.again.get(&slot).copied().unwrap_or(0)
        };
        match ack {
            Some(ack) => DeviceReceipt {
                state: ReceiptState::Acked,
                delivered_at: delivered_at.or(Some(ack.at)),
                acked_at: Some(ack.at),
                status: Some(ack.status.clone()),
                status_at: Some(ack.status_at),
                deliveries,
            },
            None => DeviceReceipt {
                state: if delivered_at.is_some() {
                    ReceiptState::Delivered
                } else {
                    ReceiptState::Pending
                },
                delivered_at,
                acked_at: None,
                status: None,
                status_at: None,
                deliveries,
            },
        }
    }

    /// The full summary (docs/PROTOCOL.md §5).
    pub fn summary(&self) -> ReceiptSummary {
        let slow = lock(&self.slow);
        let mut devices: Vec<(DeviceId, DeviceReceipt)> = self
            .audience
            .iter()
            .chain(slow.late.iter().map(|(d, _)| d))
            .enumerate()
            .map(|(slot, device)| (device.clone(), self.receipt_at(&slow, slot as u32)))
            .collect();
        drop(slow);
        devices.sort_by(|a, b| a.0.cmp(&b.0));
        let delivered = devices
            .iter()
            .filter(|(_, r)| r.state != ReceiptState::Pending)
            .count();
        let acked = devices
            .iter()
            .filter(|(_, r)| r.state == ReceiptState::Acked)
            .count();
        let pending = devices
            .iter()
            .filter(|(_, r)| r.state == ReceiptState::Pending)
            .map(|(d, _)| d.clone())
            .collect();
        let unacked = devices
            .iter()
            .filter(|(_, r)| r.state != ReceiptState::Acked)
            .map(|(d, _)| d.clone())
            .collect();
        ReceiptSummary {
            id: self.event.id,
            channel: self.event.channel.clone(),
            published_at: self.event.time,
            recipients: devices.len(),
            delivered,
            acked,
            pending,
            unacked,
            devices,
        }
    }
}

#[cfg(test)]
mod tests;
