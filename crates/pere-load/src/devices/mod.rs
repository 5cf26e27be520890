//! N simulated devices, each on its own event-stream connection, counting
//! what they receive and optionally acknowledging every event.
//!
//! Device `i` is `<prefix>-<i>` and follows channel [`channel_name`]`(base,
//! channels, i)`. A device stops after `count` distinct events, at the run's
//! deadline, or when its stream ends before that (the server closed it, or
//! the connection failed: a disconnect). With [`Config::resume`] a device
//! whose stream ended reconnects with `Last-Event-ID`, as an EventSource
//! would, and carries on.
//!
//! What a device did not get is reported by why, never as one number
//! ([`Report`]). Where a missing event stood in the stream is known from its
//! id, as the devices that did receive it saw it (with several publishers,
//! sequence numbers are not in id order):
//!
//! - `lost`: holes, events whose id is below the highest id the device
//!   received: the server sent a later event and not this one. The server
//!   is to blame, unless the event was published before the stream was live
//!   (`lost_before_first`: ids below the device's first one; callers publish
//!   only after `devices ready`). Holes a `pere.gap` notice announced (the
//!   device resumed from further back than the server retains) are
//!   `lost_in_gaps` instead: lost, but not silently.
//! - `not_arrived_by_deadline`: what a device was still waiting for, its
//!   stream open, when the run's deadline came: late (a backlog) or stalled.
//! - `missed_after_disconnect`: what came after the last event a device got
//!   before its stream ended for good. PERE closes the stream of a device
//!   too slow for its queue and expects it to resume with `Last-Event-ID`;
//!   without [`Config::resume`] the device does not.
//!
//! An event no device of its channel received has no known place: it
//! counts by how its device ended, and `unseen_events` counts it once (an
//! event never published, see `pere-pub`'s `failed`, or lost to every
//! device). Without `--count`, sequence numbers stand in for ids.
//!
//! Receipts go over keep-alive connections of their own, one per device
//! unless fewer are asked for, as JSON arrays of whatever accumulated while
//! the previous receipt was in flight ([`AckMode::Batch`]) or one request per
//! event ([`AckMode::Each`]).

mod acks;
mod device;
mod missing;
mod pipeline;
mod report;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use pere_http::client::Address;

use crate::{Flavor, Histogram, StopSignals, source_for};
use acks::ack_worker;
use device::device;
use missing::{Unfinished, id_tables};
pub use report::Report;
use report::report;

/// How devices acknowledge events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckMode {
    /// One JSON array per request: every event received while the previous
    /// receipt was in flight.
    Batch,
    /// One request per event.
    Each,
}

/// A device swarm's settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// The server.
    pub addr: Address,
    /// The channel, or the base of the channel names when `channels` > 1.
    pub channel: String,
    /// Channels the devices are spread over (round robin).
    pub channels: u32,
    /// Devices (one stream connection each).
    pub devices: u32,
    /// PERE or nchan.
    pub flavor: Flavor,
    /// Events each device expects; it stops after them.
    pub count: Option<u64>,
    /// Bound on the whole run, from its start.
    pub duration: Option<Duration>,
    /// Receipts, if any (PERE only).
    pub ack: Option<AckMode>,
    /// Receipt connections (default: one per device).
    pub ack_connections: Option<u32>,
    /// With [`AckMode::Each`]: receipt requests written at once on each
    /// receipt connection before their answers are read (HTTP/1.1
    /// pipelining); 1 sends one at a time.
    pub ack_pipeline: u32,
    /// Receipt status.
    pub status: String,
    /// Device ids are `<prefix>-<n>`.
    pub device_prefix: String,
    /// Streams being opened at once during the ramp (and reconnections).
    pub connect_concurrency: usize,
    /// A device whose stream ends before it is done reconnects with
    /// `Last-Event-ID` (the last event id it received), as an EventSource
    /// would; without it the device stops there.
    pub resume: bool,
}

/// Connections opened beyond the devices' own (receipts), for the
/// descriptor budget.
pub fn connections_needed(config: &Config) -> u64 {
    let acks = match config.ack {
        Some(_) => u64::from(config.ack_connections.unwrap_or(config.devices)),
        None => 0,
    };
    u64::from(config.devices) + acks
}

/// Counters the device tasks share.
#[derive(Default)]
struct Shared {
    ready: AtomicU64,
    deliveries: AtomicU64,
    duplicates: AtomicU64,
    reordered: AtomicU64,
    disconnects: AtomicU64,
    closed_by_server: AtomicU64,
    stream_errors: AtomicU64,
    reconnects: AtomicU64,
    devices_at_deadline: AtomicU64,
    quiet_at_deadline_max_us: AtomicU64,
    reported: AtomicU64,
    failed: AtomicU64,
    gaps: AtomicU64,
    bad_payloads: AtomicU64,
    completed: AtomicU64,
    first_delivery: AtomicU64,
    last_delivery: AtomicU64,
    latency: Histogram,
    acks_sent: AtomicU64,
    acked: AtomicU64,
    ack_failures: AtomicU64,
    first_ack: AtomicU64,
    last_ack: AtomicU64,
    /// Per event (channel << 32 | seq): send time, acks, last ack time.
    ack_tracker: Mutex<HashMap<u64, (u64, u32, u64)>>,
    /// Per channel index: every sequence number some device received, and
    /// the highest count of events a device of the channel expected.
    union: Mutex<HashMap<u64, (Vec<u64>, u64)>>,
    /// Per channel index, when `count` is known (and small enough): the
    /// order of the event id each sequence number was delivered with, as
    /// the first device to get it saw it (0: no device did). With several
    /// publishers, sequence order is not id order; this says where a
    /// missing event stood in the stream.
    ids: Vec<Vec<AtomicU64>>,
    /// Devices that stopped short of what they expected, sorted by why once
    /// every device is done ([`classify`]).
    unfinished: Mutex<Vec<Unfinished>>,
    first_error: Mutex<Option<String>>,
    first_disconnect: Mutex<Option<String>>,
}

