//! Entry points for the fuzz targets of `fuzz/` and their regression test;
//! not an API: the store's record codec and segment scanner, which read
//! bytes from disk.

pub use crate::log::codec::{
    DecodeError, FRAME_HEADER, MAX_RECORD, Stored, decode as decode_record,
    encode as encode_record, frame,
};
pub use crate::log::file::scan::{Found, Order, SegmentScan, Skipped, Why, scan_segment};

/// The CRC-32C the record frame carries, so a fuzzer can frame a body it
/// made up and reach the decoder past the checksum.
pub fn checksum(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}
