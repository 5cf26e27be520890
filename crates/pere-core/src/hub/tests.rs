#![allow(clippy::unwrap_used)]

use super::*;
use crate::config::Retention;
use crate::event::Event;
use crate::ledger::ReceiptState;
use crate::presence::Op;
use std::time::Duration;

pub(super) const WAIT: Duration = Duration::from_secs(10);

pub(super) fn ch(s: &str) -> ChannelName {
    ChannelName::new(s).unwrap()
}
pub(super) fn pat(s: &str) -> Pattern {
    Pattern::new(s).unwrap()
}
pub(super) fn dev(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

pub(super) async fn hub_with(config: HubConfig, retention: Retention) -> Hub {
    Hub::open(config, MemoryStore::new(retention))
        .await
        .unwrap()
}

pub(super) async fn hub() -> Hub {
    hub_with(HubConfig::default(), Retention::default()).await
}

pub(super) async fn publish(hub: &Hub, channel: &str, payload: &str) -> Published {
    hub.publish(Publish::new(ch(channel), payload.to_string()))
        .await
        .unwrap()
}

pub(super) async fn subscribe(
    hub: &Hub,
    device: Option<&str>,
    patterns: &[&str],
    resume: Resume,
) -> Subscription {
    hub.subscribe(
        SubscribeRequest {
            device: device.map(dev),
            patterns: patterns.iter().map(|p| pat(p)).collect(),
            resume,
        },
        None,
    )
    .await
    .unwrap()
}

pub(super) async fn next(sub: &mut Subscription) -> Arc<Event> {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("an event within the timeout")
        .expect("the stream is open")
}

/// Takes every event that is ready without waiting for more.
pub(super) fn drain(sub: &mut Subscription) -> Vec<u64> {
    std::iter::from_fn(|| sub.try_next())
        .map(|e| e.id.0)
        .collect()
}

#[tokio::test]
async fn published_events_reach_every_subscriber_in_order() {
    let hub = hub().await;
    let mut subs = Vec::new();
    for i in 0..5 {
        subs.push(subscribe(&hub, Some(&format!("d{i}")), &["news"], Resume::Auto).await);
    }
    let mut ids = Vec::new();
    for i in 0..20 {
        let p = publish(&hub, "news", &format!("event {i}")).await;
        assert_eq!(p.recipients, 5);
        ids.push(p.id);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids strictly increase");
    for sub in &mut subs {
        for (i, id) in ids.iter().enumerate() {
            let e = next(sub).await;
            assert_eq!((e.id, e.payload_str()), (*id, &*format!("event {i}")));
        }
    }
}

#[tokio::test]
async fn resuming_after_an_id_replays_exactly_what_was_missed() {
    let hub = hub().await;
    let ids: Vec<EventId> = futures_ids(&hub, "c", 10).await;
    let mut sub = subscribe(&hub, Some("d"), &["c"], Resume::After(ids[3])).await;
    assert_eq!(sub.hello().replayed, 6);
    assert_eq!(sub.hello().resumed_from, Some(ids[3]));
    assert!(sub.gap().is_none());
    let live = publish(&hub, "c", "live").await;
    let mut got = Vec::new();
    for _ in 0..7 {
        got.push(next(&mut sub).await.id);
    }
    let mut want: Vec<EventId> = ids[4..].to_vec();
    want.push(live.id);
    assert_eq!(got, want);
}

async fn futures_ids(hub: &Hub, channel: &str, n: usize) -> Vec<EventId> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(publish(hub, channel, &format!("{i}")).await.id);
    }
    ids
}

