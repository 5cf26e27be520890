//! Receipts with 10,000 devices: the ledger alone (an event's receipts, one
//! delivery mark and one ack per device) and through the hub (`ack_batch`:
//! writer task, journal record, presence), as `POST /feedback` with a JSON
//! array does. Reports receipt updates per second.
//!
//! `cargo bench -p pere-benches --bench ledger`

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pere_benches::payload;
use pere_core::ReceiptLog;
use pere_core::ledger::EventReceipts;
use pere_core::{
    ChannelName, DeviceId, Event, EventId, Hub, HubConfig, MemoryStore, Pattern, Publish, Resume,
    Retention, SubscribeRequest, Timestamp,
};

const DEVICES: usize = 10_000;

fn devices() -> Vec<DeviceId> {
    (0..DEVICES)
        .map(|i| DeviceId::new(&format!("dev-{i}")).unwrap())
        .collect()
}

fn ledger_alone(c: &mut Criterion) {
    let devices = devices();
    let audience: Arc<[DeviceId]> = devices.clone().into();
    let channel = ChannelName::new("ledger").unwrap();
    let status: Arc<str> = Arc::from("ok");
    let mut group = c.benchmark_group("ledger_10k_devices");
    group.throughput(Throughput::Elements(DEVICES as u64));
    group.bench_function("deliver_slot_then_ack", |b| {
        b.iter(|| {
            let event = Arc::new(Event {
                id: EventId(1),
                channel: channel.clone(),
                kind: None,
                device: None,
                time: Timestamp::now(),
                payload: Bytes::from_static(b"{}"),
                idempotency_key: None,
            });
            let receipts =
                EventReceipts::new(event, audience.clone(), Arc::new(ReceiptLog::default()));
            let now = Timestamp::now();
            for slot in 0..DEVICES as u32 {
                receipts.mark_delivered_slot(slot, now);
            }
            for device in &devices {
                receipts.ack(device, status.clone(), now);
            }
            assert_eq!(receipts.unacked(), 0);
        });
    });
    group.finish();
}

fn hub_acks(c: &mut Criterion) {
    hub_acks_beside(c, "hub_ack_batch", 0);
    // A receipt looks only at the subscriptions its channel matches, not
    // at every channel's (it walked them all before).
    hub_acks_beside(c, "hub_ack_batch_beside_1k_channels", 1000);
}

/// `hub_ack_batch` with `others` other channels, each with a member.
fn hub_acks_beside(c: &mut Criterion, name: &str, others: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let devices = devices();
    let pattern = Pattern::new("ledger").unwrap();
    let channel = ChannelName::new("ledger").unwrap();
    let body = Bytes::from(payload(128));
    let hub = rt.block_on(async {
        let retention = Retention {
            history: 8,
            max_age: None,
        };
        let hub = Hub::open(HubConfig::default(), MemoryStore::new(retention))
            .await
            .unwrap();
        // Members stay members after their stream closes (member TTL), so
        // every device is in each event's audience.
        for device in &devices {
            let req = SubscribeRequest {
                device: Some(device.clone()),
                patterns: vec![pattern.clone()],
                resume: Resume::Auto,
            };
            drop(hub.subscribe(req, None).await.unwrap());
        }
        for n in 0..others {
            let req = SubscribeRequest {
                device: Some(DeviceId::new(&format!("other-{n}")).unwrap()),
                patterns: vec![Pattern::new(&format!("other.{n}")).unwrap()],
                resume: Resume::Auto,
            };
            drop(hub.subscribe(req, None).await.unwrap());
        }
        hub
    });
    let mut group = c.benchmark_group("ledger_10k_devices");
    group.throughput(Throughput::Elements(DEVICES as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let published = hub
                        .publish(Publish::new(channel.clone(), body.clone()))
                        .await
                        .unwrap();
                    assert_eq!(published.recipients, DEVICES);
                    let items: Vec<_> = devices
                        .iter()
                        .map(|d| (pattern.clone(), d.clone(), published.id, "ok".to_string()))
                        .collect();
                    let start = Instant::now();
                    let results = hub.ack_batch(items).await;
                    spent += start.elapsed();
                    assert!(results.iter().all(Result::is_ok));
                }
                spent
            })
        });
    });
    group.finish();
    rt.block_on(hub.shutdown());
}

criterion_group!(benches, ledger_alone, hub_acks);
criterion_main!(benches);
