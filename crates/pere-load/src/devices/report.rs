//! What a device swarm measured ([`Report`]), summed once every device is
//! done.

use std::sync::atomic::{AtomicU64, Ordering};

use super::missing::{Missing, classify, missing_below};
use super::{AckMode, Config, Shared};
use crate::Histogram;

/// What a run measured.
#[derive(Debug)]
pub struct Report {
    /// Devices asked for.
    pub devices: u32,
    /// Devices whose stream opened.
    pub ready: u64,
    /// Devices that received all `count` events.
    pub completed: u64,
    /// Events received, all devices together.
    pub deliveries: u64,
    /// Events expected (`count` × devices), if a count was given.
    pub expected: Option<u64>,
    /// Holes: events a device did not receive although it received a later
    /// one (by event id, as other devices of the channel received the
    /// missing one; by sequence number without `count`). Summed over
    /// devices.
    pub lost: u64,
    /// Of `lost`, those before the first event the device received:
    /// published before its stream was live if publishing began before
    /// every device was ready (callers wait for `devices ready`), a loss at
    /// the start of the stream otherwise.
    pub lost_before_first: u64,
    /// Holes a `pere.gap` notice announced: the device resumed from a
    /// point older than the server retains (`--history`), so the events in
    /// between were lost to it, and it was told. Not in `lost`.
    pub lost_in_gaps: u64,
    /// Events a device was still waiting for, its stream open, when the
    /// run's deadline (or an interrupt) stopped it: late, or never coming.
    pub not_arrived_by_deadline: u64,
    /// Events after the last one a device received before its stream ended
    /// for good (without `resume`, at its first disconnect).
    pub missed_after_disconnect: u64,
    /// Sequence numbers below `count` (or the highest one seen) that no
    /// device of their channel received: never published, lost to every
    /// device, or every device had stopped. Counted once per channel and
    /// sequence number, not per device; each one is also in one of the
    /// three counts above.
    pub unseen_events: u64,
    /// Events a device received twice.
    pub duplicates: u64,
    /// Events whose id was below the previous one's.
    pub reordered: u64,
    /// Streams that ended before their device was done: `closed_by_server`
    /// plus `stream_errors`.
    pub disconnects: u64,
    /// Streams the server ended cleanly (the end of the chunked body): a
    /// device too slow for its queue (`--queue-capacity`), shutdown, a
    /// revoked grant or a removed membership.
    pub closed_by_server: u64,
    /// Streams whose connection failed (reset, read error).
    pub stream_errors: u64,
    /// Streams reopened with `Last-Event-ID` after a disconnect (`resume`).
    pub reconnects: u64,
    /// Devices still waiting, stream open, at the deadline.
    pub devices_at_deadline: u64,
    /// Of those, the longest time since one last received an event (or its
    /// stream opened), ms: a long quiet means a stall, a short one a backlog.
    pub quiet_at_deadline_max_ms: f64,
    /// Devices that had not finished counting 10 s after the stop and were
    /// aborted: their missing events are in none of the counts.
    pub unreported: u64,
    /// Streams that could not be opened.
    pub failed: u64,
    /// `pere.gap` notices.
    pub gaps: u64,
    /// Events whose payload was not a load payload.
    pub bad_payloads: u64,
    /// First to last delivery, seconds.
    pub delivery_seconds: f64,
    /// Publish → delivered latency, µs.
    pub latency: serde_json::Value,
    /// Receipts: sent, acked, failed, per second, publish → all-acked.
    pub receipts: Option<serde_json::Value>,
    /// Time to open every stream, seconds.
    pub ramp_seconds: f64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
    /// How the first disconnect happened: which device, when, after how
    /// many events, and why.
    pub first_disconnect: Option<String>,
    /// People's summary lines.
    pub text: Vec<String>,
    /// The signal (2 or 15) that stopped the run early, if one did.
    pub interrupted: Option<u8>,
}

impl Report {
    /// The report as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let rate = if self.delivery_seconds > 0.0 {
            self.deliveries as f64 / self.delivery_seconds
        } else {
            0.0
        };
        serde_json::json!({
            "mode": "devices",
            "devices": self.devices,
            "ready": self.ready,
            "completed": self.completed,
            "deliveries": self.deliveries,
            "expected": self.expected,
            "lost": self.lost,
            "lost_before_first": self.lost_before_first,
            "lost_in_gaps": self.lost_in_gaps,
            "not_arrived_by_deadline": self.not_arrived_by_deadline,
            "missed_after_disconnect": self.missed_after_disconnect,
            "unseen_events": self.unseen_events,
            "duplicates": self.duplicates,
            "reordered": self.reordered,
            "disconnects": self.disconnects,
            "closed_by_server": self.closed_by_server,
            "stream_errors": self.stream_errors,
            "reconnects": self.reconnects,
            "devices_at_deadline": self.devices_at_deadline,
            "quiet_at_deadline_max_ms": self.quiet_at_deadline_max_ms,
            "unreported": self.unreported,
            "failed": self.failed,
            "gaps": self.gaps,
            "bad_payloads": self.bad_payloads,
            "delivery_seconds": self.delivery_seconds,
            "deliveries_per_second": rate,
            "latency_us": self.latency,
            "receipts": self.receipts,
            "ramp_seconds": self.ramp_seconds,
            "first_error": self.first_error,
            "first_disconnect": self.first_disconnect,
            "interrupted": self.interrupted.is_some(),
        })
    }

    /// Events expected and not received, whatever the reason.
    pub fn missing(&self) -> u64 {
        self.lost + self.lost_in_gaps + self.not_arrived_by_deadline + self.missed_after_disconnect
    }
}