#[tokio::test]
async fn replay_then_live_has_no_gap_and_no_duplicate_under_concurrent_publishing() {
    let hub = hub().await;
    let publisher = {
        let hub = hub.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..400 {
                ids.push(publish(&hub, "race", &format!("{i}")).await.id);
                if i % 7 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            ids
        })
    };
    // Subscribers join at arbitrary points while events keep coming.
    let mut subs = Vec::new();
    for i in 0..20 {
        tokio::task::yield_now().await;
        subs.push(subscribe(&hub, Some(&format!("d{i}")), &["race"], Resume::All).await);
    }
    let ids = publisher.await.unwrap();
    for sub in &mut subs {
        let mut got = Vec::new();
        while got.len() < ids.len() {
            got.push(next(sub).await.id);
        }
        assert_eq!(
            got, ids,
            "every subscriber sees every event exactly once, in order"
        );
        assert!(drain(sub).is_empty());
    }
}

#[tokio::test]
async fn a_member_reconnecting_without_last_event_id_resumes_from_its_cursor() {
    let hub = hub().await;
    let mut sub = subscribe(&hub, Some("phone"), &["c"], Resume::Auto).await;
    let first = publish(&hub, "c", "one").await;
    assert_eq!(next(&mut sub).await.id, first.id);
    drop(sub);
    // Published while the phone is offline: it stays in the audience.
    let offline = publish(&hub, "c", "two").await;
    assert_eq!(offline.recipients, 1);
    let summary = hub.receipt_summary(&pat("c"), offline.id).unwrap();
    assert_eq!(summary.pending, vec![dev("phone")]);
    let mut sub = subscribe(&hub, Some("phone"), &["c"], Resume::Auto).await;
    assert_eq!(sub.hello().resumed_from, Some(first.id));
    assert_eq!(next(&mut sub).await.id, offline.id);
    let summary = hub.receipt_summary(&pat("c"), offline.id).unwrap();
    assert_eq!(summary.delivered, 1);
}

#[tokio::test]
async fn a_new_device_starts_now_unless_replay_all() {
    let hub = hub().await;
    publish(&hub, "c", "old").await;
    let mut fresh = subscribe(&hub, Some("new"), &["c"], Resume::Auto).await;
    assert_eq!(fresh.hello().replayed, 0);
    let mut all = subscribe(&hub, Some("all"), &["c"], Resume::All).await;
    assert_eq!(all.hello().replayed, 1);
    assert_eq!(next(&mut all).await.payload_str(), "old");
    assert!(drain(&mut fresh).is_empty());

    let replaying = hub_with(
        HubConfig {
            replay_all: true,
            ..HubConfig::default()
        },
        Retention::default(),
    )
    .await;
    publish(&replaying, "c", "old").await;
    let sub = subscribe(&replaying, Some("x"), &["c"], Resume::Auto).await;
    assert_eq!(sub.hello().replayed, 1);
}

#[tokio::test]
async fn patterns_and_several_channels_deliver_each_event_once() {
    let hub = hub().await;
    let mut sub = subscribe(
        &hub,
        Some("d"),
        &["orders.*", "orders.eu", "orders.**"],
        Resume::Auto,
    )
    .await;
    let mut other = subscribe(&hub, None, &["orders.*"], Resume::Auto).await;
    let a = publish(&hub, "orders.eu", "a").await;
    let b = publish(&hub, "orders.eu.paris", "b").await;
    let c = publish(&hub, "other", "c").await;
    assert_eq!(
        a.recipients, 1,
        "a device is counted once however many of its subscriptions match"
    );
    assert_eq!(b.recipients, 1);
    assert_eq!(c.recipients, 0);
    assert_eq!(next(&mut sub).await.id, a.id);
    assert_eq!(next(&mut sub).await.id, b.id);
    assert!(drain(&mut sub).is_empty());
    assert_eq!(next(&mut other).await.id, a.id);
    assert!(
        drain(&mut other).is_empty(),
        "orders.* does not match orders.eu.paris"
    );
}

