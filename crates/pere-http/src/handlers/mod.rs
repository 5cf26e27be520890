//! Request handlers, one module per PERE route family, and what they share:
//! the [`App`] state, identity extraction, JSON responses and CORS.
//!
//! Handlers return `Result<Response<Body>, ApiError>`; [`handle`] turns the
//! error into docs/PROTOCOL.md §8's JSON and adds CORS headers to every answer.

mod admin;
pub mod auth;
pub(crate) mod feed;
pub(crate) mod feedback;
mod health;
mod push;
mod receipts;
mod static_files;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use pere_core::{DeviceId, EventStore, Hub};

use crate::body::Body;
use crate::error::{ApiError, escape};
use crate::limits::Limits;
use crate::metrics::HttpMetrics;
use crate::router::{self, Route};
use crate::server::RequestBody;
use crate::server::{Cors, ServerConfig};
use auth::Caller;

/// What every handler gets: the hub, the server's configuration, metrics.
pub struct App<S: EventStore> {
    /// The hub.
    pub hub: Hub<S>,
    /// The server's configuration.
    pub config: ServerConfig,
    /// HTTP-level counters.
    pub metrics: HttpMetrics,
    /// Open connections and streams, against the configured limits.
    pub limits: Arc<Limits>,
}

/// Headers a browser may send cross-origin (docs/PROTOCOL.md §6).
const ALLOWED_HEADERS: &str =
    "device, Last-Event-ID, last_event_id, Idempotency-Key, Authorization, Content-Type";
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS";
const EXPOSED_HEADERS: &str = "Location, WWW-Authenticate, Retry-After";

/// Serves one request: route, handle, map errors, add CORS.
pub async fn handle<S: EventStore>(app: Arc<App<S>>, req: Request<RequestBody>) -> Response<Body> {
    let origin = req.headers().get(header::ORIGIN).cloned();
    // Boxed: hyper keeps a connection's request future in an allocation of
    // the future's full size for the connection's whole life, and an event
    // stream lives long. Unboxed, the union of every handler's state made
    // that ~2.9 KiB per open stream; boxed, the handler's state is freed
    // once the response (the stream's body) is returned.
    let result = match router::route(req.method(), req.uri().path()) {
        Ok(route) => Box::pin(dispatch(&app, route, req)).await,
        Err(err) => Err(err),
    };
    finish(&app, origin.as_ref(), result)
}

/// Serves a `GET` of an event stream whose head the server parsed itself
/// (see [`crate::direct`]): the same checks and answers as through
/// [`handle`], for a request that has no body.
pub(crate) async fn handle_feed<S: EventStore>(
    app: &App<S>,
    req: Request<()>,
    channel: Option<&str>,
) -> Response<Body> {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let result = Box::pin(async {
        let caller = auth::caller(app, req.headers(), &query_of(&req)?)?;
        feed::feed(app, &req, channel, &caller).await
    })
    .await;
    finish(app, origin.as_ref(), result)
}

/// Turns a handler's result into the answer: errors as docs/PROTOCOL.md §8's JSON,
/// counted, with CORS headers.
fn finish<S: EventStore>(
    app: &App<S>,
    origin: Option<&HeaderValue>,
    result: Result<Response<Body>, ApiError>,
) -> Response<Body> {
    let mut response = result.unwrap_or_else(|err| {
        app.metrics.count_error(&err);
        let mut response = error_response(&err);
        if err.code == "store_unavailable"
            && let Some(wait) = health::store_retry_after(&app.hub)
        {
            // When the hub tries the store again, not a guess.
            health::set_retry_after(&mut response, wait);
        }
        response
    });
    app.metrics.count(response.status());
    add_cors(&app.config.cors, origin, response.headers_mut());
    response
}

async fn dispatch<S: EventStore>(
    app: &App<S>,
    route: Route,
    req: Request<RequestBody>,
) -> Result<Response<Body>, ApiError> {
    // The open routes: PERE's greeting, the web pages (they ask for a token
    // themselves), health checks, and CORS preflights (a browser never
    // sends credentials on those).
    let caller = match &route {
        Route::Root | Route::Static(_) | Route::Health | Route::Preflight => Caller::Open,
        _ => {
            let query = query_of(&req)?;
            // Who asks first: a stranger gets its 401, not a lesson in
            // parameters.
            let caller = auth::caller(app, req.headers(), &query)?;
            router::check_params(&route, &query)?;
            caller
        }
    };
    match &route {
        Route::Metrics
        | Route::AdminConnections
        | Route::AdminChannels
        | Route::AdminEvents(_)
        | Route::AdminDevices(_)
        | Route::AdminDevice(..)
        | Route::AdminTokens
        | Route::AdminToken(_) => caller.require_admin()?,
        _ => {}
    }
    match route {
        Route::Root => Ok(json(
            StatusCode::OK,
            serde_json::json!({
                "message": "PERE server up and running",
                "name": "pere",
                "version": env!("CARGO_PKG_VERSION"),
                "endpoints": {
                    "publish": "POST /push/:channel",
                    "subscribe": "GET /feed/:channel",
                    "receipt": "POST /feedback/:channel",
                    "receipts": "GET /receipts/:channel/:id",
                    "admin": "GET /admin/connections | /admin/channels | /admin/events/:channel | /admin/devices/:channel",
                    "web": "GET /subscriber.html",
                }
            }),
        )),
        Route::Static(name) => Ok(static_files::serve(name)),
        Route::Health => Ok(health::health(app)),
        Route::Metrics => Ok(crate::metrics::render(app)),
        Route::Push(channel) => push::push(app, req, &channel, &caller).await,
        Route::Feed(channel) => feed::feed(app, &req, channel.as_deref(), &caller).await,
        Route::Feedback(channel) => feedback::feedback(app, req, &channel, &caller).await,
        Route::Receipt(channel, id) => receipts::summary(app, &channel, &id, &caller),
        Route::ReceiptStream(channel) => receipts::stream(app, &req, &channel, &caller),
        Route::AdminConnections => Ok(admin::connections(app)),
        Route::AdminChannels => Ok(admin::channels(app)),
        Route::AdminEvents(channel) => admin::events(app, &req, &channel).await,
        Route::AdminDevices(channel) => admin::devices(app, &channel),
        Route::AdminDevice(channel, device) => {
            admin::device(app, req.method(), &channel, &device).await
        }
        Route::AdminTokens => Ok(admin::tokens(app)),
        Route::AdminToken(token) => admin::token(app, req, &token).await,
        Route::Preflight => Ok(preflight()),
    }
}

