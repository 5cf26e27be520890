//! `POST /push/:channel`: publish, optionally waiting for receipts.

use std::time::Duration;

use hyper::header::{HeaderName, HeaderValue, LOCATION};
use hyper::{Request, Response, StatusCode};
use pere_core::{ChannelName, EventStore, EventType, Publish};

use super::auth::Caller;
use super::input::{header_str, query_of, query_value, read_body};
use crate::error::ErrorCode;
use crate::error::{ApiError, escape};
use crate::server::app::App;
use crate::server::body::Body;

/// Marks the answer to a retried publish (the name Stripe's API uses).
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
use crate::server::body::RequestBody;
use crate::server::response::json_raw;

/// Default `timeout` of a waiting publish, in milliseconds.
const DEFAULT_WAIT_MS: u64 = 5_000;
/// Longest `timeout` honoured; larger values are capped (docs/PROTOCOL.md §2).
const MAX_WAIT_MS: u64 = 60_000;

/// What a publisher waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    Delivered,
    Acked,
}

/// Reads `timeout`: decimal milliseconds (docs/PROTOCOL.md §2.1), or a duration with
/// a unit as the command-line tools take them (`5s`, `500ms`, `1m`; issue
/// 18.9: `timeout=5s` was refused). Values above [`MAX_WAIT_MS`] are
/// capped, however many digits they have, rather than refused; the answer
/// says which timeout applied.
fn parse_timeout(text: &str) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Some(text.parse::<u64>().unwrap_or(u64::MAX).min(MAX_WAIT_MS));
    }
    // A bare fraction would be seconds to parse_duration but reads as
    // milliseconds here: ask for a unit instead of guessing.
    if !text.ends_with(|c: char| c.is_ascii_alphabetic()) || text.starts_with(['+', '-', ' ']) {
        return None;
    }
    let d = pere_core::duration::parse_duration(text).ok()?;
    Some(
        u64::try_from(d.as_millis())
            .unwrap_or(u64::MAX)
            .min(MAX_WAIT_MS),
    )
}

