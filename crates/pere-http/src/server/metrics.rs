//! Prometheus metrics: HTTP counters kept here, the hub's counters and
//! histograms read from [`pere_core::Hub::stats`] and
//! [`pere_core::Hub::metrics`] at render time, the webhook's outcomes, and
//! the process's own (memory, descriptors, CPU, start time) from `/proc`.
//!
//! Names follow Prometheus' conventions (`_total` counters, `_seconds` and
//! `_bytes` units, `process_*` as the official clients name them), so
//! `promtool check metrics` finds nothing to say; the end-to-end tests hold
//! the exposition to that, and `docs/grafana/pere.json` charts it.

use crate::error::ErrorCode;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use pere_core::metrics::HistogramSnapshot;
use pere_core::{EventStore, Hub};

use crate::error::ApiError;
use crate::server::body::Body;
use crate::server::limits::Limits;
use crate::server::webhook::Webhook;

/// Counters of the HTTP layer.
#[derive(Debug)]
pub struct HttpMetrics {
    by_class: [AtomicU64; 5],
    /// Error answers by their docs/PROTOCOL.md §8 code, indexed by
    /// [`ErrorCode`]'s discriminant: a fixed vocabulary, counted without a lock.
    errors: [AtomicU64; ErrorCode::ALL.len()],
    /// `401` and `403` answers.
    unauthorized: AtomicU64,
    forbidden: AtomicU64,
    /// When the server started, for uptime.
    started: Instant,
    started_at: SystemTime,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            by_class: Default::default(),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            unauthorized: AtomicU64::new(0),
            forbidden: AtomicU64::new(0),
            started: Instant::now(),
            started_at: SystemTime::now(),
        }
    }
}

