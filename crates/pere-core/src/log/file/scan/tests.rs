// Lists of skipped byte ranges, compared whole: a one-range list is meant.
#![allow(clippy::single_range_in_vec_init)]

use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::event::{Event, Timestamp};
use crate::name::ChannelName;

/// Segment bytes before the records (the scanner does not read them).
const START: usize = 32;

fn event(id: u64, payload: &[u8]) -> Stored {
    Stored::Hub(Record::Event(Arc::new(Event {
        id: EventId(id),
        channel: ChannelName::new("c").unwrap(),
        kind: None,
        device: None,
        time: Timestamp(0x0101_0101),
        payload: Bytes::copy_from_slice(payload),
        idempotency_key: None,
    })))
}

/// A segment as the writer leaves it: records with consecutive lsns from
/// `first_lsn`, events with increasing ids and payloads of varied sizes.
struct Log {
    bytes: Vec<u8>,
    /// Where each record lies, and its lsn.
    records: Vec<(Range<usize>, u64)>,
}

impl Log {
    fn new(n: u64, first_lsn: u64) -> Self {
        let mut log = Log {
            bytes: vec![0xEE; START],
            records: Vec::new(),
        };
        for i in 0..n {
            let payload = format!("payload {i} {}", "x".repeat((i as usize * 7) % 40));
            log.push(first_lsn + i, &event(1000 + i, payload.as_bytes()));
        }
        log
    }

    fn push(&mut self, lsn: u64, record: &Stored) {
        let at = self.bytes.len();
        codec::encode(&mut self.bytes, lsn, record);
        self.records.push((at..self.bytes.len(), lsn));
    }

    fn range(&self, i: usize) -> Range<usize> {
        self.records[i].0.clone()
    }

    fn lsns_except(&self, lost: &[usize]) -> Vec<u64> {
        (0..self.records.len())
            .filter(|i| !lost.contains(i))
            .map(|i| self.records[i].1)
            .collect()
    }
}

/// The order after a record with `lsn` read just before the segment, in a
/// writer's run.
fn after(lsn: u64) -> Order {
    Order {
        lsn: Some(lsn),
        event: EventId(999),
        adjacent: true,
    }
}

fn scan(bytes: &[u8], last: bool, consecutive: bool, order: Order) -> SegmentScan {
    let scan = scan_segment(bytes, START, last, consecutive, order);
    // Every byte is in exactly one record, skipped range or torn tail.
    let mut pieces: Vec<Range<usize>> = scan
        .records
        .iter()
        .map(|f| f.offset..f.offset + f.len)
        .chain(scan.damaged.iter().map(|d| d.range.clone()))
        .chain(scan.torn.iter().map(|t| t.range.clone()))
        .collect();
    pieces.sort_by_key(|r| r.start);
    let mut at = START;
    for piece in &pieces {
        assert_eq!(piece.start, at, "{pieces:?}");
        assert!(piece.end > piece.start);
        at = piece.end;
    }
    assert_eq!(at, bytes.len().max(START), "{pieces:?}");
    assert!(scan.records.windows(2).all(|w| w[0].lsn < w[1].lsn));
    scan
}

fn lsns(scan: &SegmentScan) -> Vec<u64> {
    scan.records.iter().map(|f| f.lsn).collect()
}

fn skipped(scan: &SegmentScan) -> Vec<Range<usize>> {
    scan.damaged.iter().map(|d| d.range.clone()).collect()
}

#[test]
fn an_intact_segment_reads_whole() {
    let log = Log::new(20, 0);
    for last in [false, true] {
        let s = scan(&log.bytes, last, true, Order::default());
        assert_eq!(lsns(&s), log.lsns_except(&[]));
        assert!(s.damaged.is_empty() && s.torn.is_none());
        assert_eq!(s.order.lsn, Some(19));
        assert_eq!(s.order.event, EventId(1019));
        assert!(s.order.adjacent);
    }
}

