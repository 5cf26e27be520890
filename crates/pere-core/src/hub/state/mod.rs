//! The hub's state, owned by the writer task: subscriptions and their
//! memberships, retained events' ledgers per channel, idempotency keys,
//! open streams, notices. The commands (`cmd/`) change it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::auth::AuthRegistry;
use crate::config::HubConfig;
use crate::event::{EventId, Sequencer, Timestamp};
use crate::ledger::{EventReceipts, OverdueNotice};
use crate::log::Record;
use crate::metrics::HubMetrics;
use crate::name::{ChannelName, DeviceId, Pattern};
use crate::receipt_log::ReceiptLog;

mod memberships;

pub(super) use memberships::{Memberships, OpenStream};

#[derive(Debug, Default)]
pub(super) struct ChannelLedger {
    pub(super) receipts: VecDeque<Arc<EventReceipts>>,
    /// Highest id dropped for retention.
    pub(super) evicted_upto: EventId,
}

/// Most reclaimed channels remembered one by one; beyond, they are folded
/// into one floor for all of them (a gap told conservatively).
const MAX_TOMBSTONES: usize = 100_000;

/// What the hub remembers of channels it reclaimed: which ids retention
/// dropped there, so a client resuming below them still hears of the gap.
/// A few dozen bytes each instead of a ledger, and bounded.
#[derive(Debug, Default)]
pub(super) struct Tombstones {
    upto: HashMap<ChannelName, EventId>,
    order: VecDeque<ChannelName>,
    /// The highest id dropped on any channel forgotten past the bound.
    floor: EventId,
}

impl Tombstones {
    pub(in crate::hub) fn add(&mut self, channel: ChannelName, upto: EventId) {
        if upto == EventId::ZERO {
            return;
        }
        if self.upto.insert(channel.clone(), upto).is_none() {
            self.order.push_back(channel);
        }
        while self.order.len() > MAX_TOMBSTONES {
            if let Some(old) = self.order.pop_front()
                && let Some(id) = self.upto.remove(&old)
            {
                self.floor = self.floor.max(id);
            }
        }
    }

    /// Takes a reclaimed channel's record back (it has events again).
    pub(in crate::hub) fn take(&mut self, channel: &ChannelName) -> EventId {
        match self.upto.remove(channel) {
            Some(id) => {
                self.order.retain(|c| c != channel);
                id
            }
            None => EventId::ZERO,
        }
    }

    /// Whether a client resuming after `after` on `pattern` may have lost
    /// events of a reclaimed channel.
    pub(in crate::hub) fn lost_after(&self, pattern: &Pattern, after: EventId) -> bool {
        if after < self.floor {
            return true;
        }
        match pattern.exact() {
            Some(channel) => self.upto.get(channel).is_some_and(|upto| after < *upto),
            None => self
                .upto
                .iter()
                .any(|(channel, upto)| after < *upto && pattern.matches(channel)),
        }
    }
}

/// Channel, publisher, key.
pub(super) type IdemKey = (ChannelName, Option<DeviceId>, Box<str>);

#[derive(Debug)]
pub(super) struct Idem {
    pub(super) id: EventId,
    pub(super) recipients: usize,
    pub(super) at: Timestamp,
}

