//! One connection's task: its TLS handshake (with `--tls-cert`), then the
//! first request on the direct path (plain TCP only) or through hyper,
//! under the head and idle timeouts, and docs/PROTOCOL.md §8's JSON in
//! place of hyper's own answers to requests it could not parse.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use pere_core::EventStore;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

pub(crate) mod direct;
mod head;
pub(crate) mod posts;
mod request;
mod stall;
mod watch;

use crate::error::{ApiError, ErrorCode};
use crate::server::app::App;
use crate::server::config::Cors;
use crate::server::limits::ConnectionGuard;
use crate::server::metrics::HttpMetrics;
use stall::{Stall, Stalled};
use watch::{ConnWatch, Expired, Socket, TlsStream, Tracked, Watched};

/// What every connection's task shares: one allocation for the server,
/// so that each task holds a pointer to it (an event stream's task lives
/// for hours, and its size is paid per idle stream).
pub(super) struct Shared<S: EventStore> {
    pub(super) app: Arc<App<S>>,
    pub(super) http: auto::Builder<TokioExecutor>,
    /// The same, HTTP/1 only: for connections the direct path answered on.
    pub(super) http1: auto::Builder<TokioExecutor>,
    pub(super) limits: ConnLimits,
    /// With `--tls-cert`: connections speak TLS.
    pub(super) tls: Option<tokio_rustls::TlsAcceptor>,
}

/// What one connection's task needs.
pub(super) struct Connection<S: EventStore> {
    pub(super) shared: Arc<Shared<S>>,
    /// Held for the connection's whole life, so that shutdown waits for it.
    pub(super) graceful: hyper_util::server::graceful::Watcher,
    pub(super) closing: tokio::sync::watch::Receiver<bool>,
    pub(super) peer: SocketAddr,
    /// Counts the connection (`--max-connections`) until the task ends.
    pub(super) counted: ConnectionGuard,
}

impl<S: EventStore> Connection<S> {
    /// Serves the connection: its first request here if it is an event
    /// stream (see [`direct`]), receipts here while they come whole (see
    /// [`posts`]), everything else through hyper.
    pub(super) async fn serve(mut self, stream: TcpStream) {
        // Each step is boxed: the task itself then holds only what every
        // step needs, not the largest step's state for the connection's
        // whole life (an event stream lives for hours).
        if let Some(acceptor) = self.shared.tls.clone() {
            let Some(tls) = Box::pin(self.handshake(acceptor, stream)).await else {
                return;
            };
            // A client that chose HTTP/1.1 by ALPN never gets HTTP/2; one
            // that chose `h2`, or nothing, is told apart by its first bytes
            // as over plain TCP.
            let http1_only = tls.get_ref().1.alpn_protocol() == Some(b"http/1.1");
            Box::pin(self.serve_hyper(Socket::Tls(tls), http1_only)).await;
            return;
        }
        if !Box::pin(self.first_byte(&stream)).await {
            return;
        }
        let stall = Stall::new(self.shared.limits.send, self.peer);
        let (stream, http1_only) = match Box::pin(direct::serve_first(
            stream,
            &self.shared.app,
            stall,
            &mut self.closing,
        ))
        .await
        {
            direct::Outcome::Untouched(stream) => (stream, false),
            direct::Outcome::Answered(stream) => (stream, true),
            direct::Outcome::Closed => return,
        };
        let (stream, http1_only) = match Box::pin(posts::serve(
            stream,
            &self.shared.app,
            self.shared.limits,
            &mut self.closing,
        ))
        .await
        {
            posts::Served::NotOurs(stream) => (stream, http1_only),
            posts::Served::Handed(stream) => (stream, true),
            posts::Served::Closed => return,
        };
        Box::pin(self.serve_hyper(Socket::Plain(stream), http1_only)).await;
    }

