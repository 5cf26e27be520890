//! The properties PERE's fuzz targets check: one function per target.
//!
//! This file is shared. The fuzz targets (`fuzz/fuzz_targets/*.rs`) call it
//! through the `pere_fuzz` crate, and the stable regression test
//! (`crates/pere-http/tests/fuzz_regressions.rs`) includes it with `#[path]`
//! and replays every file of `fuzz/corpus/` and `fuzz/regressions/` through
//! the same functions, so CI checks exactly what the fuzzer checked.
//!
//! Each function takes raw bytes, cuts them into fields with [`Input`] (no
//! `arbitrary` crate, so a saved input means the same thing everywhere),
//! panics when a property fails, and must not panic otherwise. Most live
//! here; `segment_scan` and `receipt_request` have their own files.

use std::borrow::Cow;

mod receipt_request;
mod segment_scan;
pub use receipt_request::receipt_request;
pub use segment_scan::segment_scan;

use bytes::BytesMut;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, StatusCode, Uri};
use pere_core::fuzzing::{
    DecodeError, FRAME_HEADER, MAX_RECORD, Stored, checksum, decode_record, encode_record, frame,
};
use pere_core::{
    ChannelName, DeviceId, Event, EventId, EventType, MAX_STATUS_LEN, Pattern, Record, Resume,
    Timestamp,
};
use pere_http::ApiError;
use pere_http::fuzzing::{device_of, header_str, read_receipts, resume_point};
use pere_http::server::router::{Route, parse_query, percent_decode, route};
use pere_http::sse::{
    DEFAULT_MAX_LINE, Decoder, EncodeError, Item, SseEvent, encode_comment, encode_event,
    encode_retry, event_frame,
};

/// A fuzz input, read front to back as fields; reading past the end gives
/// zeros and empty slices, never a panic.
pub struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    /// Reads `bytes` from the start.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// The next byte, or 0.
    pub fn byte(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    /// The next two bytes as a little-endian `u16`.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// The next eight bytes as a little-endian `u64`.
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte();
        }
        u64::from_le_bytes(b)
    }

    /// The next `n` bytes, or fewer at the end.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.bytes.split_at(n.min(self.bytes.len()));
        self.bytes = rest;
        head
    }

    /// The bytes up to the next `0xFF` (which no UTF-8 text contains), and
    /// the separator is skipped.
    pub fn field(&mut self) -> &'a [u8] {
        match self.bytes.iter().position(|&b| b == 0xFF) {
            Some(end) => {
                let field = &self.bytes[..end];
                self.bytes = &self.bytes[end + 1..];
                field
            }
            None => self.rest(),
        }
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
}

