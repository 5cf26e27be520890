//! Snapshots and trimming: the log keeps what a lagging node needs, and a
//! node that lagged too long is told to reload the snapshot.

use std::time::Duration;

use bytes::Bytes;
use pere_cluster::testing::RedisServer;
use pere_cluster::{Appended, ClusterConfig, Engine, EngineError, LogPos};

use crate::{engine, entry, next};

/// Appends `n` entries, each in a later millisecond than the one before,
/// so trimming (by stream-id milliseconds) can tell them apart.
async fn appends(engine: &Engine, n: usize) -> Vec<Appended> {
    let mut out: Vec<Appended> = Vec::new();
    for i in 0..n {
        if let Some(last) = out.last() {
            while engine.time().await.expect("TIME") / 1000 <= last.pos.ms {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        out.push(
            engine
                .append(entry(&i.to_string(), 1))
                .await
                .expect("appends"),
        );
    }
    out
}

async fn log_len(redis: &RedisServer) -> u64 {
    redis.query(&["XLEN", "pere:log"]).expect("XLEN")
}

#[tokio::test]
async fn a_snapshot_round_trips_in_chunks_and_an_older_one_never_replaces_it() {
    let redis = RedisServer::start().expect("redis starts");
    let other = engine(&redis.url(), "b").await;
    let engine = engine(&redis.url(), "a").await;
    assert_eq!(engine.snapshot().await.unwrap(), None);
    let a = appends(&engine, 3).await;
    let chunks = |redis: &RedisServer| -> Vec<String> {
        let mut keys: Vec<String> = redis.query(&["KEYS", "pere:snapshot:*"]).unwrap();
        keys.sort();
        keys
    };
    // 9 MB: three chunks of at most 4 MB, each its own SET.
    let big: Bytes = (0..9_000_000u32).map(|i| (i % 253) as u8).collect();
    engine.put_snapshot(a[1].pos, big.clone()).await.unwrap();
    assert_eq!(
        engine.snapshot().await.unwrap(),
        Some((a[1].pos, big.clone()))
    );
    assert_eq!(chunks(&redis).len(), 3);
    let ttl: i64 = redis.query(&["PTTL", &chunks(&redis)[0]]).unwrap();
    assert_eq!(ttl, -1, "committed chunks do not expire");
    // A slower node finishing an older snapshot later: its chunks go.
    other
        .put_snapshot(a[0].pos, Bytes::from_static(b"old"))
        .await
        .unwrap();
    assert_eq!(other.snapshot().await.unwrap(), Some((a[1].pos, big)));
    assert_eq!(chunks(&redis).len(), 3);
    // A newer one replaces it, and the replaced chunks go.
    other
        .put_snapshot(a[2].pos, Bytes::from_static(b"new"))
        .await
        .unwrap();
    let new = Bytes::from_static(b"new");
    assert_eq!(engine.snapshot().await.unwrap(), Some((a[2].pos, new)));
    assert_eq!(chunks(&redis), [format!("pere:snapshot:b:{}:0", a[2].pos)]);
    // An empty state is a snapshot too.
    engine
        .put_snapshot(
            LogPos {
                ms: a[2].pos.ms + 1,
                seq: 0,
            },
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(engine.snapshot().await.unwrap().unwrap().1, Bytes::new());
    assert!(chunks(&redis).is_empty());
}

#[tokio::test]
async fn the_log_is_trimmed_only_before_the_snapshot_minus_log_keep() {
    let redis = RedisServer::start().expect("redis starts");
    let mut config = ClusterConfig::new(redis.url(), "a");
    config.log_keep = Duration::ZERO;
    let keep_nothing = Engine::connect(config.clone()).await.unwrap();
    config.log_keep = Duration::from_secs(3600);
    let keep_an_hour = Engine::connect(config).await.unwrap();

    let a = appends(&keep_nothing, 6).await;
    keep_an_hour
        .put_snapshot(a[3].pos, Bytes::new())
        .await
        .unwrap();
    assert_eq!(log_len(&redis).await, 6, "an hour's entries stay");
    keep_nothing
        .put_snapshot(a[3].pos, Bytes::new())
        .await
        .unwrap();
    assert_eq!(log_len(&redis).await, 3, "entries the snapshot covers go");
    // The snapshot's own entry and what follows stay: a tail from the
    // snapshot reads on.
    let mut tail = keep_nothing.tail(a[3].pos);
    assert_eq!(next(&mut tail).await.unwrap().pos, a[4].pos);
    assert_eq!(next(&mut tail).await.unwrap().pos, a[5].pos);
}

/// Entries the log trimmed count as held when a node asks after a
/// failover which of its entries are gone: trimmed is not lost.
#[tokio::test]
async fn trimmed_entries_count_as_held() {
    let redis = RedisServer::start().expect("redis starts");
    let mut config = ClusterConfig::new(redis.url(), "a");
    config.log_keep = Duration::ZERO;
    let engine = Engine::connect(config).await.unwrap();
    let a = appends(&engine, 5).await;
    engine.put_snapshot(a[3].pos, Bytes::new()).await.unwrap();
    assert_eq!(log_len(&redis).await, 2, "a[0..3] trimmed");
    for appended in &a {
        assert!(
            engine.holds(appended.pos, appended.first_id).await.unwrap(),
            "{:?}",
            appended.pos
        );
    }
    let gone = LogPos {
        ms: a[4].pos.ms + 1,
        seq: 0,
    };
    assert!(!engine.holds(gone, 0).await.unwrap());
}

#[tokio::test]
async fn a_tail_behind_the_trimmed_log_is_told_to_reload_the_snapshot() {
    let redis = RedisServer::start().expect("redis starts");
    let mut config = ClusterConfig::new(redis.url(), "a");
    config.log_keep = Duration::ZERO;
    let engine = Engine::connect(config).await.unwrap();
    let a = appends(&engine, 5).await;
    // A node that had read up to a[0] and then was away.
    let mut lagging = engine.tail(a[0].pos);
    engine.put_snapshot(a[3].pos, Bytes::new()).await.unwrap();
    let err = next(&mut lagging).await.unwrap_err();
    assert_eq!(err, EngineError::Trimmed { after: a[0].pos });
    assert_eq!(next(&mut lagging).await.unwrap_err(), err, "final");
    // A new node starting from nothing is told the same.
    let err = next(&mut engine.tail(LogPos::ZERO)).await.unwrap_err();
    assert_eq!(
        err,
        EngineError::Trimmed {
            after: LogPos::ZERO
        }
    );
    // From the snapshot it works.
    let (pos, _) = engine.snapshot().await.unwrap().unwrap();
    assert_eq!(next(&mut engine.tail(pos)).await.unwrap().pos, a[4].pos);
}

#[tokio::test]
async fn a_connected_tail_overtaken_by_trimming_returns_what_it_read_then_trimmed() {
    let redis = RedisServer::start().expect("redis starts");
    let mut config = ClusterConfig::new(redis.url(), "a");
    config.log_keep = Duration::ZERO;
    let engine = Engine::connect(config).await.unwrap();
    // More than one XREAD brings (at most 64), so the tail has read only
    // part of the log when the trim comes.
    let a = appends(&engine, 70).await;
    let mut tail = engine.tail(LogPos::ZERO);
    let mut read = vec![next(&mut tail).await.unwrap().pos];
    engine.put_snapshot(a[68].pos, Bytes::new()).await.unwrap();
    let err = loop {
        match next(&mut tail).await {
            Ok(e) => read.push(e.pos),
            Err(err) => break err,
        }
    };
    let want: Vec<_> = a[..read.len()].iter().map(|a| a.pos).collect();
    assert_eq!(read, want, "what it returned is a prefix of the log");
    assert!(read.len() < 68);
    assert_eq!(
        err,
        EngineError::Trimmed {
            after: *read.last().unwrap()
        }
    );
}
