//! Entry points for the fuzz targets of `fuzz/` and their regression test;
//! not an API: the feedback body parser, which is private to its handler,
//! the request header readers the handlers share, and the head parser of
//! the streams served without hyper.

pub use crate::server::handlers::feed::resume_point;
pub use crate::server::handlers::feedback::read_receipts;
pub use crate::server::handlers::input::{device_of, header_str};

/// The head parser of the event streams served without hyper: the
/// request, the channel of its path, and the head's length in bytes.
pub fn feed_head(bytes: &[u8]) -> Option<(hyper::Request<()>, Option<String>, usize)> {
    crate::server::conn::direct::parse_feed_head(bytes).map(|h| (h.request, h.channel, h.len))
}
