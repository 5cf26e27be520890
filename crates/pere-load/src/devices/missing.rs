//! What a device missed, and why: [`Seen`] keeps what one device received,
//! [`classify`] sorts what it did not into the report's counts (see the
//! module docs of [`super`]).

use std::sync::atomic::{AtomicU64, Ordering};

use super::Config;
use crate::Flavor;

/// What one device saw.
#[derive(Default)]
pub(super) struct Seen {
    pub(super) received: u64,
    /// Distinct sequence numbers received.
    pub(super) distinct: u64,
    pub(super) last_id: Option<(u64, u64)>,
    /// Smallest and largest [`order_of`] of the ids received.
    pub(super) first_order: Option<u64>,
    pub(super) max_order: Option<u64>,
    /// Id ranges (exclusive) that `pere.gap` notices said were lost to this
    /// device: from its resume point to the oldest event still retained
    /// (or, when the server named none, the next event that came).
    pub(super) gaps: Vec<(u64, u64)>,
    /// A gap whose end is the next event to come.
    pub(super) open_gap: Option<u64>,
    /// Bit per channel sequence number received.
    pub(super) bits: Vec<u64>,
    pub(super) duplicates: u64,
    pub(super) reordered: u64,
}

impl Seen {
    /// Records `seq`; whether it was new.
    pub(super) fn mark(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.bits.len() {
            if word > 1 << 24 {
                return true; // absurd sequence: not tracked
            }
            self.bits.resize(word + 1, 0);
        }
        let new = self.bits[word] & (1 << bit) == 0;
        self.bits[word] |= 1 << bit;
        new
    }

    /// Sequence numbers below `upto` never received.
    pub(super) fn missing(&self, upto: u64) -> u64 {
        missing_below(&self.bits, upto)
    }

    pub(super) fn highest(&self) -> Option<u64> {
        let w = self.bits.iter().rposition(|w| *w != 0)?;
        Some(w as u64 * 64 + 63 - u64::from(self.bits[w].leading_zeros()))
    }

    pub(super) fn lowest(&self) -> Option<u64> {
        let w = self.bits.iter().position(|w| *w != 0)?;
        Some(w as u64 * 64 + u64::from(self.bits[w].trailing_zeros()))
    }

    /// What is missing of the first `expected` sequence numbers: holes
    /// (below the highest one received), of them those below the lowest one
    /// received, and the tail (after the highest).
    pub(super) fn shortfall(&self, expected: u64) -> Shortfall {
        let upto = self.highest().map_or(0, |h| h + 1).min(expected);
        Shortfall {
            holes: self.missing(upto),
            before_first: self.lowest().unwrap_or(0).min(upto),
            tail: expected - upto,
        }
    }
}

/// What a device is missing of the events it expected.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Shortfall {
    /// Below the highest sequence number received.
    pub(super) holes: u64,
    /// Of `holes`, below the lowest one received.
    pub(super) before_first: u64,
    /// After the highest one received.
    pub(super) tail: u64,
}

/// Zero bits of `bits` below bit `upto` (bits past the end count as zero).
pub(super) fn missing_below(bits: &[u64], upto: u64) -> u64 {
    let mut have = 0u64;
    for (w, word) in bits.iter().enumerate() {
        let base = w as u64 * 64;
        if base >= upto {
            break;
        }
        let mask = if upto - base >= 64 {
            u64::MAX
        } else {
            (1u64 << (upto - base)) - 1
        };
        have += u64::from((word & mask).count_ones());
    }
    upto - have
}

/// How a device that missed events ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ended {
    Done,
    Stopped,
    Disconnected,
}

/// A device that did not get every event it expected.
pub(super) struct Unfinished {
    pub(super) channel: u64,
    pub(super) expected: u64,
    pub(super) first_order: Option<u64>,
    pub(super) max_order: Option<u64>,
    pub(super) end: Ended,
    pub(super) seen: Seen,
}

/// Missing events, by why.
#[derive(Default, Debug, PartialEq, Eq)]
pub(super) struct Missing {
    pub(super) lost: u64,
    pub(super) lost_before_first: u64,
    pub(super) lost_in_gaps: u64,
    pub(super) not_arrived_by_deadline: u64,
    pub(super) missed_after_disconnect: u64,
}

/// Event ids as one ordered number: PERE's as they are, nchan's
/// `time:tag` as `time << 20 | tag`.
pub(super) fn order_of(flavor: Flavor, (a, b): (u64, u64)) -> u64 {
    match flavor {
        Flavor::Pere => a,
        Flavor::Nchan => (a << 20) | b.min((1 << 20) - 1),
    }
}

/// Id tables are kept when `count` is at most this per channel...
const MAX_TRACKED_COUNT: u64 = 1 << 16;
/// ... and at most this many entries over all channels.
const MAX_TRACKED_IDS: u64 = 1 << 22;

/// Empty id tables (see [`Shared::ids`]) for `config`, or none when the
/// run has no count or too large a one.
pub(super) fn id_tables(config: &Config) -> Vec<Vec<AtomicU64>> {
    let channels = u64::from(config.channels.max(1));
    match config.count {
        Some(c) if c <= MAX_TRACKED_COUNT && c * channels <= MAX_TRACKED_IDS => (0..channels)
            .map(|_| (0..c).map(|_| AtomicU64::new(0)).collect())
            .collect(),
        _ => Vec::new(),
    }
}

/// Sorts what `u` missed. A missing event that some device received has
/// a known id: below the device's highest id received, the server skipped
/// it (a hole: `lost_in_gaps` when a `pere.gap` notice covered it, else
/// `lost`, and of those below its lowest id `lost_before_first`); above it,
/// it came after the device stopped: still owed at the deadline, or after
/// its stream ended. An event no device received has no known place and
/// counts by how the device ended. Without an id table (`ids` empty),
/// sequence numbers stand in for the ids, which is exact only with one
/// publisher.
pub(super) fn classify(u: &Unfinished, ids: &[AtomicU64], out: &mut Missing) {
    let after_end = |out: &mut Missing, n: u64| match u.end {
        Ended::Done => out.lost += n,
        Ended::Stopped => out.not_arrived_by_deadline += n,
        Ended::Disconnected => out.missed_after_disconnect += n,
    };
    if ids.is_empty() {
        let short = u.seen.shortfall(u.expected);
        out.lost += short.holes;
        out.lost_before_first += short.before_first;
        after_end(out, short.tail);
        return;
    }
    let (Some(first), Some(last)) = (u.first_order, u.max_order) else {
        after_end(out, u.seen.missing(u.expected));
        return;
    };
    for seq in 0..u.expected {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if u.seen.bits.get(word).is_some_and(|w| w & (1 << bit) != 0) {
            continue;
        }
        match ids.get(seq as usize).map(|o| o.load(Ordering::Relaxed)) {
            Some(order) if order != 0 && order < last => {
                if u.seen
                    .gaps
                    .iter()
                    .any(|(from, to)| *from < order && order < *to)
                {
                    out.lost_in_gaps += 1;
                } else {
                    out.lost += 1;
                    if order < first {
                        out.lost_before_first += 1;
                    }
                }
            }
            _ => after_end(out, 1),
        }
    }
}
