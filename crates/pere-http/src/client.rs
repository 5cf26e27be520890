//! The HTTP client of `pere-pub`, `pere-sub` and the tests (being written).
