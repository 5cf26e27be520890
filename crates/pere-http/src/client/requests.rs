//! [`Client`]: requests on one keep-alive connection (publish, acknowledge,
//! read), and what they answer.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::error::{Error, Result};

use super::*;

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
    /// The answer repeats an earlier publish with the same idempotency key
    /// (its `Idempotent-Replayed: true` header).
    #[serde(skip)]
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
        // PERE says by its code; a proxy in front of it by its status.
        Error::Status { status, .. } => match err.code() {
            Some(code) => code.is_transient(),
            None => matches!(
                *status,
                StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::BAD_GATEWAY
                    | StatusCode::GATEWAY_TIMEOUT
                    | StatusCode::TOO_MANY_REQUESTS
            ),
        },
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
        Error::WebhookLoop { .. } | Error::WebhookUrl { .. } | Error::GaveUp(_) => false,
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
                let err = conn.error(&self.addr, err);
                *slot = None;
                if reused {
                    continue;
                }
                return Err(err);
            }
            match conn.sender.try_send_request(request).await {
                Ok(response) => break response,
                Err(mut err) => match err.take_message() {
                    // Not written: the server had closed the idle
                    // connection. Safe to send again, once.
                    Some(unsent) if reused => {
                        *slot = None;
                        tracing::debug!("kept-alive connection was closed; reconnecting");
                        request = unsent;
                    }
                    _ => {
                        let err = conn.error(&self.addr, err.into_error());
                        *slot = None;
                        return Err(err);
                    }
                },
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
        let (status, answer, body) = self
            .request_within(Method::POST, &path, headers, payload.into(), timeout)
            .await?;
        if !status.is_success() {
            return Err(status_error(status, &body));
        }
        let mut published: Published = parse_json(&body, "publish")?;
        published.duplicate = answer
            .get("idempotent-replayed")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        Ok(published)
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
