//! Redis down, hung or restarted: prompt `Unavailable`, then business as
//! usual, and nothing acknowledged lost.

use std::time::{Duration, Instant};

use pere_cluster::testing::RedisServer;
use pere_cluster::{ClusterConfig, Engine, EngineError, LogPos, NewEntry};

use crate::{PROMPT, append_retrying, engine, entry, next};

/// What a caller of a Redis-down engine waits at most for its `503`.
const PROMPTLY: Duration = Duration::from_secs(1);

#[tokio::test]
async fn unavailable_is_reported_promptly_while_redis_is_down_and_appends_resume_after() {
    let mut redis = RedisServer::start().expect("redis starts");
    let engine = engine(&redis.url(), "a").await;
    let before = engine.append(entry("before", 1)).await.unwrap();
    redis.kill();
    // The first call finds the connection dead, the next ones cannot
    // connect, the ones after wait out the backoff: all answer at once.
    for i in 0..20 {
        let started = Instant::now();
        let err = engine.append(entry("down", 1)).await.unwrap_err();
        let took = started.elapsed();
        let EngineError::Unavailable {
            retry_after,
            outcome_unknown,
            ..
        } = err
        else {
            panic!("append {i} while down: {err}");
        };
        assert!(took < PROMPTLY, "append {i} took {took:?}");
        assert!(retry_after >= Duration::from_secs(1), "{retry_after:?}");
        if i > 0 {
            assert!(!outcome_unknown, "nothing could be sent");
        }
        assert!(engine.time().await.unwrap_err().is_unavailable());
    }
    redis.restart().expect("redis restarts");
    let started = Instant::now();
    let after = append_retrying(&engine, entry("after", 1), PROMPT).await;
    eprintln!("appends resumed {:?} after the restart", started.elapsed());
    assert!(after.first_id > before.first_id);
    // Nothing acknowledged was lost, nothing refused was written.
    let mut tail = engine.tail(LogPos::ZERO);
    assert_eq!(next(&mut tail).await.unwrap().pos, before.pos);
    assert_eq!(next(&mut tail).await.unwrap().pos, after.pos);
}

#[tokio::test]
async fn connecting_while_redis_is_down_is_unavailable() {
    let mut redis = RedisServer::start().expect("redis starts");
    let url = redis.url();
    redis.kill();
    let err = Engine::connect(ClusterConfig::new(url, "a"))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
}

/// An engine with a short command timeout on `redis`, which has run the
/// append script once (a first `EVALSHA` Redis runs on waking would fail
/// with `NOSCRIPT`); returns where that entry is.
async fn impatient_engine(redis: &RedisServer) -> (Engine, LogPos) {
    let mut config = ClusterConfig::new(redis.url(), "a");
    config.command_timeout = Duration::from_millis(300);
    let engine = Engine::connect(config).await.expect("the engine connects");
    let before = engine.append(entry("before", 1)).await.expect("an append");
    (engine, before.pos)
}