/// Bytes as text, invalid UTF-8 replaced as a browser would.
fn text(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// Asserts that text meant for an error message or a log line shows every
/// character that could hide or forge text escaped: no control character,
/// and nothing [`char::escape_debug`] would escape (line and paragraph
/// separators, bidi overrides, combining marks).
fn assert_printable(message: &str) {
    for c in message.chars() {
        let escaped = !matches!(c, '\'' | '"' | '\\') && c.escape_debug().nth(1).is_some();
        assert!(
            !c.is_control() && !escaped,
            "unescaped {c:?} in the message {message:?}"
        );
    }
}

/// Asserts what PROTOCOL §8 says of every error: one of `statuses`, a
/// snake_case code, a printable sentence, a JSON body of both.
fn assert_api_error(err: &ApiError, statuses: &[u16]) {
    assert!(
        statuses.contains(&err.status().as_u16()),
        "unexpected status {} for {err:?}",
        err.status()
    );
    let code = err.code.as_str();
    assert!(
        !code.is_empty()
            && code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "code {code:?} is not snake_case"
    );
    assert!(!err.message.is_empty(), "empty message for {err:?}");
    assert_printable(&err.message);
    let body: serde_json::Value = serde_json::from_str(&err.body()).expect("the body is JSON");
    assert_eq!(body["error"].as_str(), Some(err.message.as_str()));
    assert_eq!(body["code"].as_str(), Some(code));
    assert_eq!(
        err.allow.is_some(),
        err.status() == StatusCode::METHOD_NOT_ALLOWED
    );
}

// ---- sse_decoder ----------------------------------------------------------

/// `sse_decoder`: the WHATWG decoder fed arbitrary bytes cut at arbitrary
/// points produces the same items as fed whole, never panics and keeps its
/// limits; the encoder's frames decode to exactly what was encoded.
///
/// Input: a limit selector byte, a cut count byte, that many `u16` cut
/// positions, a `u64` retry value, then the stream (also read as
/// `id \x01 event \x01 payload` for the round trips).
pub fn sse_decoder(data: &[u8]) {
    let mut input = Input::new(data);
    let limit = input.byte();
    let max_line = if limit < 128 {
        DEFAULT_MAX_LINE
    } else {
        usize::from(limit % 32)
    };
    let cuts: Vec<usize> = (0..input.byte() % 16)
        .map(|_| usize::from(input.u16()))
        .collect();
    let retry = input.u64();
    let stream = input.rest();

    sse_any_split(stream, &cuts, max_line);

    let text = text(stream);
    let mut parts = text.splitn(3, '\u{1}');
    let (id, event, payload) = match (parts.next(), parts.next(), parts.next()) {
        (Some(payload), None, _) => (None, None, payload),
        (Some(id), Some(payload), None) => (Some(id), None, payload),
        (id, event, payload) => (id, event, payload.unwrap_or_default()),
    };
    sse_event_round_trip(id, event, payload);
    sse_comment_round_trip(payload);
    let mut out = BytesMut::new();
    encode_retry(&mut out, retry);
    assert_eq!(decode_whole(&out), [Item::Retry(retry)]);
}

/// Decodes a whole stream with a default decoder, then ends it.
fn decode_whole(stream: &[u8]) -> Vec<Item> {
    let mut decoder = Decoder::new();
    let mut items = Vec::new();
    decoder.feed(stream, &mut items);
    decoder.finish(&mut items);
    items
}

/// `stream` cut at `cuts` (taken modulo its length), in order.
fn split_at<'a>(stream: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    cuts.sort_unstable();
    let mut chunks = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for cut in cuts {
        chunks.push(&stream[start..cut]);
        start = cut;
    }
    chunks.push(&stream[start..]);
    chunks
}

fn sse_any_split(stream: &[u8], cuts: &[usize], max_line: usize) {
    let mut whole_decoder = Decoder::with_max_line(max_line);
    let mut whole = Vec::new();
    whole_decoder.feed(stream, &mut whole);

    let mut split_decoder = Decoder::with_max_line(max_line);
    let mut split = Vec::new();
    for chunk in split_at(stream, cuts) {
        split_decoder.feed(chunk, &mut split);
    }
    assert_eq!(whole, split, "split at {cuts:?}");
    assert_eq!(whole_decoder.last_event_id(), split_decoder.last_event_id());
    assert_eq!(whole_decoder.retry(), split_decoder.retry());

    let mut bytewise_decoder = Decoder::with_max_line(max_line);
    let mut bytewise = Vec::new();
    for byte in stream.chunks(1) {
        bytewise_decoder.feed(byte, &mut bytewise);
    }
    assert_eq!(whole, bytewise, "fed byte by byte");

    // The end of the stream adds nothing: an unfinished event is dropped.
    let before = whole.len();
    whole_decoder.finish(&mut whole);
    assert_eq!(whole.len(), before);

    for item in &whole {
        match item {
            Item::Event(event) => {
                assert!(event.data.len() <= max_line, "data over the limit");
                assert!(!event.id.contains(['\r', '\n', '\0']), "{event:?}");
                assert!(!event.event.contains(['\r', '\n']), "{event:?}");
                assert!(!event.event.is_empty(), "{event:?}");
            }
            Item::Comment(comment) => {
                assert!(comment.len() <= max_line, "comment over the limit");
                assert!(!comment.contains(['\r', '\n']), "{comment:?}");
            }
            Item::Retry(_) => {}
            Item::Error(err) => assert!(!err.to_string().is_empty()),
        }
    }
}

