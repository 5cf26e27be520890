//! The SSE encoder: events, `retry` and comments as `text/event-stream` bytes.
//!
//! This is the server's hot path: every event is encoded once into [`Bytes`]
//! and shared by every stream that receives it (STYLE §4, "Encode once"), so
//! the functions here write straight into a caller's [`BytesMut`] and
//! [`event_frame`] sizes its buffer exactly once.
//!
//! Wire rules (docs/PROTOCOL.md §3):
//!
//! - lines end with LF only: PERE's Ruby client splits events on `\n\n`;
//! - `field: value` has one space after the colon, which every decoder strips,
//!   so a value that itself starts with a space survives;
//! - except `retry:<ms>`, written without the space, because PERE's Ruby client
//!   reads a spaced value as seconds;
//! - a payload is written as one `data:` line per line, split on CRLF, CR and
//!   LF, so it can never inject a field or end an event early. CR cannot be
//!   carried by SSE at all: a decoder reads every CRLF and lone CR back as LF.
//!
//! Ids and event types are validated before anything is written: the encoder
//! can never emit an injected field, even if a caller forgets to validate.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// A keepalive frame: an empty comment line and a blank line.
///
/// Decoders ignore it; it only keeps proxies and NAT tables from closing an
/// idle stream (docs/PROTOCOL.md §3, `--keepalive`).
pub const KEEPALIVE: &[u8] = b":\n\n";

/// Why an event could not be encoded.
///
/// Only an `id` or `event` value that would break out of its line is refused;
/// a payload is always encodable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// The event id contains a CR, an LF or a NUL (a decoder ignores an id
    /// with a NUL, which would silently keep the previous id).
    InvalidId,
    /// The event type contains a CR or an LF.
    InvalidEventType,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidId => f.write_str("SSE event id contains a CR, LF or NUL character"),
            Self::InvalidEventType => f.write_str("SSE event type contains a CR or LF character"),
        }
    }
}

impl std::error::Error for EncodeError {}

const ID_PREFIX: &[u8] = b"id: ";
const EVENT_PREFIX: &[u8] = b"event: ";
const DATA_PREFIX: &[u8] = b"data: ";

/// Writes one event: `id: …`, `event: …`, one `data: …` per payload line and
/// a blank line.
///
/// `id: …` is written when `id` is `Some` (even `Some("")`, which resets a
/// client's last event id). `event: …` is written when `event` is `Some`,
/// non-empty and not `"message"`, the type a decoder reports by default. The
/// payload is split on CRLF, CR and LF; an empty payload or an empty last line
/// is still written as `data: `, so the decoded data equals `data` with every
/// CRLF and lone CR turned into LF, trailing newlines included.
///
/// # Errors
///
/// [`EncodeError::InvalidId`] if `id` contains CR, LF or NUL, and
/// [`EncodeError::InvalidEventType`] if `event` contains CR or LF. Nothing is
/// written to `out` then.
pub fn encode_event(
    out: &mut BytesMut,
    id: Option<&str>,
    event: Option<&str>,
    data: &str,
) -> Result<(), EncodeError> {
    let event = checked_fields(id, event)?;
    out.reserve(event_len(id, event, data));
    write_event(out, id, event, data);
    Ok(())
}

/// Encodes one event into its own buffer, allocated once at its exact size.
///
/// The frame is what [`encode_event`] writes; the result is meant to be built
/// once per event and cloned (a refcount bump) into every stream.
///
/// # Errors
///
/// As [`encode_event`].
pub fn event_frame(
    id: Option<&str>,
    event: Option<&str>,
    data: &str,
) -> Result<Bytes, EncodeError> {
    let event = checked_fields(id, event)?;
    let len = event_len(id, event, data);
    let mut out = BytesMut::with_capacity(len);
    write_event(&mut out, id, event, data);
    debug_assert_eq!(
        out.len(),
        len,
        "event_len must match what write_event writes"
    );
    Ok(out.freeze())
}

