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

use std::collections::VecDeque;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use pere_core::{DeviceId, EventId};
use serde::Deserialize;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::error::{Error, Result, escape};
use crate::sse::{Decoder, Item, SseEvent};

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
        return start(stream).await;
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
    Ok(Conn { sender, task })
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

// ---------------------------------------------------------------------------
// Client

/// What a publisher can wait for (`?wait=`, docs/PROTOCOL.md §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitFor {
    /// Every recipient had the event written to its stream.
    Delivered,
    /// Every recipient acknowledged the event.
    Acked,
}

impl WaitFor {
    /// The `wait` query value: `delivered` or `acked`.
    pub fn as_str(self) -> &'static str {
        match self {
            WaitFor::Delivered => "delivered",
            WaitFor::Acked => "acked",
        }
    }
}

impl std::str::FromStr for WaitFor {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text.trim() {
            "delivered" => Ok(WaitFor::Delivered),
            "acked" => Ok(WaitFor::Acked),
            other => Err(format!("`{other}` is not `delivered` or `acked`")),
        }
    }
}

/// Options of a publish (docs/PROTOCOL.md §2); `Default` sends none of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// The publisher's device id (`device` header).
    pub device: Option<String>,
    /// The SSE event type (`?event=`); `None` is `message`.
    pub event_type: Option<String>,
    /// `Idempotency-Key`: a retry with the same key publishes nothing new.
    pub idempotency_key: Option<String>,
    /// Hold the answer until every recipient reached this state, or the
    /// duration passed (`?wait=…&timeout=MS`).
    pub wait: Option<(WaitFor, Duration)>,
}

/// The answer to a publish (docs/PROTOCOL.md §2).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Published {
    /// The event id.
    pub id: String,
    /// The channel.
    pub channel: String,
    /// The size of the event's audience.
    pub recipients: u64,
    /// With `wait`: recipients delivered or acked.
    #[serde(default)]
    pub delivered: Option<u64>,
    /// With `wait`: recipients acked.
    #[serde(default)]
    pub acked: Option<u64>,
    /// With `wait`: the devices nothing was written to yet.
    #[serde(default)]
    pub pending: Option<Vec<String>>,
    /// With `wait`: the devices that have not acked.
    #[serde(default)]
    pub unacked: Option<Vec<String>>,
    /// With `wait`: the wait ended by its timeout.
    #[serde(default)]
    pub timed_out: Option<bool>,
    /// The answer repeats an earlier publish with the same idempotency key.
    #[serde(default)]
    pub duplicate: bool,
    /// With `wait`: the wait ended early because the server is shutting
    /// down (the event was published; the receipts are those so far).
    #[serde(default)]
    pub shutting_down: bool,
}

/// The answer to a receipt (docs/PROTOCOL.md §4).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Acked {
    /// The event id.
    pub id: String,
    /// The device that acknowledged it.
    pub device: String,
    /// Its receipt state (`acked`).
    pub state: String,
}

/// One item of a batch receipt's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AckResult {
    /// The receipt was recorded.
    Acked(Acked),
    /// The receipt was refused; the others are unaffected.
    Failed {
        /// The id as sent, if any.
        id: Option<String>,
        /// The server's sentence.
        message: String,
        /// The server's stable code.
        code: String,
    },
}

/// How [`Client::publish_retrying`] spaces its retries: `initial`, doubled
/// each time, at most `max`, at most `retries` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Retries after the first attempt.
    pub retries: u32,
    /// Delay before the first retry.
    pub initial: Duration,
    /// Longest delay between two attempts.
    pub max: Duration,
}

impl Default for Backoff {
    /// 10 retries from 250 ms, doubling, capped at 4 s: about half a minute
    /// for a server to come back.
    fn default() -> Self {
        Self {
            retries: 10,
            initial: Duration::from_millis(250),
            max: Duration::from_secs(4),
        }
    }
}

impl Backoff {
    /// The delay before retry number `retry` (1-based).
    pub fn delay(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(20);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }
}

/// Whether `err` may go away if the same request is tried again: the server
/// is unreachable, closed the connection, is shutting down or overloaded
/// (`503`, `502`, `504`, `429`), or did not answer in time.
pub fn is_transient(err: &Error) -> bool {
    match err {
        Error::Io { .. } | Error::Timeout(_) => true,
        Error::Http(e) => !(e.is_parse() || e.is_user()),
        Error::Status { status, .. } => matches!(
            *status,
            StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::BAD_GATEWAY
                | StatusCode::GATEWAY_TIMEOUT
                | StatusCode::TOO_MANY_REQUESTS
        ),
        _ => false,
    }
}

