//! The router: `(method, path)` → [`Route`], or the `400`, `404` or `405`
//! decided in this one place.
//!
//! Paths are split into segments and each segment is percent-decoded before
//! matching, so `/feed/..%2F..` is the channel `../..` (then refused as an
//! invalid name), never a path trick.

use hyper::Method;

use crate::error::ErrorCode;
use crate::error::{ApiError, escape};

/// What a request asks for. Names are still raw text here: handlers
/// validate them into `pere_core` types (and answer `400`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /`: PERE's greeting.
    Root,
    /// A page or script of `web/`.
    Static(&'static str),
    /// `GET /healthz`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// `POST /push/:channel`.
    Push(String),
    /// `GET /feed/:channel` or `GET /feed?channel=…`.
    Feed(Option<String>),
    /// `POST /feedback/:channel`.
    Feedback(String),
    /// `GET /receipts/:channel/:id`.
    Receipt(String, String),
    /// `GET /receipts/:channel` (SSE).
    ReceiptStream(String),
    /// `GET /admin/connections`.
    AdminConnections,
    /// `GET /admin/channels`.
    AdminChannels,
    /// `GET /admin/events/:channel`.
    AdminEvents(String),
    /// `GET /admin/devices/:channel`.
    AdminDevices(String),
    /// `GET` or `DELETE /admin/devices/:channel/:device`.
    AdminDevice(String, String),
    /// `GET /admin/tokens`: tokens by fingerprint, with their grants.
    AdminTokens,
    /// `PUT` or `DELETE /admin/tokens/:token`.
    AdminToken(String),
    /// `OPTIONS` on any endpoint: a CORS preflight.
    Preflight,
}

/// Files of `web/` served at the root, by path segment.
pub const STATIC_FILES: &[&str] = &["subscriber.html", "pere.js", "dashboard.html"];

const GET: &str = "GET, HEAD, OPTIONS";
const POST: &str = "POST, OPTIONS";
const GET_DELETE: &str = "GET, HEAD, DELETE, OPTIONS";
const PUT_DELETE: &str = "PUT, DELETE, OPTIONS";
/// Whether `path` is under `/admin/tokens/`, however its first two
/// segments are escaped: its last segment is a token, which errors never
/// repeat.
fn carries_token(path: &str) -> bool {
    let mut segments = path.strip_prefix('/').unwrap_or(path).split('/');
    let mut fixed = || segments.next().and_then(|s| percent_decode(s, false).ok());
    fixed().as_deref() == Some("admin")
        && fixed().as_deref() == Some("tokens")
        && segments.next().is_some()
}

/// Routes a request.
///
/// # Errors
/// `400 invalid_path` for undecodable percent-escapes, `404 not_found`,
/// `405 method_not_allowed` (with the `Allow` list).
pub fn route(method: &Method, path: &str) -> Result<Route, ApiError> {
    if carries_token(path) {
        // The last segment is a token (a secret): an error about this path
        // must not echo it back, nor put it in a log line that quotes it.
        return route_path(method, path).map_err(|err| ApiError {
            message: match err.code {
                ErrorCode::MethodNotAllowed => format!(
                    "{} is not allowed on /admin/tokens/:token (allowed: {PUT_DELETE})",
                    escape(method.as_str())
                ),
                ErrorCode::NotFound => "nothing is served at this /admin/tokens/… path".into(),
                _ => "the token in the path is not valid percent-encoded UTF-8".into(),
            },
            ..err
        });
    }
    route_path(method, path)
}

fn route_path(method: &Method, path: &str) -> Result<Route, ApiError> {
    if method == Method::OPTIONS && path == "*" {
        // `OPTIONS *`: what the server as a whole allows.
        return Ok(Route::Preflight);
    }
    let segments = split(path)?;
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (route, allow) = match segs.as_slice() {
        [] => (Route::Root, GET),
        ["healthz"] => (Route::Health, GET),
        ["metrics"] => (Route::Metrics, GET),
        [file] if STATIC_FILES.contains(file) => {
            let name = STATIC_FILES
                .iter()
                .find(|f| *f == file)
                .copied()
                .unwrap_or_default();
            (Route::Static(name), GET)
        }
        ["push", channel] => (Route::Push(channel.to_string()), POST),
        ["feed"] => (Route::Feed(None), GET),
        ["feed", channel] => (Route::Feed(Some(channel.to_string())), GET),
        ["feedback", channel] => (Route::Feedback(channel.to_string()), POST),
        ["receipts", channel] => (Route::ReceiptStream(channel.to_string()), GET),
        ["receipts", channel, id] => (Route::Receipt(channel.to_string(), id.to_string()), GET),
        ["admin", "connections"] => (Route::AdminConnections, GET),
        ["admin", "channels"] => (Route::AdminChannels, GET),
        ["admin", "events", channel] => (Route::AdminEvents(channel.to_string()), GET),
        ["admin", "devices", channel] => (Route::AdminDevices(channel.to_string()), GET),
        ["admin", "devices", channel, device] => (
            Route::AdminDevice(channel.to_string(), device.to_string()),
            GET_DELETE,
        ),
        ["admin", "tokens"] => (Route::AdminTokens, GET),
        ["admin", "tokens", token] => (Route::AdminToken(token.to_string()), PUT_DELETE),
        _ => return Err(not_found(&segs, path)),
    };
    if method == Method::OPTIONS {
        return Ok(Route::Preflight);
    }
    let allowed = match allow {
        GET => method == Method::GET || method == Method::HEAD,
        POST => method == Method::POST,
        PUT_DELETE => method == Method::PUT || method == Method::DELETE,
        _ => method == Method::GET || method == Method::HEAD || method == Method::DELETE,
    };
    if allowed {
        Ok(route)
    } else {
        Err(ApiError::method_not_allowed(method.as_str(), path, allow))
    }
}

