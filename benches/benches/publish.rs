//! Publishing over HTTP with 64 concurrent keep-alive publishers, against the
//! in-memory store and the durable file store (fsync always and never), in
//! the same run. Reports publishes per second (criterion's throughput).
//!
//! `cargo bench -p pere-benches --bench publish`

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pere_benches::{BenchServer, Publisher, payload};
use pere_core::{FileStore, FileStoreConfig, Fsync, MemoryStore, Retention};

const PUBLISHERS: usize = 64;
const PER_ITERATION: usize = 64 * 16;

fn publish(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("http_publish_64_publishers");
    group.throughput(Throughput::Elements(PER_ITERATION as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    let body = payload(128);
    let retention = Retention {
        history: 1000,
        max_age: None,
    };
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let servers = rt.block_on(async {
        let file = |dir: &tempfile::TempDir, fsync| {
            FileStore::open(FileStoreConfig {
                fsync,
                retention,
                ..FileStoreConfig::new(dir.path())
            })
            .unwrap()
        };
        vec![
            (
                "memory",
                BenchServer::start(MemoryStore::new(retention)).await,
            ),
            (
                "file_fsync_always",
                BenchServer::start(file(&dirs[0], Fsync::Always)).await,
            ),
            (
                "file_fsync_never",
                BenchServer::start(file(&dirs[1], Fsync::Never)).await,
            ),
        ]
    });
    for (name, server) in &servers {
        let addr = server.addr;
        let mut publishers = rt.block_on(async {
            let mut v = Vec::new();
            for _ in 0..PUBLISHERS {
                v.push(Publisher::connect(addr).await);
            }
            v
        });
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let mut tasks = Vec::with_capacity(PUBLISHERS);
                        for mut p in publishers.drain(..) {
                            let body = body.clone();
                            tasks.push(tokio::spawn(async move {
                                for _ in 0..PER_ITERATION / PUBLISHERS {
                                    p.publish("bench", &body).await;
                                }
                                p
                            }));
                        }
                        for t in tasks {
                            publishers.push(t.await.unwrap());
                        }
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
    drop(servers);
}

criterion_group!(benches, publish);
criterion_main!(benches);
