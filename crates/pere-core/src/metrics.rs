//! Measurements an operator needs (issue 18.11) that only the hub can take
//! where things happen: latency [`Histogram`]s (journal writes, publish →
//! delivered, publish → acked) and the counters and gauge of [`HubMetrics`].
//! `pere-http` renders them for Prometheus.
//!
//! A histogram is observed on the delivery path, once per device per event,
//! from every stream task at once. One set of atomic counters shared by all
//! cores would have them fight over the same cache lines, so each histogram
//! has [`SHARDS`] copies, cache-line aligned, and a thread always adds to
//! the same one; a scrape sums them. An observation is two relaxed atomic
//! additions on a line no other core writes (unless two threads share a
//! shard), no lock and no allocation.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::event::Timestamp;

/// Upper bounds, in seconds, of the latency buckets: half a millisecond (a
/// loopback delivery) to a minute (a device that was away).
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Copies of each histogram's counters (see the module docs); a power of
/// two at least the core count of a typical server.
pub const SHARDS: usize = 16;

/// One copy of a histogram's counters, alone on its cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    /// Per bucket of [`LATENCY_BUCKETS`], then one for "above the last".
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of the observations, in microseconds.
    sum_micros: AtomicU64,
}

/// A latency histogram over [`LATENCY_BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    shards: [Shard; SHARDS],
}

/// A histogram's counts at one moment, cumulative as Prometheus wants them.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations at or below it)`, ascending.
    pub buckets: Vec<(f64, u64)>,
    /// Every observation (the `+Inf` bucket).
    pub count: u64,
    /// Sum of the observations, in seconds.
    pub sum: f64,
}

/// The shard of the calling thread: threads take them in turn.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let bucket = LATENCY_BUCKETS.partition_point(|upper| *upper < seconds);
        let shard = &self.shards[shard_index()];
        shard.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        shard.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Records the time from `from` to `to`; nothing when the clock went
    /// backwards in between.
    pub fn observe_between(&self, from: Timestamp, to: Timestamp) {
        if let Ok(micros) = u64::try_from(to.0 - from.0) {
            self.observe(Duration::from_micros(micros));
        }
    }

    /// The counts now (summed over the shards; observations made meanwhile
    /// may be in some sums and not others, which a scrape tolerates).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut counts = [0u64; LATENCY_BUCKETS.len() + 1];
        let mut sum_micros: u64 = 0;
        for shard in &self.shards {
            for (total, n) in counts.iter_mut().zip(&shard.counts) {
                *total += n.load(Ordering::Relaxed);
            }
            sum_micros = sum_micros.wrapping_add(shard.sum_micros.load(Ordering::Relaxed));
        }
        let mut cumulative = 0;
        let buckets = LATENCY_BUCKETS
            .iter()
            .zip(counts)
            .map(|(upper, n)| {
                cumulative += n;
                (*upper, cumulative)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            count: cumulative + counts[LATENCY_BUCKETS.len()],
            sum: sum_micros as f64 / 1e6,
        }
    }
}

/// The hub's own measurements, shared by the writer, the streams and the
/// receipt ledger of every event.
#[derive(Debug, Default)]
pub struct HubMetrics {
    /// Time to write one journal batch to the store until it is durable
    /// (for the file store: the write and its fsync).
    pub journal_write: Histogram,
    /// From an event's publish to its first write to a device's stream.
    pub publish_to_delivered: Histogram,
    /// From an event's publish to a device's first receipt of it.
    pub publish_to_acked: Histogram,
    /// (event, device) pairs of retained events not acknowledged yet.
    unacked: AtomicI64,
    /// Overdue notices issued (`--ack-deadline`).
    pub overdue: AtomicU64,
    /// Publishes answered with an earlier result (same idempotency key).
    pub idempotent_replays: AtomicU64,
    /// Streams that started with a `pere.gap` (events lost to retention).
    pub gaps: AtomicU64,
}

impl HubMetrics {
    /// (event, device) pairs of retained events not acknowledged yet.
    pub fn unacked(&self) -> u64 {
        u64::try_from(self.unacked.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Adds `n` to the unacked pairs (negative: removes).
    pub(crate) fn add_unacked(&self, n: i64) {
        self.unacked.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_cumulative_buckets_from_every_thread() {
        let h = std::sync::Arc::new(Histogram::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || {
                    h.observe(Duration::from_micros(300)); // ≤ 0.5 ms
                    h.observe(Duration::from_millis(3)); // ≤ 5 ms
                    h.observe(Duration::from_secs(120)); // above the last
                })
            })
            .collect();
        for t in threads {
            t.join().expect("the thread ran");
        }
        let s = h.snapshot();
        assert_eq!(s.count, 12);
        assert_eq!(s.buckets[0], (0.0005, 4));
        assert_eq!(s.buckets[3], (0.005, 8));
        assert_eq!(s.buckets.last().copied(), Some((60.0, 8)));
        assert!(
            (s.sum - 4.0 * (0.0003 + 0.003 + 120.0)).abs() < 1e-6,
            "{}",
            s.sum
        );
    }

    #[test]
    fn a_bound_is_inclusive_and_time_going_backwards_is_ignored() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(1));
        h.observe_between(Timestamp(10), Timestamp(5));
        let s = h.snapshot();
        assert_eq!((s.count, s.buckets[1]), (1, (0.001, 1)));
    }
}
