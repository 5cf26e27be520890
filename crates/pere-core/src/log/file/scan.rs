//! The segment scanner: reads one segment's records back, across damage.
//!
//! Records are read front to back. A record that is cut short, fails its
//! checksum, does not decode, or breaks the log's order (lsns and event ids
//! strictly increase through the log) is damage. The scanner then
//! resynchronises on the next record it can trust, reports the bytes it
//! skipped, and reads on:
//!
//! 1. The damaged record's own length field, when plausible, says where the
//!    next record starts; the bytes inside the damaged record are then
//!    never read as records (a payload may hold any bytes, whole frames
//!    included). In a run the writer wrote, lsns go up by exactly one per
//!    record, so the record found there must carry the lsn after the
//!    damaged one's: if it does not, the length was damaged too. Elsewhere
//!    (compacted segments), a run of damaged records is hopped this way.
//!    When that length lands on nothing but zeros to the segment's end
//!    (what the writer wrote ahead), the damaged record was the last one
//!    written, and the rest is cut, never searched; unless only the length
//!    was damaged: the body passes its checksum at a shorter length, where
//!    a record continuing the log follows. (A payload forged so that a
//!    prefix of it passes the whole record's checksum, with damage past
//!    that prefix, and a frame there with the next lsn, would still be
//!    taken.)
//! 2. Otherwise the scanner searches, byte by byte, for the next offset
//!    where a whole frame decodes, passes its checksum and continues the
//!    order (structure is checked before the checksum, so a search through
//!    garbage costs little). Frame-like bytes inside a payload are what
//!    this search must not be fooled by, so a candidate must also:
//!    - in a writer's run, carry an lsn that counts the records lost: at
//!      least two above the last one read (the damaged record had the one
//!      in between) and at most one more than the skipped bytes could
//!      hold. A frame inside a payload would need one of the few lsns the
//!      store gave the damaged records, numbers it never shows;
//!    - read on as far as any other candidate: a forged frame with an
//!      absurd lsn, which would make every genuine record after it look
//!      out of order, loses to the genuine record where its chain breaks.
//!
//! What is left unread at the end of the segment is a torn tail when the
//! segment is the last one (a crash in the middle of a write: the caller
//! cuts it), and damage otherwise. The scanner itself only reads.
//!
//! # What it guarantees
//! (Checked by the `segment_scan` fuzz target and the unit tests.)
//! - It never panics, and every byte it is given ends up in exactly one
//!   record, skipped range or torn tail; lsns and event ids increase.
//! - When the only intact frames in the bytes are records as written, it
//!   returns nothing else, and, unless a damaged length field now claims
//!   the rest of the segment (or points elsewhere in a compacted segment),
//!   every one of them.
//! - A frame forged inside a payload can only be taken for a record when
//!   damage hit the length of its enclosing record or the record before
//!   it, and it carries an lsn the store handed to one of the damaged
//!   records. A per-segment secret in the checksum would close that too;
//!   it would change the format.

use std::collections::HashMap;
use std::ops::Range;

use super::super::codec::{self, DecodeError, FRAME_HEADER, MAX_RECORD, Stored};
use crate::event::EventId;
use crate::log::Record;

/// The smallest frame: the header, an lsn and a kind.
const MIN_FRAME: usize = FRAME_HEADER + 9;

/// Where the log stands before a record: what its lsn and, for an event,
/// its id must exceed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Order {
    /// The lsn of the last record read, if any.
    pub lsn: Option<u64>,
    /// The highest event id read.
    pub event: EventId,
    /// Whether the last record read immediately precedes the bytes being
    /// read, in a run the writer wrote: the next lsn is then `lsn + 1`.
    pub adjacent: bool,
}

impl Order {
    fn admits(&self, lsn: u64, record: &Stored) -> bool {
        self.lsn.is_none_or(|last| lsn > last)
            && match record {
                Stored::Hub(Record::Event(e)) => e.id > self.event,
                _ => true,
            }
    }

    fn after(self, lsn: u64, record: &Stored, consecutive: bool) -> Order {
        let event = match record {
            Stored::Hub(Record::Event(e)) => e.id.max(self.event),
            _ => self.event,
        };
        Order {
            lsn: Some(lsn),
            event,
            adjacent: consecutive,
        }
    }
}

/// Why bytes could not be read as the next record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// The frame or the record is damaged.
    Decode(DecodeError),
    /// An intact record whose lsn or event id does not increase.
    OutOfOrder,
    /// The segment's header is damaged (reported by recovery, which reads
    /// headers).
    Header,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Decode(err) => err.fmt(f),
            Why::OutOfOrder => f.write_str("the record's lsn or event id does not increase"),
            Why::Header => f.write_str("the segment header is damaged"),
        }
    }
}

