//! The hub's public request and answer types.

use std::sync::Arc;

use bytes::Bytes;

use super::health::StoreOutage;
use crate::event::EventId;
use crate::ledger::{EventReceipts, ReceiptState};
use crate::log::Damage;
use crate::name::{ChannelName, DeviceId, EventType, Pattern};

/// A request to publish one event.
#[derive(Clone, Debug)]
pub struct Publish {
    /// The channel (never a pattern).
    pub channel: ChannelName,
    /// The payload: non-empty UTF-8 text within the payload limit.
    pub payload: Bytes,
    /// The SSE event type; `None` for `message`.
    pub kind: Option<EventType>,
    /// The publishing device, if it said.
    pub device: Option<DeviceId>,
    /// A key that makes retries of this publish return the first result.
    pub idempotency_key: Option<String>,
}

impl Publish {
    /// A `message` event with `payload` on `channel`.
    pub fn new(channel: ChannelName, payload: impl Into<Bytes>) -> Self {
        Self {
            channel,
            payload: payload.into(),
            kind: None,
            device: None,
            idempotency_key: None,
        }
    }
}

/// The result of a publish.
#[derive(Clone, Debug)]
pub struct Published {
    /// The event's id.
    pub id: EventId,
    /// Its channel.
    pub channel: ChannelName,
    /// Size of its audience at publish time.
    pub recipients: usize,
    /// Whether this was a retry answered with the first result.
    pub duplicate: bool,
    /// The event's receipts, while it is retained.
    pub receipts: Option<Arc<EventReceipts>>,
}

/// Where a new stream starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Resume {
    /// The device's durable cursor when it is already a member; otherwise
    /// "now" (or everything retained, with [`HubConfig::replay_all`]).
    #[default]
    Auto,
    /// After this id (`Last-Event-ID`, `lastEventId`).
    After(EventId),
    /// Every retained event (`?replay=all`).
    All,
    /// Only events published from now on.
    Now,
}

/// A request to open a stream.
#[derive(Clone, Debug)]
pub struct SubscribeRequest {
    /// The device, or `None` for an anonymous stream (receives events, is in
    /// no audience, has no cursor).
    pub device: Option<DeviceId>,
    /// Channels and patterns; an event matching several is sent once.
    pub patterns: Vec<Pattern>,
    /// Where to start.
    pub resume: Resume,
}

/// What the hub tells a stream first (`pere.hello`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The device, unless anonymous.
    pub device: Option<DeviceId>,
    /// The subscriptions.
    pub channels: Vec<Pattern>,
    /// The resume point used, if any.
    pub resumed_from: Option<EventId>,
    /// How many retained events are replayed before live ones.
    pub replayed: usize,
}

/// Events were lost to a resuming client (`pere.gap`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    /// The resume point asked for.
    pub from: EventId,
    /// The oldest event still retained on its channels, if any.
    pub oldest: Option<EventId>,
    /// Some of the events were lost in a failover of a cluster's Redis,
    /// after nodes had applied them (said as `"reason":"cluster_failover"`).
    pub failover: bool,
}

/// The result of a receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acked {
    /// The event.
    pub id: EventId,
    /// The device.
    pub device: DeviceId,
    /// Its state now (always `acked`).
    pub state: ReceiptState,
}

/// One channel, for `GET /admin/channels`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelInfo {
    /// The channel.
    pub channel: ChannelName,
    /// Retained events.
    pub events: usize,
    /// Oldest retained id.
    pub oldest: Option<EventId>,
    /// Newest retained id.
    pub newest: Option<EventId>,
    /// Devices that are members of a subscription matching it.
    pub members: usize,
    /// Those of them online.
    pub online: usize,
}

/// Open streams per subscription (`GET /admin/connections`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connections {
    /// Open streams per subscription, sorted.
    pub per_subscription: Vec<(Pattern, usize)>,
    /// Number of open streams.
    pub total: usize,
}

/// Counters for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events published since start.
    pub published: u64,
    /// Events written to streams since start.
    pub delivered: u64,
    /// Of those, events written again to a device that had them written
    /// before (redeliveries of unacknowledged events, a second stream).
    pub redelivered: u64,
    /// Receipts recorded since start.
    pub acked: u64,
    /// Streams opened since start.
    pub streams_opened: u64,
    /// Streams closed because their queue was full.
    pub slow_disconnects: u64,
    /// Open streams.
    pub streams_open: usize,
    /// Retained events.
    pub retained: usize,
    /// Memberships.
    pub members: usize,
    /// Gaps told to receipts streams that fell behind what a channel keeps.
    pub receipt_gaps: u64,
    /// Journal batches written.
    pub batches: u64,
    /// Records written.
    pub records: u64,
    /// Regions of damaged records the store skipped and nobody has cleared
    /// yet ([`StoreHealth::damage`]).
    pub damaged_regions: usize,
    /// Their bytes.
    pub damaged_bytes: u64,
    /// Whether the store takes writes (not during an outage).
    pub store_writable: bool,
    /// Failed store writes and retries since start.
    pub store_failures: u64,
}

/// The store's health, for health checks and metrics.
#[derive(Clone, Debug, Default)]
pub struct StoreHealth {
    /// Set while the store fails: writes are refused until a retry
    /// succeeds.
    pub outage: Option<StoreOutage>,
    /// Failed writes and retries since start.
    pub failures: u64,
    /// Damaged records the store skipped when it opened, or found skipped
    /// at an earlier start, that nobody has cleared yet (each is cleared by
    /// removing its copy, [`Damage::kept_in`]). The records in them are
    /// lost; every other record was recovered.
    pub damage: Vec<Damage>,
}
