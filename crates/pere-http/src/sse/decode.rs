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
mod tests;
