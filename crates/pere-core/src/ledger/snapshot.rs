//! An event's receipts as plain data, and back: what a cluster snapshot
//! keeps of each retained event (docs/PROTOCOL.md §10, "Several nodes").

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{Ack, EventReceipts, Slow, lock, wire_size_of};
use crate::event::{Event, Timestamp};
use crate::name::DeviceId;
use crate::receipt_log::ReceiptLog;

/// The receipts of one event, without the event: the audience, each
/// slot's delivery and acknowledgement, the late joiners.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReceiptParts {
    /// The audience, sorted; left out when it is the previous event's of
    /// the same channel (as it mostly is: the same members).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    audience: Option<Vec<DeviceId>>,
    /// Per audience slot, when it was delivered, in µs after the event's
    /// time (short numbers); `None`: not delivered.
    delivered: Vec<Option<i64>>,
    /// Devices outside the publish-time audience, with their delivery.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    late: Vec<(DeviceId, Option<i64>)>,
    /// Acknowledgements, by slot (ascending).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    acks: Vec<AckPart>,
    /// Writes after the first, by slot (ascending).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    again: Vec<(u32, u32)>,
}

/// What [`EventReceipts::parts`] carries from one event to the next of
/// the same channel: the audience as held and the order that sorts it.
#[derive(Debug, Default)]
pub(crate) struct PartsCursor {
    audience: Option<Arc<[DeviceId]>>,
    order: Vec<usize>,
}

/// One acknowledgement, as a short array: its slot, when it came (µs
/// after the event's time), its latest status and when that came (µs after
/// the first), and whether it implied the delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct AckPart(u32, i64, Arc<str>, i64, bool);

/// Why a snapshot's receipts cannot be taken back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PartsError {
    /// The delivery times do not match the audience.
    #[error("{delivered} delivery times for an audience of {audience}")]
    Length {
        /// Audience slots.
        audience: usize,
        /// Delivery times.
        delivered: usize,
    },
    /// An acknowledgement or redelivery names a slot that does not exist.
    #[error("slot {0} is outside the audience and its late joiners")]
    Slot(u32),
    /// The first event of a channel says "the previous audience".
    #[error("an event refers to the audience of an event before it, and there is none")]
    NoAudience,
}

impl EventReceipts {
    /// These receipts as plain data, the audience sorted (slots are this
    /// node's own numbering: another node fills its audience in another
    /// order, so the parts of the same receipts compare equal). `cursor`
    /// carries what the previous event of the channel found.
    pub(crate) fn parts(&self, cursor: &mut PartsCursor) -> ReceiptParts {
        // The same audience in the same order (the same members, a
        // publish after another) needs no sort; the same set in another
        // order (a node that loaded a snapshot holds it sorted) still
        // compares equal once sorted, so every node writes the same parts.
        let same = match &cursor.audience {
            Some(a) if Arc::ptr_eq(a, &self.audience) || **a == *self.audience => true,
            previous => {
                let mut order: Vec<usize> = (0..self.audience.len()).collect();
                order.sort_unstable_by(|a, b| {
                    self.audience[*a].as_str().cmp(self.audience[*b].as_str())
                });
                let same = previous.as_ref().is_some_and(|p| {
                    p.len() == order.len()
                        && cursor
                            .order
                            .iter()
                            .zip(&order)
                            .all(|(i, j)| p[*i] == self.audience[*j])
                });
                cursor.audience = Some(self.audience.clone());
                cursor.order = order;
                same
            }
        };
        let order = &cursor.order;
        let mut renumber = vec![0u32; order.len()];
        for (new, old) in order.iter().enumerate() {
            renumber[*old] = new as u32;
        }
        let slot = |old: u32| match renumber.get(old as usize) {
            Some(new) => *new,
            None => old, // late joiners keep their place after the audience
        };
        let slow = lock(&self.slow);
        let mut acks: Vec<AckPart> = slow
            .acks
            .iter()
            .map(|(s, ack)| {
                AckPart(
                    slot(*s),
                    ack.at.0.saturating_sub(self.event.time.0),
                    ack.status.clone(),
                    ack.status_at.0.saturating_sub(ack.at.0),
                    ack.implied_delivery,
                )
            })
            .collect();
        acks.sort_unstable_by_key(|a| a.0);
        let mut again: Vec<(u32, u32)> = slow.again.iter().map(|(s, n)| (slot(*s), *n)).collect();
        again.sort_unstable();
        let time = self.event.time.0;
        ReceiptParts {
            audience: (!same).then(|| order.iter().map(|i| self.audience[*i].clone()).collect()),
            delivered: order
                .iter()
                .map(
                    |i| match self.delivered_at[*i].load(std::sync::atomic::Ordering::Acquire) {
                        0 => None,
                        t => Some(t.saturating_sub(time)),
                    },
                )
                .collect(),
            late: slow
                .late
                .iter()
                .map(|(d, t)| (d.clone(), t.map(|t| t.0)))
                .collect(),
            acks,
            again,
        }
    }

