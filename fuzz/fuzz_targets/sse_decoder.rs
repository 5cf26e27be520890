//! Fuzz target `sse_decoder`: the properties of [`pere_fuzz::sse_decoder`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pere_fuzz::sse_decoder(data));
