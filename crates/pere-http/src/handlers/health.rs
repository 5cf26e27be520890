//! `GET /healthz`: `200 ok` while the store is whole; what is wrong with
//! it otherwise, for a probe and for the operator who reads it.

use hyper::{Response, StatusCode};
use pere_core::EventStore;

use super::{App, json, text};
use crate::body::Body;

/// Damage listed in full; past this, only counted.
const LISTED: usize = 20;

/// The health answer.
pub(super) fn health<S: EventStore>(app: &App<S>) -> Response<Body> {
    let health = app.hub.store_health();
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
