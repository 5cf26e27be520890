//! `record_codec`: the store's record codec on damaged bytes.

use pere_core::fuzzing::{
    DecodeError, FRAME_HEADER, MAX_RECORD, Stored, checksum, decode_record, encode_record, frame,
};
use pere_core::{ChannelName, DeviceId, Event, EventId, EventType, Pattern, Record, Timestamp};

use super::{Input, text};

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
