//! `GET /feed/:channel` and `GET /feed?channel=…`: open an event stream.

use bytes::BytesMut;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use pere_core::{EventId, EventStore, Pattern, Resume, SubscribeRequest, Subscription};

use super::auth::Caller;
use super::health;
use super::input::{header_str, query_of, query_value};
use crate::error::ErrorCode;
use crate::error::{ApiError, escape};
use crate::server::app::App;
use crate::server::body::{Body, Form, Source, SseBody};
use crate::sse;

pub async fn feed<S: EventStore, B>(
    app: &App<S>,
    req: &Request<B>,
    path_channel: Option<&str>,
    caller: &Caller,
) -> Result<Response<Body>, ApiError> {
    let query = query_of(req)?;
    let mut patterns = Vec::new();
    if let Some(channel) = path_channel {
        patterns.push(Pattern::new(channel)?);
    }
    for (key, value) in &query {
        // `channel[]` is how jQuery, axios, PHP and Ruby's em-http encode
        // a list.
        if key == "channel" || key == "channel[]" {
            patterns.push(Pattern::new(value)?);
        }
    }
    if patterns.is_empty() {
        return Err(ApiError::new(
            ErrorCode::MissingChannel,
            "name a channel: GET /feed/:channel or GET /feed?channel=…",
        ));
    }
    // One channel not granted refuses the whole stream (docs/PROTOCOL.md §7).
    for pattern in &patterns {
        caller
            .require(
                app,
                |g| g.may_subscribe(pattern),
                || format!("subscribing to `{pattern}`"),
            )
            .await?;
    }
    let form = match query_value(&query, "envelope") {
        None => Form::Plain,
        Some("json") => Form::Envelope,
        Some(other) => {
            return Err(ApiError::new(
                ErrorCode::InvalidParameter,
                format!("envelope=`{}` is not `json`", escape(other)),
            ));
        }
    };
    let device = caller.device(req.headers(), &query)?;
    let header_id = header_str(req.headers(), "last-event-id")?.filter(|v| !v.is_empty());
    let resume = resume_point(header_id, &query)?;
    if app.hub.is_closing() {
        return unavailable(app, req, ApiError::shutting_down());
    }
    if req.method() == Method::HEAD {
        // A HEAD asks what a GET would answer: the stream's headers, without
        // opening a stream or making the device a member.
        return Ok(head_response());
    }
    // Over HTTP/2 the stream shares its connection's descriptor.
    let solo = req.version() != hyper::Version::HTTP_2;
    let slot = app.limits.acquire(device.as_ref(), solo)?;
    let subscribed = app
        .hub
        .subscribe_with_token(
            SubscribeRequest {
                device,
                patterns,
                resume,
            },
            header_id.map(str::to_string),
            caller.token(),
        )
        .await;
    let subscription = match subscribed.map_err(ApiError::from) {
        Ok(subscription) => subscription,
        Err(err)
            if matches!(
                err.code,
                ErrorCode::StoreUnavailable | ErrorCode::ShuttingDown
            ) =>
        {
            return unavailable(app, req, err);
        }
        Err(err) => return Err(err),
    };
    let opening = opening(app.config.retry.as_millis() as u64, &subscription);
    let mut body = SseBody::new(opening, Source::Events(subscription), app.config.keepalive)
        .with_slot(slot)
        .with_form(form);
    if let Some(end) = caller.stream_end() {
        // A JWT's stream ends at its `exp` (docs/PROTOCOL.md §7.4).
        body = body.until(end);
    }
    let mut response = Response::new(Body::Sse(Box::new(body)));
    *response.status_mut() = StatusCode::OK;
    sse_headers(response.headers_mut());
    Ok(response)
}

/// A stream asked for while the store (a cluster's log) takes no writes,
/// or the server is shutting down: an `EventSource` (it sends `Accept:
/// text/event-stream`, as browsers and SSE libraries do) is told to come
/// back ([`try_again`]); any other client gets the `503` of
/// docs/PROTOCOL.md §8, with `Retry-After`.
fn unavailable<S: EventStore, B>(
    app: &App<S>,
    req: &Request<B>,
    err: ApiError,
) -> Result<Response<Body>, ApiError> {
    let event_source = req
        .headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/event-stream"));
    if event_source {
        Ok(try_again(app, req, &err))
    } else {
        Err(err)
    }
}

