//! `POST /feedback/:channel`: a device's receipt, or a batch of them.
//!
//! PERE's clients send receipts three ways, all accepted: a form body
//! `status=…` with the id in a `Last-Event-ID` (web page) or `last_event_id`
//! (subscriber.rb) header; a JSON object `{"id","status"}`; or a JSON array
//! of such objects for a batch. A page's `FormData` (multipart) is read as
//! the form it is.

use std::borrow::Cow;
use std::io::Write as _;

use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use pere_core::{Acked, DeviceId, EventId, EventStore, MAX_STATUS_LEN, Pattern};
use serde_json::Value;

use super::auth::Caller;
use super::input::{header_str, query_of, read_body};
use super::multipart;
use crate::error::ErrorCode;
use crate::error::{ApiError, escape};
use crate::server::app::App;
use crate::server::body::Body;
use crate::server::body::RequestBody;
use crate::server::response::{json, json_raw};
use crate::server::router::parse_query;

/// Largest receipt body, in bytes (room for a batch of thousands).
pub const MAX_FEEDBACK_BODY: usize = 1024 * 1024;
/// Most receipts in one batch.
pub const MAX_BATCH_ITEMS: usize = 10_000;

/// One receipt as read from the request, before validation.
#[derive(Debug, Default, PartialEq, Eq)]
struct RawReceipt {
    /// The id from a JSON body: it wins over every header.
    id: Option<String>,
    /// The `last_event_id` form field: the last resort, after the headers
    /// (docs/PROTOCOL.md §4).
    form_id: Option<String>,
    status: Option<String>,
}

/// A receipt object whose fields are strings (or null, or missing).
#[derive(serde::Deserialize)]
struct PlainReceipt<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
}

/// What a feedback body holds. A batch keeps a malformed item as its own
/// error so that it does not void the others.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    One(RawReceipt),
    Batch(Vec<Result<RawReceipt, (Option<String>, ApiError)>>),
}

/// One receipt, checked, for the hub.
type Item = (Pattern, DeviceId, EventId, String);

/// A receipt request read and checked, its receipts not yet recorded.
pub(crate) enum Read {
    /// A single receipt: its answer is the receipt's state, or its error.
    One(Item),
    /// A JSON array: one answer per item, in order. `results` holds each
    /// item's error, or `None` for the next of `valid`.
    Batch {
        results: Vec<Option<Value>>,
        ids: Vec<Option<String>>,
        valid: Vec<Item>,
    },
}

pub async fn feedback<S: EventStore>(
    app: &App<S>,
    req: Request<RequestBody>,
    channel: &str,
    caller: &Caller,
) -> Result<Response<Body>, ApiError> {
    let mut items = Vec::new();
    let shape = read(app, req, channel, caller).await?.split(&mut items);
    let acked = app.hub.ack_batch(items).await;
    answer(shape, &mut acked.into_iter())
}