pub(super) fn report(config: &Config, s: &Shared, ramp_seconds: f64) -> Report {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let unreported = u64::from(config.devices).saturating_sub(load(&s.reported));
    let unseen_events: u64 = s
        .union
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .map(|(bits, upto)| missing_below(bits, *upto))
        .sum();
    let quiet_at_deadline_max_ms = load(&s.quiet_at_deadline_max_us) as f64 / 1000.0;
    let mut missing = Missing::default();
    for u in s
        .unfinished
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        let ids = s.ids.get(u.channel as usize).map_or(&[][..], Vec::as_slice);
        classify(u, ids, &mut missing);
    }
    let delivery_seconds =
        load(&s.last_delivery).saturating_sub(load(&s.first_delivery)) as f64 / 1e6;
    let deliveries = load(&s.deliveries);
    let mut text = vec![format!(
        "{} devices ({} ready, {} failed, {} completed): {} events received in {:.2} s = {:.0} deliveries/s",
        config.devices,
        load(&s.ready),
        load(&s.failed),
        load(&s.completed),
        deliveries,
        delivery_seconds,
        if delivery_seconds > 0.0 {
            deliveries as f64 / delivery_seconds
        } else {
            0.0
        }
    )];
    text.push(format!(
        "latency publish→delivered: {}",
        s.latency.summary_text()
    ));
    text.push(format!(
        "missing: lost (holes in a stream) {} ({} before the device's first event), lost in announced gaps {}, not arrived by the deadline {} ({} devices waiting, quiet up to {:.0} ms), missed after a disconnect {}; {} sequence numbers no device received",
        missing.lost,
        missing.lost_before_first,
        missing.lost_in_gaps,
        missing.not_arrived_by_deadline,
        load(&s.devices_at_deadline),
        quiet_at_deadline_max_ms,
        missing.missed_after_disconnect,
        unseen_events,
    ));
    text.push(format!(
        "duplicates {}, reordered {}, disconnects {} ({} closed by the server, {} connection errors), reconnects {}, gaps {}, bad payloads {}",
        load(&s.duplicates),
        load(&s.reordered),
        load(&s.disconnects),
        load(&s.closed_by_server),
        load(&s.stream_errors),
        load(&s.reconnects),
        load(&s.gaps),
        load(&s.bad_payloads)
    ));
    if unreported > 0 {
        text.push(format!(
            "{unreported} devices were aborted before they counted what they missed"
        ));
    }
    let receipts = config.ack.map(|mode| {
        let seconds = load(&s.last_ack).saturating_sub(load(&s.first_ack)) as f64 / 1e6;
        let acked = load(&s.acked);
        let all_acked = Histogram::default();
        let tracker = s.ack_tracker.lock().unwrap_or_else(|e| e.into_inner());
        let channels = config.channels.max(1);
        for (key, (t, n, last)) in tracker.iter() {
            let channel = (key >> 32) as u32;
            let audience =
                config.devices / channels + u32::from(channel < config.devices % channels);
            if *n >= audience {
                all_acked.record(last.saturating_sub(*t));
            }
        }
        let events = tracker.len();
        drop(tracker);
        let per_s = if seconds > 0.0 {
            acked as f64 / seconds
        } else {
            0.0
        };
        text.push(format!(
            "receipts ({}): {} sent, {} acked, {} failed in {:.2} s = {:.0} receipts/s",
            match mode {
                AckMode::Batch => "batched",
                AckMode::Each => "one per event",
            },
            load(&s.acks_sent),
            acked,
            load(&s.ack_failures),
            seconds,
            per_s
        ));
        text.push(format!(
            "publish→all-acked ({} of {} events): {}",
            all_acked.count(),
            events,
            all_acked.summary_text()
        ));
        serde_json::json!({
            "mode": match mode { AckMode::Batch => "batch", AckMode::Each => "each" },
            "sent": load(&s.acks_sent),
            "acked": acked,
            "failed": load(&s.ack_failures),
            "seconds": seconds,
            "per_second": per_s,
            "events": events,
            "all_acked_us": all_acked.summary_json(),
        })
    });
    Report {
        devices: config.devices,
        ready: load(&s.ready),
        completed: load(&s.completed),
        deliveries,
        expected: config.count.map(|c| c * u64::from(config.devices)),
        lost: missing.lost,
        lost_before_first: missing.lost_before_first,
        lost_in_gaps: missing.lost_in_gaps,
        not_arrived_by_deadline: missing.not_arrived_by_deadline,
        missed_after_disconnect: missing.missed_after_disconnect,
        unseen_events,
        duplicates: load(&s.duplicates),
        reordered: load(&s.reordered),
        disconnects: load(&s.disconnects),
        closed_by_server: load(&s.closed_by_server),
        stream_errors: load(&s.stream_errors),
        reconnects: load(&s.reconnects),
        devices_at_deadline: load(&s.devices_at_deadline),
        quiet_at_deadline_max_ms,
        unreported,
        failed: load(&s.failed),
        gaps: load(&s.gaps),
        bad_payloads: load(&s.bad_payloads),
        delivery_seconds,
        latency: s.latency.summary_json(),
        receipts,
        ramp_seconds,
        first_error: s
            .first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        first_disconnect: s
            .first_disconnect
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        interrupted: None,
        text,
    }
}
