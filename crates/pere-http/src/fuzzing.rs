//! Entry points for the fuzz targets of `fuzz/` and their regression test;
//! not an API: the feedback body parser, which is private to its handler,
//! the request header readers the handlers share, and the parsers of the
//! requests served without hyper (event streams and receipts).

pub use crate::server::handlers::feed::resume_point;
pub use crate::server::handlers::feedback::read_receipts;
pub use crate::server::handlers::input::{device_of, header_str};

/// The head parser of the event streams served without hyper: the
/// request, the channel of its path, and the head's length in bytes.
pub fn feed_head(bytes: &[u8]) -> Option<(hyper::Request<()>, Option<String>, usize)> {
    crate::server::conn::direct::parse_feed_head(bytes).map(|h| (h.request, h.channel, h.len))
}

/// The parser of the receipt requests served without hyper, with the
/// server's default head limit: the request (its body apart), the body,
/// the channel of its path, and the request's length in bytes.
pub fn receipt_request(bytes: &[u8]) -> Option<(hyper::Request<()>, bytes::Bytes, String, usize)> {
    let max_head = crate::server::DEFAULT_MAX_HEADER_BYTES;
    let (request, channel, len) = crate::server::conn::posts::parse_receipt(bytes, max_head)?;
    let (parts, body) = request.into_parts();
    let body = body.whole_bytes().cloned().unwrap_or_default();
    Some((hyper::Request::from_parts(parts, ()), body, channel, len))
}