/// Everything a receipt request asks before the hub records it: the grant,
/// the device, the body and each receipt's id and status.
pub(crate) async fn read<S: EventStore>(
    app: &App<S>,
    req: Request<RequestBody>,
    channel: &str,
    caller: &Caller,
) -> Result<Read, ApiError> {
    let subscription = Pattern::new(channel)?;
    // A receipt is a subscriber's act: it needs the subscribe grant, and
    // it is the token's subject that acknowledges.
    caller
        .require(
            app,
            |g| g.may_subscribe(&subscription),
            || format!("acknowledging on `{subscription}`"),
        )
        .await?;
    let query = query_of(&req)?;
    let device = caller.device(req.headers(), &query)?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::MissingDevice,
            "a receipt needs a device: send a `device` header or `?device=`",
        )
    })?;
    let header_id = match header_str(req.headers(), "last-event-id")?.filter(|v| !v.is_empty()) {
        Some(id) => Some(id.to_string()),
        None => header_str(req.headers(), "last_event_id")?
            .filter(|v| !v.is_empty())
            .map(str::to_string),
    };
    let content_type = header_str(req.headers(), CONTENT_TYPE.as_str())
        .ok()
        .flatten()
        .map(str::to_string);
    let body = read_body(req, MAX_FEEDBACK_BODY, app.config.body_read_timeout).await?;
    Ok(match parse_typed(&body, content_type.as_deref())? {
        Parsed::One(raw) => {
            let (id, status) = validate(&with_header_id(raw, header_id))?;
            Read::One((subscription, device, id, status))
        }
        Parsed::Batch(items) => {
            let mut results: Vec<Option<Value>> = Vec::with_capacity(items.len());
            let mut valid = Vec::new();
            let mut ids = Vec::with_capacity(items.len());
            for item in items {
                let checked = item.and_then(|raw| match validate(&raw) {
                    Ok(valid) => Ok((raw.id, valid)),
                    Err(err) => Err((raw.id, err)),
                });
                match checked {
                    Ok((raw_id, (id, status))) => {
                        valid.push((subscription.clone(), device.clone(), id, status));
                        results.push(None);
                        ids.push(raw_id);
                    }
                    Err((raw_id, err)) => {
                        results.push(Some(item_error(raw_id.as_deref(), &err)));
                        ids.push(raw_id);
                    }
                }
            }
            Read::Batch {
                results,
                ids,
                valid,
            }
        }
    })
}

/// What a [`Read`]'s answer is made of besides its receipts' outcomes.
pub(crate) enum Shape {
    One,
    Batch {
        results: Vec<Option<Value>>,
        ids: Vec<Option<String>>,
    },
}

impl Read {
    /// Moves the receipts to the end of `items`, for one
    /// [`pere_core::Hub::ack_batch`] (requests read together share one trip
    /// to the hub's writer); what is left makes the answer.
    pub(crate) fn split(self, items: &mut Vec<Item>) -> Shape {
        match self {
            Read::One(item) => {
                items.push(item);
                Shape::One
            }
            Read::Batch {
                results,
                ids,
                valid,
            } => {
                items.extend(valid);
                Shape::Batch { results, ids }
            }
        }
    }
}

/// The answer to a [`Read`], taking its receipts' outcomes from `acked`
/// (the hub's results for what [`Read::split`] gave, in order).
pub(crate) fn answer(
    shape: Shape,
    acked: &mut impl Iterator<Item = pere_core::Result<Acked>>,
) -> Result<Response<Body>, ApiError> {
    match shape {
        Shape::One => match acked.next() {
            Some(Ok(a)) => Ok(json_raw(StatusCode::OK, acked_text(&a))),
            Some(Err(e)) => Err(e.into()),
            None => Err(ApiError::shutting_down()),
        },
        Shape::Batch { results, ids } => {
            let mut recorded = false;
            // A store that takes nothing makes the whole request a `503`
            // with `Retry-After`, as a single receipt's (PROTOCOL.md §10).
            let mut unavailable: Option<ApiError> = None;
            let out: Vec<Value> = results
                .into_iter()
                .zip(&ids)
                .map(|(r, raw_id)| match r {
                    Some(err) => err,
                    None => match acked.next() {
                        Some(Ok(a)) => {
                            recorded = true;
                            acked_json(&a)
                        }
                        Some(Err(e)) => {
                            let err = ApiError::from(e);
                            let value = item_error(raw_id.as_deref(), &err);
                            if err.status() == StatusCode::SERVICE_UNAVAILABLE {
                                unavailable.get_or_insert(err);
                            }
                            value
                        }
                        None => {
                            unavailable.get_or_insert_with(ApiError::shutting_down);
                            item_error(raw_id.as_deref(), &ApiError::shutting_down())
                        }
                    },
                })
                .collect();
            match unavailable {
                Some(err) if !recorded => Err(err),
                _ => Ok(json(StatusCode::OK, Value::Array(out))),
            }
        }
    }
}

