//! The hub's state, owned by the writer task: subscriptions and their
//! memberships, retained events' ledgers per channel, idempotency keys,
//! open streams, notices. The commands (`cmd/`) change it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::auth::AuthRegistry;
use crate::config::HubConfig;
use crate::event::{EventId, Sequencer};
use crate::ledger::{EventReceipts, OverdueNotice};
use crate::log::Record;
use crate::metrics::HubMetrics;
use crate::name::DeviceId;

mod idempotency;
mod ledgers;
mod memberships;

pub(super) use idempotency::Idempotency;
pub(super) use ledgers::Ledgers;
pub(super) use memberships::{Memberships, OpenStream};

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
        }
    }
}