    /// The TLS handshake, within the head timeout from the connection's
    /// start: a client that connects and never finishes it (or never
    /// begins it) would otherwise hold a descriptor for nothing. The
    /// direct path is not taken over TLS: it serves plain sockets only.
    async fn handshake(
        &mut self,
        acceptor: tokio_rustls::TlsAcceptor,
        stream: TcpStream,
    ) -> Option<Box<TlsStream>> {
        let stalled = Stalled::new(stream, Stall::new(self.shared.limits.send, self.peer));
        tokio::select! {
            done = acceptor.accept(stalled) => match done {
                Ok(tls) => Some(Box::new(tls)),
                Err(err) => {
                    tracing::debug!(peer = %self.peer, cause = %err, "TLS handshake failed");
                    None
                }
            },
            _ = self.closing.wait_for(|closing| *closing) => None,
            () = tokio::time::sleep(self.shared.limits.head) => {
                tracing::debug!(peer = %self.peer, "TLS handshake too slow: closed");
                None
            }
        }
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
            () = tokio::time::sleep(self.shared.limits.idle) => {
                tracing::debug!(peer = %self.peer, "idle connection closed");
                false
            }
        }
    }

    /// Serves the connection through hyper, under our own head and idle
    /// timeouts (see [`serve`]).
    async fn serve_hyper(self, stream: Socket, http1_only: bool) {
        let Self {
            shared,
            graceful,
            closing,
            peer,
            counted,
        } = self;
        let app = shared.app.clone();
        let limits = shared.limits;
        let watch = Arc::new(ConnWatch::new(http1_only));
        let max_head = limits.max_head;
        let cors = app.config.cors.clone();
        let service = service_fn({
            let watch = watch.clone();
            move |req| {
                let request = watch.begin();
                // Boxed, and before the `async` block, which then holds a
                // pointer rather than the request and the handler's state:
                // hyper keeps one allocation the size of this future per
                // connection (per stream over HTTP/2) for its whole life,
                // while the box is freed once the answer is ready.
                let served = Box::pin(request::serve(app.clone(), req, max_head));
                let watch = watch.clone();
                async move {
                    let response = served.await;
                    Ok::<_, std::convert::Infallible>(response.map(|body| {
                        let waiting = watch
                            .is_http2()
                            .then(|| watch.body_wait(http_body::Body::is_end_stream(&body)));
                        Tracked {
                            body,
                            request,
                            waiting,
                            rest: bytes::Bytes::new(),
                        }
                    }))
                }
            }
        });
        let http = if http1_only {
            &shared.http1
        } else {
            &shared.http
        };
        let io = match stream {
            Socket::Plain(tcp) => Watched::plain(tcp, watch.clone(), Stall::new(limits.send, peer)),
            Socket::Tls(tls) => Watched::tls(tls, watch.clone()),
        };
        let conn = http
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let metrics = &shared.app.metrics;
        serve(
            Box::pin(conn),
            &watch,
            limits,
            peer,
            closing,
            &cors,
            metrics,
        )
        .await;
        // Only now, with the socket closed, may shutdown stop waiting.
        drop(graceful);
        drop(counted);
    }
}

/// What one connection's task enforces beside hyper.
#[derive(Clone, Copy)]
pub(super) struct ConnLimits {
    /// Time for a request head, from its first byte.
    pub(super) head: Duration,
    /// Time with no request in progress.
    pub(super) idle: Duration,
    /// Time a pending write may make no progress.
    pub(super) send: Duration,
    /// Largest request head: checked here over HTTP/2 (hyper's read
    /// buffer bounds it over HTTP/1), and named in the `431` answer.
    pub(super) max_head: usize,
}

/// How long hyper may take to close a connection it was asked to close for
/// idleness: an HTTP/2 client has this long to answer the GOAWAY's ping.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// How long a closing connection is read (and what it sends dropped), at
/// most, so that the client gets our answer and FIN rather than a reset
/// (see [`close`]).
const LINGER: Duration = Duration::from_secs(2);
/// [`LINGER`] while the server shuts down. Answers still on their way get
/// this long before a request the client sends after them could turn the
/// close into a reset, which destroys what the client has not received
/// yet (a pipelining client, a slow reader): the kernel goes on sending
/// what was written after the close, unless a reset cuts it. Seeing when
/// the client has it all (`SIOCOUTQ`) would take `unsafe` code; this
/// bounds both the risk and the delay of the exit.
const SHUTDOWN_LINGER: Duration = Duration::from_millis(250);
/// The longest request target hyper takes (its `MAX_URI_LEN`).
const MAX_TARGET: usize = u16::MAX as usize - 1;
/// Most bytes read (and dropped) from a closing connection.
const LINGER_BYTES: usize = 256 * 1024;

