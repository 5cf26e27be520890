//! PERE over HTTP (work in progress).

pub mod sse;
