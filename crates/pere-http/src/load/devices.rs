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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{
    Conn, Flavor, Histogram, Stamp, StopSignals, channel_name, id_key, open, source_for,
    unix_micros,
};
use crate::client::Address;
use crate::sse::{Decoder, Item};

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

/// One receipt to send.
struct AckItem {
    device: u32,
    id: String,
    t: u64,
    key: u64,
}

/// What a run measured.
#[derive(Debug)]
pub struct Report {
    /// Devices asked for.
    pub devices: u32,
    /// Devices whose stream opened.
    pub ready: u64,
    /// Devices that received all `count` events.
    pub completed: u64,
    /// Events received, all devices together.
    pub deliveries: u64,
    /// Events expected (`count` × devices), if a count was given.
    pub expected: Option<u64>,
    /// Holes: events a device did not receive although it received a later
    /// one (by event id, as other devices of the channel received the
    /// missing one; by sequence number without `count`). Summed over
    /// devices.
    pub lost: u64,
    /// Of `lost`, those before the first event the device received:
    /// published before its stream was live if publishing began before
    /// every device was ready (callers wait for `devices ready`), a loss at
    /// the start of the stream otherwise.
    pub lost_before_first: u64,
    /// Holes a `pere.gap` notice announced: the device resumed from a
    /// point older than the server retains (`--history`), so the events in
    /// between were lost to it, and it was told. Not in `lost`.
    pub lost_in_gaps: u64,
    /// Events a device was still waiting for, its stream open, when the
    /// run's deadline (or an interrupt) stopped it: late, or never coming.
    pub not_arrived_by_deadline: u64,
    /// Events after the last one a device received before its stream ended
    /// for good (without `resume`, at its first disconnect).
    pub missed_after_disconnect: u64,
    /// Sequence numbers below `count` (or the highest one seen) that no
    /// device of their channel received: never published, lost to every
    /// device, or every device had stopped. Counted once per channel and
    /// sequence number, not per device; each one is also in one of the
    /// three counts above.
    pub unseen_events: u64,
    /// Events a device received twice.
    pub duplicates: u64,
    /// Events whose id was below the previous one's.
    pub reordered: u64,
    /// Streams that ended before their device was done: `closed_by_server`
    /// plus `stream_errors`.
    pub disconnects: u64,
    /// Streams the server ended cleanly (the end of the chunked body): a
    /// device too slow for its queue (`--queue-capacity`), shutdown, a
    /// revoked grant or a removed membership.
    pub closed_by_server: u64,
    /// Streams whose connection failed (reset, read error).
    pub stream_errors: u64,
    /// Streams reopened with `Last-Event-ID` after a disconnect (`resume`).
    pub reconnects: u64,
    /// Devices still waiting, stream open, at the deadline.
    pub devices_at_deadline: u64,
    /// Of those, the longest time since one last received an event (or its
    /// stream opened), ms: a long quiet means a stall, a short one a backlog.
    pub quiet_at_deadline_max_ms: f64,
    /// Devices that had not finished counting 10 s after the stop and were
    /// aborted: their missing events are in none of the counts.
    pub unreported: u64,
    /// Streams that could not be opened.
    pub failed: u64,
    /// `pere.gap` notices.
    pub gaps: u64,
    /// Events whose payload was not a load payload.
    pub bad_payloads: u64,
    /// First to last delivery, seconds.
    pub delivery_seconds: f64,
    /// Publish → delivered latency, µs.
    pub latency: serde_json::Value,
    /// Receipts: sent, acked, failed, per second, publish → all-acked.
    pub receipts: Option<serde_json::Value>,
    /// Time to open every stream, seconds.
    pub ramp_seconds: f64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
    /// How the first disconnect happened: which device, when, after how
    /// many events, and why.
    pub first_disconnect: Option<String>,
    /// People's summary lines.
    pub text: Vec<String>,
}

impl Report {
    /// The report as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let rate = if self.delivery_seconds > 0.0 {
            self.deliveries as f64 / self.delivery_seconds
        } else {
            0.0
        };
        serde_json::json!({
            "mode": "devices",
            "devices": self.devices,
            "ready": self.ready,
            "completed": self.completed,
            "deliveries": self.deliveries,
            "expected": self.expected,
            "lost": self.lost,
            "lost_before_first": self.lost_before_first,
            "lost_in_gaps": self.lost_in_gaps,
            "not_arrived_by_deadline": self.not_arrived_by_deadline,
            "missed_after_disconnect": self.missed_after_disconnect,
            "unseen_events": self.unseen_events,
            "duplicates": self.duplicates,
            "reordered": self.reordered,
            "disconnects": self.disconnects,
            "closed_by_server": self.closed_by_server,
            "stream_errors": self.stream_errors,
            "reconnects": self.reconnects,
            "devices_at_deadline": self.devices_at_deadline,
            "quiet_at_deadline_max_ms": self.quiet_at_deadline_max_ms,
            "unreported": self.unreported,
            "failed": self.failed,
            "gaps": self.gaps,
            "bad_payloads": self.bad_payloads,
            "delivery_seconds": self.delivery_seconds,
            "deliveries_per_second": rate,
            "latency_us": self.latency,
            "receipts": self.receipts,
            "ramp_seconds": self.ramp_seconds,
            "first_error": self.first_error,
            "first_disconnect": self.first_disconnect,
        })
    }

    /// Events expected and not received, whatever the reason.
    pub fn missing(&self) -> u64 {
        self.lost + self.lost_in_gaps + self.not_arrived_by_deadline + self.missed_after_disconnect
    }
}

