//! [`HubConfig`]: the hub's tunables, with the same defaults as `pere-server`.

use std::time::Duration;

/// Default number of events kept per channel.
pub const DEFAULT_HISTORY: usize = 1000;
/// Default age after which an event is no longer retained (24 h).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Default time a device stays a member after its last stream closed (24 h).
pub const DEFAULT_MEMBER_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default largest payload accepted, in bytes (64 KiB).
pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024;
/// Default capacity of one stream's queue, in events. A device that falls
/// this far behind is disconnected and resumes later instead of growing the
/// server's memory.
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;
/// Default bound of one stream's queue in payload bytes (4 MiB): 64 events
/// of the largest default payload, or the whole event bound of 1 KiB
/// events. Past it the device is disconnected as too slow, like past
/// [`DEFAULT_QUEUE_CAPACITY`]; without it a stalled reader could pin
/// 4,096 × 64 KiB.
pub const DEFAULT_QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// Default number of channels the hub holds at once (channels with retained
/// events): past it a publish that would open another gets `507`. About
/// 1 KiB of bookkeeping each, beyond their events.
pub const DEFAULT_MAX_CHANNELS: usize = 1_000_000;
/// Default number of channels one stream may subscribe to.
pub const DEFAULT_MAX_CHANNELS_PER_STREAM: usize = 64;
/// How long an idempotency key is remembered at least (docs/PROTOCOL.md §2: 10 min).
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(600);
/// Longest receipt status, in bytes (docs/PROTOCOL.md §4: 1 KiB).
pub const MAX_STATUS_LEN: usize = 1024;

/// How long a store keeps events: the newest `history` per channel, and none
/// older than `max_age`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Events kept per channel (the oldest are dropped first).
    pub history: usize,
    /// Events older than this are dropped; `None` keeps them until `history`
    /// pushes them out.
    pub max_age: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            history: DEFAULT_HISTORY,
            max_age: Some(DEFAULT_MAX_AGE),
        }
    }
}

/// The hub's configuration. `Default` gives the documented defaults.
/// Retention belongs to the store ([`Retention`]).
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// How long a device stays a member after its last stream closed.
    pub member_ttl: Duration,
    /// Largest payload accepted, in bytes.
    pub max_payload: usize,
    /// Capacity of each stream's queue, in events.
    pub queue_capacity: usize,
    /// Capacity of each stream's queue, in payload bytes (one event larger
    /// than this still passes through an empty queue).
    pub queue_bytes: usize,
    /// Most channels or patterns one stream may subscribe to.
    pub max_channels_per_stream: usize,
    /// Most channels with retained events the hub holds at once.
    pub max_channels: usize,
    /// Replay every retained event to a stream that has no other resume point
    /// (PERE's original behaviour).
    pub replay_all: bool,
    /// How long an idempotency key is remembered at least.
    pub idempotency_ttl: Duration,
    /// How often the maintenance tick runs (retention by age, member expiry).
    pub tick: Duration,
    /// When set, every device in an event's audience that has not acked it
    /// this long after it was published gets one [`OverdueNotice`].
    ///
    /// [`OverdueNotice`]: crate::ledger::OverdueNotice
    pub ack_deadline: Option<Duration>,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            member_ttl: DEFAULT_MEMBER_TTL,
            max_payload: DEFAULT_MAX_PAYLOAD,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            max_channels_per_stream: DEFAULT_MAX_CHANNELS_PER_STREAM,
            max_channels: DEFAULT_MAX_CHANNELS,
            replay_all: false,
            idempotency_ttl: DEFAULT_IDEMPOTENCY_TTL,
            tick: Duration::from_secs(1),
            ack_deadline: None,
        }
    }
}