/// A record read back, and where it lies in the segment.
#[derive(Debug)]
pub struct Found {
    /// Its first byte.
    pub offset: usize,
    /// Its size, frame header included.
    pub len: usize,
    /// Its log sequence number.
    pub lsn: u64,
    /// The record.
    pub record: Stored,
}

/// Bytes skipped, and why the first of them could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The bytes.
    pub range: Range<usize>,
    /// Why.
    pub why: Why,
}

/// What a scan of one segment found.
#[derive(Debug)]
pub struct SegmentScan {
    /// Every record read, in order.
    pub records: Vec<Found>,
    /// Damaged bytes skipped; each is followed by a record read, or by the
    /// end of a segment that is not the last.
    pub damaged: Vec<Skipped>,
    /// In the last segment, the bytes after the last record when none of
    /// them could be read: a torn tail.
    pub torn: Option<Skipped>,
    /// Where the log stands after this segment.
    pub order: Order,
}

/// Scans `bytes[start..]`, the records of one segment, read after `order`.
/// `last`: the segment is the last of the log (damage that reaches its end
/// is a torn tail). `consecutive`: the writer wrote it, so its lsns go up
/// by exactly one per record (compaction leaves gaps).
pub fn scan_segment(
    bytes: &[u8],
    start: usize,
    last: bool,
    consecutive: bool,
    order: Order,
) -> SegmentScan {
    let mut scan = SegmentScan {
        records: Vec::new(),
        damaged: Vec::new(),
        torn: None,
        order: Order {
            adjacent: order.adjacent && consecutive,
            ..order
        },
    };
    let mut memo = HashMap::new();
    let mut offset = start.min(bytes.len());
    while offset < bytes.len() {
        match read(bytes, offset, &scan.order) {
            Ok((len, lsn, record)) => {
                scan.order = scan.order.after(lsn, &record, consecutive);
                scan.records.push(Found {
                    offset,
                    len,
                    lsn,
                    record,
                });
                offset += len;
            }
            Err(why) => match resync(bytes, offset, &scan.order, &mut memo) {
                Some(next) => {
                    scan.damaged.push(Skipped {
                        range: offset..next,
                        why,
                    });
                    offset = next;
                }
                None => {
                    let skipped = Skipped {
                        range: offset..bytes.len(),
                        why,
                    };
                    if last {
                        scan.torn = Some(skipped);
                    } else {
                        scan.damaged.push(skipped);
                    }
                    scan.order.adjacent = false;
                    break;
                }
            },
        }
    }
    scan
}

/// Reads the record at `offset`: frame, checksum, decode, order.
fn read(bytes: &[u8], offset: usize, order: &Order) -> Result<(usize, u64, Stored), Why> {
    let (len, body) = codec::frame(&bytes[offset..]).map_err(Why::Decode)?;
    let (lsn, record) = codec::decode(body).map_err(Why::Decode)?;
    if !order.admits(lsn, &record) {
        return Err(Why::OutOfOrder);
    }
    Ok((len, lsn, record))
}

/// Where the frame at `offset` ends by its own length field, if that
/// length is plausible and ends inside `bytes`.
fn claimed_end(bytes: &[u8], offset: usize) -> Option<usize> {
    let header = bytes.get(offset..offset + FRAME_HEADER)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if !(MIN_FRAME - FRAME_HEADER..=MAX_RECORD).contains(&len) {
        return None;
    }
    let end = offset + FRAME_HEADER + len;
    (end <= bytes.len()).then_some(end)
}

/// Where reading can resume after damage at `at`, or `None` when nothing
/// after it can be trusted.
fn resync(
    bytes: &[u8],
    at: usize,
    order: &Order,
    memo: &mut HashMap<usize, Chain>,
) -> Option<usize> {
    // 1. Trust the damaged record's length. In a writer's run, only when it
    //    lands on the record with the lsn after the damaged one's: a length
    //    that is itself damaged could land past intact records, and the
    //    search below finds those. Elsewhere, hop over a run of damaged
    //    records whose lengths read.
    let mut hop = at;
    while let Some(end) = claimed_end(bytes, hop) {
        // Nothing but the zeros the writer wrote ahead after it: the
        // damaged record was the last written, and nothing inside it is
        // searched (the frames a payload may hold would be found there,
        // with the lsns the next records would have had).
        if bytes[end..].iter().all(|&b| b == 0) {
            return length_damaged(bytes, hop, end, order);
        }
        match (read(bytes, end, order), order.adjacent, order.lsn) {
            (Ok((_, lsn, _)), true, Some(last)) if lsn == last.saturating_add(2) => {
                return Some(end);
            }
            (Ok(_), false, _) => return Some(end),
            (_, true, _) => break,
            (Err(_), false, _) => hop = end,
        }
    }
    // 2. Search for the candidate that reads furthest.
    let mut best: Option<(usize, usize)> = None;
    let mut p = at + 1;
    while p < bytes.len() {
        if best.is_some_and(|(_, reach)| p > reach) {
            break;
        }
        if let Some(found) = candidate(bytes, at, p, order) {
            let reach = reach(bytes, p, found, order, memo);
            if best.is_none_or(|(_, r)| reach > r) {
                best = Some((p, reach));
            }
            if reach == bytes.len() {
                break;
            }
        }
        p += 1;
    }
    best.map(|(start, _)| start)
}

