#![allow(clippy::unwrap_used)]
use super::*;
use crate::receipt_log::Followed;
use bytes::Bytes;

fn receipts(devices: &[&str]) -> (EventReceipts, Arc<ReceiptLog>) {
    let event = Arc::new(Event {
        id: EventId(7),
        channel: ChannelName::new("c").unwrap(),
        kind: None,
        device: None,
        time: Timestamp(1),
        payload: Bytes::from_static(b"x"),
        idempotency_key: None,
    });
    let audience: Arc<[DeviceId]> = devices.iter().map(|d| DeviceId::new(d).unwrap()).collect();
    let watchers = Arc::new(ReceiptLog::default());
    (
        EventReceipts::new(event, audience, watchers.clone()),
        watchers,
    )
}

fn dev(d: &str) -> DeviceId {
    DeviceId::new(d).unwrap()
}

#[test]
fn standing_is_may_ack_and_is_acked_by() {
    let (r, _) = receipts(&["a", "b"]);
    assert_eq!(r.standing(&dev("stranger")), None);
    assert_eq!(r.standing(&dev("a")), Some(false));
    r.ack(&dev("a"), "ok".into(), Timestamp(20));
    assert_eq!(r.standing(&dev("a")), Some(true));
    assert_eq!(r.standing(&dev("b")), Some(false));
    for d in ["a", "b", "stranger"] {
        let d = dev(d);
        assert_eq!(
            r.standing(&d),
            r.may_ack(&d).then(|| r.is_acked_by(&d)),
            "{d}"
        );
    }
}

#[test]
fn states_move_from_pending_to_delivered_to_acked() {
    let (r, _) = receipts(&["a", "b"]);
    assert_eq!(
        r.receipt_of(&dev("a")).unwrap().state,
        ReceiptState::Pending
    );
    assert_eq!(r.mark_delivered_slot(0, Timestamp(10)), Mark::First);
    assert_eq!(
        r.mark_delivered_slot(0, Timestamp(11)),
        Mark::Again,
        "second delivery is not new"
    );
    let a = r.receipt_of(&dev("a")).unwrap();
    assert_eq!(a.state, ReceiptState::Delivered);
    assert_eq!(a.delivered_at, Some(Timestamp(10)));
    assert_eq!(
        r.ack(&dev("a"), "ok".into(), Timestamp(20)),
        AckOutcome::Acked
    );
    let s = r.summary();
    assert_eq!((s.recipients, s.delivered, s.acked), (2, 1, 1));
    assert_eq!(s.pending, vec![dev("b")]);
    assert_eq!(s.unacked, vec![dev("b")]);
    assert_eq!(r.undelivered(), 1);
    assert_eq!(r.unacked(), 1);
}

#[test]
fn an_ack_before_delivery_counts_as_delivered_once() {
    let (r, _) = receipts(&["a"]);
    r.ack(&dev("a"), "ok".into(), Timestamp(5));
    assert_eq!(r.receipt_of(&dev("a")).unwrap().deliveries, 0);
    // The first real write after that is its first delivery, not a
    // redelivery; the second is one.
    assert_eq!(r.mark_delivered_slot(0, Timestamp(6)), Mark::First);
    assert_eq!(r.mark_delivered_slot(0, Timestamp(7)), Mark::Again);
    assert_eq!(r.undelivered(), 0);
    assert_eq!(r.unacked(), 0);
    let a = r.receipt_of(&dev("a")).unwrap();
    assert_eq!(a.delivered_at, Some(Timestamp(5)));
    assert_eq!(a.deliveries, 2);
}

#[test]
fn late_joiners_are_added_on_delivery_or_ack() {
    let (r, _) = receipts(&["a"]);
    assert_eq!(r.mark_delivered(&dev("late"), Timestamp(3)), Mark::First);
    assert_eq!(r.mark_delivered(&dev("late"), Timestamp(4)), Mark::Again);
    r.ack(&dev("other"), "done".into(), Timestamp(5));
    let s = r.summary();
    assert_eq!(s.recipients, 3);
    assert_eq!(s.delivered, 2);
    assert_eq!(s.acked, 1);
    assert_eq!(s.pending, vec![dev("a")]);
    assert_eq!(s.unacked, vec![dev("a"), dev("late")]);
    assert_eq!(r.undelivered(), 1);
    assert_eq!(r.unacked(), 2);
}