/// Whether the request that failed with `err` may have reached the server
/// and been acted on: its answer was lost (the connection broke or timed
/// out after the request was sent, or a proxy gave up on it). `false` when
/// the server was never reached (`Error::Io`: no connection) or refused the
/// request itself (an error status from PERE).
pub fn may_have_been_received(err: &Error) -> bool {
    match err {
        // A TLS error is a handshake that failed: no request was sent.
        Error::Io { .. } | Error::Core(_) | Error::Address(_) | Error::Tls(_) => false,
        Error::Http(_) | Error::Timeout(_) | Error::Protocol(_) => true,
        Error::Status { status, .. } => {
            matches!(
                *status,
                StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT
            )
        }
        Error::Unconfirmed { .. } => true,
        Error::WebhookLoop { .. } => false,
    }
}

/// An HTTP client of one PERE server, over one keep-alive connection.
///
/// Requests on one `Client` are sent one after the other (HTTP/1.1 has one
/// exchange at a time per connection). A [`Clone`] has the same settings and
/// its own connection, so clones can run requests in parallel.
pub struct Client {
    /// The server.
    addr: Address,
    /// The kept-alive connection, if any; the lock also serializes requests.
    conn: Mutex<Option<Conn>>,
    /// See [`DEFAULT_CONNECT_TIMEOUT`].
    connect_timeout: Duration,
    /// See [`DEFAULT_REQUEST_TIMEOUT`].
    request_timeout: Duration,
    /// `Authorization: Bearer …` sent with every request (marked sensitive,
    /// so hyper never logs it).
    token: Option<HeaderValue>,
}

impl Clone for Client {
    fn clone(&self) -> Self {
        Self {
            addr: self.addr.clone(),
            conn: Mutex::new(None),
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            token: self.token.clone(),
        }
    }
}

/// Longest JWT the client sends: well under any server's head limit.
const MAX_JWT_LEN: usize = 4096;

