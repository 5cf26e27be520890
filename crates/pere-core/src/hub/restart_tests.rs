//! What a durable hub keeps across a restart beyond events, receipts and
//! memberships: acknowledged prefixes and losses, idempotency keys,
//! membership TTLs, that auth is on. Found by a crash probe and a review.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::redelivery_tests::{publish_n, subscribe_to, take};
use super::tests::{ch, dev, pat};
use super::*;
use crate::config::Retention;
use crate::log::FileStoreConfig;
use crate::log::file::tests::open_store;

async fn sub_on<S: EventStore>(hub: &Hub<S>, device: &str, resume: Resume) -> Subscription {
    subscribe_to(hub, device, "orders", resume).await
}

/// Device `R` acknowledges `id` on `orders`, status `ok`.
async fn ack_r<S: EventStore>(hub: &Hub<S>, id: EventId) {
    hub.ack(&pat("orders"), &dev("R"), id, "ok").await.unwrap();
}

/// A file store in `dir` keeping `history` events per channel.
fn keeping(dir: &std::path::Path, history: usize) -> FileStoreConfig {
    let mut cfg = FileStoreConfig::new(dir);
    cfg.retention = Retention {
        history,
        max_age: None,
    };
    cfg
}

/// A hub whose chores run only when a test asks ([`force_tick`]).
fn untimed() -> HubConfig {
    HubConfig {
        tick: Duration::from_secs(3600),
        ..HubConfig::default()
    }
}

/// A publish by `backend` on `orders` with the idempotency key `k-1`.
fn keyed() -> Publish {
    Publish {
        idempotency_key: Some("k-1".into()),
        device: Some(dev("backend")),
        ..Publish::new(ch("orders"), "first")
    }
}

fn fast() -> HubConfig {
    HubConfig {
        tick: Duration::from_millis(20),
        ..HubConfig::default()
    }
}

/// A receipt for an event below the latest receipt, arriving
/// after a tick, never re-journals AckedUpto (journal_acks only looks at
/// `last_acked`, which a lower id does not update): after a restart the
/// stale bound reported a gap although every dropped event was acknowledged.
#[tokio::test]
async fn a_late_receipt_below_the_latest_moves_the_journaled_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = keeping(dir.path(), 3);
    {
        let hub = Hub::open(fast(), open_store(&cfg)).await.unwrap();
        let mut r = sub_on(&hub, "R", Resume::Auto).await;
        let e = publish_n(&hub, "orders", 3).await;
        assert_eq!(take(&mut r, 3).await, e);
        ack_r(&hub, e[0]).await;
        ack_r(&hub, e[2]).await;
        tokio::time::sleep(Duration::from_millis(200)).await; // ticks journal AckedUpto = e0
        // The retried receipt for e1 arrives late: now all three are acknowledged.
        ack_r(&hub, e[1]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(r);
        publish_n(&hub, "orders", 3).await; // drops e0..e2, all acknowledged
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Live: no gap.
        let r = sub_on(&hub, "R", Resume::Auto).await;
        assert!(r.gap().is_none(), "live: {:?}", r.gap());
        drop(r);
        hub.shutdown().await;
    }
    let hub = Hub::open(fast(), open_store(&cfg)).await.unwrap();
    let r = sub_on(&hub, "R", Resume::Auto).await;
    assert!(r.gap().is_none(), "after restart: false gap {:?}", r.gap());
    hub.shutdown().await;
}

/// `Recovered::keyed` was applied after the retained events, so a
/// key reused (after its TTL) for a new, retained event is overwritten by
/// the old dropped event still in an uncompacted segment, then expired at
/// start: a retry of the retained event was stored twice.
#[tokio::test]
async fn a_dropped_event_does_not_shadow_the_key_of_a_retained_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = keeping(dir.path(), 1);
    let config = HubConfig {
        idempotency_ttl: Duration::from_millis(200),
        tick: Duration::from_millis(20),
        ..HubConfig::default()
    };
    let keyed = keyed();
    let second = {
        let hub = Hub::open(config.clone(), open_store(&cfg)).await.unwrap();
        let first = hub.publish(keyed.clone()).await.unwrap();
        publish_n(&hub, "other", 0).await;
        publish_n(&hub, "orders", 1).await; // drops `first`
        tokio::time::sleep(Duration::from_millis(400)).await; // key expires
        let second = hub.publish(keyed.clone()).await.unwrap();
        assert!(!second.duplicate);
        assert_ne!(second.id, first.id);
        let retry = hub.publish(keyed.clone()).await.unwrap();
        assert!(
            retry.duplicate,
            "live: a retry of the retained event is a duplicate"
        );
        hub.shutdown().await;
        second
    };
    let hub = Hub::open(config, open_store(&cfg)).await.unwrap();
    let retry = hub.publish(keyed).await.unwrap();
    assert!(
        retry.duplicate && retry.id == second.id,
        "after restart the retry of a retained event made a new one: {:?} vs {:?}",
        retry.id,
        second.id
    );
    hub.shutdown().await;
}