impl HttpMetrics {
    /// Counts a response.
    pub fn count(&self, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an error answer by its code, and authentication failures.
    pub fn count_error(&self, err: &ApiError) {
        match err.status() {
            StatusCode::UNAUTHORIZED => self.unauthorized.fetch_add(1, Ordering::Relaxed),
            StatusCode::FORBIDDEN => self.forbidden.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        // `ALL` lists every code at its discriminant (a test holds it); a
        // code left out of it goes uncounted rather than panic here.
        if let Some(n) = self.errors.get(err.code as usize) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The Prometheus text exposition being built.
struct Exposition(String);

impl Exposition {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn metric(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.header(name, kind, help);
        let _ = writeln!(self.0, "{name} {value}");
    }

    fn labelled(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
    }

    fn histogram(&mut self, name: &str, help: &str, h: &HistogramSnapshot) {
        self.header(name, "histogram", help);
        for (upper, count) in &h.buckets {
            let _ = writeln!(self.0, "{name}_bucket{{le=\"{upper}\"}} {count}");
        }
        let _ = writeln!(self.0, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(self.0, "{name}_sum {}", h.sum);
        let _ = writeln!(self.0, "{name}_count {}", h.count);
    }
}

/// `GET /metrics` in the Prometheus text format: the hub's counters, the
/// HTTP layer's (`http`), open connections and streams (`limits`) and the
/// webhook's outcomes, read now.
///
/// # Errors
/// `503 shutting_down` once the hub stopped.
pub async fn render<S: EventStore>(
    hub: &Hub<S>,
    http: &HttpMetrics,
    limits: &Limits,
    webhook: Option<&Webhook>,
) -> Result<Response<Body>, ApiError> {
    let s = hub.stats().await?;
    let m = hub.metrics();
    let mut out = Exposition(String::with_capacity(8192));
    out.header(
        "pere_build_info",
        "gauge",
        "Always 1; the labels say which PERE this is.",
    );
    out.labelled(
        "pere_build_info",
        &format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
        1,
    );
    out.metric(
        "pere_uptime_seconds",
        "gauge",
        "Seconds since the server started.",
        http.started.elapsed().as_secs_f64(),
    );
    out.metric(
        "pere_events_published_total",
        "counter",
        "Events published.",
        s.published,
    );
    out.metric(
        "pere_idempotent_replays_total",
        "counter",
        "Publishes answered with the result of an earlier one with the same Idempotency-Key (nothing new published).",
        m.idempotent_replays.load(Ordering::Relaxed),
    );
    out.metric(
        "pere_deliveries_total",
        "counter",
        "Events written to streams.",
        s.delivered,
    );
    out.metric(
        "pere_redeliveries_total",
        "counter",
        "Events written again to a device that had them written before (unacknowledged events resent on resume, a device's second stream).",
        s.redelivered,
    );
    out.metric(
        "pere_gaps_total",
        "counter",
        "Streams that began with pere.gap: events the device asked for were already dropped by retention.",
        m.gaps.load(Ordering::Relaxed),
    );
    out.metric(
        "pere_receipts_total",
        "counter",
        "Receipts recorded.",
        s.acked,
    );
    out.metric(
        "pere_receipt_stream_gaps_total",
        "counter",
        "Receipts streams told of a gap: they fell behind (or resumed from before) what their channel keeps.",
        s.receipt_gaps,
    );
    out.metric(
        "pere_receipts_unacked",
        "gauge",
        "Device receipts of retained events not acknowledged yet (pending or delivered), one per (event, device).",
        m.unacked(),
    );
    out.metric(
        "pere_overdue_notices_total",
        "counter",
        "Receipts not acknowledged by their --ack-deadline (overdue notices issued).",
        m.overdue.load(Ordering::Relaxed),
    );
    out.header(
        "pere_webhook_notices_total",
        "counter",
        "Overdue notices the --webhook accepted (delivered) or that were given up after every attempt failed (given_up; sent again after a restart).",
    );
    let webhook = webhook.map(|w| w.stats());
    let load = |c: Option<&AtomicU64>| c.map_or(0, |c| c.load(Ordering::Relaxed));
    out.labelled(
        "pere_webhook_notices_total",
        "outcome=\"delivered\"",
        load(webhook.map(|w| &w.delivered)),
    );
    out.labelled(
        "pere_webhook_notices_total",
        "outcome=\"given_up\"",
        load(webhook.map(|w| &w.given_up)),
    );
    out.metric(
        "pere_webhook_failed_attempts_total",
        "counter",
        "Attempts to POST an overdue notice to the --webhook that failed (no connection, an answer other than 2xx, a timeout); each is retried.",
        load(webhook.map(|w| &w.failed_attempts)),
    );
    out.metric(
        "pere_streams_opened_total",
        "counter",
        "Streams opened.",
        s.streams_opened,
    );
    out.metric(
        "pere_slow_disconnects_total",
        "counter",
        "Streams closed because their device fell too far behind.",
        s.slow_disconnects,
    );
    out.metric(
        "pere_streams_open",
        "gauge",
        "Open streams.",
        s.streams_open,
    );
    out.metric(
        "pere_events_retained",
        "gauge",
        "Retained events.",
        s.retained,
    );
    out.metric("pere_members", "gauge", "Device memberships.", s.members);
    out.metric(
        "pere_journal_batches_total",
        "counter",
        "Journal batches written (one sync each).",
        s.batches,
    );
    out.metric(
        "pere_journal_records_total",
        "counter",
        "Journal records written.",
        s.records,
    );
    out.metric(
        "pere_store_writable",
        "gauge",
        "1 while the store takes writes, 0 while it fails (writes get 503 and are retried).",
        u64::from(s.store_writable),
    );
    out.metric(
        "pere_store_failures_total",
        "counter",
        "Failed store writes and retries.",
        s.store_failures,
    );
    out.metric(
        "pere_store_damaged_regions",
        "gauge",
        "Regions of damaged records the store skipped and nobody has cleared yet (see /healthz).",
        s.damaged_regions as u64,
    );
    out.metric(
        "pere_store_damaged_bytes",
        "gauge",
        "Bytes of those regions.",
        s.damaged_bytes,
    );
    out.histogram(
        "pere_journal_write_seconds",
        "Time to write one journal batch until it is durable (with the file store: the write and its fsync); every publish and receipt waits for one.",
        &m.journal_write.snapshot(),
    );
    out.histogram(
        "pere_publish_to_delivered_seconds",
        "From an event's publish to its first write to each device's stream (replays to devices that were away included).",
        &m.publish_to_delivered.snapshot(),
    );
    out.histogram(
        "pere_publish_to_acked_seconds",
        "From an event's publish to each device's first receipt of it.",
        &m.publish_to_acked.snapshot(),
    );
    out.metric(
        "pere_connections_open",
        "gauge",
        "Open TCP connections (streams and plain requests).",
        limits.connections(),
    );
    out.metric(
        "pere_http_streams_open",
        "gauge",
        "Open event and receipts streams, as counted against --max-streams.",
        limits.streams(),
    );
    out.header(
        "pere_http_responses_total",
        "counter",
        "HTTP responses by status class.",
    );
    for (i, n) in http.by_class.iter().enumerate() {
        out.labelled(
            "pere_http_responses_total",
            &format!("class=\"{}xx\"", i + 1),
            n.load(Ordering::Relaxed),
        );
    }
    out.header(
        "pere_http_errors_total",
        "counter",
        "Error answers by their docs/PROTOCOL.md §8.1 code (invalid_channel, payload_too_large, not_a_recipient, …).",
    );
    let mut codes = ErrorCode::ALL.to_vec();
    codes.sort_by_key(|code| code.as_str());
    for code in codes {
        let n = http.errors[code as usize].load(Ordering::Relaxed);
        if n > 0 {
            out.labelled("pere_http_errors_total", &format!("code=\"{code}\""), n);
        }
    }
    out.header(
        "pere_auth_failures_total",
        "counter",
        "Requests refused by authentication: no or an unknown token (401), or a token that does not grant the request (403).",
    );
    out.labelled(
        "pere_auth_failures_total",
        "status=\"401\"",
        http.unauthorized.load(Ordering::Relaxed),
    );
    out.labelled(
        "pere_auth_failures_total",
        "status=\"403\"",
        http.forbidden.load(Ordering::Relaxed),
    );
    process_metrics(&mut out, http.started_at);
    let mut response = Response::new(Body::from(out.0));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// Clock ticks per second of `/proc/self/stat` (Linux's `USER_HZ`, 100 on
/// every architecture Linux runs PERE on; reading `sysconf` would need
/// `unsafe`).
const USER_HZ: f64 = 100.0;

/// The `process_*` metrics, as Prometheus' own client libraries name them,
/// from `/proc/self`; what cannot be read is left out (not zero).
fn process_metrics(out: &mut Exposition, started_at: SystemTime) {
    let read = |name: &str| std::fs::read_to_string(format!("/proc/self/{name}")).ok();
    let mut started = None;
    if let Some(status) = read("status") {
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        };
        if let Some(rss) = kib("VmRSS:") {
            out.metric(
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                rss * 1024,
            );
        }
        if let Some(size) = kib("VmSize:") {
            out.metric(
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
                size * 1024,
            );
        }
    }
    if let Some(stat) = read("stat") {
        // The command name (field 2) is in parentheses and may contain
        // spaces: fields are counted after its closing parenthesis.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
        // utime and stime are fields 14 and 15, starttime (in ticks after
        // boot) field 22: 11, 12 and 19 after field 3.
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
        if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
            out.metric(
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                (user + system) as f64 / USER_HZ,
            );
        }
        let boot = read_boot_time();
        if let (Some(start), Some(boot)) = (ticks(19), boot) {
            started = Some(boot + start as f64 / USER_HZ);
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.metric(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds.count(),
        );
    }
    if let Some(limits) = read("limits")
        && let Some(max) = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<u64>().ok())
    {
        out.metric(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max,
        );
    }
    // From /proc when it says, else when the server started serving.
    if let Some(start) = started.or_else(|| {
        started_at
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs_f64())
    }) {
        out.metric(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            start,
        );
    }
}

/// When the machine booted, in seconds since the epoch (`btime` of
/// `/proc/stat`).
fn read_boot_time() -> Option<f64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}