/// A flipped bit anywhere in a record at the start, middle or end of a
/// segment skips exactly that record, whatever field it hits (the length
/// included), in a sealed segment and in the last one.
#[test]
fn a_flipped_bit_skips_exactly_that_record() {
    let log = Log::new(12, 100);
    for victim in [0, 1, 6, 10, 11] {
        let range = log.range(victim);
        for byte in range.clone() {
            for bit in [0, 3, 7] {
                let mut bytes = log.bytes.clone();
                bytes[byte] ^= 1 << bit;
                // A length that now claims exactly the rest of the segment
                // is believed: what it covers is lost (module docs).
                let claims_rest = claimed_end(&bytes, range.start) == Some(bytes.len());
                let lost: Vec<usize> = if claims_rest {
                    (victim..12).collect()
                } else {
                    vec![victim]
                };
                for last in [false, true] {
                    let s = scan(&bytes, last, true, after(99));
                    let what = format!("record {victim}, byte {byte}, bit {bit}, last {last}");
                    assert_eq!(lsns(&s), log.lsns_except(&lost), "{what}");
                    let end = if claims_rest { bytes.len() } else { range.end };
                    let reported = if last && end == bytes.len() {
                        assert!(s.damaged.is_empty(), "{what}");
                        s.torn.as_ref().map(|t| t.range.clone())
                    } else {
                        assert!(s.torn.is_none(), "{what}");
                        assert_eq!(s.damaged.len(), 1, "{what}");
                        Some(s.damaged[0].range.clone())
                    };
                    assert_eq!(reported, Some(range.start..end), "{what}");
                }
            }
        }
    }
}

/// In a compacted segment (lsns with gaps) a damaged record whose length
/// still reads is hopped over, a run of them too.
#[test]
fn damaged_records_of_a_compacted_segment_are_skipped() {
    let mut log = Log {
        bytes: vec![0; START],
        records: Vec::new(),
    };
    for i in 0..10u64 {
        log.push(
            i * i * 10 + 5,
            &event(50 + i * 3, format!("e{i}").as_bytes()),
        );
    }
    let mut bytes = log.bytes.clone();
    for victim in [2, 3, 7] {
        let r = log.range(victim);
        bytes[r.end - 1] ^= 0x10;
    }
    let s = scan(&bytes, false, false, Order::default());
    assert_eq!(lsns(&s), log.lsns_except(&[2, 3, 7]));
    assert_eq!(
        skipped(&s),
        [log.range(2).start..log.range(3).end, log.range(7)]
    );
}

#[test]
fn several_damaged_regions_are_each_skipped() {
    let log = Log::new(30, 0);
    let mut bytes = log.bytes.clone();
    // A payload bit, a length zeroed, two neighbours' checksums.
    bytes[log.range(3).end - 2] ^= 0x01;
    bytes[log.range(9).start..log.range(9).start + 4].fill(0);
    for victim in [17, 18] {
        bytes[log.range(victim).start + 5] ^= 0x80;
    }
    let s = scan(&bytes, true, true, Order::default());
    assert_eq!(lsns(&s), log.lsns_except(&[3, 9, 17, 18]));
    assert_eq!(
        skipped(&s),
        [
            log.range(3),
            log.range(9),
            log.range(17).start..log.range(18).end
        ]
    );
    assert!(s.torn.is_none());
}

/// A sector of zeros (or of garbage) over several records loses those, and
/// only those.
#[test]
fn a_destroyed_sector_loses_only_the_records_it_touches() {
    let log = Log::new(60, 7);
    for fill in [0x00u8, 0xA5] {
        let mut bytes = log.bytes.clone();
        let hole = 600..1112;
        bytes[hole.clone()].fill(fill);
        let touched: Vec<usize> = (0..60)
            .filter(|i| {
                let r = log.range(*i);
                r.start < hole.end && hole.start < r.end
            })
            .collect();
        assert!(touched.len() >= 5, "{touched:?}");
        for last in [false, true] {
            let s = scan(&bytes, last, true, after(6));
            assert_eq!(lsns(&s), log.lsns_except(&touched), "fill {fill:#x}");
            let first = log.range(touched[0]).start;
            let end = log.range(*touched.last().unwrap()).end;
            assert_eq!(skipped(&s), [first..end]);
        }
    }
}