/// Runs the swarm until every device is done or the deadline; `notice` is
/// told about progress (`"N/N devices ready"` once all streams are open).
///
/// # Errors
/// The server's address does not resolve.
pub async fn run(config: Config, notice: impl Fn(&str)) -> std::io::Result<Report> {
    let server = super::resolve(&config.addr).await?;
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
            () = signals.recv() => {
                notice("interrupted; stopping");
                let _ = stop_tx.send(true);
                break;
            }
        }
    }
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
    Ok(report(&config, &shared, ramp_seconds))
}

fn report(config: &Config, s: &Shared, ramp_seconds: f64) -> Report {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let unreported = u64::from(config.devices).saturating_sub(load(&s.reported));
    let unseen_events: u64 = s
        .union
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .map(|(bits, upto)| missing_below(bits, *upto))
        .sum();
    let quiet_at_deadline_max_ms = load(&s.quiet_at_deadline_max_us) as f64 / 1000.0;
    let mut missing = Missing::default();
    for u in s
        .unfinished
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        let ids = s.ids.get(u.channel as usize).map_or(&[][..], Vec::as_slice);
        classify(u, ids, &mut missing);
    }
    let delivery_seconds =
        load(&s.last_delivery).saturating_sub(load(&s.first_delivery)) as f64 / 1e6;
    let deliveries = load(&s.deliveries);
    let mut text = vec![format!(
        "{} devices ({} ready, {} failed, {} completed): {} events received in {:.2} s = {:.0} deliveries/s",
        config.devices,
        load(&s.ready),
        load(&s.failed),
        load(&s.completed),
        deliveries,
        delivery_seconds,
        if delivery_seconds > 0.0 {
            deliveries as f64 / delivery_seconds
        } else {
            0.0
        }
    )];
    text.push(format!(
        "latency publish→delivered: {}",
        s.latency.summary_text()
    ));
    text.push(format!(
        "missing: lost (holes in a stream) {} ({} before the device's first event), lost in announced gaps {}, not arrived by the deadline {} ({} devices waiting, quiet up to {:.0} ms), missed after a disconnect {}; {} sequence numbers no device received",
        missing.lost,
        missing.lost_before_first,
        missing.lost_in_gaps,
        missing.not_arrived_by_deadline,
        load(&s.devices_at_deadline),
        quiet_at_deadline_max_ms,
        missing.missed_after_disconnect,
        unseen_events,
    ));
    text.push(format!(
        "duplicates {}, reordered {}, disconnects {} ({} closed by the server, {} connection errors), reconnects {}, gaps {}, bad payloads {}",
        load(&s.duplicates),
        load(&s.reordered),
        load(&s.disconnects),
        load(&s.closed_by_server),
        load(&s.stream_errors),
        load(&s.reconnects),
        load(&s.gaps),
        load(&s.bad_payloads)
    ));
    if unreported > 0 {
        text.push(format!(
            "{unreported} devices were aborted before they counted what they missed"
        ));
    }
    let receipts = config.ack.map(|mode| {
        let seconds = load(&s.last_ack).saturating_sub(load(&s.first_ack)) as f64 / 1e6;
        let acked = load(&s.acked);
        let all_acked = Histogram::default();
        let tracker = s.ack_tracker.lock().unwrap_or_else(|e| e.into_inner());
        let channels = config.channels.max(1);
        for (key, (t, n, last)) in tracker.iter() {
            let channel = (key >> 32) as u32;
            let audience =
                config.devices / channels + u32::from(channel < config.devices % channels);
            if *n >= audience {
                all_acked.record(last.saturating_sub(*t));
            }
        }
        let events = tracker.len();
        drop(tracker);
        let per_s = if seconds > 0.0 {
            acked as f64 / seconds
        } else {
            0.0
        };
        text.push(format!(
            "receipts ({}): {} sent, {} acked, {} failed in {:.2} s = {:.0} receipts/s",
            match mode {
                AckMode::Batch => "batched",
                AckMode::Each => "one per event",
            },
            load(&s.acks_sent),
            acked,
            load(&s.ack_failures),
            seconds,
            per_s
        ));
        text.push(format!(
            "publish→all-acked ({} of {} events): {}",
            all_acked.count(),
            events,
            all_acked.summary_text()
        ));
        serde_json::json!({
            "mode": match mode { AckMode::Batch => "batch", AckMode::Each => "each" },
            "sent": load(&s.acks_sent),
            "acked": acked,
            "failed": load(&s.ack_failures),
            "seconds": seconds,
            "per_second": per_s,
            "events": events,
            "all_acked_us": all_acked.summary_json(),
        })
    });
    Report {
        devices: config.devices,
        ready: load(&s.ready),
        completed: load(&s.completed),
        deliveries,
        expected: config.count.map(|c| c * u64::from(config.devices)),
        lost: missing.lost,
        lost_before_first: missing.lost_before_first,
        lost_in_gaps: missing.lost_in_gaps,
        not_arrived_by_deadline: missing.not_arrived_by_deadline,
        missed_after_disconnect: missing.missed_after_disconnect,
        unseen_events,
        duplicates: load(&s.duplicates),
        reordered: load(&s.reordered),
        disconnects: load(&s.disconnects),
        closed_by_server: load(&s.closed_by_server),
        stream_errors: load(&s.stream_errors),
        reconnects: load(&s.reconnects),
        devices_at_deadline: load(&s.devices_at_deadline),
        quiet_at_deadline_max_ms,
        unreported,
        failed: load(&s.failed),
        gaps: load(&s.gaps),
        bad_payloads: load(&s.bad_payloads),
        delivery_seconds,
        latency: s.latency.summary_json(),
        receipts,
        ramp_seconds,
        first_error: s
            .first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        first_disconnect: s
            .first_disconnect
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        text,
    }
}

