//! `GET /receipts/:channel/:id` (a summary) and `GET /receipts/:channel`
//! (a live stream of receipt changes).

use bytes::BytesMut;
use hyper::{Request, Response, StatusCode};
use pere_core::{ChannelName, EventId, EventStore, Pattern, ReceiptSummary};

use super::auth::Caller;
use super::input::{header_str, query_of, query_value};
use crate::error::ApiError;
use crate::error::ErrorCode;
use crate::server::app::App;
use crate::server::body::{Body, Source, SseBody};
use crate::server::response::json;
use crate::sse;

pub async fn summary<S: EventStore>(
    app: &App<S>,
    channel: &str,
    id: &str,
    caller: &Caller,
) -> Result<Response<Body>, ApiError> {
    let pattern = Pattern::new(channel)?;
    // Receipts tell a publisher what became of its events: they are for
    // the channel's publishers, and for operators.
    caller
        .require(
            app,
            |g| g.may_read_receipts(&pattern),
            || format!("reading receipts of `{pattern}`"),
        )
        .await?;
    let id = EventId::parse(id)?;
    // On a cluster, as of the latest receipt any node took.
    app.hub.caught_up().await;
    let summary = app.hub.receipt_summary(&pattern, id)?;
    Ok(json(StatusCode::OK, summary_json(&summary)))
}

/// The JSON of docs/PROTOCOL.md §5.
pub fn summary_json(s: &ReceiptSummary) -> serde_json::Value {
    let devices: serde_json::Map<String, serde_json::Value> = s
        .devices
        .iter()
        .map(|(device, r)| {
            (
                device.to_string(),
                serde_json::json!({
                    "state": r.state.as_str(),
                    "delivered_at": r.delivered_at.map(|t| t.to_rfc3339()),
                    "acked_at": r.acked_at.map(|t| t.to_rfc3339()),
                    "status": r.status.as_deref(),
                    "status_at": r.status_at.map(|t| t.to_rfc3339()),
                    "deliveries": r.deliveries,
                }),
            )
        })
        .collect();
    serde_json::json!({
        "id": s.id.to_string(),
        "channel": s.channel.as_str(),
        "published_at": s.published_at.to_rfc3339(),
        "recipients": s.recipients,
        "delivered": s.delivered,
        "acked": s.acked,
        "pending": s.pending.iter().map(|d| d.as_str()).collect::<Vec<_>>(),
        "unacked": s.unacked.iter().map(|d| d.as_str()).collect::<Vec<_>>(),
        "devices": devices,
    })
}

/// `GET /receipts/:channel`; a `HEAD` gets the headers only, watching
/// nothing. Each change carries its number as the SSE `id`, so a client
/// that reconnects with `Last-Event-ID` (or `?lastEventId=`) gets what it
/// missed, or a `pere.gap` when that is no longer kept
/// (docs/PROTOCOL.md §5).
pub async fn stream<S: EventStore, B>(
    app: &App<S>,
    req: &Request<B>,
    channel: &str,
    caller: &Caller,
) -> Result<Response<Body>, ApiError> {
    let head = req.method() == hyper::Method::HEAD;
    let channel = ChannelName::new(channel)?;
    let pattern = Pattern::from(channel.clone());
    caller
        .require(
            app,
            |g| g.may_read_receipts(&pattern),
            || format!("reading receipts of `{channel}`"),
        )
        .await?;
    if app.hub.is_closing() {
        return Err(ApiError::shutting_down());
    }
    if head {
        return Ok(super::feed::head_response());
    }
    let after = resume_after(req)?;
    if after.is_some() {
        // On a cluster, a number another node gave a moment ago: one this
        // node has not reached would be taken as not given yet.
        app.hub.caught_up().await;
    }
    let slot = app
        .limits
        .acquire(None, req.version() != hyper::Version::HTTP_2)?;
    let changes = app.hub.watch_receipts(&channel, after);
    let mut opening = BytesMut::new();
    sse::encode_retry(&mut opening, app.config.retry.as_millis() as u64);
    let mut body = SseBody::new(
        opening.freeze(),
        Source::Receipts(changes),
        app.config.keepalive,
    )
    .with_slot(slot);
    if caller.token().is_none() {
        // Opened while auth was off: nothing grants it once auth comes on
        // (the first admin token created at run time).
        let auth = app.hub.auth().clone();
        let mut changes = auth.changes();
        body = body.until(async move {
            while !auth.is_enabled() {
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        });
    }
    if let Some(token) = caller.token() {
        // The hub does not track receipts streams: this one watches the
        // token table itself and ends once its token no longer grants it.
        let auth = app.hub.auth().clone();
        let mut changes = auth.changes();
        let expiry = caller.stream_end();
        let revoked = async move {
            loop {
                if changes.changed().await.is_err() {
                    // The table is gone with the hub; shutdown ends us.
                    std::future::pending::<()>().await;
                }
                match auth.grants(&token) {
                    Some(g) if g.may_read_receipts(&pattern) => {}
                    _ => return,
                }
            }
        };
        body = body.until(async move {
            match expiry {
                // A JWT's stream also ends at its `exp` (docs/PROTOCOL.md §7.4).
                Some(expiry) => tokio::select! {
                    () = expiry => {}
                    () = revoked => {}
                },
                None => revoked.await,
            }
        });
    }
    let mut response = Response::new(Body::Sse(Box::new(body)));
    super::feed::sse_headers(response.headers_mut());
    Ok(response)
}

/// The change number a receipts stream resumes after: the `Last-Event-ID`
/// header, else `lastEventId`; `None` starts from now.
fn resume_after<B>(req: &Request<B>) -> Result<Option<u64>, ApiError> {
    let query = query_of(req)?;
    let raw = match header_str(req.headers(), "last-event-id")?.filter(|v| !v.is_empty()) {
        Some(raw) => Some(raw.to_string()),
        None => query_value(&query, "lastEventId")
            .filter(|v| !v.is_empty())
            .map(str::to_string),
    };
    raw.map(|raw| {
        EventId::parse(&raw).map(|id| id.0).map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidEventId,
                format!(
                    "the resume point `{}` is not a change number (a decimal number)",
                    crate::error::escape(&raw)
                ),
            )
        })
    })
    .transpose()
}