fn preflight() -> Response<Body> {
    let mut response = empty(StatusCode::NO_CONTENT);
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(ALLOWED_METHODS),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOWED_HEADERS),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    response
}

fn add_cors(cors: &Cors, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
    let allow = match cors {
        Cors::Off => return,
        Cors::Any => HeaderValue::from_static("*"),
        Cors::List(list) => {
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
            match origin {
                Some(o) if o.to_str().is_ok_and(|o| list.iter().any(|a| a == o)) => o.clone(),
                _ => return,
            }
        }
    };
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED_HEADERS),
    );
}

/// The JSON error response of docs/PROTOCOL.md §8.
pub fn error_response(err: &ApiError) -> Response<Body> {
    let mut response = Response::new(Body::from(err.body()));
    *response.status_mut() = err.status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(allow) = err.allow {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    let h = response.headers_mut();
    match err.status {
        // RFC 6750 §3: a 401 names the scheme that would work.
        StatusCode::UNAUTHORIZED => {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"pere\""),
            );
        }
        // A limit that frees up as streams close: worth retrying soon.
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
    response
}

/// A JSON response.
pub fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    json_raw(status, value.to_string())
}

/// A JSON response from already-serialized text.
pub fn json_raw(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A plain-text response.
pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// An empty response.
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

/// A header's value as text, if present; `400` if it is not visible ASCII.
pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(|s| Some(s.trim())).map_err(|_| {
            ApiError::bad_request(
                "invalid_header",
                format!("the `{name}` header is not visible ASCII text"),
            )
        }),
    }
}

/// The first value of query parameter `key`.
pub fn query_value<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The request's device (docs/PROTOCOL.md §1): the `device` header (PERE), else the
/// `device` query parameter (PERE's web page). Invalid is `400` wherever it
/// came from.
pub fn device_of(
    headers: &HeaderMap,
    query: &[(String, String)],
) -> Result<Option<DeviceId>, ApiError> {
    // A device header that is not even ASCII is an invalid device, with the
    // same code as any other.
    let header = header_str(headers, "device").map_err(|_| {
        ApiError::bad_request(
            "invalid_device",
            "the `device` header is not a device id (A-Z a-z 0-9 _ - . : @)",
        )
    })?;
    let raw = match header {
        Some(v) => Some(v),
        None => query_value(query, "device"),
    };
    match raw {
        None => Ok(None),
        Some(v) => Ok(Some(DeviceId::new(v)?)),
    }
}

/// The request's parsed query string.
pub fn query_of<B>(req: &Request<B>) -> Result<Vec<(String, String)>, ApiError> {
    router::parse_query(req.uri().query().unwrap_or(""))
}

/// Reads a request body of at most `limit` bytes: `413` beyond it, checked
/// from `Content-Length` before reading anything when the client sent one;
/// `408` when the whole body has not arrived within `timeout` (a client
/// trickling its body must not hold a task and a descriptor for ever).
pub async fn read_body(
    req: Request<RequestBody>,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    let too_large = |size: Option<u64>| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            match size {
                Some(size) => format!("the body is {size} bytes, the limit is {limit}"),
                None => format!("the body is larger than the limit of {limit} bytes"),
            },
        )
    };
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large(Some(len)));
    }
    let limited = http_body_util::Limited::new(req.into_body(), limit);
    let Ok(collected) = tokio::time::timeout(timeout, limited.collect()).await else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {} ms",
                timeout.as_millis()
            ),
        ));
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(too_large(None)),
        Err(err) => Err(ApiError::bad_request(
            "invalid_body",
            format!("the body could not be read: {}", escape(&err.to_string())),
        )),
    }
}

#[cfg(test)]
mod size {
    fn future_size<A, B, F>(_: impl Fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every open stream keeps an allocation of this size (see [`super::handle`]).
    #[test]
    fn the_request_future_stays_small() {
        let size = future_size(super::handle::<pere_core::MemoryStore>);
        assert!(size <= 1024, "handle's future is {size} bytes");
    }
}