/// `Bearer <token>` as a sensitive header value.
///
/// # Errors
/// [`Error::Core`] when `token` is not a valid token (the message never
/// contains it).
pub fn bearer(token: &str) -> Result<HeaderValue> {
    // A JWT may be longer than a static token (its claims are inside).
    let jwt = token.len() <= MAX_JWT_LEN && pere_core::jwt::JwtVerifier::looks_like_jwt(token);
    if !jwt {
        pere_core::Token::new(token)?;
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        // Unreachable: a valid token is visible ASCII.
        Error::Core(pere_core::Error::InvalidToken(
            "a token must be visible ASCII".into(),
        ))
    })?;
    value.set_sensitive(true);
    Ok(value)
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the server at `addr` (`HOST:PORT` or `http://HOST:PORT`).
    /// Nothing is connected until the first request.
    ///
    /// # Errors
    /// [`Error::Address`] when `addr` is neither form.
    pub fn new(addr: &str) -> Result<Self> {
        Ok(Self {
            addr: Address::parse(addr)?,
            conn: Mutex::new(None),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            token: None,
        })
    }

    /// Sends `token` as `Authorization: Bearer` with every request
    /// (docs/PROTOCOL.md §7).
    ///
    /// # Errors
    /// [`Error::Core`] for a malformed token.
    pub fn with_token(mut self, token: &str) -> Result<Self> {
        self.token = Some(bearer(token)?);
        Ok(self)
    }

    /// Sets the time allowed to connect (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the time allowed for a request (default
    /// [`DEFAULT_REQUEST_TIMEOUT`]; a waiting publish adds its wait).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The server's address.
    pub fn address(&self) -> &Address {
        &self.addr
    }

    /// Sends `method path` with `headers` and `body`, and reads the whole
    /// answer, whatever its status.
    ///
    /// If the kept-alive connection turns out to be closed before the request
    /// was written, the request is sent once more on a new connection; a
    /// request that may have reached the server is never resent here.
    ///
    /// # Errors
    /// [`Error::Io`] or [`Error::Timeout`] when the server cannot be reached,
    /// [`Error::Http`] when the exchange fails, [`Error::Timeout`] after the
    /// request timeout, [`Error::Protocol`] for an oversized answer,
    /// [`Error::Address`] for a `path` that is not an absolute path.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<(StatusCode, HeaderMap, Bytes)> {
        self.request_within(method, path, headers, body, self.request_timeout)
            .await
    }

    /// [`request`](Self::request) with its own timeout.
    async fn request_within(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(StatusCode, HeaderMap, Bytes)> {
        let what = format!("{method} {path}");
        let mut headers = headers;
        if let Some(token) = &self.token
            && !headers.contains_key(header::AUTHORIZATION)
        {
            headers.insert(header::AUTHORIZATION, token.clone());
        }
        let request = build_request(&self.addr, method, path, headers, body)?;
        let mut slot = self.conn.lock().await;
        let outcome = tokio::time::timeout(timeout, self.exchange(&mut slot, request)).await;
        match outcome {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(err)) => {
                *slot = None;
                Err(err)
            }
            Err(_) => {
                // The connection has an abandoned exchange on it: drop it.
                *slot = None;
                Err(Error::Timeout(format!(
                    "{what} on {} got no complete answer within {} ms",
                    self.addr,
                    timeout.as_millis()
                )))
            }
        }
    }

    /// Sends `request` on the kept-alive connection (made if needed) and
    /// reads the answer.
    async fn exchange(
        &self,
        slot: &mut Option<Conn>,
        mut request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, HeaderMap, Bytes)> {
        let response: Response<Incoming> = loop {
            if slot.as_ref().is_some_and(|c| c.sender.is_closed()) {
                *slot = None;
            }
            let reused = slot.is_some();
            let conn = match slot {
                Some(conn) => conn,
                None => slot.insert(connect(&self.addr, self.connect_timeout).await?),
            };
            if let Err(err) = conn.sender.ready().await {
                *slot = None;
                if reused {
                    continue;
                }
                return Err(Error::Http(err));
            }
            match conn.sender.try_send_request(request).await {
                Ok(response) => break response,
                Err(mut err) => {
                    *slot = None;
                    match err.take_message() {
                        // Not written: the server had closed the idle
                        // connection. Safe to send again, once.
                        Some(unsent) if reused => {
                            tracing::debug!("kept-alive connection was closed; reconnecting");
                            request = unsent;
                        }
                        _ => return Err(Error::Http(err.into_error())),
                    }
                }
            }
        };
        let (parts, body) = response.into_parts();
        let body = read_body(body).await?;
        Ok((parts.status, parts.headers, body))
    }

    /// Like [`request`](Self::request), but a non-2xx answer is an
    /// [`Error::Status`].
    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes> {
        let (status, _, body) = self
            .request_within(method, path, headers, body, timeout)
            .await?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(status_error(status, &body))
        }
    }

    /// `GET path`, parsed as JSON.
    ///
    /// # Errors
    /// As [`request`](Self::request); [`Error::Status`] for a non-2xx answer;
    /// [`Error::Protocol`] when the body is not JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value> {
        let body = self
            .call(
                Method::GET,
                path,
                HeaderMap::new(),
                Bytes::new(),
                self.request_timeout,
            )
            .await?;
        parse_json(&body, &format!("GET {path}"))
    }

    /// Publishes `payload` on `channel` (`POST /push/:channel`).
    ///
    /// # Errors
    /// As [`request`](Self::request); [`Error::Status`] for a refusal (bad
    /// name `400`, too large `413`, shutting down `503`, …);
    /// [`Error::Core`] for a `device` or idempotency key that cannot be
    /// valid.
    pub async fn publish(
        &self,
        channel: &str,
        payload: impl Into<Bytes>,
        opts: &PublishOptions,
    ) -> Result<Published> {
        let (path, headers, timeout) = self.publish_request(channel, opts)?;
        let body = self
            .call(Method::POST, &path, headers, payload.into(), timeout)
            .await?;
        parse_json(&body, "publish")
    }

    /// Publishes like [`publish`](Self::publish), retrying transient failures
    /// ([`is_transient`]) as `backoff` says, every attempt with the same
    /// `Idempotency-Key` (one is generated when `opts` has none), so the
    /// event is stored once even when an answer was lost. `on_retry` is told
    /// about each retry before its delay: the retry number (from 1), the
    /// delay, and the failure.
    ///
    /// # Errors
    /// The first permanent failure, or the last transient one once the
    /// retries are spent; either wrapped in [`Error::Unconfirmed`] when an
    /// earlier attempt may have been stored although its answer was lost
    /// (issue 18.1: such an event must not be reported as not published: a
    /// publish again with the same key is safe, a publish without it is a
    /// duplicate).
    pub async fn publish_retrying(
        &self,
        channel: &str,
        payload: impl Into<Bytes>,
        opts: &PublishOptions,
        backoff: &Backoff,
        mut on_retry: impl FnMut(u32, Duration, &Error),
    ) -> Result<Published> {
        let payload = payload.into();
        let mut opts = opts.clone();
        if opts.idempotency_key.is_none() {
            opts.idempotency_key = Some(random_key());
        }
        let mut retry = 0;
        let mut maybe_stored = false;
        loop {
            match self.publish(channel, payload.clone(), &opts).await {
                Ok(published) => return Ok(published),
                Err(err) if retry < backoff.retries && is_transient(&err) => {
                    maybe_stored |= may_have_been_received(&err);
                    retry += 1;
                    let delay = backoff.delay(retry);
                    on_retry(retry, delay, &err);
                    tokio::time::sleep(delay).await;
                }
                Err(err) if maybe_stored || may_have_been_received(&err) => {
                    return Err(Error::Unconfirmed {
                        source: Box::new(err),
                        idempotency_key: opts.idempotency_key.clone().unwrap_or_default(),
                    });
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// The path, headers and timeout of a publish.
    fn publish_request(
        &self,
        channel: &str,
        opts: &PublishOptions,
    ) -> Result<(String, HeaderMap, Duration)> {
        let mut path = format!("/push/{}", encode_component(channel));
        let mut query = Vec::new();
        if let Some(kind) = &opts.event_type {
            query.push(format!("event={}", encode_component(kind)));
        }
        let mut timeout = self.request_timeout;
        if let Some((wait, within)) = opts.wait {
            query.push(format!("wait={}", wait.as_str()));
            query.push(format!("timeout={}", within.as_millis()));
            timeout = timeout.saturating_add(within);
        }
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query.join("&"));
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(device) = &opts.device {
            headers.insert("device", device_header(device)?);
        }
        if let Some(key) = &opts.idempotency_key {
            let value = HeaderValue::from_str(key)
                .ok()
                .filter(|_| {
                    !key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
                })
                .ok_or_else(|| {
                    pere_core::Error::InvalidIdempotencyKey(
                        "only printable ASCII is allowed".into(),
                    )
                })?;
            headers.insert("idempotency-key", value);
        }
        Ok((path, headers, timeout))
    }

    /// Acknowledges event `id` for `device` on `channel` (the subscription as
    /// written, possibly a pattern) with `status` (`POST /feedback/:channel`).
    ///
    /// # Errors
    /// As [`request`](Self::request); [`Error::Status`] for `404` (unknown or
    /// no longer retained event), `400` (bad id or status);
    /// [`Error::Core`] for an invalid `device`.
    pub async fn ack(&self, channel: &str, device: &str, id: &str, status: &str) -> Result<Acked> {
        let body = serde_json::json!({ "id": id, "status": status }).to_string();
        let answer = self
            .call(
                Method::POST,
                &format!("/feedback/{}", encode_component(channel)),
                feedback_headers(device)?,
                Bytes::from(body),
                self.request_timeout,
            )
            .await?;
        parse_json(&answer, "receipt")
    }

    /// Acknowledges several events at once: `items` are `(id, status)`
    /// pairs; the answer has one result per item, in order.
    ///
    /// # Errors
    /// As [`ack`](Self::ack) for the request as a whole; refused items are
    /// [`AckResult::Failed`].
    pub async fn ack_batch(
        &self,
        channel: &str,
        device: &str,
        items: &[(&str, &str)],
    ) -> Result<Vec<AckResult>> {
        let body: Vec<Value> = items
            .iter()
            .map(|(id, status)| serde_json::json!({ "id": id, "status": status }))
            .collect();
        let answer = self
            .call(
                Method::POST,
                &format!("/feedback/{}", encode_component(channel)),
                feedback_headers(device)?,
                Bytes::from(Value::Array(body).to_string()),
                self.request_timeout,
            )
            .await?;
        let list: Vec<Value> = parse_json(&answer, "batch receipt")?;
        list.into_iter()
            .map(|item| {
                if let Some(message) = item.get("error").and_then(Value::as_str) {
                    Ok(AckResult::Failed {
                        id: item.get("id").and_then(Value::as_str).map(str::to_string),
                        message: message.to_string(),
                        code: item
                            .get("code")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                    })
                } else {
                    serde_json::from_value(item)
                        .map(AckResult::Acked)
                        .map_err(|err| {
                            Error::Protocol(format!("a batch receipt item is not a receipt: {err}"))
                        })
                }
            })
            .collect()
    }

    /// `GET /receipts/:channel/:id`: the event's audience and each device's
    /// receipt state (docs/PROTOCOL.md §5).
    ///
    /// # Errors
    /// As [`get_json`](Self::get_json); `404` for an unknown event.
    pub async fn receipts(&self, channel: &str, id: &str) -> Result<Value> {
        self.get_json(&format!(
            "/receipts/{}/{}",
            encode_component(channel),
            encode_component(id)
        ))
        .await
    }
}

/// The headers of a receipt: `device` and a JSON content type.
fn feedback_headers(device: &str) -> Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    headers.insert("device", device_header(device)?);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(headers)
}

// ---------------------------------------------------------------------------
// Subscriber

/// The channel and payload of an event received with
/// [`SubscribeOptions::envelope`]; `None` when its data is not an envelope
/// (a control event, or a server without the option).
pub fn unwrap_envelope(data: &str) -> Option<(String, String)> {
    let value: serde_json::Value = serde_json::from_str(data).ok()?;
    let channel = value.get("channel")?.as_str()?.to_string();
    let payload = value.get("data")?.as_str()?.to_string();
    Some((channel, payload))
}

/// What to subscribe to: channels (or patterns), or a whole `/feed` path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Feed {
    /// One or more channels or patterns: `GET /feed/A` for one,
    /// `GET /feed?channel=A&channel=B` for several.
    Channels(Vec<String>),
    /// A path used as is (it may carry a query), e.g. `/feed/a?replay=all`.
    Path(String),
}

