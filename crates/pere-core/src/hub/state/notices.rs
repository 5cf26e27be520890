//! Overdue notices ([`HubConfig::ack_deadline`]): which events still await
//! their deadline, which notices were issued, and whether the webhook took
//! them. Apart from the rest of the state because a notice is issued once
//! per event and device, ever (journaled, kept until the webhook took it
//! even after its event is gone), and sent only by the node that holds the
//! ticker's role: both rules live in the methods here.
//!
//! [`HubConfig::ack_deadline`]: crate::config::HubConfig::ack_deadline

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::event::{EventId, Timestamp};
use crate::hub::state::Ledgers;
use crate::ledger::{EventReceipts, OverdueNotice, ReceiptState};
use crate::log::Record;
use crate::name::{ChannelName, DeviceId};

/// Deadlines pending, notices issued, and where they go.
#[derive(Debug)]
pub(in crate::hub) struct Notices {
    /// [`HubConfig::ack_deadline`](crate::config::HubConfig::ack_deadline):
    /// without one, no event is watched and no notice issued.
    ack_deadline: Option<Duration>,
    /// Events whose acknowledgement deadline has not been checked yet, in
    /// publish order (so the due ones are at the front).
    deadlines: VecDeque<Arc<EventReceipts>>,
    /// Overdue notices issued, and whether the webhook accepted them.
    issued: HashMap<(EventId, DeviceId), (OverdueNotice, bool)>,
    /// Where issued notices go (the webhook task), once somebody listens.
    tx: Option<mpsc::UnboundedSender<OverdueNotice>>,
    /// Whether this node holds the ticker's lease (a single node always
    /// does): it appends the cluster's ticks and takes its snapshots.
    ticker: bool,
    /// Whether this node sends the notices issued now: a single node
    /// always; a cluster node when the last tick in the log's order was
    /// its own. Every node applies the log in one order, so each notice
    /// has one sender, whatever each node last found of the lease (one
    /// that stalled past it still thinks it holds it).
    sends: bool,
    /// Notices handed to this node's listener (the webhook task, which
    /// retries them itself): not handed again when this node takes the
    /// sending back.
    handed: HashSet<(EventId, DeviceId)>,
    /// Cluster ticks applied so far, and at which one each notice was
    /// issued (this node's count; a notice from before it started counts
    /// as issued at 0): a node takes over only the notices their sender
    /// had a whole tick to confirm.
    ticks: u64,
    issued_at: HashMap<(EventId, DeviceId), u64>,
}

impl Notices {
    /// None issued yet; `ticker` says whether this node sends them.
    pub(in crate::hub) fn new(ack_deadline: Option<Duration>, ticker: bool) -> Self {
        Self {
            ack_deadline,
            deadlines: VecDeque::new(),
            issued: HashMap::new(),
            tx: None,
            ticker,
            sends: ticker,
            handed: HashSet::new(),
            ticks: 0,
            issued_at: HashMap::new(),
        }
    }

    /// Watches a new event's deadline, if the hub has one.
    pub(in crate::hub) fn watch(&mut self, receipts: &Arc<EventReceipts>) {
        if self.ack_deadline.is_some() {
            self.deadlines.push_back(receipts.clone());
        }
    }

