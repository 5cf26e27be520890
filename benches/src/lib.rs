//! Helpers shared by PERE's benchmarks: an in-process server on a loopback
//! port and a minimal keep-alive HTTP/1.1 publisher.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc, missing_docs)]

use std::net::SocketAddr;

use pere_core::{EventStore, Hub, HubConfig};
use pere_http::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// A server running in-process; stops when dropped.
pub struct BenchServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl BenchServer {
    /// Serves a hub over `store` on `127.0.0.1:0`.
    pub async fn start<S: EventStore>(store: S) -> Self {
        let listener = pere_http::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let hub = Hub::open(HubConfig::default(), store).await.unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = pere_http::run(listener, hub, ServerConfig::default(), async {
                let _ = rx.await;
            })
            .await;
        });
        Self {
            addr,
            stop: Some(tx),
        }
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// One keep-alive connection that publishes and reads `201`s.
pub struct Publisher {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Publisher {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Publishes `payload` on `channel`; panics unless the answer is `201`.
    pub async fn publish(&mut self, channel: &str, payload: &[u8]) {
        let head = format!(
            "POST /push/{channel} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\n\r\n",
            payload.len()
        );
        let mut req = head.into_bytes();
        req.extend_from_slice(payload);
        self.stream.write_all(&req).await.unwrap();
        self.buf.clear();
        loop {
            let mut chunk = [0u8; 2048];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).unwrap();
                assert!(head.starts_with("HTTP/1.1 201"), "{head}");
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while self.buf.len() < end + 4 + len {
                    let n = self.stream.read(&mut chunk).await.unwrap();
                    assert!(n > 0);
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                return;
            }
        }
    }
}

/// A payload of `n` bytes of JSON-ish text.
pub fn payload(n: usize) -> Vec<u8> {
    let mut p = b"{\"data\":\"".to_vec();
    while p.len() < n.saturating_sub(2) {
        p.push(b'x');
    }
    p.extend_from_slice(b"\"}");
    p
}
