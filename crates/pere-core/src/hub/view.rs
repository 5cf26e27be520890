//! What the hub answers besides commands: receipts of one event and
//! retained events (one lookup each), and the operator's views (presence,
//! connections, channels, patterns, counters).
//!
//! A view walks the state (every subscription, every stream), so it is not
//! done by the caller under the writer's lock, which would hold every
//! publish behind an operator's query: it is a [`Command::Read`] that the
//! writer answers between batches, from the state as the batch left it (on
//! one node, in the order it was asked, so a caller sees what it did
//! before; a cluster node answers from its copy as it is). The walks
//! themselves are [`State`]'s methods below.
//!
//! The writer may be held up by the store or the cluster's log: a view
//! waits [`READ_WAIT`] at most, and [`Hub::stats`] (every `/metrics`
//! scrape) [`STATS_WAIT`], then answers with the last gauges it read, so
//! that the store's health can be scraped while it hangs.
//!
//! [`Command::Read`]: super::command::Command::Read

use crate::error::{Error, Result};
use crate::event::{Event, EventId};
use crate::ledger::{EventReceipts, ReceiptSummary};
use crate::log::EventStore;
use crate::name::{ChannelName, DeviceId, Pattern};
use crate::presence::Presence;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::oneshot;

use super::command::{Command, Read};
use super::state::State;
use super::{ChannelInfo, Connections, Hub, Stats, StoreHealth};

impl<S: EventStore> Hub<S> {
    /// The receipts of event `id`, which must be on a channel matched by
    /// `subscription`.
    ///
    /// # Errors
    /// [`Error::UnknownEvent`].
    pub fn receipts(&self, subscription: &Pattern, id: EventId) -> Result<Arc<EventReceipts>> {
        let state = self.inner.state();
        find_receipts(&state, subscription, id)
    }

    /// [`Hub::receipts`] of many events, looked up under one lock.
    pub(crate) fn receipts_of<'a>(
        &self,
        wanted: impl Iterator<Item = (&'a Pattern, EventId)>,
    ) -> Vec<Result<Arc<EventReceipts>>> {
        let state = self.inner.state();
        wanted
            .map(|(subscription, id)| find_receipts(&state, subscription, id))
            .collect()
    }

    /// The receipt summary of event `id` (docs/PROTOCOL.md §5), as this
    /// node knows it: on a cluster, [`Hub::caught_up`] first for what the
    /// other nodes took.
    ///
    /// # Errors
    /// [`Error::UnknownEvent`].
    pub fn receipt_summary(&self, subscription: &Pattern, id: EventId) -> Result<ReceiptSummary> {
        Ok(self.receipts(subscription, id)?.summary())
    }

    /// Retained events of `channel` after `after`, oldest first, at most
    /// `limit` (on a cluster node, once [caught up](Hub::caught_up)).
    ///
    /// # Errors
    /// The store could not read them.
    pub async fn events(
        &self,
        channel: &ChannelName,
        after: EventId,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>> {
        self.caught_up().await;
        self.inner
            .store
            .read(channel, after, EventId(u64::MAX), limit)
            .await
    }

    /// Devices known on `subscription` (members and devices that only sent
    /// receipts), sorted.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`].
    pub async fn devices(&self, subscription: &Pattern) -> Result<Vec<(DeviceId, Presence)>> {
        let subscription = subscription.clone();
        self.read_latest(move |state| state.devices(&subscription))
            .await
    }

    /// Open streams per subscription.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`].
    pub async fn connections(&self) -> Result<Connections> {
        self.read(State::connections).await
    }

    /// Every known channel: those with retained events and those subscribed
    /// to by name.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`].
    pub async fn channels(&self) -> Result<Vec<ChannelInfo>> {
        self.read_latest(State::channels).await
    }

    /// Counters and gauges for metrics.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`].
    pub async fn stats(&self) -> Result<Stats> {
        let read = tokio::time::timeout(STATS_WAIT, self.read(State::gauges)).await;
        let gauges = {
            let mut last = self.inner.last_gauges();
            match read {
                Ok(Ok(gauges)) => {
                    *last = gauges.clone();
                    gauges
                }
                _ => last.clone(),
            }
        };
        let store = self.store_health();
        let damage = store.damage;
        let c = &self.inner.counters;
        Ok(Stats {
            published: c.published.load(Ordering::Relaxed),
            delivered: gauges.delivered,
            redelivered: gauges.redelivered,
            acked: c.acked.load(Ordering::Relaxed),
            streams_opened: c.streams_opened.load(Ordering::Relaxed),
            slow_disconnects: c.slow_disconnects.load(Ordering::Relaxed),
            streams_open: gauges.streams_open,
            retained: gauges.retained,
            members: gauges.members,
            receipt_gaps: gauges.receipt_gaps,
            batches: c.batches.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            damaged_regions: damage.len(),
            damaged_bytes: damage.iter().map(|d| d.len).sum(),
            store_writable: store.outage.is_none(),
            store_failures: store.failures,
        })
    }

    /// Runs `read` in the writer task, between two batches, and returns
    /// what it found.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`]; [`Error::StoreUnavailable`] when the writer
    /// did not get to it within [`READ_WAIT`].
    pub(super) async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&State) -> T + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let read: Read = Box::new(move |state| drop(tx.send(read(state))));
        self.inner
            .commands
            .send(Command::Read(read))
            .map_err(|_| Error::ShuttingDown)?;
        match tokio::time::timeout(READ_WAIT, rx).await {
            Ok(answer) => answer.map_err(|_| Error::ShuttingDown),
            Err(_) => Err(Error::StoreUnavailable(format!(
                "the hub's writer did not get to this read within {} s: it is busy (large views at once, a burst of writes, or a store or cluster log that does not answer); try again",
                READ_WAIT.as_secs()
            ))),
        }
    }

    /// [`Hub::read`] of what every node of a cluster shares, once this node
    /// is [caught up](Hub::caught_up) with the others: an admin asking one
    /// node sees what another node answered a moment before.
    ///
    /// # Errors
    /// As [`Hub::read`].
    pub(super) async fn read_latest<T: Send + 'static>(
        &self,
        read: impl FnOnce(&State) -> T + Send + 'static,
    ) -> Result<T> {
        self.caught_up().await;
        self.read(read).await
    }

    /// The store's health: whether it takes writes, what it skipped as
    /// damaged.
    pub fn store_health(&self) -> StoreHealth {
        let (outage, failures) = {
            let health = self.inner.health();
            (health.outage(), health.failures())
        };
        StoreHealth {
            outage,
            failures,
            damage: self
                .inner
                .damage
                .iter()
                .filter(|d| d.outstanding())
                .cloned()
                .collect(),
        }
    }
}

