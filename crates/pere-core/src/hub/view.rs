//! What the hub answers without a command: receipts of one event, retained
//! events, and the operator's views (presence, connections, channels,
//! counters). Each takes the state's lock for one lookup or one pass over
//! the subscriptions: operators' queries, not the publish path.

use crate::error::{Error, Result};
use crate::event::{Event, EventId};
use crate::ledger::{EventReceipts, ReceiptSummary};
use crate::log::EventStore;
use crate::name::{ChannelName, DeviceId, Pattern};
use crate::presence::Presence;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{ChannelInfo, Connections, Hub, Stats, StoreHealth};

impl<S: EventStore> Hub<S> {
    /// The receipts of event `id`, which must be on a channel matched by
    /// `subscription`.
    ///
    /// # Errors
    /// [`Error::UnknownEvent`].
    pub fn receipts(&self, subscription: &Pattern, id: EventId) -> Result<Arc<EventReceipts>> {
        let state = self.inner.state();
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

    /// The receipt summary of event `id` (docs/PROTOCOL.md §5).
    ///
    /// # Errors
    /// [`Error::UnknownEvent`].
    pub fn receipt_summary(&self, subscription: &Pattern, id: EventId) -> Result<ReceiptSummary> {
        Ok(self.receipts(subscription, id)?.summary())
    }

    /// Retained events of `channel` after `after`, oldest first, at most
    /// `limit`.
    ///
    /// # Errors
    /// The store could not read them.
    pub async fn events(
        &self,
        channel: &ChannelName,
        after: EventId,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>> {
        self.inner
            .store
            .read(channel, after, EventId(u64::MAX), limit)
            .await
    }

    /// Devices known on `subscription` (members and devices that only sent
    /// receipts), sorted.
    pub fn devices(&self, subscription: &Pattern) -> Vec<(DeviceId, Presence)> {
        let state = self.inner.state();
        let mut out: Vec<(DeviceId, Presence)> = state
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

    /// Open streams per subscription.
    pub fn connections(&self) -> Connections {
        let state = self.inner.state();
        let mut per_subscription: Vec<(Pattern, usize)> = state
            .memberships
            .subs()
            .map(|(p, sub)| (p.clone(), sub.open_streams()))
            .filter(|(_, n)| *n > 0)
            .collect();
        per_subscription.sort();
        Connections {
            per_subscription,
            total: state.memberships.stream_count(),
        }
    }

    /// Every known channel: those with retained events and those subscribed
    /// to by name.
    pub fn channels(&self) -> Vec<ChannelInfo> {
        let state = self.inner.state();
        let mut names: Vec<ChannelName> = state
            .ledgers
            .channels()
            .filter(|(_, l)| !l.receipts.is_empty())
            .map(|(c, _)| c.clone())
            .collect();
        names.extend(
            state
                .memberships
                .subs()
                .filter_map(|(p, _)| p.exact().cloned()),
        );
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|channel| {
                let ledger = state.ledgers.channel(&channel);
                let receipts = ledger.map(|l| &l.receipts);
                let mut members = HashSet::new();
                let mut online = HashSet::new();
                for (pattern, sub) in state.memberships.subs() {
                    if !pattern.matches(&channel) {
                        continue;
                    }
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

    /// Counters and gauges for metrics.
    pub fn stats(&self) -> Stats {
        let store = self.store_health();
        let damage = store.damage;
        let c = &self.inner.counters;
        let state = self.inner.state();
        let (delivered, redelivered) = state.memberships.delivery_counts();
        Stats {
            published: c.published.load(Ordering::Relaxed),
            delivered,
            redelivered,
            acked: c.acked.load(Ordering::Relaxed),
            streams_opened: c.streams_opened.load(Ordering::Relaxed),
            slow_disconnects: c.slow_disconnects.load(Ordering::Relaxed),
            streams_open: state.memberships.stream_count(),
            retained: state.ledgers.retained(),
            members: state
                .memberships
                .subs()
                .map(|(_, s)| s.members.values().filter(|m| m.is_member).count())
                .sum(),
            receipt_gaps: state.ledgers.receipt_gaps(),
            batches: c.batches.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            damaged_regions: damage.len(),
            damaged_bytes: damage.iter().map(|d| d.len).sum(),
            store_writable: store.outage.is_none(),
            store_failures: store.failures,
        }
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
