//! [`Histogram`]: latencies of many tasks, recorded without a lock.

use std::sync::atomic::{AtomicU64, Ordering};

/// Sub-buckets per power of two in a [`Histogram`] (about 3 % precision).
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = ((64 - SUB_BITS + 1) as usize) * SUB as usize;

/// A lock-free log-linear histogram of microsecond values, shared by many
/// tasks: about 3 % precision, exact maximum.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count())
            .finish_non_exhaustive()
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS
    let sub = (v >> (exp - SUB_BITS)) & (SUB - 1);
    ((exp - SUB_BITS + 1) as usize) * SUB as usize + sub as usize
}

fn bucket_low(i: usize) -> u64 {
    if i >= BUCKETS {
        return u64::MAX;
    }
    let (group, sub) = ((i as u64) / SUB, (i as u64) % SUB);
    if group == 0 {
        return sub;
    }
    let exp = group as u32 + SUB_BITS - 1;
    (1u64 << exp) | (sub << (exp - SUB_BITS))
}

impl Histogram {
    /// Records one value.
    pub fn record(&self, v: u64) {
        self.buckets[bucket_of(v)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(v, Ordering::Relaxed);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The largest value recorded (0 when none).
    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// The value at quantile `q` (0.0–1.0), to the bucket's precision; 0 when
    /// empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                let low = bucket_low(i);
                let high = bucket_low(i + 1).saturating_sub(1).max(low);
                return (low + (high - low) / 2).min(self.max());
            }
        }
        self.max()
    }

    /// `{"p50","p90","p99","max","count"}` in microseconds.
    pub fn summary_json(&self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count(),
            "p50": self.quantile(0.50),
            "p90": self.quantile(0.90),
            "p99": self.quantile(0.99),
            "max": self.max(),
        })
    }

    /// `p50 … p90 … p99 … max …` in milliseconds, for people.
    pub fn summary_text(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        format!(
            "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
            ms(self.quantile(0.5)),
            ms(self.quantile(0.9)),
            ms(self.quantile(0.99)),
            ms(self.max()),
            self.count()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_within_a_few_percent() {
        let h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 50_000.0), (0.9, 90_000.0), (0.99, 99_000.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.04, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.max(), 100_000);
        assert_eq!(Histogram::default().quantile(0.5), 0);
        h.record(u64::MAX);
        assert_eq!(h.max(), u64::MAX);
        for i in 0..BUCKETS - 1 {
            assert!(bucket_low(i) < bucket_low(i + 1));
            assert_eq!(bucket_of(bucket_low(i)), i);
        }
    }
}
