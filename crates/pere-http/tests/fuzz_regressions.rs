//! The fuzz targets' inputs, replayed on stable: every file of
//! `fuzz/corpus/<target>/` (the seeds) and `fuzz/regressions/<target>/`
//! (inputs that once failed) goes through the very check function the fuzz
//! target runs (`fuzz/src/lib.rs`, included below). CI runs these, not the
//! fuzzer; `fuzz/README.md` says how to run the fuzzer.

#[path = "../../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod checks;

use std::path::{Path, PathBuf};

/// The `fuzz/` directory at the workspace root.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Runs `check` on every file of the target's corpus and regressions, and
/// returns how many there were.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let mut count = 0;
    for kind in ["corpus", "regressions"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries
            .map(|e| e.expect("a directory entry").path())
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        for path in paths {
            let data = std::fs::read(&path).expect("a readable input");
            let result = std::panic::catch_unwind(|| check(&data));
            assert!(result.is_ok(), "{target}: {} fails", path.display());
            count += 1;
        }
    }
    count
}

#[test]
fn sse_decoder_inputs_pass() {
    assert!(replay("sse_decoder", checks::sse_decoder) > 0);
}

#[test]
fn names_inputs_pass() {
    assert!(replay("names", checks::names) > 0);
}

#[test]
fn feedback_body_inputs_pass() {
    assert!(replay("feedback_body", checks::feedback_body) > 0);
}

#[test]
fn router_inputs_pass() {
    assert!(replay("router", checks::router) > 0);
}

#[test]
fn receipt_request_inputs_pass() {
    assert!(replay("receipt_request", checks::receipt_request) > 0);
}

#[test]
fn feed_head_inputs_pass() {
    assert!(replay("feed_head", checks::feed_head) > 0);
}

#[test]
fn record_codec_inputs_pass() {
    assert!(replay("record_codec", checks::record_codec) > 0);
}

#[test]
fn segment_scan_inputs_pass() {
    assert!(replay("segment_scan", checks::segment_scan) > 0);
}

/// The checks hold on inputs made up here too, so an empty corpus cannot
/// make this file pass vacuously.
#[test]
fn checks_hold_on_simple_inputs() {
    for data in [
        &b""[..],
        b"\0",
        b"\xff",
        b"data: x\n\n",
        b"\x01\0/push/a",
        b"\0\x03/feed/a?device=x&lastEventId=5\xffdev-1\xff42",
        b"GET /feed/a HTTP/1.1\r\ndevice: d\r\n\r\n",
        b"POST /feedback/a HTTP/1.1\r\ndevice: d\r\nContent-Length: 2\r\n\r\n{}",
    ] {
        checks::sse_decoder(data);
        checks::names(data);
        checks::feedback_body(data);
        checks::router(data);
        checks::feed_head(data);
        checks::receipt_request(data);
        checks::record_codec(data);
        checks::segment_scan(data);
    }
}
