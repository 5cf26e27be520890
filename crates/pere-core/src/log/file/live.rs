//! What the store must keep: the bookkeeping that decides, at compaction,
//! whether a stored record is still live.

use std::collections::{HashMap, HashSet};

use super::super::codec::Stored;
use crate::auth::TokenHash;
use crate::config::DEFAULT_IDEMPOTENCY_TTL;
use crate::event::{EventId, Timestamp};
use crate::log::Record;
use crate::name::{ChannelName, DeviceId, Pattern};

pub(super) type Key = (Pattern, DeviceId);

/// One membership's episodes, by the lsns of their records.
#[derive(Debug, Default)]
pub(super) struct Episodes {
    /// The `Joined` lsn of the current membership.
    open: Option<u64>,
    /// Ended memberships: `(joined lsn, left lsn, head when left)`. Kept
    /// while a retained event may have them in its audience.
    closed: Vec<(u64, u64, EventId)>,
}

/// What decides whether a stored record is still needed.
#[derive(Debug, Default)]
pub(super) struct Live {
    pub(super) next_lsn: u64,
    pub(super) last_event: EventId,
    episodes: HashMap<Key, Episodes>,
    latest_cursor: HashMap<Key, u64>,
    latest_acking: HashMap<Key, u64>,
    latest_acked_upto: HashMap<Key, u64>,
    latest_presence: HashMap<Key, u64>,
    latest_trim: HashMap<ChannelName, u64>,
    /// The latest change of each run-time token: it alone decides the
    /// token's state, so it survives compaction (a revocation too, since it
    /// may hide a token of the `--auth` file).
    latest_token: HashMap<TokenHash, u64>,
}

impl Live {
    /// Notes a record about to be written (or read back at recovery).
    pub(super) fn observe(&mut self, lsn: u64, record: &Stored) {
        self.next_lsn = self.next_lsn.max(lsn + 1);
        match record {
            Stored::Hub(Record::Event(e)) => self.last_event = self.last_event.max(e.id),
            Stored::Hub(Record::Joined {
                subscription,
                device,
                ..
            }) => {
                let ep = self
                    .episodes
                    .entry((subscription.clone(), device.clone()))
                    .or_default();
                // A second join without a leave replaces the first.
                ep.open = Some(lsn);
            }
            Stored::Hub(Record::Left {
                subscription,
                device,
                ..
            }) => {
                let key = (subscription.clone(), device.clone());
                if let Some(ep) = self.episodes.get_mut(&key)
                    && let Some(joined) = ep.open.take()
                {
                    ep.closed.push((joined, lsn, self.last_event));
                }
                self.latest_cursor.remove(&key);
                self.latest_presence.remove(&key);
                self.latest_acking.remove(&key);
                self.latest_acked_upto.remove(&key);
            }
            Stored::Hub(Record::Cursor {
                subscription,
                device,
                ..
            }) => {
                self.latest_cursor
                    .insert((subscription.clone(), device.clone()), lsn);
            }
            Stored::Hub(Record::Presence {
                subscription,
                device,
                ..
            }) => {
                self.latest_presence
                    .insert((subscription.clone(), device.clone()), lsn);
            }
            Stored::Hub(Record::Acking {
                subscription,
                device,
                ..
            }) => {
                self.latest_acking
                    .insert((subscription.clone(), device.clone()), lsn);
            }
            Stored::Hub(Record::AckedUpto {
                subscription,
                device,
                ..
            }) => {
                self.latest_acked_upto
                    .insert((subscription.clone(), device.clone()), lsn);
            }
            Stored::Hub(Record::Ack { .. } | Record::Notice { .. } | Record::Replayed { .. }) => {}
            Stored::Hub(Record::Token { token, .. }) => {
                self.latest_token.insert(*token, lsn);
            }
            Stored::Trim { channel, .. } => {
                self.latest_trim.insert(channel.clone(), lsn);
            }
        }
    }

    /// Whether a record must survive compaction.
    pub(super) fn is_live(
        &self,
        lsn: u64,
        record: &Stored,
        retained: &HashSet<EventId>,
        oldest: EventId,
        now: Timestamp,
    ) -> bool {
        let open = |s: &Pattern, d: &DeviceId| {
            self.episodes
                .get(&(s.clone(), d.clone()))
                .and_then(|e| e.open)
        };
        match record {
            // A dropped event's idempotency key is still honoured for its
            // TTL: the event is kept that long to tell it after a restart.
            Stored::Hub(Record::Event(e)) => {
                retained.contains(&e.id)
                    || (e.idempotency_key.is_some() && now.since(e.time) < DEFAULT_IDEMPOTENCY_TTL)
            }
            Stored::Hub(Record::Ack { id, .. } | Record::Notice { id, .. }) => {
                retained.contains(id)
            }
            Stored::Hub(Record::Replayed { ids, .. }) => ids.iter().any(|id| retained.contains(id)),
            Stored::Hub(Record::Joined {
                subscription,
                device,
                ..
            }) => {
                open(subscription, device) == Some(lsn)
                    || self
                        .episodes
                        .get(&(subscription.clone(), device.clone()))
                        .is_some_and(|e| e.closed.iter().any(|c| c.0 == lsn && c.2 >= oldest))
            }
            Stored::Hub(Record::Left {
                subscription,
                device,
                ..
            }) => self
                .episodes
                .get(&(subscription.clone(), device.clone()))
                .is_some_and(|e| e.closed.iter().any(|c| c.1 == lsn && c.2 >= oldest)),
            Stored::Hub(Record::Cursor {
                subscription,
                device,
                ..
            }) => {
                open(subscription, device).is_some()
                    && self
                        .latest_cursor
                        .get(&(subscription.clone(), device.clone()))
                        == Some(&lsn)
            }
            Stored::Hub(Record::Presence {
                subscription,
                device,
                ..
            }) => {
                open(subscription, device).is_some()
                    && self
                        .latest_presence
                        .get(&(subscription.clone(), device.clone()))
                        == Some(&lsn)
            }
            // Of the current membership only: a member that joins again
            // starts without receipts.
            Stored::Hub(Record::Acking {
                subscription,
                device,
                ..
            }) => {
                open(subscription, device).is_some_and(|joined| joined < lsn)
                    && self
                        .latest_acking
                        .get(&(subscription.clone(), device.clone()))
                        == Some(&lsn)
            }
            Stored::Hub(Record::AckedUpto {
                subscription,
                device,
                ..
            }) => {
                open(subscription, device).is_some_and(|joined| joined < lsn)
                    && self
                        .latest_acked_upto
                        .get(&(subscription.clone(), device.clone()))
                        == Some(&lsn)
            }
            Stored::Hub(Record::Token { token, .. }) => self.latest_token.get(token) == Some(&lsn),
            Stored::Trim { channel, .. } => self.latest_trim.get(channel) == Some(&lsn),
        }
    }

    /// Forgets ended memberships no retained event can still refer to.
    pub(super) fn prune(&mut self, oldest: EventId) {
        self.episodes.retain(|_, e| {
            e.closed.retain(|c| c.2 >= oldest);
            e.open.is_some() || !e.closed.is_empty()
        });
    }
}