/// The records a closed store at `cfg` hands a hub when it opens.
async fn journaled(cfg: &FileStoreConfig) -> Vec<crate::log::Record> {
    let store = open_store(cfg);
    let recovered = store.recover().await.unwrap();
    store.close().await.unwrap();
    recovered.records
}

async fn force_tick<S: EventStore>(hub: &Hub<S>) {
    hub.inner.commands.send(Command::Tick).ok().unwrap();
    hub.stats().await.unwrap();
}

/// Receipts in the last tick before a graceful stop are journaled with it:
/// no gap for acknowledged events after the restart (docs §5.4 admits a
/// stale bound after kill -9 only).
#[tokio::test]
async fn no_gap_after_a_graceful_stop_right_after_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = keeping(dir.path(), 3);
    let slow = untimed();
    {
        let hub = Hub::open(slow.clone(), open_store(&cfg)).await.unwrap();
        let mut r = sub_on(&hub, "R", Resume::Auto).await;
        let e = publish_n(&hub, "orders", 1).await;
        assert_eq!(take(&mut r, 1).await, e);
        ack_r(&hub, e[0]).await;
        force_tick(&hub).await; // Acking(e1), AckedUpto(e1)
        let e = publish_n(&hub, "orders", 3).await; // drops e1 (acknowledged)
        assert_eq!(take(&mut r, 3).await, e);
        for id in &e {
            ack_r(&hub, *id).await;
        }
        drop(r);
        publish_n(&hub, "orders", 3).await; // drops e2..e4 (all acknowledged)
        // SIGTERM now, before the next tick.
        hub.shutdown().await;
    }
    let hub = Hub::open(slow, open_store(&cfg)).await.unwrap();
    let r = sub_on(&hub, "R", Resume::Auto).await;
    assert!(
        r.gap().is_none(),
        "after a graceful restart: false gap {:?}",
        r.gap()
    );
    hub.shutdown().await;
}

async fn sub_pat<S: EventStore>(hub: &Hub<S>, device: &str, pattern: &str) -> Subscription {
    subscribe_to(hub, device, pattern, Resume::Auto).await
}

/// On a wildcard, one bound for all channels counted drops on *any*
/// matching channel above it, acknowledged events of a busier channel
/// included, while an unacknowledged but retained event of a quiet channel
/// held it down: a false gap after a restart, none live. The bound is per
/// channel now.
#[tokio::test]
async fn acknowledged_drops_on_a_busy_channel_of_a_pattern_are_no_gap_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = keeping(dir.path(), 3);
    let slow = untimed();
    let a1 = {
        let hub = Hub::open(slow.clone(), open_store(&cfg)).await.unwrap();
        let mut r = sub_pat(&hub, "R", "orders.*").await;
        let a1 = publish_n(&hub, "orders.a", 1).await;
        assert_eq!(take(&mut r, 1).await, a1); // written, not acknowledged (yet)
        for n in [3, 2] {
            // b1..b3 acknowledged, then b4, b5 drop b1, b2 (acknowledged)
            let b = publish_n(&hub, "orders.b", n).await;
            assert_eq!(take(&mut r, n).await, b);
            for id in &b {
                hub.ack(&pat("orders.*"), &dev("R"), *id, "ok")
                    .await
                    .unwrap();
            }
        }
        force_tick(&hub).await;
        drop(r);
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Live: a1 comes again, no gap.
        let mut r = sub_pat(&hub, "R", "orders.*").await;
        assert!(r.gap().is_none(), "live: {:?}", r.gap());
        assert_eq!(take(&mut r, 1).await, a1);
        drop(r);
        hub.shutdown().await;
        a1
    };
    let hub = Hub::open(slow, open_store(&cfg)).await.unwrap();
    let mut r = sub_pat(&hub, "R", "orders.*").await;
    assert!(r.gap().is_none(), "after restart: false gap {:?}", r.gap());
    assert_eq!(take(&mut r, 1).await, a1);
    hub.shutdown().await;
}

