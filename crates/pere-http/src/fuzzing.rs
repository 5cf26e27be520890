//! Entry points for the fuzz targets of `fuzz/` and their regression test;
//! not an API: the feedback body parser, which is private to its handler.

pub use crate::handlers::feedback::read_receipts;
