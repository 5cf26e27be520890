//! K concurrent publishers, each on its own keep-alive connection, taking
//! event numbers from one counter: paced to a total rate or as fast as the
//! server answers, bounded by a count or a duration.
//!
//! Event `n` goes to channel [`channel_name`]`(base, channels, n)` with
//! sequence number `n / channels` on it, so every channel's events are
//! numbered 0, 1, 2, … for the devices to check. A publish that fails is
//! not retried: its sequence number is never published, and the report
//! names it ([`Report::failed_events`]) so that the devices' counts can be
//! read against it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::{
    Conn, Flavor, Histogram, StopSignals, channel_name, exchange, payload, refusal, source_for,
    unix_micros,
};
use pere_http::client::Address;

/// A publishing run's settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// The server.
    pub addr: Address,
    /// The channel, or the base of the channel names when `channels` > 1.
    pub channel: String,
    /// Channels the events are spread over (round robin).
    pub channels: u32,
    /// PERE or nchan.
    pub flavor: Flavor,
    /// Events to publish in all (`None`: until the duration).
    pub count: Option<u64>,
    /// Total events per second (`None`: as fast as the server answers).
    pub rate: Option<f64>,
    /// Publishers, each with its own connection.
    pub concurrency: u32,
    /// Payload size in bytes.
    pub size: usize,
    /// Bound on the whole run.
    pub duration: Option<Duration>,
    /// The publisher's `device` header (PERE), if any.
    pub device: Option<String>,
    /// A bearer token for a server with auth on, if any.
    pub token: Option<String>,
}

#[derive(Default)]
struct Shared {
    next: AtomicU64,
    published: AtomicU64,
    failed: AtomicU64,
    latency: Histogram,
    first_error: std::sync::Mutex<Option<String>>,
    failed_events: std::sync::Mutex<Vec<(String, u64)>>,
}

/// Failed publishes named in the report, at most.
const FAILED_EVENTS_KEPT: usize = 100;

/// What a run measured.
#[derive(Debug)]
pub struct Report {
    /// Events published (2xx).
    pub published: u64,
    /// Publishes that failed.
    pub failed: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Publish request latency, µs.
    pub latency: serde_json::Value,
    /// The first error seen.
    pub first_error: Option<String>,
    /// Channel and sequence number of the first failed publishes (at most
    /// 100): events the devices will miss because they never existed.
    pub failed_events: Vec<(String, u64)>,
    /// People's summary lines.
    pub text: Vec<String>,
    /// The signal (2 or 15) that stopped the run early, if one did.
    pub interrupted: Option<u8>,
}

impl Report {
    /// The report as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "mode": "publish",
            "published": self.published,
            "failed": self.failed,
            "seconds": self.seconds,
            "publishes_per_second": if self.seconds > 0.0 { self.published as f64 / self.seconds } else { 0.0 },
            "latency_us": self.latency,
            "first_error": self.first_error,
            "interrupted": self.interrupted.is_some(),
            "failed_events": self
                .failed_events
                .iter()
                .map(|(channel, seq)| serde_json::json!({"channel": channel, "seq": seq}))
                .collect::<Vec<_>>(),
        })
    }
}

