//! Sentinel failovers: the engine follows the promoted replica, ids keep
//! increasing, and what async replication lost is reported, never silent.

use std::time::Duration;

use pere_cluster::testing::SentinelGroup;
use pere_cluster::{EngineError, LogPos};

use crate::{append_retrying, engine, entry, next, next_available};

/// Detection (1 s down-after), election and promotion, on 2 busy cores.
const FAILOVER: Duration = Duration::from_secs(30);

async fn start_group() -> SentinelGroup {
    tokio::task::spawn_blocking(SentinelGroup::start)
        .await
        .expect("the setup thread ends")
        .expect("the sentinel group starts")
}

/// Kills the primary and waits (off the runtime) for the replica's promotion.
async fn fail_over(mut group: SentinelGroup) -> SentinelGroup {
    tokio::task::spawn_blocking(move || {
        group.primary.kill();
        group
            .wait_for_promotion(FAILOVER)
            .expect("the sentinels promote the replica");
        group
    })
    .await
    .expect("the failover thread ends")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_appends_continue_on_the_promoted_replica_with_increasing_ids() {
    let group = start_group().await;
    let engine = engine(&group.url(), "a").await;
    let mut tail = engine.tail(LogPos::ZERO);
    let mut appended = Vec::new();
    for i in 0..5 {
        appended.push(engine.append(entry(&i.to_string(), 2)).await.unwrap());
    }
    for a in &appended {
        assert_eq!(next(&mut tail).await.unwrap().pos, a.pos);
    }
    // Everything reached the replica: this failover loses nothing.
    group.sync_replica().unwrap();
    let group = fail_over(group).await;
    for i in 5..10 {
        appended.push(append_retrying(&engine, entry(&i.to_string(), 2), FAILOVER).await);
    }
    assert_eq!(
        group.replica.info("replication", "role").unwrap(),
        "master",
        "the engine writes to the promoted replica"
    );
    assert!(
        appended
            .windows(2)
            .all(|w| w[1].first_id > w[0].first_id + 1)
    );
    // The tail followed without loss, duplicate or false alarm.
    for a in &appended[5..] {
        let e = next_available(&mut tail, FAILOVER).await.unwrap();
        assert_eq!(e.pos, a.pos);
    }
}

/// How the loss is forced, deterministically: the replica's replication
/// user is disabled on the primary and its link killed, so the replica
/// stays up (and eligible for promotion) but receives nothing more; then
/// the primary takes two more entries, the tail reads them, and the
/// primary is killed. The promoted replica's log ends two entries early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_that_lost_entries_a_tail_had_read_is_reported_as_a_regression() {
    let group = start_group().await;
    let engine = engine(&group.url(), "a").await;
    let mut tail = engine.tail(LogPos::ZERO);
    let mut kept = Vec::new();
    for i in 0..3 {
        kept.push(engine.append(entry(&format!("kept {i}"), 1)).await.unwrap());
    }
    group.sync_replica().unwrap();
    group.cut_replication().unwrap();
    let mut lost = Vec::new();
    for i in 0..2 {
        lost.push(engine.append(entry(&format!("lost {i}"), 1)).await.unwrap());
    }
    for a in kept.iter().chain(&lost) {
        assert_eq!(next(&mut tail).await.unwrap().pos, a.pos);
    }
    let _group = fail_over(group).await;

    let err = next_available(&mut tail, FAILOVER).await.unwrap_err();
    assert_eq!(
        err,
        EngineError::Regressed {
            had: lost[1].pos,
            now: kept[2].pos
        }
    );
    // Ids keep increasing past the lost ones (Redis TIME moved on while
    // the failover took seconds), and a tail resynchronised from what
    // survived follows the new primary.
    let after = append_retrying(&engine, entry("after", 1), FAILOVER).await;
    assert!(after.first_id > lost[1].first_id);
    let mut resynced = engine.tail(kept[2].pos);
    let e = next_available(&mut resynced, FAILOVER).await.unwrap();
    assert_eq!((e.pos, e.prev), (after.pos, kept[2].pos));
}