#[test]
fn repeated_acks_update_status_without_double_counting() {
    let (r, _) = receipts(&["a"]);
    assert_eq!(
        r.ack(&dev("a"), "first".into(), Timestamp(1)),
        AckOutcome::Acked
    );
    assert_eq!(
        r.ack(&dev("a"), "second".into(), Timestamp(2)),
        AckOutcome::Updated
    );
    assert_eq!(r.unacked(), 0);
    let a = r.receipt_of(&dev("a")).unwrap();
    assert_eq!(a.status.as_deref(), Some("second"));
    assert_eq!(
        a.acked_at,
        Some(Timestamp(1)),
        "the first receipt is the proof"
    );
    assert_eq!(a.status_at, Some(Timestamp(2)));
}

#[test]
fn a_delivery_time_rebuilt_after_the_ack_moves_back_to_it() {
    let (r, _) = receipts(&["a"]);
    // After a restart deliveries are known from a cursor, whose time may
    // be later than the receipt's.
    r.mark_delivered_slot(0, Timestamp(50));
    r.ack(&dev("a"), "ok".into(), Timestamp(20));
    let a = r.receipt_of(&dev("a")).unwrap();
    assert_eq!(
        (a.delivered_at, a.acked_at),
        (Some(Timestamp(20)), Some(Timestamp(20)))
    );
}

#[tokio::test]
async fn watchers_see_every_transition_in_order() {
    let (r, watchers) = receipts(&["a"]);
    let mut follower = watchers.follow(None);
    r.mark_delivered_slot(0, Timestamp(1));
    r.ack(&dev("a"), "ok".into(), Timestamp(2));
    let mut items = Vec::new();
    std::future::poll_fn(|cx| follower.poll_batch(cx, &mut items)).await;
    let states: Vec<_> = items
        .iter()
        .map(|f| match f {
            Followed::Change(_, ReceiptUpdate::Change(c)) => c.state,
            other => panic!("no deadline here: {other:?}"),
        })
        .collect();
    assert_eq!(states, [ReceiptState::Delivered, ReceiptState::Acked]);
}

#[tokio::test]
async fn waiting_for_acks_wakes_without_polling() {
    let (r, _) = receipts(&["a", "b"]);
    let r = Arc::new(r);
    let waiter = tokio::spawn({
        let r = r.clone();
        async move { r.settled_when(|r| r.unacked() == 0).await }
    });
    tokio::task::yield_now().await;
    r.ack(&dev("a"), "ok".into(), Timestamp(1));
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    r.ack(&dev("b"), "ok".into(), Timestamp(2));
    tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
        .await
        .expect("waiter woke")
        .unwrap();
}

/// A receipt that overtakes its delivery's record (another cluster node
/// reports the write a moment later) implies the delivery at the ack's
/// time; the write's record, once it comes, sets the real time. It stayed
/// at the ack's (a cluster probe saw `delivered_at == acked_at` for good).
#[test]
fn a_delivery_recorded_after_its_ack_keeps_its_own_time() {
    let (r, _) = receipts(&["a"]);
    r.ack(&dev("a"), "ok".into(), Timestamp(20));
    let a = r.receipt_of(&dev("a")).unwrap();
    assert_eq!((a.delivered_at, a.deliveries), (Some(Timestamp(20)), 0));
    assert_eq!(r.mark_delivered_slot(0, Timestamp(15)), Mark::First);
    let a = r.receipt_of(&dev("a")).unwrap();
    assert_eq!(a.delivered_at, Some(Timestamp(15)));
    assert_eq!((a.acked_at, a.deliveries), (Some(Timestamp(20)), 1));
    assert_eq!(r.mark_delivered_slot(0, Timestamp(16)), Mark::Again);
    assert_eq!(
        r.receipt_of(&dev("a")).unwrap().delivered_at,
        Some(Timestamp(15))
    );

    // A late joiner's receipt likewise, and a write timed after the ack
    // (another node's clock) never shows after it.
    r.ack(&dev("late"), "ok".into(), Timestamp(30));
    assert_eq!(r.mark_delivered(&dev("late"), Timestamp(35)), Mark::First);
    let late = r.receipt_of(&dev("late")).unwrap();
    assert_eq!(
        (late.delivered_at, late.deliveries),
        (Some(Timestamp(30)), 1)
    );
    r.ack(&dev("late2"), "ok".into(), Timestamp(40));
    assert_eq!(r.mark_delivered(&dev("late2"), Timestamp(33)), Mark::First);
    assert_eq!(
        r.receipt_of(&dev("late2")).unwrap().delivered_at,
        Some(Timestamp(33))
    );
}