impl Feed {
    /// The request path; `replay_all` adds `replay=all`.
    fn path(&self, replay_all: bool) -> String {
        let mut path = match self {
            Feed::Path(path) => path.clone(),
            Feed::Channels(list) if list.len() == 1 => {
                format!("/feed/{}", encode_component(&list[0]))
            }
            Feed::Channels(list) => {
                let query: Vec<String> = list
                    .iter()
                    .map(|c| format!("channel={}", encode_component(c)))
                    .collect();
                format!("/feed?{}", query.join("&"))
            }
        };
        if replay_all {
            path.push(if path.contains('?') { '&' } else { '?' });
            path.push_str("replay=all");
        }
        path
    }
}

impl From<&str> for Feed {
    /// A path when it starts with `/`, else channels separated by commas.
    fn from(text: &str) -> Self {
        if text.starts_with('/') {
            Feed::Path(text.to_string())
        } else {
            Feed::Channels(
                text.split(',')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
            )
        }
    }
}

impl From<String> for Feed {
    fn from(text: String) -> Self {
        Feed::from(text.as_str())
    }
}

impl From<Vec<String>> for Feed {
    fn from(channels: Vec<String>) -> Self {
        Feed::Channels(channels)
    }
}

/// How a [`Subscriber`] connects and reconnects.
#[derive(Clone, Debug)]
pub struct SubscribeOptions {
    /// Start after this event id (sent as `Last-Event-ID` on the first
    /// connection, as if an earlier connection had seen it).
    pub last_event_id: Option<String>,
    /// Ask for every retained event (`replay=all`) on the first connection.
    pub replay_all: bool,
    /// Consecutive failed connection attempts after which [`Subscriber::next`]
    /// gives up with an error; `None` retries forever. A stream that opened
    /// resets the count.
    pub max_reconnects: Option<u32>,
    /// After this instant no new connection is attempted: the next one
    /// gives up with an error. An open stream is not cut.
    pub deadline: Option<Instant>,
    /// Reconnection time until the server sends `retry`.
    pub retry: Duration,
    /// Longest delay between two failed connection attempts: each failure
    /// in a row doubles the `retry` delay up to this (a server that is down
    /// is not hammered every `retry`), and a stream that opened starts over.
    pub max_backoff: Duration,
    /// Time to connect and receive the response head.
    pub connect_timeout: Duration,
    /// Reconnect when no byte (event or keepalive) arrived for this long;
    /// `None` waits forever, like a browser. Set it above the server's
    /// keepalive period (15 s by default).
    pub idle_timeout: Option<Duration>,
    /// More request headers.
    pub headers: HeaderMap,
    /// A bearer token, sent as `Authorization: Bearer` (docs/PROTOCOL.md §7). A
    /// `401` or `403` ends the subscription: retrying cannot help.
    pub token: Option<String>,
    /// Ask for `?envelope=json` (docs/PROTOCOL.md §3.8): each event's data is
    /// `{"channel","id","type","data"}`, so the caller learns the channel of
    /// events matched by a pattern; [`unwrap_envelope`] reads it.
    pub envelope: bool,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            last_event_id: None,
            replay_all: false,
            max_reconnects: None,
            deadline: None,
            retry: DEFAULT_RETRY,
            max_backoff: DEFAULT_MAX_BACKOFF,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: None,
            headers: HeaderMap::new(),
            token: None,
            envelope: false,
        }
    }
}

