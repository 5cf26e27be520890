//! `feedback_body`, `router` and `feed_head`: what the server reads from
//! a request (its route, query, headers and receipt body).

use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Uri};
use pere_core::{DeviceId, EventId, MAX_STATUS_LEN, Resume};
use pere_http::fuzzing::{device_of, header_str, read_receipts, resume_point};
use pere_http::server::router::{Route, parse_query, percent_decode, route};

use super::{
    Input, assert_api_error, assert_plain_headers, assert_routed, assert_target_as_sent, text,
};

// ---- feedback_body --------------------------------------------------------

const CONTENT_TYPES: [Option<&str>; 6] = [
    None,
    Some("application/json"),
    Some("application/x-www-form-urlencoded"),
    Some("text/plain"),
    Some("Application/JSON; charset=utf-8"),
    Some("multipart/form-data"),
];

const HEADER_IDS: [Option<&str>; 4] = [None, Some("7"), Some(""), Some("x7")];

/// Percent-encodes every byte but the unreserved ones; a space becomes `+`
/// when `plus` (form and query encoding).
fn percent_encode(text: &str, plus: bool) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        match b {
            b' ' if plus => out.push('+'),
            b if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') => {
                out.push(char::from(b));
            }
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The result a receipt with `id` and `status` must validate to.
fn expected_receipt(
    id: Result<EventId, &'static str>,
    status: &str,
) -> Result<(EventId, String), &'static str> {
    let id = id?;
    if status.len() > MAX_STATUS_LEN {
        return Err("status_too_long");
    }
    Ok((id, status.to_owned()))
}

