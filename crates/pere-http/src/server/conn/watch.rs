//! What a connection is doing ([`ConnWatch`]), as seen from its socket
//! ([`Watched`]), its service ([`RequestGuard`], [`Tracked`]) and its task.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::stall::{Stall, Stalled};
use crate::server::body::Body;

/// A connection's TLS stream: its socket's writes timed by the send
/// timeout, beneath TLS (see [`Stalled`]).
pub(super) type TlsStream = tokio_rustls::server::TlsStream<Stalled<TcpStream>>;

/// A connection's socket, as hyper gives it back.
pub(super) enum Socket {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream>),
}

/// What a connection is doing, shared by its socket wrapper ([`Watched`]),
/// its service (which counts requests) and its task (which times it).
pub(super) struct ConnWatch {
    start: Instant,
    /// Requests in progress: from head parsed until the response body is
    /// dropped (for a stream, until it ends).
    requests: AtomicUsize,
    /// Milliseconds after `start` (plus one) when the first byte of a
    /// pending request head arrived; 0 when none is pending.
    head_started: AtomicU64,
    /// Milliseconds after `start` when the last request finished.
    idle_since: AtomicU64,
    /// Which protocol the client speaks, as far as its bytes tell: while
    /// below 24, how many bytes of the HTTP/2 [`PREFACE`] it sent so far
    /// (and nothing else); then [`HTTP1`] or [`HTTP2`].
    protocol: AtomicU8,
    /// Bytes of the pending request head's first line read so far (until
    /// its `\n`, then [`LINE_ENDED`] is added): tells a target hyper
    /// found too long from a head too large.
    request_line: AtomicUsize,
    /// Whether hyper's write buffer was empty (it flushed) since the last
    /// response ended: until then, what it writes may be that response's
    /// tail.
    drained: AtomicBool,
    /// Whether hyper wrote an answer of its own, to a head it could not
    /// parse, and it was held back (see [`ConnWatch::hyper_answers`]).
    held_back: AtomicBool,
    /// The socket, once hyper dropped it (see [`Watched`]).
    parked: std::sync::Mutex<Option<Socket>>,
    /// HTTP/2 only: each response body's wait for hyper to take its next
    /// frame (see [`Tracked`] and [`ConnWatch::stalled`]).
    bodies: std::sync::Mutex<Vec<std::sync::Weak<AtomicU64>>>,
    /// HTTP/2 only: milliseconds after `start` when hyper last asked any
    /// body of the connection for a frame (the client's window had room).
    progress: AtomicU64,
    /// Wakes the task when the state changed, so it re-arms its timer.
    pub(super) changed: Notify,
}

/// Which timeout fell due.
pub(super) enum Expired {
    /// A request head (or an HTTP/2 preface) did not arrive in time.
    Head,
    /// No request for the idle timeout.
    Idle,
}

/// What an HTTP/2 client sends first (RFC 9113 §3.4), as hyper looks for it.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// [`ConnWatch::protocol`]: the client's first bytes were not a preface.
const HTTP1: u8 = 254;
/// [`ConnWatch::protocol`]: the client sent the whole preface.
const HTTP2: u8 = 255;
/// In [`ConnWatch::request_line`]: the line's end arrived.
const LINE_ENDED: usize = 1 << (usize::BITS - 1);