/// What a decoder reads back from a payload: CRLF and lone CR become LF.
fn normalized(payload: &str) -> String {
    payload.replace("\r\n", "\n").replace('\r', "\n")
}

fn sse_event_round_trip(id: Option<&str>, event: Option<&str>, payload: &str) {
    let mut out = BytesMut::new();
    let bad_id = id.is_some_and(|id| id.contains(['\r', '\n', '\0']));
    let bad_event = event.is_some_and(|event| event.contains(['\r', '\n']));
    match encode_event(&mut out, id, event, payload) {
        Err(EncodeError::InvalidId) => assert!(bad_id && out.is_empty()),
        Err(EncodeError::InvalidEventType) => assert!(!bad_id && bad_event && out.is_empty()),
        Ok(()) => {
            assert!(!bad_id && !bad_event, "encoded a breaking id or type");
            let frame = event_frame(id, event, payload).expect("the same fields encode");
            assert_eq!(&frame[..], &out[..], "event_frame and encode_event differ");
            let expected = Item::Event(SseEvent {
                id: id.unwrap_or_default().to_owned(),
                event: match event {
                    None | Some("") => "message".to_owned(),
                    Some(event) => event.to_owned(),
                },
                data: normalized(payload),
            });
            assert_eq!(decode_whole(&out), [expected], "frame {:?}", &out[..]);
        }
    }
}

fn sse_comment_round_trip(text: &str) {
    let mut out = BytesMut::new();
    encode_comment(&mut out, text);
    let expected: Vec<Item> = normalized(text)
        .split('\n')
        .map(|line| Item::Comment(line.to_owned()))
        .collect();
    assert_eq!(decode_whole(&out), expected);
}

// ---- names ----------------------------------------------------------------

fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':')
}

/// PROTOCOL §1 for channels, written independently of `pere_core`.
fn spec_channel(s: &str) -> bool {
    (1..=200).contains(&s.len()) && s.bytes().all(is_channel_byte)
}

fn spec_device(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.bytes().all(|b| is_channel_byte(b) || b == b'@')
}

fn spec_event_type(s: &str) -> bool {
    spec_channel(s) && !s.starts_with("pere.")
}

fn spec_pattern(s: &str) -> bool {
    let segments: Vec<&str> = s.split('.').collect();
    (1..=200).contains(&s.len())
        && s.bytes().all(|b| is_channel_byte(b) || b == b'*')
        && segments.iter().enumerate().all(|(i, seg)| {
            !seg.contains('*') || *seg == "*" || (*seg == "**" && i + 1 == segments.len())
        })
}

/// Whether the segments of a pattern match those of a channel: `*` is one
/// segment, a last `**` one or more.
fn spec_matches(pattern: &[&str], channel: &[&str]) -> bool {
    match pattern.split_first() {
        None => channel.is_empty(),
        Some((&"**", [])) => !channel.is_empty(),
        Some((&"*", rest)) => !channel.is_empty() && spec_matches(rest, &channel[1..]),
        Some((literal, rest)) => {
            channel.first() == Some(literal) && spec_matches(rest, &channel[1..])
        }
    }
}

/// Checks one name type against its spec: accepted exactly when the spec
/// says so, shown and serialized as written, rejected with a printable
/// error.
macro_rules! check_name {
    ($ty:ty, $spec:expr, $s:expr) => {{
        let s: &str = $s;
        let json = serde_json::to_string(s).expect("a string serializes");
        let parsed = <$ty>::new(s);
        assert_eq!(
            parsed.is_ok(),
            $spec(s),
            "{} {s:?}: {parsed:?}",
            stringify!($ty)
        );
        match &parsed {
            Ok(name) => {
                assert_eq!(name.as_str(), s);
                assert_eq!(name.to_string(), s);
                assert_eq!(s.parse::<$ty>().ok().as_ref(), Some(name));
                assert_eq!(serde_json::to_string(name).ok(), Some(json.clone()));
                let back: $ty = serde_json::from_str(&json).expect("its JSON reads back");
                assert_eq!(&back, name);
            }
            Err(err) => {
                assert_printable(&err.to_string());
                assert!(serde_json::from_str::<$ty>(&json).is_err());
            }
        }
        parsed.ok()
    }};
}

