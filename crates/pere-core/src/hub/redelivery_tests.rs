//! At-least-once for acknowledging devices (docs/PROTOCOL.md §5): what a
//! member that comes back without `Last-Event-ID` is sent again.

#![allow(clippy::unwrap_used)]

use super::tests::{WAIT, ch, dev, drain, hub, hub_with, next, pat, publish, subscribe};
use super::*;
use crate::config::Retention;
use crate::ledger::ReceiptState;
use crate::log::FileStoreConfig;
use crate::log::file::tests::open_store;

/// Takes `n` events (each marks its delivery), returning their ids.
pub(super) async fn take(sub: &mut Subscription, n: usize) -> Vec<EventId> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(next(sub).await.id);
    }
    ids
}

pub(super) async fn publish_n(hub: &Hub<impl EventStore>, channel: &str, n: usize) -> Vec<EventId> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let p = hub
            .publish(Publish::new(ch(channel), format!("event {i}")))
            .await
            .unwrap();
        ids.push(p.id);
    }
    ids
}

#[tokio::test]
async fn an_acknowledging_device_gets_again_what_a_broken_stream_took() {
    let hub = hub().await;
    let mut r = subscribe(&hub, Some("R"), &["orders"], Resume::Auto).await;
    let first = publish(&hub, "orders", "first").await;
    assert_eq!(next(&mut r).await.id, first.id);
    hub.ack(&pat("orders"), &dev("R"), first.id, "ok")
        .await
        .unwrap();
    // Written to the stream (delivered), never acknowledged: the stream
    // breaks.
    let written = publish_n(&hub, "orders", 5).await;
    assert_eq!(take(&mut r, 5).await, written);
    drop(r);
    // Published while it is away.
    let offline = publish_n(&hub, "orders", 2).await;

    let mut r = subscribe(&hub, Some("R"), &["orders"], Resume::Auto).await;
    let mut want = written.clone();
    want.extend(&offline);
    assert_eq!(r.hello().replayed, 7);
    assert_eq!(r.hello().resumed_from, Some(first.id));
    assert!(r.gap().is_none());
    assert_eq!(
        take(&mut r, 7).await,
        want,
        "in id order, once, not the acked one"
    );
    assert!(drain(&mut r).is_empty());

    // A redelivered receipt keeps its state and counts its writes.
    let s = hub.receipt_summary(&pat("orders"), written[0]).unwrap();
    let (_, receipt) = &s.devices[0];
    assert_eq!(receipt.state, ReceiptState::Delivered);
    assert_eq!(receipt.deliveries, 2);
    let s = hub.receipt_summary(&pat("orders"), offline[0]).unwrap();
    assert_eq!(s.devices[0].1.deliveries, 1);
    assert_eq!(hub.stats().await.unwrap().redelivered, 5);

    // Acknowledged now: the next reconnect sends nothing again.
    for id in &want[..6] {
        hub.ack(&pat("orders"), &dev("R"), *id, "ok").await.unwrap();
    }
    drop(r);
    let mut r = subscribe(&hub, Some("R"), &["orders"], Resume::Auto).await;
    assert_eq!(r.hello().replayed, 1, "only the one it did not acknowledge");
    assert_eq!(take(&mut r, 1).await, want[6..]);
}

#[tokio::test]
async fn a_device_that_never_acknowledges_resumes_after_the_last_written_event() {
    let hub = hub().await;
    let mut r = subscribe(&hub, Some("quiet"), &["c"], Resume::Auto).await;
    let written = publish_n(&hub, "c", 3).await;
    assert_eq!(take(&mut r, 3).await, written);
    drop(r);
    let offline = publish_n(&hub, "c", 2).await;
    let mut r = subscribe(&hub, Some("quiet"), &["c"], Resume::Auto).await;
    assert_eq!(r.hello().resumed_from, Some(written[2]));
    assert_eq!(take(&mut r, 2).await, offline);
    assert!(drain(&mut r).is_empty());
    assert_eq!(hub.stats().await.unwrap().redelivered, 0);
}

