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
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use pere_core::{EventStore, Hub};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::body::Body;
use crate::error::{Error, Result};
use crate::handlers::{self, App};
use crate::limits::Limits;
use crate::metrics::HttpMetrics;
use crate::stall::Stall;

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
/// None today: accept errors are logged and retried; the signature leaves
/// room for fatal ones.
pub async fn run<S: EventStore>(
    listener: TcpListener,
    hub: Hub<S>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
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
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(half_send))
        .keep_alive_timeout(half_send);
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
    let limits_conn = ConnLimits {
        head: config.header_read_timeout,
        idle: config.idle_timeout,
        send: config.send_timeout,
        max_head: config.max_header_bytes.max(MIN_MAX_HEADER_BYTES),
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

/// What one connection's task needs.
struct Connection<S: EventStore> {
    app: Arc<App<S>>,
    http: Arc<auto::Builder<TokioExecutor>>,
    /// The same, HTTP/1 only: for connections the direct path answered on.
    http1: Arc<auto::Builder<TokioExecutor>>,
    /// Held for the connection's whole life, so that shutdown waits for it.
    graceful: hyper_util::server::graceful::Watcher,
    closing: tokio::sync::watch::Receiver<bool>,
    limits: ConnLimits,
    peer: SocketAddr,
}

impl<S: EventStore> Connection<S> {
    /// Serves the connection: its first request here if it is an event
    /// stream (see [`crate::direct`]), everything else through hyper.
    async fn serve(mut self, stream: TcpStream) {
        // Each step is boxed: the task itself then holds only what every
        // step needs, not the largest step's state for the connection's
        // whole life (an event stream lives for hours).
        if !Box::pin(self.first_byte(&stream)).await {
            return;
        }
        let stall = crate::stall::Stall::new(self.limits.send, self.peer);
        let (stream, http1_only) =
            match Box::pin(crate::direct::serve_first(stream, &self.app, stall)).await {
                crate::direct::Outcome::Untouched(stream) => (stream, false),
                crate::direct::Outcome::Answered(stream) => (stream, true),
                crate::direct::Outcome::Closed => return,
            };
        Box::pin(self.serve_hyper(stream, http1_only)).await;
    }

    /// Waits for the connection's first byte: `false` when the client
    /// closed, the idle timeout passed, or the server is shutting down.
    async fn first_byte(&mut self, stream: &TcpStream) -> bool {
        // A peek, not `readable()`, which can report a fresh socket ready
        // before any byte arrived.
        let mut first = [0u8; 1];
        tokio::select! {
            peeked = stream.peek(&mut first) => matches!(peeked, Ok(1..)),
            _ = self.closing.wait_for(|closing| *closing) => false,
            () = tokio::time::sleep(self.limits.idle) => {
                tracing::debug!(peer = %self.peer, "idle connection closed");
                false
            }
        }
    }

    /// Serves the connection through hyper, under our own head and idle
    /// timeouts (see [`serve`]).
    async fn serve_hyper(self, stream: TcpStream, http1_only: bool) {
        let Self {
            app,
            http,
            http1,
            graceful,
            limits,
            peer,
            ..
        } = self;
        let watch = Arc::new(ConnWatch::new(http1_only));
        let service = service_fn({
            let watch = watch.clone();
            move |req| {
                let app = app.clone();
                let request = watch.begin();
                async move {
                    let response = handlers::handle(app, req).await;
                    Ok::<_, std::convert::Infallible>(response.map(|body| Tracked {
                        body,
                        _request: request,
                    }))
                }
            }
        });
        let http = if http1_only { http1 } else { http };
        let conn = http
            .serve_connection(
                TokioIo::new(Watched::new(
                    stream,
                    watch.clone(),
                    Stall::new(limits.send, peer),
                )),
                service,
            )
            .into_owned();
        let conn = Box::pin(graceful.watch(conn));
        serve(conn, watch, limits, peer).await;
    }
}

/// What one connection's task enforces beside hyper.
#[derive(Clone, Copy)]
struct ConnLimits {
    /// Time for a request head, from its first byte.
    head: Duration,
    /// Time with no request in progress.
    idle: Duration,
    /// Time a pending write may make no progress.
    send: Duration,
    /// Largest request head, for the `431` answer's sentence.
    max_head: usize,
}

/// Drives one connection under its timeouts: a request head that has not
/// arrived `head` after its first byte gets a `408` and the connection
/// closes; a connection with no request in progress for `idle` closes.
/// hyper's own answers to a request it could not parse are replaced by
/// docs/PROTOCOL.md §8's JSON (see [`ConnWatch::hyper_rejection`]).
async fn serve<F, E>(
    mut conn: Pin<Box<F>>,
    watch: Arc<ConnWatch>,
    limits: ConnLimits,
    peer: SocketAddr,
) where
    F: Future<Output = std::result::Result<(), E>>,
    E: std::fmt::Display,
{
    let ConnLimits { head, idle, .. } = limits;
    loop {
        let deadline = watch.deadline(head, idle);
        tokio::select! {
            ended = &mut conn => {
                if let Err(err) = ended {
                    tracing::debug!(%peer, cause = %err, "connection ended with an error");
                }
                let status = watch.rejected.load(Ordering::Acquire);
                if status != 0 {
                    drop(conn);
                    tracing::debug!(%peer, status, "request not parsed");
                    // Boxed: the answer's state (and its read buffer) would
                    // otherwise be part of every connection's task.
                    Box::pin(answer_and_close(&watch, unparsed(status, limits.max_head))).await;
                }
                return;
            }
            () = watch.changed.notified() => {}
            () = sleep_until_some(deadline) => {
                match watch.expired(head, idle) {
                    None => {}
                    Some(Expired::Idle) => {
                        tracing::debug!(%peer, "idle connection closed");
                        return;
                    }
                    Some(Expired::Head) => {
                        // hyper holds a clone of the socket inside `conn`:
                        // drop it first, then answer on our own.
                        drop(conn);
                        tracing::debug!(%peer, "request head too slow: 408");
                        let sentence = format!(
                            "the request head did not arrive within {} ms",
                            head.as_millis()
                        );
                        Box::pin(answer_and_close(&watch, ("408 Request Timeout", "request_timeout", sentence)))
                            .await;
                        return;
                    }
                }
            }
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The answer to a request hyper could not parse, by the status hyper
/// chose: status line, code and sentence.
fn unparsed(status: u16, max_head: usize) -> (&'static str, &'static str, String) {
    match status {
        431 => (
            "431 Request Header Fields Too Large",
            "headers_too_large",
            format!("the request head (request line and headers) is larger than {max_head} bytes"),
        ),
        414 => (
            "414 URI Too Long",
            "uri_too_long",
            "the request target is too long".into(),
        ),
        _ => (
            "400 Bad Request",
            "invalid_request",
            "the request is not valid HTTP/1.1: malformed request line or header".into(),
        ),
    }
}

/// Writes a docs/PROTOCOL.md §8 error on a connection whose request never reached
/// the service, then closes it. Bounded: a client that does not read gets
/// nothing more.
async fn answer_and_close(watch: &ConnWatch, (status, code, sentence): (&str, &str, String)) {
    let Some(mut stream) = watch.take_parked() else {
        return;
    };
    let body = serde_json::json!({ "error": sentence, "code": code }).to_string();
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        // Closing with unread bytes (the rest of an oversized head) makes
        // the kernel send a reset, which can destroy the answer before the
        // client reads it: read what is still coming, a bounded amount.
        let mut sink = vec![0u8; 4096];
        let mut drained = 0;
        while drained < 256 * 1024 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        std::io::Result::Ok(())
    })
    .await;
}

/// What a connection is doing, shared by its socket wrapper ([`Watched`]),
/// its service (which counts requests) and its task (which times it).
struct ConnWatch {
    start: Instant,
    /// Requests in progress: from head parsed until the response body is
    /// dropped (for a stream, until it ends).
    requests: AtomicUsize,
    /// Milliseconds after `start` (plus one) when the first byte of a
    /// pending request head arrived; 0 when none is pending.
    head_started: AtomicU64,
    /// Milliseconds after `start` when the last request finished.
    idle_since: AtomicU64,
    /// An HTTP/2 connection: hyper's h2 handles it; no head timing.
    h2: AtomicBool,
    /// Whether any byte was read yet (to spot the HTTP/2 preface).
    seen: AtomicBool,
    /// The status of hyper's own answer to a request it could not parse
    /// (400, 414, 431), held back to be answered in JSON; 0 when none.
    rejected: AtomicU16,
    /// The socket, once hyper dropped it (see [`Watched`]).
    parked: std::sync::Mutex<Option<TcpStream>>,
    /// Wakes the task when the state changed, so it re-arms its timer.
    changed: Notify,
}

enum Expired {
    Head,
    Idle,
}

impl ConnWatch {
    /// A watch for a connection; `http1_only` when it cannot be HTTP/2
    /// (so a preface is never taken for one).
    fn new(http1_only: bool) -> Self {
        Self {
            start: Instant::now(),
            requests: AtomicUsize::new(0),
            head_started: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            seen: AtomicBool::new(http1_only),
            rejected: AtomicU16::new(0),
            parked: std::sync::Mutex::new(None),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    /// Bytes arrived from the client.
    fn on_read(&self, bytes: &[u8]) {
        if !self.seen.swap(true, Ordering::Relaxed) && bytes.starts_with(b"PRI * HTTP/2") {
            self.h2.store(true, Ordering::Relaxed);
        }
        if self.requests.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Acquire) == 0
        {
            self.head_started
                .store(self.now_ms() + 1, Ordering::Release);
            self.changed.notify_one();
        }
    }

    /// Whether `bytes`, about to be written, are hyper's own answer to a
    /// request it could not parse: then they are held back and the task
    /// answers in JSON once hyper gave up the connection. hyper's answers
    /// have no body and no content type; the service's always have both.
    fn hyper_rejection(&self, bytes: &[u8]) -> bool {
        if self.h2.load(Ordering::Relaxed) {
            return false;
        }
        let status = match bytes.get(..13) {
            Some(b"HTTP/1.1 400 ") => 400,
            Some(b"HTTP/1.1 414 ") => 414,
            Some(b"HTTP/1.1 431 ") => 431,
            _ => return false,
        };
        let head = bytes.to_ascii_lowercase();
        let has = |needle: &[u8]| head.windows(needle.len()).any(|w| w == needle);
        if !has(b"\r\ncontent-length: 0\r\n") || has(b"\r\ncontent-type:") {
            return false;
        }
        self.rejected.store(status, Ordering::Release);
        true
    }

    fn park(&self, stream: TcpStream) {
        *self.parked.lock().unwrap_or_else(|e| e.into_inner()) = Some(stream);
    }

    fn take_parked(&self) -> Option<TcpStream> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// A request head was parsed: the request is in progress until the
    /// returned guard drops.
    fn begin(self: &Arc<Self>) -> RequestGuard {
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Release);
        self.changed.notify_one();
        RequestGuard(self.clone())
    }

    /// When the connection's current timeout falls due, if it has one.
    fn deadline(&self, head: Duration, idle: Duration) -> Option<Instant> {
        if self.h2.load(Ordering::Relaxed) || self.requests.load(Ordering::Acquire) > 0 {
            return None;
        }
        match self.head_started.load(Ordering::Acquire) {
            0 => Some(self.at(self.idle_since.load(Ordering::Acquire)) + idle),
            t => Some(self.at(t - 1) + head),
        }
    }

    fn expired(&self, head: Duration, idle: Duration) -> Option<Expired> {
        let due = self.deadline(head, idle)?;
        if Instant::now() < due {
            return None;
        }
        match self.head_started.load(Ordering::Acquire) {
            0 => Some(Expired::Idle),
            _ => Some(Expired::Head),
        }
    }
}

/// A request in progress; its drop (with the response body) makes the
/// connection idle again.
struct RequestGuard(Arc<ConnWatch>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let w = &self.0;
        w.idle_since.store(w.now_ms(), Ordering::Release);
        w.requests.fetch_sub(1, Ordering::AcqRel);
        w.changed.notify_one();
    }
}

/// A response body that keeps its request counted until hyper drops it.
struct Tracked {
    body: Body,
    _request: RequestGuard,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The socket as hyper sees it: reads are reported to the [`ConnWatch`].
/// When hyper drops it, the socket is parked in the watch, so that the
/// connection's task can still answer on it (`408`, or JSON in place of
/// hyper's own error answer); the socket closes with the task.
///
/// The halves are tokio's own so that reads go into hyper's buffer without
/// zeroing it first: a zeroed 8 KiB buffer is two touched pages on every
/// open stream, where a request touches one.
struct Watched {
    io: Option<(OwnedReadHalf, OwnedWriteHalf)>,
    watch: Arc<ConnWatch>,
    /// Ends the connection when the client stops taking what it is sent.
    stall: Stall,
}

impl Watched {
    fn new(stream: TcpStream, watch: Arc<ConnWatch>, stall: Stall) -> Self {
        Self {
            io: Some(stream.into_split()),
            watch,
            stall,
        }
    }

    fn read(&mut self) -> std::io::Result<&mut OwnedReadHalf> {
        self.io.as_mut().map(|(r, _)| r).ok_or_else(gone)
    }

    fn write(&mut self) -> std::io::Result<&mut OwnedWriteHalf> {
        self.io.as_mut().map(|(_, w)| w).ok_or_else(gone)
    }
}

/// Only reachable if a socket were used after it was parked.
fn gone() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "the socket was handed back",
    )
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some((read, write)) = self.io.take()
            && let Ok(stream) = read.reunite(write)
        {
            self.watch.park(stream);
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(this.read()?).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            this.watch.on_read(new);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.watch.hyper_rejection(buf) {
            return Poll::Ready(Ok(buf.len()));
        }
        let written = Pin::new(this.write()?).poll_write(cx, buf);
        this.stall.check(cx, written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && this.watch.hyper_rejection(first)
        {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        let written = Pin::new(this.write()?).poll_write_vectored(cx, bufs);
        this.stall.check(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.get_mut().write()?).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // The socket closes when the connection's task ends, right after
        // hyper is done; shutting it down here would keep the task from
        // answering on it.
        Poll::Ready(Ok(()))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hyper_s_own_bodiless_error_answers_are_held_back() {
        let hyper_answers: [(&[u8], u16); 3] = [
            (
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Sun, 22 Nov 2026 20:00:00 GMT\r\n\r\n",
                400,
            ),
            (
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n",
                431,
            ),
            (b"HTTP/1.1 414 URI Too Long\r\nContent-Length: 0\r\n\r\n", 414),
        ];
        for (bytes, status) in hyper_answers {
            let watch = ConnWatch::new(false);
            assert!(watch.hyper_rejection(bytes));
            assert_eq!(watch.rejected.load(Ordering::Acquire), status);
        }
        let ours: [&[u8]; 4] = [
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 57\r\ncontent-type: application/json\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"data: HTTP/1.1 400 \r\n\r\n",
        ];
        for bytes in ours {
            let watch = ConnWatch::new(false);
            assert!(!watch.hyper_rejection(bytes));
            assert_eq!(watch.rejected.load(Ordering::Acquire), 0);
        }
        let watch = ConnWatch::new(false);
        watch.h2.store(true, Ordering::Relaxed);
        assert!(!watch.hyper_rejection(hyper_answers[0].0));
    }
}
