//! A node that loads a snapshot and one that applied the whole log are in
//! the same state, and stay so entry after entry.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;

use super::wire::{self, Wire};
use super::{SharedEntry, SharedPos, apply_entry, load_snapshot, snapshot};
use crate::auth::Grants;
use crate::config::{HubConfig, Retention};
use crate::event::EventId;
use crate::hub::{Hub, Inner};
use crate::log::MemoryStore;
use crate::name::{ChannelName, DeviceId, Pattern};
use crate::receipt_log::{Followed, ReceiptFollower};

pub(super) fn dev(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

pub(super) fn pat(s: &str) -> Pattern {
    Pattern::new(s).unwrap()
}

pub(super) fn publish(channel: &str, payload: &str, idem: Option<&str>) -> Wire {
    Wire::Publish {
        channel: ChannelName::new(channel).unwrap(),
        payload: payload.into(),
        kind: None,
        device: Some(dev("publisher")),
        idem: idem.map(str::to_owned),
    }
}

pub(super) fn subscribe(pattern: &str, device: &str) -> Wire {
    Wire::Subscribe {
        patterns: vec![pat(pattern)],
        device: Some(dev(device)),
        last_event_id: None,
        token: None,
        jti: None,
    }
}

fn ack(pattern: &str, device: &str, id: u64) -> Wire {
    Wire::Ack {
        subscription: pat(pattern),
        device: dev(device),
        id,
        status: "ok".into(),
    }
}

pub(super) async fn node(name: &str) -> std::sync::Arc<Inner<MemoryStore>> {
    let config = HubConfig {
        member_ttl: Duration::from_secs(30),
        ack_deadline: Some(Duration::from_secs(5)),
        ..HubConfig::default()
    };
    let store = MemoryStore::new(Retention {
        history: 3,
        max_age: Some(Duration::from_secs(3600)),
    });
    Hub::assemble(
        config,
        store,
        Some(name),
        None,
        crate::AuthRegistry::default(),
    )
    .await
    .unwrap()
    .0
}

/// Entry `n` of the log, by `node` at `second`, holding `wires`.
pub(super) fn entry(n: u64, node: &str, second: u64, wires: &[Wire]) -> SharedEntry {
    let time = second * 1_000_000;
    SharedEntry {
        pos: SharedPos { ms: n, seq: 0 },
        node: node.into(),
        blob: Bytes::from(wire::encode(wires)),
        first_id: time,
        time,
    }
}

/// The log, entry by entry: which node, at which second, saying what.
/// Event ids are the log's: `max(time in µs, last + 1)`.
fn script() -> Vec<(&'static str, i64, Vec<Wire>)> {
    let grants = Grants {
        subject: dev("d1"),
        subscribe: vec![pat("c")],
        publish: vec![],
        admin: false,
    };
    vec![
        (
            "x",
            10,
            vec![
                Wire::Token {
                    token: [1; 32],
                    grants: Some(grants),
                    jti: false,
                },
                Wire::Token {
                    token: [2; 32],
                    grants: None,
                    jti: true,
                },
                subscribe("c", "d1"),
                subscribe("w.*", "d2"),
                subscribe("c", "d3"),
                // A receipts stream on x follows c (until 70 s).
                Wire::Watch {
                    channel: ChannelName::new("c").unwrap(),
                },
                // An earlier failover lost events of c.
                Wire::Lost {
                    lost: vec![(ChannelName::new("c").unwrap(), 8_000_000, 9_000_000)],
                },
            ],
        ),
        // 11_000_000 on
        (
            "y",
            11,
            vec![
                publish("c", "one", Some("k1")),
                publish("w.a", "two", None),
                publish("c", "three\nlines", None),
            ],
        ),
        (
            "x",
            12,
            vec![
                ack("c", "d1", 11_000_000),
                ack("w.*", "d2", 11_000_001),
                Wire::Cursor {
                    subscription: pat("c"),
                    device: dev("d3"),
                    cursor: 11_000_000,
                    at: 12_000_000,
                    from: None,
                },
            ],
        ),
        (
            "x",
            13,
            vec![Wire::Closed {
                subs: vec![pat("c")],
                device: Some(dev("d3")),
                upto: 11_000_000,
                at: Some(12_500_000),
                from: None,
            }],
        ),
        // Their deadlines pass: notices for the unacked.
        ("y", 20, vec![Wire::Tick]),
        (
            "y",
            21,
            vec![Wire::NoticeSent {
                id: 11_000_002,
                device: dev("d1"),
            }],
        ),
        // 22_000_000 on: retention (3 per channel) drops both of c's first.
        (
            "y",
            22,
            vec![
                publish("c", "four", None),
                publish("c", "five", None),
                publish("c", "six", Some("k2")),
                publish("z", "seven", None),
            ],
        ),
        // The snapshot is taken after this entry (index 6).
        // 23_000_000, then a retried key (answered with its first id).
        (
            "y",
            23,
            vec![
                subscribe("c", "d3"),
                publish("c", "eight", None),
                publish("c", "one again", Some("k1")),
            ],
        ),
        (
            "x",
            24,
            vec![ack("c", "d3", 23_000_000), ack("c", "d1", 22_000_001)],
        ),
        (
            "y",
            25,
            vec![Wire::RemoveMember {
                subscription: pat("w.*"),
                device: dev("d2"),
            }],
        ),
        ("y", 40, vec![Wire::Tick]),
        ("y", 41, vec![Wire::NodeGone { node: "x".into() }]),
        ("y", 42, vec![publish("w.b", "nine", None), Wire::Tick]),
        // Members offline for longer than their TTL leave.
        ("y", 100, vec![Wire::Tick]),
        (
            "y",
            101,
            vec![Wire::Token {
                token: [1; 32],
                grants: None,
                jti: false,
            }],
        ),
    ]
}

fn entries() -> Vec<SharedEntry> {
    let mut last = 0;
    script()
        .into_iter()
        .enumerate()
        .map(|(i, (node, second, wires))| {
            let events = wires.iter().filter(|w| w.is_event()).count() as u64;
            let time = (second * 1_000_000) as u64;
            let first_id = time.max(last + 1);
            if events > 0 {
                last = first_id + events - 1;
            }
            SharedEntry {
                pos: SharedPos {
                    ms: i as u64 + 1,
                    seq: 0,
                },
                node: node.into(),
                blob: Bytes::from(wire::encode(&wires)),
                first_id,
                time,
            }
        })
        .collect()
}

fn state_of(inner: &Inner<MemoryStore>) -> Vec<u8> {
    snapshot::encode(&inner.state().snapshot())
}

fn stored(inner: &Inner<MemoryStore>) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for channel in ["c", "w.a", "w.b", "z"] {
        let channel = ChannelName::new(channel).unwrap();
        for e in inner
            .store
            .range(&channel, EventId::ZERO, EventId(u64::MAX), 100)
        {
            out.push((e.id.0, String::from_utf8_lossy(&e.payload).into_owned()));
        }
    }
    out
}

