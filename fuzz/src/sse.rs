//! `sse_decoder`: the SSE decoder and encoder.

use bytes::BytesMut;
use pere_http::sse::{
    DEFAULT_MAX_LINE, Decoder, EncodeError, Item, SseEvent, encode_comment, encode_event,
    encode_retry, event_frame,
};

use super::{Input, text};

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