/// Auth turned on by a run-time admin token stays on while the server
/// runs, even after that token is revoked; a restart (or a node started
/// from a snapshot) kept it on only while a run-time token was live, and
/// came back with auth off: fail-open.
#[tokio::test]
async fn auth_stays_on_after_a_restart_once_every_run_time_token_was_revoked() {
    use crate::auth::{Grants, Token};
    let dir = tempfile::tempdir().unwrap();
    let cfg = FileStoreConfig::new(dir.path());
    let admin = Token::new("an-admin-token-0123456789").unwrap();
    let grants = Grants {
        subject: dev("ops"),
        subscribe: vec![],
        publish: vec![],
        admin: true,
    };
    {
        let hub = Hub::open(HubConfig::default(), open_store(&cfg))
            .await
            .unwrap();
        hub.put_token(&admin, grants).await.unwrap();
        assert!(hub.auth().is_enabled());
        hub.delete_token(admin.hash()).await.unwrap();
        assert!(hub.auth().is_enabled(), "live: stays on");
        hub.shutdown().await;
    }
    let hub = Hub::open(HubConfig::default(), open_store(&cfg))
        .await
        .unwrap();
    assert!(
        hub.auth().is_enabled(),
        "after restart auth is off: fails open"
    );
    hub.shutdown().await;
}

/// A membership whose TTL ran out while the server was down is gone when
/// it starts again (its TTL counted again from the restart: up to a day
/// more of pending receipts with the default); so is that of a member with
/// a retained receipt (recovery applies receipts after presence records,
/// and a receipt made it look connected).
#[tokio::test]
async fn a_membership_that_expired_while_the_server_was_down_is_gone_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = FileStoreConfig::new(dir.path());
    let config = HubConfig {
        member_ttl: Duration::from_millis(400),
        ..HubConfig::default()
    };
    {
        let hub = Hub::open(config.clone(), open_store(&cfg)).await.unwrap();
        drop(sub_on(&hub, "left", Resume::Auto).await);
        let mut r = sub_on(&hub, "R", Resume::Auto).await;
        let e = publish_n(&hub, "orders", 1).await;
        assert_eq!(take(&mut r, 1).await, e);
        ack_r(&hub, e[0]).await;
        drop(r);
        tokio::time::sleep(Duration::from_millis(50)).await;
        hub.shutdown().await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    // The second time with a day's TTL: the expiry was journaled.
    for config in [config, HubConfig::default()] {
        let hub = Hub::open(config, open_store(&cfg)).await.unwrap();
        let p = hub
            .publish(Publish::new(ch("orders"), "after"))
            .await
            .unwrap();
        assert_eq!(p.recipients, 0, "memberships outlived their TTL");
        hub.shutdown().await;
    }
}

/// An idempotency key holds for its TTL after retention dropped its event
/// (§2: "while the first event is retained and for at least 10 minutes"),
/// across a restart too: a retry then is not a second event.
#[tokio::test]
async fn an_idempotency_key_outlives_its_dropped_event_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = keeping(dir.path(), 1);
    let keyed = keyed();
    let first = {
        let hub = Hub::open(HubConfig::default(), open_store(&cfg))
            .await
            .unwrap();
        let first = hub.publish(keyed.clone()).await.unwrap();
        // Dropped by the next one.
        publish_n(&hub, "orders", 1).await;
        let again = hub.publish(keyed.clone()).await.unwrap();
        assert!(again.duplicate);
        hub.shutdown().await;
        first
    };
    let hub = Hub::open(HubConfig::default(), open_store(&cfg))
        .await
        .unwrap();
    let again = hub.publish(keyed).await.unwrap();
    assert!(again.duplicate, "{:?}", (again.id, first.id));
    assert_eq!(again.id, first.id);
    hub.shutdown().await;
}

/// Events retention dropped before the device acknowledged them, below a
/// later receipt, are still a gap after a restart (the bound was its
/// latest receipt, which hid them); and once told, not again.
#[tokio::test]
async fn a_loss_below_a_later_receipt_is_a_gap_after_a_restart_and_told_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = keeping(dir.path(), 3);
    let kept = {
        let hub = Hub::open(HubConfig::default(), open_store(&cfg))
            .await
            .unwrap();
        let mut r = sub_on(&hub, "R", Resume::Auto).await;
        let e = publish_n(&hub, "orders", 3).await;
        assert_eq!(take(&mut r, 3).await, e);
        // The receipt for the second one never came.
        for id in [e[0], e[2]] {
            ack_r(&hub, id).await;
        }
        drop(r);
        let kept = publish_n(&hub, "orders", 3).await;
        hub.shutdown().await;
        kept
    };
    for restart in 0..2 {
        let hub = Hub::open(HubConfig::default(), open_store(&cfg))
            .await
            .unwrap();
        let mut r = sub_on(&hub, "R", Resume::Auto).await;
        if restart == 0 {
            let gap = r.gap().expect("a gap for the dropped unacknowledged event");
            assert_eq!(gap.oldest, Some(kept[0]), "{gap:?}");
        } else {
            assert!(r.gap().is_none(), "told once: {:?}", r.gap());
        }
        assert_eq!(take(&mut r, 3).await, kept);
        drop(r);
        hub.shutdown().await;
    }
}