/// Whether a `Content-Type` says JSON.
fn is_json_type(content_type: &str) -> bool {
    content_type.to_ascii_lowercase().contains("json")
}

/// The body as text; `400 invalid_utf8` if it is not UTF-8.
fn body_text(body: &[u8]) -> Result<&str, ApiError> {
    std::str::from_utf8(body).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidUtf8,
            format!(
                "the receipt body is not UTF-8 text (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })
}

/// A single receipt's id, first match wins: JSON `id`, `Last-Event-ID`,
/// `last_event_id` header, `last_event_id` form field (docs/PROTOCOL.md §4).
fn with_header_id(mut raw: RawReceipt, header_id: Option<String>) -> RawReceipt {
    raw.id = raw.id.or(header_id).or(raw.form_id.take());
    raw
}

/// What the handler makes of a receipt request before the hub sees it: each
/// receipt validated (one for a single receipt, one per item for a batch);
/// the handler's own steps, for the fuzzer.
#[doc(hidden)]
#[allow(clippy::type_complexity)]
pub fn read_receipts(
    body: &[u8],
    content_type: Option<&str>,
    header_id: Option<&str>,
) -> Result<(bool, Vec<Result<(EventId, String), ApiError>>), ApiError> {
    let header_id = header_id.filter(|v| !v.is_empty()).map(str::to_string);
    match parse_typed(body, content_type)? {
        Parsed::One(raw) => Ok((false, vec![validate(&with_header_id(raw, header_id))])),
        Parsed::Batch(items) => Ok((
            true,
            items
                .into_iter()
                .map(|item| item.map_err(|(_, e)| e).and_then(|raw| validate(&raw)))
                .collect(),
        )),
    }
}

fn acked_json(a: &Acked) -> Value {
    serde_json::json!({
        "id": a.id.to_string(),
        "device": a.device.as_str(),
        "state": a.state.as_str(),
    })
}

/// [`acked_json`] as text, without building the JSON value: the answer to
/// every single receipt.
fn acked_text(a: &Acked) -> String {
    let mut out = Vec::with_capacity(48 + a.device.as_str().len());
    let _ = write!(out, "{{\"id\":\"{}\",\"device\":", a.id);
    let _ = serde_json::to_writer(&mut out, a.device.as_str());
    let _ = write!(out, ",\"state\":\"{}\"}}", a.state.as_str());
    String::from_utf8(out).unwrap_or_else(|_| acked_json(a).to_string())
}

fn item_error(id: Option<&str>, err: &ApiError) -> Value {
    serde_json::json!({ "id": id, "error": err.message, "code": err.code })
}

/// Checks a receipt's id and status (default `ok`).
fn validate(raw: &RawReceipt) -> Result<(EventId, String), ApiError> {
    let Some(id) = raw.id.as_deref() else {
        return Err(ApiError::new(
            ErrorCode::MissingEventId,
            "a receipt needs an event id: a JSON `id`, a `Last-Event-ID` or `last_event_id` header, or a `last_event_id` form field",
        ));
    };
    let id = EventId::parse(id)?;
    let status = raw.status.clone().unwrap_or_else(|| "ok".to_string());
    if status.len() > MAX_STATUS_LEN {
        return Err(pere_core::Error::StatusTooLong {
            size: status.len(),
            limit: MAX_STATUS_LEN,
        }
        .into());
    }
    Ok((id, status))
}

/// Reads a feedback body as its `Content-Type` says: `multipart/form-data`
/// (a page's `FormData`), else as [`parse_body`] does.
fn parse_typed(body: &[u8], content_type: Option<&str>) -> Result<Parsed, ApiError> {
    match content_type.and_then(multipart::boundary) {
        // Read as bytes: an upload beside the fields may be anything.
        Some(boundary) => Ok(Parsed::One(form_receipt(&multipart::fields(
            body, boundary,
        )?))),
        None => parse_body(body_text(body)?, content_type.is_some_and(is_json_type)),
    }
}

/// A receipt from form fields (URL-encoded or multipart): the id from
/// `last_event_id` (or `id`), the status from `status`.
fn form_receipt(form: &[(String, String)]) -> RawReceipt {
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    RawReceipt {
        id: None,
        form_id: field("last_event_id")
            .or_else(|| field("id"))
            .filter(|v| !v.is_empty()),
        status: field("status"),
    }
}

/// Reads a feedback body: JSON (object or array) when it says so or looks
/// like it, else a form; empty is a receipt with no fields.
fn parse_body(text: &str, is_json: bool) -> Result<Parsed, ApiError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(Parsed::One(RawReceipt::default()));
    }
    if is_json || trimmed.starts_with('{') || trimmed.starts_with('[') {
        // The common body, `{"id":"…","status":"…"}`, is read without a
        // JSON tree. Whatever it does not take (an id as a number, a field
        // twice, anything malformed) the tree below reads, as always.
        if trimmed.starts_with('{')
            && let Ok(plain) = serde_json::from_str::<PlainReceipt<'_>>(trimmed)
        {
            return Ok(Parsed::One(RawReceipt {
                id: plain.id.map(Cow::into_owned),
                form_id: None,
                status: plain.status.map(Cow::into_owned),
            }));
        }
        let value: Value = serde_json::from_str(trimmed).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidBody,
                format!(
                    "the receipt body is not valid JSON: {}",
                    escape(&e.to_string())
                ),
            )
        })?;
        return match value {
            Value::Array(items) => {
                if items.len() > MAX_BATCH_ITEMS {
                    return Err(ApiError::new(
                        ErrorCode::BatchTooLarge,
                        format!(
                            "a batch holds at most {MAX_BATCH_ITEMS} receipts, this one has {}",
                            items.len()
                        ),
                    ));
                }
                Ok(Parsed::Batch(
                    items
                        .iter()
                        .map(|item| json_receipt(item).map_err(|err| (shown_id(item), err)))
                        .collect(),
                ))
            }
            other => json_receipt(&other).map(Parsed::One),
        };
    }
    let form = parse_query(trimmed).map_err(|err| ApiError {
        code: if err.code == ErrorCode::InvalidUtf8 {
            err.code
        } else {
            ErrorCode::InvalidBody
        },
        ..err
    })?;
    Ok(Parsed::One(form_receipt(&form)))
}

