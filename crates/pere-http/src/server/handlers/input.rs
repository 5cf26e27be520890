//! What a request says, read once for every handler: headers as text, the
//! query string, the device (docs/PROTOCOL.md §1), and a bounded body.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Request;
use hyper::header::{self, HeaderMap};
use pere_core::DeviceId;

use crate::error::ErrorCode;
use crate::error::{ApiError, escape};
use crate::server::body::RequestBody;
use crate::server::router;

/// A header's value as text, if present; `400` if it is not visible ASCII.
pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(|s| Some(s.trim())).map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidHeader,
                format!("the `{name}` header is not visible ASCII text"),
            )
        }),
    }
}

/// The first value of query parameter `key`.
pub fn query_value<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The request's device (docs/PROTOCOL.md §1): the `device` header (PERE), else the
/// `device` query parameter (PERE's web page). Invalid is `400` wherever it
/// came from.
pub fn device_of(
    headers: &HeaderMap,
    query: &[(String, String)],
) -> Result<Option<DeviceId>, ApiError> {
    // A device header that is not even ASCII is an invalid device, with the
    // same code as any other.
    let header = header_str(headers, "device").map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidDevice,
            "the `device` header is not a device id (A-Z a-z 0-9 _ - . : @)",
        )
    })?;
    let raw = match header {
        Some(v) => Some(v),
        None => query_value(query, "device"),
    };
    match raw {
        None => Ok(None),
        Some(v) => Ok(Some(DeviceId::new(v)?)),
    }
}

/// The request's parsed query string.
pub fn query_of<B>(req: &Request<B>) -> Result<Vec<(String, String)>, ApiError> {
    router::parse_query(req.uri().query().unwrap_or(""))
}

/// Reads a request body of at most `limit` bytes: `413` beyond it, checked
/// from `Content-Length` before reading anything when the client sent one;
/// `408` when the whole body has not arrived within `timeout` (a client
/// trickling its body must not hold a task and a descriptor for ever).
pub async fn read_body(
    req: Request<RequestBody>,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    let too_large = |size: Option<u64>| {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            match size {
                Some(size) => format!("the body is {size} bytes, the limit is {limit}"),
                None => format!("the body is larger than the limit of {limit} bytes"),
            },
        )
    };
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large(Some(len)));
    }
    // A body the server read whole with its head (`server::conn::posts`)
    // is there already: no wait to bound, nothing to collect.
    if let Some(whole) = req.body().whole_bytes() {
        return if whole.len() > limit {
            Err(too_large(Some(whole.len() as u64)))
        } else {
            Ok(whole.clone())
        };
    }
    let limited = http_body_util::Limited::new(req.into_body(), limit);
    let Ok(collected) = tokio::time::timeout(timeout, limited.collect()).await else {
        return Err(ApiError::new(
            ErrorCode::RequestTimeout,
            format!(
                "the request body did not arrive within {} ms",
                timeout.as_millis()
            ),
        ));
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(too_large(None)),
        Err(err) => Err(ApiError::new(
            ErrorCode::InvalidBody,
            format!("the body could not be read: {}", escape(&err.to_string())),
        )),
    }
}
