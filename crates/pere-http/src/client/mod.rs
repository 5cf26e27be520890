//! The HTTP client of `pere-pub`, `pere-sub` and the tests, over raw hyper
//! 1.x (`hyper::client::conn::http1` on a `tokio` TCP stream).
//!
//! - [`Client`] sends requests on one keep-alive HTTP/1.1 connection,
//!   reconnecting transparently when the server closed it: [`Client::publish`]
//!   (docs/PROTOCOL.md §2), [`Client::ack`] and [`Client::ack_batch`] (§4),
//!   [`Client::get_json`] and the generic [`Client::request`]. A non-2xx
//!   answer becomes [`Error::Status`] with the server's `{"error","code"}`
//!   (§8). [`Client::publish_retrying`] retries a publish that may or may not
//!   have reached the server with the same `Idempotency-Key`, so that it is
//!   stored once.
//! - [`Subscriber`] is an `EventSource`: it opens `GET /feed/…`, feeds the
//!   body into [`sse::Decoder`](crate::sse::Decoder) frame by frame, and when
//!   the stream ends reconnects after the server's `retry` with
//!   `Last-Event-ID`, as a browser does. [`Subscriber::next`] yields the
//!   events (control events `pere.hello` and `pere.gap` included) and notices
//!   about the connection ([`SubscriberItem`]). Reconnecting can be bounded
//!   ([`SubscribeOptions::max_reconnects`], [`SubscribeOptions::deadline`]).
//!
//! Nothing here trusts the network: every answer is checked, bodies are read
//! with a size limit, and every wait has a timeout.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use pere_core::DeviceId;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::task::AbortHandle;

use crate::error::{Error, Result, escape};

/// Default time to open a TCP connection (and, for a [`Subscriber`], to get
/// the response head).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time a request may take, from sending to the end of the answer.
/// A waiting publish gets its wait on top.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Reconnection time of a [`Subscriber`] until the server sends `retry`
/// (the WHATWG suggestion, and PERE's default).
pub const DEFAULT_RETRY: Duration = crate::sse::DEFAULT_RETRY;
/// Default [`SubscribeOptions::max_backoff`]: a minute between attempts at
/// most, so a device finds a server back within a minute of its return.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Largest response body read by [`Client`], in bytes: an answer larger than
/// this is an error rather than an unbounded allocation.
pub const MAX_RESPONSE_BODY: usize = 16 * 1024 * 1024;

/// `User-Agent` of every request.
const USER_AGENT: &str = concat!("pere-http/", env!("CARGO_PKG_VERSION"));

// ---------------------------------------------------------------------------
// Address

/// Where the server is: a host and a port, from `HOST:PORT`,
/// `http://HOST:PORT` or `https://HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// Host name or IP address, without brackets.
    host: String,
    /// TCP port.
    port: u16,
    /// Whether to speak TLS (`https://`), trusting what
    /// [`crate::tls::ClientTls::install`] set, else the system's roots.
    tls: bool,
}

impl Address {
    /// Parses `HOST:PORT`, `http://HOST:PORT`, `https://HOST:PORT`, each
    /// with an optional `/` (IPv6 as `[::1]:4567`).
    ///
    /// # Errors
    /// [`Error::Address`] for anything else (no port, another scheme, a path).
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || Error::Address(text.to_string());
        let trimmed = text.trim();
        let (rest, tls) = match (trimmed.get(..7), trimmed.get(..8)) {
            (Some(scheme), _) if scheme.eq_ignore_ascii_case("http://") => (&trimmed[7..], false),
            (_, Some(scheme)) if scheme.eq_ignore_ascii_case("https://") => (&trimmed[8..], true),
            _ => (trimmed, false),
        };
        if rest.contains("://") {
            return Err(bad());
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, port) = v6.split_once("]:").ok_or_else(bad)?;
            if host.is_empty() || !host.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
                return Err(bad());
            }
            (host, port)
        } else {
            let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
            let host_ok = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
            if !host_ok {
                return Err(bad());
            }
            (host, port)
        };
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0 && port.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(bad)?;
        Ok(Self {
            host: host.to_string(),
            port,
            tls,
        })
    }

    /// Whether the server is reached over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The host, without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://HOST:PORT` (or `https://`) followed by `path`.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{self}{path}")
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Percent-encodes `text` as one path segment (or query value): everything
/// but unreserved characters and `:`, `@`, `*` is escaped, so a name can
/// never add a segment or a parameter.
pub fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'@' | b'*')
        {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Connections

/// One HTTP/1.1 connection: the request sender, and the task driving the
/// socket (aborted when this is dropped, which closes the socket).
struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    task: AbortHandle,
    /// Set when a plain connection's first bytes from the server were a
    /// TLS record: the port serves https.
    tls_reply: Arc<AtomicBool>,
}

impl Conn {
    /// `err` of an exchange on this connection to `addr`, said plainly
    /// when the server answered in TLS (hyper only sees "invalid HTTP
    /// version"). That answer is a refusal: nothing was received.
    fn error(&self, addr: &Address, err: hyper::Error) -> Error {
        if self.tls_reply.load(Ordering::Relaxed) {
            return Error::Tls(format!(
                "{addr} answered in TLS: it serves https; use https://{}:{}",
                addr.host(),
                addr.port()
            ));
        }
        Error::Http(err)
    }
}

/// A plain connection that notices a TLS record (`0x15 0x03`, an alert, or
/// `0x16 0x03`) in the server's first bytes.
struct Sniffed {
    inner: TcpStream,
    first: bool,
    tls: Arc<AtomicBool>,
}