/// What a receipts stream has to read now.
fn drain(f: &mut ReceiptFollower) -> Vec<Followed> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut out = Vec::new();
    loop {
        let mut batch = Vec::new();
        match f.poll_batch(&mut cx, &mut batch) {
            std::task::Poll::Ready(true) => out.extend(batch),
            _ => return out,
        }
    }
}

#[tokio::test]
async fn a_node_from_a_snapshot_matches_one_that_applied_the_whole_log() {
    let entries = entries();
    let (before, after) = entries.split_at(7);
    let a = node("a").await;
    for e in before {
        apply_entry(&a, e.clone(), None).await;
    }
    let snap = state_of(&a);
    // The script reached what a snapshot must carry.
    let text = String::from_utf8_lossy(&snap).into_owned();
    for needle in [
        "\"k1\"",
        "tombstones",
        "\"issued\":[{",
        "\"nodes\":[[\"x\",1]]",
        "\"failover_losses\":[[\"c\",8000000,9000000]]",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }

    let b = node("b").await;
    load_snapshot(&b, before[6].pos, &snap).await.unwrap();
    assert_eq!(state_of(&b), snap, "the snapshot round-trips");
    assert_eq!(stored(&b), stored(&a));

    // Receipts streams on both nodes from here: the same changes, with the
    // same numbers, whether the node had the channel's log from the start
    // or since the snapshot.
    let c = ChannelName::new("c").unwrap();
    let mut on_a = a.state().ledgers.watchers_for(&c).follow(None);
    let mut on_b = b.state().ledgers.watchers_for(&c).follow(None);
    for (i, e) in after.iter().enumerate() {
        apply_entry(&a, e.clone(), None).await;
        apply_entry(&b, e.clone(), None).await;
        assert_eq!(
            String::from_utf8_lossy(&state_of(&b)),
            String::from_utf8_lossy(&state_of(&a)),
            "after entry {}",
            i + 7
        );
        assert_eq!(stored(&b), stored(&a), "after entry {}", i + 7);
    }
    let (changes_a, changes_b) = (drain(&mut on_a), drain(&mut on_b));
    assert!(changes_a.len() >= 4, "{changes_a:?}");
    assert_eq!(changes_b, changes_a);

    // The retried key got no second event; the members of node x, gone,
    // left after their TTL, d2 was removed, d3 stays (online on y).
    let text = String::from_utf8_lossy(&state_of(&a)).into_owned();
    assert!(!text.contains("one again"), "{text}");
    assert!(
        text.contains("\"memberships\":{\"subs\":[{\"pattern\":\"c\",")
            && text.contains("\"members\":[[\"d3\",{")
            && !text.contains("[\"d1\",{"),
        "{text}"
    );
    assert!(!text.contains("\"pattern\":\"w.*\""), "{text}");
}

#[test]
fn snapshots_of_another_version_or_shape_are_refused() {
    let err = snapshot::decode(b"{\"version\":99}").unwrap_err();
    assert!(err.to_string().contains("unreadable"), "{err}");
    let err = snapshot::decode(b"not json").unwrap_err();
    assert!(err.to_string().contains("unreadable"), "{err}");
}

/// A failover's loss is kept until retention has dropped past it on its
/// channel (the retention gap then tells the same resume points), and
/// forgotten at the same entry on every node: it grew without bound.
#[tokio::test]
async fn a_failover_loss_is_forgotten_once_retention_covers_it() {
    let c = ChannelName::new("c").unwrap();
    let n = node("a").await;
    let lost = Wire::Lost {
        lost: vec![(c.clone(), 10_400_000, 10_500_000)],
    };
    apply_entry(&n, entry(1, "x", 10, &[lost]), None).await;
    apply_entry(&n, entry(2, "x", 11, &[Wire::Tick]), None).await;
    assert_eq!(
        n.state().failover_losses.get(&c).map(|l| l.1),
        Some(EventId(10_500_000))
    );
    // History 3: the fourth and fifth events drop the first two, newer
    // than the loss.
    let five: Vec<Wire> = (0..5)
        .map(|i| publish("c", &format!("e{i}"), None))
        .collect();
    apply_entry(&n, entry(3, "y", 12, &five), None).await;
    assert!(
        n.state().failover_losses.contains_key(&c),
        "kept until a tick"
    );
    apply_entry(&n, entry(4, "x", 13, &[Wire::Tick]), None).await;
    assert_eq!(n.state().failover_losses.get(&c), None);
}