/// A subscribe without a token that its caller checked while auth was
/// off, reaching the hub after auth came on, is refused there: it would
/// stay open with nothing granting it.
#[tokio::test]
async fn a_token_less_subscribe_is_refused_once_auth_is_on() {
    use crate::auth::{Grants, Token};
    let hub = Hub::open(
        HubConfig::default(),
        crate::log::MemoryStore::new(Retention::default()),
    )
    .await
    .unwrap();
    let admin = Token::new("an-admin-token-0123456789").unwrap();
    let grants = Grants {
        subject: dev("ops"),
        subscribe: vec![],
        publish: vec![],
        admin: true,
    };
    hub.put_token(&admin, grants).await.unwrap();
    let refused = hub
        .subscribe(
            SubscribeRequest {
                device: Some(dev("R")),
                patterns: vec![pat("orders")],
                resume: Resume::Auto,
            },
            None,
        )
        .await;
    assert!(
        matches!(refused, Err(crate::Error::Unauthorized(_))),
        "{:?}",
        refused.map(|_| ())
    );
    hub.shutdown().await;
}

/// What a replay wrote from before the device joined is journaled once:
/// a device replayed everything at each reconnect does not grow the
/// journal each time.
#[tokio::test]
async fn a_replay_to_a_late_joiner_is_journaled_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = FileStoreConfig::new(dir.path());
    {
        let hub = Hub::open(HubConfig::default(), open_store(&cfg))
            .await
            .unwrap();
        let old = publish_n(&hub, "orders", 3).await;
        for _ in 0..3 {
            let mut r = sub_on(&hub, "R", Resume::All).await;
            assert_eq!(take(&mut r, 3).await, old);
            drop(r);
            hub.stats().await.unwrap();
        }
        hub.shutdown().await;
    }
    let replays = journaled(&cfg)
        .await
        .into_iter()
        .filter(|r| matches!(r, crate::log::Record::Replayed { .. }))
        .count();
    assert_eq!(replays, 1);
}

/// The acknowledged prefix of a wildcard member looks at a bounded number
/// of its unacknowledged events each tick (the writer runs it): a channel
/// whose first unacknowledged event lies beyond gets a lower bound (the
/// safe side), and the record lists only what was looked at.
#[tokio::test]
async fn a_wildcard_member_s_prefix_looks_at_a_bounded_backlog() {
    use crate::hub::cmd::tick::ACKED_UPTO_WALK;
    let dir = tempfile::tempdir().unwrap();
    let cfg = keeping(dir.path(), 5000);
    let slow = untimed();
    let (backlog, late) = {
        let hub = Hub::open(slow, open_store(&cfg)).await.unwrap();
        let mut r = sub_pat(&hub, "R", "w.*").await;
        let first = publish_n(&hub, "w.a", 1).await;
        assert_eq!(take(&mut r, 1).await, first);
        hub.ack(&pat("w.*"), &dev("R"), first[0], "ok")
            .await
            .unwrap();
        let backlog = publish_n(&hub, "w.a", ACKED_UPTO_WALK + 10).await;
        let late = publish_n(&hub, "w.b", 1).await[0];
        drop(r);
        force_tick(&hub).await;
        hub.shutdown().await;
        (backlog, late)
    };
    let last = journaled(&cfg)
        .await
        .into_iter()
        .rev()
        .find_map(|r| match r {
            crate::log::Record::AckedUpto { upto, channels, .. } => Some((upto, channels)),
            _ => None,
        });
    let (upto, channels) = last.expect("an AckedUpto record");
    assert_eq!(channels, [(ch("w.a"), EventId(backlog[0].0 - 1))]);
    assert!(upto < late, "w.b's bound is below its unacknowledged event");
    assert_eq!(upto, EventId(backlog[ACKED_UPTO_WALK].0 - 1));
}
