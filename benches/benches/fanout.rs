//! Fan-out in process: one event published to a channel with 1k, 10k and
//! 100k subscribed devices, then every device's stream drained and its SSE
//! frame taken, as the HTTP body does. Reports deliveries per second
//! (criterion's throughput), so the time per element is the cost of one
//! delivery: queueing, the receipt mark, the cursor and the shared frame.
//!
//! `cargo bench -p pere-benches --bench fanout`

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pere_benches::payload;
use pere_core::{
    ChannelName, DeviceId, Hub, HubConfig, MemoryStore, Pattern, Publish, Resume, Retention,
    SubscribeRequest, Subscription,
};

fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("fanout_one_event");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    let body = Bytes::from(payload(128));
    for devices in [1_000usize, 10_000, 100_000] {
        // A short history: each retained event holds a receipt slot per
        // device, and the bench is about fan-out, not retention.
        let retention = Retention {
            history: 8,
            max_age: None,
        };
        let channel = ChannelName::new("fanout").unwrap();
        let (hub, mut subs) = rt.block_on(async {
            let hub = Hub::open(HubConfig::default(), MemoryStore::new(retention))
                .await
                .unwrap();
            let mut subs: Vec<Subscription> = Vec::with_capacity(devices);
            for i in 0..devices {
                let req = SubscribeRequest {
                    device: Some(DeviceId::new(&format!("dev-{i}")).unwrap()),
                    patterns: vec![Pattern::new("fanout").unwrap()],
                    resume: Resume::Auto,
                };
                subs.push(hub.subscribe(req, None).await.unwrap());
            }
            (hub, subs)
        });
        group.throughput(Throughput::Elements(devices as u64));
        group.bench_with_input(BenchmarkId::from_parameter(devices), &devices, |b, _| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        hub.publish(Publish::new(channel.clone(), body.clone()))
                            .await
                            .unwrap();
                        let mut bytes = 0;
                        for sub in &mut subs {
                            let outgoing = sub.try_next_outgoing().unwrap();
                            bytes += pere_http::server::body::outgoing_frame(
                                &outgoing,
                                Default::default(),
                            )
                            .len();
                        }
                        std::hint::black_box(bytes);
                    }
                    start.elapsed()
                })
            });
        });
        drop(subs);
        rt.block_on(hub.shutdown());
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
