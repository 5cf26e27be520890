//! One overdue notice per (event, device) for the whole cluster: whose
//! tick was last in the log's order sends what is issued after it, the
//! same on every node, whatever each found of the ticker's lease (one that
//! stalled past it still thinks it holds it).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;

use super::snapshot_tests::{entry, node, publish, subscribe};
use super::wire::Wire;
use super::{SharedEntry, apply_entry};
use crate::hub::Inner;
use crate::ledger::OverdueNotice;
use crate::log::MemoryStore;

/// The node's webhook task, as the listener of its notices; `ticker` is
/// what the node last found of the lease.
fn listen(n: &Inner<MemoryStore>, ticker: bool) -> UnboundedReceiver<OverdueNotice> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut state = n.state();
    state.notices.attach(tx);
    state.notices.become_ticker(ticker);
    rx
}

/// (event id, device, expired) of what was sent so far.
fn sent(rx: &mut UnboundedReceiver<OverdueNotice>) -> Vec<(u64, String, bool)> {
    let mut out = Vec::new();
    while let Ok(n) = rx.try_recv() {
        out.push((n.id.0, n.device.to_string(), n.expired));
    }
    out
}

async fn apply_all(nodes: &[&Arc<Inner<MemoryStore>>], entries: &[SharedEntry]) {
    for n in nodes {
        for e in entries {
            apply_entry(n, e.clone(), None).await;
        }
    }
}

#[tokio::test]
async fn a_node_that_lost_the_ticker_s_lease_sends_no_notice_of_another_s_tick() {
    let a = node("a").await;
    // Node a held the lease when it last looked, then stalled.
    let mut by_a = listen(&a, true);
    let start = [
        entry(1, "x", 10, &[subscribe("c", "d1")]),
        entry(2, "x", 11, &[publish("c", "one", None)]),
        entry(3, "a", 12, &[Wire::Tick]),
    ];
    apply_all(&[&a], &start).await;
    // The deadline (5 s) passed; node b, which took the lease meanwhile,
    // ticks: b sends the notice, not a.
    apply_entry(&a, entry(4, "b", 20, &[Wire::Tick]), None).await;
    assert_eq!(sent(&mut by_a), []);
    // Its own tick after another's: b had no whole tick yet to have the
    // notice confirmed, so a leaves it to b...
    apply_entry(&a, entry(5, "a", 21, &[Wire::Tick]), None).await;
    assert_eq!(sent(&mut by_a), []);
    // ... until a tick later (b may have died with it); its own ticks'
    // notices it sends at once, each once.
    apply_entry(&a, entry(6, "x", 22, &[publish("c", "two", None)]), None).await;
    apply_entry(&a, entry(7, "a", 30, &[Wire::Tick]), None).await;
    assert_eq!(
        sent(&mut by_a),
        [
            (11_000_000, "d1".into(), false),
            (22_000_000, "d1".into(), false)
        ]
    );
    apply_entry(&a, entry(8, "a", 31, &[Wire::Tick]), None).await;
    assert_eq!(sent(&mut by_a), []);
}

#[tokio::test]
async fn a_late_tick_of_another_node_does_not_make_the_ticker_send_again() {
    let a = node("a").await;
    let mut by_a = listen(&a, true);
    let start = [
        entry(1, "x", 10, &[subscribe("c", "d1")]),
        entry(2, "x", 11, &[publish("c", "one", None)]),
        entry(3, "a", 20, &[Wire::Tick]),
    ];
    apply_all(&[&a], &start).await;
    assert_eq!(sent(&mut by_a), [(11_000_000, "d1".into(), false)]);
    // b's tick, appended late (its append was held past its lease), then
    // a's next: the notice a's webhook task holds is not handed again.
    apply_entry(&a, entry(4, "b", 20, &[Wire::Tick]), None).await;
    a.state().notices.become_ticker(true);
    apply_entry(&a, entry(5, "a", 21, &[Wire::Tick]), None).await;
    assert_eq!(sent(&mut by_a), []);
}

#[tokio::test]
async fn an_expired_notice_issued_before_the_new_ticker_s_first_tick_is_sent_once() {
    // Retention keeps 3 per channel: a fourth publish drops the first,
    // unacknowledged, event, which issues an `expired` notice at once.
    let (a, b) = (node("a").await, node("b").await);
    let mut by_a = listen(&a, true);
    let mut by_b = listen(&b, false);
    let start = [
        entry(1, "x", 10, &[subscribe("c", "d1")]),
        entry(2, "a", 10, &[Wire::Tick]),
        entry(3, "x", 11, &[publish("c", "one", None)]),
    ];
    apply_all(&[&a, &b], &start).await;
    // a stalls; b's chores take the lease; publishes logged before b's
    // first tick.
    b.state().notices.become_ticker(true);
    let later = [
        entry(4, "x", 12, &[publish("c", "two", None)]),
        entry(5, "x", 12, &[publish("c", "three", None)]),
        entry(6, "x", 12, &[publish("c", "four", None)]),
        entry(7, "b", 13, &[Wire::Tick]),
    ];
    apply_all(&[&b, &a], &later).await;
    let (a_sent, b_sent) = (sent(&mut by_a), sent(&mut by_b));
    assert_eq!(
        a_sent.len() + b_sent.len(),
        1,
        "sent by a: {a_sent:?}, sent by b: {b_sent:?}"
    );
}
