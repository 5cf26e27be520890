//! Heartbeats, leases and node ids: who is alive, who runs the ticker,
//! who runs as which node.

use std::time::Duration;

use pere_cluster::EngineError;
use pere_cluster::testing::RedisServer;

use crate::{PROMPT, engine};

#[tokio::test]
async fn one_node_holds_a_lease_until_it_expires_or_is_released() {
    let redis = RedisServer::start().expect("redis starts");
    let a = engine(&redis.url(), "a").await;
    let b = engine(&redis.url(), "b").await;
    let short = Duration::from_millis(300);
    assert!(a.try_lease("ticker", short).await.unwrap());
    assert!(!b.try_lease("ticker", short).await.unwrap());
    assert!(
        a.try_lease("ticker", short).await.unwrap(),
        "its holder renews it"
    );
    // Other leases are independent.
    assert!(b.try_lease("sweeper", short).await.unwrap());
    // a stops renewing: b takes over once it expires, and a cannot renew.
    let waited = tokio::time::timeout(PROMPT, async {
        let started = tokio::time::Instant::now();
        while !b.try_lease("ticker", short).await.unwrap() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        started.elapsed()
    })
    .await
    .expect("b takes the lease over");
    assert!(
        waited >= Duration::from_millis(200),
        "not before expiry: {waited:?}"
    );
    assert!(!a.try_lease("ticker", short).await.unwrap());
    // A clean shutdown hands it over at once.
    assert!(
        !a.release_lease("ticker").await.unwrap(),
        "a does not hold it"
    );
    assert!(b.release_lease("ticker").await.unwrap());
    assert!(a.try_lease("ticker", short).await.unwrap());
}

#[tokio::test]
async fn nodes_are_live_while_they_heartbeat_and_expired_after() {
    let redis = RedisServer::start().expect("redis starts");
    let a = engine(&redis.url(), "a").await;
    let b = engine(&redis.url(), "b").await;
    a.heartbeat(Duration::from_millis(300)).await.unwrap();
    b.heartbeat(Duration::from_secs(60)).await.unwrap();
    assert_eq!(a.live_nodes().await.unwrap(), ["a", "b"]);
    assert!(a.expired_nodes().await.unwrap().is_empty());
    // a stops (kill -9): within its ttl it is gone from the live nodes.
    tokio::time::timeout(PROMPT, async {
        while b.live_nodes().await.unwrap() != ["b"] {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a expires");
    assert_eq!(b.expired_nodes().await.unwrap(), ["a"]);
    // The sweeper cleans up after it, then forgets it; a live node is
    // never forgotten.
    assert!(!b.forget_node("b").await.unwrap());
    assert!(b.forget_node("a").await.unwrap());
    assert!(b.expired_nodes().await.unwrap().is_empty());
    // A node that comes back is live again.
    a.heartbeat(Duration::from_secs(60)).await.unwrap();
    let mut live = b.live_nodes().await.unwrap();
    live.sort();
    assert_eq!(live, ["a", "b"]);
}

/// One live process per node id: a second one is refused while the first
/// heartbeats; one that stopped without a goodbye (kill -9) is taken over
/// once its claim stays unchanged for `CLAIM_PATIENCE`; one that released
/// its claim (a clean stop) at once.
#[tokio::test]
async fn a_node_id_is_claimed_by_one_live_process_at_a_time() {
    let redis = RedisServer::start().expect("redis starts");
    let first = engine(&redis.url(), "n").await;
    first.claim_node().await.unwrap();
    // A long ttl: the claim does not lapse before CLAIM_PATIENCE.
    let beating = tokio::spawn({
        let first = first.clone();
        async move {
            loop {
                first.heartbeat(Duration::from_secs(30)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    });
    let second = engine(&redis.url(), "n").await;
    let refused = tokio::time::timeout(2 * PROMPT, second.claim_node())
        .await
        .expect("decided within 2 PROMPT");
    assert!(
        matches!(refused, Err(EngineError::NodeIdInUse { ref node }) if node == "n"),
        "{refused:?}"
    );
    // Another id is free.
    engine(&redis.url(), "m").await.claim_node().await.unwrap();

    // The first stops heartbeating without releasing: taken over, not
    // before its claim was seen unchanged for CLAIM_PATIENCE.
    beating.abort();
    let third = engine(&redis.url(), "n").await;
    let started = tokio::time::Instant::now();
    tokio::time::timeout(2 * PROMPT, third.claim_node())
        .await
        .expect("taken over within 2 PROMPT")
        .unwrap();
    assert!(started.elapsed() >= pere_cluster::CLAIM_PATIENCE);
    // The first, back, does not take it back with its heartbeat.
    let key = "pere:node:n";
    let held: String = redis.query(&["GET", key]).unwrap();
    first.heartbeat(Duration::from_secs(5)).await.unwrap();
    third.heartbeat(Duration::from_secs(5)).await.unwrap();
    let now: String = redis.query(&["GET", key]).unwrap();
    assert_eq!(
        held.split(' ').next(),
        now.split(' ').next(),
        "still the third's"
    );
    assert_ne!(held, now, "renewed by the third's heartbeat");

    // A clean stop frees it at once.
    third.release_node().await.unwrap();
    let fourth = engine(&redis.url(), "n").await;
    let started = tokio::time::Instant::now();
    fourth.claim_node().await.unwrap();
    assert!(started.elapsed() < pere_cluster::CLAIM_PATIENCE);
}

/// A node that claimed its id but does not heartbeat yet (loading a large
/// snapshot) still holds it: its claim renews itself until the first
/// heartbeat, and a second process with its id is refused.
#[tokio::test]
async fn a_claim_renews_itself_until_the_first_heartbeat() {
    let redis = RedisServer::start().expect("redis starts");
    let loading = engine(&redis.url(), "n").await;
    loading.claim_node().await.unwrap();
    tokio::time::sleep(pere_cluster::CLAIM_PATIENCE + Duration::from_secs(1)).await;
    let second = engine(&redis.url(), "n").await;
    let refused = tokio::time::timeout(2 * PROMPT, second.claim_node())
        .await
        .expect("decided within 2 PROMPT");
    assert!(
        matches!(refused, Err(EngineError::NodeIdInUse { .. })),
        "{refused:?}"
    );
}