#[tokio::test]
async fn receipts_move_from_pending_to_delivered_to_acked() {
    let hub = hub().await;
    let mut a = subscribe(&hub, Some("a"), &["c"], Resume::Auto).await;
    let _b = subscribe(&hub, Some("b"), &["c"], Resume::Auto).await;
    let p = publish(&hub, "c", "x").await;
    let s = hub.receipt_summary(&pat("c"), p.id).unwrap();
    assert_eq!((s.recipients, s.delivered, s.acked), (2, 0, 0));
    next(&mut a).await;
    let s = hub.receipt_summary(&pat("c"), p.id).unwrap();
    assert_eq!((s.delivered, s.acked), (1, 0));
    let acked = hub.ack(&pat("c"), &dev("a"), p.id, "rx ok").await.unwrap();
    assert_eq!(acked.state, ReceiptState::Acked);
    let s = hub.receipt_summary(&pat("c"), p.id).unwrap();
    assert_eq!((s.delivered, s.acked), (1, 1));
    assert_eq!(s.pending, vec![dev("b")]);
    let (_, receipt) = s.devices.iter().find(|(d, _)| d == &dev("a")).unwrap();
    assert_eq!(receipt.status.as_deref(), Some("rx ok"));
    // A receipt may name the pattern the device subscribed with.
    hub.ack(&pat("*"), &dev("b"), p.id, "ok").await.unwrap();
    assert!(matches!(
        hub.ack(&pat("other"), &dev("b"), p.id, "ok").await,
        Err(Error::UnknownEvent { .. })
    ));
    assert!(matches!(
        hub.ack(&pat("c"), &dev("b"), EventId(1), "ok").await,
        Err(Error::UnknownEvent { .. })
    ));
    assert!(matches!(
        hub.ack(&pat("c"), &dev("b"), p.id, &"x".repeat(1025)).await,
        Err(Error::StatusTooLong { .. })
    ));
}

#[tokio::test]
async fn a_late_joiner_is_added_to_the_audience_on_replay() {
    let hub = hub().await;
    let p = publish(&hub, "c", "x").await;
    assert_eq!(p.recipients, 0);
    let mut late = subscribe(&hub, Some("late"), &["c"], Resume::All).await;
    next(&mut late).await;
    let s = hub.receipt_summary(&pat("c"), p.id).unwrap();
    assert_eq!((s.recipients, s.delivered), (1, 1));
}

#[tokio::test]
async fn a_slow_device_is_disconnected_and_resumes_without_loss() {
    let hub = hub_with(
        HubConfig {
            queue_capacity: 4,
            ..HubConfig::default()
        },
        Retention::default(),
    )
    .await;
    let mut slow = subscribe(&hub, Some("slow"), &["c"], Resume::Auto).await;
    let ids = futures_ids(&hub, "c", 10).await;
    let got: Vec<u64> = {
        let mut got = Vec::new();
        while let Some(e) = tokio::time::timeout(WAIT, slow.next()).await.unwrap() {
            got.push(e.id.0);
        }
        got
    };
    assert!(
        got.is_empty(),
        "it ends at once, without what it had queued: {got:?}"
    );
    assert_eq!(hub.stats().await.unwrap().slow_disconnects, 1);
    drop(slow);
    // Its cursor is where it joined: it resumes with every event.
    let mut again = subscribe(&hub, Some("slow"), &["c"], Resume::Auto).await;
    let mut rest = Vec::new();
    for _ in 0..10 {
        rest.push(next(&mut again).await.id);
    }
    assert_eq!(rest, ids);
}