/// What [`Subscriber::next`] yields: events, and what happens to the
/// connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscriberItem {
    /// A stream is open (`200 text/event-stream`).
    Connected,
    /// An event was dispatched, `pere.*` control events included.
    Event(SseEvent),
    /// The stream ended or a connection attempt failed.
    Disconnected {
        /// Why, in words.
        reason: String,
    },
    /// The next connection attempt will be made after `after`.
    Reconnecting {
        /// The delay: the server's `retry`, doubled for each failed attempt
        /// in a row (up to [`SubscribeOptions::max_backoff`]).
        after: Duration,
        /// Consecutive attempt number, from 1.
        attempt: u32,
    },
}

/// Where a [`Subscriber`] is.
enum State {
    /// Connect on the next call.
    Connect,
    /// Connect once this instant is reached.
    Wait(Instant),
    /// A stream is open: its body, and the connection it comes over.
    Streaming { body: Incoming, _conn: Conn },
    /// Give up: return this error, then end.
    Failed(Error),
    /// Ended: `next` returns `None`.
    Closed,
}

/// Why opening a stream failed.
enum OpenError {
    /// Try again after `retry`.
    Retry(Error),
    /// Do not reconnect (e.g. `400`, `403`, `404`, not an event stream).
    Fatal(Error),
    /// `204 No Content`: the server asked the client to stop.
    Stop,
}