/// `read_receipts` as comparable values: errors by code.
#[allow(clippy::type_complexity)]
fn receipts(
    body: &[u8],
    content_type: Option<&str>,
    header_id: Option<&str>,
) -> Result<(bool, Vec<Result<(EventId, String), &'static str>>), &'static str> {
    let result = read_receipts(body, content_type, header_id);
    match &result {
        Ok((_, items)) => {
            for item in items {
                match item {
                    Ok((_, status)) => assert!(status.len() <= MAX_STATUS_LEN),
                    Err(err) => assert_api_error(err, &[400]),
                }
            }
        }
        Err(err) => assert_api_error(err, &[400, 413]),
    }
    result
        .map(|(batch, items)| {
            (
                batch,
                items
                    .into_iter()
                    .map(|i| i.map_err(|e| e.code.as_str()))
                    .collect(),
            )
        })
        .map_err(|e| e.code.as_str())
}

/// `feedback_body`: the receipt body parser never panics, answers every
/// bad body with a PROTOCOL §8 error, and reads back exactly the receipts
/// PERE's clients write (JSON object, JSON batch, form), with the id
/// precedence of PROTOCOL §4.
///
/// Input: a selector byte (content type, header id), a `u64` event id,
/// then the body (also used as the status text of the round trips).
pub fn feedback_body(data: &[u8]) {
    let mut input = Input::new(data);
    let selector = usize::from(input.byte());
    let content_type = CONTENT_TYPES[selector % CONTENT_TYPES.len()];
    let header_id = HEADER_IDS[selector / CONTENT_TYPES.len() % HEADER_IDS.len()];
    let id = input.u64();
    let body = input.rest();

    // Arbitrary bytes.
    let is_json = content_type.is_some_and(|t| t.to_ascii_lowercase().contains("json"));
    match (
        receipts(body, content_type, header_id),
        std::str::from_utf8(body),
    ) {
        (Err(code), Err(_)) => assert_eq!(code, "invalid_utf8"),
        (_, Err(_)) => panic!("a body that is not UTF-8 was accepted"),
        (Ok((batch, items)), Ok(text)) => {
            let trimmed = text.trim();
            let json_like = is_json || trimmed.starts_with(['{', '[']);
            if batch {
                let value: serde_json::Value = serde_json::from_str(trimmed).expect("JSON");
                assert_eq!(value.as_array().map(Vec::len), Some(items.len()));
            } else {
                assert_eq!(items.len(), 1);
            }
            if !json_like {
                assert!(!batch, "a form body read as a batch");
            }
        }
        (Err(_), Ok(_)) => {}
    }

    // What PERE's clients send, with the body as the status text.
    let status = text(body);
    let status = status.as_ref();
    let header = match header_id {
        Some("") | None => None,
        Some(h) => Some(EventId::parse(h).map_err(|_| "invalid_event_id")),
    };
    let expected = expected_receipt(Ok(EventId(id)), status);

    let object = serde_json::json!({ "id": id.to_string(), "status": status }).to_string();
    assert_eq!(
        receipts(object.as_bytes(), content_type, header_id),
        Ok((false, vec![expected.clone()])),
        "JSON object {object:?}"
    );
    let numeric = serde_json::json!({ "id": id, "status": status }).to_string();
    assert_eq!(
        receipts(numeric.as_bytes(), content_type, header_id),
        Ok((false, vec![expected.clone()])),
        "JSON object {numeric:?}"
    );
    // Without a JSON id, the header gives it.
    let no_id = serde_json::json!({ "status": status }).to_string();
    let want = match header {
        Some(h) => expected_receipt(h, status),
        None => Err("missing_event_id"),
    };
    assert_eq!(
        receipts(no_id.as_bytes(), content_type, header_id),
        Ok((false, vec![want])),
        "JSON object {no_id:?}"
    );
    // A batch: each item on its own, and the headers play no part.
    let batch = serde_json::json!([
        { "id": id.to_string(), "status": status },
        { "id": "x" },
        { "status": status },
        status,
    ])
    .to_string();
    assert_eq!(
        receipts(batch.as_bytes(), content_type, header_id),
        Ok((
            true,
            vec![
                expected.clone(),
                Err("invalid_event_id"),
                Err("missing_event_id"),
                Err("invalid_body"),
            ]
        )),
        "JSON batch {batch:?}"
    );
    // PERE's web page and subscriber.rb: a form, the header id first.
    if !is_json {
        let form = format!(
            "status={}&last_event_id={id}",
            percent_encode(status, selector % 2 == 0)
        );
        let want = match header {
            Some(h) => expected_receipt(h, status),
            None => expected.clone(),
        };
        assert_eq!(
            receipts(form.as_bytes(), content_type, header_id),
            Ok((false, vec![want])),
            "form {form:?}"
        );
    }
    // A page's `FormData`: the same fields, multipart, framed here as a
    // browser frames them (RFC 7578) by a boundary the status lacks.
    let mut boundary = String::from("pere");
    while status.contains(boundary.as_str()) && boundary.len() < 70 {
        boundary.push('x');
    }
    if !status.contains(boundary.as_str()) {
        let part = |name: &str, value: &str| {
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
        };
        let body = format!(
            "{}{}--{boundary}--\r\n",
            part("status", status),
            part("last_event_id", &id.to_string())
        );
        let want = match header {
            Some(h) => expected_receipt(h, status),
            None => expected,
        };
        let content_type = format!("multipart/form-data; boundary={boundary}");
        assert_eq!(
            receipts(body.as_bytes(), Some(&content_type), header_id),
            Ok((false, vec![want])),
            "multipart {body:?}"
        );
    }
}

// ---- router ---------------------------------------------------------------

const METHODS: [Method; 8] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::OPTIONS,
    Method::PATCH,
    Method::TRACE,
];

/// The route a request must take when it is allowed.
fn allowed_methods(route: &Route) -> &'static [Method] {
    match route {
        Route::Push(_) | Route::Feedback(_) => &[Method::POST],
        Route::AdminDevice(..) => &[Method::GET, Method::HEAD, Method::DELETE],
        Route::Preflight => &[Method::OPTIONS],
        _ => &[Method::GET, Method::HEAD],
    }
}

