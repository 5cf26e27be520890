//! `Hub::ack_batch`: many receipts at once (a JSON array, or a round of
//! pipelined requests), each answered for itself.

#![allow(clippy::unwrap_used)]

use super::tests::{dev, hub_with, next, pat, publish, subscribe};
use super::*;
use crate::config::{MAX_STATUS_LEN, Retention};

/// Two receipts of one device for one event in one batch (a gateway's
/// pipelined requests) are one first receipt: publish → acked counts it
/// once, and the later status wins.
#[tokio::test]
async fn a_batch_with_a_receipt_twice_counts_its_first_once() {
    let hub = hub_with(HubConfig::default(), Retention::default()).await;
    let mut a = subscribe(&hub, Some("a"), &["c"], Resume::Auto).await;
    let id = publish(&hub, "c", "1").await.id;
    assert_eq!(next(&mut a).await.id, id);
    let item = |status: &str| (pat("c"), dev("a"), id, status.to_string());
    let results = hub.ack_batch(vec![item("received"), item("shown")]).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(hub.metrics().publish_to_acked.snapshot().count, 1);
    let receipts = hub.receipts(&pat("c"), id).unwrap();
    assert_eq!(receipts.summary().acked, 1);
    let status = receipts.receipt_of(&dev("a")).unwrap().status;
    assert_eq!(status.as_deref(), Some("shown"));
}

/// A batch mixing receipts of two events, an unknown event, a stranger, a
/// status over the limit and a receipt under a subscription that does not
/// match the event's channel gets one answer per item, in order: the
/// batch's receipts are looked up together, each by what it names.
#[tokio::test]
async fn a_mixed_batch_answers_each_receipt_for_itself() {
    let hub = hub_with(HubConfig::default(), Retention::default()).await;
    let mut a = subscribe(&hub, Some("a"), &["c"], Resume::Auto).await;
    let mut b = subscribe(&hub, Some("b"), &["c"], Resume::Auto).await;
    let one = publish(&hub, "c", "1").await.id;
    let two = publish(&hub, "c", "2").await.id;
    for s in [&mut a, &mut b] {
        assert_eq!(next(s).await.id, one);
        assert_eq!(next(s).await.id, two);
    }
    let item =
        |device: &str, id: EventId, status: &str| (pat("c"), dev(device), id, status.to_string());
    let results = hub
        .ack_batch(vec![
            item("a", one, "ok"),
            item("b", one, "ok"),
            item("stranger", one, "ok"),
            item("a", EventId(one.0 + 1000), "ok"),
            item("a", two, "ok"),
            item("b", two, &"x".repeat(MAX_STATUS_LEN + 1)),
            item("b", one, "again"),
            (pat("other"), dev("b"), two, "ok".into()),
        ])
        .await;
    let outcome: Vec<&str> = results
        .iter()
        .map(|r| match r {
            Ok(_) => "ok",
            Err(Error::NotRecipient { .. }) => "stranger",
            Err(Error::UnknownEvent { .. }) => "unknown",
            Err(Error::StatusTooLong { .. }) => "too long",
            Err(_) => "other",
        })
        .collect();
    assert_eq!(
        outcome,
        [
            "ok", "ok", "stranger", "unknown", "ok", "too long", "ok", "unknown"
        ]
    );
    let first = hub.receipts(&pat("c"), one).unwrap();
    assert_eq!(first.summary().acked, 2);
    let status = first.receipt_of(&dev("b")).unwrap().status;
    assert_eq!(status.as_deref(), Some("again"));
    assert_eq!(hub.receipts(&pat("c"), two).unwrap().summary().acked, 1);
    assert_eq!(hub.metrics().publish_to_acked.snapshot().count, 3);
}

/// An empty batch has nothing to answer; a status over the limit is
/// refused as such even when its event is unknown too (it is checked
/// first, as a single receipt's is).
#[tokio::test]
async fn an_empty_batch_and_a_long_status_for_an_unknown_event() {
    let hub = hub_with(HubConfig::default(), Retention::default()).await;
    assert!(hub.ack_batch(Vec::new()).await.is_empty());
    let long = "x".repeat(MAX_STATUS_LEN + 1);
    let results = hub
        .ack_batch(vec![(pat("c"), dev("a"), EventId(42), long)])
        .await;
    assert!(
        matches!(results[..], [Err(Error::StatusTooLong { .. })]),
        "{results:?}"
    );
}
