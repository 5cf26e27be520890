//! The Redis engine (`pere-cluster`): appends per second of 1-event and
//! 64-event entries through the append script, one at a time (a node's
//! writer waits for each batch) and 16 at once (several writers), against a
//! real `redis-server` with AOF `appendfsync always` (the documented setup:
//! nothing acknowledged is lost) and `everysec` (for comparison); then what
//! one append costs Redis in commands, from `INFO commandstats` deltas,
//! with three nodes tailing the log.
//!
//! `cargo bench -p pere-benches --bench cluster`

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pere_cluster::testing::RedisServer;
use pere_cluster::{ClusterConfig, Engine, IdemKey, NewEntry};

/// Bytes per event in a blob: a 128-byte payload plus the record around it.
const EVENT_BYTES: usize = 200;
/// Appends at once in the concurrent case.
const IN_FLIGHT: usize = 16;

fn new_entry(events: usize, keys: bool, n: &mut u64) -> NewEntry {
    NewEntry {
        blob: Bytes::from(vec![b'x'; events * EVENT_BYTES]),
        idem: (0..events)
            .map(|_| {
                *n += 1;
                keys.then(|| IdemKey {
                    channel: "bench".into(),
                    publisher: None,
                    key: n.to_string(),
                })
            })
            .collect(),
        // As the hub sends its entries: each with a serial above the last.
        serial: Some({
            *n += 1;
            *n
        }),
    }
}

fn appends(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    for fsync in ["always", "everysec"] {
        let redis = RedisServer::start_with(&["--appendfsync", fsync]).unwrap();
        let engine = rt
            .block_on(Engine::connect(ClusterConfig::new(redis.url(), "bench")))
            .unwrap();
        let mut n = 0;
        for (events, keys) in [(1, false), (64, false), (64, true)] {
            let mut group = c.benchmark_group(format!("cluster_append_fsync_{fsync}"));
            group.throughput(Throughput::Elements(1));
            group.sample_size(20);
            group.measurement_time(Duration::from_secs(5));
            let name = format!("{events}_events{}", if keys { "_with_keys" } else { "" });
            group.bench_function(format!("{name}_one_at_a_time"), |b| {
                b.iter(|| {
                    let entry = new_entry(events, keys, &mut n);
                    rt.block_on(engine.append(entry)).unwrap()
                })
            });
            group.throughput(Throughput::Elements(IN_FLIGHT as u64));
            group.bench_function(format!("{name}_{IN_FLIGHT}_at_once"), |b| {
                b.iter(|| {
                    let entries: Vec<_> = (0..IN_FLIGHT)
                        .map(|_| new_entry(events, keys, &mut n))
                        .collect();
                    rt.block_on(async {
                        let tasks: Vec<_> = entries
                            .into_iter()
                            .map(|entry| {
                                let engine = engine.clone();
                                tokio::spawn(async move { engine.append(entry).await.unwrap() })
                            })
                            .collect();
                        for task in tasks {
                            task.await.unwrap();
                        }
                    })
                })
            });
            group.finish();
        }
    }
}

/// Redis commands per append, counted by Redis itself, with three nodes
/// tailing: the calls a client sends (`evalsha`, `xread`) and those the
/// script makes inside (`set`, `xadd`, …). Nothing here depends on how many
/// devices subscribe: the engine never sees them.
fn commands_per_append(_: &mut Criterion) {
    const APPENDS: u64 = 1000;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let redis = RedisServer::start().unwrap();
    rt.block_on(async {
        let engine = Engine::connect(ClusterConfig::new(redis.url(), "bench"))
            .await
            .unwrap();
        // Load the script first, so the count is the steady state.
        engine.append(new_entry(1, false, &mut 0)).await.unwrap();
        let start = engine.head().await.unwrap();
        let tails: Vec<_> = (0..3)
            .map(|_| {
                let mut tail = engine.tail(start);
                tokio::spawn(async move {
                    for _ in 0..APPENDS {
                        tail.next().await.unwrap();
                    }
                })
            })
            .collect();
        for (events, keys) in [(1, false), (64, true)] {
            let _: () = redis.query(&["CONFIG", "RESETSTAT"]).unwrap();
            let mut n = u64::from(keys) << 40;
            for _ in 0..APPENDS / 2 {
                engine.append(new_entry(events, keys, &mut n)).await.unwrap();
            }
            let calls = redis.command_calls().unwrap();
            let total: u64 = calls
                .iter()
                .filter(|(name, _)| name != "config" && name != "info")
                .map(|(_, c)| c)
                .sum();
            let per = |name: &str| {
                let c = calls.iter().find(|(n, _)| n == name).map_or(0, |(_, c)| *c);
                c as f64 / (APPENDS / 2) as f64
            };
            println!(
                "cluster_commands_per_append/{events}_events{}: {:.2} in all \
                 (evalsha {:.2}, xread {:.2} for 3 tails, get {:.2}, set {:.2}, xadd {:.2}, time {:.2})",
                if keys { "_with_keys" } else { "" },
                total as f64 / (APPENDS / 2) as f64,
                per("evalsha"),
                per("xread"),
                per("get"),
                per("set"),
                per("xadd"),
                per("time"),
            );
        }
        for tail in tails {
            tail.await.unwrap();
        }
    });
}

criterion_group!(benches, appends, commands_per_append);
criterion_main!(benches);
