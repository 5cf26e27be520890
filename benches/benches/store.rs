//! The stores: appending batches (memory, file with and without fsync),
//! reading a channel's range, and recovering a file store of 1,000,000
//! events (hub included: what `pere-server` does at start).
//!
//! `cargo bench -p pere-benches --bench store`

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pere_core::{
    ChannelName, Event, EventId, EventStore, FileStore, FileStoreConfig, Fsync, Hub, HubConfig,
    MemoryStore, Record, Retention, Timestamp,
};

const BATCH: usize = 64;
const RECOVERY_EVENTS: u64 = 1_000_000;

fn event(id: u64, channel: &ChannelName, payload: &Bytes) -> Record {
    Record::Event(Arc::new(Event {
        id: EventId(id),
        channel: channel.clone(),
        kind: None,
        device: None,
        time: Timestamp::now(),
        payload: payload.clone(),
        idempotency_key: None,
    }))
}

fn retention() -> Retention {
    Retention {
        history: 1000,
        max_age: None,
    }
}

fn append(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let payload = Bytes::from(vec![b'x'; 128]);
    let channels: Vec<ChannelName> = (0..16)
        .map(|i| ChannelName::new(&format!("bench.{i}")).unwrap())
        .collect();
    let mut group = c.benchmark_group("store_append_batch_64");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    let mut next = 1u64;
    let batch = |next: &mut u64| -> Vec<Record> {
        (0..BATCH)
            .map(|i| {
                *next += 1;
                event(*next, &channels[i % channels.len()], &payload)
            })
            .collect()
    };
    let memory = MemoryStore::new(retention());
    group.bench_function("memory", |b| {
        b.iter(|| rt.block_on(memory.append(&batch(&mut next))).unwrap())
    });
    for fsync in [Fsync::Never, Fsync::Always] {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(FileStoreConfig {
            fsync,
            retention: retention(),
            ..FileStoreConfig::new(dir.path())
        })
        .unwrap();
        let name = format!(
            "file_fsync_{}",
            if fsync == Fsync::Always {
                "always"
            } else {
                "never"
            }
        );
        group.bench_function(name, |b| {
            b.iter(|| rt.block_on(store.append(&batch(&mut next))).unwrap())
        });
        rt.block_on(store.close()).unwrap();
    }
    group.finish();

    let mut group = c.benchmark_group("store_read");
    let store = MemoryStore::new(retention());
    rt.block_on(
        store.append(
            &(1..=1000)
                .map(|i| event(i, &channels[0], &payload))
                .collect::<Vec<_>>(),
        ),
    )
    .unwrap();
    for n in [10usize, 100, 1000] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("memory_range", n), &n, |b, &n| {
            b.iter(|| {
                rt.block_on(store.read(
                    &channels[0],
                    EventId(1000 - n as u64),
                    EventId(u64::MAX),
                    n,
                ))
                .unwrap()
            })
        });
    }
    group.finish();
}

/// A directory holding 1,000,000 events on 1,000 channels, built once per
/// run (with fsync off: only the reading is measured).
fn recovery_dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let store = FileStore::open(FileStoreConfig {
            fsync: Fsync::Never,
            retention: Retention {
                history: 1000,
                max_age: None,
            },
            ..FileStoreConfig::new(dir.path())
        })
        .unwrap();
        let payload = Bytes::from(vec![b'x'; 128]);
        let channels: Vec<ChannelName> = (0..1000)
            .map(|i| ChannelName::new(&format!("recover.{i}")).unwrap())
            .collect();
        let started = Instant::now();
        let mut id = 1_000_000u64;
        rt.block_on(async {
            for chunk in 0..(RECOVERY_EVENTS / 1000) {
                let batch: Vec<Record> = (0..1000)
                    .map(|i| {
                        id += 1;
                        event(
                            id,
                            &channels[((chunk * 1000 + i) % 1000) as usize],
                            &payload,
                        )
                    })
                    .collect();
                store.append(&batch).await.unwrap();
            }
            store.close().await.unwrap();
        });
        eprintln!("wrote {RECOVERY_EVENTS} events in {:?}", started.elapsed());
        dir
    })
}

fn recovery(c: &mut Criterion) {
    let dir = recovery_dir();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("recovery");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(30));
    group.throughput(Throughput::Elements(RECOVERY_EVENTS));
    // Recovery is the time until the hub can serve: opening the store
    // (scan, checksums, retention) and rebuilding the hub's state. Shutting
    // down and freeing 1M events afterwards is not part of it, so it is done
    // outside the timed section.
    group.bench_function("file_store_and_hub_1M_events", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                rt.block_on(async {
                    let started = Instant::now();
                    let store = FileStore::open(FileStoreConfig {
                        retention: Retention {
                            history: 1000,
                            max_age: None,
                        },
                        ..FileStoreConfig::new(dir.path())
                    })
                    .unwrap();
                    let hub = Hub::open(HubConfig::default(), store).await.unwrap();
                    total += started.elapsed();
                    assert_eq!(
                        hub.stats().await.unwrap().retained,
                        RECOVERY_EVENTS as usize
                    );
                    hub.shutdown().await;
                });
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, append, recovery);
criterion_main!(benches);
