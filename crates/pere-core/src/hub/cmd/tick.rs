//! The periodic chores: memberships and idempotency keys past their TTL,
//! cursors checkpointed, deadlines, retention, channels reclaimed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use crate::config::HubConfig;
use crate::event::{EventId, Timestamp};
use crate::hub::state::{Ledgers, State};
use crate::log::{Evicted, Record};
use crate::name::{ChannelName, DeviceId, Pattern};
use crate::presence::Member;

/// The `Cursor` record of what `member`'s streams were written since its
/// cursor was last journaled, if anything; from then on it counts as
/// journaled.
pub(in crate::hub) fn journal_cursor(
    subscription: &Pattern,
    device: &DeviceId,
    member: &mut Member,
    now: Timestamp,
) -> Option<Record> {
    let (cursor, at) = member.effective_cursor();
    if cursor <= member.journaled_cursor {
        return None;
    }
    member.journaled_cursor = cursor;
    Some(Record::Cursor {
        subscription: subscription.clone(),
        device: device.clone(),
        cursor,
        at: at.unwrap_or(now),
    })
}

/// Unacknowledged events of a wildcard member looked at per tick for
/// [`acked_upto`].
pub(in crate::hub) const ACKED_UPTO_WALK: usize = 1024;

/// The record of what `member` of `pattern` has acknowledged all of, up
/// to the hub's `head`: every event of its audience, but those it has not
/// acknowledged and those retention dropped that it was not told of yet
/// (`lost_from`). On a pattern, per channel with unacknowledged events: a
/// quiet channel's unacknowledged event must not make drops of
/// acknowledged events on a busy one count as a loss after a restart.
pub(in crate::hub) fn acked_upto(
    pattern: &Pattern,
    device: &DeviceId,
    member: &Member,
    ledgers: &Ledgers,
    head: EventId,
    now: Timestamp,
) -> Record {
    let below = |id: EventId| EventId(id.0.saturating_sub(1));
    let mut cap = member.lost_from.map_or(head, below);
    let mut channels: Vec<(ChannelName, EventId)> = Vec::new();
    if pattern.exact().is_some() {
        if let Some(first) = member.unacked.front() {
            cap = cap.min(below(*first));
        }
    } else {
        // In id order: a channel's first is its lowest. The writer runs
        // this each tick for each member seen, so only the first
        // ACKED_UPTO_WALK are looked at: a channel whose first lies beyond
        // gets the bound below the last one looked at, lower than its own
        // (towards a gap, never away from one), and the record stays small.
        let mut firsts: HashMap<&ChannelName, EventId> = HashMap::new();
        for (n, id) in member.unacked.iter().enumerate() {
            if n == ACKED_UPTO_WALK {
                cap = cap.min(below(*id));
                break;
            }
            match ledgers.event(id) {
                Some(r) => {
                    firsts.entry(&r.event.channel).or_insert(below(*id));
                }
                // Dropped, not yet noted as lost: lost on its channel.
                None => cap = cap.min(below(*id)),
            }
        }
        channels = firsts
            .into_iter()
            .map(|(c, upto)| (c.clone(), upto.min(cap)))
            .collect();
        channels.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    }
    Record::AckedUpto {
        subscription: pattern.clone(),
        device: device.clone(),
        upto: cap,
        channels,
        at: now,
    }
}

/// When a member's TTL started: its last stream's close alone
/// (docs/PROTOCOL.md §5.1: a receipt does not extend it); for a device
/// known only by its receipts, the last one.
fn ttl_since(member: &Member) -> Timestamp {
    if member.is_member {
        member.disconnected_at.unwrap_or(member.last_seen)
    } else {
        member.last_seen
    }
}

/// Whether an offline member stays: not once its TTL ran out, when its
/// `Left` is recorded.
fn keep_offline(
    pattern: &Pattern,
    device: &DeviceId,
    member: &Member,
    now: Timestamp,
    ttl: std::time::Duration,
    records: &mut Vec<Record>,
) -> bool {
    if now.since(ttl_since(member)) < ttl {
        return true;
    }
    if member.is_member {
        records.push(expired(pattern.clone(), device.clone(), now));
    }
    false
}

