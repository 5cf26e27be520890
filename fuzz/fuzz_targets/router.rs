//! Fuzz target `router`: the properties of [`pere_fuzz::router`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pere_fuzz::router(data));
