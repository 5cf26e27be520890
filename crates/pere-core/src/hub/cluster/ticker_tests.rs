//! One overdue notice per (event, device) for the whole cluster: the node
//! that holds the ticker's lease sends those its ticks issue, and a node
//! that stalled past its lease does not send another node's.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;

use super::snapshot_tests::{node, publish, subscribe};
use super::wire::{self, Wire};
use super::{SharedEntry, SharedPos, apply_entry};

/// Entry `n` of the log, by `node` at `second`, holding `wires`.
fn entry(n: u64, node: &str, second: u64, wires: &[Wire]) -> SharedEntry {
    let time = second * 1_000_000;
    SharedEntry {
        pos: SharedPos { ms: n, seq: 0 },
        node: node.into(),
        blob: Bytes::from(wire::encode(wires)),
        first_id: time,
        time,
    }
}

#[tokio::test]
async fn a_node_that_lost_the_ticker_s_lease_sends_no_notice_of_another_s_tick() {
    let a = node("a").await;
    let mut sent = {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut state = a.state();
        state.notices.attach(tx);
        // Node a held the lease when it last looked, then stalled.
        state.notices.become_ticker(true);
        drop(state);
        rx
    };
    apply_entry(&a, entry(1, "x", 10, &[subscribe("c", "d1")]), None).await;
    apply_entry(&a, entry(2, "x", 11, &[publish("c", "one", None)]), None).await;
    // The deadline (5 s) passed; node b, which took the lease meanwhile,
    // ticks: b sends the notice, not a.
    apply_entry(&a, entry(3, "b", 20, &[Wire::Tick]), None).await;
    assert!(sent.try_recv().is_err(), "node a sent b's notice");
    assert!(!a.state().notices.is_ticker());
    // Should a get the lease again, it sends what nobody confirmed.
    a.state().notices.become_ticker(true);
    let notice = sent.try_recv().unwrap();
    assert_eq!(notice.device.as_str(), "d1");
    assert!(sent.try_recv().is_err());
    // Its own ticks' notices it sends at once.
    apply_entry(&a, entry(4, "x", 21, &[publish("c", "two", None)]), None).await;
    apply_entry(&a, entry(5, "a", 30, &[Wire::Tick]), None).await;
    let notice = sent.try_recv().unwrap();
    assert_eq!(notice.id.0, 21_000_000);
    assert!(sent.try_recv().is_err());
}