/// Appends `entry` while `redis` hangs: unanswered within the timeout,
/// the outcome unknown. Redis runs again when this returns.
async fn append_to_a_hung(redis: &RedisServer, engine: &Engine, entry: NewEntry) {
    redis.freeze().expect("SIGSTOP");
    let started = Instant::now();
    let err = engine
        .append(entry)
        .await
        .expect_err("a hung redis answers nothing");
    let took = started.elapsed();
    redis.thaw().expect("SIGCONT");
    assert!(took < PROMPTLY, "{took:?}");
    assert!(
        matches!(
            err,
            EngineError::Unavailable {
                outcome_unknown: true,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_is_unavailable_after_the_command_timeout_and_the_outcome_is_unknown() {
    let redis = RedisServer::start().expect("redis starts");
    let (engine, _) = impatient_engine(&redis).await;
    append_to_a_hung(&redis, &engine, entry("sent to a hung redis", 1)).await;
    // Why it is "unknown": the script was sent, and once Redis runs again
    // it runs, and the entry is on the log.
    let mut tail = engine.tail(LogPos::ZERO);
    next(&mut tail).await.unwrap();
    let late = next(&mut tail).await.unwrap();
    assert_eq!(&late.blob[..], b"sent to a hung redis");
}

/// The same, with a serial: the retry that follows the unanswered try
/// finds that Redis ran it on waking, and adds nothing; with the next
/// serial, the node goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_an_unanswered_append_under_its_serial_adds_nothing() {
    let redis = RedisServer::start().expect("redis starts");
    let (engine, before) = impatient_engine(&redis).await;
    let with = |blob: &str, serial: u64| NewEntry {
        serial: Some(serial),
        ..entry(blob, 1)
    };
    append_to_a_hung(&redis, &engine, with("hung", 1)).await;
    let retry = append_retrying(&engine, with("retry", 1), PROMPT).await;
    assert!(retry.again, "Redis ran the first try on waking: {retry:?}");
    let after = engine.append(with("after", 2)).await.unwrap();
    let mut tail = engine.tail(before);
    let hung = next(&mut tail).await.unwrap();
    assert_eq!((&hung.blob[..], hung.pos), (&b"hung"[..], retry.pos));
    assert_eq!(next(&mut tail).await.unwrap().pos, after.pos);
}

#[tokio::test]
async fn ids_and_the_log_survive_a_kill_9_with_aof_always() {
    let mut redis = RedisServer::start().expect("redis starts");
    let engine = engine(&redis.url(), "a").await;
    let mut appended = Vec::new();
    for i in 0..20 {
        appended.push(engine.append(entry(&i.to_string(), 3)).await.unwrap());
    }
    redis.kill();
    redis.restart().expect("redis restarts");
    let seq: u64 = redis.query(&["GET", "pere:seq"]).unwrap();
    let last = appended.last().unwrap();
    assert_eq!(seq, last.first_id + 2, "seq survived");
    let next_one = append_retrying(&engine, entry("next", 1), PROMPT).await;
    assert!(next_one.first_id > seq);
    let mut tail = engine.tail(LogPos::ZERO);
    for a in &appended {
        let e = next(&mut tail).await.unwrap();
        assert_eq!((e.pos, e.first_id), (a.pos, a.first_id));
    }
}

/// The log's beginning is set once, by the first node to find it empty,
/// below every id the log gives; a Redis that lost its data begins again
/// later, and a log that already held entries (written before this was
/// recorded) says it does not know.
#[tokio::test]
async fn the_log_s_genesis_is_set_once_and_begins_again_when_redis_loses_its_data() {
    let mut redis = RedisServer::start_with(&["--appendonly", "no"]).expect("redis starts");
    let a = engine(&redis.url(), "a").await;
    let genesis = a.genesis().await.expect("genesis");
    let b = engine(&redis.url(), "b").await;
    assert_eq!(b.genesis().await.expect("genesis"), genesis);
    let appended = a.append(entry("one", 1)).await.expect("appends");
    assert!(appended.first_id >= genesis, "{appended:?} below {genesis}");
    assert_eq!(a.genesis().await.expect("genesis"), genesis);
    // Redis restarted without persistence: an empty log, a later beginning.
    redis.restart().expect("redis restarts");
    let c = engine(&redis.url(), "c").await;
    let again = c.genesis().await.expect("genesis");
    assert!(again > appended.first_id, "{again} after {appended:?}");
    // A log with entries and no recorded beginning: unknown.
    c.append(entry("two", 1)).await.expect("appends");
    redis.query::<i64>(&["DEL", "pere:genesis"]).expect("DEL");
    assert_eq!(c.genesis().await.expect("genesis"), 0);
}

/// A node still running when Redis lost its data appends (a tick, a
/// publish) before it notices: the log's beginning is recorded by that
/// first entry, so the nodes that restart still find it above the lost ids.
#[tokio::test]
async fn the_log_s_genesis_is_recorded_by_a_first_append_after_redis_lost_its_data() {
    let mut redis = RedisServer::start_with(&["--appendonly", "no"]).expect("redis starts");
    let a = engine(&redis.url(), "a").await;
    let genesis = a.genesis().await.expect("genesis");
    let appended = a.append(entry("one", 1)).await.expect("appends");
    assert!(appended.first_id >= genesis);
    redis.restart().expect("redis restarts, empty");
    append_retrying(&a, entry("tick", 0), Duration::from_secs(10)).await;
    let c = engine(&redis.url(), "c").await;
    let again = c.genesis().await.expect("genesis");
    assert!(again > appended.first_id, "{again} after {appended:?}");
}