impl ConnWatch {
    /// A watch for a connection; `http1_only` when it cannot be HTTP/2
    /// (so a preface is never taken for one).
    pub(super) fn new(http1_only: bool) -> Self {
        Self {
            start: Instant::now(),
            requests: AtomicUsize::new(0),
            head_started: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            protocol: AtomicU8::new(if http1_only { HTTP1 } else { 0 }),
            request_line: AtomicUsize::new(0),
            drained: AtomicBool::new(true),
            held_back: AtomicBool::new(false),
            parked: std::sync::Mutex::new(None),
            bodies: std::sync::Mutex::new(Vec::new()),
            progress: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    /// Whether the client speaks HTTP/1 (an answer in HTTP/1.1 text is
    /// one it can read).
    pub(super) fn is_http1(&self) -> bool {
        self.protocol.load(Ordering::Relaxed) == HTTP1
    }

    /// Whether the client sent the whole HTTP/2 preface.
    pub(super) fn is_http2(&self) -> bool {
        self.protocol.load(Ordering::Relaxed) == HTTP2
    }

    /// A response body of this HTTP/2 connection to time: waiting from now
    /// unless it is already over (see [`Tracked`]).
    pub(super) fn body_wait(&self, ended: bool) -> Arc<AtomicU64> {
        let since = if ended { 0 } else { self.now_ms() + 1 };
        let wait = Arc::new(AtomicU64::new(since));
        let mut bodies = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
        bodies.retain(|w| w.strong_count() > 0);
        bodies.push(Arc::downgrade(&wait));
        wait
    }

    /// Whether the client took nothing for `send` while a response body
    /// waited that long for hyper to take its next frame. Over HTTP/2 hyper
    /// takes one only when the client's flow-control window has room: a
    /// client that answers pings but never opens its window
    /// (`SETTINGS_INITIAL_WINDOW_SIZE` 0, no `WINDOW_UPDATE`) made no write
    /// wait on the socket, so the send timeout beneath never ran, and it
    /// held the connection and every answer it asked for (a probe pinned
    /// 320 MB with 50 streams of `/admin/events`) for as long as it liked.
    /// One stream held back while the others flow (a proxy carrying many
    /// devices, one of them slow) does not end the connection: hyper
    /// cannot reset one stream for us, and ending all of them would cut
    /// the devices that read.
    pub(super) fn stalled(&self, send: Duration) -> bool {
        let now = self.now_ms();
        let limit = u64::try_from(send.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(self.progress.load(Ordering::Acquire)) < limit {
            return false;
        }
        let mut bodies = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
        bodies.retain(|w| w.strong_count() > 0);
        bodies.iter().filter_map(std::sync::Weak::upgrade).any(|w| {
            let since = w.load(Ordering::Acquire);
            since != 0 && now.saturating_sub(since - 1) >= limit
        })
    }

    /// Whether a request (or an HTTP/2 stream) is in progress.
    pub(super) fn busy(&self) -> bool {
        self.requests.load(Ordering::Acquire) > 0
    }

    /// Bytes arrived from the client.
    ///
    /// Until a connection has a request it is timed as a request head,
    /// from its first byte, whatever the bytes are: an unfinished HTTP/2
    /// preface is an unfinished head like any other (it once escaped every
    /// timeout). Once the whole preface arrived the connection is HTTP/2,
    /// whose frames (pings, settings) are no request: only streams end its
    /// idleness.
    fn on_read(&self, bytes: &[u8]) {
        match self.protocol.load(Ordering::Relaxed) {
            HTTP2 => return,
            HTTP1 => {}
            matched => {
                let matched = usize::from(matched);
                let n = bytes.len().min(PREFACE.len() - matched);
                if bytes[..n] != PREFACE[matched..matched + n] {
                    self.protocol.store(HTTP1, Ordering::Relaxed);
                } else if matched + n < PREFACE.len() {
                    // Fewer than 24: fits.
                    self.protocol.store((matched + n) as u8, Ordering::Relaxed);
                } else {
                    self.protocol.store(HTTP2, Ordering::Relaxed);
                    self.idle_since.store(self.now_ms(), Ordering::Release);
                    self.head_started.store(0, Ordering::Release);
                    self.changed.notify_one();
                    return;
                }
            }
        }
        if self.requests.load(Ordering::Acquire) > 0 {
            return;
        }
        let line = self.request_line.load(Ordering::Acquire);
        if line & LINE_ENDED == 0 {
            let line = match bytes.iter().position(|&b| b == b'\n') {
                Some(end) => (line + end) | LINE_ENDED,
                None => line + bytes.len(),
            };
            self.request_line.store(line, Ordering::Release);
        }
        if self.head_started.load(Ordering::Acquire) == 0 {
            self.head_started
                .store(self.now_ms() + 1, Ordering::Release);
            self.changed.notify_one();
        }
    }

    /// Whether what hyper writes now is its own answer to a request head it
    /// could not parse, decided by the connection's state, never by the
    /// bytes: over HTTP/1 hyper writes for a request our service took
    /// (from [`begin`] until the response body is dropped), then that
    /// response's tail until its buffer drains; it writes on its own only
    /// from its parse-error path, with no response under way (hyper 1's
    /// `Conn::on_parse_error`). Such an answer is held back (reported
    /// written, dropped), and the task answers in JSON once hyper gave up
    /// the connection.
    ///
    /// [`begin`]: ConnWatch::begin
    fn hyper_answers(&self) -> bool {
        let ours = !self.is_http1() || self.busy() || !self.drained.load(Ordering::Acquire);
        if ours {
            return false;
        }
        self.held_back.store(true, Ordering::Release);
        true
    }

    /// Whether an answer of hyper's own was held back.
    pub(super) fn held_back(&self) -> bool {
        self.held_back.load(Ordering::Acquire)
    }

    /// The length of the pending request head's first line, as far as it
    /// arrived (0 when its bytes came with the previous request's, which
    /// hyper read and this watch did not see).
    pub(super) fn request_line(&self) -> usize {
        self.request_line.load(Ordering::Acquire) & !LINE_ENDED
    }

    fn park(&self, stream: Socket) {
        *self.parked.lock().unwrap_or_else(|e| e.into_inner()) = Some(stream);
    }

    pub(super) fn take_parked(&self) -> Option<Socket> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// A request head was parsed: the request is in progress until the
    /// returned guard drops.
    pub(super) fn begin(self: &Arc<Self>) -> RequestGuard {
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Release);
        self.request_line.store(0, Ordering::Release);
        self.changed.notify_one();
        RequestGuard(self.clone())
    }

    /// When the connection's current timeout falls due, if it has one.
    pub(super) fn deadline(&self, head: Duration, idle: Duration) -> Option<Instant> {
        if self.busy() {
            return None;
        }
        match self.head_started.load(Ordering::Acquire) {
            0 => Some(self.at(self.idle_since.load(Ordering::Acquire)) + idle),
            t => Some(self.at(t - 1) + head),
        }
    }

    pub(super) fn expired(&self, head: Duration, idle: Duration) -> Option<Expired> {
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
pub(super) struct RequestGuard(Arc<ConnWatch>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let w = &self.0;
        w.idle_since.store(w.now_ms(), Ordering::Release);
        // Before the count drops: the response's tail may still be in
        // hyper's buffer, and is not an answer of hyper's own.
        w.drained.store(false, Ordering::Release);
        w.requests.fetch_sub(1, Ordering::AcqRel);
        w.changed.notify_one();
    }
}

/// A response body that keeps its request counted until hyper drops it.
/// Over HTTP/2 it also says how long its frames have waited for the
/// client's flow-control window ([`ConnWatch::stalled`]): from when it was
/// made, or from when it handed hyper a frame, until hyper asks for the
/// next (it asks only once the window took the last) or drops the body
/// after the final one. A body with nothing to send yet (a quiet event
/// stream) is being asked, and so does not wait.
pub(super) struct Tracked {
    pub(super) body: Body,
    pub(super) request: RequestGuard,
    pub(super) waiting: Option<Arc<AtomicU64>>,
    /// Over HTTP/2, the rest of a frame handed over in pieces of at most
    /// [`H2_PIECE`]: hyper gives h2 a whole frame at once, and h2 holds
    /// what the client's window does not take, out of this body's sight.
    pub(super) rest: bytes::Bytes,
}

/// The largest piece of a body hyper gets at a time over HTTP/2: an HTTP/2
/// frame's default maximum.
const H2_PIECE: usize = 16 * 1024;

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let Some(waiting) = &this.waiting else {
            return Pin::new(&mut this.body).poll_frame(cx);
        };
        waiting.store(0, Ordering::Release);
        let watch = &this.request.0;
        watch.progress.store(watch.now_ms(), Ordering::Release);
        let polled = if this.rest.is_empty() {
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.rest = data;
                        let piece = this.rest.split_to(this.rest.len().min(H2_PIECE));
                        Poll::Ready(Some(Ok(http_body::Frame::data(piece))))
                    }
                    Err(frame) => Poll::Ready(Some(Ok(frame))),
                },
                other => other,
            }
        } else {
            let piece = this.rest.split_to(this.rest.len().min(H2_PIECE));
            Poll::Ready(Some(Ok(http_body::Frame::data(piece))))
        };
        if let (Poll::Ready(Some(_)), Some(waiting)) = (&polled, &this.waiting) {
            // Handed over: hyper holds it until the client's window takes
            // it, then asks again, or (the last one) drops this body.
            waiting.store(this.request.0.now_ms() + 1, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let inner = self.body.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(inner.lower() + rest);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

/// The socket as hyper sees it: reads are reported to the [`ConnWatch`].
/// When hyper drops it, the socket is parked in the watch, so that the
/// connection's task can still answer on it (`408`, or JSON in place of
/// hyper's own error answer); the socket closes with the task.
///
/// The halves of a plain socket are tokio's own so that reads go into
/// hyper's buffer without zeroing it first: a zeroed 8 KiB buffer is two
/// touched pages on every open stream, where a request touches one.
pub(super) struct Watched {
    io: Option<Io>,
    watch: Arc<ConnWatch>,
}

/// What [`Watched`] reads and writes.
enum Io {
    Plain {
        read: OwnedReadHalf,
        write: OwnedWriteHalf,
        /// Ends the connection when the client stops taking what it is
        /// sent.
        stall: Stall,
    },
    /// Boxed: a TLS session is large, and a plain connection should not
    /// pay for its room.
    Tls(Box<TlsStream>),
}

impl Watched {
    /// A plain TCP connection.
    pub(super) fn plain(stream: TcpStream, watch: Arc<ConnWatch>, stall: Stall) -> Self {
        let (read, write) = stream.into_split();
        Self {
            io: Some(Io::Plain { read, write, stall }),
            watch,
        }
    }

    /// A TLS connection, its handshake done (its writes are timed beneath
    /// TLS).
    pub(super) fn tls(stream: Box<TlsStream>, watch: Arc<ConnWatch>) -> Self {
        Self {
            io: Some(Io::Tls(stream)),
            watch,
        }
    }

    fn io(&mut self) -> std::io::Result<&mut Io> {
        self.io.as_mut().ok_or_else(gone)
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
        match self.io.take() {
            Some(Io::Plain { read, write, .. }) => {
                if let Ok(stream) = read.reunite(write) {
                    self.watch.park(Socket::Plain(stream));
                }
            }
            Some(Io::Tls(stream)) => self.watch.park(Socket::Tls(stream)),
            None => {}
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
        match this.io()? {
            Io::Plain { read, .. } => ready!(Pin::new(read).poll_read(cx, buf))?,
            Io::Tls(tls) => ready!(Pin::new(&mut **tls).poll_read(cx, buf))?,
        }
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
        if this.watch.hyper_answers() {
            return Poll::Ready(Ok(buf.len()));
        }
        match this.io()? {
            Io::Plain { write, stall, .. } => {
                let written = Pin::new(write).poll_write(cx, buf);
                stall.check(cx, written)
            }
            Io::Tls(tls) => Pin::new(&mut **tls).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.watch.hyper_answers() {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        match this.io()? {
            Io::Plain { write, stall, .. } => {
                let written = Pin::new(write).poll_write_vectored(cx, bufs);
                stall.check(cx, written)
            }
            Io::Tls(tls) => Pin::new(&mut **tls).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Some(Io::Tls(tls)) => tls.is_write_vectored(),
            _ => true,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let flushed = match this.io()? {
            Io::Plain { write, .. } => Pin::new(write).poll_flush(cx),
            // TLS holds written bytes until a flush: a flush makes progress
            // or waits, and the stall beneath it times the wait.
            Io::Tls(tls) => Pin::new(&mut **tls).poll_flush(cx),
        };
        // hyper flushes its socket only once its own buffer is written out.
        if let Poll::Ready(Ok(())) = flushed {
            this.watch.drained.store(true, Ordering::Release);
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // The socket closes when the connection's task ends, right after
        // hyper is done; shutting it down here would keep the task from
        // answering on it.
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A watch on a connection whose client has sent HTTP/1 bytes.
    fn http1() -> ConnWatch {
        let watch = ConnWatch::new(false);
        watch.on_read(b"GARBAGE\r\n");
        watch
    }

    #[test]
    fn hyper_answers_on_its_own_only_with_no_response_under_way_and_a_head_pending() {
        // A head it could not parse, nothing else going on: its answer.
        let watch = http1();
        assert!(watch.hyper_answers());
        assert!(watch.held_back());
        assert_eq!(watch.request_line(), b"GARBAGE\r".len());

        // A request in progress: the response is ours.
        let watch = Arc::new(http1());
        let request = watch.begin();
        assert!(!watch.hyper_answers());
        // Its body dropped, its tail may still be in hyper's buffer, even
        // with the next head's first bytes read already.
        drop(request);
        watch.on_read(b"GET /x");
        assert!(!watch.hyper_answers());
        // Once hyper's buffer drained, a write with that head pending is
        // hyper's answer to it.
        watch.drained.store(true, Ordering::Release);
        assert!(watch.hyper_answers());
        assert_eq!(watch.request_line(), 6);
        watch.on_read(b"?x=1 HTTP/1.1\r\nHost: a\r\n");
        watch.on_read(b"X: y\r\n");
        assert_eq!(watch.request_line(), b"GET /x?x=1 HTTP/1.1\r".len());

        // A head pipelined behind the last request, read with it: its
        // answer too.
        let watch = Arc::new(http1());
        drop(watch.begin());
        assert!(!watch.hyper_answers());
        assert!(!watch.held_back());
        watch.drained.store(true, Ordering::Release);
        assert!(watch.hyper_answers());

        // HTTP/2 answers in frames, never in HTTP/1 text.
        let watch = ConnWatch::new(false);
        watch.on_read(PREFACE);
        assert!(!watch.hyper_answers());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_a_head_until_its_http2_preface_is_whole_then_idle_until_a_stream() {
        let (head, idle) = (Duration::from_secs(1), Duration::from_secs(10));
        let watch = ConnWatch::new(false);
        let connected = Instant::now();
        assert_eq!(watch.deadline(head, idle), Some(connected + idle));
        tokio::time::advance(Duration::from_millis(100)).await;
        // The preface a byte at a time, then most of it: a head, timed
        // from its first byte.
        let first = Instant::now();
        watch.on_read(&PREFACE[..1]);
        watch.on_read(&PREFACE[1..16]);
        tokio::time::advance(Duration::from_millis(500)).await;
        watch.on_read(&PREFACE[16..22]);
        assert_eq!(watch.deadline(head, idle), Some(first + head));
        assert!(!watch.is_http1());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(matches!(watch.expired(head, idle), Some(Expired::Head)));
        // The rest, with a frame behind it: HTTP/2, idle from now, and no
        // frame starts a head.
        let whole = Instant::now();
        let mut rest = PREFACE[22..].to_vec();
        rest.extend_from_slice(&[0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        watch.on_read(&rest);
        tokio::time::advance(Duration::from_secs(5)).await;
        watch.on_read(&[0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(watch.deadline(head, idle), Some(whole + idle));
        assert!(watch.expired(head, idle).is_none());
        // A stream is a request in progress: no timeout while it is open,
        // idle again from its end.
        let stream = Arc::new(watch);
        let guard = stream.begin();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(stream.deadline(head, idle), None);
        drop(guard);
        assert_eq!(stream.deadline(head, idle), Some(Instant::now() + idle));
    }

    #[test]
    fn bytes_that_leave_the_preface_are_http1() {
        for bytes in [&b"PRI * HTTP/1.1\r\n"[..], b"GET / HTTP/1.1\r\n", b"P"] {
            let watch = ConnWatch::new(false);
            watch.on_read(bytes);
            watch.on_read(b"X");
            assert!(watch.is_http1(), "{:?}", String::from_utf8_lossy(bytes));
        }
        let watch = ConnWatch::new(true);
        watch.on_read(PREFACE);
        assert!(
            watch.is_http1(),
            "after an HTTP/1 exchange, a preface is HTTP/1 bytes"
        );
    }
}
