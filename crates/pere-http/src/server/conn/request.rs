//! What the connection does around a request's handler: the head-size limit
//! over HTTP/2 (hyper enforces it over HTTP/1), and the end of a body the
//! handler did not read.
//!
//! A handler may answer before reading the body (a bad channel name, a bad
//! device, a wrong method). Over HTTP/1.1 the unread body is still on the
//! connection, in front of the client's next request. hyper drops what it
//! already buffered and otherwise closes the connection after the answer,
//! an answer that did not say `Connection: close`: the client sends its
//! next request into a closed socket and gets `ECONNRESET` (issue 13). So
//! an unread body comes back here ([`RequestBody`]'s drop hands it to a
//! [`Leftover`]) and, before the answer leaves, is either read and dropped
//! (when it is small and on its way: the connection stays usable), or the
//! answer says `Connection: close` and the connection is closed gently
//! (see `conn::close`).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, Version};
use pere_core::EventStore;

use crate::error::ApiError;
use crate::error::ErrorCode;
use crate::server::app::App;
use crate::server::body::{Body, Leftover, RequestBody, Unread};
use crate::server::handlers;

/// Most bytes of an unread body read and dropped to keep its connection: a
/// default `--max-payload`. Beyond it the answer closes the connection.
const DRAIN_BYTES: u64 = 64 * 1024;
/// Longest wait for the rest of an unread body, before the answer goes out
/// with `Connection: close` instead.
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Serves one request: its handler's answer, with what the connection adds
/// around it (see the module docs).
pub(super) async fn serve<S: EventStore>(
    app: Arc<App<S>>,
    req: Request<Incoming>,
    max_head: usize,
) -> Response<Body> {
    if let Some((err, mut refused)) = oversized_head(&req, max_head) {
        app.metrics.count_error(&err);
        app.metrics.count(refused.status());
        let origin = req.headers().get(hyper::header::ORIGIN);
        handlers::add_cors(&app.config.cors, origin, refused.headers_mut());
        return refused;
    }
    let head = Head::of(&req);
    let http1 = req.version() < Version::HTTP_2;
    let is_head = req.method() == hyper::Method::HEAD;
    let http10 = req.version() == Version::HTTP_10;
    let leftover = Leftover::default();
    let req = req.map(|body| RequestBody::new(body, &leftover));
    let mut response = handlers::handle(app, req).await;
    if http1 && matches!(response.body(), Body::Sse(_)) {
        // An event stream ends when the server ends it (too slow, revoked,
        // membership removed, a JWT's exp): the connection ends with it,
        // so that a client that watches the socket rather than the body's
        // last chunk (sseclient, raw clients) reconnects at once, not at
        // --idle-timeout. The direct path does the same.
        response.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
    if let Some(unread) = leftover.take() {
        // Boxed: rare, and its state would otherwise weigh on every
        // request's future.
        Box::pin(finish(&head, unread, &mut response)).await;
    }
    if is_head {
        without_body(&mut response);
    }
    if http10 && closes(&response) {
        // Said as HTTP/1.0: to an HTTP/1.0 client that asked for
        // keep-alive, hyper adds `keep-alive` to an HTTP/1.1 answer's
        // `Connection: close` ("close, keep-alive"), which a client may
        // read as a socket to reuse; an HTTP/1.0 answer without
        // `keep-alive` it simply closes.
        *response.version_mut() = Version::HTTP_10;
    }
    response
}

/// Whether the answer says `Connection: close`.
fn closes<B>(response: &Response<B>) -> bool {
    response
        .headers()
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("close"))
}

/// The answer to a `HEAD`: a `GET`'s status and headers, with its length,
/// and no body. hyper leaves the body out over HTTP/1.1 itself, but over
/// HTTP/2 it sent it as DATA, which the protocol forbids after a `HEAD`:
/// curl and Node reset the stream (`PROTOCOL_ERROR`).
fn without_body(response: &mut Response<Body>) {
    let length = http_body::Body::size_hint(response.body()).exact();
    if let Some(length) = length
        && !response.headers().contains_key(header::CONTENT_LENGTH)
    {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    *response.body_mut() = Body::empty();
}

/// The sentence of a `431`, the same over HTTP/1 and HTTP/2.
pub(super) fn head_too_large(max_head: usize) -> String {
    format!("the request head (request line and headers) is larger than {max_head} bytes")
}

/// The `431` of a request whose head is larger than `max_head` bytes.
///
/// Over HTTP/2, counted as HTTP/2 counts it (RFC 9113 §6.5.2: name, value
/// and 32 per field, pseudo-fields included); hyper's HTTP/2 limit is set
/// higher (see `run`) so that what lies between gets this JSON answer
/// rather than the bodyless `431` of the HTTP/2 library. Over HTTP/1, as
/// its bytes (request line, `name: value` lines, blank line): hyper's read
/// buffer bounds only a connection's first head exactly, and a later one on
/// a kept-alive connection could reach about twice the limit.
fn oversized_head<B>(req: &Request<B>, max_head: usize) -> Option<(ApiError, Response<Body>)> {
    let size = if req.version() == Version::HTTP_2 {
        h2_head_size(req)
    } else {
        h1_head_size(req)
    };
    (size > max_head).then(|| {
        let err = ApiError::new(ErrorCode::HeadersTooLarge, head_too_large(max_head));
        let response = crate::server::response::error_response(&err);
        (err, response)
    })
}

fn h2_head_size<B>(req: &Request<B>) -> usize {
    const FIELD: usize = 32;
    let uri = req.uri();
    let pseudo = [
        Some((":method".len(), req.method().as_str().len())),
        uri.scheme_str().map(|s| (":scheme".len(), s.len())),
        uri.authority()
            .map(|a| (":authority".len(), a.as_str().len())),
        uri.path_and_query()
            .map(|p| (":path".len(), p.as_str().len())),
    ];
    pseudo
        .into_iter()
        .flatten()
        .map(|(name, value)| name + value + FIELD)
        .chain(
            req.headers()
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len() + FIELD),
        )
        .sum::<usize>()
}

