//! Receipts: what an acknowledgement changes besides the event's ledger
//! (presence, the acknowledged floor of each membership).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};

use crate::event::{EventId, Timestamp};
use crate::hub::state::{ChannelLedger, State, Sub};
use crate::name::{ChannelName, DeviceId, Pattern};
use crate::presence::{Member, Op};

impl State {
    /// Presence bookkeeping for a receipt: every membership of the device
    /// that matches the event's channel, or a presence-only entry on the
    /// subscription the receipt named.
    pub(in crate::hub) fn note_ack(
        &mut self,
        subscription: &Pattern,
        channel: &ChannelName,
        device: &DeviceId,
        id: EventId,
        now: Timestamp,
    ) {
        let mut noted = false;
        let State { subs, channels, .. } = self;
        for (pattern, sub) in subs.iter_mut() {
            if !pattern.matches(channel) {
                continue;
            }
            if let Some(member) = sub.members.get_mut(device) {
                if member.acknowledges() {
                    member.forget_unacked(id);
                } else if member.is_member {
                    // Its first receipt: from now on it is sent again what
                    // it has not acknowledged, starting with what it has
                    // already been sent.
                    member.unacked = unacked_events(channels, pattern, device, member.since);
                    sub.ackers += 1;
                }
                touch_ack(member, id, now);
                noted = true;
            }
        }
        if !noted {
            let sub = match self.subs.entry(subscription.clone()) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    if subscription.exact().is_none() {
                        self.wild.push(subscription.clone());
                    }
                    e.insert(Sub::default())
                }
            };
            let member = sub.members.entry(device.clone()).or_insert_with(|| Member {
                is_member: false,
                ..Member::joined(id, now)
            });
            touch_ack(member, id, now);
        }
    }
}

pub(in crate::hub) fn touch_ack(member: &mut Member, id: EventId, now: Timestamp) {
    if member.last_acked.is_none_or(|(last, _)| id >= last) {
        member.last_acked = Some((id, now));
    }
    member.last_seen = now;
    member.op = Op::Feedback;
    member.op_at = now;
    member.last_event_id = Some(id.to_string());
}

/// The retained events on `pattern`'s channels after `since` that `device`
/// has not acknowledged, in id order: an acknowledging member's `unacked`
/// when it starts acknowledging, or after a restart.
pub(in crate::hub) fn unacked_events(
    channels: &HashMap<ChannelName, ChannelLedger>,
    pattern: &Pattern,
    device: &DeviceId,
    since: EventId,
) -> VecDeque<EventId> {
    let mut ids = Vec::new();
    let mut scan = |ledger: &ChannelLedger| {
        let start = ledger.receipts.partition_point(|r| r.id() <= since);
        ids.extend(
            ledger
                .receipts
                .range(start..)
                .filter(|r| !r.is_acked_by(device))
                .map(|r| r.id()),
        );
    };
    match pattern.exact() {
        Some(channel) => {
            if let Some(ledger) = channels.get(channel) {
                scan(ledger);
            }
        }
        None => {
            for (channel, ledger) in channels {
                if pattern.matches(channel) {
                    scan(ledger);
                }
            }
        }
    }
    ids.sort_unstable();
    ids.into()
}
