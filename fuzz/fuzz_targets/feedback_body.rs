//! Fuzz target `feedback_body`: the properties of [`pere_fuzz::feedback_body`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pere_fuzz::feedback_body(data));