#[tokio::test]
async fn last_event_id_stays_authoritative_for_an_acknowledging_device() {
    let hub = hub().await;
    let mut r = subscribe(&hub, Some("R"), &["c"], Resume::Auto).await;
    let ids = publish_n(&hub, "c", 4).await;
    assert_eq!(take(&mut r, 4).await, ids);
    hub.ack(&pat("c"), &dev("R"), ids[0], "ok").await.unwrap();
    drop(r);
    let mut r = subscribe(&hub, Some("R"), &["c"], Resume::After(ids[2])).await;
    assert_eq!(take(&mut r, 1).await, ids[3..]);
    assert!(drain(&mut r).is_empty());
    drop(r);
    // Without it, everything not acknowledged comes back.
    let mut r = subscribe(&hub, Some("R"), &["c"], Resume::Auto).await;
    assert_eq!(take(&mut r, 3).await, ids[1..]);
}

#[tokio::test]
async fn the_first_receipt_makes_earlier_unacknowledged_events_count() {
    let hub = hub().await;
    let mut r = subscribe(&hub, Some("R"), &["c"], Resume::Auto).await;
    let ids = publish_n(&hub, "c", 3).await;
    assert_eq!(take(&mut r, 3).await, ids);
    // It acknowledges the last one only, then its stream breaks.
    hub.ack(&pat("c"), &dev("R"), ids[2], "ok").await.unwrap();
    drop(r);
    let mut r = subscribe(&hub, Some("R"), &["c"], Resume::Auto).await;
    assert_eq!(take(&mut r, 2).await, ids[..2]);
    assert!(drain(&mut r).is_empty());
}

/// Events replayed to a device from before it joined are in its audience
/// (docs/PROTOCOL.md §4, §5): they come back too until acknowledged,
/// whether it acknowledged anything before the replay or only after.
#[tokio::test]
async fn events_replayed_from_before_a_device_joined_come_back_unacknowledged() {
    let hub = hub().await;
    let old = publish_n(&hub, "c", 2).await;
    // A first connection that asks for everything: it joins at the head.
    let mut r = subscribe(&hub, Some("R"), &["c"], Resume::All).await;
    assert_eq!(take(&mut r, 2).await, old);
    let live = publish(&hub, "c", "live").await.id;
    assert_eq!(take(&mut r, 1).await, [live]);
    hub.ack(&pat("c"), &dev("R"), live, "ok").await.unwrap();
    drop(r);
    let mut r = subscribe(&hub, Some("R"), &["c"], Resume::Auto).await;
    assert_eq!(r.hello().replayed, 2);
    assert_eq!(take(&mut r, 2).await, old);
    assert!(drain(&mut r).is_empty());
    hub.ack(&pat("c"), &dev("R"), old[0], "ok").await.unwrap();
    drop(r);

    // Replayed after its first receipt (an older Last-Event-ID), too.
    let older = publish_n(&hub, "d", 2).await;
    let mut s = subscribe(&hub, Some("S"), &["d"], Resume::Auto).await;
    let later = publish(&hub, "d", "later").await.id;
    assert_eq!(take(&mut s, 1).await, [later]);
    hub.ack(&pat("d"), &dev("S"), later, "ok").await.unwrap();
    drop(s);
    let mut s = subscribe(&hub, Some("S"), &["d"], Resume::After(EventId::ZERO)).await;
    assert_eq!(take(&mut s, 2).await, older);
    drop(s);
    let mut s = subscribe(&hub, Some("S"), &["d"], Resume::Auto).await;
    assert_eq!(take(&mut s, 2).await, older);
    assert!(drain(&mut s).is_empty());
    drop(s);

    // Acknowledged, they are not sent again.
    let mut r = subscribe(&hub, Some("R"), &["c"], Resume::Auto).await;
    assert_eq!(take(&mut r, 1).await, old[1..]);
    hub.ack(&pat("c"), &dev("R"), old[1], "ok").await.unwrap();
    drop(r);
    let r = subscribe(&hub, Some("R"), &["c"], Resume::Auto).await;
    assert_eq!(r.hello().replayed, 0);
}

