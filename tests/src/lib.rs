//! Helpers for PERE's end-to-end tests: a [`TestServer`] on a loopback port,
//! a raw HTTP/1.1 client that shows exact bytes ([`request`]), an SSE reader
//! built on pere-http's decoder ([`SseStream`]), and [`bin`] to find the
//! built binaries for process-level tests.
//!
//! Everything talks to 127.0.0.1 only, and every wait is bounded.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::path::PathBuf;
use std::time::Duration;

pub mod client;
pub mod http;
pub mod process;
pub mod raw;
pub mod server;
pub mod sse;
pub mod tls;

pub use client::{Admin, Client};
pub use http::{
    Connection, HttpReader, Io, Response, behind_healthz, raw_request, request, send_raw,
};
pub use process::ServerProcess;
pub use server::{TestServer, TestServerBuilder};
pub use sse::SseStream;

/// Held by the tests that load the machine most (thousands of connections
/// or handshakes), so that they do not run at once and starve each other's
/// bounded waits.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(10);
/// Polls `check` every few milliseconds until it returns true, failing the
/// test after `WAIT`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The path of a built binary of this workspace (`pere-server`, `pere-pub`,
/// `pere-sub`), next to the test executable's directory. Build them first:
/// the README's test command does (`cargo build --workspace` before `cargo
/// test`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/e2e-HASH → target/debug/NAME
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace` before the tests",
        path.display()
    );
    path
}

/// A fresh, empty directory under the system's temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("pere-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The value of a gauge or counter in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
