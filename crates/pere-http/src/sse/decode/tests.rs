#![allow(clippy::unwrap_used)]

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
            include_bytes!("../testdata/pere.sse"),
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
            include_bytes!("../testdata/crlf.sse"),
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
            include_bytes!("../testdata/bom-mixed-endings.sse"),
            vec![
                ev("a", "message", "cr\nlf\ncrlf"),
                comment(""),
                ev("b", "t", "x"),
            ],
        ),
        (
            "spec-examples.sse",
            include_bytes!("../testdata/spec-examples.sse"),
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
    let crlf: &[u8] = include_bytes!("../testdata/crlf.sse");
    assert!(crlf.windows(2).any(|w| w == b"\r\n"));
    let mixed: &[u8] = include_bytes!("../testdata/bom-mixed-endings.sse");
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