/// The id of a batch item as the client wrote it, to name it in its error.
fn shown_id(item: &Value) -> Option<String> {
    match item.get("id")? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn json_receipt(value: &Value) -> Result<RawReceipt, ApiError> {
    let Value::Object(map) = value else {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            "a receipt is a JSON object like {\"id\":\"…\",\"status\":\"ok\"}",
        ));
    };
    let id = match map.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) if n.is_u64() => Some(n.to_string()),
        Some(other) => {
            return Err(ApiError::new(
                ErrorCode::InvalidEventId,
                format!(
                    "the receipt id {} is not an event id (a decimal string)",
                    escape(&other.to_string())
                ),
            ));
        }
    };
    let status = match map.get("status") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(ApiError::new(
                ErrorCode::InvalidBody,
                format!(
                    "the receipt status {} is not a string",
                    escape(&other.to_string())
                ),
            ));
        }
    };
    Ok(RawReceipt {
        id,
        form_id: None,
        status,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn one(id: Option<&str>, status: Option<&str>) -> Parsed {
        Parsed::One(RawReceipt {
            id: id.map(str::to_string),
            form_id: None,
            status: status.map(str::to_string),
        })
    }

    fn form(id: Option<&str>, status: Option<&str>) -> Parsed {
        Parsed::One(RawReceipt {
            id: None,
            form_id: id.map(str::to_string),
            status: status.map(str::to_string),
        })
    }

    #[test]
    fn pere_form_bodies_are_read() {
        assert_eq!(
            parse_body("status=rx+ok", false).unwrap(),
            form(None, Some("rx ok"))
        );
        assert_eq!(
            parse_body("status=ok&last_event_id=12", false).unwrap(),
            form(Some("12"), Some("ok"))
        );
        assert_eq!(parse_body("", false).unwrap(), one(None, None));
        assert_eq!(
            parse_body("status=%zz", false).unwrap_err().code.as_str(),
            "invalid_body"
        );
    }

    #[test]
    fn json_bodies_are_read() {
        assert_eq!(
            parse_body(r#"{"id":"5","status":"done"}"#, true).unwrap(),
            one(Some("5"), Some("done"))
        );
        assert_eq!(
            parse_body(r#"{"id":5}"#, false).unwrap(),
            one(Some("5"), None)
        );
        let Parsed::Batch(items) =
            parse_body(r#"[{"id":"1"},{"id":"2","status":"x"}]"#, false).unwrap()
        else {
            panic!("a batch");
        };
        assert_eq!(items.len(), 2);
        let Parsed::Batch(items) = parse_body(r#"[{"id":"1"},"x",{"id":true}]"#, true).unwrap()
        else {
            panic!("a batch");
        };
        assert!(items[0].is_ok());
        assert_eq!(items[1].as_ref().unwrap_err().0, None);
        assert_eq!(items[2].as_ref().unwrap_err().0.as_deref(), Some("true"));
    }

    #[test]
    fn plain_and_tree_reads_agree() {
        for body in [
            r#"{"id":"5","status":"done"}"#,
            r#"{"id":"5"}"#,
            r#"{"status":"x","id":"\u0035","other":[1,{"a":2}]}"#,
            r#"{"id":null,"status":null}"#,
            r#"{"id":"1","id":"2"}"#,
            r#"{"id":7}"#,
            r#"{}"#,
        ] {
            let PlainOrTree { plain, tree } = both(body);
            if let Some(plain) = plain {
                assert_eq!(plain, tree, "{body}");
            }
        }
        assert_eq!(
            parse_body(r#"{"id":"1","id":"2"}"#, true).unwrap(),
            one(Some("2"), None),
            "the last of a field given twice, as the tree reads it"
        );
    }

    struct PlainOrTree {
        plain: Option<Parsed>,
        tree: Parsed,
    }

    /// A body read both ways: the tree alone, and `parse_body`'s way.
    fn both(body: &str) -> PlainOrTree {
        let value: Value = serde_json::from_str(body).unwrap();
        let tree = Parsed::One(json_receipt(&value).unwrap());
        let plain = serde_json::from_str::<PlainReceipt<'_>>(body)
            .is_ok()
            .then(|| parse_body(body, true).unwrap());
        PlainOrTree { plain, tree }
    }

    #[test]
    fn a_receipt_s_answer_text_is_its_json() {
        // Device ids are plain (A-Z a-z 0-9 _ - . : @), but the text escapes
        // as the JSON value would anyway.
        for device in ["d1", "H0039.a:b@c_d-e"] {
            let a = Acked {
                id: EventId::parse("123").unwrap(),
                device: DeviceId::new(device).unwrap(),
                state: pere_core::ReceiptState::Acked,
            };
            let text = acked_text(&a);
            assert_eq!(text, acked_json(&a).to_string());
            let back: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(back["device"], device);
        }
    }

    #[test]
    fn malformed_bodies_are_400() {
        for bad in [
            r#"{"id":"#,
            r#"{"id":true}"#,
            r#"{"status":3}"#,
            "42",
            r#"{"id":-1}"#,
        ] {
            let err = parse_body(bad, true).unwrap_err();
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
        assert!(validate(&RawReceipt::default()).is_err());
        assert!(
            validate(&RawReceipt {
                id: Some("x".into()),
                ..RawReceipt::default()
            })
            .is_err()
        );
        let long = RawReceipt {
            id: Some("1".into()),
            form_id: None,
            status: Some("s".repeat(MAX_STATUS_LEN + 1)),
        };
        assert_eq!(
            validate(&long).unwrap_err().code.as_str(),
            "status_too_long"
        );
    }
}
