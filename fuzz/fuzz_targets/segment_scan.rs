//! Fuzz target `segment_scan`: the properties of [`pere_fuzz::segment_scan`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pere_fuzz::segment_scan(data));