/// `404`, with a hint for the paths people try first: a channel written
/// with `/` between its segments (`/push/orders/eu`), or a route without
/// its channel (issue 18.9: a bare 404 does not say what to do).
fn not_found(segs: &[&str], path: &str) -> ApiError {
    let hint = match segs {
        [route @ ("push" | "feed" | "feedback"), rest @ ..] if rest.len() > 1 => Some(format!(
            "channel segments are separated by `.`, not `/`: try `/{route}/{}`",
            rest.join(".")
        )),
        ["receipts", rest @ .., id] if rest.len() > 1 && id.bytes().all(|b| b.is_ascii_digit()) => {
            Some(format!(
                "channel segments are separated by `.`, not `/`: try `/receipts/{}/{id}`",
                rest.join(".")
            ))
        }
        [route @ ("push" | "feedback" | "receipts")] => {
            Some(format!("name a channel: `/{route}/CHANNEL`"))
        }
        ["admin", "events" | "devices", rest @ ..] if rest.len() > 1 => {
            Some("admin paths take one channel (segments separated by `.`): `/admin/events/CHANNEL`, `/admin/devices/CHANNEL[/DEVICE]`".to_string())
        }
        ["admin"] | ["admin", _] => Some(
            "the admin endpoints are /admin/connections, /admin/channels, /admin/events/CHANNEL, /admin/devices/CHANNEL and /admin/tokens".to_string(),
        ),
        _ => None,
    };
    match hint {
        None => ApiError::not_found(path),
        Some(hint) => ApiError {
            message: format!("nothing is served at `{}`: {}", escape(path), escape(&hint)),
            ..ApiError::not_found(path)
        },
    }
}

/// Query parameters a route understands, beyond which a request is `400
/// unknown_parameter` (issue 18.9: `tiemout=5` was silently ignored);
/// `None` for routes that take any. Event streams take any: browsers'
/// EventSource wrappers and proxies add cache-busting parameters, and a
/// stream must not break over one. `_` is jQuery's cache buster
/// (`cache: false`), accepted on every `GET`.
pub fn known_params(route: &Route) -> Option<&'static [&'static str]> {
    Some(match route {
        Route::Root
        | Route::Static(_)
        | Route::Health
        | Route::Metrics
        | Route::Feed(_)
        | Route::ReceiptStream(_)
        | Route::Preflight => return None,
        Route::Push(_) => &["event", "wait", "timeout", "device", "access_token"],
        Route::Feedback(_) => &["device", "access_token"],
        Route::AdminEvents(_) => &["after", "limit", "access_token", "_"],
        Route::Receipt(..)
        | Route::AdminConnections
        | Route::AdminChannels
        | Route::AdminDevices(_)
        | Route::AdminDevice(..)
        | Route::AdminTokens => &["access_token", "_"],
        Route::AdminToken(_) => &["access_token"],
    })
}