fn check_route(method: &Method, path: &str) {
    match route(method, path) {
        Ok(found) => {
            if method == Method::OPTIONS {
                assert_eq!(found, Route::Preflight);
            } else {
                assert!(
                    allowed_methods(&found).contains(method),
                    "{method} {path:?} routed to {found:?}"
                );
                assert_eq!(route(&Method::OPTIONS, path), Ok(Route::Preflight));
            }
        }
        Err(err) => {
            assert_api_error(&err, &[400, 404, 405]);
            if let Some(allow) = err.allow {
                for allowed in allow.split(", ") {
                    let allowed = Method::from_bytes(allowed.as_bytes()).expect("a method");
                    assert!(route(&allowed, path).is_ok(), "{allowed} {path:?}");
                }
                assert!(!allow.split(", ").any(|m| m == method.as_str()));
            } else if path != "*" {
                // Only the path decided: every method gets the same answer.
                assert_eq!(
                    route(&Method::GET, path).map_err(|e| e.code.as_str()),
                    Err(err.code.as_str())
                );
            }
        }
    }
}

fn check_query(query: &str) {
    match parse_query(query) {
        Ok(pairs) => {
            // Decoded pairs encode back to a query that reads the same.
            let again: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{}={}", percent_encode(k, true), percent_encode(v, true)))
                .collect();
            let again = again.join("&");
            assert_eq!(parse_query(&again).as_ref(), Ok(&pairs), "{again:?}");
        }
        Err(err) => assert_api_error(&err, &[400]),
    }
}

/// The request's device and resume point as the `/feed` handler reads them
/// from its headers and query: what PROTOCOL §1 and §3 say, and errors
/// that are §8 400s with printable messages.
fn check_headers(headers: &HeaderMap, query: &[(String, String)]) {
    let first = |key: &str| {
        query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let visible = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().ok().map(str::trim).ok_or("invalid_header"))
            .transpose()
    };
    for name in ["device", "last-event-id"] {
        let got = header_str(headers, name);
        if let Err(err) = &got {
            assert_api_error(err, &[400]);
        }
        assert_eq!(got.map_err(|e| e.code.as_str()), visible(name), "{name}");
    }

    // PROTOCOL §1: the header wins over the query; invalid is 400 either way.
    let expected = match headers.get("device") {
        Some(v) => match v.to_str() {
            Ok(v) => DeviceId::new(v.trim())
                .map(Some)
                .map_err(|_| "invalid_device"),
            Err(_) => Err("invalid_device"),
        },
        None => first("device")
            .map(|v| DeviceId::new(v).map_err(|_| "invalid_device"))
            .transpose(),
    };
    let got = device_of(headers, query);
    if let Err(err) = &got {
        assert_api_error(err, &[400]);
    }
    assert_eq!(got.map_err(|e| e.code.as_str()), expected);

    // PROTOCOL §3: Last-Event-ID, lastEventId, replay=all, else the cursor.
    let Ok(header_id) = header_str(headers, "last-event-id") else {
        return;
    };
    let header_id = header_id.filter(|v| !v.is_empty());
    let id = |raw: &str| {
        EventId::parse(raw)
            .map(Resume::After)
            .map_err(|_| "invalid_event_id")
    };
    let expected = match (header_id, first("lastEventId").filter(|v| !v.is_empty())) {
        (Some(raw), _) | (None, Some(raw)) => id(raw),
        (None, None) => match first("replay") {
            None => Ok(Resume::Auto),
            Some("all") => Ok(Resume::All),
            Some(_) => Err("invalid_parameter"),
        },
    };
    let got = resume_point(header_id, query);
    if let Err(err) = &got {
        assert_api_error(err, &[400]);
    }
    assert_eq!(got.map_err(|e| e.code.as_str()), expected);
}

