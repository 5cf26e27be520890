//! Appends: one total order across engines, increasing ids, idempotency.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use pere_cluster::testing::RedisServer;
use pere_cluster::{EngineError, LogPos, NewEntry, Slot};

use crate::{engine, entry, key, next};

#[tokio::test]
async fn an_append_assigns_ids_from_the_redis_clock_and_the_tail_returns_it() {
    let redis = RedisServer::start().expect("redis starts");
    let engine = engine(&redis.url(), "a").await;
    let before = engine.time().await.unwrap();
    let appended = engine.append(entry("batch", 3)).await.unwrap();
    assert!(appended.first_id >= before, "ids follow Redis TIME in µs");
    assert!(appended.time >= before && appended.first_id >= appended.time);
    assert!(appended.duplicates.is_empty());
    assert_eq!(engine.head().await.unwrap(), appended.pos);

    let mut tail = engine.tail(LogPos::ZERO);
    let got = next(&mut tail).await.unwrap();
    assert_eq!(got.pos, appended.pos);
    assert_eq!(got.prev, LogPos::ZERO);
    assert_eq!((got.node.as_str(), &got.blob[..]), ("a", &b"batch"[..]));
    assert_eq!(
        (got.first_id, got.events, got.time),
        (appended.first_id, 3, appended.time)
    );
    assert_eq!(got.slot(2), Some(Slot::New(appended.first_id + 2)));
}

/// What a node asks after a failover, to find which of the entries it
/// applied the log still holds (trimmed ones: `snapshot.rs`).
#[tokio::test]
async fn the_log_says_which_positions_it_holds() {
    let redis = RedisServer::start().expect("redis starts");
    let engine = engine(&redis.url(), "a").await;
    assert!(
        !engine.holds(LogPos { ms: 5, seq: 0 }, 0).await.unwrap(),
        "empty"
    );
    let first = engine.append(entry("one", 1)).await.unwrap();
    let second = engine.append(entry("two", 0)).await.unwrap();
    assert!(engine.holds(first.pos, first.first_id).await.unwrap());
    assert!(engine.holds(second.pos, second.first_id).await.unwrap());
    // Another entry at that position (another server's, in the same
    // millisecond): not the one this node applied.
    assert!(!engine.holds(first.pos, first.first_id + 7).await.unwrap());
    let between = LogPos {
        ms: first.pos.ms,
        seq: first.pos.seq + 1,
    };
    if between != second.pos {
        assert!(!engine.holds(between, 0).await.unwrap());
    }
    let later = LogPos {
        ms: second.pos.ms + 1,
        seq: 0,
    };
    assert!(!engine.holds(later, 0).await.unwrap());
    // From before the log began (recorded around its first entry, within
    // a millisecond or two): a log that is gone, as a replica promoted
    // empty has, not trimmed.
    let before = LogPos {
        ms: first.pos.ms - 1000,
        seq: 0,
    };
    assert!(!engine.holds(before, 0).await.unwrap());
}

#[tokio::test]
async fn an_entry_without_events_takes_no_id() {
    let redis = RedisServer::start().expect("redis starts");
    let engine = engine(&redis.url(), "a").await;
    let a = engine.append(entry("one", 1)).await.unwrap();
    let empty = engine.append(entry("receipts only", 0)).await.unwrap();
    assert_eq!(empty.first_id, 0);
    let seq: u64 = redis.query(&["GET", "pere:seq"]).unwrap();
    assert_eq!(seq, a.first_id, "an empty entry leaves seq alone");
    let mut tail = engine.tail(a.pos);
    assert_eq!(next(&mut tail).await.unwrap().events, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_appending_concurrently_make_one_order_with_increasing_ids() {
    const TASKS: usize = 8;
    const APPENDS: usize = 40;
    let redis = RedisServer::start().expect("redis starts");
    let engines = [
        engine(&redis.url(), "a").await,
        engine(&redis.url(), "b").await,
    ];
    let total = engines.len() * TASKS * APPENDS;
    // Each node's tail runs while the appends happen.
    let tails: Vec<_> = engines
        .iter()
        .map(|e| {
            let mut tail = e.tail(LogPos::ZERO);
            tokio::spawn(async move {
                let mut entries = Vec::new();
                while entries.len() < total {
                    entries.push(next(&mut tail).await.expect("the tail reads"));
                }
                entries
            })
        })
        .collect();
    let mut tasks = Vec::new();
    for (n, engine) in engines.iter().enumerate() {
        for t in 0..TASKS {
            let engine = engine.clone();
            tasks.push(tokio::spawn(async move {
                let mut appended = Vec::new();
                for i in 0..APPENDS {
                    let events = 1 + (i + t) % 5;
                    let blob = format!("{n}/{t}/{i}");
                    let a = engine.append(entry(&blob, events)).await.expect("appends");
                    appended.push((a, blob, events));
                }
                appended
            }));
        }
    }
    let mut appended = Vec::new();
    for task in tasks {
        appended.extend(task.await.unwrap());
    }
    let logs: Vec<_> = futures_join(tails).await;
    // Both nodes read the same log.
    assert_eq!(logs[0], logs[1], "both tails read one order");
    let log = &logs[0];
    // Ids strictly increase along the log, within and across entries.
    let mut last = 0;
    for e in log {
        assert!(
            e.first_id > last,
            "entry {} starts at {} after {last}",
            e.pos,
            e.first_id
        );
        last = e.first_id + u64::from(e.events) - 1;
    }
    // Every append is on the log, once, as it was acknowledged.
    let by_pos: HashMap<LogPos, _> = log.iter().map(|e| (e.pos, e)).collect();
    assert_eq!(by_pos.len(), total);
    for (a, blob, events) in &appended {
        let e = by_pos[&a.pos];
        assert_eq!((&e.blob[..], e.first_id), (blob.as_bytes(), a.first_id));
        assert_eq!(e.events as usize, *events);
    }
}

async fn futures_join<T: Send + 'static>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.expect("the task ends"));
    }
    out
}

