//! The hub's side of a failing store, through the real hub over a store
//! that fails on demand the way a full disk does (`io::ErrorKind::
//! StorageFull`, i.e. `ENOSPC`). A real full disk, through the real
//! binary, is in `tests/e2e/store_failure.rs`.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::config::{HubConfig, Retention};
use crate::hub::{Hub, Publish, Resume, SubscribeRequest};
use crate::log::{Evicted, MemoryStore, Recovered};
use crate::name::{ChannelName, DeviceId, Pattern};
use crate::{Event, Result};

const WAIT: Duration = Duration::from_secs(10);

/// A memory store whose next appends and probes fail with `ENOSPC`, and
/// which keeps every record it stored, in order.
#[derive(Default)]
struct Flaky {
    inner: MemoryStore,
    fail_appends: AtomicUsize,
    fail_probes: AtomicUsize,
    probes: AtomicUsize,
    stored: Mutex<Vec<Record>>,
    /// While set, appends wait (a disk that stopped answering).
    hang: std::sync::atomic::AtomicBool,
    unhang: tokio::sync::Notify,
}

fn full() -> Error {
    Error::Io {
        path: "/data".into(),
        source: std::io::Error::from_raw_os_error(28), // ENOSPC
    }
}

fn take(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl EventStore for Arc<Flaky> {
    async fn recover(&self) -> Result<Recovered> {
        self.inner.recover().await
    }

    async fn append(&self, batch: &[Record]) -> Result<Vec<Evicted>> {
        while self.hang.load(Ordering::SeqCst) {
            self.unhang.notified().await;
        }
        if take(&self.fail_appends) {
            return Err(full());
        }
        self.stored.lock().unwrap().extend(batch.iter().cloned());
        self.inner.append(batch).await
    }

    async fn probe(&self) -> Result<()> {
        self.probes.fetch_add(1, Ordering::SeqCst);
        if take(&self.fail_probes) {
            return Err(full());
        }
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
}

async fn flaky_hub() -> (Hub<Arc<Flaky>>, Arc<Flaky>) {
    let store = Arc::new(Flaky::default());
    let hub = Hub::open(HubConfig::default(), store.clone())
        .await
        .unwrap();
    (hub, store)
}

fn publish(channel: &str, payload: &str, key: Option<&str>) -> Publish {
    let mut p = Publish::new(ChannelName::new(channel).unwrap(), payload.to_string());
    p.idempotency_key = key.map(str::to_string);
    p
}

/// `device` joins `sub`, resuming as a member does.
fn member(device: &DeviceId, sub: &Pattern) -> SubscribeRequest {
    SubscribeRequest {
        device: Some(device.clone()),
        patterns: vec![sub.clone()],
        resume: Resume::Auto,
    }
}

async fn until_writable(hub: &Hub<Arc<Flaky>>) {
    tokio::time::timeout(WAIT, async {
        while hub.store_health().outage.is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the store takes writes again");
}

fn stored_events(store: &Flaky) -> Vec<String> {
    store
        .stored
        .lock()
        .unwrap()
        .iter()
        .filter_map(|r| match r {
            Record::Event(e) => Some(e.payload_str().to_string()),
            _ => None,
        })
        .collect()
}

/// Issue 19, point 6: one failed write used to refuse every write until a
/// restart. Now writes are refused while the store fails, retried, and
/// resume; the failed publish is not stored, ids keep increasing.
#[tokio::test]
async fn writes_resume_once_the_store_takes_them_again() {
    let (hub, store) = flaky_hub().await;
    let first = hub.publish(publish("c", "before", None)).await.unwrap();
    store.fail_appends.store(1, Ordering::SeqCst);
    store.fail_probes.store(2, Ordering::SeqCst);
    let err = hub.publish(publish("c", "lost", None)).await.unwrap_err();
    let Error::StoreUnavailable(why) = &err else {
        panic!("{err:?}")
    };
    assert!(why.contains("No space left on device"), "{why}");
    // Refused at once while failing, with the cause and the next retry.
    let refused = hub
        .publish(publish("c", "refused", None))
        .await
        .unwrap_err();
    let Error::StoreUnavailable(why) = &refused else {
        panic!("{refused:?}")
    };
    assert!(
        why.contains("No space left on device") && why.contains("next try in"),
        "{why}"
    );
    let outage = hub.store_health().outage.expect("an outage");
    assert!(
        outage.failures >= 1 && outage.retry_in <= LAST_RETRY,
        "{outage:?}"
    );
    assert!(!hub.stats().await.unwrap().store_writable);
    until_writable(&hub).await;
    assert_eq!(
        store.probes.load(Ordering::SeqCst),
        3,
        "two failed, one passed"
    );
    let after = hub.publish(publish("c", "after", None)).await.unwrap();
    assert!(after.id > first.id);
    assert_eq!(stored_events(&store), ["before", "after"]);
    let events = hub
        .events(&ChannelName::new("c").unwrap(), EventId::ZERO, 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 2, "the failed publish is not served");
    assert_eq!(hub.stats().await.unwrap().store_failures, 3);
    assert!(hub.stats().await.unwrap().store_writable);
}

/// The retries back off: 100 ms, doubling, at most 5 s; the backoff only
/// starts over once a batch is written.
#[tokio::test(start_paused = true)]
async fn retries_back_off_from_100_ms_to_5_s() {
    let (hub, store) = flaky_hub().await;
    store.fail_appends.store(1, Ordering::SeqCst);
    store.fail_probes.store(usize::MAX, Ordering::SeqCst);
    hub.publish(publish("c", "x", None)).await.unwrap_err();
    let mut waits = Vec::new();
    let mut seen = 0;
    while waits.len() < 9 {
        let outage = hub.store_health().outage.unwrap();
        if outage.failures > seen {
            seen = outage.failures;
            waits.push(outage.retry_in.as_millis());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Each read right after the failure: the full wait, give or take the
    // millisecond of this loop.
    let expected = [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000];
    for (got, want) in waits.iter().zip(expected) {
        assert!(*got <= want && *got + 2 >= want, "{waits:?}");
    }
    // Back: the next outage starts at 5 s (nothing was written since), and
    // a written batch brings it back to 100 ms.
    store.fail_probes.store(0, Ordering::SeqCst);
    until_writable(&hub).await;
    store.fail_appends.store(1, Ordering::SeqCst);
    hub.publish(publish("c", "y", None)).await.unwrap_err();
    assert_eq!(hub.store_health().outage.unwrap().retry_in, LAST_RETRY);
    until_writable(&hub).await;
    hub.publish(publish("c", "z", None)).await.unwrap();
    store.fail_appends.store(1, Ordering::SeqCst);
    hub.publish(publish("c", "w", None)).await.unwrap_err();
    assert_eq!(hub.store_health().outage.unwrap().retry_in, FIRST_RETRY);
}

/// A publish whose write failed is undone: its idempotency key is
/// forgotten, so the client's retry is stored (once) instead of being
/// answered as a duplicate of an event that does not exist.
#[tokio::test]
async fn a_failed_publish_forgets_its_idempotency_key() {
    let (hub, store) = flaky_hub().await;
    store.fail_appends.store(1, Ordering::SeqCst);
    hub.publish(publish("c", "order 1", Some("k1")))
        .await
        .unwrap_err();
    until_writable(&hub).await;
    let retried = hub
        .publish(publish("c", "order 1", Some("k1")))
        .await
        .unwrap();
    assert!(!retried.duplicate, "a new publish, not a duplicate");
    let again = hub
        .publish(publish("c", "order 1", Some("k1")))
        .await
        .unwrap();
    assert!(again.duplicate && again.id == retried.id);
    assert_eq!(stored_events(&store), ["order 1"]);
}

/// What happened anyway in a batch that failed — a stream closing, a
/// device joining — stays in the state, and its records are written once
/// the store takes writes again, before anything else.
#[tokio::test]
async fn what_happened_anyway_is_journaled_after_the_outage() {
    let (hub, store) = flaky_hub().await;
    let sub = Pattern::new("c").unwrap();
    let device = DeviceId::new("phone").unwrap();
    let stream = hub.subscribe(member(&device, &sub), None).await.unwrap();
    let journaled = store.stored.lock().unwrap().len();
    store.fail_appends.store(1, Ordering::SeqCst);
    store.fail_probes.store(1, Ordering::SeqCst);
    // The stream closes; its close is the batch that fails.
    drop(stream);
    tokio::time::timeout(WAIT, async {
        while hub.store_health().outage.is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the close's write fails");
    assert_eq!(store.stored.lock().unwrap().len(), journaled);
    until_writable(&hub).await;
    tokio::time::timeout(WAIT, async {
        loop {
            let closed = store.stored.lock().unwrap()[journaled..].iter().any(
                |r| matches!(r, Record::Presence { device: d, online: false, .. } if *d == device),
            );
            if closed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the stream's close is journaled once the store is back");
    assert!(!hub.devices(&sub).await.unwrap()[0].1.online);
}

/// A stream that could not open because its write failed is refused, but
/// its device did become a member (the state says so): that membership is
/// journaled once the store is back, so it survives a restart as it is.
#[tokio::test]
async fn a_membership_made_in_a_failed_batch_is_journaled_after_the_outage() {
    let (hub, store) = flaky_hub().await;
    let sub = Pattern::new("c").unwrap();
    let device = DeviceId::new("tablet").unwrap();
    store.fail_appends.store(1, Ordering::SeqCst);
    let refused = hub.subscribe(member(&device, &sub), None).await;
    assert!(matches!(refused, Err(Error::StoreUnavailable(_))));
    until_writable(&hub).await;
    let joined = |store: &Flaky| {
        store.stored.lock().unwrap().iter().any(
            |r| matches!(r, Record::Joined { device: d, subscription: s, .. } if *d == device && *s == sub),
        )
    };
    tokio::time::timeout(WAIT, async {
        while !joined(&store) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the membership is journaled");
    // Its stream never opened: no presence record says it was online.
    assert!(
        !store
            .stored
            .lock()
            .unwrap()
            .iter()
            .any(|r| matches!(r, Record::Presence { device: d, online: true, .. } if *d == device))
    );
    assert!(
        hub.devices(&sub)
            .await
            .unwrap()
            .iter()
            .any(|(d, p)| *d == device && p.member)
    );
}

/// A store that stops answering holds the writer, and with it every view
/// of the hub: `/metrics` still answers, with the last gauges it read
/// and the store's health, and the operator's views say the hub is busy
/// instead of hanging with it.
#[tokio::test(start_paused = true)]
async fn a_hanging_store_leaves_stats_answering_and_views_busy() {
    let (hub, store) = flaky_hub().await;
    hub.publish(publish("c", "before", None)).await.unwrap();
    assert_eq!(hub.stats().await.unwrap().retained, 1);
    store.hang.store(true, Ordering::SeqCst);
    let stuck = tokio::spawn({
        let hub = hub.clone();
        async move { hub.publish(publish("c", "held", None)).await }
    });
    tokio::task::yield_now().await;
    let stats = tokio::time::timeout(Duration::from_secs(2), hub.stats())
        .await
        .expect("stats answer while the store hangs")
        .unwrap();
    assert_eq!((stats.retained, stats.published), (1, 1));
    assert!(stats.store_writable);
    let err = tokio::time::timeout(Duration::from_secs(10), hub.connections())
        .await
        .expect("a view gives up on a busy writer")
        .unwrap_err();
    assert!(matches!(err, Error::StoreUnavailable(_)), "{err:?}");
    store.hang.store(false, Ordering::SeqCst);
    store.unhang.notify_waiters();
    stuck.await.unwrap().unwrap();
    assert_eq!(hub.stats().await.unwrap().retained, 2);
    assert_eq!(hub.connections().await.unwrap().total, 0);
}

/// While the store fails, a batch of receipts still tells each receipt
/// what is wrong with it first (an unknown event, a stranger), and only
/// the valid ones are refused for the outage; nothing of it is recorded.
#[tokio::test]
async fn a_batch_of_receipts_during_an_outage_is_checked_before_refused() {
    let (hub, store) = flaky_hub().await;
    let sub = Pattern::new("c").unwrap();
    let device = DeviceId::new("phone").unwrap();
    let mut stream = hub.subscribe(member(&device, &sub), None).await.unwrap();
    let id = hub.publish(publish("c", "one", None)).await.unwrap().id;
    let event = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.id, id);
    store.fail_appends.store(1, Ordering::SeqCst);
    store.fail_probes.store(usize::MAX, Ordering::SeqCst);
    hub.publish(publish("c", "lost", None)).await.unwrap_err();
    let stranger = DeviceId::new("stranger").unwrap();
    let results = hub
        .ack_batch(vec![
            (sub.clone(), device.clone(), id, "ok".into()),
            (
                sub.clone(),
                device.clone(),
                EventId(id.0 + 1000),
                "ok".into(),
            ),
            (sub.clone(), stranger, id, "ok".into()),
        ])
        .await;
    assert!(
        matches!(
            results[..],
            [
                Err(Error::StoreUnavailable(_)),
                Err(Error::UnknownEvent { .. }),
                Err(Error::NotRecipient { .. })
            ]
        ),
        "{results:?}"
    );
    let receipts = hub.receipts(&sub, id).unwrap();
    assert_eq!(receipts.summary().acked, 0);
}