/// Checks `query` against [`known_params`]: the first unknown parameter is
/// `400 unknown_parameter`, naming it, the known ones, and the closest one
/// when it looks like a typo.
///
/// # Errors
/// `400 unknown_parameter`.
pub fn check_params(route: &Route, query: &[(String, String)]) -> Result<(), ApiError> {
    let Some(known) = known_params(route) else {
        return Ok(());
    };
    let Some((unknown, _)) = query.iter().find(|(k, _)| !known.contains(&k.as_str())) else {
        return Ok(());
    };
    let listed: Vec<&str> = known.iter().copied().filter(|k| *k != "_").collect();
    let closest = listed
        .iter()
        .map(|k| (edit_distance(unknown, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min();
    let mut message = format!("unknown query parameter `{}`", escape(unknown));
    if let Some((_, k)) = closest {
        message.push_str(&format!(": did you mean `{k}`?"));
    }
    message.push_str(&format!(" (this endpoint takes: {})", listed.join(", ")));
    Err(ApiError::new(ErrorCode::UnknownParameter, message))
}

/// Levenshtein distance, for "did you mean" (names are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Splits a path into percent-decoded segments (`/` → none).
fn split(path: &str) -> Result<Vec<String>, ApiError> {
    let Some(rest) = path.strip_prefix('/') else {
        // `GET healthz` parses as an authority with no path at all.
        let why = if path.is_empty() {
            "the request target is not a path (it must start with `/`)".to_string()
        } else {
            format!("the path `{}` does not start with `/`", escape(path))
        };
        return Err(ApiError::new(ErrorCode::InvalidPath, why));
    };
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    rest.split('/').map(|s| percent_decode(s, false)).collect()
}

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`, for
/// query strings); the result must be UTF-8.
///
/// # Errors
/// `400 invalid_path` for a malformed escape or non-UTF-8 bytes.
pub fn percent_decode(text: &str, plus_is_space: bool) -> Result<String, ApiError> {
    if !text.contains(['%', '+']) {
        return Ok(text.to_string());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| {
                    // Digits only: `from_str_radix` also takes a sign.
                    if !h.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
                });
                let Some(byte) = hex else {
                    return Err(ApiError::new(
                        ErrorCode::InvalidPath,
                        format!("`{}` has a malformed percent-escape", escape(text)),
                    ));
                };
                out.push(byte);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidUtf8,
            format!("`{}` does not decode to UTF-8 text", escape(text)),
        )
    })
}

/// Parses a query string into decoded `(key, value)` pairs, in order.
///
/// # Errors
/// `400` for malformed escapes or non-UTF-8 text.
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(k, true)?;
            let value = percent_decode(v, true).map_err(|err| {
                if key == "access_token" {
                    // Never quote a token, even a malformed one.
                    ApiError {
                        message: "access_token is not valid percent-encoded UTF-8".into(),
                        ..err
                    }
                } else {
                    err
                }
            })?;
            Ok((key, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hyper::StatusCode;

    fn ok(method: Method, path: &str) -> Route {
        route(&method, path).unwrap()
    }

    fn status(method: Method, path: &str) -> StatusCode {
        route(&method, path).unwrap_err().status()
    }

    #[test]
    fn a_channel_written_with_slashes_gets_a_hint() {
        let err = route(&Method::POST, "/push/orders/eu").unwrap_err();
        assert_eq!(err.status(), StatusCode::NOT_FOUND);
        assert!(err.message.contains("`/push/orders.eu`"), "{}", err.message);
        let err = route(&Method::GET, "/receipts/orders/eu/12").unwrap_err();
        assert!(
            err.message.contains("`/receipts/orders.eu/12`"),
            "{}",
            err.message
        );
        let err = route(&Method::POST, "/push").unwrap_err();
        assert!(err.message.contains("/push/CHANNEL"), "{}", err.message);
        let err = route(&Method::GET, "/nothing/here").unwrap_err();
        assert_eq!(err.message, "nothing is served at `/nothing/here`");
    }

    #[test]
    fn unknown_query_parameters_are_refused_on_api_endpoints_only() {
        let q = |s: &str| parse_query(s).unwrap();
        let push = Route::Push("c".into());
        assert!(check_params(&push, &q("wait=acked&timeout=5")).is_ok());
        let err = check_params(&push, &q("wait=acked&tiemout=5")).unwrap_err();
        assert_eq!(
            (err.status(), err.code.as_str()),
            (StatusCode::BAD_REQUEST, "unknown_parameter")
        );
        assert!(
            err.message.contains("`tiemout`: did you mean `timeout`?"),
            "{}",
            err.message
        );
        let err = check_params(&Route::AdminChannels, &q("x=1")).unwrap_err();
        assert!(!err.message.contains("did you mean"), "{}", err.message);
        assert!(check_params(&Route::AdminChannels, &q("_=1700000000")).is_ok());
        for stream in [Route::Feed(None), Route::ReceiptStream("c".into())] {
            assert!(check_params(&stream, &q("_=1&nocache=2&t=3")).is_ok());
        }
        assert_eq!(edit_distance("tiemout", "timeout"), 2);
        assert_eq!(edit_distance("", "ab"), 2);
    }

    #[test]
    fn routes_pere_endpoints() {
        assert_eq!(ok(Method::GET, "/"), Route::Root);
        assert_eq!(
            ok(Method::POST, "/push/CHANNEL_1"),
            Route::Push("CHANNEL_1".into())
        );
        assert_eq!(
            ok(Method::GET, "/feed/a.*"),
            Route::Feed(Some("a.*".into()))
        );
        assert_eq!(ok(Method::GET, "/feed"), Route::Feed(None));
        assert_eq!(ok(Method::POST, "/feedback/c"), Route::Feedback("c".into()));
        assert_eq!(
            ok(Method::GET, "/receipts/c/12"),
            Route::Receipt("c".into(), "12".into())
        );
        assert_eq!(
            ok(Method::GET, "/receipts/c"),
            Route::ReceiptStream("c".into())
        );
        assert_eq!(
            ok(Method::GET, "/admin/connections"),
            Route::AdminConnections
        );
        assert_eq!(
            ok(Method::GET, "/admin/events/c"),
            Route::AdminEvents("c".into())
        );
        assert_eq!(
            ok(Method::GET, "/admin/devices/c"),
            Route::AdminDevices("c".into())
        );
        assert_eq!(
            ok(Method::DELETE, "/admin/devices/c/d"),
            Route::AdminDevice("c".into(), "d".into())
        );
        assert_eq!(
            ok(Method::GET, "/subscriber.html"),
            Route::Static("subscriber.html")
        );
        assert_eq!(ok(Method::OPTIONS, "/push/c"), Route::Preflight);
        assert_eq!(ok(Method::OPTIONS, "*"), Route::Preflight);
        assert_eq!(ok(Method::HEAD, "/healthz"), Route::Health);
    }

    #[test]
    fn wrong_methods_get_405_with_allow() {
        let err = route(&Method::GET, "/push/c").unwrap_err();
        assert_eq!(err.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(err.allow, Some("POST, OPTIONS"));
        assert_eq!(
            status(Method::POST, "/feed/c"),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            status(Method::DELETE, "/admin/connections"),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            status(Method::PUT, "/feedback/c"),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn unknown_paths_are_404() {
        for p in [
            "/nope",
            "/push",
            "/push/a/b",
            "/feed/c/",
            "/admin",
            "/admin/x",
            "//",
        ] {
            assert_eq!(status(Method::GET, p), StatusCode::NOT_FOUND, "{p}");
        }
    }

    #[test]
    fn segments_are_percent_decoded_before_matching() {
        assert_eq!(ok(Method::POST, "/push/a%2Fb"), Route::Push("a/b".into()));
        assert_eq!(
            ok(Method::GET, "/feed/..%2F.."),
            Route::Feed(Some("../..".into()))
        );
        assert_eq!(ok(Method::POST, "/push/%00"), Route::Push("\0".into()));
        assert_eq!(status(Method::POST, "/push/%zz"), StatusCode::BAD_REQUEST);
        assert_eq!(status(Method::POST, "/push/%ff"), StatusCode::BAD_REQUEST);
        assert_eq!(status(Method::POST, "/push/%4"), StatusCode::BAD_REQUEST);
        // A sign is no hex digit (`from_str_radix` takes one).
        for text in ["%+1", "%-f", "/feed/%+0", "a%+a"] {
            assert!(percent_decode(text, false).is_err(), "{text}");
            assert!(percent_decode(text, true).is_err(), "{text}");
        }
    }

    #[test]
    fn token_paths_route_and_their_errors_never_repeat_the_token() {
        assert_eq!(ok(Method::GET, "/admin/tokens"), Route::AdminTokens);
        assert_eq!(
            ok(Method::PUT, "/admin/tokens/s3cr3t-t0ken-value"),
            Route::AdminToken("s3cr3t-t0ken-value".into())
        );
        assert_eq!(
            ok(Method::DELETE, "/admin/tokens/s3cr3t-t0ken-value"),
            Route::AdminToken("s3cr3t-t0ken-value".into())
        );
        for (method, path) in [
            (Method::GET, "/admin/tokens/s3cr3t-t0ken-value"),
            (Method::PUT, "/admin/tokens/s3cr3t-t0ken-value/x"),
            (Method::PUT, "/admin/tokens/s3cr3t-t0ken-value%zz"),
            // The same path with its fixed segments escaped.
            (Method::GET, "/admin/%74okens/s3cr3t-t0ken-value"),
            (Method::GET, "/%61dmin/tokens/s3cr3t-t0ken-value"),
        ] {
            let err = route(&method, path).unwrap_err();
            assert!(!err.message.contains("s3cr3t"), "{}", err.message);
        }
        let err = parse_query("access_token=s3cr3t%zz").unwrap_err();
        assert!(!err.message.contains("s3cr3t"), "{}", err.message);
    }

    #[test]
    fn query_strings_decode_plus_and_repeat_keys() {
        let q = parse_query("channel=a&channel=b.*&status=rx+ok&x&lastEventId=%31").unwrap();
        assert_eq!(
            q,
            vec![
                ("channel".into(), "a".into()),
                ("channel".into(), "b.*".into()),
                ("status".into(), "rx ok".into()),
                ("x".into(), "".into()),
                ("lastEventId".into(), "1".into()),
            ]
        );
        assert!(parse_query("a=%ff").is_err());
    }
}