/// A planned failover (`SENTINEL FAILOVER`): the old primary says it is
/// one for seconds after the promotion, until the sentinels reconfigure
/// it, and the engine went on writing there (a probe lost 11 s of
/// publishes answered `201`; a node started meanwhile used the new
/// primary: two logs). The engine follows the sentinels' newest
/// configuration instead: appends go to the new primary within the
/// watcher's period, and the tail reads on there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_failover_moves_appends_to_the_new_primary_at_once() {
    let group = start_group().await;
    let engine = engine(&group.url(), "a").await;
    let mut tail = engine.tail(LogPos::ZERO);
    let before = engine.append(entry("before", 1)).await.unwrap();
    assert_eq!(next(&mut tail).await.unwrap().pos, before.pos);
    // Read as a node reads: always waiting in XREAD, through the failover.
    let (read_tx, mut read) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            match tail.next().await {
                Ok(e) => {
                    if read_tx.send((e.pos, e.prev)).is_err() {
                        return;
                    }
                }
                Err(EngineError::Unavailable { .. }) => continue,
                Err(err) => panic!("the tail failed: {err}"),
            }
        }
    });
    group.sync_replica().unwrap();
    let group = tokio::task::spawn_blocking(move || {
        group
            .planned_failover()
            .expect("the sentinel starts a failover");
        group
            .wait_for_promotion(FAILOVER)
            .expect("the sentinels promote the replica");
        group
    })
    .await
    .unwrap();
    // The watcher asks every 0.5 s; some slack for 2 busy cores.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old_role = group
        .primary
        .info("replication", "role")
        .unwrap_or_default();
    let after = append_retrying(&engine, entry("after", 1), FAILOVER).await;
    let pos = after.pos.to_string();
    let on_new: Vec<redis::Value> = group
        .replica
        .query(&["XRANGE", "pere:log", &pos, &pos])
        .unwrap();
    assert_eq!(
        on_new.len(),
        1,
        "the append went to the promoted replica (the old primary said it was a {old_role})"
    );
    // The tail reads the new primary too, at once: not the old one until
    // the sentinels demote it (seconds later) and it copies the new log.
    let got = tokio::time::timeout(Duration::from_secs(3), read.recv())
        .await
        .unwrap_or_else(|_| {
            panic!("the tail did not read the new primary (the old said it was a {old_role})")
        });
    assert_eq!(got, Some((after.pos, before.pos)));
    reader.abort();
}

/// With `replicas: 1` an append succeeds only once the replica has the
/// entry, so a failover keeps every entry whose append succeeded. A
/// replica that stalls (still connected, acknowledging nothing) and then
/// one cut off (as in the regression test above) cannot confirm: those appends
/// fail as `Unconfirmed`, naming where the entry is (the primary has it,
/// the promoted replica will not), where without the wait they succeeded
/// and the failover lost them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_replica_required_a_failover_loses_no_entry_whose_append_succeeded() {
    let group = start_group().await;
    let config = pere_cluster::ClusterConfig {
        replicas: 1,
        replica_wait: Duration::from_secs(1),
        ..pere_cluster::ClusterConfig::new(group.url(), "a")
    };
    let engine = std::sync::Arc::new(pere_cluster::Engine::connect(config).await.unwrap());
    let on_replica = |pos: LogPos| {
        let pos = pos.to_string();
        let found: Vec<redis::Value> = group
            .replica
            .query(&["XRANGE", "pere:log", &pos, &pos])
            .unwrap();
        found.len()
    };
    let mut kept = Vec::new();
    for i in 0..3 {
        let appended = engine.append(entry(&format!("kept {i}"), 1)).await.unwrap();
        assert_eq!(
            on_replica(appended.pos),
            1,
            "an append that succeeded is on the replica already"
        );
        kept.push(appended);
    }
    engine.probe().await.expect("one replica online");
    let unconfirmed = |what: &str, result: Result<pere_cluster::Appended, EngineError>| match result
    {
        Err(EngineError::Unconfirmed { pos, reason }) => {
            assert!(reason.contains("0 of the 1 replicas"), "{what}: {reason}");
            pos
        }
        other => panic!("{what}: an append no replica has succeeded: {other:?}"),
    };
    group.replica.freeze().unwrap();
    let waiting = tokio::spawn({
        let engine = engine.clone();
        async move { engine.append(entry("stalled", 1)).await }
    });
    // While that append waits for the replica (Redis reads nothing more
    // from the connection it waits on), the engine's other commands go on.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the append waits for the replica");
    let started = std::time::Instant::now();
    engine.heartbeat(Duration::from_secs(5)).await.unwrap();
    engine.head().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "other commands waited {:?} behind the append's WAIT",
        started.elapsed()
    );
    let stalled = unconfirmed("stalled", waiting.await.unwrap());
    group.replica.thaw().unwrap();
    group.sync_replica().unwrap();
    assert_eq!(on_replica(stalled), 1, "it reaches the replica later");

    group.cut_replication().unwrap();
    let err = engine.probe().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("0 of the 1 replicas required online"),
        "{err}"
    );
    for i in 0..2 {
        let started = std::time::Instant::now();
        let pos = unconfirmed(
            "cut off",
            engine.append(entry(&format!("cut {i}"), 1)).await,
        );
        assert_eq!(on_replica(pos), 0);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    let group = fail_over(group).await;
    // Every append that succeeded is on the new primary, in order.
    let mut tail = engine.tail(LogPos::ZERO);
    for a in &kept {
        assert_eq!(
            next_available(&mut tail, FAILOVER).await.unwrap().pos,
            a.pos
        );
    }
    drop(group);
}
