//! Event streams served on the socket itself, without hyper.
//!
//! hyper keeps, for as long as a connection lives, an 8 KiB read buffer, an
//! 8 KiB buffer for response heads, its dispatcher and its connection
//! state. For an event stream, which lives for hours and writes a few
//! events, that is most of what the stream costs (16 KiB per idle stream,
//! measured). So the first request of a connection, when it is a plain
//! `GET /feed…` (its whole head in the first bytes, HTTP/1.1, no body, no
//! upgrade, no `Connection: close`), is answered here: the head parsed by
//! `httparse` (hyper's own parser), the answer made by the same handler,
//! the stream written in HTTP/1.1 chunks as hyper would. Anything else,
//! and whatever follows such an answer on the connection, goes to hyper.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::Body as _;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Uri, Version};
use pere_core::EventStore;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::head::{Framing, head_bytes};
use super::stall::Stall;
use crate::server::app::App;
use crate::server::body::SseBody;
use crate::server::handlers;
use crate::server::router::{self, Route};

/// Bytes looked at for a head. A browser's `GET /feed` with its cookies
/// fits; a larger head goes to hyper, which takes up to
/// `--max-header-bytes`.
const PEEK_BYTES: usize = 4096;

/// Most header lines of a head served here; more go to hyper (which takes
/// up to 100).
const MAX_HEADERS: usize = 48;

/// What became of the connection.
pub(crate) enum Outcome {
    /// Not a request served here: hyper takes the connection from its
    /// first byte (which may be an HTTP/2 preface).
    Untouched(TcpStream),
    /// A request was answered here and the connection is at the start of
    /// its next one: hyper takes it from there, as HTTP/1 only (a
    /// connection cannot switch to HTTP/2 after an HTTP/1 exchange).
    Answered(TcpStream),
    /// The connection is done (client gone, or the server is closing).
    Closed,
}

/// A `GET /feed…` head, parsed.
#[derive(Debug)]
pub(crate) struct FeedHead {
    /// The request, without a body.
    pub(crate) request: Request<()>,
    /// The channel in the path, if the path names one.
    pub(crate) channel: Option<String>,
    /// Length of the head in bytes, request line to blank line.
    pub(crate) len: usize,
}

/// Serves the connection's first request if it is an event stream this
/// module takes (see the module docs). The caller has seen a first byte.
pub(crate) async fn serve_first<S: EventStore>(
    stream: TcpStream,
    app: &Arc<App<S>>,
    stall: Stall,
    closing: &mut tokio::sync::watch::Receiver<bool>,
) -> Outcome {
    // Boxed: opening a stream (head, handler, response head) needs far more
    // state than writing it for hours; it is freed once the stream is open.
    let (stream, body) = match Box::pin(open(stream, app, closing)).await {
        Opened::Stream(stream, body) => (stream, body),
        Opened::NotOurs(stream) => return Outcome::Untouched(stream),
        Opened::Answered(stream) => return Outcome::Answered(stream),
        Opened::Closed => return Outcome::Closed,
    };
    let Some(stream) = (Pump {
        stream: Some(stream),
        body: Some(body),
        out: None,
        watching: WATCHED_BYTES,
        stall,
    })
    .await
    else {
        return Outcome::Closed;
    };
    // The server ended the stream (too slow, revoked, membership removed,
    // a JWT's exp, shutdown): the connection ends with it, as over hyper
    // (`request::serve`), so that a client watching the socket reconnects
    // at once rather than at --idle-timeout. Boxed: this future lives as
    // long as the stream, and the close's timer would weigh on every idle
    // stream (0.1 KiB each, measured).
    Box::pin(super::close_io(stream, None, closing)).await;
    Outcome::Closed
}

/// What opening the first request gave.
enum Opened {
    /// An event stream, its head written: the body is still to write.
    Stream(TcpStream, Box<SseBody>),
    /// Not a request for this module: nothing was read.
    NotOurs(TcpStream),
    /// A whole answer written.
    Answered(TcpStream),
    /// The client went away.
    Closed,
}