/// After a damaged record at `at` whose length claims up to `end`, where
/// only zeros follow: where the records after it resume, when it was only
/// its length that was damaged (its body passes its checksum at a shorter
/// length, and a record continuing the log follows there); `None` when it
/// was the last record written.
fn length_damaged(bytes: &[u8], at: usize, end: usize, order: &Order) -> Option<usize> {
    let crc = u32::from_le_bytes(bytes.get(at + 4..at + FRAME_HEADER)?.try_into().ok()?);
    let body = at + FRAME_HEADER;
    let shortest = MIN_FRAME - FRAME_HEADER;
    let mut running = crc32c::crc32c(bytes.get(body..body + shortest)?);
    for len in shortest..end - body {
        if running == crc && codec::decode(&bytes[body..body + len]).is_ok() {
            let next = body + len;
            let continues = match (read(bytes, next, order), order.adjacent, order.lsn) {
                (Ok((_, lsn, _)), true, Some(last)) => lsn == last.saturating_add(2),
                (Ok(_), false, _) => true,
                _ => false,
            };
            if continues {
                return Some(next);
            }
        }
        running = crc32c::crc32c_append(running, &bytes[body + len..body + len + 1]);
    }
    None
}

/// The record at `p`, found by searching after damage at `at`, if it can
/// be trusted (see the module docs). Structure is checked before the
/// checksum: garbage rarely gets past the first fields.
fn candidate(bytes: &[u8], at: usize, p: usize, order: &Order) -> Option<(usize, u64, Stored)> {
    let end = claimed_end(bytes, p)?;
    let body = &bytes[p + FRAME_HEADER..end];
    let lsn = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    if let (true, Some(last)) = (order.adjacent, order.lsn) {
        // The damaged record at `at` had lsn `last + 1`; each record lost
        // with it took at least MIN_FRAME bytes, and one lsn.
        let most = last.saturating_add(1 + ((p - at) / MIN_FRAME) as u64);
        if lsn < last.saturating_add(2) || lsn > most {
            return None;
        }
    }
    let (lsn, record) = codec::decode(body).ok()?;
    if !order.admits(lsn, &record) {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[p + 4..p + 8].try_into().ok()?);
    if crc32c::crc32c(body) != crc {
        return None;
    }
    Some((end - p, lsn, record))
}

/// A record on a chain of records that read in order: where the chain
/// stops, and the record's order, to check it against a predecessor.
#[derive(Clone, Copy)]
struct Chain {
    reach: usize,
    lsn: u64,
    event: Option<EventId>,
}

/// How far records read in order from the record at `start` (accepted
/// after `order` as `found`): the offset where the first one that does not
/// read begins, or the end of `bytes`. Chains found before are reused from
/// `memo`, so candidates whose chains merge are walked once (the reach is
/// then an estimate: reading itself checks every record again).
fn reach(
    bytes: &[u8],
    start: usize,
    found: (usize, u64, Stored),
    order: &Order,
    memo: &mut HashMap<usize, Chain>,
) -> usize {
    let event_of = |record: &Stored| match record {
        Stored::Hub(Record::Event(e)) => Some(e.id),
        _ => None,
    };
    let (len, lsn, record) = found;
    let mut path = vec![(start, lsn, event_of(&record))];
    let mut order = order.after(lsn, &record, false);
    let mut at = start + len;
    let reach = loop {
        if at >= bytes.len() {
            break bytes.len();
        }
        if let Some(chain) = memo.get(&at) {
            let fits = order.lsn.is_none_or(|l| chain.lsn > l)
                && chain.event.is_none_or(|e| e > order.event);
            break if fits { chain.reach } else { at };
        }
        match read(bytes, at, &order) {
            Ok((len, lsn, record)) => {
                path.push((at, lsn, event_of(&record)));
                order = order.after(lsn, &record, false);
                at += len;
            }
            Err(_) => break at,
        }
    };
    for (offset, lsn, event) in path {
        memo.insert(offset, Chain { reach, lsn, event });
    }
    reach
}

#[cfg(test)]
mod tests;
