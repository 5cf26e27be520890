//! Fuzz target `feed_head`: the properties of [`pere_fuzz::feed_head`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pere_fuzz::feed_head(data));
