//! Entry points for the fuzz targets of `fuzz/` and their regression test;
//! not an API: the feedback body parser, which is private to its handler,
//! and the request header readers the handlers share.

pub use crate::handlers::feed::resume_point;
pub use crate::handlers::feedback::read_receipts;
pub use crate::handlers::{device_of, header_str};