#[tokio::test]
async fn patterns_and_channels_of_one_stream_redeliver_each_event_once() {
    let hub = hub().await;
    let mut r = subscribe(&hub, Some("R"), &["orders.*", "orders.eu"], Resume::Auto).await;
    let a = publish(&hub, "orders.eu", "a").await;
    assert_eq!(next(&mut r).await.id, a.id);
    hub.ack(&pat("orders.eu"), &dev("R"), a.id, "ok")
        .await
        .unwrap();
    let eu = publish_n(&hub, "orders.eu", 2).await;
    let us = publish_n(&hub, "orders.us", 1).await;
    assert_eq!(take(&mut r, 3).await, [eu.clone(), us.clone()].concat());
    drop(r);
    let mut r = subscribe(&hub, Some("R"), &["orders.*", "orders.eu"], Resume::Auto).await;
    assert_eq!(take(&mut r, 3).await, [eu, us].concat());
    assert!(drain(&mut r).is_empty());
}

#[tokio::test]
async fn unacknowledged_events_lost_to_retention_are_a_gap() {
    // Whether or not a maintenance tick trimmed them in between.
    for tick in [
        std::time::Duration::from_secs(3600),
        std::time::Duration::from_millis(10),
    ] {
        let hub = hub_with(
            HubConfig {
                tick,
                ..HubConfig::default()
            },
            Retention {
                history: 3,
                max_age: None,
            },
        )
        .await;
        let mut r = subscribe(&hub, Some("R"), &["c"], Resume::Auto).await;
        let first = publish(&hub, "c", "first").await;
        next(&mut r).await;
        hub.ack(&pat("c"), &dev("R"), first.id, "ok").await.unwrap();
        let written = publish_n(&hub, "c", 2).await;
        assert_eq!(take(&mut r, 2).await, written);
        drop(r);
        // Four more push both unacknowledged events (and one of these) out.
        let later = publish_n(&hub, "c", 4).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut r = subscribe(&hub, Some("R"), &["c"], Resume::Auto).await;
        let gap = r.gap().expect("told it lost events");
        assert_eq!(gap.oldest, Some(later[1]), "{tick:?}");
        assert!(gap.from < written[0], "{tick:?}: {gap:?}");
        assert_eq!(take(&mut r, 3).await, later[1..]);
    }
}

/// The gap of a stream on two channels names the oldest event it can still
/// get after the loss, not an older one of its other channel.
#[tokio::test]
async fn the_gap_of_a_loss_on_one_of_several_channels_names_what_follows_it() {
    let hub = hub_with(
        HubConfig::default(),
        Retention {
            history: 2,
            max_age: None,
        },
    )
    .await;
    let mut r = subscribe(&hub, Some("R"), &["x", "y"], Resume::Auto).await;
    let a = publish(&hub, "x", "a").await.id;
    let b = publish(&hub, "y", "b").await.id;
    assert_eq!(take(&mut r, 2).await, [a, b]);
    hub.ack(&pat("x"), &dev("R"), a, "ok").await.unwrap();
    hub.ack(&pat("y"), &dev("R"), b, "ok").await.unwrap();
    drop(r);
    // Four on x while it is away: the first two are dropped unacknowledged.
    let away = publish_n(&hub, "x", 4).await;
    let mut r = subscribe(&hub, Some("R"), &["x", "y"], Resume::Auto).await;
    let gap = r.gap().expect("told it lost events");
    assert_eq!(gap.oldest, Some(away[2]), "{gap:?}");
    assert!(a <= gap.from && gap.from < away[0], "{gap:?}");
    assert_eq!(take(&mut r, 2).await, away[2..]);
}

