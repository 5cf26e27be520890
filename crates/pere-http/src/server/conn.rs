//! One connection's task: the first request on the direct path or
//! through hyper, under the head and idle timeouts, and PROTOCOL §8's JSON
//! in place of hyper's own answers to requests it could not parse.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use pere_core::EventStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::watch::{ConnWatch, Expired, Tracked, Watched};
use crate::handlers::{self, App};
use crate::stall::Stall;

/// What one connection's task needs.
pub(super) struct Connection<S: EventStore> {
    pub(super) app: Arc<App<S>>,
    pub(super) http: Arc<auto::Builder<TokioExecutor>>,
    /// The same, HTTP/1 only: for connections the direct path answered on.
    pub(super) http1: Arc<auto::Builder<TokioExecutor>>,
    /// Held for the connection's whole life, so that shutdown waits for it.
    pub(super) graceful: hyper_util::server::graceful::Watcher,
    pub(super) closing: tokio::sync::watch::Receiver<bool>,
    pub(super) limits: ConnLimits,
    pub(super) peer: SocketAddr,
}

impl<S: EventStore> Connection<S> {
    /// Serves the connection: its first request here if it is an event
    /// stream (see [`crate::direct`]), everything else through hyper.
    pub(super) async fn serve(mut self, stream: TcpStream) {
        // Each step is boxed: the task itself then holds only what every
        // step needs, not the largest step's state for the connection's
        // whole life (an event stream lives for hours).
        if !Box::pin(self.first_byte(&stream)).await {
            return;
        }
        let stall = Stall::new(self.limits.send, self.peer);
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
pub(super) struct ConnLimits {
    /// Time for a request head, from its first byte.
    pub(super) head: Duration,
    /// Time with no request in progress.
    pub(super) idle: Duration,
    /// Time a pending write may make no progress.
    pub(super) send: Duration,
    /// Largest request head, for the `431` answer's sentence.
    pub(super) max_head: usize,
}

/// Drives one connection under its timeouts: a request head that has not
/// arrived `head` after its first byte gets a `408` and the connection
/// closes; a connection with no request in progress for `idle` closes.
/// hyper's own answers to a request it could not parse are replaced by
/// PROTOCOL §8's JSON (see [`ConnWatch::hyper_rejection`]).
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

/// Writes a PROTOCOL §8 error on a connection whose request never reached
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