/// `router`: routing and query parsing never panic, answer 400/404/405 with
/// a PROTOCOL §8 error and a correct `Allow`, agree with `OPTIONS`, and
/// percent-encoded names come back exactly; the request headers the
/// handlers read (`device`, `Last-Event-ID`) give the device and resume
/// point PROTOCOL §1 and §3 define, or a §8 error.
///
/// Input: a method selector byte, a header selector byte, then the request
/// target, the `device` header and the `Last-Event-ID` header, separated by
/// `0xFF`.
pub fn router(data: &[u8]) {
    let mut input = Input::new(data);
    let selector = input.byte();
    let with_headers = input.byte();
    let target = input.field();
    let device = input.field();
    let last_event_id = input.rest();
    let method = match METHODS.get(usize::from(selector)) {
        Some(method) => method.clone(),
        None => Method::from_bytes(&[b'A' + selector % 26, b'X']).unwrap_or(Method::GET),
    };
    let raw = text(target);
    check_route(&method, &raw);
    if let Some((path, query)) = raw.split_once('?') {
        check_route(&method, path);
        check_query(query);
    }
    // What the server sees: the target as hyper parses it.
    if let Ok(uri) = Uri::try_from(target) {
        check_route(&method, uri.path());
        if let Some(query) = uri.query() {
            check_query(query);
            if let Ok(query) = parse_query(query) {
                let mut headers = HeaderMap::new();
                // hyper refuses CR, LF and NUL in a header; anything else,
                // obs-text included, reaches the handlers.
                for (bit, name, value) in
                    [(1, "device", device), (2, "last-event-id", last_event_id)]
                {
                    if with_headers & bit != 0
                        && let Ok(value) = HeaderValue::from_bytes(value)
                    {
                        headers.insert(name, value);
                    }
                }
                check_headers(&headers, &query);
            }
        }
    }

    // Any name, percent-encoded into a path or a query, comes back exactly.
    let name = raw.as_ref();
    let encoded = percent_encode(name, false);
    assert_eq!(percent_decode(&encoded, false).as_deref(), Ok(name));
    let lower_hex: String = name.bytes().map(|b| format!("%{b:02x}")).collect();
    assert_eq!(percent_decode(&lower_hex, false).as_deref(), Ok(name));
    let path = |template: &str| template.replace('N', &encoded);
    assert_eq!(
        route(&Method::POST, &path("/push/N")),
        Ok(Route::Push(name.to_owned()))
    );
    assert_eq!(
        route(&Method::GET, &path("/feed/N")),
        Ok(Route::Feed(Some(name.to_owned())))
    );
    assert_eq!(
        route(&Method::GET, &path("/receipts/N/N")),
        Ok(Route::Receipt(name.to_owned(), name.to_owned()))
    );
    assert_eq!(
        route(&Method::DELETE, &path("/admin/devices/N/N")),
        Ok(Route::AdminDevice(name.to_owned(), name.to_owned()))
    );
    let query = format!("channel={}&x", percent_encode(name, true));
    assert_eq!(
        parse_query(&query),
        Ok(vec![
            ("channel".to_owned(), name.to_owned()),
            ("x".to_owned(), String::new())
        ])
    );
}

// ---- feed_head ---------------------------------------------------------------

/// `feed_head`: the parser that decides whether a connection's first bytes
/// are a `GET /feed` the server answers without hyper never panics, never
/// takes a head it has not wholly received, and takes only what it is
/// meant to: a complete HTTP/1.1 `GET` of a feed route, without body,
/// upgrade or `Connection: close`, whose request is exactly what the
/// bytes say.
///
/// Input: the bytes a client sent first (the server peeks at most 4 KiB).
pub fn feed_head(data: &[u8]) {
    use pere_http::fuzzing::feed_head as parse;
    let data = &data[..data.len().min(4096)];
    let Some((request, channel, len)) = parse(data) else {
        return;
    };
    assert!(len <= data.len(), "head longer than the input");
    let head = &data[..len];
    assert!(
        head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n"),
        "a head ends with a blank line"
    );
    assert!(head.starts_with(b"GET /feed"));
    assert_routed(&request, Method::GET, Route::Feed(channel.clone()));
    assert_target_as_sent(&request, head);
    for value in request.headers().get_all("content-length") {
        assert_eq!(value.as_bytes(), b"0", "no body");
    }
    assert_plain_headers(request.headers(), head);
    // What follows the head does not change it, and less of it is no head.
    let mut longer = head.to_vec();
    longer.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    let again = parse(&longer).expect("the same head with more after it");
    assert_eq!(again.2, len);
    assert_eq!(again.0.uri(), request.uri());
    assert_eq!(again.0.headers(), request.headers());
    for cut in [len - 1, len / 2] {
        assert!(parse(&head[..cut]).is_none(), "a partial head taken");
    }
}
