//! Compaction: what it keeps of each kind of record, and that it bounds
//! the disk.

use super::tests::{ch, config, event, event_ids, reopen};
use super::*;
use crate::name::{DeviceId, Pattern};
use bytes::Bytes;

/// An event retention dropped is kept for its idempotency key's TTL when
/// it has one, and recovery hands it over apart from the retained ones.
#[tokio::test]
async fn compaction_keeps_a_dropped_event_for_its_key_s_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_size = 4096;
    cfg.retention.history = 10;
    let payload = "p".repeat(100);
    let keyed = |id: u64, key: &str, time: Timestamp| {
        Record::Event(Arc::new(Event {
            id: EventId(id),
            channel: ch("a"),
            kind: None,
            device: None,
            time,
            payload: Bytes::copy_from_slice(b"keyed"),
            idempotency_key: Some(key.into()),
        }))
    };
    {
        let (store, _) = reopen(&cfg).await;
        let old = Timestamp(Timestamp::now().0 - 11 * 60 * 1_000_000);
        store.append(&[keyed(1, "old", old)]).await.unwrap();
        store
            .append(&[keyed(2, "young", Timestamp::now())])
            .await
            .unwrap();
        for i in 3..=100u64 {
            store.append(&[event("a", i, &payload)]).await.unwrap();
        }
        store.compact_now();
        store.close().await.unwrap();
    }
    let (_, r) = reopen(&cfg).await;
    assert_eq!(event_ids(&r), (91..=100).collect::<Vec<_>>());
    let keys: Vec<u64> = r.keyed.iter().map(|e| e.id.0).collect();
    assert_eq!(keys, [2], "the young key's event only");
}

/// A replay's record outlives compaction while one of its events is
/// retained, and only that long.
#[tokio::test]
async fn compaction_keeps_a_replay_while_one_of_its_events_is_retained() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_size = 4096;
    cfg.retention.history = 100;
    let payload = "p".repeat(100);
    let replayed = |ids: [u64; 2]| Record::Replayed {
        device: DeviceId::new("d").unwrap(),
        ids: ids.map(EventId).to_vec(),
        at: Timestamp(1),
    };
    {
        let (store, _) = reopen(&cfg).await;
        for i in 1..=150u64 {
            store.append(&[event("a", i, &payload)]).await.unwrap();
        }
        // 51..=150 are retained.
        store
            .append(&[replayed([1, 2]), replayed([5, 120])])
            .await
            .unwrap();
        // Enough to seal the segment holding them; 111..=210 are retained.
        for i in 151..=210u64 {
            store.append(&[event("a", i, &payload)]).await.unwrap();
        }
        store.compact_now();
        store.close().await.unwrap();
    }
    let (_, r) = reopen(&cfg).await;
    let replays: Vec<&[EventId]> = r
        .records
        .iter()
        .filter_map(|x| match x {
            Record::Replayed { ids, .. } => Some(&ids[..]),
            _ => None,
        })
        .collect();
    assert_eq!(replays, [&[EventId(5), EventId(120)][..]]);
}

#[tokio::test]
async fn compaction_keeps_what_is_live_and_bounds_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_size = 4096;
    cfg.retention.history = 10;
    let payload = "p".repeat(100);
    {
        let (store, _) = reopen(&cfg).await;
        let sub = Pattern::new("a").unwrap();
        let dev = DeviceId::new("d").unwrap();
        store
            .append(&[
                Record::Joined {
                    subscription: sub.clone(),
                    device: dev.clone(),
                    head: EventId(0),
                    at: Timestamp(1),
                },
                // Its first receipt, for an event long dropped.
                Record::Acking {
                    subscription: sub.clone(),
                    device: dev.clone(),
                    id: EventId(1),
                    at: Timestamp(2),
                },
            ])
            .await
            .unwrap();
        for i in 1..=2000u64 {
            let mut batch = vec![event("a", i, &payload)];
            if i % 100 == 0 {
                batch.push(Record::Cursor {
                    subscription: sub.clone(),
                    device: dev.clone(),
                    cursor: EventId(i),
                    at: Timestamp(i as i64),
                });
            }
            store.append(&batch).await.unwrap();
        }
        store
            .append(&[Record::Ack {
                id: EventId(1995),
                device: dev.clone(),
                status: "ok".into(),
                at: Timestamp(3),
            }])
            .await
            .unwrap();
        store.compact_now();
        let usage = store.disk_usage();
        assert!(usage < 20 * 4096, "disk stays bounded: {usage} bytes");
        store.close().await.unwrap();
    }
    let (_, r) = reopen(&cfg).await;
    assert_eq!(event_ids(&r), (1991..=2000).collect::<Vec<_>>());
    assert!(
        r.records.iter().any(|x| matches!(x, Record::Joined { .. })),
        "the membership survives"
    );
    let cursors: Vec<u64> = r
        .records
        .iter()
        .filter_map(|x| match x {
            Record::Cursor { cursor, .. } => Some(cursor.0),
            _ => None,
        })
        .collect();
    assert_eq!(cursors.last(), Some(&2000), "the latest cursor survives");
    assert!(
        r.records
            .iter()
            .any(|x| matches!(x, Record::Acking { id, .. } if id.0 == 1)),
        "that the member acknowledges survives its receipts"
    );
    assert!(
        r.records
            .iter()
            .any(|x| matches!(x, Record::Ack { id, .. } if id.0 == 1995))
    );
    assert!(r.last_id >= EventId(2000));
    let trimmed = r
        .evicted
        .iter()
        .find(|e| e.channel.as_str() == "a")
        .unwrap();
    assert_eq!(trimmed.upto, EventId(1990));
}

#[tokio::test]
async fn compaction_keeps_only_the_latest_change_of_each_token() {
    use crate::auth::{Grants, TokenHash};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_size = 4096;
    cfg.retention.history = 5;
    let grants = |subject: &str| Grants {
        subject: DeviceId::new(subject).unwrap(),
        subscribe: vec![Pattern::new("a").unwrap()],
        publish: Vec::new(),
        admin: false,
    };
    let (kept, revoked) = (
        TokenHash::of("kept-token-0123456"),
        TokenHash::of("gone-token-0123456"),
    );
    {
        let (store, _) = reopen(&cfg).await;
        for (token, g) in [
            (kept, Some(grants("v1"))),
            (revoked, Some(grants("x"))),
            (kept, Some(grants("v2"))),
            (revoked, None),
        ] {
            store
                .append(&[Record::Token {
                    token,
                    grants: g,
                    at: Timestamp(1),
                }])
                .await
                .unwrap();
        }
        let payload = "p".repeat(100);
        for i in 1..=500u64 {
            store.append(&[event("a", i, &payload)]).await.unwrap();
        }
        assert!(store.compact_now());
        store.close().await.unwrap();
    }
    let (_, r) = reopen(&cfg).await;
    let tokens: Vec<(TokenHash, Option<String>)> = r
        .records
        .iter()
        .filter_map(|x| match x {
            Record::Token { token, grants, .. } => {
                Some((*token, grants.as_ref().map(|g| g.subject.to_string())))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        tokens,
        [(kept, Some("v2".to_string())), (revoked, None)],
        "the latest change of each token, the revocation included"
    );
}