async fn open<S: EventStore>(
    mut stream: TcpStream,
    app: &App<S>,
    closing: &mut tokio::sync::watch::Receiver<bool>,
) -> Opened {
    let head = {
        let mut buf = vec![0u8; PEEK_BYTES];
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return Opened::Closed,
            Ok(n) => n,
        };
        match parse_feed_head(&buf[..n]) {
            Some(head) => head,
            None => return Opened::NotOurs(stream),
        }
    };
    // Take the head off the socket (it is all there: it was peeked).
    if discard(&mut stream, head.len).await.is_err() {
        return Opened::Closed;
    }
    let response = handlers::handle_feed(app, head.request, head.channel.as_deref()).await;
    let (parts, body) = response.into_parts();
    let closes = parts
        .headers
        .get(hyper::header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let (out, rest) = match body.into_whole() {
        Ok(bytes) => {
            let mut out = head_bytes(&parts, Framing::Length(bytes.len()));
            out.extend_from_slice(&bytes);
            (out, None)
        }
        Err(sse) => {
            // The connection ends with the stream (see `serve_first`):
            // said in the head, as hyper's path says it.
            let mut parts = parts;
            parts.headers.insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            );
            (head_bytes(&parts, Framing::Chunked), Some(sse))
        }
    };
    if stream.write_all(&out).await.is_err() {
        return Opened::Closed;
    }
    if closes && rest.is_none() {
        // The answer said so: the client reads its end as the stream's.
        super::close_io(stream, None, closing).await;
        return Opened::Closed;
    }
    match rest {
        Some(body) => Opened::Stream(stream, body),
        None => Opened::Answered(stream),
    }
}

/// Writes an event stream's frames as chunks until it ends, then the last
/// chunk; resolves to the socket then, or to `None` when the client went
/// away. Hand-written rather than `async`: this is all an open stream
/// holds, for hours, on every connection.
struct Pump {
    stream: Option<TcpStream>,
    body: Option<Box<SseBody>>,
    /// The chunk being written.
    out: Option<Chunk>,
    /// How many more bytes the client may send while reads are watched
    /// for it going away (hyper watches too while it writes a body); past
    /// them (a client that floods the stream's socket) only a failed write
    /// tells.
    watching: usize,
    /// Ends the stream when the client stops taking it.
    stall: Stall,
}

