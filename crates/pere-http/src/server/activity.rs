//! The periodic activity line (issue 18.2): per-event log lines are at
//! DEBUG, so that a busy server does not write a line per publish and per
//! receipt (a 200-device load wrote 548,000 lines in 7 s); instead, while
//! anything happens, one INFO line per period says how much.

use std::time::Duration;

use pere_core::{EventStore, Hub, Stats};
use tokio::time::{Instant, MissedTickBehavior};

/// Default period of the activity line.
pub const DEFAULT_ACTIVITY_PERIOD: Duration = Duration::from_secs(10);

/// Logs one INFO line every `every` while the hub is busy (something was
/// published, delivered, acknowledged, or a stream opened), until the hub
/// shuts down. Quiet periods log nothing.
pub async fn log_activity<S: EventStore>(hub: Hub<S>, every: Duration) {
    if every.is_zero() {
        return;
    }
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let Some(mut last) = Snapshot::of(&hub).await else {
        return;
    };
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = hub.closing() => return,
        }
        let Some(now) = Snapshot::of(&hub).await else {
            return;
        };
        now.log_since(&last);
        last = now;
    }
}

/// The counters the activity line compares.
struct Snapshot {
    at: Instant,
    stats: Stats,
    overdue: u64,
    unacked: u64,
}

impl Snapshot {
    /// The counters now; `None` once the hub stopped.
    async fn of<S: EventStore>(hub: &Hub<S>) -> Option<Self> {
        let stats = hub.stats().await.ok()?;
        let m = hub.metrics();
        Some(Self {
            at: Instant::now(),
            stats,
            overdue: m.overdue.load(std::sync::atomic::Ordering::Relaxed),
            unacked: m.unacked(),
        })
    }

    /// The line for the period since `before`, if anything happened.
    fn log_since(&self, before: &Self) {
        let (s, b) = (&self.stats, &before.stats);
        let published = s.published.saturating_sub(b.published);
        let delivered = s.delivered.saturating_sub(b.delivered);
        let receipts = s.acked.saturating_sub(b.acked);
        let opened = s.streams_opened.saturating_sub(b.streams_opened);
        if published + delivered + receipts + opened == 0 {
            return;
        }
        let secs = self.at.duration_since(before.at).as_secs_f64().max(1e-3);
        let closed = (b.streams_open as u64 + opened).saturating_sub(s.streams_open as u64);
        tracing::info!(
            published,
            delivered,
            receipts,
            streams_opened = opened,
            streams_closed = closed,
            streams_open = s.streams_open,
            slow_disconnects = s.slow_disconnects.saturating_sub(b.slow_disconnects),
            overdue = self.overdue.saturating_sub(before.overdue),
            unacked = self.unacked,
            "activity: {:.1} publishes/s, {:.1} deliveries/s, {:.1} receipts/s over {:.1} s",
            published as f64 / secs,
            delivered as f64 / secs,
            receipts as f64 / secs,
            secs,
        );
    }
}
