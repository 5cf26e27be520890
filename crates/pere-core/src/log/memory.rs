//! [`MemoryStore`]: retained events kept in memory, lost on restart.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::Retention;
use crate::error::Result;
use crate::event::{Event, EventId, Timestamp};
use crate::log::{EventStore, Evicted, Record, Recovered};
use crate::name::ChannelName;

/// An in-memory store: each channel's retained events in id order, with
/// [`Retention`] applied on every append and prune.
///
/// It keeps events only (the hub keeps receipts and memberships itself), so a
/// restart forgets everything; ids still increase because the hub's
/// [`Sequencer`](crate::Sequencer) starts at the clock. The durable file
/// store uses one as its in-memory index.
#[derive(Debug, Default)]
pub struct MemoryStore {
    retention: Retention,
    channels: Mutex<HashMap<ChannelName, VecDeque<Arc<Event>>>>,
}

impl MemoryStore {
    /// An empty store with this retention.
    pub fn new(retention: Retention) -> Self {
        Self {
            retention,
            channels: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ChannelName, VecDeque<Arc<Event>>>> {
        // Each operation under this lock is a push, a pop or a read, so a
        // panic elsewhere cannot leave a channel half-updated: recover from
        // poisoning rather than spreading it.
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of events held for `channel`.
    pub fn len(&self, channel: &ChannelName) -> usize {
        self.lock().get(channel).map_or(0, VecDeque::len)
    }

    /// Whether no event is held for `channel`.
    pub fn is_empty(&self, channel: &ChannelName) -> bool {
        self.len(channel) == 0
    }

    /// Total number of events held.
    pub fn total(&self) -> usize {
        self.lock().values().map(VecDeque::len).sum()
    }

    /// Inserts events (ids increasing) and drops whatever falls out of the
    /// `history` limit, reporting it.
    pub fn insert(&self, events: impl IntoIterator<Item = Arc<Event>>) -> Vec<Evicted> {
        let history = self.retention.history;
        let mut channels = self.lock();
        let mut over: Vec<ChannelName> = Vec::new();
        for event in events {
            let queue = channels.entry(event.channel.clone()).or_default();
            queue.push_back(event);
            if queue.len() == history + 1 {
                // Only the push that crosses the limit records the channel,
                // so each channel is listed once however long the batch.
                if let Some(e) = queue.back() {
                    over.push(e.channel.clone());
                }
            }
        }
        let mut evicted = Vec::with_capacity(over.len());
        for channel in over {
            if let Some(queue) = channels.get_mut(&channel) {
                let mut upto = None;
                while queue.len() > history {
                    upto = queue.pop_front().map(|e| e.id);
                }
                if let Some(upto) = upto {
                    evicted.push(Evicted { channel, upto });
                }
            }
        }
        evicted
    }

    /// The events of `channel` with ids in `(after, upto]`, at most `limit`.
    pub fn range(
        &self,
        channel: &ChannelName,
        after: EventId,
        upto: EventId,
        limit: usize,
    ) -> Vec<Arc<Event>> {
        let channels = self.lock();
        let Some(events) = channels.get(channel) else {
            return Vec::new();
        };
        let start = events.partition_point(|e| e.id <= after);
        events
            .range(start..)
            .take_while(|e| e.id <= upto)
            .take(limit)
            .cloned()
            .collect()
    }

    /// Drops every event older than `max_age` at `now`, reporting it.
    pub fn drop_older(&self, now: Timestamp) -> Vec<Evicted> {
        let Some(max_age) = self.retention.max_age else {
            return Vec::new();
        };
        let cutoff = Timestamp(
            now.0
                .saturating_sub(i64::try_from(max_age.as_micros()).unwrap_or(i64::MAX)),
        );
        let mut channels = self.lock();
        let mut evicted = Vec::new();
        channels.retain(|channel, queue| {
            let mut upto = None;
            while queue.front().is_some_and(|e| e.time < cutoff) {
                upto = queue.pop_front().map(|e| e.id);
            }
            if let Some(upto) = upto {
                evicted.push(Evicted {
                    channel: channel.clone(),
                    upto,
                });
            }
            !queue.is_empty()
        });
        evicted
    }

    /// Every event held, oldest first across channels (for recovery and
    /// compaction).
    pub fn all(&self) -> Vec<Arc<Event>> {
        let mut all: Vec<Arc<Event>> = self.lock().values().flatten().cloned().collect();
        all.sort_unstable_by_key(|e| e.id);
        all
    }
}

impl EventStore for MemoryStore {
    async fn recover(&self) -> Result<Recovered> {
        Ok(Recovered::default())
    }

    async fn append(&self, batch: &[Record]) -> Result<Vec<Evicted>> {
        Ok(self.insert(batch.iter().filter_map(|r| match r {
            Record::Event(e) => Some(e.clone()),
            _ => None,
        })))
    }

    async fn probe(&self) -> Result<()> {
        Ok(())
    }

    async fn read(
        &self,
        channel: &ChannelName,
        after: EventId,
        upto: EventId,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>> {
        Ok(self.range(channel, after, upto, limit))
    }

    fn prune(&self, now: Timestamp) -> Vec<Evicted> {
        self.drop_older(now)
    }

    fn retention(&self) -> Retention {
        self.retention
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    fn event(channel: &str, id: u64) -> Arc<Event> {
        Arc::new(Event {
            id: EventId(id),
            channel: ChannelName::new(channel).unwrap(),
            kind: None,
            device: None,
            time: Timestamp(id as i64 * 1_000_000),
            payload: Bytes::from_static(b"x"),
            idempotency_key: None,
        })
    }

    fn ids(v: Vec<Arc<Event>>) -> Vec<u64> {
        v.iter().map(|e| e.id.0).collect()
    }

    fn batch(events: &[(&str, u64)]) -> Vec<Record> {
        events
            .iter()
            .map(|(c, i)| Record::Event(event(c, *i)))
            .collect()
    }

    #[tokio::test]
    async fn reads_ranges_per_channel_in_id_order() {
        let store = MemoryStore::default();
        store
            .append(&batch(&[("a", 1), ("b", 2), ("a", 3), ("a", 4)]))
            .await
            .unwrap();
        let a = ChannelName::new("a").unwrap();
        let all = EventId(u64::MAX);
        assert_eq!(
            ids(store.read(&a, EventId(0), all, 10).await.unwrap()),
            [1, 3, 4]
        );
        assert_eq!(
            ids(store.read(&a, EventId(1), EventId(3), 10).await.unwrap()),
            [3]
        );
        assert_eq!(
            ids(store.read(&a, EventId(0), all, 2).await.unwrap()),
            [1, 3]
        );
        assert_eq!(ids(store.all()), [1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn append_keeps_only_the_newest_history_events_per_channel() {
        let store = MemoryStore::new(Retention {
            history: 2,
            max_age: None,
        });
        let evicted = store
            .append(&batch(&[("a", 1), ("b", 2), ("a", 3), ("a", 4), ("a", 5)]))
            .await
            .unwrap();
        let a = ChannelName::new("a").unwrap();
        assert_eq!(
            evicted,
            [Evicted {
                channel: a.clone(),
                upto: EventId(3)
            }]
        );
        assert_eq!(
            ids(store.range(&a, EventId(0), EventId(u64::MAX), 9)),
            [4, 5]
        );
        assert_eq!(store.len(&ChannelName::new("b").unwrap()), 1);
    }

    #[tokio::test]
    async fn prune_drops_events_past_max_age() {
        let store = MemoryStore::new(Retention {
            history: 100,
            max_age: Some(Duration::from_secs(10)),
        });
        store
            .append(&batch(&[("a", 1), ("b", 5), ("a", 20)]))
            .await
            .unwrap();
        let evicted = store.prune(Timestamp(25 * 1_000_000));
        assert_eq!(evicted.len(), 2, "{evicted:?}");
        assert_eq!(ids(store.all()), [20]);
    }
}