impl Future for Pump {
    type Output = Option<TcpStream>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<TcpStream>> {
        let this = self.get_mut();
        let Some(stream) = this.stream.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            if let Some(chunk) = &mut this.out {
                let mut slices = [IoSlice::new(&[]); 3];
                let n = chunk.io_slices(&mut slices);
                let len: usize = slices[..n].iter().map(|s| s.len()).sum();
                let written = if len <= SMALL_WRITE {
                    // One `send` of a copy: a small event's three parts
                    // through `writev` cost the kernel's vector path more
                    // than the copy costs here.
                    let mut buf = [0u8; SMALL_WRITE];
                    let mut at = 0;
                    for slice in &slices[..n] {
                        buf[at..at + slice.len()].copy_from_slice(slice);
                        at += slice.len();
                    }
                    Pin::new(&mut *stream).poll_write(cx, &buf[..len])
                } else {
                    Pin::new(&mut *stream).poll_write_vectored(cx, &slices[..n])
                };
                match this.stall.check(cx, written) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        this.stream = None;
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Ok(written)) => {
                        if chunk.advance(written) {
                            this.out = None;
                            if this.body.is_none() {
                                return Poll::Ready(this.stream.take());
                            }
                        }
                        continue;
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            while this.watching > 0 {
                // What the client sends after its `GET /feed` is never
                // answered (the connection ends with the stream): read and
                // dropped, so that its close is seen behind it. Peeking
                // stopped at the first such byte, and the stream then wrote
                // into a closed socket until a write failed, counting what
                // it wrote delivered (docs/PROTOCOL.md §5.4).
                let mut sink = [0u8; 512];
                let mut buf = ReadBuf::new(&mut sink);
                match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                        this.stream = None;
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Ok(())) => {
                        this.watching = this.watching.saturating_sub(buf.filled().len());
                    }
                    Poll::Ready(Err(_)) => {
                        this.stream = None;
                        return Poll::Ready(None);
                    }
                    Poll::Pending => break,
                }
            }
            let Some(body) = this.body.as_mut() else {
                return Poll::Ready(this.stream.take());
            };
            match Pin::new(&mut **body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        this.out = Some(Chunk::new(data));
                    }
                }
                Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                    // Dropped now: the stream's slot under the limits is
                    // free before the connection moves on.
                    this.body = None;
                    this.out = Some(Chunk::last());
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Bytes a client may send after its `GET /feed` (a pipelined request,
/// never answered) before its stream stops reading them.
const WATCHED_BYTES: usize = 64 * 1024;

/// Up to this many bytes a chunk is copied and written with one `send`.
const SMALL_WRITE: usize = 1024;

/// One HTTP/1.1 chunk being written: size line, data, CRLF.
struct Chunk {
    size: [u8; 20],
    /// Unwritten part of `size`: `size[start..end]`.
    start: u8,
    end: u8,
    data: Bytes,
    /// Bytes of the closing CRLF still to write.
    crlf: u8,
}

impl Chunk {
    fn new(data: Bytes) -> Self {
        let mut size = [0u8; 20];
        let end = chunk_size_line(data.len(), &mut size) as u8;
        Self {
            size,
            start: 0,
            end,
            data,
            crlf: 2,
        }
    }

    /// The chunk that ends the body.
    fn last() -> Self {
        Self::new(Bytes::new())
    }

    fn io_slices<'a>(&'a self, out: &mut [IoSlice<'a>; 3]) -> usize {
        let mut n = 0;
        for part in [
            &self.size[usize::from(self.start)..usize::from(self.end)],
            &self.data[..],
            &b"\r\n"[2 - usize::from(self.crlf)..],
        ] {
            if !part.is_empty() {
                out[n] = IoSlice::new(part);
                n += 1;
            }
        }
        n
    }

    /// Marks `n` bytes written; whether the whole chunk is.
    fn advance(&mut self, mut n: usize) -> bool {
        let head = usize::from(self.end - self.start).min(n);
        self.start += head as u8;
        n -= head;
        let data = self.data.len().min(n);
        self.data.advance(data);
        n -= data;
        let crlf = usize::from(self.crlf).min(n);
        self.crlf -= crlf as u8;
        self.start == self.end && self.data.is_empty() && self.crlf == 0
    }
}

/// Writes `len` in hex and CRLF into `out`; returns the bytes used.
fn chunk_size_line(len: usize, out: &mut [u8; 20]) -> usize {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, slot) in out[..digits].iter_mut().enumerate() {
        let shift = 4 * (digits - 1 - i);
        *slot = HEX[(len >> shift) & 0xF];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    digits + 2
}

/// Reads and drops `len` bytes that are already in the socket.
async fn discard(stream: &mut TcpStream, mut len: usize) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut sink = vec![0u8; len.min(PEEK_BYTES)];
    while len > 0 {
        let want = len.min(sink.len());
        let n = stream.read(&mut sink[..want]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        len -= n;
    }
    Ok(())
}

/// Parses `bytes` as the head of a request this module serves: a complete
/// HTTP/1.1 `GET` of `/feed` or `/feed/:channel`, without body, upgrade or
/// `Connection: close`. `None` for anything else, valid or not: hyper then
/// answers it as it answers every request.
pub(crate) fn parse_feed_head(bytes: &[u8]) -> Option<FeedHead> {
    if !bytes.starts_with(b"GET /feed") {
        return None;
    }
    let head = plain_head(bytes, Method::GET, PEEK_BYTES)?;
    let Route::Feed(channel) = head.route else {
        return None;
    };
    if head.length.is_some_and(|l| l != 0) {
        return None;
    }
    let (request, len) = (head.request, head.len);
    Some(FeedHead {
        request,
        channel,
        len,
    })
}

/// A whole HTTP/1.1 head, as a path outside hyper takes it.
pub(super) struct PlainHead {
    /// The router's reading of its target.
    pub(super) route: Route,
    /// The request, without a body.
    pub(super) request: Request<()>,
    /// Its `Content-Length`, if it has one.
    pub(super) length: Option<usize>,
    /// Length of the head in bytes, request line to blank line.
    pub(super) len: usize,
}

/// The head at the start of `bytes` if a path outside hyper may take it:
/// whole, at most `max_head` bytes, HTTP/1.1, of `method`, an origin-form
/// target the router knows, and [`plain_headers`]. `None` otherwise: hyper
/// then answers it as it answers every request.
pub(super) fn plain_head(bytes: &[u8], method: Method, max_head: usize) -> Option<PlainHead> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        _ => return None,
    };
    if parsed.method != Some(method.as_str()) || parsed.version != Some(1) {
        return None;
    }
    let uri: Uri = parsed.path?.parse().ok()?;
    if uri.scheme().is_some() {
        return None;
    }
    let route = router::route(&method, uri.path()).ok()?;
    let (map, length) = plain_headers(parsed.headers)?;
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = map;
    Some(PlainHead {
        route,
        request,
        length,
        len,
    })
}