/// The answer to a stream asked for while the store (a cluster's log) takes
/// no writes, or the server is shutting down: `200` with a `retry:` of
/// when to come back and a comment saying why, then the end. A `503` would
/// be final to an `EventSource` (any status but `200` fails it for good:
/// browsers, PERE's Ruby client), which must instead reconnect, here or to
/// another node, once the outage or the restart is over. No `pere.hello`:
/// the stream was never live. `Retry-After` says the same to other clients.
/// Over HTTP/1 the connection closes after it, so that every client sees
/// the stream end.
fn try_again<S: EventStore, B>(app: &App<S>, req: &Request<B>, err: &ApiError) -> Response<Body> {
    app.metrics.count_error(err);
    let wait = health::store_retry_after(&app.hub)
        .unwrap_or_default()
        .max(app.config.retry);
    let mut out = BytesMut::with_capacity(256);
    sse::encode_retry(
        &mut out,
        u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
    );
    sse::encode_comment(
        &mut out,
        &format!("{} ({})", err.message, err.code.as_str()),
    );
    let mut response = Response::new(Body::from(out.freeze()));
    sse_headers(response.headers_mut());
    health::set_retry_after(&mut response, wait);
    if req.version() < hyper::Version::HTTP_2 {
        response
            .headers_mut()
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The answer to `HEAD` on an event stream: its status and headers only.
pub fn head_response() -> Response<Body> {
    let mut response = Response::new(Body::empty());
    sse_headers(response.headers_mut());
    response
}

/// The headers of every event stream (docs/PROTOCOL.md §3).
pub fn sse_headers(h: &mut hyper::HeaderMap) {
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
}

/// The resume point, first match wins (docs/PROTOCOL.md §3): `Last-Event-ID`
/// header, `lastEventId` query parameter, `replay=all`, else the device's
/// cursor (or now).
pub fn resume_point(
    header_id: Option<&str>,
    query: &[(String, String)],
) -> Result<Resume, ApiError> {
    let parse = |raw: &str, name: &str| {
        EventId::parse(raw).map(Resume::After).map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidEventId,
                format!(
                    "{name} `{}` is not an event id (a decimal number)",
                    escape(raw)
                ),
            )
        })
    };
    if let Some(raw) = header_id {
        return parse(raw, "the Last-Event-ID header");
    }
    if let Some(raw) = query_value(query, "lastEventId").filter(|v| !v.is_empty()) {
        return parse(raw, "lastEventId");
    }
    match query_value(query, "replay") {
        None => Ok(Resume::Auto),
        Some("all") => Ok(Resume::All),
        Some(other) => Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!("replay=`{}` is not `all`", escape(other)),
        )),
    }
}

/// What a stream says first: `retry`, `pere.hello`, and `pere.gap` when the
/// resume point is older than the retained history.
fn opening(retry_ms: u64, subscription: &Subscription) -> bytes::Bytes {
    let hello = subscription.hello();
    let mut out = BytesMut::with_capacity(256);
    sse::encode_retry(&mut out, retry_ms);
    let hello_data = serde_json::json!({
        "device": hello.device.as_ref().map(|d| d.as_str()),
        "channels": hello.channels.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        "resumed_from": hello.resumed_from.map(|id| id.to_string()),
        "replayed": hello.replayed,
    })
    .to_string();
    // Control events carry no `id:` so they never move a client's
    // lastEventId; their `pere.` type keeps them from `onmessage`.
    let _ = sse::encode_event(&mut out, None, Some("pere.hello"), &hello_data);
    if let Some(gap) = subscription.gap() {
        let mut gap_data = serde_json::json!({
            "from": gap.from.to_string(),
            "oldest": gap.oldest.map(|id| id.to_string()),
        });
        if gap.failover {
            // As the gap that ends a stream in a failover says it.
            gap_data["reason"] = "cluster_failover".into();
        }
        let gap_data = gap_data.to_string();
        let _ = sse::encode_event(&mut out, None, Some("pere.gap"), &gap_data);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_header_wins_over_the_query_and_replay() {
        let query = q(&[("lastEventId", "5"), ("replay", "all")]);
        assert_eq!(
            resume_point(Some("9"), &query).unwrap(),
            Resume::After(EventId(9))
        );
        assert_eq!(
            resume_point(None, &query).unwrap(),
            Resume::After(EventId(5))
        );
        assert_eq!(
            resume_point(None, &q(&[("replay", "all")])).unwrap(),
            Resume::All
        );
        assert_eq!(resume_point(None, &[]).unwrap(), Resume::Auto);
        assert!(resume_point(Some("abc"), &[]).is_err());
        assert!(resume_point(None, &q(&[("replay", "some")])).is_err());
    }
}