/// How long a view waits for the writer.
const READ_WAIT: Duration = Duration::from_secs(5);
/// How long [`Hub::stats`] waits for fresh gauges.
const STATS_WAIT: Duration = Duration::from_secs(1);

/// Runs `read` on `state`; a read that panics is a bug, and must not end
/// the writer with it: its caller goes without an answer instead.
pub(super) fn run(read: Read, state: &State) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(state))).is_err() {
        tracing::error!("a view of the hub panicked; its caller gets no answer");
    }
}

/// What the state's gauges are now (for [`Hub::stats`]).
#[derive(Clone, Debug, Default)]
pub(super) struct Gauges {
    delivered: u64,
    redelivered: u64,
    streams_open: usize,
    retained: usize,
    members: usize,
    receipt_gaps: u64,
}

/// The views' walks, run by the writer task (see the module's doc).
impl State {
    fn devices(&self, subscription: &Pattern) -> Vec<(DeviceId, Presence)> {
        let mut out: Vec<(DeviceId, Presence)> = self
            .memberships
            .sub(subscription)
            .map(|sub| {
                sub.members
                    .iter()
                    .map(|(d, m)| (d.clone(), m.presence()))
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn connections(&self) -> Connections {
        // Devices' streams on every node are in the replicated members;
        // other nodes' anonymous streams and totals, in what they last
        // said (a cluster; nothing on a single node).
        let (mut anonymous, total_elsewhere) = self.memberships.elsewhere();
        let mut per_subscription: Vec<(Pattern, usize)> = self
            .memberships
            .subs()
            .map(|(p, sub)| {
                (
                    p.clone(),
                    sub.open_streams() + anonymous.remove(p).unwrap_or(0),
                )
            })
            .collect();
        per_subscription.extend(anonymous.into_iter().map(|(p, n)| (p.clone(), n)));
        per_subscription.retain(|(_, n)| *n > 0);
        per_subscription.sort();
        Connections {
            per_subscription,
            total: self.memberships.stream_count() + total_elsewhere,
        }
    }

    pub(super) fn channels(&self) -> Vec<ChannelInfo> {
        let mut names: Vec<ChannelName> = self
            .ledgers
            .channels()
            .filter(|(_, l)| !l.receipts.is_empty())
            .map(|(c, _)| c.clone())
            .collect();
        names.extend(
            self.memberships
                .subs()
                .filter_map(|(p, _)| p.exact().cloned()),
        );
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|channel| {
                let ledger = self.ledgers.channel(&channel);
                let receipts = ledger.map(|l| &l.receipts);
                let mut members = HashSet::new();
                let mut online = HashSet::new();
                for sub in self.memberships.matching(&channel) {
                    for (device, member) in &sub.members {
                        if member.is_member {
                            members.insert(device);
                            if member.connections() > 0 {
                                online.insert(device);
                            }
                        }
                    }
                }
                ChannelInfo {
                    events: receipts.map_or(0, VecDeque::len),
                    oldest: receipts.and_then(|r| r.front()).map(|r| r.id()),
                    newest: receipts.and_then(|r| r.back()).map(|r| r.id()),
                    members: members.len(),
                    online: online.len(),
                    channel,
                }
            })
            .collect()
    }

    fn gauges(&self) -> Gauges {
        let (delivered, redelivered) = self.memberships.delivery_counts();
        Gauges {
            delivered,
            redelivered,
            streams_open: self.memberships.stream_count(),
            retained: self.ledgers.retained(),
            members: self
                .memberships
                .subs()
                .map(|(_, s)| s.members.values().filter(|m| m.is_member).count())
                .sum(),
            receipt_gaps: self.ledgers.receipt_gaps(),
        }
    }
}

fn find_receipts(state: &State, subscription: &Pattern, id: EventId) -> Result<Arc<EventReceipts>> {
    state
        .ledgers
        .event(&id)
        .filter(|r| subscription.matches(&r.event.channel))
        .cloned()
        .ok_or_else(|| Error::UnknownEvent {
            channel: subscription.to_string(),
            id: id.to_string(),
        })
}
