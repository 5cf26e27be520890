//! Receipts served on the socket itself, without hyper, several at a time.
//!
//! A receipt is a small `POST /feedback/…`, and a gateway forwarding many
//! devices' receipts sends them back to back on a few keep-alive
//! connections (HTTP/1.1 pipelining). Through hyper, each one pays for its
//! own pass through hyper's dispatcher and its own trip to the hub's
//! writer. Here the requests that are whole in what the socket holds (head
//! and body, HTTP/1.1, framed by `Content-Length`, no `Expect`, `Upgrade`
//! or `Connection: close`) are parsed with `httparse` (hyper's own
//! parser), checked one by one by the same handler code as through hyper,
//! their receipts recorded in one trip to the writer (in request order, as
//! if served one after the other), and their answers written together.
//! Anything else (another route, a head or body still arriving) goes to
//! hyper at that request boundary, for the rest of the connection.

use bytes::Bytes;
use hyper::header::CONNECTION;
use hyper::{Method, Request};
use pere_core::EventStore;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::direct::plain_head;
use super::head::{Framing, head_bytes};
use super::{ConnLimits, close_io};
use crate::server::app::App;
use crate::server::body::{Body, RequestBody};
use crate::server::handlers;
use crate::server::router::Route;

/// Bytes looked at for whole requests at a time: a window of a few dozen
/// pipelined receipts.
const PEEK_BYTES: usize = 32 * 1024;
/// Largest receipt body taken here; larger ones (batches of many
/// receipts) go to hyper, whose cost is small beside theirs.
const MAX_BODY: usize = 8 * 1024;
/// Most requests served in one round: bounds the answers held for a
/// client that does not read them (~300 bytes each).
const MAX_ROUND: usize = 64;
/// What a receipt request starts with.
const PREFIX: &[u8] = b"POST /feedback/";

/// What became of the connection.
pub(super) enum Served {
    /// Its next request is not one for this module, and none was served
    /// here: hyper takes the connection as it found it.
    NotOurs(TcpStream),
    /// Requests were answered here and the connection is at the start of
    /// its next one, which hyper takes (as HTTP/1 only).
    Handed(TcpStream),
    /// The connection is done: the client went away, was idle too long,
    /// or the server is closing.
    Closed,
}

/// Serves the connection's receipt requests for as long as they come whole
/// (see the module docs).
pub(super) async fn serve<S: EventStore>(
    mut stream: TcpStream,
    app: &App<S>,
    limits: ConnLimits,
    closing: &mut tokio::sync::watch::Receiver<bool>,
) -> Served {
    let mut served = false;
    loop {
        // A connection whose first request is something else (most are)
        // is told apart by its first bytes, before any buffer is allocated.
        let ours = if served {
            Some(true)
        } else {
            first_is_receipt(&stream)
        };
        if ours == Some(false) {
            return Served::NotOurs(stream);
        }
        let mut buf = Vec::new();
        let round = match ours {
            Some(_) => {
                buf.reserve_exact(PEEK_BYTES);
                peek_round(&stream, &mut buf, limits.max_head)
            }
            None => None,
        };
        if round.is_none() {
            // Quiet: wait for the next request under the idle timeout,
            // without holding the buffer meanwhile. Readiness, not a
            // peek: the next round peeks anyway, and a second peek per
            // request is a system call a receipt sent one at a time paid
            // for nothing. A readiness without bytes (the end, an error,
            // or a spurious wake) is told apart by that round's peek.
            drop(buf);
            let more = tokio::select! {
                ready = stream.readable() => {
                    if ready.is_err() {
                        return Served::Closed;
                    }
                    true
                }
                _ = closing.wait_for(|closing| *closing) => false,
                () = tokio::time::sleep(limits.idle) => false,
            };
            if !more {
                close_io(stream, None, closing).await;
                return Served::Closed;
            }
            // The next round looks again, with a buffer.
            continue;
        }
        let Some(Some((requests, used))) = round else {
            return Served::Closed;
        };
        if requests.is_empty() {
            return if served {
                Served::Handed(stream)
            } else {
                Served::NotOurs(stream)
            };
        }
        // Take them off the socket: they are all there (peeked), and what
        // follows them is left for the next round.
        let mut taken = (&mut stream).take(used as u64);
        while buf.len() < used {
            if !matches!(taken.read_buf(&mut buf).await, Ok(1..)) {
                return Served::Closed;
            }
        }
        drop(buf);
        let answers = handlers::handle_receipts(app, requests).await;
        let (out, close) = answer_bytes(answers);
        match write_answers(&mut stream, &out, limits.send).await {
            Written::All => {}
            Written::Failed => return Served::Closed,
            Written::Stalled => {
                // Gently, as below: a reset would also destroy the answers
                // already in the socket.
                close_io(stream, None, closing).await;
                return Served::Closed;
            }
        }
        served = true;
        if close || app.hub.is_closing() {
            // Gently: a reset would lose answers the client has not read.
            close_io(stream, None, closing).await;
            return Served::Closed;
        }
    }
}

