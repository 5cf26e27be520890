//! Receipts: what an acknowledgement changes besides the event's ledger
//! (presence, the acknowledged floor of each membership).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::error::Error;
use crate::event::{EventId, Timestamp};
use crate::hub::command::{Effect, Owed, Reply};
use crate::hub::state::State;
use crate::hub::{Acked, Counters};
use crate::ledger::{EventReceipts, ReceiptState};
use crate::log::Record;
use crate::name::{ChannelName, DeviceId, Pattern};
use crate::presence::{Member, Op};

/// `Hub::ack`: a device's receipt for an event.
pub(in crate::hub) struct AckCmd {
    pub(in crate::hub) subscription: Pattern,
    pub(in crate::hub) device: DeviceId,
    pub(in crate::hub) id: EventId,
    pub(in crate::hub) status: Arc<str>,
    pub(in crate::hub) reply: Reply<Acked>,
}

/// A receipt to record once durable.
pub(in crate::hub) struct AckEffect {
    receipts: Arc<EventReceipts>,
    subscription: Pattern,
    device: DeviceId,
    status: Arc<str>,
    reply: Reply<Acked>,
}

impl State {
    /// A receipt names a retained event of a channel its subscription matches.
    pub(in crate::hub) fn prepare_ack(
        &mut self,
        cmd: AckCmd,
        now: Timestamp,
        records: &mut Vec<Record>,
    ) -> Effect {
        let AckCmd {
            subscription,
            device,
            id,
            status,
            reply,
        } = cmd;
        match self.ledgers.event(&id) {
            Some(receipts) if subscription.matches(&receipts.event.channel) => {
                records.push(Record::Ack {
                    id,
                    device: device.clone(),
                    status: status.clone(),
                    at: now,
                });
                Effect::Ack(AckEffect {
                    receipts: receipts.clone(),
                    subscription,
                    device,
                    status,
                    reply,
                })
            }
            _ => Effect::Fail(
                Box::new(reply),
                Error::UnknownEvent {
                    channel: subscription.to_string(),
                    id: id.to_string(),
                },
            ),
        }
    }

    /// Records the receipt in the event's ledger and the device's memberships.
    pub(in crate::hub) fn apply_ack(
        &mut self,
        cmd: AckEffect,
        now: Timestamp,
        counters: &Counters,
    ) {
        let AckEffect {
            receipts,
            subscription,
            device,
            status,
            reply,
        } = cmd;
        receipts.ack(&device, status.clone(), now);
        counters.acked.fetch_add(1, Ordering::Relaxed);
        self.note_ack(
            &subscription,
            &receipts.event.channel,
            &device,
            receipts.id(),
            now,
        );
        tracing::debug!(
            channel = %receipts.event.channel,
            id = %receipts.id(),
            device = %device,
            // A device's free text: a newline or a terminal escape in it
            // must not forge log lines.
            status = %crate::text::OneLine(&status),
            "receipt"
        );
        let _ = reply.send(Ok(Acked {
            id: receipts.id(),
            device,
            state: ReceiptState::Acked,
        }));
    }
}

impl AckEffect {
    /// Its batch was not written: the caller gets `err`.
    pub(in crate::hub) fn fail(self, err: Error) {
        Box::new(self.reply).fail(err);
    }
}

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
        self.acked_since_journal = true;
        let mut noted = false;
        let ledgers = &self.ledgers;
        self.memberships.for_matching_mut(channel, |pattern, sub| {
            if let Some(member) = sub.members.get_mut(device) {
                if member.acknowledges() {
                    member.forget_unacked(id);
                } else if member.is_member {
                    // Its first receipt: from now on it is sent again what
                    // it has not acknowledged, starting with what it has
                    // already been sent.
                    member.unacked = ledgers.unacked_of(pattern, device, member.since);
                    sub.ackers += 1;
                }
                touch_ack(member, id, now);
                noted = true;
            }
        });
        if !noted {
            let sub = self.memberships.sub_entry(subscription);
            let member = sub.members.entry(device.clone()).or_insert_with(|| {
                Box::new(Member {
                    is_member: false,
                    ..Member::joined(id, now)
                })
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
