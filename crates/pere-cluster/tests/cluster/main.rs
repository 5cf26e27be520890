//! pere-cluster against real Redis: one test binary, a module per topic.
//! Every test starts its own `redis-server` (and sentinels) on free
//! loopback ports and kills them when it ends.

mod append;
mod coordination;
mod failures;
mod sentinel;
mod snapshot;
mod tail;

use std::time::Duration;

use bytes::Bytes;
use pere_cluster::{ClusterConfig, Engine, EngineError, Entry, IdemKey, NewEntry, Tail};

/// A bound for anything that should happen "at once" on loopback, generous
/// for 2 shared cores.
pub const PROMPT: Duration = Duration::from_secs(5);

/// An engine for `node` on `url` with the default configuration.
pub async fn engine(url: &str, node: &str) -> Engine {
    Engine::connect(ClusterConfig::new(url, node))
        .await
        .expect("the engine connects")
}

/// An entry of `events` events without idempotency keys.
pub fn entry(blob: &str, events: usize) -> NewEntry {
    NewEntry {
        blob: Bytes::from(blob.to_owned()),
        idem: vec![None; events],
        serial: None,
    }
}

/// An idempotency key on channel `c` without a publisher.
pub fn key(channel: &str, key: &str) -> IdemKey {
    IdemKey {
        channel: channel.into(),
        publisher: None,
        key: key.into(),
    }
}

/// The next entry of a tail, within [`PROMPT`].
pub async fn next(tail: &mut Tail) -> Result<Entry, EngineError> {
    tokio::time::timeout(PROMPT, tail.next())
        .await
        .expect("the tail answers within PROMPT")
}

/// The next entry, skipping `Unavailable` (the tail resumes by itself),
/// within `limit`.
pub async fn next_available(tail: &mut Tail, limit: Duration) -> Result<Entry, EngineError> {
    tokio::time::timeout(limit, async {
        loop {
            match tail.next().await {
                Err(EngineError::Unavailable { .. }) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the tail yields an entry or a final error in time")
}

/// Retries `append` through `Unavailable` for at most `limit`.
pub async fn append_retrying(
    engine: &Engine,
    entry: NewEntry,
    limit: Duration,
) -> pere_cluster::Appended {
    tokio::time::timeout(limit, async {
        loop {
            match engine.append(entry.clone()).await {
                Ok(appended) => return appended,
                Err(EngineError::Unavailable { .. }) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(err) => panic!("append failed: {err}"),
            }
        }
    })
    .await
    .expect("an append succeeds in time")
}