/// An `EventSource`: a subscription that survives disconnections, resuming
/// with `Last-Event-ID` after the server's `retry`.
///
/// Unlike a browser, it also reconnects after a `429` or `5xx` answer
/// (a server shutting down answers `503`); other non-`200` answers end it
/// with [`Error::Status`].
pub struct Subscriber {
    /// The server.
    addr: Address,
    /// The request path.
    path: String,
    /// The `device` header, checked.
    device: Option<HeaderValue>,
    /// Connection settings.
    options: SubscribeOptions,
    /// The decoder, kept across connections: it carries the last event id
    /// and the `retry` from one to the next.
    decoder: Decoder,
    /// Where the subscription is.
    state: State,
    /// Items decoded or noticed, not returned yet.
    queue: VecDeque<SubscriberItem>,
    /// Consecutive failed connection attempts.
    failures: u32,
    /// Reused output buffer of the decoder.
    scratch: Vec<Item>,
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("addr", &self.addr)
            .field("path", &self.path)
            .field("device", &self.device)
            .field("last_event_id", &self.decoder.last_event_id())
            .finish_non_exhaustive()
    }
}

impl Subscriber {
    /// A subscription of `device` (anonymous when `None`) to `feed` on the
    /// server at `addr`, with default options. Nothing is connected until
    /// [`next`](Self::next).
    ///
    /// # Errors
    /// [`Error::Address`] for a bad address, [`Error::Core`] for an invalid
    /// device.
    pub fn new(addr: &str, feed: impl Into<Feed>, device: Option<String>) -> Result<Self> {
        Self::with_options(addr, feed, device, SubscribeOptions::default())
    }

