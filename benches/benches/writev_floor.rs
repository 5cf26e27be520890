//! The floor under every delivery (issue 16): one `writev` of one small SSE
//! frame to a loopback TCP socket, the system call each stream's write ends
//! in, with nothing of PERE around it. A reader thread drains the other end
//! so the socket never fills. Compare a load's server CPU per delivery with
//! this: what is above it is PERE's, what is at it is the kernel's.
//!
//! `cargo bench -p pere-benches --bench writev_floor`

#![allow(clippy::unwrap_used)]

use std::io::{IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pere_benches::payload;
use pere_http::sse;

/// A connected loopback pair whose reading end a thread drains until the
/// writer closes.
fn pair() -> TcpStream {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let writer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut reader, _) = listener.accept().unwrap();
    writer.set_nodelay(true).unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
    });
    writer
}

fn floor(c: &mut Criterion) {
    let mut group = c.benchmark_group("writev_one_frame_loopback");
    for size in [128usize, 1024] {
        let data = String::from_utf8(payload(size)).unwrap();
        let frame = sse::event_frame(Some("1796292598807325"), None, &data).unwrap();
        let mut socket = pair();
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::from_parameter(size), &frame, |b, frame| {
            b.iter(|| {
                let n = socket.write_vectored(&[IoSlice::new(frame)]).unwrap();
                assert_eq!(n, frame.len());
            });
        });
        // A frame written as one chunk of a coalesced batch of 16: what the
        // stream body does when several events are ready at once.
        let batch: Vec<u8> = frame
            .iter()
            .copied()
            .cycle()
            .take(frame.len() * 16)
            .collect();
        group.throughput(Throughput::Elements(16));
        group.bench_with_input(BenchmarkId::new("batch_of_16", size), &batch, |b, batch| {
            b.iter(|| socket.write_all(batch).unwrap());
        });
    }
    group.finish();
}

criterion_group!(benches, floor);
criterion_main!(benches);
