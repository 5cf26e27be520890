//! Raw sockets, for clients no library would be: one that stops reading
//! with a tiny receive buffer, one that speaks HTTP/2 frames by hand, and
//! the reads a test makes on them (up to some bytes, or to the close).

use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::WAIT;

/// Connects to `addr` with a 4 KiB receive buffer: once the test stops
/// reading, a few events fill it and the server's writes stall.
pub async fn small_buffer_connect(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(addr).await.unwrap()
}

/// A phone in a tunnel: opens its stream with a tiny receive buffer, reads
/// up to `pere.hello`, then reads nothing more.
pub async fn stalled_reader(addr: SocketAddr, path: &str, device: &str) -> TcpStream {
    let mut stream = small_buffer_connect(addr).await;
    let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\ndevice: {device}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !String::from_utf8_lossy(&seen).contains("event: pere.hello") {
        assert!(Instant::now() < deadline, "no pere.hello: {seen:?}");
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the stream ended before pere.hello");
        seen.extend_from_slice(&buf[..n]);
    }
    stream
}

/// Reads until the peer closes (a reset counts as a close) and returns what
/// arrived; fails the test if a read waits longer than `WAIT`.
pub async fn read_to_close(stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the server neither answered nor closed within {WAIT:?}; received {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

/// Reads from `stream` into `seen` until `seen` contains `needle`; fails
/// the test if the stream ends first or a read waits longer than `WAIT`.
pub async fn read_until(stream: &mut (impl AsyncRead + Unpin), seen: &mut Vec<u8>, needle: &str) {
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(seen).contains(needle) {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "waiting for {needle:?} in {:?}",
                    String::from_utf8_lossy(seen)
                )
            })
            .unwrap();
        assert!(
            n > 0,
            "closed before {needle:?}: {:?}",
            String::from_utf8_lossy(seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
}

/// What an HTTP/2 client (prior knowledge) sends to open one stream: the
/// preface, an empty SETTINGS frame, and stream 1's HEADERS frame
/// (END_STREAM | END_HEADERS) with `fields` as HPACK literals (no indexing,
/// no Huffman). A client that then reads nothing answers no ping.
pub fn h2_opening(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        assert!(name.len() < 127 && value.len() < 127);
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 0x04, 0, 0, 0, 0, 0]); // SETTINGS, empty
    let len = u32::try_from(block.len()).unwrap().to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], 0x01, 0x05, 0, 0, 0, 1]);
    out.extend_from_slice(&block);
    out
}