impl Shared {
    fn error(&self, text: String) {
        first(&self.first_error, text);
    }
}

fn first(slot: &Mutex<Option<String>>, text: String) {
    let mut first = slot.lock().unwrap_or_else(|e| e.into_inner());
    if first.is_none() {
        *first = Some(text);
    }
}

fn note_time(first: &AtomicU64, last: &AtomicU64, now: u64) {
    if first.load(Ordering::Relaxed) == 0 {
        let _ = first.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }
    last.fetch_max(now, Ordering::Relaxed);
}

/// Runs the swarm until every device is done or the deadline; `notice` is
/// told about progress (`"N/N devices ready"` once all streams are open).
///
/// # Errors
/// The server's address does not resolve.
pub async fn run(config: Config, notice: impl Fn(&str)) -> std::io::Result<Report> {
    let server = crate::resolve(&config.addr).await?;
    let config = Arc::new(config);
    let shared = Arc::new(Shared {
        ids: id_tables(&config),
        ..Shared::default()
    });
    let start = Instant::now();
    let deadline = config.duration.map(|d| start + d);
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut ack_workers = JoinSet::new();
    let mut ack_txs = Vec::new();
    if config.ack.is_some() && config.flavor == Flavor::Pere {
        let n = config
            .ack_connections
            .unwrap_or(config.devices)
            .clamp(1, config.devices.max(1));
        for w in 0..n {
            let (tx, rx) = mpsc::unbounded_channel();
            ack_txs.push(tx);
            let source = source_for(server, u64::from(config.devices) + u64::from(w));
            ack_workers.spawn(ack_worker(
                config.clone(),
                shared.clone(),
                server,
                source,
                rx,
            ));
        }
    }

    let gate = Arc::new(Semaphore::new(config.connect_concurrency.max(1)));
    let mut devices = JoinSet::new();
    for i in 0..config.devices {
        let ack = (!ack_txs.is_empty()).then(|| ack_txs[i as usize % ack_txs.len()].clone());
        devices.spawn(device(
            i,
            config.clone(),
            shared.clone(),
            server,
            gate.clone(),
            ack,
            stop_rx.clone(),
            start,
        ));
    }
    drop(ack_txs);

    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    let mut announced = false;
    let mut ramp_seconds = 0.0;
    let mut last_progress = Instant::now();
    let mut signals = StopSignals::new();
    let mut interrupted = None;
    loop {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            joined = devices.join_next() => {
                if joined.is_none() {
                    break;
                }
            }
            _ = ticker.tick() => {
                let ready = shared.ready.load(Ordering::Relaxed);
                let settled = ready + shared.failed.load(Ordering::Relaxed);
                if !announced && settled >= u64::from(config.devices) {
                    announced = true;
                    ramp_seconds = start.elapsed().as_secs_f64();
                    notice(&format!(
                        "{ready}/{} devices ready ({} failed) in {ramp_seconds:.1} s",
                        config.devices,
                        shared.failed.load(Ordering::Relaxed)
                    ));
                } else if last_progress.elapsed() >= Duration::from_secs(5) {
                    last_progress = Instant::now();
                    notice(&format!(
                        "{ready}/{} devices ready, {} events received",
                        config.devices,
                        shared.deliveries.load(Ordering::Relaxed)
                    ));
                }
            }
            () = sleep => {
                notice("the duration passed; stopping");
                let _ = stop_tx.send(true);
                break;
            }
            sig = signals.recv() => {
                notice("interrupted; stopping (a second signal ends at once)");
                interrupted = Some(sig);
                let _ = stop_tx.send(true);
                break;
            }
        }
    }
    signals.exit_on_next("pere-sub");
    // Devices see the stop signal at their next poll; give them a moment.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while devices.join_next().await.is_some() {}
    })
    .await;
    devices.abort_all();
    // Receipt workers end once the devices' senders are gone and their
    // queues are drained.
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while ack_workers.join_next().await.is_some() {}
    })
    .await;
    ack_workers.abort_all();
    let mut report = report(&config, &shared, ramp_seconds);
    report.interrupted = interrupted;
    Ok(report)
}

fn request(
    config: &Config,
    method: Method,
    path: &str,
    device: Option<&str>,
    body: Bytes,
) -> Option<Request<Full<Bytes>>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, config.addr.to_string());
    if let Some(device) = device {
        builder = builder.header("device", HeaderValue::from_str(device).ok()?);
    }
    if !body.is_empty() {
        builder = builder.header(header::CONTENT_TYPE, "application/json");
    } else {
        builder = builder.header(header::ACCEPT, "text/event-stream");
    }
    builder.body(Full::new(body)).ok()
}
