//! `GET /healthz`: `200 ok` while the store is whole and takes writes;
//! what is wrong with it otherwise, for a probe and for the operator who
//! reads it. Also the honest `Retry-After` of every `store_unavailable`.

use std::time::Duration;

use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use pere_core::{EventStore, Hub};

use crate::error::ApiError;
use crate::error::ErrorCode;
use crate::server::app::App;
use crate::server::body::Body;
use crate::server::response::{json, text};

/// Damage listed in full; past this, only counted.
const LISTED: usize = 20;

/// The health answer.
pub(super) fn health<S: EventStore>(app: &App<S>) -> Response<Body> {
    let health = app.hub.store_health();
    if let Some(outage) = &health.outage {
        // PROTOCOL §8's error, with what a probe or an operator needs.
        let err = ApiError::new(
            ErrorCode::StoreUnavailable,
            format!(
                "the event store is unavailable: {}; writes are refused and retried (next try \
                 in {} ms)",
                outage.cause,
                outage.retry_in.as_millis()
            ),
        );
        let mut response = json(
            err.status(),
            serde_json::json!({
                "error": err.message,
                "code": err.code.as_str(),
                "store": {
                    "writable": false,
                    "since": outage.since.to_rfc3339(),
                    "failures": outage.failures,
                    "retry_in_ms": outage.retry_in.as_millis() as u64,
                    "damaged_regions": health.damage.len(),
                },
            }),
        );
        set_retry_after(&mut response, outage.retry_in);
        return response;
    }
    if health.damage.is_empty() {
        return text(StatusCode::OK, "ok");
    }
    // Damaged records were skipped when the store opened. The server
    // serves everything else and a restart would not bring them back, so
    // this is a 200 a liveness probe accepts, with a body a monitor that
    // expects `ok` notices.
    let bytes: u64 = health.damage.iter().map(|d| d.len).sum();
    let listed: Vec<serde_json::Value> = health
        .damage
        .iter()
        .take(LISTED)
        .map(|d| {
            serde_json::json!({
                "segment": d.file.display().to_string(),
                "offset": d.offset,
                "bytes": d.len,
                "cause": d.cause,
                "copy": d.kept_in.as_ref().map(|k| k.display().to_string()),
            })
        })
        .collect();
    json(
        StatusCode::OK,
        serde_json::json!({
            "status": "degraded",
            "message": format!(
                "the store skipped {} damaged region(s) of its log ({bytes} bytes): the records \
                 in them are lost, every other record is served. Inspect the copies, recover \
                 what matters, then remove them to clear this (README, Durability)",
                health.damage.len()
            ),
            "store": {
                "writable": true,
                "damaged_regions": health.damage.len(),
                "damaged_bytes": bytes,
                "damage": listed,
            },
        }),
    )
}

/// The store's `Retry-After` for a `store_unavailable` answer: the time
/// until the hub tries the store again, at least a second; `None` when the
/// store is not failing (the error came from elsewhere).
pub(super) fn store_retry_after<S: EventStore>(hub: &Hub<S>) -> Option<Duration> {
    hub.store_health().outage.map(|outage| outage.retry_in)
}

/// Sets `Retry-After` to `wait` in whole seconds, rounded up, at least 1.
pub(super) fn set_retry_after(response: &mut Response<Body>, wait: Duration) {
    let secs = wait.as_millis().div_ceil(1000).max(1);
    if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
}
