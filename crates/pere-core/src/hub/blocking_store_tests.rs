//! A store whose appends block the calling thread (as a durable store's
//! sync does) gets a writer thread of its own: the runtime that serves the
//! connections goes on while a batch is being written.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{HubConfig, Retention};
use crate::event::{EventId, Timestamp};
use crate::hub::{Hub, Publish};
use crate::log::{EventStore, Evicted, MemoryStore, Record, Recovered};
use crate::name::ChannelName;
use crate::{Event, Result};

/// How long each append holds its thread.
const SYNC: Duration = Duration::from_millis(400);

/// A memory store whose appends sleep on the calling thread, or panic.
#[derive(Default)]
struct Slow {
    inner: MemoryStore,
    /// Whether it says its appends block (the others do not use the sleep).
    blocks: bool,
    panics: bool,
}

impl EventStore for Arc<Slow> {
    async fn recover(&self) -> Result<Recovered> {
        self.inner.recover().await
    }

    async fn append(&self, batch: &[Record]) -> Result<Vec<Evicted>> {
        assert!(!self.panics, "a bug in the store");
        std::thread::sleep(SYNC);
        self.inner.append(batch).await
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
        self.inner.read(channel, after, upto, limit).await
    }

    fn prune(&self, now: Timestamp) -> Vec<Evicted> {
        self.inner.prune(now)
    }

    fn retention(&self) -> Retention {
        self.inner.retention()
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }

    fn appends_block(&self) -> bool {
        self.blocks
    }
}

/// The test's runtime has one thread: had the writer run there, each
/// append would stop every other task for its whole length.
#[tokio::test]
async fn a_blocking_append_leaves_the_runtime_running() {
    let store = Slow {
        blocks: true,
        ..Slow::default()
    };
    let hub = Hub::open(HubConfig::default(), Arc::new(store))
        .await
        .unwrap();
    let started = Instant::now();
    let publishing = tokio::spawn({
        let hub = hub.clone();
        async move {
            let publish = Publish::new(ChannelName::new("c").unwrap(), "x".to_string());
            hub.publish(publish).await
        }
    });
    // Ticks of 10 ms for as long as the publish takes: none is late by
    // anything like an append.
    let mut longest = Duration::ZERO;
    while !publishing.is_finished() {
        let tick = Instant::now();
        tokio::time::sleep(Duration::from_millis(10)).await;
        longest = longest.max(tick.elapsed());
    }
    let published = publishing.await.unwrap().unwrap();
    assert_eq!(published.recipients, 0);
    assert!(
        started.elapsed() >= SYNC,
        "the publish waited for its append"
    );
    assert!(
        longest < SYNC / 2,
        "a 10 ms sleep took {longest:?} while the store wrote"
    );
    hub.shutdown().await;
}

/// A hub dropped without [`Hub::shutdown`] ends with the runtime that
/// opened it, as its writer task did: the runtime's drop stops the
/// writer's thread and waits for it to drop the store, whose directory
/// another store may then open at once. (The hub's parts hold the writer's
/// queue themselves, so the queue never closes.)
#[test]
fn a_dropped_hubs_writer_thread_ends_with_its_runtime() {
    use crate::log::{FileStore, FileStoreConfig};
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let store = FileStore::open(FileStoreConfig::new(dir.path()))
                .unwrap_or_else(|err| panic!("round {round}: {err}"));
            let hub = Hub::open(HubConfig::default(), store).await.unwrap();
            let publish = Publish::new(ChannelName::new("c").unwrap(), "kept".to_string());
            hub.publish(publish).await.unwrap();
            drop(hub);
        });
        drop(runtime);
    }
    let reopened = FileStore::open(FileStoreConfig::new(dir.path())).unwrap();
    let recovered = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(reopened.recover())
        .unwrap();
    let events = recovered
        .records
        .iter()
        .filter(|r| matches!(r, Record::Event(_)))
        .count();
    assert_eq!(events, 3, "each round's publish was kept");
}

/// A writer that panics (a bug) is reported, so that the server stops
/// instead of refusing every write from then on; on its own thread or as
/// a task.
#[tokio::test]
async fn a_panicking_writer_is_reported() {
    for blocks in [true, false] {
        let store = Slow {
            blocks,
            panics: true,
            ..Slow::default()
        };
        let hub = Hub::open(HubConfig::default(), Arc::new(store))
            .await
            .unwrap();
        let publish = Publish::new(ChannelName::new("c").unwrap(), "x".to_string());
        hub.publish(publish).await.unwrap_err();
        let reason = tokio::time::timeout(Duration::from_secs(10), hub.failure())
            .await
            .unwrap_or_else(|_| panic!("blocks: {blocks}: no failure reported"));
        assert!(
            reason.contains("writer panicked") && reason.contains("a bug in the store"),
            "{reason}"
        );
    }
}