/// Drives one connection under its timeouts, then closes it (see
/// [`close`]). Whatever the client sends, the connection is timed as a
/// request head until it has a request, and as idle while it has none:
///
/// - a head (or HTTP/2 preface) not whole `head` after its first byte: a
///   `408` over HTTP/1, and the connection closes;
/// - no request, no HTTP/2 stream, for `idle`: hyper is asked to close the
///   connection (over HTTP/2 it says GOAWAY) and given [`CLOSE_WAIT`];
/// - at shutdown hyper is asked the same, and given [`CLOSE_WAIT`] if no
///   request is in progress; one that is goes on within `run`'s grace.
///
/// hyper's own answers to a request it could not parse are replaced by
/// docs/PROTOCOL.md §8's JSON (see [`ConnWatch::hyper_answers`]), with the
/// status hyper's error says.
async fn serve<C>(
    mut conn: Pin<Box<C>>,
    watch: &ConnWatch,
    limits: ConnLimits,
    peer: SocketAddr,
    mut closing: tokio::sync::watch::Receiver<bool>,
    cors: &Cors,
    metrics: &HttpMetrics,
) where
    C: GracefulConnection,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let ConnLimits { head, idle, .. } = limits;
    // Set once hyper was asked to close an idle connection: by then it
    // must have done so, unless a request came in meanwhile.
    let mut stop_at: Option<Instant> = None;
    let mut shutting_down = false;
    // Over HTTP/2: when to look again for a body the client's window has
    // held back for the send timeout (see `ConnWatch::stalled`).
    let stall_every = (limits.send / 4).max(Duration::from_millis(50));
    let mut stall_check: Option<Instant> = None;
    let answer = loop {
        let deadline = match stop_at {
            Some(at) => (!watch.busy()).then_some(at),
            None => watch.deadline(head, idle),
        };
        if stall_check.is_none() && watch.is_http2() {
            stall_check = Some(Instant::now() + stall_every);
        }
        tokio::select! {
            () = sleep_until_some(stall_check) => {
                if watch.stalled(limits.send) {
                    tracing::debug!(%peer, "HTTP/2 client took nothing for the send timeout: closed");
                    break None;
                }
                stall_check = Some(Instant::now() + stall_every);
            }
            ended = conn.as_mut() => {
                let Err(err) = ended else { break None };
                let err: Box<dyn std::error::Error + Send + Sync> = err.into();
                tracing::debug!(%peer, cause = %err, "connection ended with an error");
                let parse = err.downcast_ref::<hyper::Error>().filter(|e| e.is_parse());
                match parse {
                    Some(err) if watch.held_back() => {
                        break Some(unparsed(err, watch.request_line(), limits.max_head));
                    }
                    _ => break None,
                }
            }
            () = watch.changed.notified() => {}
            _ = closing.wait_for(|closing| *closing), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
                // As for idleness, a connection without a request in
                // progress (an HTTP/2 client that does not answer the
                // GOAWAY's ping, a head begun and never finished) goes
                // after CLOSE_WAIT, not the server's whole grace. One with
                // a request is left to finish it within that grace.
                if !watch.busy() {
                    stop_at.get_or_insert_with(|| Instant::now() + CLOSE_WAIT);
                }
            }
            () = sleep_until_some(deadline) => {
                if stop_at.is_some() {
                    tracing::debug!(%peer, "idle connection did not close in time: dropped");
                    break None;
                }
                match watch.expired(head, idle) {
                    None => {}
                    Some(Expired::Idle) => {
                        tracing::debug!(%peer, "idle connection closed");
                        conn.as_mut().graceful_shutdown();
                        stop_at = Some(Instant::now() + CLOSE_WAIT);
                    }
                    Some(Expired::Head) if watch.is_http1() => {
                        tracing::debug!(%peer, "request head too slow: 408");
                        let sentence = format!(
                            "the request head did not arrive within {} ms",
                            head.as_millis()
                        );
                        break Some(ApiError::new(ErrorCode::RequestTimeout, sentence));
                    }
                    Some(Expired::Head) => {
                        tracing::debug!(%peer, "HTTP/2 preface too slow: closed");
                        break None;
                    }
                }
            }
        }
    };
    // hyper holds the socket inside `conn`: dropping it parks the socket
    // in the watch, for us to answer on and close.
    drop(conn);
    if let Some(stream) = watch.take_parked() {
        // Counted as the service's answers are: an operator watching
        // `pere_http_errors_total` sees clients that time out or send
        // what is not HTTP.
        if let Some(err) = &answer {
            metrics.count_error(err);
            metrics.count(err.status());
        }
        // Boxed: the closing's state (and its read buffer) would otherwise
        // be part of every connection's task.
        Box::pin(close(
            stream,
            answer.map(|err| head::closing_error(&err, cors)),
            &mut closing,
        ))
        .await;
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Most header fields hyper parses in an HTTP/1 request head.
const MAX_HEADERS: usize = 100;

/// The answer to a request hyper could not parse, whose first line was
/// `request_line` bytes long as far as it arrived, the head limit being
/// `max_head`.
fn unparsed(err: &hyper::Error, request_line: usize, max_head: usize) -> ApiError {
    // hyper says "too large" for a head that outgrew its buffer (the head
    // limit), one with over 100 headers, and a target over 65,534 bytes.
    if err.is_parse_too_large() && request_line > MAX_TARGET {
        ApiError::new(ErrorCode::UriTooLong, "the request target is too long")
    } else if err.is_parse_too_large() {
        // Which of the two hyper does not say.
        ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!(
                "{}, or has more than {MAX_HEADERS} headers",
                request::head_too_large(max_head)
            ),
        )
    } else {
        ApiError::new(
            ErrorCode::InvalidRequest,
            "the request is not valid HTTP/1.1: malformed request line or header",
        )
    }
}