/// How writing a round's answers ended.
enum Written {
    All,
    /// The socket failed (the client is gone).
    Failed,
    /// The client took no byte for the send timeout.
    Stalled,
}

/// Writes `out` under the send timeout as the other paths apply it: a
/// client that takes no byte for `send` is given up on, one that keeps
/// reading is not, however long a round's answers take it (a deadline on
/// the whole write reset slow gateways reading large batches' answers).
async fn write_answers(stream: &mut TcpStream, mut out: &[u8], send: Duration) -> Written {
    while !out.is_empty() {
        match tokio::time::timeout(send, stream.write(out)).await {
            Ok(Ok(n @ 1..)) => out = &out[n..],
            Ok(_) => return Written::Failed,
            Err(_) => return Written::Stalled,
        }
    }
    Written::All
}

/// Whether the socket's next bytes start a receipt request, without
/// waiting: `None` when nothing is there yet.
fn first_is_receipt(stream: &TcpStream) -> Option<bool> {
    let mut prefix = [0u8; PREFIX.len()];
    let mut read = ReadBuf::new(&mut prefix);
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_peek(&mut cx, &mut read) {
        Poll::Ready(Ok(_)) => Some(read.filled() == PREFIX),
        Poll::Ready(Err(_)) => Some(false),
        Poll::Pending => None,
    }
}

/// The whole receipt requests the socket holds, peeked into `buf`'s spare
/// capacity without waiting: `None` when nothing is there yet,
/// `Some(None)` at the socket's end or on an error.
#[allow(clippy::type_complexity)]
fn peek_round(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    max_head: usize,
) -> Option<Option<(Vec<(Request<RequestBody>, String)>, usize)>> {
    let mut read = ReadBuf::uninit(buf.spare_capacity_mut());
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_peek(&mut cx, &mut read) {
        Poll::Ready(Ok(1..)) => Some(Some(parse_round(read.filled(), max_head))),
        Poll::Ready(_) => Some(None),
        Poll::Pending => None,
    }
}

/// The whole receipt requests at the start of `bytes`, with their channel,
/// and the bytes they take.
fn parse_round(bytes: &[u8], max_head: usize) -> (Vec<(Request<RequestBody>, String)>, usize) {
    let mut requests = Vec::new();
    let mut used = 0;
    while requests.len() < MAX_ROUND {
        let Some((request, channel, len)) = parse_receipt(&bytes[used..], max_head) else {
            break;
        };
        requests.push((request, channel));
        used += len;
    }
    (requests, used)
}

/// The answers' bytes, in order, and whether one of them closes the
/// connection.
fn answer_bytes(answers: Vec<hyper::Response<Body>>) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(answers.len() * 320);
    let mut close = false;
    for answer in answers {
        let (parts, body) = answer.into_parts();
        let body = body.into_whole().unwrap_or_else(|_| {
            // A receipt's answer is JSON, never a stream: should one ever
            // be, the connection ends after the head.
            close = true;
            Bytes::new()
        });
        close |= parts
            .headers
            .get(CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        out.extend_from_slice(&head_bytes(&parts, Framing::Length(body.len())));
        out.extend_from_slice(&body);
    }
    (out, close)
}

