//! The hub's state, owned by the writer task and changed by its commands
//! (`cmd/`). Four structures, each keeping its invariants behind its own
//! methods, so that what a command touches shows in what it calls:
//! [`Memberships`] (who listens: subscriptions, members, open streams),
//! [`Ledgers`] (what is retained of events), [`Idempotency`] (publishes'
//! keys) and [`Notices`] (acknowledgement deadlines). `State` holds them
//! with what every command shares: ids, the head, the node, and what goes
//! to the journal or the cluster's log next.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use crate::auth::AuthRegistry;
use crate::config::HubConfig;
use crate::event::{EventId, Sequencer, Timestamp};
use crate::log::Record;
use crate::metrics::HubMetrics;
use crate::name::{ChannelName, DeviceId, Pattern};

mod idempotency;
mod ledgers;
mod memberships;
mod notices;
mod wild;

pub(super) use idempotency::{IdemPart, Idempotency};
pub(super) use ledgers::{Ledgers, LedgersParts};
pub(super) use memberships::{
    Ended, Memberships, MembershipsParts, NodeStreams, OpenStream, WrittenReplay,
};
pub(super) use notices::{Notices, NoticesParts};

/// Everything the writer task owns.
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
    /// What is retained of events: receipts by channel and id, gaps.
    pub(super) ledgers: Ledgers,
    /// Idempotency keys, and what their first publish got.
    pub(super) idempotency: Idempotency,
    /// Acknowledgement deadlines and the overdue notices they caused.
    pub(super) notices: Notices,
    /// Records produced while applying (a stream closed for being slow);
    /// written with the next batch.
    pub(super) deferred: Vec<Record>,
    /// [`HubConfig::replay_all`].
    pub(super) replay_all: bool,
    /// Shut down: commands are refused from now on.
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
    /// Members' receipts up to this time are journaled as their latest
    /// (`Record::Acking`, by the periodic chores).
    pub(super) acks_journaled: Timestamp,
    /// A receipt was recorded since: the chores have members to journal
    /// (an idle hub's ticks skip the walk over every member).
    pub(super) acked_since_journal: bool,
    /// A cluster's channels whose events from the first id to the second a
    /// failover lost after nodes had applied them: a resume from below the
    /// second is a gap, and one from between replays from the first (the
    /// promoted primary's own events of that time have ids in between).
    pub(super) failover_losses: HashMap<ChannelName, (EventId, EventId)>,
    /// A single node's members that went offline, by when their TTL
    /// started, soonest first (an entry whose member came back since is
    /// skipped when it comes up).
    pub(super) expiring: BinaryHeap<Reverse<(Timestamp, Pattern, DeviceId)>>,
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
            ledgers: Ledgers::new(metrics),
            idempotency: Idempotency::default(),
            // A cluster node sends notices once it holds the ticker lease.
            notices: Notices::new(config.ack_deadline, !cluster),
            deferred: Vec::new(),
            replay_all: config.replay_all,
            closed: false,
            cluster,
            current_node: node.clone(),
            node,
            outbox: Vec::new(),
            acks_journaled: Timestamp(0),
            acked_since_journal: false,
            failover_losses: HashMap::new(),
            expiring: BinaryHeap::new(),
        }
    }
}