#[tokio::test]
async fn redelivery_survives_a_restart_of_a_durable_hub() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = FileStoreConfig::new(dir.path());
    let (first, written) = {
        let (hub, mut r, first) = durable_hub_with_an_ack(&cfg).await;
        let written = publish_n(&hub, "orders", 4).await;
        assert_eq!(take(&mut r, 4).await, written);
        // Its cursor is journaled past them when the stream closes.
        drop(r);
        hub.shutdown().await;
        (first, written)
    };
    let hub = Hub::open(HubConfig::default(), open_store(&cfg))
        .await
        .unwrap();
    let mut r = subscribe_on(&hub, "R").await;
    assert_eq!(take(&mut r, 4).await, written);
    assert!(drain(&mut r).is_empty());
    let s = hub.receipt_summary(&pat("orders"), first.id).unwrap();
    let receipt = &s.devices[0].1;
    assert!(receipt.delivered_at <= receipt.acked_at, "{receipt:?}");
    hub.shutdown().await;
}

/// A member whose every acknowledged event retention dropped still
/// acknowledges after a restart: it is sent again what it had been written
/// and not acknowledged, after a `pere.gap` for what was dropped.
#[tokio::test]
async fn a_member_whose_receipts_all_aged_out_is_still_sent_its_unacked_events_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = FileStoreConfig::new(dir.path());
    cfg.retention = Retention {
        history: 3,
        max_age: None,
    };
    let (first, kept) = {
        let (hub, mut r, first) = durable_hub_with_an_ack(&cfg).await;
        let written = publish_n(&hub, "orders", 5).await;
        assert_eq!(take(&mut r, 5).await, written);
        drop(r);
        hub.shutdown().await;
        (first, written[2..].to_vec())
    };
    let hub = Hub::open(HubConfig::default(), open_store(&cfg))
        .await
        .unwrap();
    let mut r = subscribe_on(&hub, "R").await;
    let gap = r
        .gap()
        .expect("a gap for the two dropped unacknowledged events");
    assert_eq!(gap.from, first.id, "{gap:?}");
    assert_eq!(r.hello().replayed, 3);
    assert_eq!(take(&mut r, 3).await, kept);
    drop(r);
    hub.shutdown().await;
    // And again after one more restart (the store compacted or not).
    let hub = Hub::open(HubConfig::default(), open_store(&cfg))
        .await
        .unwrap();
    let r = subscribe_on(&hub, "R").await;
    assert_eq!(r.hello().replayed, 3);
    hub.shutdown().await;
}

/// A restart after retention dropped the events a device acknowledged does
/// not take them for lost: its latest receipt is journaled, not only its
/// first.
#[tokio::test]
async fn no_gap_after_a_restart_for_acknowledged_events_retention_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = FileStoreConfig::new(dir.path());
    cfg.retention = Retention {
        history: 3,
        max_age: None,
    };
    let unacked = {
        let (hub, mut r, _) = durable_hub_with_an_ack(&cfg).await;
        for _ in 0..2 {
            let acked = publish_n(&hub, "orders", 1).await;
            assert_eq!(take(&mut r, 1).await, acked);
            hub.ack(&pat("orders"), &dev("R"), acked[0], "ok")
                .await
                .unwrap();
        }
        let unacked = publish_n(&hub, "orders", 3).await;
        assert_eq!(take(&mut r, 3).await, unacked);
        drop(r);
        hub.shutdown().await;
        unacked
    };
    let hub = Hub::open(HubConfig::default(), open_store(&cfg))
        .await
        .unwrap();
    let mut r = subscribe_on(&hub, "R").await;
    assert!(
        r.gap().is_none(),
        "nothing unacknowledged was lost: {:?}",
        r.gap()
    );
    assert_eq!(take(&mut r, 3).await, unacked);
    hub.shutdown().await;
}

