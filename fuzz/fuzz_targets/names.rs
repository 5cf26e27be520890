//! Fuzz target `names`: the properties of [`pere_fuzz::names`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pere_fuzz::names(data));
