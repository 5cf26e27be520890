//! Idempotency keys: a publish retried with the key of one already taken
//! is answered with the first one's result instead of a second event.
//! Apart from the rest of the state because a key outlives its event's
//! fan-out (it is filled in then) and may outlive the event itself (until
//! its TTL), and because a batch the store refused must take its keys
//! back: each of those steps is a method here rather than a map edited in
//! four places.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::{Event, EventId, Timestamp};
use crate::hub::state::Ledgers;
use crate::name::{ChannelName, DeviceId};

/// Channel, publisher, key.
pub(in crate::hub) type IdemKey = (ChannelName, Option<DeviceId>, Box<str>);

/// What a key's first publish got.
#[derive(Debug)]
pub(in crate::hub) struct Idem {
    pub(in crate::hub) id: EventId,
    /// Its audience's size, once the event was applied (0 until then).
    pub(in crate::hub) recipients: usize,
    at: Timestamp,
}

/// Idempotency keys, scoped by channel and publisher (the `device` of the
/// publish: a token's subject when auth is on), so one publisher's key
/// never swallows another's event.
#[derive(Debug, Default)]
pub(in crate::hub) struct Idempotency {
    keys: HashMap<IdemKey, Idem>,
}

impl Idempotency {
    /// The first publish with `key`, if it is still remembered.
    pub(in crate::hub) fn first(&self, key: &IdemKey) -> Option<&Idem> {
        self.keys.get(key)
    }

    /// Remembers `key` for event `id`, published at `at`; its recipients
    /// are filled in when the event is applied ([`Idempotency::settle`]).
    pub(in crate::hub) fn remember(&mut self, key: IdemKey, id: EventId, at: Timestamp) {
        self.keys.insert(
            key,
            Idem {
                id,
                recipients: 0,
                at,
            },
        );
    }

    /// Remembers a journaled event's key, as its publish did (at start).
    pub(in crate::hub) fn remember_event(&mut self, event: &Event) {
        if let Some(key) = key_of(event) {
            self.remember(key, event.id, event.time);
        }
    }

    /// Records the audience of an applied event on its key, so a retry
    /// answers with it.
    pub(in crate::hub) fn settle(&mut self, event: &Event, recipients: usize) {
        if let Some(key) = key_of(event)
            && let Some(idem) = self.keys.get_mut(&key)
        {
            idem.recipients = recipients;
        }
    }

    /// Forgets the keys of events whose batch was not written: a retry
    /// must not be answered as a duplicate of an event that does not exist.
    pub(in crate::hub) fn forget_events(&mut self, undone: &HashSet<EventId>) {
        self.keys.retain(|_, idem| !undone.contains(&idem.id));
    }

    /// Forgets keys past `ttl` whose event retention dropped: while the
    /// event is retained its key is kept, whatever its age.
    pub(in crate::hub) fn expire(&mut self, ledgers: &Ledgers, now: Timestamp, ttl: Duration) {
        self.keys
            .retain(|_, idem| ledgers.holds(&idem.id) || now.since(idem.at) < ttl);
    }
}

/// The key an event was published with, if any.
fn key_of(event: &Event) -> Option<IdemKey> {
    let key = event.idempotency_key.as_ref()?;
    Some((event.channel.clone(), event.device.clone(), key.clone()))
}

/// A remembered key as plain data, for a cluster snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(in crate::hub) struct IdemPart {
    channel: ChannelName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device: Option<DeviceId>,
    key: String,
    id: u64,
    recipients: usize,
    at: i64,
}

impl Idempotency {
    /// Every key, as plain data in a stable order.
    pub(in crate::hub) fn parts(&self) -> Vec<IdemPart> {
        let mut parts: Vec<IdemPart> = self
            .keys
            .iter()
            .map(|((channel, device, key), idem)| IdemPart {
                channel: channel.clone(),
                device: device.clone(),
                key: key.to_string(),
                id: idem.id.0,
                recipients: idem.recipients,
                at: idem.at.0,
            })
            .collect();
        parts.sort_unstable_by_key(|p| p.id);
        parts
    }

    /// Takes the keys back from [`Idempotency::parts`].
    pub(in crate::hub) fn restore(&mut self, parts: Vec<IdemPart>) {
        self.keys = parts
            .into_iter()
            .map(|p| {
                let idem = Idem {
                    id: EventId(p.id),
                    recipients: p.recipients,
                    at: Timestamp(p.at),
                };
                ((p.channel, p.device, p.key.into_boxed_str()), idem)
            })
            .collect();
    }
}
