//! [`Subscriber`]: an `EventSource` over `GET /feed`, reconnecting with
//! `Last-Event-ID` after the server's `retry`, as a browser does.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use pere_core::EventId;
use tokio::time::Instant;

use crate::error::{Error, Result, escape};
use crate::sse::{Decoder, Item, SseEvent};

use super::*;

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
    pub(super) fn path(&self, replay_all: bool) -> String {
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
        /// Whether a server answered: `false` when the attempt found none
        /// (refused, unreachable, timed out, TLS failed), `true` for an
        /// answer (`429`, `5xx`, `204`) and for a stream that ended.
        answered: bool,
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
    /// Consecutive failed connection attempts. A stream that ends before
    /// any event is one: a server that cannot serve it now answers `200`
    /// with a `retry:` and a comment, then ends (PERE does, so that an
    /// `EventSource` comes back), and each such answer must back off.
    failures: u32,
    /// Whether the current stream dispatched an event (it is live).
    live: bool,
    /// What the current stream said in a comment before it was live: the
    /// server's reason, when it ends at once.
    said: Option<String>,
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
            live: false,
            said: None,
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
    /// an event stream, [`Error::GaveUp`] when reconnecting gave up after
    /// [`SubscribeOptions::max_reconnects`] attempts, [`Error::Timeout`]
    /// when [`SubscribeOptions::deadline`] passed. After an error, `next`
    /// returns `None`.
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
                        self.live = false;
                        self.said = None;
                        self.state = State::Streaming { body, _conn: conn };
                        return Ok(Some(SubscriberItem::Connected));
                    }
                    Err(OpenError::Retry(err)) => {
                        self.failures = self.failures.saturating_add(1);
                        let answered = matches!(err, Error::Status { .. });
                        self.lost(err.to_string(), answered);
                    }
                    Err(OpenError::Fatal(err)) => {
                        self.state = State::Closed;
                        return Err(err);
                    }
                    Err(OpenError::Stop) => {
                        self.state = State::Closed;
                        return Ok(Some(SubscriberItem::Disconnected {
                            reason: "the server answered 204 No Content: do not reconnect".into(),
                            answered: true,
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
                        Some(Some(Err(err))) => {
                            self.not_live();
                            self.lost(format!("the stream broke: {err}"), true);
                        }
                        Some(None) if !self.live => {
                            self.not_live();
                            let reason = match self.said.take() {
                                Some(said) => format!(
                                    "the server ended the stream before any event: {}",
                                    said.trim()
                                ),
                                None => "the server ended the stream before any event".into(),
                            };
                            self.lost(reason, true);
                        }
                        Some(None) => self.lost("the server ended the stream".into(), true),
                        None => {
                            self.not_live();
                            self.lost(
                                format!(
                                    "nothing received for {} ms",
                                    self.options.idle_timeout.unwrap_or_default().as_millis()
                                ),
                                true,
                            );
                        }
                    }
                }
            }
        }
    }

    /// A stream that ends or breaks before any event counts as a failed
    /// attempt, so that reconnecting backs off and `max_reconnects` holds.
    fn not_live(&mut self) {
        if !self.live {
            self.failures = self.failures.saturating_add(1);
        }
    }

    /// Decodes a chunk of the body into the queue.
    fn feed(&mut self, data: &[u8]) {
        self.decoder.feed(data, &mut self.scratch);
        for item in self.scratch.drain(..) {
            match item {
                Item::Event(event) => {
                    if !self.live {
                        self.live = true;
                        self.failures = 0;
                    }
                    self.queue.push_back(SubscriberItem::Event(event));
                }
                Item::Comment(text) if !self.live && !text.trim().is_empty() => {
                    self.said = Some(text);
                }
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
    fn lost(&mut self, reason: String, answered: bool) {
        self.decoder.finish(&mut self.scratch);
        self.scratch.clear();
        let after = backoff_delay(self.retry(), self.options.max_backoff, self.failures);
        let attempt = self.failures.saturating_add(1);
        self.queue.push_back(SubscriberItem::Disconnected {
            reason: reason.clone(),
            answered,
        });
        if let Some(max) = self.options.max_reconnects
            && self.failures >= max
        {
            self.state = State::Failed(Error::GaveUp(format!(
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
            if let Err(err) = conn.sender.ready().await {
                return Err(conn.error(&self.addr, err));
            }
            let response = match conn.sender.send_request(request).await {
                Ok(response) => response,
                Err(err) => return Err(conn.error(&self.addr, err)),
            };
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
pub(super) fn backoff_delay(retry: Duration, max: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    retry.saturating_mul(1u32 << doublings).min(max.max(retry))
}