/// The record of a membership that expired at `now`.
fn expired(subscription: Pattern, device: DeviceId, now: Timestamp) -> Record {
    tracing::debug!(subscription = %subscription, device = %device, "membership expired");
    Record::Left {
        subscription,
        device,
        at: now,
    }
}

impl State {
    /// Ends the memberships whose TTL has run out by `now`, before a
    /// batch's commands see them: a device is a member for `--member-ttl`
    /// after its last stream closed, not until the next tick (up to a
    /// second more: publishes counted it, and its return resumed an ended
    /// membership). Taken from the members that went offline, soonest
    /// first: no walk over every member. A single node's; a cluster's
    /// nodes expire them at the shared tick, which every node applies
    /// alike.
    pub(in crate::hub) fn expire_due(
        &mut self,
        now: Timestamp,
        ttl: std::time::Duration,
        records: &mut Vec<Record>,
    ) {
        let mut removed = false;
        while let Some(Reverse((since, _, _))) = self.expiring.peek() {
            if now.since(*since) < ttl {
                break;
            }
            let Some(Reverse((since, pattern, device))) = self.expiring.pop() else {
                break;
            };
            let Some(sub) = self.memberships.sub_mut(&pattern) else {
                continue;
            };
            // The member as it was when it went offline: one that came
            // back (or left again later, with an entry of its own) stays.
            let due = sub
                .members
                .get(&device)
                .is_some_and(|m| m.is_member && m.connections() == 0 && ttl_since(m) == since);
            if !due {
                continue;
            }
            sub.members.remove(&device);
            // `ackers` stays as it is until the chores recount it: one too
            // many only tracks events nobody will be sent again, one too
            // few would stop tracking them for a member that acknowledges.
            records.push(expired(pattern, device, now));
            removed = true;
        }
        if removed {
            self.memberships.drop_empty();
        }
    }

    /// The members offline now, soonest to expire first, for
    /// [`expire_due`](Self::expire_due): rebuilt by the chores when
    /// members went offline by a path that does not note it (a start, a
    /// subscribe whose write failed) or when entries of members that came
    /// back pile up.
    fn rebuild_expiring(&mut self, offline: usize) {
        if self.cluster
            || (self.expiring.len() >= offline && self.expiring.len() <= 2 * offline + 1024)
        {
            return;
        }
        let mut entries = Vec::with_capacity(offline);
        for (pattern, sub) in self.memberships.subs() {
            for (device, m) in &sub.members {
                if m.is_member && m.connections() == 0 {
                    entries.push(Reverse((ttl_since(m), pattern.clone(), device.clone())));
                }
            }
        }
        self.expiring = BinaryHeap::from(entries);
    }

    /// The periodic chores: memberships past their TTL, idempotency keys
    /// past theirs, cursors checkpointed, empty subscriptions dropped.
    pub(in crate::hub) fn maintain(
        &mut self,
        now: Timestamp,
        config: &HubConfig,
        records: &mut Vec<Record>,
    ) {
        self.journal_acks(now, records);
        if !self.cluster {
            // Like cursors: what replays wrote since the last tick.
            records.extend(self.memberships.written_replays());
        }
        let ttl = config.member_ttl;
        let cluster = self.cluster;
        let ledgers = &self.ledgers;
        let mut offline = 0;
        for (pattern, sub) in self.memberships.subs_mut() {
            let mut ackers = 0;
            for member in sub.members.values_mut() {
                if member.acknowledges() {
                    ackers += 1;
                    // Retention dropped these before the device acknowledged
                    // them: forget them, and tell it when it comes back.
                    while let Some(&first) = member.unacked.front()
                        && !ledgers.holds(&first)
                    {
                        member.unacked.pop_front();
                        // The lowest: a failover's loss may have been
                        // noted first, with a later id.
                        member.lost_from = Some(member.lost_from.map_or(first, |l| l.min(first)));
                    }
                }
            }
            sub.ackers = ackers;
            sub.members.retain(|device, member| {
                if member.connections() > 0 {
                    // A cluster node sends its streams' cursors through the
                    // log instead (`checkpoint_cursors`).
                    if !cluster {
                        records.extend(journal_cursor(pattern, device, member, now));
                    }
                    return true;
                }
                let keep = keep_offline(pattern, device, member, now, ttl, records);
                offline += usize::from(keep && member.is_member);
                keep
            });
        }
        self.memberships.drop_empty();
        self.rebuild_expiring(offline);
        self.ledgers.reclaim();
        self.notices.forget_gone(&self.ledgers);
        self.idempotency
            .expire(&self.ledgers, now, config.idempotency_ttl);
    }