pub(super) struct State {
    /// The hub's token table (shared with request handlers).
    pub(super) auth: Arc<AuthRegistry>,
    pub(super) seq: Sequencer,
    /// The last event applied (fanned out). Streams registered now get
    /// live events above it and replay at or below it.
    pub(super) head: EventId,
    /// Ids below this predate what the store remembers (a volatile store's
    /// start): a client resuming below it may have lost events.
    pub(super) floor: EventId,
    /// Who listens: subscriptions, their members, this node's streams.
    pub(super) memberships: Memberships,
    pub(super) channels: HashMap<ChannelName, ChannelLedger>,
    /// Channels reclaimed once retention emptied them, with the highest id
    /// retention dropped there (for `pere.gap`).
    pub(super) tombstones: Tombstones,
    pub(super) by_id: HashMap<EventId, Arc<EventReceipts>>,
    /// Idempotency keys, scoped by channel and publisher (the `device` of
    /// the publish: a token's subject when auth is on), so one publisher's
    /// key never swallows another's event.
    pub(super) idempotency: HashMap<IdemKey, Idem>,
    pub(super) watchers: HashMap<ChannelName, Arc<ReceiptLog>>,
    /// Gaps told to receipts streams that fell behind (metrics).
    pub(super) receipt_gaps: Arc<std::sync::atomic::AtomicU64>,
    /// Records produced while applying (a stream closed for being slow);
    /// written with the next batch.
    pub(super) deferred: Vec<Record>,
    /// [`HubConfig::replay_all`].
    pub(super) replay_all: bool,
    /// [`HubConfig::ack_deadline`].
    pub(super) ack_deadline: Option<Duration>,
    /// Events whose acknowledgement deadline has not been checked yet, in
    /// publish order (so the due ones are at the front).
    pub(super) deadlines: VecDeque<Arc<EventReceipts>>,
    /// Overdue notices issued, and whether the webhook accepted them.
    pub(super) notices: HashMap<(EventId, DeviceId), (OverdueNotice, bool)>,
    /// Where issued notices go (the webhook task), once somebody listens.
    pub(super) notice_tx: Option<mpsc::UnboundedSender<OverdueNotice>>,
    pub(super) closed: bool,
    /// This node's name (empty for a single node): whose streams are its own.
    pub(super) node: Arc<str>,
    /// The node whose command is being applied (this one, but for an entry
    /// of a cluster's log written by another).
    pub(super) current_node: Arc<str>,
    /// Whether the hub is one node of a cluster: what only this node knows
    /// (a stream's end, its cursor) goes to the shared log ([`outbox`])
    /// instead of into the state.
    ///
    /// [`outbox`]: State::outbox
    pub(super) cluster: bool,
    /// For the shared log, with the next entry.
    pub(super) outbox: Vec<crate::hub::cluster::wire::Wire>,
    /// Whether this node sends the overdue notices (a single node does; in
    /// a cluster, the holder of the ticker lease).
    pub(super) ticker: bool,
    /// The hub's measurements, handed to each channel's receipts.
    pub(super) metrics: Arc<HubMetrics>,
}

impl State {
    /// An empty state: `seq` and `floor` from what the store recovered,
    /// `node` the cluster node's name (`None` for a single node).
    pub(super) fn new(
        config: &HubConfig,
        auth: Arc<AuthRegistry>,
        seq: Sequencer,
        floor: EventId,
        node: Option<&str>,
        metrics: Arc<HubMetrics>,
    ) -> Self {
        let cluster = node.is_some();
        let node: Arc<str> = Arc::from(node.unwrap_or(""));
        Self {
            auth,
            head: seq.last(),
            seq,
            floor,
            memberships: Memberships::default(),
            channels: HashMap::new(),
            tombstones: Tombstones::default(),
            by_id: HashMap::new(),
            idempotency: HashMap::new(),
            watchers: HashMap::new(),
            receipt_gaps: Arc::default(),
            deferred: Vec::new(),
            replay_all: config.replay_all,
            ack_deadline: config.ack_deadline,
            deadlines: VecDeque::new(),
            notices: HashMap::new(),
            notice_tx: None,
            closed: false,
            cluster,
            current_node: node.clone(),
            node,
            outbox: Vec::new(),
            // A cluster node sends notices once it holds the ticker lease.
            ticker: !cluster,
            metrics,
        }
    }

    pub(super) fn watchers_for(&mut self, channel: &ChannelName) -> Arc<ReceiptLog> {
        let (gaps, metrics) = (&self.receipt_gaps, &self.metrics);
        self.watchers
            .entry(channel.clone())
            .or_insert_with(|| {
                Arc::new(ReceiptLog::counting_gaps(gaps.clone()).with_metrics(metrics.clone()))
            })
            .clone()
    }
}