/// A device that acknowledged, was removed, and joins again acknowledges
/// from its start; a restart keeps it so.
#[tokio::test]
async fn a_rejoined_acknowledging_member_keeps_at_least_once_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = FileStoreConfig::new(dir.path());
    cfg.retention = Retention {
        history: 3,
        max_age: None,
    };
    {
        let hub = Hub::open(HubConfig::default(), open_store(&cfg))
            .await
            .unwrap();
        let mut r = subscribe_on(&hub, "S").await;
        let e = publish_n(&hub, "orders", 2).await;
        assert_eq!(take(&mut r, 2).await, e);
        hub.ack(&pat("orders"), &dev("S"), e[0], "ok")
            .await
            .unwrap();
        drop(r);
        hub.remove_member(&pat("orders"), &dev("S")).await.unwrap();
        // A late receipt, then it joins again.
        hub.ack(&pat("orders"), &dev("S"), e[1], "ok")
            .await
            .unwrap();
        let mut r = subscribe_on(&hub, "S").await;
        let written = publish_n(&hub, "orders", 5).await;
        assert_eq!(take(&mut r, 5).await, written);
        drop(r);
        hub.shutdown().await;
    }
    let hub = Hub::open(HubConfig::default(), open_store(&cfg))
        .await
        .unwrap();
    let r = subscribe_on(&hub, "S").await;
    assert_eq!(r.hello().replayed, 3, "{:?}", r.hello());
    assert!(
        r.gap().is_some(),
        "two of its events were dropped unacknowledged"
    );
    hub.shutdown().await;
}

/// A member an operator removed was still written its events before: after
/// a restart its receipts say so (they said "acked, 0 deliveries", which
/// reads as "acknowledged without ever being written").
#[tokio::test]
async fn a_removed_member_s_deliveries_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = FileStoreConfig::new(dir.path());
    let (first, second) = {
        let (hub, mut r, first) = durable_hub_with_an_ack(&cfg).await;
        let second = hub
            .publish(Publish::new(ch("orders"), "second"))
            .await
            .unwrap();
        next(&mut r).await;
        // Removed with its stream open, before a tick journals its cursor.
        hub.remove_member(&pat("orders"), &dev("R")).await.unwrap();
        hub.shutdown().await;
        (first, second)
    };
    let hub = Hub::open(HubConfig::default(), open_store(&cfg))
        .await
        .unwrap();
    let acked = hub.receipt_summary(&pat("orders"), first.id).unwrap();
    let receipt = &acked.devices[0].1;
    assert_eq!(receipt.state, ReceiptState::Acked, "{receipt:?}");
    assert_eq!(receipt.deliveries, 1, "{receipt:?}");
    let delivered = hub.receipt_summary(&pat("orders"), second.id).unwrap();
    let receipt = &delivered.devices[0].1;
    assert_eq!(receipt.state, ReceiptState::Delivered, "{receipt:?}");
    assert_eq!(receipt.deliveries, 1, "{receipt:?}");
    hub.shutdown().await;
}

/// Events replayed to a device from before it joined stay in its audience
/// across a restart of a durable hub (the replay is journaled): they come
/// back until acknowledged, whether its first receipt came before the
/// restart or after.
#[tokio::test]
async fn events_replayed_from_before_a_device_joined_come_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = FileStoreConfig::new(dir.path());
    let old = {
        let hub = Hub::open(HubConfig::default(), open_store(&cfg))
            .await
            .unwrap();
        let old = publish_n(&hub, "orders", 3).await;
        // R acknowledges before the restart, S only after it.
        for device in ["R", "S"] {
            let mut s = subscribe_from(&hub, device, Resume::All).await;
            assert_eq!(take(&mut s, 3).await, old);
        }
        hub.ack(&pat("orders"), &dev("R"), old[0], "ok")
            .await
            .unwrap();
        hub.shutdown().await;
        old
    };
    let hub = Hub::open(HubConfig::default(), open_store(&cfg))
        .await
        .unwrap();
    let mut r = subscribe_on(&hub, "R").await;
    assert_eq!(r.hello().replayed, 2, "{:?}", r.hello());
    assert_eq!(take(&mut r, 2).await, old[1..]);
    let receipt = hub.receipt_summary(&pat("orders"), old[2]).unwrap();
    assert_eq!(receipt.devices.len(), 2, "R and S: {receipt:?}");

    // S never acknowledged: it resumes after what it was written…
    let mut s = subscribe_on(&hub, "S").await;
    assert_eq!(s.hello().replayed, 0, "{:?}", s.hello());
    let live = publish_n(&hub, "orders", 1).await;
    assert_eq!(take(&mut s, 1).await, live);
    // …until its first receipt, which takes in what it was replayed.
    hub.ack(&pat("orders"), &dev("S"), live[0], "ok")
        .await
        .unwrap();
    drop(s);
    let mut s = subscribe_on(&hub, "S").await;
    assert_eq!(take(&mut s, 3).await, old);
    assert!(drain(&mut s).is_empty());
    hub.shutdown().await;
}

