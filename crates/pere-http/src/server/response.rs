//! Responses as handlers and the connection layer build them: JSON,
//! text, empty, and docs/PROTOCOL.md §8's error answer.

use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use super::body::Body;
use crate::error::ApiError;

/// The JSON error response of docs/PROTOCOL.md §8.
pub fn error_response(err: &ApiError) -> Response<Body> {
    let mut response = Response::new(Body::from(err.body()));
    *response.status_mut() = err.status();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(allow) = err.allow {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    let h = response.headers_mut();
    match err.status() {
        // RFC 6750 §3: a 401 names the scheme that would work.
        StatusCode::UNAUTHORIZED => {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"pere\""),
            );
        }
        // A limit that frees up as streams close: worth retrying soon.
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
    response
}

/// A JSON response.
pub fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    json_raw(status, value.to_string())
}

/// A JSON response from already-serialized text.
pub fn json_raw(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A plain-text response.
pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// An empty response.
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}
