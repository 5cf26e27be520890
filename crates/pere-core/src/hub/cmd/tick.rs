//! The periodic chores: memberships and idempotency keys past their TTL,
//! cursors checkpointed, deadlines, retention, channels reclaimed.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::HubConfig;
use crate::event::{EventId, Timestamp};
use crate::hub::state::State;
use crate::ledger::{EventReceipts, OverdueNotice};
use crate::log::{Evicted, Record};
use crate::name::DeviceId;

impl State {
    /// The periodic chores: memberships past their TTL, idempotency keys
    /// past theirs, cursors checkpointed, empty subscriptions dropped.
    pub(in crate::hub) fn maintain(
        &mut self,
        now: Timestamp,
        config: &HubConfig,
        records: &mut Vec<Record>,
    ) {
        let ttl = config.member_ttl;
        let cluster = self.cluster;
        let ledgers = &self.ledgers;
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
                        member.lost_from = member.lost_from.or(Some(first));
                    }
                }
            }
            sub.ackers = ackers;
            sub.members.retain(|device, member| {
                if member.connections() > 0 {
                    // A cluster node sends its streams' cursors through the
                    // log instead (`checkpoint_cursors`).
                    let (cursor, at) = member.effective_cursor();
                    if !cluster && cursor > member.journaled_cursor {
                        member.journaled_cursor = cursor;
                        records.push(Record::Cursor {
                            subscription: pattern.clone(),
                            device: device.clone(),
                            cursor,
                            at: at.unwrap_or(now),
                        });
                    }
                    return true;
                }
                let since = member
                    .disconnected_at
                    .unwrap_or(member.last_seen)
                    .max(member.last_seen);
                if now.since(since) < ttl {
                    return true;
                }
                if member.is_member {
                    tracing::debug!(subscription = %pattern, device = %device, "membership expired");
                    records.push(Record::Left {
                        subscription: pattern.clone(),
                        device: device.clone(),
                        at: now,
                    });
                }
                false
            });
        }
        self.memberships.drop_empty();
        self.ledgers.reclaim();
        let ledgers = &self.ledgers;
        // Kept until the webhook took them, even for events gone since.
        self.notices
            .retain(|(id, _), (_, sent)| ledgers.holds(id) || !*sent);
        self.idempotency
            .expire(ledgers, now, config.idempotency_ttl);
    }

    /// Issues an overdue notice for every device that has not acked an event
    /// whose deadline passed (once per event and device, ever).
    pub(in crate::hub) fn check_deadlines(&mut self, now: Timestamp, records: &mut Vec<Record>) {
        let Some(deadline) = self.ack_deadline else {
            return;
        };
        while let Some(front) = self.deadlines.front() {
            let due = front.event.time.plus(deadline);
            if due > now {
                break;
            }
            let Some(receipts) = self.deadlines.pop_front() else {
                break;
            };
            if !self.ledgers.holds(&receipts.id()) {
                continue; // no longer retained
            }
            self.notify_unacked(&receipts, due, false, now, records);
        }
    }

    /// Issues one notice per device that has not acknowledged `receipts`'
    /// event and was not noticed yet (overdue, or `expired` when retention
    /// drops the event first), journaled so it is never issued twice.
    pub(in crate::hub) fn notify_unacked(
        &mut self,
        receipts: &EventReceipts,
        deadline: Timestamp,
        expired: bool,
        now: Timestamp,
        records: &mut Vec<Record>,
    ) {
        for (device, state) in receipts.unacked_devices() {
            let key = (receipts.id(), device.clone());
            if self.notices.contains_key(&key) {
                continue;
            }
            let notice = OverdueNotice {
                id: receipts.id(),
                channel: receipts.event.channel.clone(),
                device: device.clone(),
                state,
                published_at: receipts.event.time,
                deadline,
                expired,
            };
            tracing::debug!(
                channel = %notice.channel,
                id = %notice.id,
                device = %device,
                state = state.as_str(),
                expired,
                "receipt overdue"
            );
            records.push(Record::Notice {
                id: notice.id,
                device,
                sent: false,
                at: now,
            });
            receipts.announce_overdue(&notice);
            // In a cluster every node issues it, one node sends it.
            if self.ticker
                && let Some(tx) = &self.notice_tx
                && tx.send(notice.clone()).is_err()
            {
                self.notice_tx = None;
            }
            self.notices.insert(key, (notice, false));
        }
    }

    /// Drops the receipts of evicted events.
    pub(in crate::hub) fn evict(&mut self, evicted: &[Evicted], now: Timestamp) {
        let gone = self.ledgers.evict(evicted);
        // With a deadline, no unacknowledged event leaves without a word:
        // its devices get a notice now (journaled with the next batch).
        if let Some(deadline) = self.ack_deadline {
            let mut records = std::mem::take(&mut self.deferred);
            for r in gone {
                self.notify_unacked(&r, r.event.time.plus(deadline), true, now, &mut records);
            }
            self.deferred = records;
        }
    }

    /// Starts delivering overdue notices to a new listener: every notice
    /// issued but not yet accepted first, then new ones.
    pub(in crate::hub) fn attach_notices(&mut self, tx: mpsc::UnboundedSender<OverdueNotice>) {
        self.notice_tx = Some(tx);
        if self.ticker {
            self.send_unsent_notices();
        }
    }

    /// This cluster node took the ticker's role: it sends the notices now,
    /// starting with those nobody confirmed.
    pub(in crate::hub) fn become_ticker(&mut self, ticker: bool) {
        let was = std::mem::replace(&mut self.ticker, ticker);
        if ticker && !was {
            self.send_unsent_notices();
        }
    }

    fn send_unsent_notices(&mut self) {
        let Some(tx) = &self.notice_tx else {
            return;
        };
        let mut unsent: Vec<&OverdueNotice> = self
            .notices
            .values()
            .filter(|(_, sent)| !sent)
            .map(|(n, _)| n)
            .collect();
        unsent.sort_by_key(|n| (n.id, n.device.clone()));
        for notice in unsent {
            let _ = tx.send(notice.clone());
        }
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
        if let Some(entry) = self.notices.get_mut(&(id, device.clone()))
            && !entry.1
        {
            entry.1 = true;
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
    /// open any more.
    pub(in crate::hub) fn node_gone(&mut self, node: &Arc<str>, now: Timestamp) {
        for (subscription, device) in self.memberships.detach_node(node, now) {
            self.deferred.push(Record::Presence {
                subscription,
                device,
                online: false,
                last_event_id: None,
                at: now,
            });
        }
    }

    /// A cluster node tells the others what its streams were written since
    /// it last did (their receipts become `delivered` on every node).
    pub(in crate::hub) fn checkpoint_cursors(&mut self) {
        use crate::hub::cluster::wire::Wire;
        let mut wires = Vec::new();
        for open in self.memberships.streams.values_mut() {
            let Some(device) = &open.device else {
                continue;
            };
            let upto = open.shared.delivered_upto();
            if upto <= open.sent_upto {
                continue;
            }
            open.sent_upto = upto;
            let at = open.shared.delivered_at().map_or(0, |t| t.0);
            for pattern in &open.subs {
                wires.push(Wire::Cursor {
                    subscription: pattern.clone(),
                    device: device.clone(),
                    cursor: upto.0,
                    at,
                });
            }
        }
        self.outbox.extend(wires);
    }
}