#[tokio::test]
async fn a_known_key_makes_a_duplicate_of_the_original_id_even_within_a_batch() {
    let redis = RedisServer::start().expect("redis starts");
    let engine = engine(&redis.url(), "a").await;
    let first = engine
        .append(NewEntry {
            blob: Bytes::from_static(b"1"),
            idem: vec![Some(key("c", "k1")), None, Some(key("c", "k1"))],
            serial: None,
        })
        .await
        .unwrap();
    assert_eq!(first.duplicates, vec![(2, first.first_id)]);
    let retry = engine
        .append(NewEntry {
            blob: Bytes::from_static(b"2"),
            idem: vec![
                Some(key("c", "k2")),
                Some(key("c", "k1")),
                Some(key("d", "k1")),
            ],
            serial: None,
        })
        .await
        .unwrap();
    assert_eq!(retry.duplicates, vec![(1, first.first_id)]);
    let mut tail = engine.tail(first.pos);
    let e = next(&mut tail).await.unwrap();
    assert_eq!(e.slot(0), Some(Slot::New(retry.first_id)));
    assert_eq!(e.slot(1), Some(Slot::Duplicate(first.first_id)));
    assert_eq!(e.slot(2), Some(Slot::New(retry.first_id + 2)));
    // The publisher scopes the key (docs/PROTOCOL.md §2).
    let mut other = key("c", "k1");
    other.publisher = Some("alice".into());
    let alice = engine
        .append(NewEntry {
            blob: Bytes::new(),
            idem: vec![Some(other)],
            serial: None,
        })
        .await
        .unwrap();
    assert!(alice.duplicates.is_empty());
}

