//! One simulated device: its stream (opened, read, resumed with
//! `Last-Event-ID`) and what it counts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::HeaderValue;
use hyper::{Method, StatusCode};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use pere_http::sse::{Decoder, Item};

use super::acks::AckItem;
use super::missing::{Ended, Seen, Unfinished, order_of};
use super::{Config, Shared, first, note_time, request};
use crate::{Conn, Flavor, Stamp, channel_name, id_key, open, source_for, unix_micros};

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

#[allow(clippy::too_many_arguments)]
pub(super) async fn device(
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
