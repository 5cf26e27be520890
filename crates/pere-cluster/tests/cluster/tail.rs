//! Tails: blocking reads that wake at once, resume after a restart, and
//! notice a log that lost what they read.

use std::time::{Duration, Instant};

use pere_cluster::testing::{RedisServer, wait_for};
use pere_cluster::{EngineError, LogPos};

use crate::{PROMPT, append_retrying, engine, entry, next, next_available};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_tail_wakes_at_once_on_a_new_entry() {
    let redis = RedisServer::start().expect("redis starts");
    let engine = engine(&redis.url(), "a").await;
    let mut tail = engine.tail(LogPos::ZERO);
    let reader = tokio::spawn(async move {
        let entry = next(&mut tail).await.expect("an entry");
        (entry, Instant::now())
    });
    // Observable state, not a sleep: the tail's XREAD is blocked in Redis.
    let _redis = tokio::task::spawn_blocking(move || {
        wait_for("the tail to block", PROMPT, || {
            (redis.info("clients", "blocked_clients").ok()? == "1").then_some(())
        })
        .expect("the tail blocks");
        redis
    })
    .await
    .unwrap();
    let sent = Instant::now();
    let appended = engine.append(entry("wake", 1)).await.unwrap();
    let acked = sent.elapsed();
    let (got, woke) = reader.await.unwrap();
    assert_eq!(got.pos, appended.pos);
    let latency = woke.saturating_duration_since(sent);
    eprintln!("append sent → acknowledged {acked:?}, → the blocked tail woke {latency:?}");
    assert!(latency < Duration::from_millis(500), "{latency:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_resumes_after_a_redis_restart_without_loss_or_duplicate() {
    let mut redis = RedisServer::start().expect("redis starts");
    let engine = engine(&redis.url(), "a").await;
    let mut tail = engine.tail(LogPos::ZERO);
    let mut appended = Vec::new();
    for i in 0..10 {
        appended.push(engine.append(entry(&format!("{i}"), 2)).await.unwrap());
    }
    for a in &appended {
        assert_eq!(next(&mut tail).await.unwrap().pos, a.pos);
    }
    // kill -9 under the blocked tail: it says so promptly, again and again.
    redis.kill();
    for _ in 0..2 {
        let down = next(&mut tail).await;
        assert!(
            matches!(down, Err(EngineError::Unavailable { .. })),
            "{down:?}"
        );
    }
    redis.restart().expect("redis restarts");
    for i in 10..15 {
        appended.push(append_retrying(&engine, entry(&format!("{i}"), 2), PROMPT).await);
    }
    let mut read = Vec::new();
    while read.len() < 5 {
        read.push(next_available(&mut tail, PROMPT).await.unwrap().pos);
    }
    let want: Vec<_> = appended[10..].iter().map(|a| a.pos).collect();
    assert_eq!(read, want, "each new entry once, in order");
    // AOF `always`: every acknowledged entry survived the kill.
    let mut all = engine.tail(LogPos::ZERO);
    for a in &appended {
        assert_eq!(next(&mut all).await.unwrap().pos, a.pos);
    }
    // Ids went on increasing across the restart.
    assert!(
        appended
            .windows(2)
            .all(|w| w[1].first_id > w[0].first_id + 1)
    );
}

#[tokio::test]
async fn a_tail_whose_log_was_wiped_reports_a_regression() {
    let redis = RedisServer::start().expect("redis starts");
    let engine = engine(&redis.url(), "a").await;
    let a = engine.append(entry("a", 1)).await.unwrap();
    let mut tail = engine.tail(LogPos::ZERO);
    assert_eq!(next(&mut tail).await.unwrap().pos, a.pos);
    // A Redis that lost everything (no persistence, a failover to an empty
    // replica): the idle tail notices at its next wake-up, no entry needed.
    redis.query::<()>(&["FLUSHALL"]).unwrap();
    let err = next(&mut tail).await.unwrap_err();
    assert_eq!(
        err,
        EngineError::Regressed {
            had: a.pos,
            now: LogPos::ZERO
        }
    );
    // Final: the tail keeps saying it.
    assert_eq!(next(&mut tail).await.unwrap_err(), err);
}

#[tokio::test]
async fn a_tail_meeting_an_entry_that_chains_to_an_older_one_reports_a_regression() {
    let redis = RedisServer::start().expect("redis starts");
    let engine = engine(&redis.url(), "a").await;
    let a = engine.append(entry("a", 1)).await.unwrap();
    let b = engine.append(entry("b", 1)).await.unwrap();
    let mut tail = engine.tail(LogPos::ZERO);
    assert_eq!(next(&mut tail).await.unwrap().pos, a.pos);
    assert_eq!(next(&mut tail).await.unwrap().pos, b.pos);
    // What a new primary that only had `a` looks like once it takes a new
    // entry: `b` is gone, and the new entry follows `a`.
    redis
        .query::<()>(&["XDEL", "pere:log", &b.pos.to_string()])
        .unwrap();
    redis
        .query::<()>(&["SET", "pere:head", &a.pos.to_string()])
        .unwrap();
    let c = engine.append(entry("c", 1)).await.unwrap();
    assert!(c.pos > b.pos);
    let err = next(&mut tail).await.unwrap_err();
    assert_eq!(
        err,
        EngineError::Regressed {
            had: b.pos,
            now: a.pos
        }
    );
    // A tail that never read `b` follows the log as it now is.
    let mut fresh = engine.tail(a.pos);
    assert_eq!(next(&mut fresh).await.unwrap().pos, c.pos);
}

#[tokio::test]
async fn a_tail_started_past_the_end_of_the_log_reports_a_regression() {
    let redis = RedisServer::start().expect("redis starts");
    let engine = engine(&redis.url(), "a").await;
    let a = engine.append(entry("a", 1)).await.unwrap();
    let beyond = LogPos {
        ms: a.pos.ms + 1,
        seq: 0,
    };
    let err = next(&mut engine.tail(beyond)).await.unwrap_err();
    assert_eq!(
        err,
        EngineError::Regressed {
            had: beyond,
            now: a.pos
        }
    );
}

#[tokio::test]
async fn a_tail_reads_large_blobs_a_few_at_a_time() {
    let redis = RedisServer::start().expect("redis starts");
    let engine = engine(&redis.url(), "a").await;
    let blob = bytes::Bytes::from(vec![b'x'; 3 << 20]);
    let mut appended = Vec::new();
    for _ in 0..6 {
        let entry = pere_cluster::NewEntry {
            blob: blob.clone(),
            idem: vec![None; 64],
            serial: None,
        };
        appended.push(engine.append(entry).await.unwrap());
    }
    let _: () = redis.query(&["CONFIG", "RESETSTAT"]).unwrap();
    let mut tail = engine.tail(LogPos::ZERO);
    for a in &appended {
        let e = next(&mut tail).await.unwrap();
        assert_eq!((e.pos, e.blob.len()), (a.pos, blob.len()));
    }
    // 18 MB in reads of ~8 MB: one entry first (its size unknown), then
    // two per read; 64 per read would have been one 18 MB reply.
    let xreads = redis
        .command_calls()
        .unwrap()
        .into_iter()
        .find(|(name, _)| name == "xread")
        .map_or(0, |(_, calls)| calls);
    assert_eq!(xreads, 4, "1 + 2 + 2 + 1 entries");
}
