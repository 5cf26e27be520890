//! Fuzz target `receipt_request`: the properties of [`pere_fuzz::receipt_request`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pere_fuzz::receipt_request(data));
