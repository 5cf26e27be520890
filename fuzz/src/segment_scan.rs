//! `segment_scan`: the durable store's segment scanner, which recovery and
//! compaction use to read a segment back across damage.

use pere_core::fuzzing::{
    FRAME_HEADER, Order, SegmentScan, Stored, decode_record, encode_record, frame, scan_segment,
};
use pere_core::{DeviceId, Event, EventId, Record, Timestamp};

use super::{Input, text};

/// Bytes before a segment's records (its header; the scanner skips them).
const START: usize = 32;

/// `segment_scan`: the scanner never panics, accounts for every byte, and
/// returns records in order that are exactly what their bytes say. On a
/// log the harness wrote and then damaged as a disk would (bits flipped,
/// sectors zeroed or overwritten, a cut), whenever the only intact frames
/// left are records as written, it returns none but those, and all of
/// them unless the damage changed a length field in a way the module docs
/// of `log/file/scan.rs` list (outside a writer's run, or one that now
/// claims the rest of the segment).
///
/// Input: a mode byte (bit 0: the last segment; bit 1: a writer's run,
/// lsns one apart; bit 2: the order before the segment is known; bit 3:
/// the rest is raw segment bytes), then a record count, a `u64` base lsn,
/// one field per record (an event's payload, or an ack's status when its
/// first byte is odd), and damage: a count, then per operation a kind
/// byte, a `u16` position, a `u16` size and a fill byte.
pub fn segment_scan(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let last = mode & 1 != 0;
    let consecutive = mode & 2 != 0;
    let known = mode & 4 != 0;
    if mode & 8 != 0 {
        let base = input.u64();
        let order = Order {
            lsn: known.then_some(base),
            event: EventId(base / 2),
            adjacent: known && consecutive,
        };
        let bytes = input.rest();
        let scan = scan_segment(bytes, START.min(bytes.len()), last, consecutive, order);
        check_well_formed(bytes, START.min(bytes.len()), &order, &scan);
        return;
    }
    let count = usize::from(input.byte() % 24) + 1;
    // Away from the ends of u64, so `lsn + k` never overflows.
    let base = input.u64() % (1 << 62) + 1;
    let mut bytes = vec![0u8; START];
    // (offset, end, lsn) of each record written.
    let mut written: Vec<(usize, usize, u64)> = Vec::with_capacity(count);
    let mut lsn = base;
    for i in 0..count as u64 {
        let field = input.field();
        let record = if field.first().is_some_and(|b| b & 1 == 1) {
            Stored::Hub(Record::Ack {
                id: EventId(i),
                device: DeviceId::new("d").expect("a valid device"),
                status: text(field).into(),
                at: Timestamp(i as i64),
            })
        } else {
            let payload = text(field).into_owned();
            Stored::Hub(Record::Event(std::sync::Arc::new(Event {
                id: EventId(1_000 + i),
                channel: pere_core::ChannelName::new("c").expect("a valid channel"),
                kind: None,
                device: None,
                time: Timestamp(i as i64),
                payload: if payload.is_empty() {
                    "x".into()
                } else {
                    payload.into_bytes().into()
                },
                idempotency_key: None,
            })))
        };
        let at = bytes.len();
        encode_record(&mut bytes, lsn, &record);
        written.push((at, bytes.len(), lsn));
        lsn += if consecutive {
            1
        } else {
            1 + u64::from(field.len() as u8 % 5)
        };
    }
    let order = Order {
        lsn: known.then(|| base - 1),
        event: EventId(999),
        adjacent: known && consecutive,
    };
    let clean = bytes.clone();
    for _ in 0..input.byte() % 5 {
        let (kind, position, size, fill) = (input.byte(), input.u16(), input.u16(), input.byte());
        if bytes.len() <= START {
            break;
        }
        let at = START + usize::from(position) % (bytes.len() - START);
        let end = (at + usize::from(size % 600) + 1).min(bytes.len());
        match kind % 4 {
            0 => bytes[at] ^= 1 << (size % 8),
            1 => bytes[at..end].fill(0),
            2 => bytes[at..end].fill(fill),
            _ => bytes.truncate(at),
        }
    }
    let scan = scan_segment(&bytes, START, last, consecutive, order);
    check_well_formed(&bytes, START, &order, &scan);

    let untouched =
        |&(at, end, _): &(usize, usize, u64)| bytes.get(at..end) == Some(&clean[at..end]);
    // The only intact frames are untouched records: nothing forged by the
    // input or made by the damage can pass for a record.
    let only_written = (START..bytes.len()).all(|p| {
        match frame(&bytes[p..]).map(|(_, body)| decode_record(body)) {
            Ok(Ok(_)) => written.iter().any(|w| w.0 == p && untouched(w)),
            _ => true,
        }
    });
    if !only_written {
        return;
    }
    for found in &scan.records {
        assert!(
            written
                .iter()
                .any(|w| w.0 == found.offset && w.1 == found.offset + found.len && untouched(w)),
            "a record at {} that was not written there",
            found.offset
        );
    }
    let length_changed = written
        .iter()
        .any(|&(at, _, _)| bytes.get(at..at + 4) != Some(&clean[at..at + 4]));
    // A damaged length now claiming exactly the rest of the segment is
    // believed: what it covers is lost.
    let claims_rest = written.iter().filter(|w| !untouched(w)).any(|&(at, _, _)| {
        bytes.get(at..at + 4).is_some_and(|len| {
            let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
            at + FRAME_HEADER + len == bytes.len()
        })
    });
    let lengths_are_checked = consecutive && known;
    if (!length_changed || lengths_are_checked) && !claims_rest {
        for w in written.iter().filter(|w| untouched(w)) {
            assert!(
                scan.records.iter().any(|f| f.offset == w.0),
                "the intact record at {} (lsn {}) was not returned",
                w.0,
                w.2
            );
        }
    }
}

/// What holds for any bytes: every byte is in exactly one record, skipped
/// range or torn tail (and a torn tail only in the last segment, at the
/// end); records are in order after `order` and are exactly their bytes.
fn check_well_formed(bytes: &[u8], start: usize, order: &Order, scan: &SegmentScan) {
    let mut pieces: Vec<(usize, usize)> = scan
        .records
        .iter()
        .map(|f| (f.offset, f.offset + f.len))
        .chain(scan.damaged.iter().map(|d| (d.range.start, d.range.end)))
        .chain(scan.torn.iter().map(|t| (t.range.start, t.range.end)))
        .collect();
    pieces.sort_unstable();
    let mut at = start;
    for (from, to) in &pieces {
        assert_eq!(*from, at, "pieces {pieces:?}");
        assert!(to > from, "an empty piece in {pieces:?}");
        at = *to;
    }
    assert_eq!(
        at,
        bytes.len(),
        "pieces {pieces:?} of {} bytes",
        bytes.len()
    );
    if let Some(torn) = &scan.torn {
        assert_eq!(torn.range.end, bytes.len());
    }
    let mut last_lsn = order.lsn;
    let mut last_event = order.event;
    for f in &scan.records {
        assert!(last_lsn.is_none_or(|l| f.lsn > l), "lsns increase");
        last_lsn = Some(f.lsn);
        if let Stored::Hub(Record::Event(e)) = &f.record {
            assert!(e.id > last_event, "event ids increase");
            last_event = e.id;
        }
        let mut again = Vec::new();
        encode_record(&mut again, f.lsn, &f.record);
        assert_eq!(
            again,
            &bytes[f.offset..f.offset + f.len],
            "the record at {} is exactly its bytes",
            f.offset
        );
    }
    assert_eq!(scan.order.lsn, last_lsn.or(order.lsn));
}
