//! The properties PERE's fuzz targets check: one function per target.
//!
//! This file is shared. The fuzz targets (`fuzz/fuzz_targets/*.rs`) call it
//! through the `pere_fuzz` crate, and the stable regression test
//! (`crates/pere-http/tests/fuzz_regressions.rs`) includes it with `#[path]`
//! and replays every file of `fuzz/corpus/` and `fuzz/regressions/` through
//! the same functions, so CI checks exactly what the fuzzer checked.
//!
//! Each function takes raw bytes, cuts them into fields with [`Input`] (no
//! `arbitrary` crate, so a saved input means the same thing everywhere),
//! panics when a property fails, and must not panic otherwise. Each target
//! has its own file; this one holds the input reader and the checks they
//! share.

use std::borrow::Cow;

mod names;
mod receipt_request;
mod record;
mod requests;
mod segment_scan;
mod sse;
pub use names::names;
pub use receipt_request::receipt_request;
// `decode_any` serves a fuzz target's allocation check, not the regression
// test that includes this file.
#[allow(unused_imports)]
pub use record::decode_any;
pub use record::record_codec;
pub use requests::{feed_head, feedback_body, router};
pub use segment_scan::segment_scan;
pub use sse::sse_decoder;

use hyper::header::HeaderMap;
use hyper::{Method, StatusCode};
use pere_http::ApiError;
use pere_http::server::router::{Route, route};

/// A fuzz input, read front to back as fields; reading past the end gives
/// zeros and empty slices, never a panic.
pub struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    /// Reads `bytes` from the start.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// The next byte, or 0.
    pub fn byte(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    /// The next two bytes as a little-endian `u16`.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// The next eight bytes as a little-endian `u64`.
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte();
        }
        u64::from_le_bytes(b)
    }

    /// The next `n` bytes, or fewer at the end.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.bytes.split_at(n.min(self.bytes.len()));
        self.bytes = rest;
        head
    }

    /// The bytes up to the next `0xFF` (which no UTF-8 text contains), and
    /// the separator is skipped.
    pub fn field(&mut self) -> &'a [u8] {
        match self.bytes.iter().position(|&b| b == 0xFF) {
            Some(end) => {
                let field = &self.bytes[..end];
                self.bytes = &self.bytes[end + 1..];
                field
            }
            None => self.rest(),
        }
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
}

/// Bytes as text, invalid UTF-8 replaced as a browser would.
fn text(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// Asserts that text meant for an error message or a log line shows every
/// character that could hide or forge text escaped: no control character,
/// and nothing [`char::escape_debug`] would escape (line and paragraph
/// separators, bidi overrides, combining marks).
fn assert_printable(message: &str) {
    for c in message.chars() {
        let escaped = !matches!(c, '\'' | '"' | '\\') && c.escape_debug().nth(1).is_some();
        assert!(
            !c.is_control() && !escaped,
            "unescaped {c:?} in the message {message:?}"
        );
    }
}

/// Asserts what PROTOCOL §8 says of every error: one of `statuses`, a
/// snake_case code, a printable sentence, a JSON body of both.
fn assert_api_error(err: &ApiError, statuses: &[u16]) {
    assert!(
        statuses.contains(&err.status().as_u16()),
        "unexpected status {} for {err:?}",
        err.status()
    );
    let code = err.code.as_str();
    assert!(
        !code.is_empty()
            && code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "code {code:?} is not snake_case"
    );
    assert!(!err.message.is_empty(), "empty message for {err:?}");
    assert_printable(&err.message);
    let body: serde_json::Value = serde_json::from_str(&err.body()).expect("the body is JSON");
    assert_eq!(body["error"].as_str(), Some(err.message.as_str()));
    assert_eq!(body["code"].as_str(), Some(code));
    assert_eq!(
        err.allow.is_some(),
        err.status() == StatusCode::METHOD_NOT_ALLOWED
    );
}

/// A request served without hyper is an HTTP/1.1 `method` whose route, as
/// the router reads its path, is `expected` (the channel the parser gave).
fn assert_routed(request: &hyper::Request<()>, method: Method, expected: Route) {
    assert_eq!(request.method(), method);
    assert_eq!(request.version(), hyper::Version::HTTP_11);
    assert_eq!(
        route(&method, request.uri().path()),
        Ok(expected),
        "the channel is the router's"
    );
}

/// The target of a request served without hyper is the one in `head`, as
/// hyper would have taken it (a `#fragment` is dropped by both; it is not
/// part of a request target).
fn assert_target_as_sent<B>(request: &hyper::Request<B>, head: &[u8]) {
    let text = String::from_utf8_lossy(head);
    let target = text.split_whitespace().nth(1).unwrap_or_default();
    assert_eq!(
        Some(request.uri()),
        hyper::Uri::try_from(target).ok().as_ref(),
        "the target as sent"
    );
}

/// The headers of a request served without hyper (`feed_head`,
/// `receipt_request`): no `Transfer-Encoding`, `Upgrade` or `Expect`, a
/// `Connection` that keeps the connection alive, and every value one that
/// was sent in `head`.
fn assert_plain_headers(headers: &HeaderMap, head: &[u8]) {
    for (name, value) in headers {
        let v = value.as_bytes();
        match name.as_str() {
            "connection" => assert!(v.eq_ignore_ascii_case(b"keep-alive")),
            "transfer-encoding" | "upgrade" | "expect" => panic!("{name} taken"),
            _ => {}
        }
        assert!(
            head.windows(v.len().max(1)).any(|w| w == v) || v.is_empty(),
            "a header value that was not sent"
        );
    }
}