/// What one device saw.
#[derive(Default)]
struct Seen {
    received: u64,
    /// Distinct sequence numbers received.
    distinct: u64,
    last_id: Option<(u64, u64)>,
    /// Smallest and largest [`order_of`] of the ids received.
    first_order: Option<u64>,
    max_order: Option<u64>,
    /// Id ranges (exclusive) that `pere.gap` notices said were lost to this
    /// device: from its resume point to the oldest event still retained
    /// (or, when the server named none, the next event that came).
    gaps: Vec<(u64, u64)>,
    /// A gap whose end is the next event to come.
    open_gap: Option<u64>,
    /// Bit per channel sequence number received.
    bits: Vec<u64>,
    duplicates: u64,
    reordered: u64,
}

impl Seen {
    /// Records `seq`; whether it was new.
    fn mark(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.bits.len() {
            if word > 1 << 24 {
                return true; // absurd sequence: not tracked
            }
            self.bits.resize(word + 1, 0);
        }
        let new = self.bits[word] & (1 << bit) == 0;
        self.bits[word] |= 1 << bit;
        new
    }

    /// Sequence numbers below `upto` never received.
    fn missing(&self, upto: u64) -> u64 {
        missing_below(&self.bits, upto)
    }

    fn highest(&self) -> Option<u64> {
        let w = self.bits.iter().rposition(|w| *w != 0)?;
        Some(w as u64 * 64 + 63 - u64::from(self.bits[w].leading_zeros()))
    }

    fn lowest(&self) -> Option<u64> {
        let w = self.bits.iter().position(|w| *w != 0)?;
        Some(w as u64 * 64 + u64::from(self.bits[w].trailing_zeros()))
    }

    /// What is missing of the first `expected` sequence numbers: holes
    /// (below the highest one received), of them those below the lowest one
    /// received, and the tail (after the highest).
    fn shortfall(&self, expected: u64) -> Shortfall {
        let upto = self.highest().map_or(0, |h| h + 1).min(expected);
        Shortfall {
            holes: self.missing(upto),
            before_first: self.lowest().unwrap_or(0).min(upto),
            tail: expected - upto,
        }
    }
}

/// What a device is missing of the events it expected.
#[derive(Debug, PartialEq, Eq)]
struct Shortfall {
    /// Below the highest sequence number received.
    holes: u64,
    /// Of `holes`, below the lowest one received.
    before_first: u64,
    /// After the highest one received.
    tail: u64,
}

