//! Unit tests of the device swarm's accounting.

use super::missing::*;
use super::*;

#[test]
fn loss_and_duplicates_are_counted_per_sequence_number() {
    let mut seen = Seen::default();
    for seq in [0, 1, 3, 3, 64, 65] {
        if !seen.mark(seq) {
            seen.duplicates += 1;
        }
    }
    assert_eq!(seen.duplicates, 1);
    assert_eq!(seen.highest(), Some(65));
    assert_eq!(seen.missing(66), 66 - 5);
    assert_eq!(seen.missing(4), 1);
    assert_eq!(seen.missing(0), 0);
    assert_eq!(Seen::default().highest(), None);
    assert_eq!(Seen::default().missing(3), 3);
}

#[test]
fn a_shortfall_splits_into_holes_and_a_tail() {
    let mut seen = Seen::default();
    for seq in [0, 1, 3, 4, 6] {
        seen.mark(seq);
    }
    let short = |holes, before_first, tail| Shortfall {
        holes,
        before_first,
        tail,
    };
    // 2 and 5 are holes (6 came after them); 7..10 never came.
    assert_eq!(seen.shortfall(10), short(2, 0, 3));
    // Expecting fewer than arrived: only holes below the count.
    assert_eq!(seen.shortfall(4), short(1, 0, 0));
    assert_eq!(seen.shortfall(0), short(0, 0, 0));
    // Nothing received: everything is tail, nothing is a hole.
    assert_eq!(Seen::default().shortfall(5), short(0, 0, 5));
    let mut all = Seen::default();
    for seq in 0..130 {
        all.mark(seq);
    }
    assert_eq!(all.shortfall(130), short(0, 0, 0));
    assert_eq!(missing_below(&all.bits, 200), 70);
    // A device that got 70..=100 only: 70 holes before its first event.
    let mut late = Seen::default();
    for seq in 70..=100 {
        late.mark(seq);
    }
    assert_eq!(late.lowest(), Some(70));
    assert_eq!(late.shortfall(120), short(70, 70, 19));
}

/// Two publishers: sequence numbers 0..6 got ids 11, 10, 13, 12, 15,
/// 14 (each pair swapped).
fn ids() -> Vec<AtomicU64> {
    [11, 10, 13, 12, 15, 14]
        .into_iter()
        .map(AtomicU64::new)
        .collect()
}

fn unfinished(got: &[(u64, u64)], end: Ended) -> Unfinished {
    let mut seen = Seen::default();
    for (seq, _) in got {
        seen.mark(*seq);
    }
    Unfinished {
        channel: 0,
        expected: 6,
        first_order: got.iter().map(|(_, id)| *id).min(),
        max_order: got.iter().map(|(_, id)| *id).max(),
        end,
        seen,
    }
}

fn classified(u: &Unfinished, ids: &[AtomicU64]) -> Missing {
    let mut out = Missing::default();
    classify(u, ids, &mut out);
    out
}

#[test]
fn missing_events_are_placed_by_their_id_not_their_sequence_number() {
    let ids = ids();
    // Ids 10, 11, 12 (seqs 1, 0, 3) arrived, then the stream ended.
    // Seq 2 is below seq 3, but its id (13) came after the end: nothing
    // was skipped. Sequence numbers alone would call it a hole.
    let cut = unfinished(&[(1, 10), (0, 11), (3, 12)], Ended::Disconnected);
    assert_eq!(
        classified(&cut, &ids),
        Missing {
            missed_after_disconnect: 3,
            ..Missing::default()
        }
    );
    assert_eq!(
        classified(&cut, &[]),
        Missing {
            lost: 1,
            missed_after_disconnect: 2,
            ..Missing::default()
        }
    );
    // Ids 10, 11, 13 (seqs 1, 0, 2) arrived: id 12 (seq 3) was skipped
    // although its sequence number is above every one received.
    let skipped = unfinished(&[(1, 10), (0, 11), (2, 13)], Ended::Disconnected);
    assert_eq!(
        classified(&skipped, &ids),
        Missing {
            lost: 1,
            missed_after_disconnect: 2,
            ..Missing::default()
        }
    );
    // Ids 10, 11, 12, 14 arrived and the deadline came: 13 is a hole,
    // 15 was still owed.
    let holey = unfinished(&[(1, 10), (0, 11), (3, 12), (5, 14)], Ended::Stopped);
    assert_eq!(
        classified(&holey, &ids),
        Missing {
            lost: 1,
            not_arrived_by_deadline: 1,
            ..Missing::default()
        }
    );
    // A device that joined late: ids 12..=15 only; 10 and 11 before it.
    let late = unfinished(&[(3, 12), (2, 13), (5, 14), (4, 15)], Ended::Stopped);
    assert_eq!(
        classified(&late, &ids),
        Missing {
            lost: 2,
            lost_before_first: 2,
            ..Missing::default()
        }
    );
    // A pere.gap notice said ids after 11 and before 14 were lost to
    // the device: announced, not silent. Id 13 outside it is silent.
    let mut told = unfinished(&[(1, 10), (0, 11), (5, 14), (4, 15)], Ended::Done);
    told.seen.gaps.push((11, 14));
    assert_eq!(
        classified(&told, &ids),
        Missing {
            lost_in_gaps: 2,
            ..Missing::default()
        }
    );
    told.seen.gaps[0] = (11, 13);
    assert_eq!(
        classified(&told, &ids),
        Missing {
            lost: 1,
            lost_in_gaps: 1,
            ..Missing::default()
        }
    );
    // Nothing received, or ids no device saw: by how it ended.
    let unknown: Vec<AtomicU64> = (0..6).map(|_| AtomicU64::new(0)).collect();
    assert_eq!(
        classified(&unfinished(&[(0, 11)], Ended::Stopped), &unknown),
        Missing {
            not_arrived_by_deadline: 5,
            ..Missing::default()
        }
    );
    assert_eq!(
        classified(&unfinished(&[], Ended::Disconnected), &ids),
        Missing {
            missed_after_disconnect: 6,
            ..Missing::default()
        }
    );
}
