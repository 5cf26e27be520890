//! Rebuilding the state from the journal at start.

use crate::event::{EventId, Sequencer, Timestamp};
use crate::hub::Counters;
use crate::hub::state::State;
use crate::log::{Evicted, Record};
use crate::name::{DeviceId, Pattern};
use crate::presence::{Member, Op};

impl State {
    /// Rebuilds the state from the journal, in order.
    pub(in crate::hub) fn recover(&mut self, records: Vec<Record>, evicted: &[Evicted]) {
        for e in evicted {
            self.ledgers.note_evicted(&e.channel, e.upto);
        }
        let counters = Counters::default();
        // Receipts go last: deliveries are only known from cursors (their
        // times are the cursor's), and an ack first would claim the delivery
        // with its own time.
        let mut acks = Vec::new();
        let mut notices = Vec::new();
        let mut acking = Vec::new();
        for record in records {
            match record {
                Record::Event(event) => {
                    if self.ledgers.holds(&event.id) {
                        // Replayed twice (a store's own recovery should
                        // prevent it): the first copy stands.
                        continue;
                    }
                    if event.id > self.seq.last() {
                        self.seq = Sequencer::after(event.id);
                    }
                    self.idempotency.remember_event(&event);
                    self.fan_out(event, &counters);
                }
                Record::Ack {
                    id,
                    device,
                    status,
                    at,
                } => acks.push((id, device, status, at)),
                Record::Joined {
                    subscription,
                    device,
                    head,
                    at,
                } => {
                    let sub = self.memberships.sub_entry(&subscription);
                    let last_acked = sub.members.get(&device).and_then(|m| m.last_acked);
                    let mut member = Member::joined(head, at);
                    member.last_acked = last_acked;
                    sub.members.insert(device, Box::new(member));
                }
                Record::Cursor {
                    subscription,
                    device,
                    cursor,
                    at,
                } => {
                    if let Some(member) = self.memberships.member_mut(&subscription, &device)
                        && cursor > member.cursor
                    {
                        member.cursor = cursor;
                        member.cursor_at = Some(at);
                        member.journaled_cursor = cursor;
                    }
                }
                Record::Presence {
                    subscription,
                    device,
                    online,
                    last_event_id,
                    at,
                } => {
                    if let Some(member) = self.memberships.member_mut(&subscription, &device) {
                        member.last_seen = at;
                        member.op = if online { Op::Feed } else { Op::Left };
                        member.op_at = at;
                        member.disconnected_at = Some(at);
                        if online {
                            member.last_event_id = last_event_id.map(|id| id.to_string());
                        }
                    }
                }
                Record::Left {
                    subscription,
                    device,
                    ..
                } => {
                    if let Some(sub) = self.memberships.sub_mut(&subscription)
                        && let Some(member) = sub.members.remove(&device)
                    {
                        // It was written these before it left (below, for
                        // the members that stay).
                        self.mark_delivered_upto_cursor(&subscription, &device, &member);
                    }
                }
                Record::Notice {
                    id, device, sent, ..
                } => notices.push((id, device, sent)),
                Record::Token { token, grants, .. } => self.auth.apply(token, grants),
                Record::Acking {
                    subscription,
                    device,
                    id,
                    at,
                } => acking.push((subscription, device, id, at)),
            }
        }
        // Deliveries up to each member's cursor happened before the restart.
        for (pattern, sub) in self.memberships.subs() {
            for (device, member) in &sub.members {
                self.mark_delivered_upto_cursor(pattern, device, member);
            }
        }
        for (id, device, status, at) in acks {
            if let Some(receipts) = self.ledgers.event(&id).cloned() {
                receipts.ack(&device, status, at);
                let channel = receipts.event.channel.clone();
                let pattern = Pattern::from(channel.clone());
                self.note_ack(&pattern, &channel, &device, id, at);
            }
        }
        // Members that acknowledge although retention dropped every event
        // they acknowledged: at-least-once still holds for them.
        for (subscription, device, id, at) in acking {
            let ledgers = &self.ledgers;
            if let Some(member) = self.memberships.member_mut(&subscription, &device)
                && member.is_member
                && !member.acknowledges()
                && at >= member.joined_at
            {
                member.unacked = ledgers.unacked_of(&subscription, &device, member.since);
                member.last_acked = Some((id, at));
                if ledgers.dropped_after(&subscription, id) {
                    // Events after its last receipt were dropped: they were
                    // not acknowledged, and it is told of the gap.
                    member.lost_from = Some(EventId(id.0 + 1));
                }
            }
        }
        for (id, device, sent) in notices {
            if let Some(receipts) = self.ledgers.event(&id) {
                self.notices.restore(receipts, device, sent);
            }
        }
        let now = Timestamp::now();
        for (_, sub) in self.memberships.subs_mut() {
            sub.ackers = sub.members.values().filter(|m| m.acknowledges()).count();
            for member in sub.members.values_mut() {
                // Nobody is connected after a restart; the TTL counts from now.
                member.disconnected_at = Some(member.disconnected_at.unwrap_or(now).max(now));
            }
        }
    }
}

impl State {
    /// Marks `device` delivered the events of its membership up to its
    /// journaled cursor, at the cursor's time.
    fn mark_delivered_upto_cursor(&self, pattern: &Pattern, device: &DeviceId, member: &Member) {
        if member.cursor <= member.since {
            return;
        }
        let at = member.cursor_at.unwrap_or_default();
        self.ledgers
            .mark_delivered_between(pattern, device, member.since, member.cursor, at);
    }
}