/// Zero bits of `bits` below bit `upto` (bits past the end count as zero).
fn missing_below(bits: &[u64], upto: u64) -> u64 {
    let mut have = 0u64;
    for (w, word) in bits.iter().enumerate() {
        let base = w as u64 * 64;
        if base >= upto {
            break;
        }
        let mask = if upto - base >= 64 {
            u64::MAX
        } else {
            (1u64 << (upto - base)) - 1
        };
        have += u64::from((word & mask).count_ones());
    }
    upto - have
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

/// Why a device stopped reading a stream.
enum End {
    /// It received `count` distinct events.
    Done,
    /// The run's deadline or an interrupt, with the stream still open.
    Stopped,
    /// The server ended the stream (the chunked body's last chunk).
    Closed,
    /// The connection failed.
    Broke(String),
}

/// Opens device `i`'s stream, a few attempts, resuming after `last_id` if
/// given; the last error when it could not, or the run stopped first.
async fn open_stream(
    i: u32,
    config: &Config,
    server: SocketAddr,
    path: &str,
    device: Option<&str>,
    last_id: Option<&str>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(Conn, hyper::body::Incoming), String> {
    let mut last_error = String::from("the run stopped before the stream opened");
    for attempt in 0..5u32 {
        if *stop.borrow() {
            break;
        }
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
        let mut conn = match open(server, source_for(server, u64::from(i))).await {
            Ok(c) => c,
            Err(e) => {
                last_error = e;
                continue;
            }
        };
        let Some(mut req) = request(config, Method::GET, path, device, Bytes::new()) else {
            return Err(format!("cannot build the request for {path}"));
        };
        if let Some(id) = last_id
            && let Ok(value) = HeaderValue::from_str(id)
        {
            req.headers_mut().insert("last-event-id", value);
        }
        let answer = tokio::time::timeout(Duration::from_secs(30), conn.sender.send_request(req));
        let answer = tokio::select! {
            answer = answer => answer,
            _ = stop.changed() => break,
        };
        match answer {
            Ok(Ok(resp)) if resp.status() == StatusCode::OK => {
                return Ok((conn, resp.into_body()));
            }
            Ok(Ok(resp)) => last_error = format!("GET {path}: status {}", resp.status()),
            Ok(Err(e)) => last_error = format!("GET {path}: {e}"),
            Err(_) => last_error = format!("GET {path}: no answer within 30 s"),
        }
    }
    Err(last_error)
}

/// One device's state across its connections.
struct DeviceRun<'a> {
    i: u32,
    name: &'a str,
    config: &'a Config,
    shared: &'a Shared,
    channel_index: u64,
    ack: Option<mpsc::UnboundedSender<AckItem>>,
    seen: Seen,
    /// Counted in `ready` (its first stream said `pere.hello`).
    ready: bool,
    /// The ramp's bound, held until the stream is live.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The id of the last event received, for `Last-Event-ID`.
    last_event_id: Option<String>,
    /// When the device last received an event, or its stream opened.
    last_activity: Instant,
}

impl DeviceRun<'_> {
    fn live(&mut self) {
        if !self.ready {
            self.ready = true;
            self.shared.ready.fetch_add(1, Ordering::Relaxed);
        }
        drop(self.permit.take());
    }

    /// Reads one stream until the device is done, the run stops, or the
    /// stream ends.
    async fn read(
        &mut self,
        body: &mut hyper::body::Incoming,
        stop: &mut watch::Receiver<bool>,
    ) -> End {
        let mut decoder = Decoder::new();
        let mut items = Vec::new();
        self.last_activity = Instant::now();
        // nchan's stream is live once its head arrived; PERE's with
        // pere.hello.
        if self.config.flavor == Flavor::Nchan {
            self.live();
        }
        loop {
            if *stop.borrow() {
                return End::Stopped;
            }
            let frame = tokio::select! {
                biased;
                frame = body.frame() => frame,
                _ = stop.changed() => return End::Stopped,
            };
            let data = match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
                Some(Err(e)) => return End::Broke(e.to_string()),
                None => return End::Closed,
            };
            decoder.feed(&data, &mut items);
            let now = unix_micros();
            let before = self.seen.received;
            let mut done = false;
            for item in items.drain(..) {
                let Item::Event(event) = item else { continue };
                if event.event != "message" {
                    match event.event.as_str() {
                        "pere.hello" => self.live(),
                        "pere.gap" => {
                            self.shared.gaps.fetch_add(1, Ordering::Relaxed);
                            self.gap(&event.data);
                        }
                        _ => {}
                    }
                    continue;
                }
                if !event.id.is_empty() {
                    self.last_event_id = Some(event.id.clone());
                }
                let Some(stamp) = Stamp::parse(&event.data) else {
                    self.shared.bad_payloads.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let seen = &mut self.seen;
                seen.received += 1;
                self.shared.latency.record(now.saturating_sub(stamp.t));
                if seen.mark(stamp.seq) {
                    seen.distinct += 1;
                } else {
                    seen.duplicates += 1;
                }
                if let Some(key) = id_key(&event.id) {
                    if seen.last_id.is_some_and(|last| key < last) {
                        seen.reordered += 1;
                    }
                    seen.last_id = Some(key);
                    let order = order_of(self.config.flavor, key);
                    if let Some(from) = seen.open_gap.take() {
                        seen.gaps.push((from, order));
                    }
                    seen.first_order = Some(seen.first_order.map_or(order, |o| o.min(order)));
                    seen.max_order = Some(seen.max_order.map_or(order, |o| o.max(order)));
                    if let Some(slot) = self
                        .shared
                        .ids
                        .get(self.channel_index as usize)
                        .and_then(|ids| ids.get(stamp.seq as usize))
                        && slot.load(Ordering::Relaxed) == 0
                    {
                        slot.store(order, Ordering::Relaxed);
                    }
                }
                if let Some(ack) = &self.ack {
                    let _ = ack.send(AckItem {
                        device: self.i,
                        id: event.id,
                        t: stamp.t,
                        key: (self.channel_index << 32) | (stamp.seq & 0xFFFF_FFFF),
                    });
                }
                if self.config.count.is_some_and(|c| seen.distinct >= c) {
                    done = true;
                }
            }
            if self.seen.received > before {
                self.last_activity = Instant::now();
                self.shared
                    .deliveries
                    .fetch_add(self.seen.received - before, Ordering::Relaxed);
                note_time(&self.shared.first_delivery, &self.shared.last_delivery, now);
            }
            if done {
                return End::Done;
            }
        }
    }

    /// Notes the id range a `pere.gap` notice (`{"from":…,"oldest":…}`)
    /// says this device lost.
    fn gap(&mut self, data: &str) {
        let Ok(notice) = serde_json::from_str::<serde_json::Value>(data) else {
            return;
        };
        let id = |field: &str| {
            let text = notice.get(field)?.as_str()?;
            Some(order_of(self.config.flavor, id_key(text)?))
        };
        let Some(from) = id("from") else { return };
        match id("oldest") {
            Some(oldest) => self.seen.gaps.push((from, oldest)),
            None => self.seen.open_gap = Some(from),
        }
    }

    /// Counts a stream that ended before the device was done.
    fn disconnected(&self, end: &End, start: Instant) {
        let shared = self.shared;
        shared.disconnects.fetch_add(1, Ordering::Relaxed);
        let why = match end {
            End::Broke(e) => {
                shared.stream_errors.fetch_add(1, Ordering::Relaxed);
                format!("the connection failed: {e}")
            }
            _ => {
                shared.closed_by_server.fetch_add(1, Ordering::Relaxed);
                "the server ended the stream".to_string()
            }
        };
        first(
            &shared.first_disconnect,
            format!(
                "device {} at {:.1} s, after {} events (last id {}): {why}",
                self.name,
                start.elapsed().as_secs_f64(),
                self.seen.received,
                self.last_event_id.as_deref().unwrap_or("none"),
            ),
        );
    }

    /// Counts how the device ended and keeps what it missed, to be sorted
    /// by why once every device is done.
    fn account(mut self, end: &End) {
        let shared = self.shared;
        let expected = match self.config.count {
            Some(c) => c,
            None => self.seen.highest().map_or(0, |h| h + 1),
        };
        let missing = self.seen.missing(expected);
        if let Some(from) = self.seen.open_gap.take() {
            self.seen.gaps.push((from, u64::MAX));
        }
        match end {
            End::Done => {
                shared.completed.fetch_add(1, Ordering::Relaxed);
            }
            End::Stopped if missing > 0 => {
                shared.devices_at_deadline.fetch_add(1, Ordering::Relaxed);
                let quiet = self.last_activity.elapsed().as_micros();
                shared
                    .quiet_at_deadline_max_us
                    .fetch_max(u64::try_from(quiet).unwrap_or(u64::MAX), Ordering::Relaxed);
            }
            _ => {}
        }
        shared
            .duplicates
            .fetch_add(self.seen.duplicates, Ordering::Relaxed);
        shared
            .reordered
            .fetch_add(self.seen.reordered, Ordering::Relaxed);
        {
            let mut union = shared.union.lock().unwrap_or_else(|e| e.into_inner());
            let (bits, upto) = union.entry(self.channel_index).or_default();
            if bits.len() < self.seen.bits.len() {
                bits.resize(self.seen.bits.len(), 0);
            }
            for (all, mine) in bits.iter_mut().zip(&self.seen.bits) {
                *all |= mine;
            }
            *upto = (*upto).max(expected);
        }
        if missing > 0 {
            let unfinished = Unfinished {
                channel: self.channel_index,
                expected,
                first_order: self.seen.first_order,
                max_order: self.seen.max_order,
                end: match end {
                    End::Done => Ended::Done,
                    End::Stopped => Ended::Stopped,
                    End::Closed | End::Broke(_) => Ended::Disconnected,
                },
                seen: self.seen,
            };
            shared
                .unfinished
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(unfinished);
        }
    }
}