pub async fn push<S: EventStore>(
    app: &App<S>,
    req: Request<RequestBody>,
    channel: &str,
    caller: &Caller,
) -> Result<Response<Body>, ApiError> {
    let channel = ChannelName::new(channel)?;
    caller
        .require(
            app,
            |g| g.may_publish(&channel),
            || format!("publishing to `{channel}`"),
        )
        .await?;
    let query = query_of(&req)?;
    let device = caller.device(req.headers(), &query)?;
    let kind = query_value(&query, "event")
        .map(EventType::new)
        .transpose()?;
    let idempotency_key = header_str(req.headers(), "idempotency-key")?.map(str::to_string);
    let wait = match query_value(&query, "wait") {
        None => None,
        Some("delivered") => Some(Wait::Delivered),
        Some("acked") => Some(Wait::Acked),
        Some(other) => {
            return Err(ApiError::new(
                ErrorCode::InvalidParameter,
                format!(
                    "wait=`{}` is not one of `delivered`, `acked`",
                    escape(other)
                ),
            ));
        }
    };
    let timeout_ms = match query_value(&query, "timeout") {
        None => DEFAULT_WAIT_MS,
        Some(t) => parse_timeout(t).ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidParameter,
                format!(
                    "timeout=`{}` is not a number of milliseconds or a duration such as 5s, 500ms, 1m",
                    escape(t)
                ),
            )
        })?,
    };
    let payload = read_body(
        req,
        app.hub.config().max_payload,
        app.config.body_read_timeout,
    )
    .await
    .map_err(name_the_limit)?;
    let published = app
        .hub
        .publish(Publish {
            channel,
            payload,
            kind,
            device,
            idempotency_key,
        })
        .await
        .map_err(|e| name_the_limit(e.into()))?;
    // Without `wait`, the audience as published; with it, as the answer
    // leaves, late joiners included (§5), like the lists beside it.
    let mut recipients = published.recipients;
    let mut waited = String::new();
    if let Some(wait) = wait {
        let mut interrupted = false;
        if let Some(receipts) = &published.receipts {
            let done = receipts.settled_when(|r| match wait {
                Wait::Delivered => r.undelivered() == 0,
                Wait::Acked => r.unacked() == 0,
            });
            // At shutdown, answer with the receipts so far rather than be
            // cut by the grace period (issue 18.1: a publisher that lost
            // the answer could not tell the event had been published).
            tokio::select! {
                _ = tokio::time::timeout(Duration::from_millis(timeout_ms), done) => {}
                () = app.hub.closing() => interrupted = true,
            }
        }
        if let Some(kept) = app.hub.lost_after()
            && published.id > kept
        {
            // docs/PROTOCOL.md §10: a request whose entry the cluster log
            // took and then lost (a failover while it waited) gets 503.
            return Err(ApiError::new(
                ErrorCode::StoreUnavailable,
                "the cluster log lost this event in a failover while the answer waited; publish it again (with the same Idempotency-Key, if any)",
            ));
        }
        let (delivered, acked, pending, unacked) = match &published.receipts {
            Some(receipts) => {
                let s = receipts.summary();
                recipients = s.recipients;
                (s.delivered, s.acked, s.pending, s.unacked)
            }
            None => (0, 0, Vec::new(), Vec::new()),
        };
        // docs/PROTOCOL.md §2: `pending` are the devices nothing was written
        // to yet, `unacked` those that have not acknowledged; `timed_out`
        // is read from the same lists, so the answer never contradicts
        // itself when the last receipt lands at the deadline.
        let timed_out = match wait {
            Wait::Delivered => !pending.is_empty(),
            Wait::Acked => !unacked.is_empty(),
        };
        waited.push_str(&format!(
            r#","delivered":{delivered},"acked":{acked},"pending":{},"unacked":{},"timed_out":{timed_out},"timeout":{timeout_ms}"#,
            serde_json::to_string(&pending).unwrap_or_else(|_| "[]".into()),
            serde_json::to_string(&unacked).unwrap_or_else(|_| "[]".into()),
        ));
        if interrupted && timed_out {
            // The wait ended early: the server is stopping.
            waited.push_str(r#","shutting_down":true"#);
        }
    }
    let body = format!(
        r#"{{"id":"{}","channel":"{}","recipients":{recipients}{waited}}}"#,
        published.id, published.channel
    );
    let mut response = json_raw(StatusCode::CREATED, body);
    if published.duplicate {
        // A header, not a field: the contract (§2) answers a retry with
        // the first result itself, which a client may compare whole.
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    if let Ok(location) =
        HeaderValue::from_str(&format!("/receipts/{}/{}", published.channel, published.id))
    {
        response.headers_mut().insert(LOCATION, location);
    }
    Ok(response)
}

/// A `413` says which setting sets the limit (issue 18.9): the publisher
/// cannot change it, but now knows what to ask the operator for.
fn name_the_limit(mut err: ApiError) -> ApiError {
    if err.code == ErrorCode::PayloadTooLarge {
        err.message
            .push_str(" (the server's --max-payload; send smaller events or ask its operator)");
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_decimal_milliseconds_capped_at_a_minute() {
        assert_eq!(parse_timeout("0"), Some(0));
        assert_eq!(parse_timeout("250"), Some(250));
        assert_eq!(parse_timeout("60001"), Some(MAX_WAIT_MS));
        assert_eq!(parse_timeout("99999999999999999999999"), Some(MAX_WAIT_MS));
        assert_eq!(parse_timeout("5s"), Some(5_000));
        assert_eq!(parse_timeout("250ms"), Some(250));
        assert_eq!(parse_timeout("1.5s"), Some(1_500));
        assert_eq!(parse_timeout("2m"), Some(MAX_WAIT_MS));
        for bad in [
            "", "-1", "+5", "1.5", "1e3", " 5", "abc", "5 weeks", "-5s", "s",
        ] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }
}