/// At least the bytes the head took: `METHOD target HTTP/1.1\r\n`, each
/// `name: value\r\n`, `\r\n` (a client's extra spaces not counted).
fn h1_head_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target = match uri.scheme() {
        Some(_) => uri.to_string().len(),
        None => uri.path_and_query().map_or(1, |p| p.as_str().len()),
    };
    let line = req.method().as_str().len() + 1 + target + 1 + "HTTP/1.1\r\n".len();
    line + req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum::<usize>()
        + 2
}

/// What the service notes of a request's head before its handler takes it.
struct Head {
    http1: bool,
    /// `Expect: 100-continue`: the client may wait to be asked for the body.
    expects_continue: bool,
    content_length: Option<u64>,
}

impl Head {
    /// Notes what [`finish`] needs of `req`.
    fn of<B>(req: &Request<B>) -> Self {
        let headers = req.headers();
        Self {
            http1: req.version() < Version::HTTP_2,
            expects_continue: headers
                .get(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue")),
            content_length: headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        }
    }
}

/// Before `response` leaves, for a body its handler left unread: reads and
/// drops it when that keeps the connection (small, arriving, and the client
/// did not wait to be asked for it), else makes the answer say
/// `Connection: close`.
async fn finish(head: &Head, unread: Unread, response: &mut Response<Body>) {
    if !head.http1 {
        // An HTTP/2 stream's body is its own: dropping it costs nothing
        // to the connection's other streams.
        return;
    }
    // A body the handler began reading and dropped (too large, too slow,
    // invalid) is not worth more time; one it never asked for while the
    // client waited for `100 Continue` would only be solicited.
    let drainable = !unread.polled
        && !head.expects_continue
        && head.content_length.is_none_or(|n| n <= DRAIN_BYTES);
    if drainable && drain(unread.body).await {
        return;
    }
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

/// Reads `body` to its end and drops it, within [`DRAIN_BYTES`] and
/// [`DRAIN_TIME`]; whether it ended.
async fn drain(mut body: Incoming) -> bool {
    let read = async {
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return false;
            };
            if let Some(data) = frame.data_ref() {
                total += data.len() as u64;
                if total > DRAIN_BYTES {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_TIME, read)
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::StatusCode;

    #[test]
    fn an_http2_head_is_measured_as_http2_measures_it() {
        let req = |version| {
            Request::get("http://x/healthz")
                .version(version)
                .header("a", "b")
                .body(())
                .unwrap()
        };
        // :method GET, :scheme http, :authority x, :path /healthz, a: b,
        // each name + value + 32.
        let size = (7 + 3) + (7 + 4) + (10 + 1) + (5 + 8) + (1 + 1) + 5 * 32;
        assert!(oversized_head(&req(Version::HTTP_2), size).is_none());
        let (err, refused) = oversized_head(&req(Version::HTTP_2), size - 1).unwrap();
        assert_eq!(err.code, ErrorCode::HeadersTooLarge);
        assert_eq!(
            refused.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn an_http1_head_is_measured_as_its_bytes() {
        let req = |uri: &str| {
            Request::get(uri)
                .version(Version::HTTP_11)
                .header("host", "x")
                .header("a", "bc")
                .body(())
                .unwrap()
        };
        // GET /healthz?x=1 HTTP/1.1\r\n host: x\r\n a: bc\r\n \r\n
        let size = (3 + 1 + 12 + 1 + 10) + (4 + 2 + 1 + 2) + (1 + 2 + 2 + 2) + 2;
        assert_eq!(h1_head_size(&req("/healthz?x=1")), size);
        assert!(oversized_head(&req("/healthz?x=1"), size).is_none());
        assert!(oversized_head(&req("/healthz?x=1"), size - 1).is_some());
        // An absolute-form target counts whole.
        assert_eq!(
            h1_head_size(&req("http://x/healthz?x=1")),
            size + "http://x".len()
        );
    }
}