impl tokio::io::AsyncRead for Sniffed {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.first && buf.filled().len() > before {
            this.first = false;
            if let [0x15 | 0x16, 0x03, ..] = buf.filled()[before..] {
                this.tls.store(true, Ordering::Relaxed);
            }
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Sniffed {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens a connection to `addr` within `timeout`.
async fn connect(addr: &Address, timeout: Duration) -> Result<Conn> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect((addr.host(), addr.port())))
        .await
        .map_err(|_| Error::Io {
            // An `Io` error, like a refused connection: nothing was sent
            // (see `may_have_been_received`).
            context: format!("cannot connect to {addr}"),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {} ms", timeout.as_millis()),
            ),
        })?
        .map_err(|source| Error::Io {
            context: format!("cannot connect to {addr}"),
            source,
        })?;
    // Events and receipts are small; latency matters more than packet count.
    let _ = stream.set_nodelay(true);
    if !addr.is_tls() {
        let tls = Arc::new(AtomicBool::new(false));
        let sniffed = Sniffed {
            inner: stream,
            first: true,
            tls: tls.clone(),
        };
        let mut conn = start(sniffed).await?;
        conn.tls_reply = tls;
        return Ok(conn);
    }
    let trust = crate::tls::ClientTls::default_for_process()?;
    let tls = tokio::time::timeout(timeout, trust.connect(addr.host(), stream))
        .await
        .map_err(|_| {
            Error::Timeout(format!(
                "the TLS handshake with {addr} took more than {} ms",
                timeout.as_millis()
            ))
        })??;
    start(tls).await
}

/// Speaks HTTP/1.1 over `io`, the connection driven by its own task.
async fn start<T>(io: T) -> Result<Conn>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(io)).await?;
    let task = tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(cause = %err, "client connection ended with an error");
        }
    })
    .abort_handle();
    Ok(Conn {
        sender,
        task,
        tls_reply: Arc::default(),
    })
}

/// Builds a request for `path` with the headers every request carries.
fn build_request(
    addr: &Address,
    method: Method,
    path: &str,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Request<Full<Bytes>>> {
    if !path.starts_with('/') {
        return Err(Error::Address(path.to_string()));
    }
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .body(Full::new(body))
        .map_err(|_| Error::Address(path.to_string()))?;
    let h = request.headers_mut();
    let host =
        HeaderValue::from_str(&addr.to_string()).map_err(|_| Error::Address(addr.to_string()))?;
    h.insert(header::HOST, host);
    h.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    // The caller's headers replace the defaults of the same name.
    for name in headers.keys() {
        h.remove(name);
    }
    for (name, value) in &headers {
        h.append(name, value.clone());
    }
    Ok(request)
}

/// A `device` header value, checked with docs/PROTOCOL.md §1's rule.
fn device_header(device: &str) -> Result<HeaderValue> {
    let device = DeviceId::new(device)?;
    HeaderValue::from_str(device.as_str()).map_err(|_| {
        // Unreachable for a valid device id (a subset of visible ASCII);
        // reported rather than assumed.
        Error::Core(pere_core::Error::InvalidName {
            kind: pere_core::NameKind::Device,
            name: device.to_string(),
            reason: "it cannot be sent as a header".into(),
        })
    })
}

/// The error for a non-2xx answer: docs/PROTOCOL.md §8's `{"error","code"}`, or the
/// body's text when it is not that JSON.
fn status_error(status: StatusCode, body: &[u8]) -> Error {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let message = field("error").unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if text.is_empty() {
            status
                .canonical_reason()
                .unwrap_or("no explanation")
                .to_string()
        } else {
            escape(text)
        }
    });
    Error::Status {
        status,
        message,
        code: field("code"),
    }
}

/// Reads a whole body of at most [`MAX_RESPONSE_BODY`] bytes.
async fn read_body(body: Incoming) -> Result<Bytes> {
    match Limited::new(body, MAX_RESPONSE_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(Error::Protocol(format!(
            "the response body is larger than {MAX_RESPONSE_BODY} bytes"
        ))),
        Err(err) => match err.downcast::<hyper::Error>() {
            Ok(err) => Err(Error::Http(*err)),
            Err(err) => Err(Error::Protocol(format!(
                "the response body could not be read: {err}"
            ))),
        },
    }
}

/// Parses a JSON answer into `T`, naming `what` when it does not fit.
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(body).map_err(|err| {
        Error::Protocol(format!(
            "the {what} answer is not the expected JSON ({err}): {}",
            escape(&String::from_utf8_lossy(body))
        ))
    })
}

mod requests;
mod subscriber;

pub use requests::*;
pub use subscriber::*;

// ---------------------------------------------------------------------------
// Random ids

/// A random 64-bit number (not cryptographic): `std`'s randomly keyed hasher
/// over a process-wide counter and the clock, so that no extra dependency is
/// needed for device ids and keys.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.finish()
}

/// A random device id in the style of PERE's `device_random`: `prefix`,
/// `0039`, a digit from 1 to 9 and eight digits (`H00394…` for a host
/// subscriber, `P0039…` for a publisher).
pub fn random_device(prefix: &str) -> String {
    let n = random_u64();
    let first = n % 9 + 1;
    let rest = (n / 9) % 100_000_000;
    format!("{prefix}0039{first}{rest:08}")
}

/// A random idempotency key: 32 hexadecimal digits.
pub fn random_key() -> String {
    format!("{:016x}{:016x}", random_u64(), random_u64())
}

#[cfg(test)]
mod tests;
