//! The SSE decoder: `text/event-stream` bytes in, [`Item`]s out.
//!
//! [`Decoder`] implements the WHATWG HTML "interpret an event stream"
//! algorithm
//! (<https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation>);
//! the spec's steps are quoted beside the code implementing them. It is
//! incremental: [`Decoder::feed`] accepts the stream cut at any byte, even
//! between the CR and LF of a CRLF or inside a multi-byte UTF-8 character, and
//! produces exactly the items that feeding the stream whole would.
//!
//! It works on bytes and decodes UTF-8 per line, lossily (invalid sequences
//! become U+FFFD as in a browser). Line breaks are ASCII and never occur
//! inside a UTF-8 sequence, so this is the same as decoding the whole stream
//! first. A complete line is processed straight from the caller's chunk; only
//! the unfinished tail of a chunk is copied, into a buffer reused from line to
//! line.
//!
//! # Memory bound
//!
//! A server (or anything pretending to be one) could send a line without end,
//! or `data:` lines without a blank line. The decoder holds at most
//! [`Decoder::max_line`] bytes of line and as much again of event data
//! ([`DEFAULT_MAX_LINE`] unless set with [`Decoder::with_max_line`]):
//!
//! - a line longer than the limit is discarded as it arrives (its bytes are
//!   never buffered) and reported once as [`Item::Error`] with
//!   [`DecodeError::LineTooLong`]; so is a line that fits in stream bytes but
//!   not once decoded (each invalid byte becomes a 3-byte U+FFFD), so no
//!   comment, id or event type handed out is longer than the limit;
//! - an event whose data would pass the limit is reported as
//!   [`DecodeError::DataTooLong`].
//!
//! In both cases the event being read is dropped whole: the blank line that
//! ends it dispatches nothing. Truncating instead would hand the application a
//! payload that was never sent, and PERE acknowledges payloads. An over-long
//! comment line is dropped and reported but spares the event around it. The
//! `id` and `retry` fields of a dropped event still apply. Decoding continues
//! normally after the next blank line.

use std::borrow::Cow;
use std::fmt;

/// Default limit, in bytes, on one line and on one event's data (1 MiB).
///
/// PERE's payloads are at most `--max-payload` (64 KiB by default); the margin
/// leaves room for servers configured with more.
pub const DEFAULT_MAX_LINE: usize = 1024 * 1024;

/// The UTF-8 encoding of U+FEFF BYTE ORDER MARK.
const BOM: &[u8; 3] = b"\xEF\xBB\xBF";

/// Above this capacity (bytes) the line buffer is released after use, so that
/// one long line does not pin memory in each of thousands of decoders.
const KEEP_LINE_CAPACITY: usize = 64 * 1024;

/// One thing read from an event stream, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// An event was dispatched (a blank line ended a block with data).
    Event(SseEvent),
    /// A valid `retry` field set the reconnection time, in milliseconds.
    Retry(u64),
    /// A comment line; the text after the `:` (empty for a keepalive).
    Comment(String),
    /// The stream broke a limit; decoding goes on (see the module docs).
    Error(DecodeError),
}

/// A dispatched event, as an `EventSource` would report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The stream's last event id after this event (`MessageEvent.lastEventId`):
    /// the last `id` field seen so far, not necessarily one in this event.
    pub id: String,
    /// The event type: `"message"` when there was no `event` field or it was
    /// empty.
    pub event: String,
    /// The `data` lines joined with LF.
    pub data: String,
}

