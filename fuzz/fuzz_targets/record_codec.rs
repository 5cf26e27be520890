//! Fuzz target `record_codec`: the properties of [`pere_fuzz::record_codec`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pere_fuzz::record_codec(data));