/// How a device that missed events ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    Done,
    Stopped,
    Disconnected,
}

/// A device that did not get every event it expected.
struct Unfinished {
    channel: u64,
    expected: u64,
    first_order: Option<u64>,
    max_order: Option<u64>,
    end: Ended,
    seen: Seen,
}

/// Missing events, by why.
#[derive(Default, Debug, PartialEq, Eq)]
struct Missing {
    lost: u64,
    lost_before_first: u64,
    lost_in_gaps: u64,
    not_arrived_by_deadline: u64,
    missed_after_disconnect: u64,
}

/// Event ids as one ordered number: PERE's as they are, nchan's
/// `time:tag` as `time << 20 | tag`.
fn order_of(flavor: Flavor, (a, b): (u64, u64)) -> u64 {
    match flavor {
        Flavor::Pere => a,
        Flavor::Nchan => (a << 20) | b.min((1 << 20) - 1),
    }
}

/// Id tables are kept when `count` is at most this per channel...
const MAX_TRACKED_COUNT: u64 = 1 << 16;
/// ... and at most this many entries over all channels.
const MAX_TRACKED_IDS: u64 = 1 << 22;

/// Empty id tables (see [`Shared::ids`]) for `config`, or none when the
/// run has no count or too large a one.
fn id_tables(config: &Config) -> Vec<Vec<AtomicU64>> {
    let channels = u64::from(config.channels.max(1));
    match config.count {
        Some(c) if c <= MAX_TRACKED_COUNT && c * channels <= MAX_TRACKED_IDS => (0..channels)
            .map(|_| (0..c).map(|_| AtomicU64::new(0)).collect())
            .collect(),
        _ => Vec::new(),
    }
}