/// A hub over a file store at `cfg` with device R on `orders`, written
/// and acknowledging a first event.
async fn durable_hub_with_an_ack(
    cfg: &FileStoreConfig,
) -> (Hub<crate::log::FileStore>, Subscription, Published) {
    let hub = Hub::open(HubConfig::default(), open_store(cfg))
        .await
        .unwrap();
    let mut r = subscribe_on(&hub, "R").await;
    let first = hub
        .publish(Publish::new(ch("orders"), "first"))
        .await
        .unwrap();
    next(&mut r).await;
    hub.ack(&pat("orders"), &dev("R"), first.id, "ok")
        .await
        .unwrap();
    (hub, r, first)
}

async fn subscribe_on<S: EventStore>(hub: &Hub<S>, device: &str) -> Subscription {
    subscribe_from(hub, device, Resume::Auto).await
}

/// `device`'s stream on `orders` of a hub over any store.
async fn subscribe_from<S: EventStore>(hub: &Hub<S>, device: &str, resume: Resume) -> Subscription {
    subscribe_to(hub, device, "orders", resume).await
}

/// `device`'s stream on `pattern` of a hub over any store.
pub(super) async fn subscribe_to<S: EventStore>(
    hub: &Hub<S>,
    device: &str,
    pattern: &str,
    resume: Resume,
) -> Subscription {
    tokio::time::timeout(
        WAIT,
        hub.subscribe(
            SubscribeRequest {
                device: Some(dev(device)),
                patterns: vec![pat(pattern)],
                resume,
            },
            None,
        ),
    )
    .await
    .unwrap()
    .unwrap()
}

#[tokio::test]
async fn pending_and_unacked_are_different_lists() {
    let hub = hub().await;
    let mut a = subscribe(&hub, Some("a"), &["c"], Resume::Auto).await;
    let _b = subscribe(&hub, Some("b"), &["c"], Resume::Auto).await;
    let _c = subscribe(&hub, Some("c"), &["c"], Resume::Auto).await;
    let p = publish(&hub, "c", "x").await;
    next(&mut a).await;
    hub.ack(&pat("c"), &dev("c"), p.id, "ok").await.unwrap();
    let s = hub.receipt_summary(&pat("c"), p.id).unwrap();
    assert_eq!(s.pending, vec![dev("b")]);
    assert_eq!(s.unacked, vec![dev("a"), dev("b")]);
    // A second receipt is a status update: the first time stays.
    let first_at = s.devices[2].1.acked_at;
    hub.ack(&pat("c"), &dev("c"), p.id, "done").await.unwrap();
    let s = hub.receipt_summary(&pat("c"), p.id).unwrap();
    let c = &s.devices[2].1;
    assert_eq!((c.acked_at, c.status.as_deref()), (first_at, Some("done")));
    assert!(c.status_at >= c.acked_at);
    // Acked without being written: no delivery counted.
    assert_eq!(c.deliveries, 0);
}

