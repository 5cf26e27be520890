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

/// A memory store whose appends sleep on the calling thread.
#[derive(Default)]
struct Slow {
    inner: MemoryStore,
}

impl EventStore for Arc<Slow> {
    async fn recover(&self) -> Result<Recovered> {
        self.inner.recover().await
    }

    async fn append(&self, batch: &[Record]) -> Result<Vec<Evicted>> {
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
        true
    }
}

/// The test's runtime has one thread: had the writer run there, each
/// append would stop every other task for its whole length.
#[tokio::test]
async fn a_blocking_append_leaves_the_runtime_running() {
    let hub = Hub::open(HubConfig::default(), Arc::new(Slow::default()))
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
/// opened it, as its writer task did: the writer's thread stops and drops
/// the store, whose directory another store may then open. (The hub's
/// parts hold the writer's queue themselves, so the queue never closes.)
#[test]
fn a_dropped_hubs_writer_thread_ends_with_its_runtime() {
    use crate::log::{FileStore, FileStoreConfig};
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = FileStore::open(FileStoreConfig::new(dir.path())).unwrap();
        let hub = Hub::open(HubConfig::default(), store).await.unwrap();
        let publish = Publish::new(ChannelName::new("c").unwrap(), "kept".to_string());
        hub.publish(publish).await.unwrap();
        drop(hub);
    });
    drop(runtime);
    let deadline = Instant::now() + Duration::from_secs(10);
    let reopened = loop {
        match FileStore::open(FileStoreConfig::new(dir.path())) {
            Ok(store) => break store,
            Err(err) if Instant::now() < deadline => {
                let _ = err;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(err) => panic!("the dropped hub still holds its store: {err}"),
        }
    };
    let events = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(async {
            let recovered = reopened.recover().await.unwrap();
            recovered.records.len()
        });
    assert!(events > 0, "the publish was kept");
}
