//! The one writer of response heads outside hyper: for the direct path's
//! answers, and for the answers the connection layer gives on a socket
//! hyper gave up (`408`, or docs/PROTOCOL.md §8's JSON in place of hyper's
//! own answer to a head it could not parse). Both take their status,
//! headers and body from the same [`error_response`] as every handler.

use std::io::Write as _;

use hyper::header::{CONNECTION, HeaderValue};

use crate::error::ApiError;
use crate::server::config::Cors;
use crate::server::handlers::add_cors;
use crate::server::response::error_response;

/// The whole answer, head and body, of `err` on a connection that then
/// closes, with the CORS headers every answer carries (the request's
/// `Origin` is not known here: a listed origin gets none).
pub(super) fn closing_error(err: &ApiError, cors: &Cors) -> Vec<u8> {
    let (mut parts, body) = error_response(err).into_parts();
    parts
        .headers
        .insert(CONNECTION, HeaderValue::from_static("close"));
    add_cors(cors, None, &mut parts.headers);
    // An error's body is its JSON, never a stream.
    let body = body.into_whole().unwrap_or_default();
    let mut out = head_bytes(&parts, Framing::Length(body.len()));
    out.extend_from_slice(&body);
    out
}

/// How a response's body is delimited.
pub(super) enum Framing {
    /// `content-length`.
    Length(usize),
    /// `transfer-encoding: chunked`.
    Chunked,
}

/// The status line and headers of `parts`, with `date` and the framing
/// header hyper would add.
pub(super) fn head_bytes(parts: &hyper::http::response::Parts, framing: Framing) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(len) => {
            let _ = write!(out, "content-length: {len}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"date: ");
    DATE.with_borrow_mut(|(second, text)| {
        // Made once a second, as hyper makes its own: every answer of a
        // busy connection carries it.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if *second != now || text.is_empty() {
            *second = now;
            *text = http_date(time::OffsetDateTime::now_utc());
        }
        out.extend_from_slice(text.as_bytes());
    });
    out.extend_from_slice(b"\r\n\r\n");
    out
}

thread_local! {
    /// The `date` of this second, and the second it is of.
    static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
}

/// An IMF-fixdate (RFC 9110 §5.6.7), as hyper's `date` header.
fn http_date(now: time::OffsetDateTime) -> String {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[usize::from(now.weekday().number_days_from_monday())],
        now.day(),
        MONTHS[usize::from(u8::from(now.month()) - 1)],
        now.year(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn dates_are_imf_fixdates() {
        let at = time::macros::datetime!(2026-11-03 04:05:06 UTC);
        assert_eq!(http_date(at), "Tue, 03 Nov 2026 04:05:06 GMT");
    }

    #[test]
    fn a_closing_error_is_its_json_with_the_code_s_status() {
        let err = ApiError::new(ErrorCode::HeadersTooLarge, "too big");
        let text = String::from_utf8(closing_error(&err, &Cors::Any)).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        // A page can read it (docs/PROTOCOL.md §6.4).
        assert!(
            head.contains("\r\naccess-control-allow-origin: *\r\n"),
            "{head}"
        );
        let off = String::from_utf8(closing_error(&err, &Cors::Off)).unwrap();
        assert!(!off.contains("access-control"), "{off}");
        assert!(
            head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
        assert!(
            head.contains("\r\ncontent-type: application/json\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
            "{head}"
        );
        assert_eq!(body, err.body());
    }
}