#[tokio::test]
async fn idempotency_keys_expire_after_idem_ttl() {
    let redis = RedisServer::start().expect("redis starts");
    let mut config = pere_cluster::ClusterConfig::new(redis.url(), "a");
    config.idem_ttl = Duration::from_millis(300);
    let engine = pere_cluster::Engine::connect(config).await.unwrap();
    let with_key = || NewEntry {
        blob: Bytes::new(),
        idem: vec![Some(key("c", "k"))],
        serial: None,
    };
    engine.append(with_key()).await.unwrap();
    let pttl: i64 = redis.query(&["PTTL", "pere:idem:1:c:-:k"]).unwrap();
    assert!((1..=300).contains(&pttl), "the key lives idem_ttl: {pttl}");
    assert_eq!(engine.append(with_key()).await.unwrap().duplicates.len(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        engine
            .append(with_key())
            .await
            .unwrap()
            .duplicates
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_engines_get_one_id_per_idempotency_key() {
    const KEYS: usize = 20;
    const TRIES: usize = 6;
    let redis = RedisServer::start().expect("redis starts");
    let engines = [
        engine(&redis.url(), "a").await,
        engine(&redis.url(), "b").await,
    ];
    let mut tasks = Vec::new();
    for t in 0..TRIES {
        for engine in &engines {
            let engine = engine.clone();
            tasks.push(tokio::spawn(async move {
                let mut results = Vec::new();
                // Every task publishes every key, in a different order.
                for k in (0..KEYS).map(|k| (k + t * 7) % KEYS) {
                    let a = engine
                        .append(NewEntry {
                            blob: Bytes::new(),
                            idem: vec![Some(key("chan", &format!("k{k}")))],
                            serial: None,
                        })
                        .await
                        .expect("appends");
                    let id = match a.duplicates.first() {
                        Some((0, original)) => (false, *original),
                        _ => (true, a.first_id),
                    };
                    results.push((k, id));
                }
                results
            }));
        }
    }
    let mut per_key: BTreeMap<usize, Vec<(bool, u64)>> = BTreeMap::new();
    for task in tasks {
        for (k, id) in task.await.unwrap() {
            per_key.entry(k).or_default().push(id);
        }
    }
    for (k, ids) in per_key {
        let fresh: Vec<_> = ids.iter().filter(|(new, _)| *new).collect();
        assert_eq!(fresh.len(), 1, "key {k} was published once: {ids:?}");
        let id = fresh[0].1;
        assert!(
            ids.iter().all(|(_, i)| *i == id),
            "key {k} has one id: {ids:?}"
        );
    }
}

#[tokio::test]
async fn ids_keep_increasing_when_seq_is_lost_or_behind() {
    let redis = RedisServer::start().expect("redis starts");
    let engine = engine(&redis.url(), "a").await;
    let a = engine.append(entry("a", 10)).await.unwrap();
    // A failover can promote a replica whose seq lags: Redis TIME still
    // moves the ids on.
    redis.query::<()>(&["DEL", "pere:seq"]).unwrap();
    let b = engine.append(entry("b", 1)).await.unwrap();
    assert!(
        b.first_id > a.first_id + 9,
        "{} after {}",
        b.first_id,
        a.first_id
    );
    redis.query::<()>(&["SET", "pere:seq", "5"]).unwrap();
    let c = engine.append(entry("c", 1)).await.unwrap();
    assert!(c.first_id > b.first_id);
    // A seq ahead of the clock (a burst of more than 1M events/s) is
    // followed, so ids never go back.
    let ahead = engine.time().await.unwrap() + 60_000_000;
    redis
        .query::<()>(&["SET", "pere:seq", &ahead.to_string()])
        .unwrap();
    let d = engine.append(entry("d", 2)).await.unwrap();
    assert_eq!(d.first_id, ahead + 1);
    let seq: u64 = redis.query(&["GET", "pere:seq"]).unwrap();
    assert_eq!(seq, ahead + 2);
}

#[tokio::test]
async fn a_blob_of_several_megabytes_round_trips() {
    let redis = RedisServer::start().expect("redis starts");
    let engine = engine(&redis.url(), "a").await;
    let blob: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let appended = engine
        .append(NewEntry {
            blob: Bytes::from(blob.clone()),
            idem: vec![None; 64],
            serial: None,
        })
        .await
        .unwrap();
    let mut tail = engine.tail(LogPos::ZERO);
    let got = next(&mut tail).await.unwrap();
    assert_eq!(got.pos, appended.pos);
    assert!(got.blob == blob, "the blob comes back byte for byte");
}

/// An entry with a serial is on the log at most once, and never after a
/// later serial of its node: a retry whose first try got no answer adds
/// nothing if the first try ran, and a first try that runs after its
/// retry (or after the node's next entry) adds nothing either.
#[tokio::test]
async fn a_serial_is_taken_once_and_never_after_a_later_one() {
    let redis = RedisServer::start().expect("redis starts");
    let a = engine(&redis.url(), "a").await;
    let b = engine(&redis.url(), "b").await;
    let with = |blob: &str, serial: u64| NewEntry {
        serial: Some(serial),
        ..entry(blob, 1)
    };
    let first = a.append(with("first", 5)).await.unwrap();
    assert!(!first.again);
    let retry = a.append(with("retry", 5)).await.unwrap();
    assert!(retry.again, "{retry:?}");
    assert_eq!(retry.pos, first.pos);
    assert_eq!(
        a.append(with("overtaken", 4)).await.unwrap_err(),
        EngineError::Stale { last: 5 }
    );
    // Serials are per engine, and entries without one are not numbered.
    b.append(with("b's", 1)).await.unwrap();
    a.append(entry("unnumbered", 1)).await.unwrap();
    let next_one = a.append(with("next", 9)).await.unwrap();
    assert_eq!(
        a.append(with("late first try", 6)).await.unwrap_err(),
        EngineError::Stale { last: 9 }
    );
    let mut tail = a.tail(LogPos::ZERO);
    let mut blobs = Vec::new();
    loop {
        let e = next(&mut tail).await.unwrap();
        blobs.push(String::from_utf8(e.blob.to_vec()).unwrap());
        if e.pos == next_one.pos {
            break;
        }
    }
    assert_eq!(blobs, ["first", "b's", "unnumbered", "next"]);
    // Each process's highest serial is kept apart, a day, not forever.
    let keys: Vec<String> = redis.query(&["KEYS", "pere:serial:a:*"]).unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let pttl: i64 = redis.query(&["PTTL", &keys[0]]).unwrap();
    assert!((1..=86_400_000).contains(&pttl), "{pttl}");
    let other = engine(&redis.url(), "a").await;
    assert!(!other.append(with("another life", 1)).await.unwrap().again);
    // A value that does not read as `N pos` counts as none, rather than
    // failing every append.
    let () = redis.query(&["SET", &keys[0], "not a serial"]).unwrap();
    assert!(!a.append(with("after", 10)).await.unwrap().again);
    assert!(a.append(with("after, again", 10)).await.unwrap().again);
}
