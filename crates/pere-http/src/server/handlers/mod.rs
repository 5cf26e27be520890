//! Request handlers, one module per PERE route family; [`handle`] routes a
//! request to one, and what every answer gets is added here: errors as
//! docs/PROTOCOL.md §8's JSON, counted, and CORS headers. What a request
//! says (headers, query, device, body) is read in `input`, who asks in
//! `auth`.
//!
//! Handlers return `Result<Response<Body>, ApiError>`.

mod admin;
pub(crate) mod auth;
pub(crate) mod feed;
pub(crate) mod feedback;
mod health;
pub(crate) mod input;
pub(crate) mod multipart;
mod push;
mod receipts;
mod static_files;

use std::sync::Arc;

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use pere_core::EventStore;

use crate::error::ApiError;
use crate::error::ErrorCode;
use crate::server::app::App;
use crate::server::body::{Body, RequestBody};
use crate::server::config::Cors;
use crate::server::response::{empty, error_response, json};
use crate::server::router::{self, Route};
use auth::Caller;
use input::query_of;

/// Headers a browser may send cross-origin (docs/PROTOCOL.md §6).
const ALLOWED_HEADERS: &str =
    "device, Last-Event-ID, last_event_id, Idempotency-Key, Authorization, Content-Type";
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS";
const EXPOSED_HEADERS: &str = "Location, WWW-Authenticate, Retry-After, Idempotent-Replayed";

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
/// (the direct path, `server::conn::direct`): the same checks and answers as through
/// [`handle`], for a request that has no body.
pub(crate) async fn handle_feed<S: EventStore>(
    app: &App<S>,
    req: Request<()>,
    channel: Option<&str>,
) -> Response<Body> {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let result = Box::pin(async {
        let caller = auth::caller(app, req.headers(), &query_of(&req)?).await?;
        feed::feed(app, &req, channel, &caller).await
    })
    .await;
    finish(app, origin.as_ref(), result)
}

/// Serves `POST /feedback/…` requests read together from one connection
/// (the direct path, `server::conn::posts`; each with the channel in its
/// path): each checked as through [`handle`], the receipts of all of them
/// recorded in one trip to the hub's writer, the answers in order.
pub(crate) async fn handle_receipts<S: EventStore>(
    app: &App<S>,
    requests: Vec<(Request<RequestBody>, String)>,
) -> Vec<Response<Body>> {
    let mut items = Vec::new();
    let mut shapes = Vec::with_capacity(requests.len());
    for (req, channel) in requests {
        let origin = req.headers().get(header::ORIGIN).cloned();
        let read = Box::pin(async {
            let query = query_of(&req)?;
            let caller = auth::caller(app, req.headers(), &query).await?;
            router::check_params(&Route::Feedback(String::new()), &query)?;
            feedback::read(app, req, &channel, &caller).await
        })
        .await;
        shapes.push((origin, read.map(|read| read.split(&mut items))));
    }
    let mut acked = if items.is_empty() {
        Vec::new()
    } else {
        app.hub.ack_batch(items).await
    }
    .into_iter();
    shapes
        .into_iter()
        .map(|(origin, shape)| {
            let result = shape.and_then(|shape| feedback::answer(shape, &mut acked));
            finish(app, origin.as_ref(), result)
        })
        .collect()
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
        if err.code == ErrorCode::StoreUnavailable
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
            let caller = auth::caller(app, req.headers(), &query).await?;
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
        | Route::AdminToken(_) => caller.require_admin(app).await?,
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
        Route::Metrics => {
            crate::server::metrics::render(
                &app.hub,
                &app.metrics,
                &app.limits,
                app.config.webhook.as_ref(),
            )
            .await
        }
        Route::Push(channel) => push::push(app, req, &channel, &caller).await,
        Route::Feed(channel) => feed::feed(app, &req, channel.as_deref(), &caller).await,
        Route::Feedback(channel) => feedback::feedback(app, req, &channel, &caller).await,
        Route::Receipt(channel, id) => receipts::summary(app, &channel, &id, &caller).await,
        Route::ReceiptStream(channel) => receipts::stream(app, &req, &channel, &caller).await,
        Route::AdminConnections => admin::connections(app).await,
        Route::AdminChannels => admin::channels(app).await,
        Route::AdminEvents(channel) => admin::events(app, &req, &channel).await,
        Route::AdminDevices(channel) => admin::devices(app, &channel).await,
        Route::AdminDevice(channel, device) => {
            admin::device(app, req.method(), &channel, &device).await
        }
        Route::AdminTokens => Ok(admin::tokens(app).await),
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

/// The CORS headers of an answer to a request from `origin`
/// (docs/PROTOCOL.md §6.4: every answer carries them).
pub(crate) fn add_cors(cors: &Cors, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
    let allow = match cors {
        Cors::Off => return,
        Cors::Any => HeaderValue::from_static("*"),
        Cors::List(list) => {
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
            match origin {
                Some(o) if o.to_str().is_ok_and(|o| list.iter().any(|a| a == o)) => {
                    // An origin the operator listed may send credentials
                    // (`withCredentials`, a gateway's cookie), as with
                    // Mercure; browsers never allow them with `*`.
                    headers.insert(
                        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                        HeaderValue::from_static("true"),
                    );
                    o.clone()
                }
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