#[tokio::test]
async fn idempotent_retries_return_the_first_result() {
    let hub = hub().await;
    let _sub = subscribe(&hub, Some("d"), &["c"], Resume::Auto).await;
    let mut req = Publish::new(ch("c"), "x");
    req.idempotency_key = Some("key-1".into());
    let first = hub.publish(req.clone()).await.unwrap();
    let again = hub.publish(req.clone()).await.unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!((again.id, again.recipients), (first.id, first.recipients));
    // The key is per channel…
    let mut elsewhere = req.clone();
    elsewhere.channel = ch("other");
    assert_ne!(hub.publish(elsewhere).await.unwrap().id, first.id);
    assert_eq!(hub.stats().await.unwrap().published, 2);
    // …and per publisher: another one's key never swallows this event.
    let mut mine = req.clone();
    mine.device = Some(dev("backend-a"));
    let a = hub.publish(mine.clone()).await.unwrap();
    assert!(!a.duplicate);
    assert_ne!(a.id, first.id);
    let mut theirs = req.clone();
    theirs.device = Some(dev("backend-b"));
    let b = hub.publish(theirs).await.unwrap();
    assert!(
        !b.duplicate,
        "the same key from another publisher is its own event"
    );
    assert_eq!(hub.publish(mine).await.unwrap().id, a.id, "a's retry");
    assert_eq!(hub.stats().await.unwrap().published, 4);
    // Concurrent retries within one batch still publish once.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let hub = hub.clone();
        tasks.push(tokio::spawn(async move {
            let mut req = Publish::new(ch("c"), "y");
            req.idempotency_key = Some("key-2".into());
            hub.publish(req).await.unwrap().id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1);
}

#[tokio::test]
async fn a_gap_is_reported_when_history_was_pruned() {
    let hub = hub_with(
        HubConfig::default(),
        Retention {
            history: 3,
            max_age: None,
        },
    )
    .await;
    let ids = futures_ids(&hub, "c", 6).await;
    let mut sub = subscribe(&hub, Some("d"), &["c"], Resume::After(ids[0])).await;
    assert_eq!(
        sub.gap(),
        Some(Gap {
            from: ids[0],
            oldest: Some(ids[3]),
            failover: false,
        })
    );
    assert_eq!(sub.hello().replayed, 3);
    assert_eq!(next(&mut sub).await.id, ids[3]);
    // Resuming inside the retained range is not a gap.
    let ok = subscribe(&hub, Some("e"), &["c"], Resume::After(ids[3])).await;
    assert!(ok.gap().is_none());
    // Receipts of pruned events are gone too.
    assert!(hub.receipt_summary(&pat("c"), ids[0]).is_err());
}

#[tokio::test]
async fn a_resume_point_from_before_a_restart_of_a_volatile_hub_is_a_gap() {
    let first = hub().await;
    let old = publish(&first, "c", "x").await;
    first.shutdown().await;
    let second = hub().await;
    let sub = subscribe(&second, Some("d"), &["c"], Resume::After(old.id)).await;
    assert_eq!(sub.gap().map(|g| g.from), Some(old.id));
    let p = publish(&second, "c", "y").await;
    assert!(p.id > old.id, "ids keep increasing across restarts");
}

#[tokio::test]
async fn presence_tracks_connections_and_receipts() {
    let hub = hub().await;
    let s1 = subscribe(&hub, Some("d"), &["c"], Resume::Auto).await;
    let s2 = subscribe(&hub, Some("d"), &["c"], Resume::Auto).await;
    let _anon = subscribe(&hub, None, &["c"], Resume::Auto).await;
    let devices = hub.devices(&pat("c")).await.unwrap();
    assert_eq!(devices.len(), 1);
    assert!(devices[0].1.online);
    assert_eq!(devices[0].1.connections, 2);
    let conns = hub.connections().await.unwrap();
    assert_eq!(conns.total, 3);
    assert_eq!(conns.per_subscription, vec![(pat("c"), 3)]);
    drop(s1);
    drop(s2);
    wait_for(|| async { hub.connections().await.unwrap().total == 1 }).await;
    let p = hub.devices(&pat("c")).await.unwrap().remove(0).1;
    assert!(!p.online);
    assert_eq!(p.op, Op::Left);
    // A device the event was never written to, and not in its audience,
    // cannot acknowledge it (issue 18.5): it would become a recipient.
    let e = publish(&hub, "c", "x").await;
    assert!(matches!(
        hub.ack(&pat("c"), &dev("acker"), e.id, "ok").await,
        Err(Error::NotRecipient { .. })
    ));
    assert!(
        hub.ack_batch(vec![(pat("c"), dev("acker"), e.id, "ok".into())])
            .await[0]
            .is_err()
    );
    let s = hub.receipt_summary(&pat("c"), e.id).unwrap();
    assert_eq!(s.recipients, 1, "the audience is unchanged: {s:?}");
    assert!(
        !hub.devices(&pat("c"))
            .await
            .unwrap()
            .iter()
            .any(|(d, _)| d == &dev("acker"))
    );
    // The member that was offline is in the audience: it may.
    hub.ack(&pat("c"), &dev("d"), e.id, "ok").await.unwrap();
    let d = hub.devices(&pat("c")).await.unwrap().remove(0).1;
    assert_eq!(d.last_acked, Some(e.id));
    assert_eq!(d.op, Op::Feedback);
    let channels = hub.channels().await.unwrap();
    assert_eq!(channels.len(), 1);
    assert_eq!(
        (channels[0].events, channels[0].members, channels[0].online),
        (1, 1, 0)
    );
}

/// Waits until `cond` (which may read a view of the hub) holds.
pub(super) async fn wait_for<F: std::future::Future<Output = bool>>(mut cond: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached in time"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A stream of a device on two subscriptions outlives the end of one of
/// its memberships (the other still feeds it); when it closes later, the
/// other membership goes offline with it.
#[tokio::test]
async fn a_stream_on_two_subscriptions_survives_one_membership_s_removal() {
    let hub = hub().await;
    let mut sub = subscribe(&hub, Some("d"), &["a", "b"], Resume::Auto).await;
    hub.remove_member(&pat("a"), &dev("d")).await.unwrap();
    assert_eq!(publish(&hub, "b", "still").await.recipients, 1);
    let got = tokio::time::timeout(WAIT, sub.next()).await.unwrap();
    assert_eq!(
        got.map(|e| e.payload_str().to_string()).as_deref(),
        Some("still")
    );
    assert_eq!(hub.connections().await.unwrap().total, 1);
    drop(sub);
    wait_for(|| async { hub.connections().await.unwrap().total == 0 }).await;
    wait_for(|| async {
        let devices = hub.devices(&pat("b")).await.unwrap();
        devices.len() == 1 && !devices[0].1.online && devices[0].1.connections == 0
    })
    .await;
}

#[tokio::test]
async fn shutdown_ends_every_stream_and_refuses_new_work() {
    let hub = hub().await;
    let mut sub = subscribe(&hub, Some("d"), &["c"], Resume::Auto).await;
    let mut receipts = hub.watch_receipts(&ch("c"), None);
    hub.shutdown().await;
    assert!(
        tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        tokio::time::timeout(WAIT, receipts.next())
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        hub.publish(Publish::new(ch("c"), "x")).await,
        Err(Error::ShuttingDown)
    ));
    assert!(
        hub.subscribe(
            SubscribeRequest {
                device: None,
                patterns: vec![pat("c")],
                resume: Resume::Auto
            },
            None
        )
        .await
        .is_err()
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_a_clear_error() {
    let hub = hub().await;
    let err = |p: Publish| {
        let hub = hub.clone();
        async move { hub.publish(p).await.unwrap_err() }
    };
    assert!(matches!(
        err(Publish::new(ch("c"), "")).await,
        Error::EmptyPayload
    ));
    assert!(matches!(
        err(Publish::new(ch("c"), vec![b'x'; 64 * 1024 + 1])).await,
        Error::PayloadTooLarge { .. }
    ));
    assert!(matches!(
        err(Publish::new(ch("c"), vec![0xff, 0xfe])).await,
        Error::PayloadNotUtf8 { .. }
    ));
    let mut p = Publish::new(ch("c"), "x");
    p.idempotency_key = Some("bad\nkey".into());
    assert!(matches!(err(p).await, Error::InvalidIdempotencyKey(_)));
    let none = hub
        .subscribe(
            SubscribeRequest {
                device: None,
                patterns: vec![],
                resume: Resume::Auto,
            },
            None,
        )
        .await;
    assert!(matches!(none, Err(Error::NoChannel)));
}

#[tokio::test]
async fn the_receipts_feed_reports_each_transition() {
    let hub = hub().await;
    let mut feed = hub.watch_receipts(&ch("c"), None);
    let mut sub = subscribe(&hub, Some("d"), &["c"], Resume::Auto).await;
    let p = publish(&hub, "c", "x").await;
    next(&mut sub).await;
    hub.ack(&pat("c"), &dev("d"), p.id, "ok").await.unwrap();
    let change = |u: Option<crate::Followed>| match u {
        Some(crate::Followed::Change(_, crate::ReceiptUpdate::Change(c))) => c,
        other => panic!("expected a change, got {other:?}"),
    };
    let a = change(tokio::time::timeout(WAIT, feed.next()).await.unwrap());
    let b = change(tokio::time::timeout(WAIT, feed.next()).await.unwrap());
    assert_eq!(
        (a.state, b.state),
        (ReceiptState::Delivered, ReceiptState::Acked)
    );
    assert_eq!((a.id, a.device.as_str()), (p.id, "d"));
}

#[tokio::test]
async fn devices_that_miss_the_ack_deadline_get_one_overdue_notice_each() {
    let hub = hub_with(
        HubConfig {
            ack_deadline: Some(Duration::from_millis(100)),
            tick: Duration::from_millis(20),
            ..HubConfig::default()
        },
        Retention::default(),
    )
    .await;
    let mut notices = hub.overdue_notices();
    let mut feed = hub.watch_receipts(&ch("c"), None);
    let mut fast = subscribe(&hub, Some("fast"), &["c"], Resume::Auto).await;
    let mut slow = subscribe(&hub, Some("slow"), &["c"], Resume::Auto).await;
    drop(subscribe(&hub, Some("offline"), &["c"], Resume::Auto).await);
    let p = publish(&hub, "c", "x").await;
    next(&mut fast).await;
    next(&mut slow).await;
    hub.ack(&pat("c"), &dev("fast"), p.id, "ok").await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let n = tokio::time::timeout(WAIT, notices.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n.id, p.id);
        got.push((n.device.to_string(), n.state));
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("offline".to_string(), ReceiptState::Pending),
            ("slow".to_string(), ReceiptState::Delivered)
        ]
    );
    // Exactly once: more ticks bring nothing new.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(notices.try_recv().is_err());
    let ready = |feed: &mut crate::ReceiptFollower| {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match feed.poll_next(&mut cx) {
            std::task::Poll::Ready(item) => item,
            std::task::Poll::Pending => None,
        }
    };
    let overdue = std::iter::from_fn(|| ready(&mut feed))
        .filter(|f| {
            matches!(
                f,
                crate::Followed::Change(_, crate::ReceiptUpdate::Overdue(_))
            )
        })
        .count();
    assert_eq!(overdue, 2, "the receipts feed shows them as overdue");
    // A new listener is handed the notices nobody confirmed, and only those.
    let mut again = hub.overdue_notices();
    let first = tokio::time::timeout(WAIT, again.recv())
        .await
        .unwrap()
        .unwrap();
    hub.notice_delivered(&first);
    publish(&hub, "c", "a batch after the confirmation").await;
    let mut third = hub.overdue_notices();
    let left = tokio::time::timeout(WAIT, third.recv())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(left.device, first.device);
    assert!(third.try_recv().is_err());
}

/// Issue 18.11: the gauge of unacknowledged receipts follows receipts,
/// late joiners and retention; the latency histograms count what happened.
#[tokio::test]
async fn metrics_follow_receipts_retention_and_latencies() {
    let retention = Retention {
        history: 1,
        max_age: None,
    };
    let hub = hub_with(HubConfig::default(), retention).await;
    let mut a = subscribe(&hub, Some("a"), &["c"], Resume::Auto).await;
    // b is a member, offline: its receipts stay pending.
    drop(subscribe(&hub, Some("b"), &["c"], Resume::Auto).await);
    wait_for(|| async { hub.connections().await.unwrap().total == 1 }).await;
    let first = publish(&hub, "c", "1").await.id;
    assert_eq!(hub.metrics().unacked(), 2);
    assert_eq!(next(&mut a).await.id, first);
    hub.ack(&pat("c"), &dev("a"), first, "ok").await.unwrap();
    assert_eq!(hub.metrics().unacked(), 1);
    hub.ack(&pat("c"), &dev("a"), first, "updated")
        .await
        .unwrap();
    assert_eq!(
        hub.metrics().unacked(),
        1,
        "a status update is not a second receipt"
    );
    // History 1: the second event drops the first, and b's pair with it.
    let second = publish(&hub, "c", "2").await.id;
    assert_eq!(hub.metrics().unacked(), 2);
    assert_eq!(next(&mut a).await.id, second);
    hub.ack(&pat("c"), &dev("a"), second, "ok").await.unwrap();
    assert_eq!(hub.metrics().unacked(), 1);
    let m = hub.metrics();
    assert_eq!(m.publish_to_delivered.snapshot().count, 2);
    assert_eq!(m.publish_to_acked.snapshot().count, 2);
    assert!(
        m.journal_write.snapshot().count >= 4,
        "publishes and receipts"
    );
    let dup = Publish {
        idempotency_key: Some("k".into()),
        ..Publish::new(ch("c"), "3")
    };
    hub.publish(dup.clone()).await.unwrap();
    hub.publish(dup).await.unwrap();
    assert_eq!(m.idempotent_replays.load(Ordering::Relaxed), 1);
}

/// An acknowledgement implies the delivery: presence never shows an
/// acknowledged event as not yet delivered (an offline member acknowledging
/// an event never written to it; on a cluster, any acknowledgement before
/// the delivering node's checkpoint).
#[tokio::test]
async fn presence_counts_an_acknowledged_event_as_delivered() {
    let hub = hub().await;
    drop(subscribe(&hub, Some("d"), &["c"], Resume::Auto).await);
    wait_for(|| async { hub.connections().await.unwrap().total == 0 }).await;
    let p = publish(&hub, "c", "x").await;
    assert_eq!(p.recipients, 1);
    hub.ack(&pat("c"), &dev("d"), p.id, "ok").await.unwrap();
    let devices = hub.devices(&pat("c")).await.unwrap();
    let presence = &devices[0].1;
    assert_eq!(presence.last_acked, Some(p.id));
    assert_eq!(presence.last_delivered, Some(p.id), "{presence:?}");
}

/// The same for an event replayed from before the device joined
/// (`?replay=all`): its cursor starts above it, so presence showed
/// `last_delivered: null` beside the event's `last_acked` (a new user's
/// walk through the dashboard).
#[tokio::test]
async fn presence_counts_an_acknowledged_replayed_event_as_delivered() {
    let hub = hub().await;
    let p = publish(&hub, "c", "before the device").await;
    let mut stream = subscribe(&hub, Some("d"), &["c"], Resume::All).await;
    assert_eq!(stream.next().await.unwrap().id, p.id);
    hub.ack(&pat("c"), &dev("d"), p.id, "ok").await.unwrap();
    let devices = hub.devices(&pat("c")).await.unwrap();
    let presence = &devices[0].1;
    assert_eq!(presence.last_acked, Some(p.id));
    assert_eq!(presence.last_delivered, Some(p.id), "{presence:?}");
    assert!(presence.last_delivered_at.is_some(), "{presence:?}");
}