/// A limit the stream broke; reported as [`Item::Error`], never fatal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A line was longer than `limit` bytes; it was discarded.
    LineTooLong {
        /// The decoder's limit, in bytes.
        limit: usize,
    },
    /// An event's data grew past `limit` bytes; the event was discarded.
    DataTooLong {
        /// The decoder's limit, in bytes.
        limit: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LineTooLong { limit } => {
                write!(f, "SSE line longer than {limit} bytes was discarded")
            }
            Self::DataTooLong { limit } => {
                write!(
                    f,
                    "SSE event with more than {limit} bytes of data was discarded"
                )
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Where the decoder is in the optional byte order mark at the stream start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bom {
    /// This many leading bytes of the stream matched the BOM so far; they are
    /// held back until the BOM is complete or ruled out.
    Matching(u8),
    /// The BOM was skipped or ruled out.
    Done,
}

/// A streaming, incremental event-stream decoder.
///
/// ```
/// use pere_http::sse::decode::{Decoder, Item, SseEvent};
///
/// let mut decoder = Decoder::new();
/// let mut items = Vec::new();
/// decoder.feed(b"id: 1\r\ndata: h", &mut items);
/// decoder.feed(b"i\r\n\r\n", &mut items);
/// assert_eq!(
///     items,
///     [Item::Event(SseEvent { id: "1".into(), event: "message".into(), data: "hi".into() })]
/// );
/// ```
///
/// One decoder can read successive connections of one `EventSource`: call
/// [`finish`](Decoder::finish) at the end of each, and the last event id
/// carries over as it does in browsers.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Limit on a line and on an event's data, in bytes.
    max_line: usize,
    /// Progress through a leading BOM.
    bom: Bom,
    /// The start of a line whose end has not arrived yet.
    line: Vec<u8>,
    /// The previous chunk ended with a CR: an LF starting this chunk is the
    /// second half of a CRLF, not a blank line.
    after_cr: bool,
    /// The current line passed `max_line`: skip bytes up to its end.
    discarding: bool,
    /// The spec's data buffer.
    data: String,
    /// The spec's event type buffer.
    event_type: String,
    /// The spec's last event ID buffer.
    id_buffer: String,
    /// The event source's last event ID string (set on each blank line).
    last_event_id: String,
    /// The event source's reconnection time, once a `retry` field set it.
    retry: Option<u64>,
    /// A limit was broken inside the current event: the next blank line
    /// dispatches nothing.
    poisoned: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder at the start of a stream, with the [`DEFAULT_MAX_LINE`] limit.
    pub fn new() -> Self {
        Self::with_max_line(DEFAULT_MAX_LINE)
    }

    /// A decoder holding at most `max_line` bytes of line and as much again of
    /// event data (see the module docs for what happens beyond).
    pub fn with_max_line(max_line: usize) -> Self {
        Self {
            max_line,
            bom: Bom::Matching(0),
            line: Vec::new(),
            after_cr: false,
            discarding: false,
            data: String::new(),
            event_type: String::new(),
            id_buffer: String::new(),
            last_event_id: String::new(),
            retry: None,
            poisoned: false,
        }
    }

    /// The limit on a line and on an event's data, in bytes.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// The last event id, as `EventSource.lastEventId` would report it: the
    /// value to send as `Last-Event-ID` when reconnecting.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// The reconnection time set by the last valid `retry` field, in
    /// milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// Decodes the next `chunk` of the stream, appending what it completes to
    /// `out`.
    ///
    /// The stream may be cut anywhere: the items are the same as for one call
    /// with the concatenated chunks.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<Item>) {
        // UTF-8 decode: "1. Peek three bytes from stream. 2. If bytes matches
        // the byte order mark for UTF-8, then read three bytes from stream."
        // The three bytes may arrive in separate chunks.
        while let Bom::Matching(matched) = self.bom {
            let Some((&byte, rest)) = chunk.split_first() else {
                return;
            };
            let matched = usize::from(matched);
            if byte == BOM[matched] {
                chunk = rest;
                self.bom = if matched + 1 == BOM.len() {
                    Bom::Done
                } else {
                    // At most 2: the BOM is 3 bytes long.
                    Bom::Matching(matched as u8 + 1)
                };
            } else {
                // Not a BOM after all: the bytes held back start the first
                // line (they contain no line break).
                self.bom = Bom::Done;
                self.push_partial(&BOM[..matched], out);
            }
        }

        // "The stream must then be parsed by reading everything line by line,
        // with a U+000D CARRIAGE RETURN U+000A LINE FEED (CRLF) character pair,
        // a single U+000A LINE FEED (LF) character not preceded by a U+000D
        // CARRIAGE RETURN (CR) character, and a single U+000D CARRIAGE RETURN
        // (CR) character not followed by a U+000A LINE FEED (LF) character
        // being the ways in which a line can end."
        //
        // A CR ends its line at once; an LF right after it is then skipped,
        // even when it arrives in the next chunk.
        if self.after_cr && !chunk.is_empty() {
            // (An empty chunk says nothing about the next byte.)
            self.after_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while let Some(end) = find_line_break(chunk) {
            let (line, rest) = chunk.split_at(end);
            chunk = match rest {
                [b'\r', b'\n', rest @ ..] => rest,
                [b'\r'] => {
                    self.after_cr = true;
                    &[]
                }
                [_, rest @ ..] => rest,
                [] => &[],
            };
            self.end_line(line, out);
        }
        self.push_partial(chunk, out);
    }

    /// Ends the stream.
    ///
    /// "Once the end of the file is reached, any pending data must be
    /// discarded. (If the file ends in the middle of an event, before the final
    /// empty line, the incomplete event is not dispatched.)" So an unfinished
    /// last line and an event without its blank line are dropped, and nothing
    /// is added to `out`.
    ///
    /// The decoder is then ready for the next connection of the same event
    /// source: [`last_event_id`](Self::last_event_id) and
    /// [`retry`](Self::retry) are kept, and the next stream's last event ID
    /// buffer starts from the last event id, as browsers do.
    pub fn finish(&mut self, _out: &mut Vec<Item>) {
        self.bom = Bom::Matching(0);
        self.line.clear();
        self.release_line_buffer();
        self.after_cr = false;
        self.discarding = false;
        self.data.clear();
        self.event_type.clear();
        self.id_buffer.clone_from(&self.last_event_id);
        self.poisoned = false;
    }

    /// Buffers the start of a line whose end is not in this chunk.
    fn push_partial(&mut self, bytes: &[u8], out: &mut Vec<Item>) {
        if self.discarding || bytes.is_empty() {
            return;
        }
        if self.line.len() + bytes.len() > self.max_line {
            // Stop buffering now: memory stays bounded however long the line.
            let first = self.line.first().or(bytes.first()).copied();
            self.line.clear();
            self.release_line_buffer();
            self.discarding = true;
            self.line_too_long(first, out);
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    /// Handles a line break; `tail` is the part of the line in this chunk.
    fn end_line(&mut self, tail: &[u8], out: &mut Vec<Item>) {
        if self.discarding {
            // The over-long line ends here; it was reported when it crossed
            // the limit.
            self.discarding = false;
        } else if self.line.is_empty() {
            // The common case: the whole line is in the caller's chunk.
            if tail.len() > self.max_line {
                self.line_too_long(tail.first().copied(), out);
            } else {
                self.process_line(tail, out);
            }
        } else if self.line.len() + tail.len() > self.max_line {
            let first = self.line.first().copied();
            self.line.clear();
            self.release_line_buffer();
            self.line_too_long(first, out);
        } else {
            let mut line = std::mem::take(&mut self.line);
            line.extend_from_slice(tail);
            self.process_line(&line, out);
            line.clear();
            self.line = line;
            self.release_line_buffer();
        }
    }

    /// Reports a discarded line starting with `first`, and drops the event it
    /// belongs to unless it was a comment.
    fn line_too_long(&mut self, first: Option<u8>, out: &mut Vec<Item>) {
        if first != Some(b':') {
            self.poison();
        }
        out.push(Item::Error(DecodeError::LineTooLong {
            limit: self.max_line,
        }));
    }

    /// Drops the current event: its data is freed now and the blank line
    /// ending it dispatches nothing.
    fn poison(&mut self) {
        self.poisoned = true;
        self.data = String::new();
    }

    /// Gives back the memory of a line buffer grown by a long line.
    fn release_line_buffer(&mut self) {
        if self.line.capacity() > KEEP_LINE_CAPACITY {
            self.line = Vec::new();
        }
    }

    /// "Lines must be processed, in the order they are received, as follows:"
    fn process_line(&mut self, line: &[u8], out: &mut Vec<Item>) {
        // "If the line is empty (a blank line): Dispatch the event, as
        // defined below."
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        // The line is decoded once, whole. Invalid UTF-8 becomes U+FFFD,
        // three bytes for as little as one, so a line within the limit in
        // stream bytes may pass it decoded: the limit holds for the text too,
        // or a comment, id or event type could be three times the limit.
        let line = utf8(line);
        if line.len() > self.max_line {
            self.line_too_long(line.bytes().next(), out);
            return;
        }
        match line.find(':') {
            // "If the line starts with a U+003A COLON character (:): Ignore the
            // line." We report it, for keepalive detection.
            Some(0) => out.push(Item::Comment(line[1..].to_owned())),
            // "If the line contains a U+003A COLON character (:): Collect the
            // characters on the line before the first U+003A COLON character
            // (:), and let field be that string. Collect the characters on the
            // line after the first U+003A COLON character (:), and let value be
            // that string. If value starts with a U+0020 SPACE character,
            // remove it from value. Process the field using the steps described
            // below, using field as the field name and value as the field
            // value."
            Some(colon) => {
                let value = &line[colon + 1..];
                let value = value.strip_prefix(' ').unwrap_or(value);
                self.process_field(&line[..colon], value, out);
            }
            // "Otherwise, the string is not empty but does not contain a U+003A
            // COLON character (:): Process the field using the steps described
            // below, using the whole line as the field name, and the empty
            // string as the field value."
            None => self.process_field(&line, "", out),
        }
    }

    /// "The steps to process the field given a field name and a field value
    /// depend on the field name, as given in the following list. Field names
    /// must be compared literally, with no case folding performed."
    ///
    /// The line was decoded already: invalid UTF-8 in a name became U+FFFD,
    /// which matches none of them.
    fn process_field(&mut self, name: &str, value: &str, out: &mut Vec<Item>) {
        match name {
            // "If the field name is "event": Set the event type buffer to field
            // value."
            "event" => {
                self.event_type.clear();
                self.event_type.push_str(value);
            }
            // "If the field name is "data": Append the field value to the data
            // buffer, then append a single U+000A LINE FEED (LF) character to
            // the data buffer."
            "data" => {
                if self.poisoned {
                    return;
                }
                // The data as dispatched is the buffer without its last LF.
                if self.data.len() + value.len() > self.max_line {
                    self.poison();
                    out.push(Item::Error(DecodeError::DataTooLong {
                        limit: self.max_line,
                    }));
                    return;
                }
                self.data.push_str(value);
                self.data.push('\n');
            }
            // "If the field name is "id": If the field value does not contain
            // U+0000 NULL, then set the last event ID buffer to the field
            // value. Otherwise, ignore the field."
            "id" if !value.contains('\0') => {
                self.id_buffer.clear();
                self.id_buffer.push_str(value);
            }
            // "If the field name is "retry": If the field value consists of
            // only ASCII digits, then interpret the field value as an integer
            // in base ten, and set the event stream's reconnection time to that
            // integer. Otherwise, ignore the field."
            //
            // An empty value, or one too large for a u64, is ignored too.
            "retry" => {
                if let Some(millis) = parse_digits(value.as_bytes()) {
                    self.retry = Some(millis);
                    out.push(Item::Retry(millis));
                }
            }
            // "Otherwise: The field is ignored."
            _ => {}
        }
    }

    /// "When the user agent is required to dispatch the event, the user agent
    /// must process the data buffer, the event type buffer, and the last event
    /// ID buffer using steps appropriate for the user agent." For web
    /// browsers:
    fn dispatch(&mut self, out: &mut Vec<Item>) {
        // "1. Set the last event ID string of the event source to the value of
        // the last event ID buffer. The buffer does not get reset, so the last
        // event ID string of the event source remains set to this value until
        // the next time it is set by the server."
        if self.last_event_id != self.id_buffer {
            self.last_event_id.clone_from(&self.id_buffer);
        }
        // An event that broke a limit is dropped whole (module docs).
        if self.poisoned {
            self.poisoned = false;
            self.data.clear();
            self.event_type.clear();
            return;
        }
        // "2. If the data buffer is an empty string, set the data buffer and
        // the event type buffer to the empty string and return."
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        // "3. If the data buffer's last character is a U+000A LINE FEED (LF)
        // character, then remove the last character from the data buffer."
        if self.data.ends_with('\n') {
            self.data.pop();
        }
        // "4. Let event be the result of creating an event using MessageEvent
        // [...]. 5. Initialize event's type attribute to "message", its data
        // attribute to data, [...] and its lastEventId attribute to the last
        // event ID string of the event source. 6. If the event type buffer has
        // a value other than the empty string, change the type of the newly
        // created event to equal the value of the event type buffer. 7. Set
        // the data buffer and the event type buffer to the empty string."
        //
        // Taking the buffers both builds the event and empties them.
        let event = if self.event_type.is_empty() {
            String::from("message")
        } else {
            std::mem::take(&mut self.event_type)
        };
        // "8. Queue a task which [...] dispatches the newly created event."
        out.push(Item::Event(SseEvent {
            id: self.last_event_id.clone(),
            event,
            data: std::mem::take(&mut self.data),
        }));
    }
}

/// The position of the first CR or LF in `bytes`.
fn find_line_break(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n' || b == b'\r')
}

/// "Streams must be decoded using the UTF-8 decode algorithm": invalid
/// sequences become U+FFFD; valid text is borrowed, not copied.
fn utf8(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// A non-empty run of ASCII digits as a base-ten u64; `None` for anything
/// else, including a value that overflows.
fn parse_digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sse::encode::{encode_comment, encode_event, encode_retry};
    use bytes::BytesMut;
    use proptest::prelude::*;

    /// Decodes `stream` fed in one piece, then ends it.
    fn decode(stream: &[u8]) -> Vec<Item> {
        decode_with(Decoder::new(), &[stream])
    }

    /// Feeds `chunks` one by one to `decoder`, then ends the stream.
    fn decode_with(mut decoder: Decoder, chunks: &[&[u8]]) -> Vec<Item> {
        let mut items = Vec::new();
        for chunk in chunks {
            decoder.feed(chunk, &mut items);
        }
        decoder.finish(&mut items);
        items
    }

    fn ev(id: &str, event: &str, data: &str) -> Item {
        Item::Event(SseEvent {
            id: id.into(),
            event: event.into(),
            data: data.into(),
        })
    }

    fn msg(data: &str) -> Item {
        ev("", "message", data)
    }

    fn comment(text: &str) -> Item {
        Item::Comment(text.into())
    }

    /// A row of the decoder's table: name, the stream as the chunks it
    /// arrives in, and the items expected.
    type Case<'a> = (&'a str, &'a [&'a [u8]], &'a [Item]);

    /// The decoder's table: one row per rule, each stream given as the chunks
    /// it arrives in.
    #[test]
    fn decodes_every_case_of_the_table() {
        let cases: &[Case] = &[
            ("lf", &[b"data: a\n\n"], &[msg("a")]),
            ("cr", &[b"data: a\r\r"], &[msg("a")]),
            ("crlf", &[b"data: a\r\n\r\n"], &[msg("a")]),
            (
                "crlf split across chunks",
                &[b"data: a\r", b"\n\r", b"\ndata: b\r", b"\n\r", b"\n"],
                &[msg("a"), msg("b")],
            ),
            (
                "empty chunk between cr and lf",
                &[b"data: a\r", b"", b"\ndata: b\n\n"],
                &[msg("a\nb")],
            ),
            (
                "cr at chunk end then a blank line",
                &[b"data: a\r", b"\r"],
                &[msg("a")],
            ),
            (
                "mixed line endings",
                &[b"data: a\rdata: b\ndata: c\r\n\n"],
                &[msg("a\nb\nc")],
            ),
            ("bom skipped", &[b"\xEF\xBB\xBFdata: a\n\n"], &[msg("a")]),
            (
                "bom split across chunks",
                &[b"\xEF", b"\xBB", b"\xBFdata: a\n\n"],
                &[msg("a")],
            ),
            (
                "only one bom skipped",
                &[b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\n"],
                &[],
            ),
            (
                "bom only at the stream start",
                &[b"data: a\n\n\xEF\xBB\xBFdata: b\n\n"],
                &[msg("a")],
            ),
            (
                "bom prefix that is not a bom",
                &[b"\xEF\xBB", b"data: a\n\n"],
                &[],
            ),
            (
                "bom inside data is kept",
                &[b"data: \xEF\xBB\xBFa\n\n"],
                &[msg("\u{feff}a")],
            ),
            (
                "comments reported, never dispatched",
                &[b": hello\n:\n\n"],
                &[comment(" hello"), comment("")],
            ),
            (
                "comment inside an event",
                &[b"data: a\n:x\ndata: b\n\n"],
                &[comment("x"), msg("a\nb")],
            ),
            (
                "field without colon has an empty value",
                &[b"data\n\n"],
                &[msg("")],
            ),
            (
                "event without colon resets the type",
                &[b"event: x\nevent\ndata: a\n\n"],
                &[msg("a")],
            ),
            (
                "id without colon resets the id",
                &[b"id: 1\ndata: a\n\nid\ndata: b\n\n"],
                &[ev("1", "message", "a"), msg("b")],
            ),
            ("no space after colon", &[b"data:a\n\n"], &[msg("a")]),
            ("one leading space stripped", &[b"data: a\n\n"], &[msg("a")]),
            (
                "only one leading space stripped",
                &[b"data:  a \n\n"],
                &[msg(" a ")],
            ),
            (
                "space stripped from every field",
                &[b"id:  1\nevent:  t\ndata:\ta\n\n"],
                &[ev(" 1", " t", "\ta")],
            ),
            (
                "only the first colon separates",
                &[b"data: a: b:c\n\n"],
                &[msg("a: b:c")],
            ),
            (
                "id with nul ignored",
                &[b"id: 1\ndata: a\n\nid: 2\0\ndata: b\n\n"],
                &[ev("1", "message", "a"), ev("1", "message", "b")],
            ),
            (
                "id persists across events",
                &[b"id: 5\ndata: a\n\ndata: b\n\n"],
                &[ev("5", "message", "a"), ev("5", "message", "b")],
            ),
            (
                "empty id resets the last event id",
                &[b"id: 5\ndata: a\n\nid: \ndata: b\n\n"],
                &[ev("5", "message", "a"), msg("b")],
            ),
            (
                "id of this event applies even after its data",
                &[b"data: a\nid: 9\n\n"],
                &[ev("9", "message", "a")],
            ),
            ("retry", &[b"retry: 1500\n\n"], &[Item::Retry(1500)]),
            ("non-digit retry ignored", &[b"retry: 1.5\n\n"], &[]),
            ("negative retry ignored", &[b"retry: -1\n\n"], &[]),
            ("spaced-out retry ignored", &[b"retry:  15\n\n"], &[]),
            ("empty retry ignored", &[b"retry:\nretry\n\n"], &[]),
            (
                "overflowing retry ignored",
                &[b"retry: 99999999999999999999\n\n"],
                &[],
            ),
            (
                "unknown field ignored",
                &[b"foo: bar\nDATA: x\ndata: a\n\n"],
                &[msg("a")],
            ),
            (
                "event without data not dispatched",
                &[b"event: x\nid: 3\n\ndata: a\n\n"],
                &[ev("3", "message", "a")],
            ),
            (
                "last event without blank line not dispatched",
                &[b"data: a\n\ndata: b\n"],
                &[msg("a")],
            ),
            (
                "unfinished last line discarded",
                &[b"data: a\n\ndata: b"],
                &[msg("a")],
            ),
            (
                "multi-line data",
                &[b"data: a\ndata: b\ndata: c\n\n"],
                &[msg("a\nb\nc")],
            ),
            (
                "data without colon appends an empty line",
                &[b"data: a\ndata\ndata\n\n"],
                &[msg("a\n\n")],
            ),
            (
                "only one trailing lf removed",
                &[b"data\ndata\n\n"],
                &[msg("\n")],
            ),
            (
                "event type",
                &[b"event: pere.hello\ndata: {}\n\n"],
                &[ev("", "pere.hello", "{}")],
            ),
            (
                "empty event type is message",
                &[b"event:\ndata: a\n\n"],
                &[msg("a")],
            ),
            (
                "event type reset after dispatch",
                &[b"event: x\ndata: a\n\ndata: b\n\n"],
                &[ev("", "x", "a"), msg("b")],
            ),
            (
                "field names are case sensitive",
                &[b"Data: a\ndata: b\n\n"],
                &[msg("b")],
            ),
            (
                "invalid utf-8 becomes replacement characters",
                &[b"data: a\xFFb\xE2\x82\n\n"],
                &[msg("a\u{FFFD}b\u{FFFD}")],
            ),
            (
                "utf-8 character split across chunks",
                &[b"data: \xE2", b"\x82", b"\xAC\n\n"],
                &[msg("\u{20AC}")],
            ),
            ("nul in data is kept", &[b"data: a\0b\n\n"], &[msg("a\0b")]),
            (
                "pere stream",
                &[b"retry:3000\n\nevent: pere.hello\ndata: {}\n\nid: 1\ndata: hi\n\n:\n\n"],
                &[
                    Item::Retry(3000),
                    ev("", "pere.hello", "{}"),
                    ev("1", "message", "hi"),
                    comment(""),
                ],
            ),
            ("empty stream", &[], &[]),
        ];
        for (name, chunks, expected) in cases {
            let whole = chunks.concat();
            assert_eq!(decode(&whole), *expected, "case {name:?} fed whole");
            let chunked = decode_with(Decoder::new(), chunks);
            assert_eq!(chunked, *expected, "case {name:?} fed in chunks");
            let bytewise: Vec<&[u8]> = whole.chunks(1).collect();
            let bytewise = decode_with(Decoder::new(), &bytewise);
            assert_eq!(bytewise, *expected, "case {name:?} fed byte by byte");
        }
    }

    /// Fixture streams: `(file contents, expected items)`.
    fn fixtures() -> Vec<(&'static str, &'static [u8], Vec<Item>)> {
        vec![
            (
                "pere.sse",
                include_bytes!("testdata/pere.sse"),
                vec![
                    Item::Retry(3000),
                    ev(
                        "",
                        "pere.hello",
                        r#"{"device":"d1","channels":["orders"],"resumed_from":null,"replayed":0}"#,
                    ),
                    ev("1", "message", "hi"),
                    ev("2", "message", "line 1\nline 2\n"),
                    comment(""),
                    ev("2", "pere.gap", r#"{"from":"1","oldest":"2"}"#),
                    ev("3", "news", " indented"),
                ],
            ),
            (
                "crlf.sse",
                include_bytes!("testdata/crlf.sse"),
                vec![
                    Item::Retry(3000),
                    comment(" crlf stream"),
                    ev("1", "message", "first\nsecond"),
                    ev("2", "update", ""),
                    ev("2", "message", "\n"),
                ],
            ),
            (
                "bom-mixed-endings.sse",
                include_bytes!("testdata/bom-mixed-endings.sse"),
                vec![
                    ev("a", "message", "cr\nlf\ncrlf"),
                    comment(""),
                    ev("b", "t", "x"),
                ],
            ),
            (
                "spec-examples.sse",
                include_bytes!("testdata/spec-examples.sse"),
                vec![
                    comment(" test stream"),
                    ev("1", "message", "first event"),
                    msg("second event"),
                    msg(" third event"),
                    msg("test"),
                    msg("test"),
                    msg(""),
                    msg("\n"),
                ],
            ),
        ]
    }

    #[test]
    fn fixture_streams_decode_whole_and_byte_by_byte() {
        for (name, stream, expected) in fixtures() {
            assert_eq!(decode(stream), expected, "{name} fed whole");
            let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
            assert_eq!(
                decode_with(Decoder::new(), &bytewise),
                expected,
                "{name} fed byte by byte"
            );
        }
    }

    #[test]
    fn crlf_fixtures_really_contain_crlf() {
        // Guards the `-text` attribute: a checkout that rewrote line endings
        // would make the CRLF cases test nothing.
        let crlf: &[u8] = include_bytes!("testdata/crlf.sse");
        assert!(crlf.windows(2).any(|w| w == b"\r\n"));
        let mixed: &[u8] = include_bytes!("testdata/bom-mixed-endings.sse");
        assert!(mixed.starts_with(BOM));
        assert!(mixed.windows(2).any(|w| w[0] == b'\r' && w[1] != b'\n'));
    }

    #[test]
    fn last_event_id_and_retry_are_tracked() {
        let mut decoder = Decoder::new();
        let mut items = Vec::new();
        assert_eq!(decoder.last_event_id(), "");
        assert_eq!(decoder.retry(), None);
        decoder.feed(
            b"retry:3000\n\nid: 7\ndata: a\n\nid: 8\ndata: b\n",
            &mut items,
        );
        assert_eq!(decoder.retry(), Some(3000));
        // The id of an event only becomes the last event id at its blank line.
        assert_eq!(decoder.last_event_id(), "7");
        decoder.feed(b"\n", &mut items);
        assert_eq!(decoder.last_event_id(), "8");
    }

    #[test]
    fn id_only_block_moves_the_last_event_id() {
        let items = decode(b"id: 4\n\ndata: a\n\n");
        assert_eq!(items, [ev("4", "message", "a")]);
    }

    #[test]
    fn finish_keeps_last_event_id_for_the_next_connection() {
        let mut decoder = Decoder::new();
        let mut items = Vec::new();
        decoder.feed(b"id: 7\ndata: a\n\nid: 8\ndata: lost\n", &mut items);
        decoder.finish(&mut items);
        assert_eq!(decoder.last_event_id(), "7");
        // The next connection: a BOM is allowed again, nothing of the lost
        // event survives, and an event without id reports the last id.
        decoder.feed(b"\xEF\xBB\xBFdata: b\n\n", &mut items);
        decoder.finish(&mut items);
        assert_eq!(items, [ev("7", "message", "a"), ev("7", "message", "b")]);
    }

    #[test]
    fn over_long_line_is_discarded_with_its_event_and_reported_once() {
        let limit = Item::Error(DecodeError::LineTooLong { limit: 8 });
        // "data:end" is 8 bytes: exactly the limit.
        let stream: &[u8] = b"data: ok\n\nid: 1\ndata: far too long\ndata: b\n\ndata:end\n\n";
        let expected = [msg("ok"), limit, ev("1", "message", "end")];
        assert_eq!(decode_with(Decoder::with_max_line(8), &[stream]), expected);
        let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(decode_with(Decoder::with_max_line(8), &bytewise), expected);
    }

    #[test]
    fn line_of_exactly_the_limit_is_accepted() {
        let items = decode_with(Decoder::with_max_line(8), &[b"data: 12\n\n"]);
        assert_eq!(items, [msg("12")]);
        let items = decode_with(Decoder::with_max_line(8), &[b"data: 12", b"\n\n"]);
        assert_eq!(items, [msg("12")]);
    }

    #[test]
    fn over_long_comment_is_dropped_without_dropping_the_event() {
        let items = decode_with(
            Decoder::with_max_line(8),
            &[b"data: a\n:", b"padding padding\ndata: b\n\n"],
        );
        assert_eq!(
            items,
            [
                Item::Error(DecodeError::LineTooLong { limit: 8 }),
                msg("a\nb")
            ]
        );
    }

    /// Found by the `sse_decoder` fuzz target: `: b\x9e\x9e\x9e` is 6 stream
    /// bytes but 11 decoded, and came out as a comment over the limit.
    #[test]
    fn line_over_the_limit_once_decoded_is_discarded() {
        let limit = Item::Error(DecodeError::LineTooLong { limit: 8 });
        for (stream, expected) in [
            (
                &b": b\x9e\x9e\x9e\ndata: a\n\n"[..],
                vec![limit.clone(), msg("a")],
            ),
            (b"id: \x9e\x9e\x9e\ndata: a\n\n", vec![limit.clone()]),
            (b"event:\xff\xff\ndata: a\n\n", vec![limit.clone()]),
            // Two invalid bytes decode to 6 bytes: "id:" + 6 is 9, over 8.
            (b"id:a\xff\xff\ndata: a\n\n", vec![limit.clone()]),
            // One decodes to "id:a\u{FFFD}", 7 bytes: within the limit.
            (
                b"id:a\xff\ndata: a\n\n",
                vec![ev("a\u{FFFD}", "message", "a")],
            ),
        ] {
            assert_eq!(decode_with(Decoder::with_max_line(8), &[stream]), expected);
            let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
            assert_eq!(decode_with(Decoder::with_max_line(8), &bytewise), expected);
        }
    }

    #[test]
    fn over_long_line_is_never_buffered() {
        let mut decoder = Decoder::with_max_line(16);
        let mut items = Vec::new();
        decoder.feed(b"data: ", &mut items);
        for _ in 0..10_000 {
            decoder.feed(&[b'x'; 100], &mut items);
            assert!(decoder.line.len() <= 16);
        }
        decoder.feed(b"\n\ndata: ok\n\n", &mut items);
        assert_eq!(
            items,
            [
                Item::Error(DecodeError::LineTooLong { limit: 16 }),
                msg("ok")
            ]
        );
    }

    #[test]
    fn event_with_too_much_data_is_discarded_and_reported_once() {
        let mut decoder = Decoder::with_max_line(10);
        let mut items = Vec::new();
        // Each line is 10 bytes, within the limit; the data is not.
        decoder.feed(b"data:12345\n", &mut items);
        for _ in 0..1000 {
            decoder.feed(b"data:12345\n", &mut items);
            assert!(decoder.data.len() <= 11);
        }
        decoder.feed(b"\ndata:1234\ndata:12345\n\n", &mut items);
        // 4 + 1 + 5 = 10 bytes: exactly the limit.
        assert_eq!(
            items.len(),
            2,
            "one error and one event expected, got {} items",
            items.len()
        );
        assert_eq!(
            items,
            [
                Item::Error(DecodeError::DataTooLong { limit: 10 }),
                msg("1234\n12345")
            ]
        );
    }

    #[test]
    fn errors_read_as_sentences() {
        assert_eq!(
            DecodeError::LineTooLong { limit: 8 }.to_string(),
            "SSE line longer than 8 bytes was discarded"
        );
        assert_eq!(
            DecodeError::DataTooLong { limit: 8 }.to_string(),
            "SSE event with more than 8 bytes of data was discarded"
        );
    }

    #[test]
    fn zero_limit_rejects_every_non_blank_line() {
        let items = decode_with(Decoder::with_max_line(0), &[b"data: a\n\n:\n\n"]);
        let limit = Item::Error(DecodeError::LineTooLong { limit: 0 });
        assert_eq!(items, [limit.clone(), limit]);
    }

    // ---- properties ----

    /// Payloads built from pieces that stress the encoder: line breaks of
    /// every kind, NUL, spaces, BOMs, field lookalikes and arbitrary text.
    fn payload() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            any::<String>(),
            "[a-z ]{0,5}",
            Just("\r\n".to_owned()),
            Just("\r".to_owned()),
            Just("\n".to_owned()),
            Just("\0".to_owned()),
            Just(" ".to_owned()),
            Just(":".to_owned()),
            Just("\u{feff}".to_owned()),
            Just("data: forged".to_owned()),
            Just("\n\ndata: forged".to_owned()),
            Just("\rid: 999".to_owned()),
            Just("\r\nevent: evil\r\n\r\n".to_owned()),
            Just("retry: 1".to_owned()),
        ];
        prop::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
    }

    /// Ids the encoder accepts: anything without CR, LF or NUL.
    fn id() -> impl Strategy<Value = Option<String>> {
        prop::option::of("[^\r\n\0]{0,12}")
    }

    /// Event types the encoder accepts: anything without CR or LF.
    fn event_type() -> impl Strategy<Value = Option<String>> {
        prop::option::of(prop_oneof![
            Just("message".to_owned()),
            Just("pere.hello".to_owned()),
            "[^\r\n]{0,12}",
        ])
    }

    /// What a decoder reads back from a payload: CRLF and lone CR become LF.
    fn normalized(payload: &str) -> String {
        payload.replace("\r\n", "\n").replace('\r', "\n")
    }

    /// Bytes that look like an event stream, so that splitting them exercises
    /// every state of the decoder, mixed with arbitrary bytes.
    fn stream() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            prop::collection::vec(any::<u8>(), 0..6),
            "[a-z :]{0,6}".prop_map(String::into_bytes),
            Just(b"\r".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\n\n".to_vec()),
            Just(b"data: ".to_vec()),
            Just(b"data".to_vec()),
            Just(b"id: ".to_vec()),
            Just(b"event: ".to_vec()),
            Just(b"retry: 12".to_vec()),
            Just(b":".to_vec()),
            Just(b"\0".to_vec()),
            Just(BOM.to_vec()),
            Just("é€😀".as_bytes().to_vec()),
        ];
        prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
    }

    /// `bytes` cut at the given positions (taken modulo its length).
    fn split_at<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for cut in cuts {
            chunks.push(&bytes[start..cut]);
            start = cut;
        }
        chunks.push(&bytes[start..]);
        chunks
    }

    proptest! {
        // Failures are not persisted to `proptest-regressions/`: each one found
        // becomes a row of the table above instead (STYLE §8).
        #![proptest_config(ProptestConfig {
            cases: 512,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn encoded_event_decodes_to_itself_with_crs_as_lfs(
            id in id(),
            event in event_type(),
            data in payload(),
        ) {
            let mut out = BytesMut::new();
            encode_event(&mut out, id.as_deref(), event.as_deref(), &data).unwrap();
            let expected_type = match event.as_deref() {
                None | Some("") => "message",
                Some(event) => event,
            };
            let expected = vec![ev(id.as_deref().unwrap_or(""), expected_type, &normalized(&data))];
            prop_assert_eq!(decode(&out), expected);
        }

        #[test]
        fn any_split_decodes_like_the_whole_stream(
            stream in stream(),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
            max_line in prop_oneof![Just(DEFAULT_MAX_LINE), 0usize..24],
        ) {
            let mut whole_decoder = Decoder::with_max_line(max_line);
            let mut whole = Vec::new();
            whole_decoder.feed(&stream, &mut whole);

            let mut split_decoder = Decoder::with_max_line(max_line);
            let mut split = Vec::new();
            for chunk in split_at(&stream, &cuts) {
                split_decoder.feed(chunk, &mut split);
            }
            prop_assert_eq!(&whole, &split);
            prop_assert_eq!(whole_decoder.last_event_id(), split_decoder.last_event_id());
            prop_assert_eq!(whole_decoder.retry(), split_decoder.retry());

            whole_decoder.finish(&mut whole);
            split_decoder.finish(&mut split);
            prop_assert_eq!(whole, split);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..512),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
            max_line in prop_oneof![Just(DEFAULT_MAX_LINE), 0usize..16],
        ) {
            let chunks = split_at(&bytes, &cuts);
            let items = decode_with(Decoder::with_max_line(max_line), &chunks);
            for item in items {
                if let Item::Event(event) = item {
                    prop_assert!(event.data.len() <= max_line);
                }
            }
        }

        #[test]
        fn concatenated_events_decode_to_the_same_sequence(
            events in prop::collection::vec((id(), event_type(), payload()), 0..6),
            retry in prop::option::of(any::<u64>()),
            note in prop::option::of(payload()),
        ) {
            let mut out = BytesMut::new();
            let mut expected = Vec::new();
            if let Some(millis) = retry {
                encode_retry(&mut out, millis);
                expected.push(Item::Retry(millis));
            }
            let mut last_id = String::new();
            for (i, (id, event, data)) in events.iter().enumerate() {
                encode_event(&mut out, id.as_deref(), event.as_deref(), data).unwrap();
                if let Some(id) = id {
                    last_id.clone_from(id);
                }
                let event = match event.as_deref() {
                    None | Some("") => "message",
                    Some(event) => event,
                };
                expected.push(ev(&last_id, event, &normalized(data)));
                if let (0, Some(note)) = (i, &note) {
                    encode_comment(&mut out, note);
                    let lines = normalized(note);
                    expected.extend(lines.split('\n').map(comment));
                }
            }
            prop_assert_eq!(decode(&out), expected);
        }
    }
}