#[tokio::test]
async fn max_age_applies_while_running() {
    let hub = hub_with(
        HubConfig {
            tick: std::time::Duration::from_millis(20),
            ..HubConfig::default()
        },
        Retention {
            history: 1000,
            max_age: Some(std::time::Duration::from_millis(300)),
        },
    )
    .await;
    let old = publish(&hub, "c", "old").await;
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    let young = publish(&hub, "c", "young").await;
    let deadline = std::time::Instant::now() + WAIT;
    while hub.receipt_summary(&pat("c"), old.id).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the old event was never dropped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Dropped from the store and the ledger, and a resume point before it
    // is told the gap.
    let events = hub.events(&ch("c"), EventId::ZERO, 10).await.unwrap();
    assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), [young.id]);
    assert!(
        hub.receipt_summary(&pat("c"), young.id).is_ok(),
        "the young one stays"
    );
    let mut sub = subscribe(&hub, Some("d"), &["c"], Resume::After(EventId::ZERO)).await;
    assert_eq!(sub.gap().map(|g| g.oldest), Some(Some(young.id)));
    assert_eq!(next(&mut sub).await.id, young.id);
}

#[tokio::test]
async fn channels_are_bounded_and_reclaimed_once_retention_empties_them() {
    let hub = hub_with(
        HubConfig {
            tick: std::time::Duration::from_millis(20),
            max_channels: 3,
            ..HubConfig::default()
        },
        Retention {
            history: 1000,
            max_age: Some(std::time::Duration::from_millis(200)),
        },
    )
    .await;
    let a = publish(&hub, "a", "1").await;
    publish(&hub, "b", "1").await;
    publish(&hub, "c", "1").await;
    publish(&hub, "a", "2").await;
    let refused = hub.publish(Publish::new(ch("d"), "1")).await;
    assert!(
        matches!(refused, Err(Error::ChannelLimit { limit: 3 })),
        "{refused:?}"
    );
    // Once their events aged out, the channels are forgotten, and a new
    // one fits.
    let deadline = std::time::Instant::now() + WAIT;
    while !hub.channels().await.unwrap().is_empty()
        || hub.inner.state().ledgers.channels().next().is_some()
    {
        assert!(std::time::Instant::now() < deadline, "never reclaimed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(hub.inner.state().ledgers.watched(), 0);
    publish(&hub, "d", "1").await;
    // A client resuming on a reclaimed channel below what was dropped is
    // told of the gap; one resuming above it is not.
    let sub = subscribe(&hub, Some("x"), &["a"], Resume::After(a.id)).await;
    assert!(sub.gap().is_some());
    let sub = subscribe(&hub, Some("y"), &["*"], Resume::After(a.id)).await;
    assert!(sub.gap().is_some(), "a pattern matching it too");
    let head = hub.inner.state().head;
    let sub = subscribe(&hub, Some("z"), &["a"], Resume::After(head)).await;
    assert!(sub.gap().is_none());
    // It has events again: its ledger remembers what was dropped.
    publish(&hub, "a", "3").await;
    let sub = subscribe(&hub, Some("w"), &["a"], Resume::After(a.id)).await;
    assert!(sub.gap().is_some());
}

#[tokio::test]
async fn events_history_drops_before_their_deadline_get_expired_notices() {
    let hub = hub_with(
        HubConfig {
            ack_deadline: Some(std::time::Duration::from_secs(3600)),
            ..HubConfig::default()
        },
        Retention {
            history: 1,
            max_age: None,
        },
    )
    .await;
    let mut notices = hub.overdue_notices();
    let mut got = subscribe(&hub, Some("reader"), &["c"], Resume::Auto).await;
    drop(subscribe(&hub, Some("away"), &["c"], Resume::Auto).await);
    let first = publish(&hub, "c", "first").await;
    next(&mut got).await;
    hub.ack(&pat("c"), &dev("reader"), first.id, "ok")
        .await
        .unwrap();
    // The second pushes the first out of the history of 1, an hour before
    // its deadline: "away" never acknowledged it and now never will.
    publish(&hub, "c", "second").await;
    let n = tokio::time::timeout(WAIT, notices.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (n.id, n.device.as_str(), n.expired),
        (first.id, "away", true)
    );
    assert_eq!(n.state, ReceiptState::Pending);
    // Only once, and nobody else (the reader acknowledged it).
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(notices.try_recv().is_err());
}