    /// Issues an overdue notice for every device that has not acked an event
    /// whose deadline passed (once per event and device, ever).
    pub(in crate::hub) fn check_deadlines(
        &mut self,
        ledgers: &Ledgers,
        now: Timestamp,
        records: &mut Vec<Record>,
    ) {
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
            if !ledgers.holds(&receipts.id()) {
                continue; // no longer retained
            }
            self.notify_unacked(&receipts, due, false, now, records);
        }
    }

    /// With a deadline, no unacknowledged event leaves without a word: the
    /// devices of events retention dropped get a notice now.
    pub(in crate::hub) fn notify_evicted(
        &mut self,
        gone: Vec<Arc<EventReceipts>>,
        now: Timestamp,
        records: &mut Vec<Record>,
    ) {
        let Some(deadline) = self.ack_deadline else {
            return;
        };
        for r in gone {
            self.notify_unacked(&r, r.event.time.plus(deadline), true, now, records);
        }
    }

    /// Issues one notice per device that has not acknowledged `receipts`'
    /// event and was not noticed yet (overdue, or `expired` when retention
    /// drops the event first), journaled so it is never issued twice.
    fn notify_unacked(
        &mut self,
        receipts: &EventReceipts,
        deadline: Timestamp,
        expired: bool,
        now: Timestamp,
        records: &mut Vec<Record>,
    ) {
        let mut unacked = receipts.unacked_devices();
        // In device order, not the audience's (each node fills that its own
        // way): the notices are receipt changes, numbered alike on every
        // node of a cluster.
        unacked.sort_unstable_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        for (device, state) in unacked {
            let key = (receipts.id(), device.clone());
            if self.issued.contains_key(&key) {
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
            receipts.announce_overdue(&notice, now);
            // In a cluster every node issues it, one node sends it.
            if self.sends
                && let Some(tx) = &self.tx
            {
                if tx.send(notice.clone()).is_err() {
                    self.tx = None;
                } else {
                    self.handed.insert(key.clone());
                }
            }
            self.issued_at.insert(key.clone(), self.ticks);
            self.issued.insert(key, (notice, false));
        }
    }

    /// The webhook accepted a notice: returns whether that is news (then it
    /// is to be journaled, and never sent again).
    pub(in crate::hub) fn mark_sent(&mut self, id: EventId, device: &DeviceId) -> bool {
        match self.issued.get_mut(&(id, device.clone())) {
            Some(entry) if !entry.1 => {
                entry.1 = true;
                self.handed.remove(&(id, device.clone()));
                self.issued_at.remove(&(id, device.clone()));
                true
            }
            _ => false,
        }
    }

    /// Forgets the notices the webhook took whose event is gone: one it
    /// has not taken yet is kept, event or not, to be sent again.
    pub(in crate::hub) fn forget_gone(&mut self, ledgers: &Ledgers) {
        self.issued
            .retain(|(id, _), (_, sent)| ledgers.holds(id) || !*sent);
        let issued = &self.issued;
        self.handed.retain(|key| issued.contains_key(key));
        self.issued_at.retain(|key, _| issued.contains_key(key));
    }

    /// Rebuilds, at start, a notice the journal says was issued for
    /// `device` on `receipts`' event (and whether it was sent).
    pub(in crate::hub) fn restore(
        &mut self,
        receipts: &EventReceipts,
        device: DeviceId,
        sent: bool,
    ) {
        let id = receipts.id();
        let key = (id, device.clone());
        match self.issued.get_mut(&key) {
            Some(entry) => entry.1 |= sent,
            None => {
                let state = receipts
                    .receipt_of(&device)
                    .map_or(ReceiptState::Pending, |r| r.state);
                let notice = OverdueNotice {
                    id,
                    channel: receipts.event.channel.clone(),
                    device,
                    state,
                    published_at: receipts.event.time,
                    deadline: receipts
                        .event
                        .time
                        .plus(self.ack_deadline.unwrap_or_default()),
                    expired: false,
                };
                self.issued.insert(key, (notice, sent));
            }
        }
    }

    /// Starts delivering overdue notices to a new listener: every notice
    /// issued but not yet accepted first (when this node sends), then new
    /// ones.
    pub(in crate::hub) fn attach(&mut self, tx: mpsc::UnboundedSender<OverdueNotice>) {
        self.tx = Some(tx);
        // What the previous listener held is gone with it.
        self.handed.clear();
        if self.sends {
            self.send_unsent(u64::MAX);
        }
    }

    /// Whether this node holds the ticker's lease, as it last found.
    pub(in crate::hub) fn is_ticker(&self) -> bool {
        self.ticker
    }

    /// What this cluster node found of the ticker's lease: the holder
    /// appends the ticks (and so, in log order, becomes the sender).
    pub(in crate::hub) fn become_ticker(&mut self, ticker: bool) {
        self.ticker = ticker;
    }

    /// A cluster's tick was applied, appended by this node (`mine`) or
    /// another: the notices issued from now on, until the next tick, are
    /// sent by its node. On each of its ticks a node also sends those
    /// that nobody confirmed for a whole tick and it has not handed to
    /// its listener: their sender died with them. (What its own webhook
    /// task gave up on waits for a new listener or a restart.)
    pub(in crate::hub) fn tick_by(&mut self, mine: bool) {
        self.ticks += 1;
        self.sends = mine;
        if mine {
            self.send_unsent(self.ticks.saturating_sub(1));
        }
    }

    /// Sends every notice issued before tick `before` that the webhook has
    /// not accepted yet and this node has not handed to it already, oldest
    /// first.
    fn send_unsent(&mut self, before: u64) {
        let Some(tx) = &self.tx else {
            return;
        };
        let mut unsent: Vec<&OverdueNotice> = self
            .issued
            .iter()
            .filter(|(key, (_, sent))| {
                !sent
                    && !self.handed.contains(*key)
                    && self.issued_at.get(*key).is_none_or(|&at| at < before)
            })
            .map(|(_, (n, _))| n)
            .collect();
        unsent.sort_by_key(|n| (n.id, n.device.clone()));
        let mut handed = Vec::with_capacity(unsent.len());
        for notice in unsent {
            if tx.send(notice.clone()).is_ok() {
                handed.push((notice.id, notice.device.clone()));
            }
        }
        self.handed.extend(handed);
    }
}