#[test]
fn damage_at_the_start_of_a_segment() {
    let log = Log::new(8, 40);
    let mut bytes = log.bytes.clone();
    bytes[log.range(0).start..log.range(0).start + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    // After a previous segment of the writer's run, and at the very start
    // of the log (nothing to count lsns from).
    for order in [after(39), Order::default()] {
        let s = scan(&bytes, true, true, order);
        assert_eq!(lsns(&s), log.lsns_except(&[0]), "{order:?}");
        assert_eq!(skipped(&s), [log.range(0)]);
    }
}

#[test]
fn a_torn_tail_is_cut_only_in_the_last_segment() {
    let log = Log::new(10, 0);
    let whole = log.bytes.len();
    for cut in [1, 4, 8, 12, log.range(9).len() - 1] {
        let bytes = &log.bytes[..whole - cut];
        let s = scan(bytes, true, true, Order::default());
        assert_eq!(lsns(&s), log.lsns_except(&[9]), "cut {cut}");
        assert!(s.damaged.is_empty());
        let torn = s.torn.unwrap();
        assert_eq!(torn.range, log.range(9).start..bytes.len());
        assert_eq!(torn.why, Why::Decode(DecodeError::Truncated));
        assert!(!s.order.adjacent);
        // Not the last segment: the same bytes are damage, not a tail.
        let s = scan(bytes, false, true, Order::default());
        assert_eq!(lsns(&s), log.lsns_except(&[9]));
        assert_eq!(skipped(&s), [log.range(9).start..bytes.len()]);
        assert!(s.torn.is_none());
    }
    // Zeros where the last batch should be (a file extended, its data
    // never written) are a torn tail too.
    let mut bytes = log.bytes.clone();
    bytes.extend_from_slice(&[0; 4096]);
    let s = scan(&bytes, true, true, Order::default());
    assert_eq!(lsns(&s), log.lsns_except(&[]));
    assert_eq!(s.torn.unwrap().range, whole..bytes.len());
}

/// In the last segment, damage followed by records is skipped, not cut as
/// if it were a torn tail.
#[test]
fn damage_in_the_last_segment_followed_by_records_is_not_a_torn_tail() {
    let log = Log::new(10, 0);
    let mut bytes = log.bytes.clone();
    bytes[log.range(4).start + 20] ^= 0x04;
    let s = scan(&bytes, true, true, Order::default());
    assert_eq!(lsns(&s), log.lsns_except(&[4]));
    assert_eq!(skipped(&s), [log.range(4)]);
    assert!(s.torn.is_none());
    // And with a torn tail after it as well: both, each for what it is.
    let cut = &bytes[..bytes.len() - 3];
    let s = scan(cut, true, true, Order::default());
    assert_eq!(lsns(&s), log.lsns_except(&[4, 9]));
    assert_eq!(skipped(&s), [log.range(4)]);
    assert_eq!(s.torn.unwrap().range, log.range(9).start..cut.len());
}

/// An intact record whose lsn or event id does not increase (a stale copy)
/// is damage; the records after it are kept.
#[test]
fn a_record_out_of_order_is_skipped() {
    let mut log = Log::new(5, 0);
    let stale = log.bytes[log.range(1)].to_vec();
    let at = log.bytes.len();
    log.bytes.extend_from_slice(&stale);
    log.records.push((at..log.bytes.len(), 1));
    log.push(5, &event(2000, b"after"));
    let s = scan(&log.bytes, true, false, Order::default());
    assert_eq!(lsns(&s), [0, 1, 2, 3, 4, 5]);
    assert_eq!(skipped(&s), [at..at + stale.len()]);
    assert_eq!(s.damaged[0].why, Why::OutOfOrder);
}

/// A frame of an event with `lsn` that is valid UTF-8 (varying its payload
/// until the checksum's bytes are), so a publisher could send it as a
/// payload; `None` if the lsn's own bytes never are.
fn forged_frame(lsn: u64) -> Option<Vec<u8>> {
    (0u32..20_000).find_map(|nonce| {
        let mut out = Vec::new();
        codec::encode(
            &mut out,
            lsn,
            &event(0x4141_4141, format!("forged {nonce}").as_bytes()),
        );
        std::str::from_utf8(&out).is_ok().then_some(out)
    })
}

/// The lsns a forged frame can carry: around the log's, and absurd ones.
fn forged_lsns() -> impl Iterator<Item = u64> {
    (0..40).chain([0x3030_3030, 1 << 40, 0x7F7F_7F7F_7F7F_7F7F])
}

/// A log whose record `victim` is an event carrying a frame with
/// `forged_lsn` as its payload.
fn forged_log(forged_lsn: u64) -> (Log, usize) {
    let frame = forged_frame(forged_lsn).expect("a UTF-8 frame");
    let mut log = Log::new(4, 10);
    let victim = log.records.len();
    log.push(14, &event(2000, &frame));
    for i in 0..4 {
        log.push(15 + i, &event(3000 + i, b"after"));
    }
    (log, victim)
}

/// A frame inside a payload is never read as a record when its enclosing
/// record is damaged but its length still reads: the scanner hops over it.
#[test]
fn a_frame_inside_a_damaged_payload_is_never_read() {
    for lsn in forged_lsns() {
        let (log, victim) = forged_log(lsn);
        let mut bytes = log.bytes.clone();
        bytes[log.range(victim).start + 5] ^= 0x01; // the checksum
        for (consecutive, order) in [(true, after(9)), (false, Order::default())] {
            let s = scan(&bytes, true, consecutive, order);
            assert_eq!(lsns(&s), log.lsns_except(&[victim]), "forged lsn {lsn}");
            assert_eq!(skipped(&s), [log.range(victim)]);
        }
    }
}

/// When the enclosing record's length is damaged too, the search meets the
/// forged frame: in a writer's run it is never taken, whatever its lsn.
#[test]
fn a_frame_inside_a_payload_whose_length_is_damaged_is_not_taken() {
    for lsn in forged_lsns() {
        let (log, victim) = forged_log(lsn);
        let at = log.range(victim).start;
        for damage in [0u32, 3, u32::MAX, 20] {
            let mut bytes = log.bytes.clone();
            bytes[at..at + 4].copy_from_slice(&damage.to_le_bytes());
            for last in [false, true] {
                let s = scan(&bytes, last, true, after(9));
                let what = format!("forged lsn {lsn}, length {damage}, last {last}");
                assert_eq!(lsns(&s), log.lsns_except(&[victim]), "{what}");
                assert_eq!(skipped(&s), [log.range(victim)], "{what}");
            }
        }
    }
}

/// The last record written carries a frame (a publisher's payload) and is
/// damaged, its length intact, and after it lie the zeros the writer
/// wrote ahead: the record is cut with the tail, and nothing inside it is
/// read. The search found the frame, with the lsn the next record would
/// have had, and a chain of such frames forged events (a probe's 4 of 4).
#[test]
fn a_frame_inside_the_last_record_is_never_read_when_it_is_damaged() {
    for lsn in forged_lsns() {
        let frame = forged_frame(lsn).expect("a UTF-8 frame");
        let mut log = Log::new(4, 10);
        let victim = log.records.len();
        log.push(14, &event(2000, &frame));
        let end = log.range(victim).end;
        for damage in [log.range(victim).start + 5, end - 1] {
            let mut bytes = log.bytes.clone();
            bytes[damage] ^= 0x01;
            bytes.resize(end + 4096, 0);
            let s = scan(&bytes, true, true, after(9));
            assert_eq!(lsns(&s), log.lsns_except(&[victim]), "forged lsn {lsn}");
            assert_eq!(
                s.torn.as_ref().map(|t| t.range.clone()),
                Some(log.range(victim).start..bytes.len()),
                "forged lsn {lsn}"
            );
        }
    }
}

/// In a compacted segment nothing bounds lsns from above, but a forged
/// frame whose lsn is out of line with the records after it does not hide
/// them: the genuine record reads further and wins.
#[test]
fn a_forged_frame_with_an_absurd_lsn_hides_nothing() {
    for lsn in [15, 16, 1 << 40, 0x7F7F_7F7F_7F7F_7F7F] {
        let (log, victim) = forged_log(lsn);
        let at = log.range(victim).start;
        let mut bytes = log.bytes.clone();
        bytes[at..at + 4].fill(0);
        let s = scan(&bytes, false, false, Order::default());
        assert_eq!(lsns(&s), log.lsns_except(&[victim]), "forged lsn {lsn}");
    }
}

/// A megabyte of garbage is searched quickly: structure is checked before
/// checksums, so the search does not compute one per byte.
#[test]
fn a_search_through_garbage_is_cheap() {
    let log = Log::new(5, 0);
    let mut bytes = log.bytes.clone();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..(1 << 20) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.push(x as u8);
    }
    let at = bytes.len();
    // The garbage took the place of records (lsn 5 at least).
    for lsn in 6..9 {
        codec::encode(&mut bytes, lsn, &event(2000 + lsn, b"after"));
    }
    let started = std::time::Instant::now();
    let s = scan(&bytes, true, true, Order::default());
    assert_eq!(lsns(&s), [0, 1, 2, 3, 4, 6, 7, 8]);
    assert_eq!(skipped(&s), [log.bytes.len()..at]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// A damaged length that lands past intact records, in the zeros the
/// writer wrote ahead, does not cost them: the damaged record's body still
/// passes its checksum at its true length, so only the length was
/// damaged, and reading goes on after it. (Found in review: the check for
/// a damaged last record cut them all as the tail.)
#[test]
fn a_damaged_length_landing_in_the_zeros_ahead_costs_only_its_record() {
    let log = Log::new(12, 100);
    let victim = 5;
    let at = log.range(victim).start;
    let mut bytes = log.bytes.clone();
    bytes.resize(bytes.len() + 64 * 1024, 0);
    bytes[at + 2] ^= 0x01; // +64 KiB
    let s = scan(&bytes, true, true, after(99));
    assert_eq!(lsns(&s), log.lsns_except(&[victim]));
    assert_eq!(skipped(&s), [log.range(victim)]);
}
