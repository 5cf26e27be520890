//! What the connection does around a request's handler: the head-size limit
//! over HTTP/2 (hyper enforces it over HTTP/1).

use hyper::{Request, Response, StatusCode, Version};

use crate::body::Body;
use crate::error::ApiError;

/// The sentence of a `431`, the same over HTTP/1 and HTTP/2.
pub(super) fn head_too_large(max_head: usize) -> String {
    format!("the request head (request line and headers) is larger than {max_head} bytes")
}

/// The `431` of an HTTP/2 request whose header list is larger than
/// `max_head` bytes, counted as HTTP/2 counts it (RFC 9113 §6.5.2: name,
/// value and 32 per field, pseudo-fields included). HTTP/1 heads are
/// limited by hyper's read buffer; hyper's HTTP/2 limit is set higher (see
/// `run`) so that what lies between gets this JSON answer rather than the
/// bodyless `431` of the HTTP/2 library.
pub(super) fn oversized_h2_head<B>(req: &Request<B>, max_head: usize) -> Option<Response<Body>> {
    if req.version() != Version::HTTP_2 {
        return None;
    }
    const FIELD: usize = 32;
    let uri = req.uri();
    let pseudo = [
        Some((":method".len(), req.method().as_str().len())),
        uri.scheme_str().map(|s| (":scheme".len(), s.len())),
        uri.authority()
            .map(|a| (":authority".len(), a.as_str().len())),
        uri.path_and_query()
            .map(|p| (":path".len(), p.as_str().len())),
    ];
    let size = pseudo
        .into_iter()
        .flatten()
        .map(|(name, value)| name + value + FIELD)
        .chain(
            req.headers()
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len() + FIELD),
        )
        .sum::<usize>();
    (size > max_head).then(|| {
        crate::handlers::error_response(&ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            head_too_large(max_head),
        ))
    })
}
