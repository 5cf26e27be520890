//! The server: [`run`] accepts connections, serves each on its own task,
//! and on shutdown drains them gracefully.
//!
//! Shutdown order (why it terminates): stop accepting; shut the hub down,
//! which drops every stream's queue so every SSE body ends; then wait for
//! connections to finish, bounded by [`ServerConfig::shutdown_grace`].
//! Without the second step a graceful shutdown would wait forever on open
//! streams.

pub mod activity;
mod app;
pub mod body;
mod config;
pub(crate) mod conn;
pub(crate) mod handlers;
pub mod limits;
pub mod metrics;
mod response;
pub mod router;
pub mod webhook;

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
use app::App;
pub use config::{
    Cors, DEFAULT_BODY_READ_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_KEEPALIVE, DEFAULT_MAX_HEADER_BYTES, DEFAULT_RETRY, DEFAULT_SEND_TIMEOUT,
    DEFAULT_SHUTDOWN_GRACE, MIN_MAX_HEADER_BYTES, ServerConfig,
};
use conn::{ConnLimits, Connection, Shared};
use limits::Limits;
use metrics::HttpMetrics;

/// How far past `max_header_bytes` an HTTP/2 header block may go before
/// the HTTP/2 library refuses it itself, with a `431` without a body (and
/// closes the connection past four times that): up to there PERE sees the
/// request and answers the JSON `431`.
const H2_HEADER_LIST_FACTOR: usize = 4;

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
        tokio::spawn(webhook::deliver(hub.clone(), webhook));
    }
    let graceful = GracefulShutdown::new();
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        app: app.clone(),
        // After an exchange on the direct path the connection is HTTP/1:
        // an HTTP/2 preface then is a bad request, not a protocol switch
        // (which would also escape the head and idle timeouts, see
        // `ConnWatch`).
        http1: builder.clone().http1_only(),
        http: builder,
        limits: ConnLimits {
            head: config.header_read_timeout,
            idle: config.idle_timeout,
            send: config.send_timeout,
            max_head,
        },
        tls: config.tls.as_ref().map(|tls| tls.acceptor()),
    });
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
        // Events are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(UNSENT_LOW_WATER);
        let conn = Connection {
            shared: shared.clone(),
            // Taken now, not in the task: a shutdown that starts before the
            // task runs still waits for it.
            graceful: graceful.watcher(),
            closing: closing.clone(),
            peer,
            counted: limits.connection(),
        };
        // The connection's own future, not one wrapping it: a wrapper
        // would hold the connection twice (its capture and the inner
        // future's), for the connection's whole life.
        tokio::spawn(conn.serve(stream));
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

/// The most bytes the kernel holds unsent for a connection
/// (`TCP_NOTSENT_LOWAT`). Unbounded, a socket takes writes until its send
/// buffer is full (on loopback that buffer grows to almost 4 MiB), and
/// Linux wakes the writer again only once a third of it is free: a device
/// reading steadily but slowly went so long between writes that the send
/// timeout took it for frozen, and a frozen one held megabytes in the
/// kernel that `--queue-bytes` did not count and that counted as written
/// (docs/PROTOCOL.md §3.7, §5). Bounded, the writer wakes after every
/// 32 KiB the client takes; a fast reader leaves nothing unsent anyway.
#[cfg(any(target_os = "linux", target_os = "android"))]
const UNSENT_LOW_WATER: u32 = 64 * 1024;

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
