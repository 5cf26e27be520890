//! N simulated devices, each on its own event-stream connection, counting
//! what they receive and optionally acknowledging every event.
//!
//! Device `i` is `<prefix>-<i>` and follows channel [`channel_name`]`(base,
//! channels, i)`. A device stops after `count` events, at the run's
//! deadline, or when its stream breaks (counted as a disconnect: what it
//! missed is then loss). Receipts go over keep-alive connections of their
//! own, one per device unless fewer are asked for, as JSON arrays of
//! whatever accumulated while the previous receipt was in flight
//! ([`AckMode::Batch`]) or one request per event ([`AckMode::Each`]).

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
    /// Streams being opened at once during the ramp.
    pub connect_concurrency: usize,
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
    lost: AtomicU64,
    duplicates: AtomicU64,
    reordered: AtomicU64,
    disconnects: AtomicU64,
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
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn error(&self, text: String) {
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(text);
        }
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
    /// Events a device should have received and did not.
    pub lost: u64,
    /// Events a device received twice.
    pub duplicates: u64,
    /// Events whose id was below the previous one's.
    pub reordered: u64,
    /// Streams that broke before the device was done.
    pub disconnects: u64,
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
            "duplicates": self.duplicates,
            "reordered": self.reordered,
            "disconnects": self.disconnects,
            "failed": self.failed,
            "gaps": self.gaps,
            "bad_payloads": self.bad_payloads,
            "delivery_seconds": self.delivery_seconds,
            "deliveries_per_second": rate,
            "latency_us": self.latency,
            "receipts": self.receipts,
            "ramp_seconds": self.ramp_seconds,
            "first_error": self.first_error,
        })
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
    let shared = Arc::new(Shared::default());
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
        "lost {}, duplicates {}, reordered {}, disconnects {}, gaps {}, bad payloads {}",
        load(&s.lost),
        load(&s.duplicates),
        load(&s.reordered),
        load(&s.disconnects),
        load(&s.gaps),
        load(&s.bad_payloads)
    ));
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
        lost: load(&s.lost),
        duplicates: load(&s.duplicates),
        reordered: load(&s.reordered),
        disconnects: load(&s.disconnects),
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
        text,
    }
}

/// What one device saw.
#[derive(Default)]
struct Seen {
    received: u64,
    last_id: Option<(u64, u64)>,
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
        let mut have = 0u64;
        for (w, word) in self.bits.iter().enumerate() {
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

    fn highest(&self) -> Option<u64> {
        let w = self.bits.iter().rposition(|w| *w != 0)?;
        Some(w as u64 * 64 + 63 - u64::from(self.bits[w].leading_zeros()))
    }
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

async fn device(
    i: u32,
    config: Arc<Config>,
    shared: Arc<Shared>,
    server: SocketAddr,
    gate: Arc<Semaphore>,
    ack: Option<mpsc::UnboundedSender<AckItem>>,
    mut stop: watch::Receiver<bool>,
) {
    let name = format!("{}-{i}", config.device_prefix);
    let channel_index = u64::from(i) % u64::from(config.channels.max(1));
    let channel = channel_name(&config.channel, config.channels, u64::from(i));
    let path = config.flavor.feed_path(&channel);
    let device = (config.flavor == Flavor::Pere).then_some(name.as_str());
    // Open the stream, a few attempts, at most `connect_concurrency` at once.
    let mut permit = gate.clone().acquire_owned().await.ok();
    let mut opened = None;
    let mut last_error = String::new();
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
        let Some(req) = request(&config, Method::GET, &path, device, Bytes::new()) else {
            last_error = format!("cannot build the request for device {name}");
            break;
        };
        match tokio::time::timeout(Duration::from_secs(30), conn.sender.send_request(req)).await {
            Ok(Ok(resp)) if resp.status() == StatusCode::OK => {
                opened = Some((conn, resp.into_body()));
                break;
            }
            Ok(Ok(resp)) => last_error = format!("GET {path}: status {}", resp.status()),
            Ok(Err(e)) => last_error = format!("GET {path}: {e}"),
            Err(_) => last_error = format!("GET {path}: no answer within 30 s"),
        }
    }
    let Some((_conn, mut body)) = opened else {
        shared.failed.fetch_add(1, Ordering::Relaxed);
        shared.error(last_error);
        return;
    };
    let mut decoder = Decoder::new();
    let mut items = Vec::new();
    let mut seen = Seen::default();
    // nchan's stream is live once its head arrived; PERE's with pere.hello.
    // The permit is held until then, so the ramp's bound holds.
    let mut ready = config.flavor == Flavor::Nchan;
    if ready {
        shared.ready.fetch_add(1, Ordering::Relaxed);
        drop(permit.take());
    }
    let mut done = false;
    let mut broke = false;
    while !done {
        let frame = tokio::select! {
            biased;
            frame = body.frame() => frame,
            _ = stop.changed() => break,
        };
        let data = match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
            Some(Err(e)) => {
                shared.error(format!("device {name}: the stream broke: {e}"));
                broke = true;
                break;
            }
            None => {
                broke = true;
                break;
            }
        };
        decoder.feed(&data, &mut items);
        let now = unix_micros();
        let before = seen.received;
        for item in items.drain(..) {
            let Item::Event(event) = item else { continue };
            if event.event != "message" {
                match event.event.as_str() {
                    "pere.hello" if !ready => {
                        ready = true;
                        shared.ready.fetch_add(1, Ordering::Relaxed);
                        drop(permit.take());
                    }
                    "pere.gap" => {
                        shared.gaps.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                continue;
            }
            let Some(stamp) = Stamp::parse(&event.data) else {
                shared.bad_payloads.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            seen.received += 1;
            shared.latency.record(now.saturating_sub(stamp.t));
            if !seen.mark(stamp.seq) {
                seen.duplicates += 1;
            }
            if let Some(key) = id_key(&event.id) {
                if seen.last_id.is_some_and(|last| key < last) {
                    seen.reordered += 1;
                }
                seen.last_id = Some(key);
            }
            if let Some(ack) = &ack {
                let _ = ack.send(AckItem {
                    device: i,
                    id: event.id,
                    t: stamp.t,
                    key: (channel_index << 32) | (stamp.seq & 0xFFFF_FFFF),
                });
            }
            if config.count.is_some_and(|c| seen.received >= c) {
                done = true;
            }
        }
        if seen.received > before {
            shared
                .deliveries
                .fetch_add(seen.received - before, Ordering::Relaxed);
            note_time(&shared.first_delivery, &shared.last_delivery, now);
        }
    }
    if broke && !done {
        shared.disconnects.fetch_add(1, Ordering::Relaxed);
    }
    if done {
        shared.completed.fetch_add(1, Ordering::Relaxed);
    }
    let expected = match config.count {
        Some(c) => c,
        None => seen.highest().map_or(0, |h| h + 1),
    };
    shared
        .lost
        .fetch_add(seen.missing(expected), Ordering::Relaxed);
    shared
        .duplicates
        .fetch_add(seen.duplicates, Ordering::Relaxed);
    shared
        .reordered
        .fetch_add(seen.reordered, Ordering::Relaxed);
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
}