    /// Like [`new`](Self::new), with `options`.
    ///
    /// # Errors
    /// As [`new`](Self::new); [`Error::Core`] for a `last_event_id` that is
    /// not an event id.
    pub fn with_options(
        addr: &str,
        feed: impl Into<Feed>,
        device: Option<String>,
        options: SubscribeOptions,
    ) -> Result<Self> {
        let addr = Address::parse(addr)?;
        let device = device.as_deref().map(device_header).transpose()?;
        if let Some(token) = &options.token {
            bearer(token)?;
        }
        let feed = feed.into();
        let mut path = feed.path(options.replay_all);
        if options.envelope {
            path.push(if path.contains('?') { '&' } else { '?' });
            path.push_str("envelope=json");
        }
        let mut decoder = Decoder::new();
        if let Some(id) = options.last_event_id.as_deref().filter(|id| !id.is_empty()) {
            let id = EventId::parse(id)?;
            // Start as if a previous connection had ended after this id: a
            // blank line after an `id` field sets the last event id, and
            // `finish` keeps it for the next stream.
            let mut ignored = Vec::new();
            decoder.feed(format!("id: {id}\n\n").as_bytes(), &mut ignored);
            decoder.finish(&mut ignored);
        }
        Ok(Self {
            addr,
            path,
            device,
            options,
            decoder,
            state: State::Connect,
            queue: VecDeque::new(),
            failures: 0,
            scratch: Vec::new(),
        })
    }

    /// The stream's last event id (`EventSource.lastEventId`): what the next
    /// connection sends as `Last-Event-ID`.
    pub fn last_event_id(&self) -> &str {
        self.decoder.last_event_id()
    }

    /// The current reconnection time: the server's `retry`, or the default.
    pub fn retry(&self) -> Duration {
        self.decoder
            .retry()
            .map_or(self.options.retry, Duration::from_millis)
    }

    /// The request path (`/feed/…`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The server's address.
    pub fn address(&self) -> &Address {
        &self.addr
    }