/// Closes a connection so that the client reads all it was sent: the
/// answer, if any (a docs/PROTOCOL.md §8 error for a request that never reached
/// the service), then our FIN, while what the client still sends is read
/// and dropped. Closing a socket with unread bytes makes the kernel send a
/// reset instead, which can destroy an answer before the client reads it,
/// and turns the next request of a kept-alive client into `ECONNRESET`.
/// Bounded by [`LINGER`] and [`LINGER_BYTES`]: a client that neither reads
/// nor stops sending gets nothing more.
async fn close(
    stream: Socket,
    answer: Option<Vec<u8>>,
    closing: &mut tokio::sync::watch::Receiver<bool>,
) {
    match stream {
        Socket::Plain(tcp) => close_io(tcp, answer, closing).await,
        // Its shutdown sends TLS's close_notify before the FIN.
        Socket::Tls(tls) => close_io(tls, answer, closing).await,
    }
}

/// [`close`] over any stream. While the server shuts down the client's
/// FIN is waited for [`SHUTDOWN_LINGER`] only, not the whole [`LINGER`]:
/// a client that keeps an idle kept-alive connection open without reading
/// it (a pool, a browser) would otherwise hold the server's exit that long.
pub(super) async fn close_io<S>(
    mut stream: S,
    answer: Option<Vec<u8>>,
    closing: &mut tokio::sync::watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(LINGER, async {
        if let Some(answer) = answer {
            stream.write_all(&answer).await?;
        }
        stream.shutdown().await?;
        let mut sink = vec![0u8; 4096];
        let mut drained = 0;
        // Set once the server is shutting down.
        let mut cut_at: Option<Instant> = None;
        while drained < LINGER_BYTES {
            let read = tokio::select! {
                biased;
                read = stream.read(&mut sink) => read?,
                // A dropped sender: the server is gone, too.
                _ = closing.wait_for(|closing| *closing), if cut_at.is_none() => {
                    cut_at = Some(Instant::now() + SHUTDOWN_LINGER);
                    continue;
                }
                () = sleep_until_some(cut_at) => break,
            };
            match read {
                0 => break,
                n => drained += n,
            }
        }
        std::io::Result::Ok(())
    })
    .await;
}