    /// Journals the latest receipt of each member that sent one since the
    /// last time (`Record::Acking`), and what it has acknowledged all of
    /// (`Record::AckedUpto`): after a restart it still acknowledges once
    /// retention dropped the events it acknowledged, and is told of those
    /// retention dropped before it acknowledged them. A cluster's log keeps
    /// its state otherwise.
    pub(in crate::hub) fn journal_acks(&mut self, now: Timestamp, records: &mut Vec<Record>) {
        let since = std::mem::replace(&mut self.acks_journaled, now);
        let acked = std::mem::take(&mut self.acked_since_journal);
        if self.cluster || !acked {
            return;
        }
        let head = self.head;
        let ledgers = &self.ledgers;
        for (pattern, sub) in self.memberships.subs() {
            for (device, member) in &sub.members {
                let Some((id, at)) = member.last_acked else {
                    continue;
                };
                if !member.is_member {
                    continue;
                }
                if at >= since {
                    records.push(Record::Acking {
                        subscription: pattern.clone(),
                        device: device.clone(),
                        id,
                        at,
                    });
                }
                // Any receipt since, also one below the latest (a retry
                // coming late), may have moved what it acknowledged all of.
                if member.last_seen >= since {
                    records.push(acked_upto(pattern, device, member, ledgers, head, now));
                }
            }
        }
    }

    /// Drops the receipts of evicted events.
    pub(in crate::hub) fn evict(&mut self, evicted: &[Evicted], now: Timestamp) {
        let gone = self.ledgers.evict(evicted);
        // Their notices are journaled with the next batch.
        self.notices.notify_evicted(gone, now, &mut self.deferred);
    }
}

impl State {
    /// The webhook accepted a notice: it is never sent again.
    pub(in crate::hub) fn prepare_notice_sent(
        &mut self,
        id: EventId,
        device: DeviceId,
        now: Timestamp,
        records: &mut Vec<Record>,
    ) {
        if self.notices.mark_sent(id, &device) {
            records.push(Record::Notice {
                id,
                device,
                sent: true,
                at: now,
            });
        }
    }
}

impl State {
    /// `node` is gone (it stopped heartbeating): none of its streams is
    /// counted open any more.
    pub(in crate::hub) fn node_gone(&mut self, node: &Arc<str>, now: Timestamp) {
        self.memberships.set_others(node, None);
        for (subscription, device) in self.memberships.detach_node(node, now) {
            self.deferred.push(Record::Presence {
                subscription,
                device,
                online: false,
                last_event_id: None,
                at: now,
            });
        }
        if self.cluster && **node == *self.node {
            // This node, alive: it stalled or was cut off from the log for
            // longer than a heartbeat, and no node (itself included) counts
            // its devices' streams now. They end, so that their devices
            // come back (here or elsewhere, from their `Last-Event-ID` or
            // cursor: nothing is lost) and are counted again, rather than
            // be shown offline, and expire, while connected. Anonymous
            // streams stay: the next `Streams` entry counts them again.
            let ids: Vec<u64> = self
                .memberships
                .streams()
                .filter(|open| open.device.is_some())
                .map(|open| open.shared.id)
                .collect();
            if !ids.is_empty() {
                tracing::warn!(
                    streams = ids.len(),
                    "the cluster took this node for gone (no heartbeat for too long): its devices' streams end, to be counted again when they reconnect"
                );
            }
            for id in ids {
                if let Some(open) = self.memberships.stream(id) {
                    open.shared.revoke();
                }
                self.close_stream(id, now);
            }
        }
    }

    /// A cluster node tells the others what its streams were written since
    /// it last did (their receipts become `delivered` on every node).
    pub(in crate::hub) fn checkpoint_cursors(&mut self) {
        self.outbox.extend(self.memberships.unsent_cursors());
    }
}