/// The notices as plain data, for a cluster snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(in crate::hub) struct NoticesParts {
    /// The events whose deadline is still to be checked, in order.
    deadlines: Vec<u64>,
    /// By event and device.
    issued: Vec<IssuedPart>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct IssuedPart {
    id: u64,
    channel: ChannelName,
    device: DeviceId,
    state: ReceiptState,
    published_at: i64,
    deadline: i64,
    expired: bool,
    sent: bool,
}

impl Notices {
    /// Deadlines and notices, as plain data in a stable order.
    pub(in crate::hub) fn parts(&self) -> NoticesParts {
        let mut issued: Vec<IssuedPart> = self
            .issued
            .values()
            .map(|(n, sent)| IssuedPart {
                id: n.id.0,
                channel: n.channel.clone(),
                device: n.device.clone(),
                state: n.state,
                published_at: n.published_at.0,
                deadline: n.deadline.0,
                expired: n.expired,
                sent: *sent,
            })
            .collect();
        issued.sort_unstable_by(|a, b| (a.id, a.device.as_str()).cmp(&(b.id, b.device.as_str())));
        NoticesParts {
            deadlines: self.deadlines.iter().map(|r| r.id().0).collect(),
            issued,
        }
    }

    /// Takes deadlines and notices back from [`Notices::parts`]: the
    /// deadlines of events `ledgers` retains (the others would be skipped).
    pub(in crate::hub) fn restore_parts(&mut self, parts: NoticesParts, ledgers: &Ledgers) {
        self.deadlines = parts
            .deadlines
            .into_iter()
            .filter_map(|id| ledgers.event(&EventId(id)).cloned())
            .collect();
        self.issued = parts
            .issued
            .into_iter()
            .map(|p| {
                let notice = OverdueNotice {
                    id: EventId(p.id),
                    channel: p.channel,
                    device: p.device,
                    state: p.state,
                    published_at: Timestamp(p.published_at),
                    deadline: Timestamp(p.deadline),
                    expired: p.expired,
                };
                ((notice.id, notice.device.clone()), (notice, p.sent))
            })
            .collect();
    }
}
