//! The server: [`run`] accepts connections, serves each on its own task,
//! and on shutdown drains them gracefully.
//!
//! Shutdown order (why it terminates): stop accepting; shut the hub down,
//! which drops every stream's queue so every SSE body ends; then wait for
//! connections to finish, bounded by [`ServerConfig::shutdown_grace`].
//! Without the second step a graceful shutdown would wait forever on open
//! streams.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use pere_core::{EventStore, Hub};
use tokio::net::TcpListener;

use crate::error::{Error, Result};
use crate::handlers::{self, App};
use crate::metrics::HttpMetrics;

/// Default `retry` sent to clients (PROTOCOL §3: 3000 ms).
pub const DEFAULT_RETRY: Duration = Duration::from_millis(3000);
/// Default keepalive period (PROTOCOL §3: 15 s).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(15);
/// Default time to wait for connections to finish at shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Default time a client has to send a request's headers (slowloris guard).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// Where overdue notices are POSTed (with `HubConfig::ack_deadline`).
    pub webhook: Option<crate::webhook::Webhook>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            retry: DEFAULT_RETRY,
            keepalive: DEFAULT_KEEPALIVE,
            cors: Cors::Any,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            webhook: None,
        }
    }
}

/// Binds `addr` (`127.0.0.1:0` picks a free port).
///
/// # Errors
/// [`Error::Io`] naming the address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|source| Error::Io {
        context: format!("cannot listen on {addr}"),
        source,
    })
}

/// Serves `hub` on `listener` until `shutdown` resolves, then shuts down
/// gracefully (see the module docs) and returns.
///
/// # Errors
/// None today: accept errors are logged and retried; the signature leaves
/// room for fatal ones.
pub async fn run<S: EventStore>(
    listener: TcpListener,
    hub: Hub<S>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let app = Arc::new(App {
        hub: hub.clone(),
        config: config.clone(),
        metrics: HttpMetrics::default(),
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true);
    // hyper's smallest read buffer. With a larger maximum, hyper's second
    // read on a connection (the one that watches an open event stream for
    // EOF) finds less than 8 KiB free behind the request it parsed and
    // reallocates to 16 KiB, copying (touching) 8 KiB: measured 26.4 KiB →
    // 19.1 KiB PSS per idle stream over 10,000 streams. Request heads stay
    // within 8 KiB; bodies are streamed, not buffered here.
    builder.http1().max_buf_size(8192);
    if let Some(webhook) = config.webhook.clone() {
        tokio::spawn(crate::webhook::deliver(hub.clone(), webhook));
    }
    let graceful = GracefulShutdown::new();
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
        let app = app.clone();
        let service = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, std::convert::Infallible>(handlers::handle(app, req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(%peer, cause = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: closing streams");
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