/// `names`: `ChannelName`, `Pattern`, `DeviceId` and `EventType` accept
/// exactly PROTOCOL §1, round-trip through `Display`, `as_str` and serde,
/// and pattern matching and grant coverage agree with the spec.
///
/// Input: three texts separated by `0xFF`.
pub fn names(data: &[u8]) {
    let mut input = Input::new(data);
    let texts = [text(input.field()), text(input.field()), text(input.rest())];
    let mut channels = Vec::new();
    let mut patterns = Vec::new();
    for s in &texts {
        channels.push(check_name!(ChannelName, spec_channel, s));
        patterns.push(check_name!(Pattern, spec_pattern, s));
        check_name!(DeviceId, spec_device, s);
        check_name!(EventType, spec_event_type, s);
    }
    for (pattern, channel) in patterns.iter().zip(&channels) {
        let Some(pattern) = pattern else { continue };
        assert_eq!(pattern.exact().is_some(), !pattern.as_str().contains('*'));
        assert_eq!(pattern.exact(), channel.as_ref());
        assert!(pattern.is_covered_by(pattern), "{pattern:?} covers itself");
        if let Some(channel) = channel {
            assert!(pattern.matches(channel));
            assert_eq!(&Pattern::from(channel.clone()), pattern);
        }
    }
    for (i, j, k) in [
        (0, 1, 2),
        (0, 2, 1),
        (1, 0, 2),
        (1, 2, 0),
        (2, 0, 1),
        (2, 1, 0),
    ] {
        let Some(pattern) = &patterns[i] else {
            continue;
        };
        if let Some(channel) = &channels[j] {
            let segments: Vec<&str> = pattern.as_str().split('.').collect();
            let parts: Vec<&str> = channel.segments().collect();
            assert_eq!(
                pattern.matches(channel),
                spec_matches(&segments, &parts),
                "{pattern:?} against {channel:?}"
            );
            // A channel is covered by a grant exactly when the grant
            // matches it.
            assert_eq!(
                Pattern::from(channel.clone()).is_covered_by(pattern),
                pattern.matches(channel),
                "{channel:?} covered by {pattern:?}"
            );
        }
        // Coverage is sound: whatever a covered pattern matches, the
        // covering one matches too.
        if let (Some(other), Some(channel)) = (&patterns[j], &channels[k])
            && pattern.is_covered_by(other)
            && pattern.matches(channel)
        {
            assert!(
                other.matches(channel),
                "{pattern:?} is covered by {other:?}, which misses {channel:?}"
            );
        }
    }
}

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
            None => expected,
        };
        assert_eq!(
            receipts(form.as_bytes(), content_type, header_id),
            Ok((false, vec![want])),
            "form {form:?}"
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
    let text = String::from_utf8_lossy(head);
    let target = text.split_whitespace().nth(1).unwrap_or_default();
    // The target as hyper would have taken it (a `#fragment` is dropped by
    // both; it is not part of a request target).
    assert_eq!(
        Some(request.uri()),
        Uri::try_from(target).ok().as_ref(),
        "the target as sent"
    );
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

/// A request served without hyper is an HTTP/1.1 `method` whose route, as
/// the router reads its path, is `expected` (the channel the parser gave).
fn assert_routed(request: &hyper::Request<()>, method: Method, expected: Route) {
    assert_eq!(request.method(), method);
    assert_eq!(request.version(), hyper::Version::HTTP_11);
    assert_eq!(
        route(&method, request.uri().path()),
        Ok(expected),
        "the channel is the router's"
    );
}

/// The headers of a request served without hyper (`feed_head`,
/// `receipt_request`): no `Transfer-Encoding`, `Upgrade` or `Expect`, a
/// `Connection` that keeps the connection alive, and every value one that
/// was sent in `head`.
fn assert_plain_headers(headers: &HeaderMap, head: &[u8]) {
    for (name, value) in headers {
        let v = value.as_bytes();
        match name.as_str() {
            "connection" => assert!(v.eq_ignore_ascii_case(b"keep-alive")),
            "transfer-encoding" | "upgrade" | "expect" => panic!("{name} taken"),
            _ => {}
        }
        assert!(
            head.windows(v.len().max(1)).any(|w| w == v) || v.is_empty(),
            "a header value that was not sent"
        );
    }
}

// ---- record_codec ---------------------------------------------------------

/// `record_codec`: the store's record decoder, on bytes as they may lie on a
/// damaged disk, never panics; it reports a truncated or corrupted record
/// and never decodes one into anything but what the encoder wrote.
///
/// Input: a mode byte, then (mode 0) a segment's records, (mode 1) one
/// record body that the harness frames with a valid checksum, or (mode 2)
/// the fields of a record to build, encode, damage and read back.
pub fn record_codec(data: &[u8]) {
    let mut input = Input::new(data);
    match input.byte() % 3 {
        0 => records_on_disk(input.rest()),
        1 => record_body(input.rest()),
        _ => record_built(&mut input),
    }
}

/// Frames and decodes `data` as the store would, and decodes it as a bare
/// body too, ignoring the outcome: for measuring what decoding allocates.
pub fn decode_any(data: &[u8]) {
    if let Ok((_, body)) = frame(data) {
        let _ = decode_record(body);
    }
    let _ = decode_record(data);
}

/// What [`frame`] must answer for bytes that are not a whole, intact
/// record, by the format's definition.
fn expected_frame_error(bytes: &[u8]) -> DecodeError {
    let Some(header) = bytes.get(..FRAME_HEADER) else {
        return DecodeError::Truncated;
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    if len < 9 || len as usize > MAX_RECORD {
        DecodeError::BadLength(len)
    } else if bytes.len() < FRAME_HEADER + len as usize {
        DecodeError::Truncated
    } else {
        DecodeError::Checksum
    }
}

/// Checks an intact, framed record: every cut of it is `Truncated`, and if
/// it decodes, the encoder writes exactly these bytes for what it decoded.
fn check_framed(framed: &[u8]) {
    let len = framed.len();
    for cut in [0, 1, FRAME_HEADER - 1, FRAME_HEADER, len / 2, len - 1] {
        if cut < len {
            assert_eq!(
                frame(&framed[..cut]),
                Err(DecodeError::Truncated),
                "cut {cut}"
            );
        }
    }
    let (total, body) = frame(framed).expect("an intact record frames");
    assert_eq!((total, body), (len, &framed[FRAME_HEADER..]));
    match decode_record(body) {
        Ok((lsn, record)) => {
            let mut again = Vec::new();
            encode_record(&mut again, lsn, &record);
            assert_eq!(
                again, framed,
                "decoded as {record:?}, which encodes otherwise"
            );
            // A body cut short never decodes.
            assert!(decode_record(&body[..body.len() - 1]).is_err());
        }
        Err(err) => {
            assert!(matches!(err, DecodeError::Malformed(_)), "{err:?}");
            assert!(!err.to_string().is_empty());
        }
    }
}

/// Reads records back to back, as recovery does, until one is damaged.
fn records_on_disk(bytes: &[u8]) {
    let mut offset = 0;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        match frame(rest) {
            Ok((total, _)) => {
                assert!((FRAME_HEADER + 9..=rest.len()).contains(&total));
                check_framed(&rest[..total]);
                offset += total;
            }
            Err(err) => {
                assert_eq!(err, expected_frame_error(rest));
                break;
            }
        }
    }
}

/// Frames `body` with a valid checksum, so that damage past the checksum
/// (a bug, or a writer of another version) reaches the decoder.
fn record_body(body: &[u8]) {
    let Ok(len) = u32::try_from(body.len()) else {
        return;
    };
    let mut framed = Vec::with_capacity(FRAME_HEADER + body.len());
    framed.extend_from_slice(&len.to_le_bytes());
    framed.extend_from_slice(&checksum(body).to_le_bytes());
    framed.extend_from_slice(body);
    if (9..=MAX_RECORD).contains(&body.len()) {
        check_framed(&framed);
    } else {
        assert_eq!(frame(&framed), Err(DecodeError::BadLength(len)));
    }
}

/// A valid name of type `T` from the next field, or `fallback`.
fn name_or<T>(input: &mut Input<'_>, parse: fn(&str) -> pere_core::Result<T>, fallback: &str) -> T {
    parse(&text(input.field()))
        .or_else(|_| parse(fallback))
        .expect("the fallback name is valid")
}

/// Builds a record of every kind from the input, then checks that it
/// reads back and that a flipped bit or a cut is noticed.
fn record_built(input: &mut Input<'_>) {
    let kind = input.byte();
    let flags = input.byte();
    let (lsn, a, b) = (input.u64(), input.u64(), input.u64());
    let flip = usize::from(input.u16());
    let channel = name_or(input, ChannelName::new, "c");
    let pattern = name_or(input, Pattern::new, "c.*");
    let device = name_or(input, DeviceId::new, "d");
    let record = match kind % 11 {
        0 => {
            let payload = text(input.field()).into_owned();
            Stored::Hub(Record::Event(std::sync::Arc::new(Event {
                id: EventId(a),
                channel,
                kind: (flags & 1 != 0).then(|| name_or(input, EventType::new, "t")),
                device: (flags & 2 != 0).then_some(device),
                time: Timestamp(b as i64),
                payload: payload.into_bytes().into(),
                idempotency_key: (flags & 4 != 0).then(|| text(input.field()).into()),
            })))
        }
        1 => Stored::Hub(Record::Ack {
            id: EventId(a),
            device,
            status: text(input.rest()).into(),
            at: Timestamp(b as i64),
        }),
        2 => Stored::Hub(Record::Joined {
            subscription: pattern,
            device,
            head: EventId(a),
            at: Timestamp(b as i64),
        }),
        3 => Stored::Hub(Record::Cursor {
            subscription: pattern,
            device,
            cursor: EventId(a),
            at: Timestamp(b as i64),
        }),
        4 => Stored::Hub(Record::Presence {
            subscription: pattern,
            device,
            online: flags & 1 != 0,
            last_event_id: (flags & 2 != 0).then_some(EventId(a)),
            at: Timestamp(b as i64),
        }),
        5 => Stored::Hub(Record::Left {
            subscription: pattern,
            device,
            at: Timestamp(b as i64),
        }),
        6 => Stored::Hub(Record::Notice {
            id: EventId(a),
            device,
            sent: flags & 1 != 0,
            at: Timestamp(b as i64),
        }),
        7 => Stored::Hub(Record::Acking {
            subscription: pattern,
            device,
            id: EventId(a),
            at: Timestamp(b as i64),
        }),
        8 => {
            // In id order, once each, as the hub writes them.
            let first = a.min(u64::MAX - 1024);
            let ids = (0..=b % 4).map(|i| EventId(first + i * 256 + (b >> 8) % 256));
            Stored::Hub(Record::Replayed {
                device,
                ids: ids.collect(),
                at: Timestamp(b as i64),
            })
        }
        9 => Stored::Hub(Record::AckedUpto {
            subscription: pattern,
            device,
            upto: EventId(a),
            // Sorted, once each, as the hub writes them.
            channels: if flags & 1 != 0 {
                vec![(channel, EventId(b))]
            } else {
                Vec::new()
            },
            at: Timestamp(b as i64),
        }),
        _ => Stored::Trim {
            channel,
            upto: EventId(a),
        },
    };
    let mut framed = Vec::new();
    encode_record(&mut framed, lsn, &record);
    let (_, body) = frame(&framed).expect("an encoded record frames");
    let (got_lsn, _) = decode_record(body).expect("an encoded record decodes");
    assert_eq!(got_lsn, lsn);
    check_framed(&framed);

    // One flipped bit anywhere is noticed (CRC-32C catches every one).
    let at = flip % (framed.len() * 8);
    let mut damaged = framed.clone();
    damaged[at / 8] ^= 1 << (at % 8);
    let read = frame(&damaged).and_then(|(_, body)| decode_record(body));
    assert!(read.is_err(), "bit {at} flipped went unnoticed");
}
