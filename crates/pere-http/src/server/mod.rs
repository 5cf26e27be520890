//! The server: [`run`] accepts connections, serves each on its own task,
//! and on shutdown drains them gracefully.
//!
//! Shutdown order (why it terminates): stop accepting; shut the hub down,
//! which drops every stream's queue so every SSE body ends; then wait for
//! connections to finish, bounded by [`ServerConfig::shutdown_grace`].
//! Without the second step a graceful shutdown would wait forever on open
//! streams.

mod conn;
mod request;
mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use pere_core::{EventStore, Hub};
use tokio::net::TcpListener;

use crate::error::{Error, Result};
use crate::handlers::App;
use crate::limits::Limits;
use crate::metrics::HttpMetrics;
use conn::{ConnLimits, Connection};
pub(crate) use request::RequestBody;

/// Default `retry` sent to clients (docs/PROTOCOL.md §3: 3000 ms).
pub const DEFAULT_RETRY: Duration = Duration::from_millis(3000);
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
/// How far past `max_header_bytes` an HTTP/2 header block may go before
/// the HTTP/2 library refuses it itself, with a `431` without a body (and
/// closes the connection past four times that): up to there PERE sees the
/// request and answers the JSON `431`.
const H2_HEADER_LIST_FACTOR: usize = 4;

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
    /// [`crate::limits::fd_budget`]); `None` skips the check.
    pub fd_budget: Option<usize>,
    /// Where overdue notices are POSTed (with `HubConfig::ack_deadline`).
    pub webhook: Option<crate::webhook::Webhook>,
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
            max_streams: crate::limits::DEFAULT_MAX_STREAMS,
            max_streams_per_device: crate::limits::DEFAULT_MAX_STREAMS_PER_DEVICE,
            fd_budget: None,
            webhook: None,
            tls: None,
        }
    }
}

/// Binds `addr` (`127.0.0.1:0` picks a free port).
///
/// # Errors
/// [`Error::Io`] naming the address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let io = |source| Error::Io {
        context: format!("cannot listen on {addr}"),
        source,
    };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(io)?;
    // As `TcpListener::bind` does: a restarted server can take its port
    // back while old connections linger in TIME_WAIT.
    socket.set_reuseaddr(true).map_err(io)?;
    socket.bind(addr).map_err(io)?;
    socket.listen(LISTEN_BACKLOG).map_err(io)
}

/// Pending connections the kernel queues before `accept` (capped by
/// `net.core.somaxconn`). After a restart every device reconnects at once;
/// a connection that overflows the queue has its handshake silently
/// dropped and waits seconds for a retransmit, so the queue is larger than
/// the usual 1024.
const LISTEN_BACKLOG: u32 = 4096;

/// Serves `hub` on `listener` until `shutdown` resolves, then shuts down
/// gracefully (see the module docs) and returns.
///
/// # Errors
/// [`Error::WebhookLoop`], before serving anything, when the webhook is the
/// listener's own address; [`Error::Io`] if that address cannot be read.
/// Accept errors are logged and retried.
pub async fn run<S: EventStore>(
    listener: TcpListener,
    hub: Hub<S>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    if let Some(webhook) = &config.webhook {
        let listen = listener.local_addr().map_err(|source| Error::Io {
            context: "cannot read the listening address".into(),
            source,
        })?;
        webhook.check_not_server(listen).await?;
    }
    let limits = Arc::new(Limits::new(
        config.max_streams.max(1),
        config.max_streams_per_device.max(1),
        config.fd_budget,
    ));
    let app = Arc::new(App {
        hub: hub.clone(),
        config: config.clone(),
        metrics: HttpMetrics::default(),
        limits: limits.clone(),
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Our own watch (see `serve`) times the head, so that a slow client
        // gets a `408` rather than a silent close, and idle connections get
        // their own timeout: hyper's would cover both with one value.
        .header_read_timeout(None)
        // The head limit is hyper's read buffer limit. At the default (and
        // minimum) of 8 KiB, hyper's second read on a connection (the one
        // that watches an open event stream for EOF) never grows the buffer;
        // with a larger maximum it finds less than 8 KiB free behind the
        // request it parsed and reallocates to 16 KiB, copying (touching)
        // 8 KiB: measured 26.4 KiB → 19.1 KiB PSS per idle stream over
        // 10,000 streams. Bodies are streamed, not buffered here.
        .max_buf_size(config.max_header_bytes.max(MIN_MAX_HEADER_BYTES))
        .keep_alive(true);
    // HTTP/2 flow control stops hyper writing to a client that stopped
    // reading long before the socket fills, so the send timeout (which
    // times pending socket writes) would never see it: a ping it does not
    // answer within half the send timeout closes the connection instead.
    let half_send = (config.send_timeout / 2).max(Duration::from_millis(100));
    let max_head = config.max_header_bytes.max(MIN_MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(half_send))
        .keep_alive_timeout(half_send)
        // The head limit over HTTP/2 is checked with the request in hand,
        // so that it gets the JSON `431` (see `request::oversized_h2_head`);
        // the HTTP/2 library's own limit, whose `431` has no body, only
        // bounds the memory a header block may take, further out.
        .max_header_list_size(
            u32::try_from(max_head.saturating_mul(H2_HEADER_LIST_FACTOR)).unwrap_or(u32::MAX),
        );
    if let Some(webhook) = config.webhook.clone() {
        tokio::spawn(crate::webhook::deliver(hub.clone(), webhook));
    }
    // After an exchange on the direct path the connection is HTTP/1: an
    // HTTP/2 preface then is a bad request, not a protocol switch (which
    // would also escape the head and idle timeouts, see `ConnWatch`).
    let http1 = Arc::new(builder.clone().http1_only());
    let http = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let tls = config.tls.as_ref().map(|tls| tls.acceptor());
    let limits_conn = ConnLimits {
        head: config.header_read_timeout,
        idle: config.idle_timeout,
        send: config.send_timeout,
        max_head,
    };
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    backoff(&err).await;
                    continue;
                }
            },
        };
        let counted = limits.connection();
        // Events are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            app: app.clone(),
            http: http.clone(),
            http1: http1.clone(),
            // Taken now, not in the task: a shutdown that starts before the
            // task runs still waits for it.
            graceful: graceful.watcher(),
            closing: closing.clone(),
            limits: limits_conn,
            peer,
            tls: tls.clone(),
        };
        tokio::spawn(async move {
            conn.serve(stream).await;
            drop(counted);
        });
    }
    drop(listener);
    tracing::info!("shutting down: closing streams");
    let _ = closing_tx.send(true);
    hub.shutdown().await;
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(config.shutdown_grace) => {
            tracing::warn!(grace = ?config.shutdown_grace, "connections still open after the grace period; closing anyway");
        }
    }
    Ok(())
}

/// Waits a little after an accept error: a connection reset is the peer's
/// business and needs none; running out of descriptors (EMFILE) must not
/// turn the accept loop into a busy spin.
async fn backoff(err: &std::io::Error) {
    use std::io::ErrorKind;
    match err.kind() {
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::Interrupted => {}
        _ => {
            tracing::error!(cause = %err, "accept failed; backing off");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