    /// Receipts rebuilt from [`EventReceipts::parts`], reporting to
    /// `watchers` from now on; `previous` is the audience of the channel's
    /// event before (events that had the same share it from now on).
    pub(crate) fn restore(
        event: Arc<Event>,
        parts: ReceiptParts,
        previous: &mut Option<Arc<[DeviceId]>>,
        watchers: Arc<ReceiptLog>,
    ) -> Result<Self, PartsError> {
        let ReceiptParts {
            audience,
            delivered,
            late,
            acks,
            again,
        } = parts;
        let audience: Arc<[DeviceId]> = match audience {
            Some(list) => {
                let list: Arc<[DeviceId]> = list.into();
                *previous = Some(list.clone());
                list
            }
            None => previous.clone().ok_or(PartsError::NoAudience)?,
        };
        if delivered.len() != audience.len() {
            return Err(PartsError::Length {
                audience: audience.len(),
                delivered: delivered.len(),
            });
        }
        let slots = audience.len() + late.len();
        let valid = |slot: u32| (slot as usize) < slots;
        if let Some(bad) = acks
            .iter()
            .map(|a| a.0)
            .chain(again.iter().map(|(s, _)| *s))
            .find(|s| !valid(*s))
        {
            return Err(PartsError::Slot(bad));
        }
        let undelivered = delivered.iter().filter(|t| t.is_none()).count()
            + late.iter().filter(|(_, t)| t.is_none()).count();
        let time = event.time.0;
        let acks: HashMap<u32, Ack> = acks
            .into_iter()
            .map(
                |AckPart(slot, at, status, status_after, implied_delivery)| {
                    let at = at.saturating_add(time);
                    let ack = Ack {
                        at: Timestamp(at),
                        status,
                        status_at: Timestamp(status_after.saturating_add(at)),
                        implied_delivery,
                    };
                    (slot, ack)
                },
            )
            .collect();
        let unacked = slots - acks.len();
        watchers
            .metrics()
            .add_unacked(i64::try_from(unacked).unwrap_or(i64::MAX));
        let late: Vec<(DeviceId, Option<Timestamp>)> = late
            .into_iter()
            .map(|(d, t)| (d, t.map(Timestamp)))
            .collect();
        // The index is built on first lookup from the audience, and late
        // joiners are only ever added to a built one: with late joiners
        // it must exist, with them in it.
        let index = (!late.is_empty()).then(|| {
            audience
                .iter()
                .chain(late.iter().map(|(d, _)| d))
                .enumerate()
                .map(|(i, d)| (d.clone(), i as u32))
                .collect()
        });
        Ok(Self {
            wire_size: wire_size_of(&event),
            event,
            delivered_at: delivered
                .into_iter()
                // A stored 0 means "not delivered": a delivery at the
                // event's very µs is stored as 1 by the marks, too.
                .map(|t| AtomicI64::new(t.map_or(0, |t| t.saturating_add(time).max(1))))
                .collect(),
            audience,
            undelivered: AtomicUsize::new(undelivered),
            unacked: AtomicUsize::new(unacked),
            has_late: AtomicBool::new(!late.is_empty()),
            slow: Mutex::new(Slow {
                acks,
                again: again.into_iter().collect(),
                late,
                index,
            }),
            settled: Notify::new(),
            watchers,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::event::EventId;
    use crate::name::ChannelName;

    fn event() -> Arc<Event> {
        Arc::new(Event {
            id: EventId(7),
            channel: ChannelName::new("c").unwrap(),
            kind: None,
            device: None,
            time: Timestamp(100),
            payload: bytes::Bytes::from_static(b"a\nb"),
            idempotency_key: None,
        })
    }

    fn dev(s: &str) -> DeviceId {
        DeviceId::new(s).unwrap()
    }

    #[test]
    fn receipts_come_back_as_they_were() {
        let watchers = Arc::new(ReceiptLog::default());
        let audience: Arc<[DeviceId]> = vec![dev("c"), dev("a"), dev("b")].into();
        let r = EventReceipts::new(event(), audience.clone(), watchers.clone());
        r.mark_delivered(&dev("a"), Timestamp(200));
        r.mark_delivered(&dev("a"), Timestamp(210)); // a redelivery
        r.mark_delivered(&dev("c"), Timestamp(100)); // at the event's µs
        r.ack(&dev("b"), Arc::from("ok"), Timestamp(220)); // implied delivery
        r.ack(&dev("late"), Arc::from("seen"), Timestamp(230));
        r.mark_delivered(&dev("later"), Timestamp(240));
        let parts = r.parts(&mut PartsCursor::default());
        let back =
            EventReceipts::restore(event(), parts.clone(), &mut None, watchers.clone()).unwrap();
        assert_eq!(back.parts(&mut PartsCursor::default()), parts);
        for d in ["a", "b", "c", "late", "later"] {
            assert_eq!(back.receipt_of(&dev(d)), r.receipt_of(&dev(d)), "{d}");
        }
        assert_eq!(back.undelivered(), r.undelivered());
        assert_eq!(back.unacked(), r.unacked());
        assert_eq!(back.recipients(), 5);
        assert_eq!(back.wire_size(), r.wire_size());
        // What happens next happens alike.
        assert_eq!(
            back.mark_delivered(&dev("b"), Timestamp(250)),
            r.mark_delivered(&dev("b"), Timestamp(250))
        );
        let mut cursor = PartsCursor::default();
        assert_eq!(
            back.parts(&mut PartsCursor::default()),
            r.parts(&mut cursor)
        );

        // The next event with the same audience leaves it out, and takes
        // the previous one's back.
        let next = EventReceipts::new(event(), audience, watchers.clone());
        let parts = next.parts(&mut cursor);
        assert_eq!(parts.audience, None);
        let mut previous = None;
        assert_eq!(
            EventReceipts::restore(event(), parts.clone(), &mut previous, watchers.clone()).err(),
            Some(PartsError::NoAudience)
        );
        previous = Some(back.audience.clone());
        let again = EventReceipts::restore(event(), parts, &mut previous, watchers).unwrap();
        assert_eq!(again.audience(), back.audience());
    }

    #[test]
    fn inconsistent_parts_are_refused() {
        let watchers = Arc::new(ReceiptLog::default());
        let r = EventReceipts::new(event(), vec![dev("a")].into(), watchers.clone());
        let mut parts = r.parts(&mut PartsCursor::default());
        parts.delivered.push(None);
        assert!(matches!(
            EventReceipts::restore(event(), parts, &mut None, watchers.clone()),
            Err(PartsError::Length { .. })
        ));
        let mut parts = r.parts(&mut PartsCursor::default());
        parts.again.push((3, 1));
        assert_eq!(
            EventReceipts::restore(event(), parts, &mut None, watchers).err(),
            Some(PartsError::Slot(3))
        );
    }
}