/// Writes a `retry:<millis>` frame followed by a blank line, with no space
/// after the colon (docs/PROTOCOL.md §3).
pub fn encode_retry(out: &mut BytesMut, millis: u64) {
    // u64::MAX has 20 decimal digits.
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut n = millis;
    loop {
        start -= 1;
        // `n % 10` is below 10, so the cast cannot truncate.
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let digits = &digits[start..];
    out.reserve(b"retry:".len() + digits.len() + 2);
    out.put_slice(b"retry:");
    out.put_slice(digits);
    out.put_slice(b"\n\n");
}

/// Writes a comment: `:` followed by each line of `text` (split on CRLF, CR
/// and LF, so the text cannot inject a field), then a blank line.
///
/// An empty `text` writes [`KEEPALIVE`].
pub fn encode_comment(out: &mut BytesMut, text: &str) {
    let len = lines(text).map(|line| 1 + line.len() + 1).sum::<usize>() + 1;
    out.reserve(len);
    for line in lines(text) {
        out.put_u8(b':');
        out.put_slice(line);
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
}

/// Validates `id` and `event` and returns the event type to write, if any.
fn checked_fields<'a>(
    id: Option<&str>,
    event: Option<&'a str>,
) -> Result<Option<&'a str>, EncodeError> {
    if id.is_some_and(|id| id.bytes().any(|b| matches!(b, b'\r' | b'\n' | b'\0'))) {
        return Err(EncodeError::InvalidId);
    }
    match event {
        Some(event) if event.bytes().any(|b| matches!(b, b'\r' | b'\n')) => {
            Err(EncodeError::InvalidEventType)
        }
        // A decoder reports an absent or empty type as "message": leave the
        // line out and save the bytes.
        Some("" | "message") | None => Ok(None),
        Some(event) => Ok(Some(event)),
    }
}

/// The exact number of bytes [`write_event`] writes.
fn event_len(id: Option<&str>, event: Option<&str>, data: &str) -> usize {
    let id = id.map_or(0, |id| ID_PREFIX.len() + id.len() + 1);
    let event = event.map_or(0, |event| EVENT_PREFIX.len() + event.len() + 1);
    let data: usize = lines(data)
        .map(|line| DATA_PREFIX.len() + line.len() + 1)
        .sum();
    id + event + data + 1
}

/// Writes an event whose fields were checked by [`checked_fields`].
fn write_event(out: &mut BytesMut, id: Option<&str>, event: Option<&str>, data: &str) {
    if let Some(id) = id {
        out.put_slice(ID_PREFIX);
        out.put_slice(id.as_bytes());
        out.put_u8(b'\n');
    }
    if let Some(event) = event {
        out.put_slice(EVENT_PREFIX);
        out.put_slice(event.as_bytes());
        out.put_u8(b'\n');
    }
    for line in lines(data) {
        out.put_slice(DATA_PREFIX);
        out.put_slice(line);
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
}

/// The lines of `text`, split on CRLF, lone CR and lone LF, as SSE decoders
/// split them.
///
/// Unlike [`str::lines`], a trailing line break yields a last, empty line and
/// an empty text yields one empty line: the encoder writes one `data:` line per
/// item, and that is what makes a trailing newline survive the round trip.
fn lines(text: &str) -> Lines<'_> {
    Lines {
        rest: Some(text.as_bytes()),
    }
}

