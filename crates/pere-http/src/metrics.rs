//! Prometheus metrics: HTTP counters kept here, hub counters read from
//! [`pere_core::Hub::stats`] at render time.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use pere_core::EventStore;

use crate::body::Body;
use crate::handlers::App;

/// Responses by status class.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    by_class: [AtomicU64; 5],
}

impl HttpMetrics {
    /// Counts a response.
    pub fn count(&self, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
    }
}

/// `GET /metrics` in the Prometheus text format.
pub fn render<S: EventStore>(app: &App<S>) -> Response<Body> {
    let s = app.hub.stats();
    let mut out = String::with_capacity(2048);
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    };
    metric(
        "pere_events_published_total",
        "counter",
        "Events published.",
        s.published,
    );
    metric(
        "pere_deliveries_total",
        "counter",
        "Events written to streams.",
        s.delivered,
    );
    metric(
        "pere_redeliveries_total",
        "counter",
        "Events written again to a device that had them written before (unacknowledged events resent on resume, a device's second stream).",
        s.redelivered,
    );
    metric(
        "pere_receipts_total",
        "counter",
        "Receipts recorded.",
        s.acked,
    );
    metric(
        "pere_receipt_stream_gaps_total",
        "counter",
        "Receipts streams told of a gap: they fell behind (or resumed from before) what their channel keeps.",
        s.receipt_gaps,
    );
    metric(
        "pere_streams_opened_total",
        "counter",
        "Streams opened.",
        s.streams_opened,
    );
    metric(
        "pere_slow_disconnects_total",
        "counter",
        "Streams closed because their device fell too far behind.",
        s.slow_disconnects,
    );
    metric(
        "pere_streams_open",
        "gauge",
        "Open streams.",
        s.streams_open as u64,
    );
    metric(
        "pere_events_retained",
        "gauge",
        "Retained events.",
        s.retained as u64,
    );
    metric(
        "pere_members",
        "gauge",
        "Device memberships.",
        s.members as u64,
    );
    metric(
        "pere_journal_batches_total",
        "counter",
        "Journal batches written (one sync each).",
        s.batches,
    );
    metric(
        "pere_journal_records_total",
        "counter",
        "Journal records written.",
        s.records,
    );
    metric(
        "pere_store_writable",
        "gauge",
        "1 while the store takes writes, 0 while it fails (writes get 503 and are retried).",
        u64::from(s.store_writable),
    );
    metric(
        "pere_store_failures_total",
        "counter",
        "Failed store writes and retries.",
        s.store_failures,
    );
    metric(
        "pere_store_damaged_regions",
        "gauge",
        "Regions of damaged records the store skipped and nobody has cleared yet (see /healthz).",
        s.damaged_regions as u64,
    );
    metric(
        "pere_store_damaged_bytes",
        "gauge",
        "Bytes of those regions.",
        s.damaged_bytes,
    );
    metric(
        "pere_connections_open",
        "gauge",
        "Open TCP connections (streams and plain requests).",
        app.limits.connections() as u64,
    );
    metric(
        "pere_http_streams_open",
        "gauge",
        "Open event and receipts streams, as counted against --max-streams.",
        app.limits.streams() as u64,
    );
    let _ = writeln!(
        out,
        "# HELP pere_http_responses_total HTTP responses by status class."
    );
    let _ = writeln!(out, "# TYPE pere_http_responses_total counter");
    for (i, n) in app.metrics.by_class.iter().enumerate() {
        let _ = writeln!(
            out,
            "pere_http_responses_total{{class=\"{}xx\"}} {}",
            i + 1,
            n.load(Ordering::Relaxed)
        );
    }
    let mut response = Response::new(Body::from(out));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
