//! The SSE codec: encoding an event frame (once per event, shared by every
//! stream) and decoding a stream of frames (what every device does), with
//! 128-byte and 4 KiB payloads. Reports bytes per second.
//!
//! `cargo bench -p pere-benches --bench sse_codec`

#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pere_benches::payload;
use pere_http::sse::{self, Decoder, Item};

/// Frames per decode iteration.
const FRAMES: usize = 1000;

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("sse_encode_event_frame");
    for size in [128usize, 4096] {
        let data = String::from_utf8(payload(size)).unwrap();
        let len = sse::event_frame(Some("1763800000000123"), None, &data)
            .unwrap()
            .len();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &data, |b, data| {
            b.iter(|| sse::event_frame(Some("1763800000000123"), None, data).unwrap());
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("sse_decode_1000_frames");
    for size in [128usize, 4096] {
        let data = String::from_utf8(payload(size)).unwrap();
        let mut stream = BytesMut::new();
        for i in 0..FRAMES {
            let id = (1_763_800_000_000_000u64 + i as u64).to_string();
            sse::encode_event(&mut stream, Some(&id), None, &data).unwrap();
        }
        let stream = stream.freeze();
        group.throughput(Throughput::Bytes(stream.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &stream, |b, stream| {
            let mut items = Vec::with_capacity(FRAMES);
            b.iter(|| {
                let mut decoder = Decoder::new();
                // Reads of 16 KiB, as a socket delivers them.
                for chunk in stream.chunks(16 * 1024) {
                    decoder.feed(chunk, &mut items);
                }
                let events = items
                    .drain(..)
                    .filter(|i| matches!(i, Item::Event(_)))
                    .count();
                assert_eq!(events, FRAMES);
            });
        });
    }
    group.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