/// Iterator returned by [`lines`].
struct Lines<'a> {
    /// What is left to split; `None` once the last line was returned.
    rest: Option<&'a [u8]>,
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        match rest.iter().position(|&b| b == b'\r' || b == b'\n') {
            None => {
                self.rest = None;
                Some(rest)
            }
            Some(end) => {
                let skip = if rest[end..].starts_with(b"\r\n") {
                    2
                } else {
                    1
                };
                self.rest = Some(&rest[end + skip..]);
                Some(&rest[..end])
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Encodes an event and returns its bytes as a string, for readable
    /// assertion failures.
    fn event(id: Option<&str>, event: Option<&str>, data: &str) -> String {
        let mut out = BytesMut::new();
        encode_event(&mut out, id, event, data).unwrap();
        let frame = event_frame(id, event, data).unwrap();
        assert_eq!(frame, out, "event_frame and encode_event must agree");
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn event_writes_id_type_and_one_data_line_per_line() {
        assert_eq!(
            event(Some("1"), Some("x"), "a\nb"),
            "id: 1\nevent: x\ndata: a\ndata: b\n\n"
        );
    }

    #[test]
    fn event_without_id_or_type_is_only_data() {
        assert_eq!(event(None, None, "hello"), "data: hello\n\n");
    }

    #[test]
    fn message_type_and_empty_type_are_omitted() {
        assert_eq!(event(Some("7"), Some("message"), "a"), "id: 7\ndata: a\n\n");
        assert_eq!(event(Some("7"), Some(""), "a"), "id: 7\ndata: a\n\n");
    }

    #[test]
    fn empty_id_is_written_because_it_resets_the_last_event_id() {
        assert_eq!(event(Some(""), None, "a"), "id: \ndata: a\n\n");
    }

    #[test]
    fn payload_is_split_on_crlf_cr_and_lf() {
        assert_eq!(
            event(None, None, "a\r\nb\rc\nd"),
            "data: a\ndata: b\ndata: c\ndata: d\n\n"
        );
    }

    #[test]
    fn cr_followed_by_crlf_is_two_line_breaks() {
        assert_eq!(
            event(None, None, "a\r\r\nb"),
            "data: a\ndata: \ndata: b\n\n"
        );
    }

    #[test]
    fn trailing_newline_becomes_a_last_empty_data_line() {
        assert_eq!(event(None, None, "a\n"), "data: a\ndata: \n\n");
        assert_eq!(event(None, None, "a\r\n"), "data: a\ndata: \n\n");
        assert_eq!(event(None, None, "a\r"), "data: a\ndata: \n\n");
    }

    #[test]
    fn empty_payload_is_one_empty_data_line() {
        assert_eq!(event(None, None, ""), "data: \n\n");
    }

    #[test]
    fn empty_lines_in_payload_are_empty_data_lines() {
        assert_eq!(event(None, None, "\n\n"), "data: \ndata: \ndata: \n\n");
        assert_eq!(event(None, None, "a\n\nb"), "data: a\ndata: \ndata: b\n\n");
    }

    #[test]
    fn leading_space_of_payload_is_kept_after_the_separator_space() {
        assert_eq!(event(None, None, " x"), "data:  x\n\n");
        assert_eq!(
            event(Some(" 1"), Some(" t"), "y"),
            "id:  1\nevent:  t\ndata: y\n\n"
        );
    }

    #[test]
    fn field_lookalikes_in_payload_stay_inside_data_lines() {
        assert_eq!(
            event(Some("1"), None, "\n\ndata: forged\rid: 999"),
            "id: 1\ndata: \ndata: \ndata: data: forged\ndata: id: 999\n\n"
        );
    }

    #[test]
    fn line_break_or_nul_in_id_is_refused_and_nothing_is_written() {
        for id in ["1\n", "1\r2", "\r\n", "a\0b"] {
            let mut out = BytesMut::from(&b"before"[..]);
            assert_eq!(
                encode_event(&mut out, Some(id), None, "x"),
                Err(EncodeError::InvalidId),
                "{id:?}"
            );
            assert_eq!(&out[..], b"before");
            assert_eq!(
                event_frame(Some(id), None, "x"),
                Err(EncodeError::InvalidId)
            );
        }
    }

    #[test]
    fn line_break_in_event_type_is_refused_and_nothing_is_written() {
        for ty in ["a\nb", "a\r", "\r\ndata: x"] {
            let mut out = BytesMut::new();
            assert_eq!(
                encode_event(&mut out, Some("1"), Some(ty), "x"),
                Err(EncodeError::InvalidEventType),
                "{ty:?}"
            );
            assert!(out.is_empty());
        }
    }

    #[test]
    fn nul_in_event_type_is_allowed() {
        assert_eq!(event(None, Some("a\0b"), "x"), "event: a\0b\ndata: x\n\n");
    }

    #[test]
    fn errors_read_as_sentences() {
        assert_eq!(
            EncodeError::InvalidId.to_string(),
            "SSE event id contains a CR, LF or NUL character"
        );
        assert_eq!(
            EncodeError::InvalidEventType.to_string(),
            "SSE event type contains a CR or LF character"
        );
    }

    #[test]
    fn retry_has_no_space_after_the_colon() {
        for (millis, expected) in [
            (3000, "retry:3000\n\n"),
            (0, "retry:0\n\n"),
            (u64::MAX, "retry:18446744073709551615\n\n"),
        ] {
            let mut out = BytesMut::new();
            encode_retry(&mut out, millis);
            assert_eq!(out, expected.as_bytes());
        }
    }

    #[test]
    fn comment_is_a_colon_per_line_then_a_blank_line() {
        let mut out = BytesMut::new();
        encode_comment(&mut out, "hello");
        encode_comment(&mut out, "a\r\nb\rdata: forged\n");
        encode_comment(&mut out, "");
        assert_eq!(out, &b":hello\n\n:a\n:b\n:data: forged\n:\n\n:\n\n"[..]);
    }

    #[test]
    fn empty_comment_is_the_keepalive() {
        let mut out = BytesMut::new();
        encode_comment(&mut out, "");
        assert_eq!(out, KEEPALIVE);
    }

    #[test]
    fn encoders_append_to_what_is_already_there() {
        let mut out = BytesMut::new();
        encode_retry(&mut out, 3000);
        encode_event(&mut out, None, Some("pere.hello"), "{}").unwrap();
        encode_event(&mut out, Some("1"), None, "hi").unwrap();
        out.extend_from_slice(KEEPALIVE);
        assert_eq!(
            out,
            &b"retry:3000\n\nevent: pere.hello\ndata: {}\n\nid: 1\ndata: hi\n\n:\n\n"[..]
        );
    }

    #[test]
    fn event_frame_is_allocated_at_its_exact_size() {
        let frame = event_frame(Some("42"), Some("t"), "a\r\nb\n").unwrap();
        assert_eq!(
            frame,
            &b"id: 42\nevent: t\ndata: a\ndata: b\ndata: \n\n"[..]
        );
    }
}
