//! An event's receipts as plain data, and back: what a cluster snapshot
//! keeps of each retained event (docs/PROTOCOL.md §10, "Several nodes").

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{Ack, EventReceipts, Slow, WIRE_OVERHEAD, lock};
use crate::event::{Event, Timestamp};
use crate::name::DeviceId;
use crate::receipt_log::ReceiptLog;

/// The receipts of one event, without the event: the audience, each
/// slot's delivery and acknowledgement, the late joiners.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReceiptParts {
    audience: Vec<DeviceId>,
    /// Delivery time per audience slot, µs; 0 = not delivered.
    delivered: Vec<i64>,
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

/// One acknowledgement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct AckPart {
    slot: u32,
    at: i64,
    status: String,
    status_at: i64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    implied: bool,
}

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
}

impl EventReceipts {
    /// These receipts as plain data, the audience sorted (slots are this
    /// node's own numbering: another node fills its audience in another
    /// order, so the parts of the same receipts compare equal).
    pub(crate) fn parts(&self) -> ReceiptParts {
        let slow = lock(&self.slow);
        let n = self.audience.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_unstable_by(|a, b| self.audience[*a].as_str().cmp(self.audience[*b].as_str()));
        let mut renumber = vec![0u32; n];
        for (new, old) in order.iter().enumerate() {
            renumber[*old] = new as u32;
        }
        let slot = |old: u32| match renumber.get(old as usize) {
            Some(new) => *new,
            None => old, // late joiners keep their place after the audience
        };
        let mut acks: Vec<AckPart> = slow
            .acks
            .iter()
            .map(|(s, ack)| AckPart {
                slot: slot(*s),
                at: ack.at.0,
                status: ack.status.to_string(),
                status_at: ack.status_at.0,
                implied: ack.implied_delivery,
            })
            .collect();
        acks.sort_unstable_by_key(|a| a.slot);
        let mut again: Vec<(u32, u32)> = slow.again.iter().map(|(s, n)| (slot(*s), *n)).collect();
        again.sort_unstable();
        ReceiptParts {
            audience: order.iter().map(|i| self.audience[*i].clone()).collect(),
            delivered: order
                .iter()
                .map(|i| self.delivered_at[*i].load(std::sync::atomic::Ordering::Acquire))
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
    /// `watchers` from now on.
    pub(crate) fn restore(
        event: Arc<Event>,
        parts: ReceiptParts,
        watchers: Arc<ReceiptLog>,
    ) -> Result<Self, PartsError> {
        let ReceiptParts {
            audience,
            delivered,
            late,
            acks,
            again,
        } = parts;
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
            .map(|a| a.slot)
            .chain(again.iter().map(|(s, _)| *s))
            .find(|s| !valid(*s))
        {
            return Err(PartsError::Slot(bad));
        }
        let undelivered = delivered.iter().filter(|t| **t == 0).count()
            + late.iter().filter(|(_, t)| t.is_none()).count();
        let acks: HashMap<u32, Ack> = acks
            .into_iter()
            .map(|a| {
                let ack = Ack {
                    at: Timestamp(a.at),
                    status: Arc::from(a.status),
                    status_at: Timestamp(a.status_at),
                    implied_delivery: a.implied,
                };
                (a.slot, ack)
            })
            .collect();
        let unacked = slots - acks.len();
        // The same estimate as `new`, from the same payload.
        let breaks = event
            .payload
            .iter()
            .filter(|&&b| b == b'\n' || b == b'\r')
            .count();
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
            wire_size: event.payload.len() + 7 * (breaks + 1) + WIRE_OVERHEAD,
            event,
            audience: audience.into(),
            delivered_at: delivered.into_iter().map(AtomicI64::new).collect(),
            undelivered: AtomicUsize::new(undelivered),
            unacked: AtomicUsize::new(unacked),
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
        let audience: Arc<[DeviceId]> = vec![dev("a"), dev("b"), dev("c")].into();
        let r = EventReceipts::new(event(), audience, watchers.clone());
        r.mark_delivered_slot(0, Timestamp(200));
        r.mark_delivered_slot(0, Timestamp(210)); // a redelivery
        r.ack(&dev("b"), Arc::from("ok"), Timestamp(220)); // implied delivery
        r.ack(&dev("late"), Arc::from("seen"), Timestamp(230));
        r.mark_delivered(&dev("later"), Timestamp(240));
        let parts = r.parts();
        let back = EventReceipts::restore(event(), parts.clone(), watchers).unwrap();
        assert_eq!(back.parts(), parts);
        for d in ["a", "b", "c", "late", "later"] {
            assert_eq!(back.receipt_of(&dev(d)), r.receipt_of(&dev(d)), "{d}");
        }
        assert_eq!(back.undelivered(), r.undelivered());
        assert_eq!(back.unacked(), r.unacked());
        assert_eq!(back.recipients(), 5);
        assert_eq!(back.wire_size(), r.wire_size());
        // What happens next happens alike.
        assert_eq!(
            back.mark_delivered(&dev("c"), Timestamp(250)),
            r.mark_delivered(&dev("c"), Timestamp(250))
        );
        assert_eq!(back.parts(), r.parts());
    }

    #[test]
    fn inconsistent_parts_are_refused() {
        let watchers = Arc::new(ReceiptLog::default());
        let r = EventReceipts::new(event(), vec![dev("a")].into(), watchers.clone());
        let mut parts = r.parts();
        parts.delivered.push(0);
        assert!(matches!(
            EventReceipts::restore(event(), parts, watchers.clone()),
            Err(PartsError::Length { .. })
        ));
        let mut parts = r.parts();
        parts.again.push((3, 1));
        assert_eq!(
            EventReceipts::restore(event(), parts, watchers).err(),
            Some(PartsError::Slot(3))
        );
    }
}