    /// Whether a stream is open now.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Streaming { .. })
    }

    /// Closes the stream; [`next`](Self::next) then returns `None`.
    pub fn close(&mut self) {
        self.state = State::Closed;
        self.queue.clear();
    }

    /// The next event or connection notice, connecting and reconnecting as
    /// needed; `None` once the subscription ended (closed, or `204`).
    ///
    /// # Errors
    /// [`Error::Status`] for an answer that forbids reconnecting (`400`,
    /// `401`, `403`, `404`…), [`Error::Protocol`] for an answer that is not
    /// an event stream, [`Error::Timeout`] when reconnecting gave up
    /// ([`SubscribeOptions::max_reconnects`] or
    /// [`SubscribeOptions::deadline`]). After an error, `next` returns `None`.
    pub async fn next(&mut self) -> Result<Option<SubscriberItem>> {
        // Cancel safety: the state is only changed after an `.await` has
        // completed, so a caller may drop this future (e.g. in `select!` or
        // `timeout`) and call `next` again without losing the stream.
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Ok(Some(item));
            }
            match &mut self.state {
                State::Closed => return Ok(None),
                State::Failed(_) => {
                    if let State::Failed(err) = std::mem::replace(&mut self.state, State::Closed) {
                        return Err(err);
                    }
                }
                State::Wait(until) => {
                    tokio::time::sleep_until(*until).await;
                    self.state = State::Connect;
                }
                State::Connect => match self.open().await {
                    Ok((conn, body)) => {
                        self.failures = 0;
                        self.state = State::Streaming { body, _conn: conn };
                        return Ok(Some(SubscriberItem::Connected));
                    }
                    Err(OpenError::Retry(err)) => {
                        self.failures = self.failures.saturating_add(1);
                        self.lost(err.to_string());
                    }
                    Err(OpenError::Fatal(err)) => {
                        self.state = State::Closed;
                        return Err(err);
                    }
                    Err(OpenError::Stop) => {
                        self.state = State::Closed;
                        return Ok(Some(SubscriberItem::Disconnected {
                            reason: "the server answered 204 No Content: do not reconnect".into(),
                        }));
                    }
                },
                State::Streaming { body, .. } => {
                    let frame = match self.options.idle_timeout {
                        None => Some(body.frame().await),
                        Some(limit) => tokio::time::timeout(limit, body.frame()).await.ok(),
                    };
                    match frame {
                        Some(Some(Ok(frame))) => {
                            // Trailers (never sent by PERE) are ignored.
                            if let Ok(data) = frame.into_data() {
                                self.feed(&data);
                            }
                        }
                        Some(Some(Err(err))) => self.lost(format!("the stream broke: {err}")),
                        Some(None) => self.lost("the server ended the stream".into()),
                        None => self.lost(format!(
                            "nothing received for {} ms",
                            self.options.idle_timeout.unwrap_or_default().as_millis()
                        )),
                    }
                }
            }
        }
    }

    /// Decodes a chunk of the body into the queue.
    fn feed(&mut self, data: &[u8]) {
        self.decoder.feed(data, &mut self.scratch);
        for item in self.scratch.drain(..) {
            match item {
                Item::Event(event) => self.queue.push_back(SubscriberItem::Event(event)),
                Item::Error(err) => {
                    tracing::warn!(cause = %err, path = %self.path, "part of the event stream was discarded");
                }
                // `retry` is kept by the decoder; comments are keepalives.
                Item::Retry(_) | Item::Comment(_) => {}
            }
        }
    }

    /// The stream or an attempt ended: report it, then wait `retry` before
    /// the next attempt, unless the bounds say to give up.
    fn lost(&mut self, reason: String) {
        self.decoder.finish(&mut self.scratch);
        self.scratch.clear();
        let after = backoff_delay(self.retry(), self.options.max_backoff, self.failures);
        let attempt = self.failures.saturating_add(1);
        self.queue.push_back(SubscriberItem::Disconnected {
            reason: reason.clone(),
        });
        if let Some(max) = self.options.max_reconnects
            && self.failures >= max
        {
            self.state = State::Failed(Error::Timeout(format!(
                "gave up on {} after {} failed connection attempts; last: {reason}",
                self.addr.url(&self.path),
                self.failures
            )));
            return;
        }
        let at = Instant::now() + after;
        if let Some(deadline) = self.options.deadline
            && at > deadline
        {
            self.state = State::Failed(Error::Timeout(format!(
                "gave up on {}: the deadline passed; last: {reason}",
                self.addr.url(&self.path)
            )));
            return;
        }
        self.queue
            .push_back(SubscriberItem::Reconnecting { after, attempt });
        self.state = State::Wait(at);
    }

    /// Connects and sends the request; `Ok` once a `200 text/event-stream`
    /// head arrived.
    async fn open(&mut self) -> std::result::Result<(Conn, Incoming), OpenError> {
        let mut headers = self.options.headers.clone();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        if let Some(device) = &self.device {
            headers.insert("device", device.clone());
        }
        if let Some(token) = &self.options.token {
            headers.insert(
                header::AUTHORIZATION,
                bearer(token).map_err(OpenError::Fatal)?,
            );
        }
        let last = self.decoder.last_event_id();
        if !last.is_empty() {
            match HeaderValue::from_str(last) {
                Ok(value) => {
                    headers.insert(HeaderName::from_static("last-event-id"), value);
                }
                Err(_) => {
                    tracing::warn!(
                        "the last event id cannot be sent as a header; resuming without it"
                    );
                }
            }
        }
        let request = build_request(&self.addr, Method::GET, &self.path, headers, Bytes::new())
            .map_err(OpenError::Fatal)?;
        let limit = self.options.connect_timeout;
        let opened = tokio::time::timeout(limit, async {
            let mut conn = connect(&self.addr, limit).await?;
            conn.sender.ready().await?;
            let response = conn.sender.send_request(request).await?;
            Ok::<_, Error>((conn, response))
        })
        .await;
        let (conn, response) = match opened {
            Ok(Ok(pair)) => pair,
            Ok(Err(err)) => return Err(OpenError::Retry(err)),
            Err(_) => {
                return Err(OpenError::Retry(Error::Timeout(format!(
                    "{} did not answer within {} ms",
                    self.addr.url(&self.path),
                    limit.as_millis()
                ))));
            }
        };
        let status = response.status();
        if status == StatusCode::OK {
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let essence = content_type.split(';').next().unwrap_or("").trim();
            if !essence.eq_ignore_ascii_case("text/event-stream") {
                return Err(OpenError::Fatal(Error::Protocol(format!(
                    "{} is not an event stream (Content-Type `{}`)",
                    self.addr.url(&self.path),
                    escape(content_type)
                ))));
            }
            return Ok((conn, response.into_body()));
        }
        if status == StatusCode::NO_CONTENT {
            return Err(OpenError::Stop);
        }
        let body = tokio::time::timeout(limit, read_body(response.into_body()))
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default();
        let err = status_error(status, &body);
        if is_transient(&err) {
            Err(OpenError::Retry(err))
        } else {
            Err(OpenError::Fatal(err))
        }
    }
}

/// The delay before the next connection attempt after `failures` failed
/// attempts in a row: `retry` after a stream ended or the first failure,
/// then doubled each time, at most `max` (but never less than `retry`).
fn backoff_delay(retry: Duration, max: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    retry.saturating_mul(1u32 << doublings).min(max.max(retry))
}

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