/// Publishes until the count or the duration; `notice` is told about
/// progress.
///
/// # Errors
/// The server's address does not resolve.
pub async fn run(config: Config, notice: impl Fn(&str)) -> std::io::Result<Report> {
    let server = crate::resolve(&config.addr).await?;
    let config = Arc::new(config);
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for k in 0..config.concurrency.max(1) {
        workers.spawn(worker(
            config.clone(),
            shared.clone(),
            server,
            source_for(server, u64::from(k)),
            start,
            stop_rx.clone(),
        ));
    }
    let mut signals = StopSignals::new();
    let mut interrupted = None;
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    ticker.tick().await;
    loop {
        let sleep = sleep_until_some(config.duration.and_then(|d| start.checked_add(d)));
        tokio::select! {
            joined = workers.join_next() => if joined.is_none() { break },
            _ = ticker.tick() => notice(&format!(
                "{} published, {} failed",
                shared.published.load(Ordering::Relaxed),
                shared.failed.load(Ordering::Relaxed)
            )),
            () = sleep => {
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
    signals.exit_on_next("pere-pub");
    let _ = tokio::time::timeout(Duration::from_secs(40), async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    workers.abort_all();
    let seconds = start.elapsed().as_secs_f64();
    let published = shared.published.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    let text = vec![
        format!(
            "{published} events published ({failed} failed) by {} publishers in {seconds:.2} s = {:.0} publishes/s",
            config.concurrency.max(1),
            if seconds > 0.0 {
                published as f64 / seconds
            } else {
                0.0
            }
        ),
        format!("publish request latency: {}", shared.latency.summary_text()),
    ];
    let first_error = shared
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let failed_events = std::mem::take(
        &mut *shared
            .failed_events
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    );
    Ok(Report {
        published,
        failed,
        seconds,
        latency: shared.latency.summary_json(),
        first_error,
        failed_events,
        text,
        interrupted,
    })
}

/// Sleeps until `at`; for ever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn worker(
    config: Arc<Config>,
    shared: Arc<Shared>,
    server: SocketAddr,
    source: Option<std::net::IpAddr>,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) {
    let channels = config.channels.max(1);
    let mut slot: Option<Conn> = None;
    let device = config
        .device
        .as_deref()
        .and_then(|d| HeaderValue::from_str(d).ok());
    let authorization = config
        .token
        .as_deref()
        .and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok());
    let host = config.addr.to_string();
    loop {
        if *stop.borrow() {
            return;
        }
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        if config.count.is_some_and(|c| n >= c) {
            return;
        }
        if let Some(rate) = config.rate {
            // Event n's time at the total rate; none (a wait for the stop
            // alone) when a tiny rate puts it past what an Instant holds.
            let due = Duration::try_from_secs_f64(n as f64 / rate)
                .ok()
                .and_then(|d| start.checked_add(d));
            // The stop ends the wait: at --duration or a signal, a slow
            // pace must not hold the run until its next event is due.
            tokio::select! {
                // The stop first: when both are ready, no event after it.
                biased;
                _ = stop.wait_for(|stopped| *stopped) => return,
                () = sleep_until_some(due) => {}
            }
        }
        let channel = channel_name(&config.channel, channels, n);
        let path = config.flavor.publish_path(&channel);
        let t = unix_micros();
        let body = Bytes::from(payload(t, n / u64::from(channels), config.size));
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::HOST, host.as_str())
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(device) = &device {
            builder = builder.header("device", device.clone());
        }
        if let Some(authorization) = &authorization {
            builder = builder.header(header::AUTHORIZATION, authorization.clone());
        }
        let Ok(req) = builder.body(Full::new(body)) else {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let sent = Instant::now();
        match send(server, source, &mut slot, req).await {
            Ok(()) => {
                shared
                    .latency
                    .record(sent.elapsed().as_micros().try_into().unwrap_or(u64::MAX));
                shared.published.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                let mut failed = shared
                    .failed_events
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if failed.len() < FAILED_EVENTS_KEPT {
                    failed.push((channel.clone(), n / u64::from(channels)));
                }
                drop(failed);
                let mut first = shared.first_error.lock().unwrap_or_else(|e| e.into_inner());
                if first.is_none() {
                    *first = Some(format!("publish #{n} on {channel}: {e}"));
                }
            }
        }
    }
}

async fn send(
    server: SocketAddr,
    source: Option<std::net::IpAddr>,
    slot: &mut Option<Conn>,
    req: Request<Full<Bytes>>,
) -> Result<(), String> {
    let (status, body) = exchange(server, source, slot, req).await?;
    if status.is_success() {
        Ok(())
    } else {
        // Refused: this connection is not trusted with the next publish.
        *slot = None;
        Err(refusal(status, &body))
    }
}
