//! Rebuilding the state from the journal at start.

use std::collections::{HashMap, HashSet};

use crate::event::{EventId, Sequencer, Timestamp};
use crate::hub::Counters;
use crate::hub::state::State;
use crate::log::{Evicted, Record};
use crate::name::{ChannelName, DeviceId, Pattern};

/// A member's journaled acknowledged prefix: its bound, and a pattern's
/// channels with their own (`Record::AckedUpto`).
type AckedUpto = (EventId, Vec<(ChannelName, EventId)>);
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
        // Each membership's latest receipt, as journaled (in record order:
        // a join or a leave starts over).
        let mut acking: HashMap<(Pattern, DeviceId), (EventId, Timestamp)> = HashMap::new();
        // And what each has acknowledged all of.
        let mut acked_upto: HashMap<(Pattern, DeviceId), AckedUpto> = HashMap::new();
        // Memberships whose last presence record says a stream was open:
        // connected when the server stopped without a goodbye.
        let mut connected: HashSet<(Pattern, DeviceId)> = HashSet::new();
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
                    let key = (subscription.clone(), device.clone());
                    acking.remove(&key);
                    acked_upto.remove(&key);
                    connected.remove(&key);
                    let sub = self.memberships.sub_entry(&subscription);
                    sub.members
                        .insert(device, Box::new(Member::joined(head, at)));
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
                    if online {
                        connected.insert((subscription.clone(), device.clone()));
                    } else {
                        connected.remove(&(subscription.clone(), device.clone()));
                    }
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
                    let key = (subscription.clone(), device.clone());
                    acking.remove(&key);
                    acked_upto.remove(&key);
                    connected.remove(&key);
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
                } => {
                    acking.insert((subscription, device), (id, at));
                }
                Record::AckedUpto {
                    subscription,
                    device,
                    upto,
                    channels,
                    ..
                } => {
                    acked_upto.insert((subscription, device), (upto, channels));
                }
                // Before receipts, like the cursors' deliveries: these
                // events joined the device's audience when written.
                Record::Replayed { device, ids, at } => {
                    for id in ids {
                        if let Some(receipts) = self.ledgers.event(&id) {
                            receipts.mark_delivered(&device, at);
                        }
                    }
                }
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
        // Each member's latest journaled receipt: it acknowledges even when
        // retention dropped every event it acknowledged.
        let mut latest: HashSet<(Pattern, DeviceId)> = HashSet::new();
        for ((subscription, device), (id, at)) in acking {
            let ledgers = &self.ledgers;
            let Some(member) = self.memberships.member_mut(&subscription, &device) else {
                continue;
            };
            if !member.is_member {
                continue;
            }
            if !member.acknowledges() {
                member.unacked = ledgers.unacked_of(&subscription, &device, member.since);
            }
            if member.last_acked.is_none_or(|(last, _)| last < id) {
                member.last_acked = Some((id, at));
            }
            latest.insert((subscription, device));
        }
        // What retention dropped of an acknowledging member's events
        // before it acknowledged them is told with `pere.gap`: all above
        // what it had acknowledged all of. A stale bound (a receipt in the
        // last second before a kill -9) errs towards a gap. Without one:
        // its latest receipt (a store of an earlier version), or its join
        // (receipts not yet journaled as such).
        let ledgers = &self.ledgers;
        for (pattern, sub) in self.memberships.subs_mut() {
            for (device, member) in &mut sub.members {
                if !member.is_member || !member.acknowledges() {
                    continue;
                }
                let key = (pattern.clone(), device.clone());
                let since = member.since;
                let lost = match acked_upto.get(&key) {
                    Some((upto, channels)) => ledgers.first_loss(pattern, |channel| {
                        channels
                            .iter()
                            .find(|(c, _)| c == channel)
                            .map_or(*upto, |(_, b)| *b)
                            .max(since)
                    }),
                    None => {
                        let bound = if latest.contains(&key) {
                            member.last_acked.map_or(since, |(id, _)| id)
                        } else {
                            since
                        };
                        ledgers.first_loss(pattern, |_| bound.max(since))
                    }
                };
                if lost.is_some() {
                    member.lost_from = lost;
                }
            }
        }
        for (id, device, sent) in notices {
            if let Some(receipts) = self.ledgers.event(&id) {
                self.notices.restore(receipts, device, sent);
            }
        }
        let now = Timestamp::now();
        for (pattern, sub) in self.memberships.subs_mut() {
            sub.ackers = sub.members.values().filter(|m| m.acknowledges()).count();
            for (device, member) in &mut sub.members {
                // Nobody is connected after a restart. The TTL of a member
                // that had left counts from when it left (§5.1); of one
                // that was connected, from now.
                let key = (pattern.clone(), device.clone());
                if connected.contains(&key) || member.disconnected_at.is_none() {
                    member.disconnected_at = Some(member.disconnected_at.unwrap_or(now).max(now));
                }
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
