//! [`ServerConfig`]: the server's settings, with the documented defaults
//! (docs/PROTOCOL.md §8.2), and the [`Cors`] policy.

use std::sync::Arc;
use std::time::Duration;

/// Default `retry` sent to clients (docs/PROTOCOL.md §3: 3000 ms).
pub const DEFAULT_RETRY: Duration = crate::sse::DEFAULT_RETRY;
/// Default keepalive period (docs/PROTOCOL.md §3: 15 s).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(15);
/// Default time to wait for connections to finish at shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Default time a client has to send a request's headers, from its first
/// byte (slowloris guard): `408` after it.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a client has to send a request's whole body: `408` after it.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a connection may sit with no request in progress (after
/// connecting, or between kept-alive requests) before it is closed. Streams
/// are requests in progress: they are never idle.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time a client may accept no byte while the server has some to
/// send it (a response, a stream's events) before its connection is closed:
/// nginx's `send_timeout` default.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Default largest request head (request line and headers), in bytes:
/// `431` beyond it. Browsers send a few KiB at most; nginx and Apache cap a
/// header line at 8 KiB too. It is also hyper's read buffer limit, and a
/// larger one costs memory on every open stream (see `run`).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 8 * 1024;
/// Smallest `max_header_bytes` hyper accepts (its read buffer's minimum).
pub const MIN_MAX_HEADER_BYTES: usize = 8192;
/// Which origins may call the server from a browser.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Cors {
    /// No CORS headers at all.
    Off,
    /// `Access-Control-Allow-Origin: *` (the default).
    #[default]
    Any,
    /// Only these origins (echoed back, with `Vary: Origin`).
    List(Vec<String>),
}

impl Cors {
    /// Parses `--cors-origin`: `*`, `none`, or a comma-separated list.
    pub fn parse(text: &str) -> Self {
        let text = text.trim();
        match text {
            "*" => Cors::Any,
            "" | "none" | "off" => Cors::Off,
            list => Cors::List(
                list.split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_string())
                    .filter(|o| !o.is_empty())
                    .collect(),
            ),
        }
    }
}

/// The HTTP server's settings. `Default` gives the documented defaults.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The `retry` sent at the start of each stream.
    pub retry: Duration,
    /// Quiet time after which a stream gets a keepalive comment.
    pub keepalive: Duration,
    /// CORS policy.
    pub cors: Cors,
    /// How long shutdown waits for connections to finish.
    pub shutdown_grace: Duration,
    /// How long a client may take to send a request's headers, from the
    /// first byte.
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request's body.
    pub body_read_timeout: Duration,
    /// How long a connection may wait for its next request.
    pub idle_timeout: Duration,
    /// How long a client may accept no byte while the server has some to
    /// send it.
    pub send_timeout: Duration,
    /// Largest request head, in bytes (at least [`MIN_MAX_HEADER_BYTES`]).
    pub max_header_bytes: usize,
    /// Most open streams, server-wide.
    pub max_streams: usize,
    /// Most open streams of one device.
    pub max_streams_per_device: usize,
    /// Most connections the process's descriptors allow for streams (see
    /// [`super::limits::fd_budget`]); `None` skips the check.
    pub fd_budget: Option<usize>,
    /// Where overdue notices are POSTed (with `HubConfig::ack_deadline`).
    pub webhook: Option<super::webhook::Webhook>,
    /// With a certificate, every connection speaks TLS (ALPN `h2` and
    /// `http/1.1`); without, plain HTTP.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            retry: DEFAULT_RETRY,
            keepalive: DEFAULT_KEEPALIVE,
            cors: Cors::Any,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_streams: super::limits::DEFAULT_MAX_STREAMS,
            max_streams_per_device: super::limits::DEFAULT_MAX_STREAMS_PER_DEVICE,
            fd_budget: None,
            webhook: None,
            tls: None,
        }
    }
}