/// Sorts what `u` missed. A missing event that some device received has
/// a known id: below the device's highest id received, the server skipped
/// it (a hole: `lost_in_gaps` when a `pere.gap` notice covered it, else
/// `lost`, and of those below its lowest id `lost_before_first`); above it,
/// it came after the device stopped: still owed at the deadline, or after
/// its stream ended. An event no device received has no known place and
/// counts by how the device ended. Without an id table (`ids` empty),
/// sequence numbers stand in for the ids, which is exact only with one
/// publisher.
fn classify(u: &Unfinished, ids: &[AtomicU64], out: &mut Missing) {
    let after_end = |out: &mut Missing, n: u64| match u.end {
        Ended::Done => out.lost += n,
        Ended::Stopped => out.not_arrived_by_deadline += n,
        Ended::Disconnected => out.missed_after_disconnect += n,
    };
    if ids.is_empty() {
        let short = u.seen.shortfall(u.expected);
        out.lost += short.holes;
        out.lost_before_first += short.before_first;
        after_end(out, short.tail);
        return;
    }
    let (Some(first), Some(last)) = (u.first_order, u.max_order) else {
        after_end(out, u.seen.missing(u.expected));
        return;
    };
    for seq in 0..u.expected {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if u.seen.bits.get(word).is_some_and(|w| w & (1 << bit) != 0) {
            continue;
        }
        match ids.get(seq as usize).map(|o| o.load(Ordering::Relaxed)) {
            Some(order) if order != 0 && order < last => {
                if u.seen
                    .gaps
                    .iter()
                    .any(|(from, to)| *from < order && order < *to)
                {
                    out.lost_in_gaps += 1;
                } else {
                    out.lost += 1;
                    if order < first {
                        out.lost_before_first += 1;
                    }
                }
            }
            _ => after_end(out, 1),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn device(
    i: u32,
    config: Arc<Config>,
    shared: Arc<Shared>,
    server: SocketAddr,
    gate: Arc<Semaphore>,
    ack: Option<mpsc::UnboundedSender<AckItem>>,
    mut stop: watch::Receiver<bool>,
    start: Instant,
) {
    let name = format!("{}-{i}", config.device_prefix);
    let channel = channel_name(&config.channel, config.channels, u64::from(i));
    let path = config.flavor.feed_path(&channel);
    let device = (config.flavor == Flavor::Pere).then_some(name.as_str());
    let mut run = DeviceRun {
        i,
        name: &name,
        config: &config,
        shared: &shared,
        channel_index: u64::from(i) % u64::from(config.channels.max(1)),
        ack,
        seen: Seen::default(),
        ready: false,
        permit: None,
        last_event_id: None,
        last_activity: Instant::now(),
    };
    // Streams are opened at most `connect_concurrency` at once; the permit
    // is held until the stream is live, so the ramp's bound holds.
    run.permit = gate.clone().acquire_owned().await.ok();
    let (mut conn, mut body) =
        match open_stream(i, &config, server, &path, device, None, &mut stop).await {
            Ok(opened) => opened,
            Err(e) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                shared.error(e);
                shared.reported.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
    let end = loop {
        let end = run.read(&mut body, &mut stop).await;
        drop(run.permit.take());
        if matches!(end, End::Done | End::Stopped) {
            break end;
        }
        run.disconnected(&end, start);
        if let End::Broke(e) = &end {
            shared.error(format!("device {name}: the stream broke: {e}"));
        }
        if !config.resume || *stop.borrow() {
            break end;
        }
        drop(conn);
        run.permit = gate.clone().acquire_owned().await.ok();
        let last = run.last_event_id.clone();
        match open_stream(
            i,
            &config,
            server,
            &path,
            device,
            last.as_deref(),
            &mut stop,
        )
        .await
        {
            Ok(opened) => {
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                (conn, body) = opened;
            }
            Err(e) => {
                drop(run.permit.take());
                shared.error(format!("device {name}: could not resume: {e}"));
                // Stopped while reconnecting counts as a disconnect's loss:
                // the stream had ended.
                break end;
            }
        }
    };
    run.account(&end);
    shared.reported.fetch_add(1, Ordering::Relaxed);
}

async fn ack_worker(
    config: Arc<Config>,
    shared: Arc<Shared>,
    server: SocketAddr,
    source: Option<std::net::IpAddr>,
    mut rx: mpsc::UnboundedReceiver<AckItem>,
) {
    let mode = config.ack.unwrap_or(AckMode::Batch);
    let channels = config.channels.max(1);
    let mut conn: Option<Conn> = None;
    let mut batch = Vec::with_capacity(256);
    let mut names: HashMap<u32, String> = HashMap::new();
    let mut broken = false;
    while rx.recv_many(&mut batch, 4096).await > 0 {
        batch.sort_by_key(|a: &AckItem| a.device);
        for group in batch.chunk_by(|a, b| a.device == b.device) {
            let device = names
                .entry(group[0].device)
                .or_insert_with(|| format!("{}-{}", config.device_prefix, group[0].device))
                .clone();
            let channel = channel_name(&config.channel, channels, u64::from(group[0].device));
            let path = format!("/feedback/{}", crate::client::encode_component(&channel));
            let chunks: Vec<&[AckItem]> = match mode {
                AckMode::Each => group.chunks(1).collect(),
                AckMode::Batch => group.chunks(1000).collect(),
            };
            for items in chunks {
                // Ids come from the server: quoted as JSON strings, so an odd
                // one makes a rejected receipt (counted), never a broken body.
                let status = serde_json::Value::from(config.status.as_str()).to_string();
                let receipt = |item: &AckItem| {
                    format!(
                        "{{\"id\":{},\"status\":{status}}}",
                        serde_json::Value::from(item.id.as_str())
                    )
                };
                let body = match mode {
                    AckMode::Each => receipt(&items[0]),
                    AckMode::Batch => {
                        let mut s = String::with_capacity(items.len() * 40);
                        s.push('[');
                        for (k, item) in items.iter().enumerate() {
                            if k > 0 {
                                s.push(',');
                            }
                            s.push_str(&receipt(item));
                        }
                        s.push(']');
                        s
                    }
                };
                let sent_at = unix_micros();
                note_time(&shared.first_ack, &shared.last_ack, sent_at);
                shared
                    .acks_sent
                    .fetch_add(items.len() as u64, Ordering::Relaxed);
                let acked = post(&config, server, source, &mut conn, &path, &device, body).await;
                let now = unix_micros();
                shared.last_ack.fetch_max(now, Ordering::Relaxed);
                match acked {
                    Ok(n) => {
                        shared.acked.fetch_add(n, Ordering::Relaxed);
                        let failed = (items.len() as u64).saturating_sub(n);
                        shared.ack_failures.fetch_add(failed, Ordering::Relaxed);
                        if failed == 0 {
                            let mut tracker =
                                shared.ack_tracker.lock().unwrap_or_else(|e| e.into_inner());
                            for item in items {
                                let e = tracker.entry(item.key).or_insert((item.t, 0, 0));
                                e.1 += 1;
                                e.2 = e.2.max(now);
                            }
                        }
                    }
                    Err(e) => {
                        shared
                            .ack_failures
                            .fetch_add(items.len() as u64, Ordering::Relaxed);
                        if !broken {
                            broken = true;
                            shared.error(format!("receipt of device {device}: {e}"));
                        }
                    }
                }
            }
        }
        batch.clear();
    }
}

/// Sends one receipt request; the number of receipts the server recorded.
async fn post(
    config: &Config,
    server: SocketAddr,
    source: Option<std::net::IpAddr>,
    slot: &mut Option<Conn>,
    path: &str,
    device: &str,
    body: String,
) -> Result<u64, String> {
    if slot.as_ref().is_some_and(|c| c.sender.is_closed()) {
        *slot = None;
    }
    let conn = match slot {
        Some(c) => c,
        None => slot.insert(open(server, source).await?),
    };
    let req = request(config, Method::POST, path, Some(device), Bytes::from(body))
        .ok_or_else(|| "cannot build the receipt request".to_string())?;
    let exchange = async {
        conn.sender.ready().await.map_err(|e| e.to_string())?;
        let resp = conn
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    let result = tokio::time::timeout(Duration::from_secs(30), exchange).await;
    let (status, body) = match result {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            *slot = None;
            return Err(e);
        }
        Err(_) => {
            *slot = None;
            return Err("no answer within 30 s".into());
        }
    };
    if !status.is_success() {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    let text = String::from_utf8_lossy(&body);
    Ok(text.matches("\"state\":\"acked\"").count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_and_duplicates_are_counted_per_sequence_number() {
        let mut seen = Seen::default();
        for seq in [0, 1, 3, 3, 64, 65] {
            if !seen.mark(seq) {
                seen.duplicates += 1;
            }
        }
        assert_eq!(seen.duplicates, 1);
        assert_eq!(seen.highest(), Some(65));
        assert_eq!(seen.missing(66), 66 - 5);
        assert_eq!(seen.missing(4), 1);
        assert_eq!(seen.missing(0), 0);
        assert_eq!(Seen::default().highest(), None);
        assert_eq!(Seen::default().missing(3), 3);
    }

    #[test]
    fn a_shortfall_splits_into_holes_and_a_tail() {
        let mut seen = Seen::default();
        for seq in [0, 1, 3, 4, 6] {
            seen.mark(seq);
        }
        let short = |holes, before_first, tail| Shortfall {
            holes,
            before_first,
            tail,
        };
        // 2 and 5 are holes (6 came after them); 7..10 never came.
        assert_eq!(seen.shortfall(10), short(2, 0, 3));
        // Expecting fewer than arrived: only holes below the count.
        assert_eq!(seen.shortfall(4), short(1, 0, 0));
        assert_eq!(seen.shortfall(0), short(0, 0, 0));
        // Nothing received: everything is tail, nothing is a hole.
        assert_eq!(Seen::default().shortfall(5), short(0, 0, 5));
        let mut all = Seen::default();
        for seq in 0..130 {
            all.mark(seq);
        }
        assert_eq!(all.shortfall(130), short(0, 0, 0));
        assert_eq!(missing_below(&all.bits, 200), 70);
        // A device that got 70..=100 only: 70 holes before its first event.
        let mut late = Seen::default();
        for seq in 70..=100 {
            late.mark(seq);
        }
        assert_eq!(late.lowest(), Some(70));
        assert_eq!(late.shortfall(120), short(70, 70, 19));
    }

    /// Two publishers: sequence numbers 0..6 got ids 11, 10, 13, 12, 15,
    /// 14 (each pair swapped).
    fn ids() -> Vec<AtomicU64> {
        [11, 10, 13, 12, 15, 14]
            .into_iter()
            .map(AtomicU64::new)
            .collect()
    }

    fn unfinished(got: &[(u64, u64)], end: Ended) -> Unfinished {
        let mut seen = Seen::default();
        for (seq, _) in got {
            seen.mark(*seq);
        }
        Unfinished {
            channel: 0,
            expected: 6,
            first_order: got.iter().map(|(_, id)| *id).min(),
            max_order: got.iter().map(|(_, id)| *id).max(),
            end,
            seen,
        }
    }

    fn classified(u: &Unfinished, ids: &[AtomicU64]) -> Missing {
        let mut out = Missing::default();
        classify(u, ids, &mut out);
        out
    }

    #[test]
    fn missing_events_are_placed_by_their_id_not_their_sequence_number() {
        let ids = ids();
        // Ids 10, 11, 12 (seqs 1, 0, 3) arrived, then the stream ended.
        // Seq 2 is below seq 3, but its id (13) came after the end: nothing
        // was skipped. Sequence numbers alone would call it a hole.
        let cut = unfinished(&[(1, 10), (0, 11), (3, 12)], Ended::Disconnected);
        assert_eq!(
            classified(&cut, &ids),
            Missing {
                missed_after_disconnect: 3,
                ..Missing::default()
            }
        );
        assert_eq!(
            classified(&cut, &[]),
            Missing {
                lost: 1,
                missed_after_disconnect: 2,
                ..Missing::default()
            }
        );
        // Ids 10, 11, 13 (seqs 1, 0, 2) arrived: id 12 (seq 3) was skipped
        // although its sequence number is above every one received.
        let skipped = unfinished(&[(1, 10), (0, 11), (2, 13)], Ended::Disconnected);
        assert_eq!(
            classified(&skipped, &ids),
            Missing {
                lost: 1,
                missed_after_disconnect: 2,
                ..Missing::default()
            }
        );
        // Ids 10, 11, 12, 14 arrived and the deadline came: 13 is a hole,
        // 15 was still owed.
        let holey = unfinished(&[(1, 10), (0, 11), (3, 12), (5, 14)], Ended::Stopped);
        assert_eq!(
            classified(&holey, &ids),
            Missing {
                lost: 1,
                not_arrived_by_deadline: 1,
                ..Missing::default()
            }
        );
        // A device that joined late: ids 12..=15 only; 10 and 11 before it.
        let late = unfinished(&[(3, 12), (2, 13), (5, 14), (4, 15)], Ended::Stopped);
        assert_eq!(
            classified(&late, &ids),
            Missing {
                lost: 2,
                lost_before_first: 2,
                ..Missing::default()
            }
        );
        // A pere.gap notice said ids after 11 and before 14 were lost to
        // the device: announced, not silent. Id 13 outside it is silent.
        let mut told = unfinished(&[(1, 10), (0, 11), (5, 14), (4, 15)], Ended::Done);
        told.seen.gaps.push((11, 14));
        assert_eq!(
            classified(&told, &ids),
            Missing {
                lost_in_gaps: 2,
                ..Missing::default()
            }
        );
        told.seen.gaps[0] = (11, 13);
        assert_eq!(
            classified(&told, &ids),
            Missing {
                lost: 1,
                lost_in_gaps: 1,
                ..Missing::default()
            }
        );
        // Nothing received, or ids no device saw: by how it ended.
        let unknown: Vec<AtomicU64> = (0..6).map(|_| AtomicU64::new(0)).collect();
        assert_eq!(
            classified(&unfinished(&[(0, 11)], Ended::Stopped), &unknown),
            Missing {
                not_arrived_by_deadline: 5,
                ..Missing::default()
            }
        );
        assert_eq!(
            classified(&unfinished(&[], Ended::Disconnected), &ids),
            Missing {
                missed_after_disconnect: 6,
                ..Missing::default()
            }
        );
    }
}