/// A whole `POST /feedback/:channel` at the start of `bytes` that this
/// module serves: the request with its body, its channel, and its length
/// on the wire. `None` for anything else, valid or not, and for a head
/// over `max_head` bytes: hyper then answers it as it answers every
/// request (that one with its `431`).
pub(crate) fn parse_receipt(
    bytes: &[u8],
    max_head: usize,
) -> Option<(Request<RequestBody>, String, usize)> {
    if !bytes.starts_with(b"POST /feedback/") {
        return None;
    }
    let head = plain_head(bytes, Method::POST, max_head)?;
    let Route::Feedback(channel) = head.route else {
        return None;
    };
    let length = head.length.filter(|&l| l <= MAX_BODY)?;
    let end = head
        .len
        .checked_add(length)
        .filter(|&end| end <= bytes.len())?;
    let body = RequestBody::whole(Bytes::copy_from_slice(&bytes[head.len..end]));
    let request = head.request.map(|()| body);
    Some((request, channel, end))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::BodyExt;
    use hyper::header::HeaderValue;

    const ONE: &[u8] = b"POST /feedback/news?device=d1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"id\":\"7\"}\n";

    /// A client that reads a round's answers slowly but steadily is not
    /// given up on, however long they take; one that reads nothing is, after
    /// the send timeout. The round was written under one deadline, which
    /// reset a steady reader of large answers (a hostile probe's finding).
    #[tokio::test]
    async fn the_send_timeout_gives_up_on_a_client_that_takes_nothing_only() {
        let send = Duration::from_millis(300);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        // The writer's send buffer kept small, so that each write waits
        // for the reader (not for the kernel to take a megabyte).
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(16 * 1024).unwrap();
        let mut writer = socket
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut reader, _) = listener.accept().await.unwrap();
        let out = vec![b'x'; 1 << 20];
        let steady = tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            let mut got = 0;
            while got < 1 << 20 {
                got += reader.read(&mut buf).await.unwrap();
                // About 800 KB/s: the megabyte takes over a second.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            reader
        });
        let started = std::time::Instant::now();
        assert!(matches!(
            write_answers(&mut writer, &out, send).await,
            Written::All
        ));
        assert!(started.elapsed() > send * 2, "{:?}", started.elapsed());
        let _reader = steady.await.unwrap();
        // The same reader, now reading nothing.
        assert!(matches!(
            write_answers(&mut writer, &out, send).await,
            Written::Stalled
        ));
    }

    #[tokio::test]
    async fn whole_receipts_are_taken_with_their_bodies() {
        let (req, channel, len) = parse_receipt(ONE, 8192).unwrap();
        assert_eq!(channel, "news");
        assert_eq!(len, ONE.len());
        assert_eq!(req.uri().query(), Some("device=d1"));
        assert_eq!(req.headers()["content-type"], "application/json");
        let body = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"{\"id\":\"7\"}\n");
    }

    #[test]
    fn pipelined_receipts_are_taken_up_to_the_first_other_request() {
        let mut bytes = [ONE, ONE, ONE].concat();
        let whole = bytes.len();
        bytes.extend_from_slice(b"GET /healthz HTTP/1.1\r\n\r\n");
        bytes.extend_from_slice(ONE);
        let (requests, used) = parse_round(&bytes, 8192);
        assert_eq!((requests.len(), used), (3, whole));
        // A body still arriving ends the round too.
        let (requests, used) = parse_round(&[ONE, &ONE[..ONE.len() - 1]].concat(), 8192);
        assert_eq!((requests.len(), used), (1, ONE.len()));
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        let others: [&[u8]; 13] = [
            b"POST /feedback/news HTTP/1.1\r\nContent-Length: 2\r\n\r\n{",
            b"POST /feedback/news HTTP/1.1\r\n\r\n",
            b"POST /feedback/news HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
            b"POST /feedback/a/b HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"POST /feedbackx HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"POST /push/news HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"POST /feedback/news HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            b"POST /feedback/news HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            b"POST /feedback/news HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
            b"POST /feedback/news HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST /feedback/news HTTP/1.1\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\nx",
            b"POST /feedback/news HTTP/1.1\r\nContent-Length: 9000\r\n\r\n",
            b"POST /feedback/news HTTP/1.1\r\nBad Header: x\r\nContent-Length: 0\r\n\r\n",
        ];
        for raw in others {
            assert!(
                parse_receipt(raw, 8192).is_none(),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn a_head_over_the_limit_goes_to_hyper() {
        let head_len = ONE.len() - 11;
        assert!(parse_receipt(ONE, head_len).is_some());
        assert!(parse_receipt(ONE, head_len - 1).is_none());
    }

    #[test]
    fn answers_are_written_in_order_and_a_close_is_noticed() {
        let ok = crate::server::response::json(hyper::StatusCode::OK, serde_json::json!({"a": 1}));
        let mut closing =
            crate::server::response::json(hyper::StatusCode::OK, serde_json::json!({"b": 2}));
        closing
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        let (out, close) = answer_bytes(vec![ok]);
        assert!(!close);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n{\"a\":1}"), "{text}");
        let ok = crate::server::response::json(hyper::StatusCode::OK, serde_json::json!({"a": 1}));
        let (out, close) = answer_bytes(vec![ok, closing]);
        assert!(close);
        let text = String::from_utf8(out).unwrap();
        assert!(text.find("{\"a\":1}").unwrap() < text.find("{\"b\":2}").unwrap());
    }
}
