//! Fuzz target `record_codec`: the properties of [`pere_fuzz::record_codec`],
//! and a bound on what decoding any bytes allocates, which needs this
//! binary's own allocator (the stable regression test cannot check it).
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The largest single allocation since it was last reset.
static LARGEST: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, noting the largest allocation in [`LARGEST`].
struct Watched;

// SAFETY: every call is passed on unchanged to the system allocator.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Watched {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Watched = Watched;

/// What decoding may allocate beyond the input, bounded because a name is
/// at most 255 bytes: a pattern's segment table (up to 256 segments of 24
/// bytes, found by this target when the bound was 1 KiB), a rejected
/// name's error message, an event's fixed-size parts. A length field
/// trusted too early would ask for up to 4 GiB.
const SLACK: usize = 16 * 1024;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pere_fuzz::record_codec(data);
    // Every field is copied out of the frame, so no length field, however
    // large, makes the decoder allocate more than the bytes it was given.
    LARGEST.store(0, Ordering::Relaxed);
    pere_fuzz::decode_any(data);
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest <= data.len() + SLACK,
        "decoding {} bytes allocated {largest} at once",
        data.len()
    );
});