/// The headers of a head served outside hyper, and its `Content-Length`;
/// `None` when hyper must take the request: a header hyper would refuse,
/// a body framed otherwise or twice, `Expect`, `Upgrade`, or a `Connection`
/// other than `keep-alive`.
pub(super) fn plain_headers(
    headers: &[httparse::Header<'_>],
) -> Option<(HeaderMap, Option<usize>)> {
    let mut map = HeaderMap::with_capacity(headers.len());
    let mut length = None;
    for h in headers {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        match name {
            header::CONTENT_LENGTH => {
                // Digits only, as hyper reads it, and once.
                let digits = value.as_bytes();
                if length.is_some()
                    || digits.is_empty()
                    || digits.len() > 12
                    || !digits.iter().all(u8::is_ascii_digit)
                {
                    return None;
                }
                length = std::str::from_utf8(digits).ok()?.parse().ok();
            }
            header::CONNECTION if !value.as_bytes().eq_ignore_ascii_case(b"keep-alive") => {
                return None;
            }
            header::TRANSFER_ENCODING | header::EXPECT | header::UPGRADE => return None,
            _ => {}
        }
        map.append(name, value);
    }
    Some((map, length))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn chunk_size_lines_are_uppercase_hex() {
        let mut out = [0u8; 20];
        for (len, line) in [
            (0usize, "0\r\n"),
            (1, "1\r\n"),
            (15, "F\r\n"),
            (16, "10\r\n"),
            (255, "FF\r\n"),
            (4096, "1000\r\n"),
            (65_536, "10000\r\n"),
            (usize::MAX, "FFFFFFFFFFFFFFFF\r\n"),
        ] {
            let n = chunk_size_line(len, &mut out);
            assert_eq!(&out[..n], line.as_bytes(), "{len}");
        }
    }

    proptest::proptest! {
        /// However the socket splits a chunk's writes, what it gets is the
        /// size line, the data and CRLF, once.
        #[test]
        fn partial_writes_send_each_chunk_byte_exactly_once(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            cuts in proptest::collection::vec(1usize..64, 1..40),
        ) {
            let mut chunk = Chunk::new(Bytes::from(data.clone()));
            let mut sent = Vec::new();
            let mut cuts = cuts.into_iter().cycle();
            loop {
                let mut slices = [IoSlice::new(&[]); 3];
                let n = chunk.io_slices(&mut slices);
                let all: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).collect();
                let take = cuts.next().unwrap().min(all.len());
                sent.extend_from_slice(&all[..take]);
                if chunk.advance(take) {
                    break;
                }
            }
            let mut expected = format!("{:X}\r\n", data.len()).into_bytes();
            expected.extend_from_slice(&data);
            expected.extend_from_slice(b"\r\n");
            proptest::prop_assert_eq!(sent, expected);
        }
    }

    #[test]
    fn the_last_chunk_ends_the_body() {
        let chunk = Chunk::last();
        let mut slices = [IoSlice::new(&[]); 3];
        let n = chunk.io_slices(&mut slices);
        let all: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(all, b"0\r\n\r\n");
    }

    #[test]
    fn plain_feed_heads_are_taken_with_their_headers() {
        let raw = b"GET /feed/news?device=d1 HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 7\r\nlast_event_id: 8\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.1\r\n";
        let head = parse_feed_head(raw).unwrap();
        assert_eq!(head.channel.as_deref(), Some("news"));
        assert_eq!(head.request.uri().query(), Some("device=d1"));
        assert_eq!(head.request.headers()["last-event-id"], "7");
        assert_eq!(head.request.headers()["last_event_id"], "8");
        assert_eq!(&raw[head.len - 4..head.len], b"\r\n\r\n");
        assert_eq!(&raw[head.len..head.len + 3], b"GET");
        let head = parse_feed_head(b"GET /feed?channel=a&channel=b HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(head.channel, None);
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        let others: [&[u8]; 14] = [
            b"GET /feed/news HTTP/1.1\r\nHost: x\r\n",
            b"GET /feed/news HTTP/1.0\r\n\r\n",
            b"HEAD /feed/news HTTP/1.1\r\n\r\n",
            b"POST /feed/news HTTP/1.1\r\n\r\n",
            b"GET /feedback/news HTTP/1.1\r\n\r\n",
            b"GET /feed/a/b HTTP/1.1\r\n\r\n",
            b"GET /feed/news HTTP/1.1\r\nConnection: close\r\n\r\n",
            b"GET /feed/news HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            b"GET /feed/news HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /feed/news HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
            b"GET /feed/news HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET /feed/news HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"GET /feed/%ZZ HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ];
        for raw in others {
            assert!(
                parse_feed_head(raw).is_none(),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let mut many = b"GET /feed/news HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: {i}\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(parse_feed_head(&many).is_none());
    }
}
