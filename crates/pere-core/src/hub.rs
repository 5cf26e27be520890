//! The [`Hub`]: publish, subscribe, ack, and the queries behind the admin and
//! receipts endpoints.
//!
//! # Design
//! Ordering has one owner. Every change — a publish, a receipt, a stream
//! opening or closing, a membership ending — is a [`Command`] sent to the
//! hub's writer task, which drains them in batches:
//!
//! 1. *prepare* each command against the state: assign ids, decide audiences'
//!    membership, check receipts, and collect the journal [`Record`]s;
//! 2. *append* the batch's records to the store: one durable write (one
//!    fsync, for a file store) for the whole batch — group commit;
//! 3. *apply*: fan events out to the streams' queues, register new streams,
//!    record receipts, answer every command.
//!
//! Nothing a client can observe happens before step 2 succeeded, so a `2xx`
//! means durable. Ids, journal order and delivery order agree because one
//! task does all three.
//!
//! Each stream has a bounded queue ([`HubConfig::queue_capacity`]); fan-out
//! never waits: a full queue closes that stream, and its device resumes
//! later from `Last-Event-ID` or its durable cursor without loss.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::config::{HubConfig, MAX_STATUS_LEN};
use crate::error::{Error, Result};
use crate::event::{Event, EventId, Sequencer, Timestamp, validate_payload};
use crate::ledger::{
    EventReceipts, NO_SLOT, ReceiptChange, ReceiptState, ReceiptSummary, ReceiptWatchers,
};
use crate::log::{EventStore, Evicted, MemoryStore, Record};
use crate::name::{ChannelName, DeviceId, EventType, Pattern};
use crate::presence::{Delivery, Member, Op, Presence, StreamShared, StreamTx};

/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;
/// Most commands the writer takes into one batch (one journal write).
const MAX_BATCH: usize = 1024;
/// Capacity of a receipts stream's queue, in changes.
const RECEIPT_WATCH_CAPACITY: usize = 4096;

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
    /// Journal batches written.
    pub batches: u64,
    /// Records written.
    pub records: u64,
}

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    acked: AtomicU64,
    streams_opened: AtomicU64,
    slow_disconnects: AtomicU64,
    batches: AtomicU64,
    records: AtomicU64,
}

/// The push hub. A cheap `Clone` handle; every clone is the same hub.
///
/// See the crate documentation for an example.
pub struct Hub<S: EventStore = MemoryStore> {
    inner: Arc<Inner<S>>,
}

impl<S: EventStore> Clone for Hub<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S: EventStore> std::fmt::Debug for Hub<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

struct Inner<S> {
    config: HubConfig,
    store: S,
    /// To the writer task. Unbounded so a stream's `Drop` can always report
    /// its end; requests are bounded anyway by their callers waiting for
    /// the reply.
    commands: mpsc::UnboundedSender<Command>,
    state: Mutex<State>,
    next_stream: AtomicU64,
    /// Set once the store failed: writes are refused from then on.
    failed: OnceLock<String>,
    closing: AtomicBool,
    counters: Counters,
}

impl<S> Inner<S> {
    fn state(&self) -> MutexGuard<'_, State> {
        // State changes are applied step by step, each leaving it valid; a
        // panic in one must not take the whole hub down with poisoning.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

type Reply<T> = oneshot::Sender<Result<T>>;

enum Command {
    Publish(Box<Publish>, Reply<Published>),
    Ack {
        subscription: Pattern,
        device: DeviceId,
        id: EventId,
        status: Arc<str>,
        reply: Reply<Acked>,
    },
    Subscribe {
        req: SubscribeRequest,
        last_event_id: Option<String>,
        stream: StreamTx,
        reply: Reply<Plan>,
    },
    Closed(u64),
    RemoveMember {
        subscription: Pattern,
        device: DeviceId,
        reply: Reply<()>,
    },
    Tick,
    Shutdown(oneshot::Sender<()>),
}

enum Effect {
    Fail(FailReply, Error),
    Publish {
        event: Arc<Event>,
        reply: Reply<Published>,
    },
    Duplicate {
        id: EventId,
        channel: ChannelName,
        recipients: usize,
        reply: Reply<Published>,
    },
    Ack {
        receipts: Arc<EventReceipts>,
        subscription: Pattern,
        device: DeviceId,
        status: Arc<str>,
        reply: Reply<Acked>,
    },
    Subscribe {
        req: SubscribeRequest,
        last_event_id: Option<String>,
        existed: Vec<bool>,
        stream: StreamTx,
        reply: Reply<Plan>,
    },
    Done(Reply<()>),
    Shutdown(oneshot::Sender<()>),
    None,
}

enum FailReply {
    Publish(Reply<Published>),
    Ack(Reply<Acked>),
    Subscribe(Reply<Plan>),
    Unit(Reply<()>),
}

impl FailReply {
    fn send(self, err: Error) {
        // A caller that went away no longer needs an answer.
        match self {
            FailReply::Publish(r) => drop(r.send(Err(err))),
            FailReply::Ack(r) => drop(r.send(Err(err))),
            FailReply::Subscribe(r) => drop(r.send(Err(err))),
            FailReply::Unit(r) => drop(r.send(Err(err))),
        }
    }
}

impl Effect {
    fn fail(self, err: impl Fn() -> Error) {
        match self {
            Effect::Fail(r, e) => r.send(e),
            Effect::Publish { reply, .. } | Effect::Duplicate { reply, .. } => {
                FailReply::Publish(reply).send(err())
            }
            Effect::Ack { reply, .. } => FailReply::Ack(reply).send(err()),
            Effect::Subscribe { reply, .. } => FailReply::Subscribe(reply).send(err()),
            Effect::Done(reply) => FailReply::Unit(reply).send(err()),
            Effect::Shutdown(reply) => drop(reply.send(())),
            Effect::None => {}
        }
    }
}

/// The writer's answer to a subscribe: what to replay and what to say first.
struct Plan {
    hello: Hello,
    gap: Option<Gap>,
    replay: Vec<Arc<EventReceipts>>,
}

#[derive(Debug, Default)]
struct Sub {
    members: HashMap<DeviceId, Member>,
    anonymous: Vec<StreamTx>,
}

impl Sub {
    fn open_streams(&self) -> usize {
        self.anonymous.len()
            + self
                .members
                .values()
                .map(Member::connections)
                .sum::<usize>()
    }
}

#[derive(Debug, Default)]
struct ChannelLedger {
    receipts: VecDeque<Arc<EventReceipts>>,
    /// Highest id dropped for retention.
    evicted_upto: EventId,
}

#[derive(Debug)]
struct Idem {
    id: EventId,
    recipients: usize,
    at: Timestamp,
}

#[derive(Debug)]
struct OpenStream {
    subs: Vec<Pattern>,
    device: Option<DeviceId>,
}

struct State {
    seq: Sequencer,
    /// The last event applied (fanned out). Streams registered now get
    /// live events above it and replay at or below it.
    head: EventId,
    /// Ids below this predate what the store remembers (a volatile store's
    /// start): a client resuming below it may have lost events.
    floor: EventId,
    subs: HashMap<Pattern, Sub>,
    /// Subscriptions with wildcards, for matching channels against.
    wild: Vec<Pattern>,
    channels: HashMap<ChannelName, ChannelLedger>,
    by_id: HashMap<EventId, Arc<EventReceipts>>,
    idempotency: HashMap<(ChannelName, Box<str>), Idem>,
    streams: HashMap<u64, OpenStream>,
    watchers: HashMap<ChannelName, Arc<ReceiptWatchers>>,
    /// Records produced while applying (a stream closed for being slow);
    /// written with the next batch.
    deferred: Vec<Record>,
    /// [`HubConfig::replay_all`].
    replay_all: bool,
    /// Counted deliveries of streams that closed.
    delivered_closed: u64,
    closed: bool,
}

impl<S: EventStore> Hub<S> {
    /// Opens a hub over `store`: recovers what the store holds, then starts
    /// the writer task on the current Tokio runtime.
    ///
    /// # Errors
    /// The store could not be recovered.
    pub async fn open(config: HubConfig, store: S) -> Result<Self> {
        let recovered = store.recover().await?;
        for note in &recovered.notes {
            tracing::warn!(note = %note, "store recovery");
        }
        let now = Timestamp::now();
        let mut seq = Sequencer::after(recovered.last_id);
        let floor = if recovered.durable {
            EventId::ZERO
        } else {
            EventId(u64::try_from(now.0).unwrap_or(0).max(recovered.last_id.0))
        };
        if !recovered.durable {
            // Ids from a previous run are all below the clock; start above
            // it so every id we hand out is above `floor`.
            seq = Sequencer::after(floor);
        }
        let mut state = State {
            head: seq.last(),
            seq,
            floor,
            subs: HashMap::new(),
            wild: Vec::new(),
            channels: HashMap::new(),
            by_id: HashMap::new(),
            idempotency: HashMap::new(),
            streams: HashMap::new(),
            watchers: HashMap::new(),
            deferred: Vec::new(),
            replay_all: config.replay_all,
            delivered_closed: 0,
            closed: false,
        };
        state.recover(recovered.records, &recovered.evicted);
        let (commands, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            config,
            store,
            commands,
            state: Mutex::new(state),
            next_stream: AtomicU64::new(1),
            failed: OnceLock::new(),
            closing: AtomicBool::new(false),
            counters: Counters::default(),
        });
        tokio::spawn(writer(inner.clone(), rx));
        Ok(Self { inner })
    }

    /// The hub's configuration.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// Whether the hub is shutting down (new streams are refused).
    pub fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        if let Some(cause) = self.inner.failed.get() {
            return Err(Error::StoreUnavailable(cause.clone()));
        }
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .send(make(tx))
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Publishes an event: validates it, assigns its id, stores it, and
    /// queues it to every matching stream. Resolves once it is durable.
    ///
    /// # Errors
    /// An empty, oversized or non-UTF-8 payload, a bad idempotency key, or
    /// a store failure.
    pub async fn publish(&self, publish: Publish) -> Result<Published> {
        validate_payload(&publish.payload, self.inner.config.max_payload)?;
        if let Some(key) = &publish.idempotency_key {
            validate_idempotency_key(key)?;
        }
        self.call(|reply| Command::Publish(Box::new(publish), reply))
            .await
    }

    /// Opens a stream: registers it, becomes (or stays) a member for each
    /// subscription, and returns a [`Subscription`] that yields the replay
    /// and then live events, with no gap and no duplicate between them.
    ///
    /// `last_event_id` is the raw `Last-Event-ID` the client sent, kept for
    /// PERE's presence fields.
    ///
    /// # Errors
    /// No channel or too many, or the hub is shutting down.
    pub async fn subscribe(
        &self,
        mut req: SubscribeRequest,
        last_event_id: Option<String>,
    ) -> Result<Subscription> {
        if self.is_closing() {
            return Err(Error::ShuttingDown);
        }
        dedup_patterns(&mut req.patterns);
        if req.patterns.is_empty() {
            return Err(Error::NoChannel);
        }
        let limit = self.inner.config.max_channels_per_stream;
        if req.patterns.len() > limit {
            return Err(Error::TooManyChannels {
                requested: req.patterns.len(),
                limit,
            });
        }
        let id = self.inner.next_stream.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(StreamShared::new(id, req.device.clone()));
        let (tx, rx) = mpsc::channel(self.inner.config.queue_capacity.max(1));
        // The guard exists before the writer hears of the stream, so the
        // stream is unregistered however this future or its result ends.
        let guard = StreamGuard {
            id,
            commands: self.inner.commands.clone(),
        };
        let device = req.device.clone();
        let stream = StreamTx {
            shared: shared.clone(),
            tx,
        };
        let plan = self
            .call(|reply| Command::Subscribe {
                req,
                last_event_id,
                stream,
                reply,
            })
            .await?;
        self.inner
            .counters
            .streams_opened
            .fetch_add(1, Ordering::Relaxed);
        Ok(Subscription {
            hello: plan.hello,
            gap: plan.gap,
            replay: plan.replay.into(),
            rx,
            shared,
            device,
            _guard: guard,
        })
    }

    /// Records `device`'s receipt for event `id`, named on `subscription`
    /// (the event's channel, or a pattern matching it).
    ///
    /// # Errors
    /// [`Error::UnknownEvent`] when no retained event has that id on a
    /// matching channel; [`Error::StatusTooLong`]; a store failure.
    pub async fn ack(
        &self,
        subscription: &Pattern,
        device: &DeviceId,
        id: EventId,
        status: &str,
    ) -> Result<Acked> {
        if status.len() > MAX_STATUS_LEN {
            return Err(Error::StatusTooLong {
                size: status.len(),
                limit: MAX_STATUS_LEN,
            });
        }
        self.call(|reply| Command::Ack {
            subscription: subscription.clone(),
            device: device.clone(),
            id,
            status: intern_status(status),
            reply,
        })
        .await
    }

    /// Records many receipts at once: all reach the writer together, so they
    /// share one journal write. One result per item, in order; an unknown id
    /// fails only its own item.
    pub async fn ack_batch(
        &self,
        items: Vec<(Pattern, DeviceId, EventId, String)>,
    ) -> Vec<Result<Acked>> {
        let mut pending = Vec::with_capacity(items.len());
        for (subscription, device, id, status) in items {
            if status.len() > MAX_STATUS_LEN {
                pending.push(Err(Error::StatusTooLong {
                    size: status.len(),
                    limit: MAX_STATUS_LEN,
                }));
                continue;
            }
            if let Some(cause) = self.inner.failed.get() {
                pending.push(Err(Error::StoreUnavailable(cause.clone())));
                continue;
            }
            let (reply, rx) = oneshot::channel();
            let sent = self.inner.commands.send(Command::Ack {
                subscription,
                device,
                id,
                status: intern_status(&status),
                reply,
            });
            pending.push(match sent {
                Ok(()) => Ok(rx),
                Err(_) => Err(Error::ShuttingDown),
            });
        }
        let mut results = Vec::with_capacity(pending.len());
        for p in pending {
            results.push(match p {
                Ok(rx) => rx.await.unwrap_or(Err(Error::ShuttingDown)),
                Err(e) => Err(e),
            });
        }
        results
    }

    /// Ends `device`'s membership of `subscription` and closes its streams
    /// there.
    ///
    /// # Errors
    /// [`Error::UnknownMember`] when it is not a member.
    pub async fn remove_member(&self, subscription: &Pattern, device: &DeviceId) -> Result<()> {
        self.call(|reply| Command::RemoveMember {
            subscription: subscription.clone(),
            device: device.clone(),
            reply,
        })
        .await
    }

    /// The receipts of event `id`, which must be on a channel matched by
    /// `subscription`.
    ///
    /// # Errors
    /// [`Error::UnknownEvent`].
    pub fn receipts(&self, subscription: &Pattern, id: EventId) -> Result<Arc<EventReceipts>> {
        let state = self.inner.state();
        state
            .by_id
            .get(&id)
            .filter(|r| subscription.matches(&r.event.channel))
            .cloned()
            .ok_or_else(|| Error::UnknownEvent {
                channel: subscription.to_string(),
                id: id.to_string(),
            })
    }

    /// The receipt summary of event `id` (PROTOCOL §5).
    ///
    /// # Errors
    /// [`Error::UnknownEvent`].
    pub fn receipt_summary(&self, subscription: &Pattern, id: EventId) -> Result<ReceiptSummary> {
        Ok(self.receipts(subscription, id)?.summary())
    }

    /// A live feed of receipt changes on `channel`. The receiver ends when
    /// it falls too far behind or the hub shuts down.
    pub fn watch_receipts(&self, channel: &ChannelName) -> mpsc::Receiver<ReceiptChange> {
        let (tx, rx) = mpsc::channel(RECEIPT_WATCH_CAPACITY);
        let mut state = self.inner.state();
        if !state.closed {
            state.watchers_for(channel).add(tx);
        }
        rx
    }

    /// Retained events of `channel` after `after`, oldest first, at most
    /// `limit`.
    ///
    /// # Errors
    /// The store could not read them.
    pub async fn events(
        &self,
        channel: &ChannelName,
        after: EventId,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>> {
        self.inner
            .store
            .read(channel, after, EventId(u64::MAX), limit)
            .await
    }

    /// Devices known on `subscription` (members and devices that only sent
    /// receipts), sorted.
    pub fn devices(&self, subscription: &Pattern) -> Vec<(DeviceId, Presence)> {
        let state = self.inner.state();
        let mut out: Vec<(DeviceId, Presence)> = state
            .subs
            .get(subscription)
            .map(|sub| {
                sub.members
                    .iter()
                    .map(|(d, m)| (d.clone(), m.presence()))
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Open streams per subscription.
    pub fn connections(&self) -> Connections {
        let state = self.inner.state();
        let mut per_subscription: Vec<(Pattern, usize)> = state
            .subs
            .iter()
            .map(|(p, sub)| (p.clone(), sub.open_streams()))
            .filter(|(_, n)| *n > 0)
            .collect();
        per_subscription.sort();
        Connections {
            per_subscription,
            total: state.streams.len(),
        }
    }

    /// Every known channel: those with retained events and those subscribed
    /// to by name.
    pub fn channels(&self) -> Vec<ChannelInfo> {
        let state = self.inner.state();
        let mut names: Vec<ChannelName> = state
            .channels
            .iter()
            .filter(|(_, l)| !l.receipts.is_empty())
            .map(|(c, _)| c.clone())
            .collect();
        names.extend(state.subs.keys().filter_map(|p| p.exact().cloned()));
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|channel| {
                let ledger = state.channels.get(&channel);
                let receipts = ledger.map(|l| &l.receipts);
                let mut members = HashSet::new();
                let mut online = HashSet::new();
                for (pattern, sub) in &state.subs {
                    if !pattern.matches(&channel) {
                        continue;
                    }
                    for (device, member) in &sub.members {
                        if member.is_member {
                            members.insert(device);
                            if member.connections() > 0 {
                                online.insert(device);
                            }
                        }
                    }
                }
                ChannelInfo {
                    events: receipts.map_or(0, VecDeque::len),
                    oldest: receipts.and_then(|r| r.front()).map(|r| r.id()),
                    newest: receipts.and_then(|r| r.back()).map(|r| r.id()),
                    members: members.len(),
                    online: online.len(),
                    channel,
                }
            })
            .collect()
    }

    /// Counters and gauges for metrics.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        let state = self.inner.state();
        let live: u64 = state
            .subs
            .values()
            .flat_map(|s| {
                s.members
                    .values()
                    .flat_map(|m| m.streams.iter())
                    .chain(s.anonymous.iter())
            })
            .map(|s| s.shared.delivered.load(Ordering::Relaxed))
            .sum();
        Stats {
            published: c.published.load(Ordering::Relaxed),
            delivered: state.delivered_closed + live,
            acked: c.acked.load(Ordering::Relaxed),
            streams_opened: c.streams_opened.load(Ordering::Relaxed),
            slow_disconnects: c.slow_disconnects.load(Ordering::Relaxed),
            streams_open: state.streams.len(),
            retained: state.by_id.len(),
            members: state
                .subs
                .values()
                .map(|s| s.members.values().filter(|m| m.is_member).count())
                .sum(),
            batches: c.batches.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
        }
    }

    /// Shuts down: refuses new work, ends every stream (their bodies see the
    /// end of their queue), writes what is pending and closes the store.
    /// Safe to call more than once.
    pub async fn shutdown(&self) {
        self.inner.closing.store(true, Ordering::Release);
        let (tx, rx) = oneshot::channel();
        if self.inner.commands.send(Command::Shutdown(tx)).is_ok() {
            // The writer answers once the store is closed; if it is already
            // gone, so is the store.
            let _ = rx.await;
        }
    }
}

fn validate_idempotency_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidIdempotencyKey("it is empty".into()));
    }
    if key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(Error::InvalidIdempotencyKey(format!(
            "it is {} bytes long, the limit is {MAX_IDEMPOTENCY_KEY_LEN}",
            key.len()
        )));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(Error::InvalidIdempotencyKey(
            "only printable ASCII is allowed".into(),
        ));
    }
    Ok(())
}

/// Shares the `Arc<str>` of the common status so that a million `ok`
/// receipts cost one allocation.
fn intern_status(status: &str) -> Arc<str> {
    static OK: OnceLock<Arc<str>> = OnceLock::new();
    if status == "ok" {
        OK.get_or_init(|| Arc::from("ok")).clone()
    } else {
        Arc::from(status)
    }
}

fn dedup_patterns(patterns: &mut Vec<Pattern>) {
    let mut seen = HashSet::new();
    patterns.retain(|p| seen.insert(p.clone()));
}

/// Tells the writer that a stream ended, however its owner was dropped.
struct StreamGuard {
    id: u64,
    commands: mpsc::UnboundedSender<Command>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        // If the writer is gone the hub is shut down and nothing is left to
        // clean up.
        let _ = self.commands.send(Command::Closed(self.id));
    }
}

/// An open stream: first the replayed events, then live ones.
///
/// Yielding an event marks it delivered to the device and moves the
/// stream's cursor. Dropping the subscription closes the stream and updates
/// the device's presence.
pub struct Subscription {
    hello: Hello,
    gap: Option<Gap>,
    replay: VecDeque<Arc<EventReceipts>>,
    rx: mpsc::Receiver<Delivery>,
    shared: Arc<StreamShared>,
    device: Option<DeviceId>,
    _guard: StreamGuard,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.shared.id)
            .field("hello", &self.hello)
            .field("gap", &self.gap)
            .field("replay", &self.replay.len())
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// What to say first (`pere.hello`).
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Events lost to this client, if any (`pere.gap`).
    pub fn gap(&self) -> Option<Gap> {
        self.gap
    }

    /// The stream's hub-unique number.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The last event id written to this stream.
    pub fn delivered_upto(&self) -> EventId {
        self.shared.delivered_upto()
    }

    fn delivered(&self, receipts: &EventReceipts, slot: u32, now: Timestamp) {
        let id = receipts.id();
        if let Some(device) = &self.device {
            if slot == NO_SLOT {
                receipts.mark_delivered(device, now);
            } else {
                receipts.mark_delivered_slot(slot, now);
            }
        }
        let shared = &self.shared;
        if id.0 > shared.delivered_upto.load(Ordering::Relaxed) {
            shared.delivered_upto.store(id.0, Ordering::Release);
        }
        shared.delivered_at.store(now.0, Ordering::Release);
        shared.delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// Polls for the next event; `None` once the hub ended the stream (slow
    /// consumer, membership removed, shutdown).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Arc<Event>>> {
        if let Some(receipts) = self.replay.pop_front() {
            self.delivered(&receipts, NO_SLOT, Timestamp::now());
            return Poll::Ready(Some(receipts.event.clone()));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(d)) => {
                self.delivered(&d.receipts, d.slot, Timestamp::now());
                Poll::Ready(Some(d.receipts.event.clone()))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The next event without waiting, if one is ready (to write several in
    /// one go).
    pub fn try_next(&mut self) -> Option<Arc<Event>> {
        if let Some(receipts) = self.replay.pop_front() {
            self.delivered(&receipts, NO_SLOT, Timestamp::now());
            return Some(receipts.event.clone());
        }
        let d = self.rx.try_recv().ok()?;
        self.delivered(&d.receipts, d.slot, Timestamp::now());
        Some(d.receipts.event.clone())
    }

    /// Waits for the next event; `None` once the hub ended the stream.
    pub async fn next(&mut self) -> Option<Arc<Event>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }
}

async fn writer<S: EventStore>(inner: Arc<Inner<S>>, mut rx: mpsc::UnboundedReceiver<Command>) {
    let mut tick = tokio::time::interval(inner.config.tick.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(64);
    loop {
        tokio::select! {
            biased;
            n = rx.recv_many(&mut batch, MAX_BATCH) => {
                if n == 0 {
                    break;
                }
            }
            _ = tick.tick() => batch.push(Command::Tick),
        }
        let shutting_down = batch.iter().any(|c| matches!(c, Command::Shutdown(_)));
        process(&inner, std::mem::take(&mut batch)).await;
        if shutting_down {
            break;
        }
    }
    // Refuse whatever arrives from now on: dropping the receiver makes
    // every later `call` fail with `ShuttingDown`.
    rx.close();
    while let Ok(cmd) = rx.try_recv() {
        if let Command::Shutdown(reply) = cmd {
            let _ = reply.send(());
        }
    }
}

async fn process<S: EventStore>(inner: &Inner<S>, batch: Vec<Command>) {
    let now = Timestamp::now();
    let mut records = Vec::new();
    let mut effects = Vec::with_capacity(batch.len());
    let mut shutdown = false;
    {
        let mut state = inner.state();
        records.append(&mut state.deferred);
        for cmd in batch {
            if matches!(cmd, Command::Shutdown(_)) {
                shutdown = true;
            }
            let effect = state.prepare(cmd, now, &inner.config, &mut records);
            effects.push(effect);
        }
        if shutdown {
            state.close_all(now);
            records.append(&mut state.deferred);
        }
    }
    let result = if let Some(cause) = inner.failed.get() {
        Err(Error::StoreUnavailable(cause.clone()))
    } else if records.is_empty() {
        Ok(Vec::new())
    } else {
        inner.store.append(&records).await
    };
    match result {
        Ok(evicted) => {
            if !records.is_empty() {
                inner.counters.batches.fetch_add(1, Ordering::Relaxed);
                inner
                    .counters
                    .records
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
            }
            let mut shutdown_replies = Vec::new();
            {
                let mut state = inner.state();
                for effect in effects {
                    if let Effect::Shutdown(reply) = effect {
                        shutdown_replies.push(reply);
                        continue;
                    }
                    state.apply(effect, now, &inner.counters);
                }
                state.evict(&evicted);
            }
            if !shutdown_replies.is_empty() {
                if let Err(err) = inner.store.close().await {
                    tracing::error!(cause = %err, "closing the store failed");
                }
                for reply in shutdown_replies {
                    let _ = reply.send(());
                }
            }
        }
        Err(err) => {
            let cause = err.to_string();
            if inner.failed.set(cause.clone()).is_ok() {
                tracing::error!(cause = %cause, "the store failed; refusing writes until restart");
            }
            for effect in effects {
                effect.fail(|| Error::StoreUnavailable(cause.clone()));
            }
        }
    }
}

impl State {
    fn watchers_for(&mut self, channel: &ChannelName) -> Arc<ReceiptWatchers> {
        self.watchers.entry(channel.clone()).or_default().clone()
    }

    /// Subscriptions matching `channel`: the exact one and the wildcards.
    fn matching<'a>(&'a self, channel: &ChannelName) -> Vec<&'a Sub> {
        let mut subs = Vec::with_capacity(1 + self.wild.len());
        if let Some(sub) = self.subs.get(channel.as_str()) {
            subs.push(sub);
        }
        for pattern in &self.wild {
            if pattern.matches(channel) {
                if let Some(sub) = self.subs.get(pattern) {
                    subs.push(sub);
                }
            }
        }
        subs
    }

    fn prepare(
        &mut self,
        cmd: Command,
        now: Timestamp,
        config: &HubConfig,
        records: &mut Vec<Record>,
    ) -> Effect {
        if self.closed {
            return match cmd {
                Command::Publish(_, reply) => {
                    Effect::Fail(FailReply::Publish(reply), Error::ShuttingDown)
                }
                Command::Ack { reply, .. } => {
                    Effect::Fail(FailReply::Ack(reply), Error::ShuttingDown)
                }
                Command::Subscribe { reply, .. } => {
                    Effect::Fail(FailReply::Subscribe(reply), Error::ShuttingDown)
                }
                Command::RemoveMember { reply, .. } => {
                    Effect::Fail(FailReply::Unit(reply), Error::ShuttingDown)
                }
                Command::Shutdown(reply) => Effect::Shutdown(reply),
                Command::Closed(_) | Command::Tick => Effect::None,
            };
        }
        match cmd {
            Command::Publish(publish, reply) => self.prepare_publish(*publish, reply, now, records),
            Command::Ack {
                subscription,
                device,
                id,
                status,
                reply,
            } => match self.by_id.get(&id) {
                Some(receipts) if subscription.matches(&receipts.event.channel) => {
                    records.push(Record::Ack {
                        id,
                        device: device.clone(),
                        status: status.clone(),
                        at: now,
                    });
                    Effect::Ack {
                        receipts: receipts.clone(),
                        subscription,
                        device,
                        status,
                        reply,
                    }
                }
                _ => Effect::Fail(
                    FailReply::Ack(reply),
                    Error::UnknownEvent {
                        channel: subscription.to_string(),
                        id: id.to_string(),
                    },
                ),
            },
            Command::Subscribe {
                req,
                last_event_id,
                stream,
                reply,
            } => {
                let mut existed = Vec::with_capacity(req.patterns.len());
                for pattern in &req.patterns {
                    let sub = match self.subs.entry(pattern.clone()) {
                        Entry::Occupied(e) => e.into_mut(),
                        Entry::Vacant(e) => {
                            if pattern.exact().is_none() {
                                self.wild.push(pattern.clone());
                            }
                            e.insert(Sub::default())
                        }
                    };
                    let Some(device) = &req.device else {
                        existed.push(false);
                        continue;
                    };
                    let head = self.seq.last();
                    let member = sub.members.entry(device.clone()).or_insert_with(|| Member {
                        is_member: false,
                        ..Member::joined(head, now)
                    });
                    existed.push(member.is_member);
                    if !member.is_member {
                        let last_acked = member.last_acked;
                        *member = Member::joined(head, now);
                        member.last_acked = last_acked;
                        records.push(Record::Joined {
                            subscription: pattern.clone(),
                            device: device.clone(),
                            head,
                            at: now,
                        });
                    }
                    records.push(Record::Presence {
                        subscription: pattern.clone(),
                        device: device.clone(),
                        online: true,
                        last_event_id: last_event_id
                            .as_deref()
                            .and_then(|s| EventId::parse(s).ok()),
                        at: now,
                    });
                }
                Effect::Subscribe {
                    req,
                    last_event_id,
                    existed,
                    stream,
                    reply,
                }
            }
            Command::Closed(id) => {
                self.close_stream(id, now);
                records.append(&mut self.deferred);
                Effect::None
            }
            Command::RemoveMember {
                subscription,
                device,
                reply,
            } => {
                let removed = self
                    .subs
                    .get_mut(&subscription)
                    .and_then(|sub| sub.members.remove(&device));
                match removed {
                    Some(member) => {
                        for stream in &member.streams {
                            self.streams.remove(&stream.shared.id);
                            self.delivered_closed +=
                                stream.shared.delivered.load(Ordering::Relaxed);
                        }
                        // Dropping `member` drops its streams' senders: their
                        // bodies end.
                        records.push(Record::Left {
                            subscription,
                            device,
                            at: now,
                        });
                        Effect::Done(reply)
                    }
                    None => Effect::Fail(
                        FailReply::Unit(reply),
                        Error::UnknownMember {
                            subscription: subscription.to_string(),
                            device: device.to_string(),
                        },
                    ),
                }
            }
            Command::Tick => {
                self.maintain(now, config, records);
                Effect::None
            }
            Command::Shutdown(reply) => Effect::Shutdown(reply),
        }
    }

    fn prepare_publish(
        &mut self,
        publish: Publish,
        reply: Reply<Published>,
        now: Timestamp,
        records: &mut Vec<Record>,
    ) -> Effect {
        let key = publish
            .idempotency_key
            .map(|k| (publish.channel.clone(), k.into_boxed_str()));
        if let Some(key) = &key {
            if let Some(first) = self.idempotency.get(key) {
                return Effect::Duplicate {
                    id: first.id,
                    channel: publish.channel,
                    recipients: first.recipients,
                    reply,
                };
            }
        }
        let id = self.seq.next(now);
        let event = Arc::new(Event {
            id,
            channel: publish.channel,
            kind: publish.kind.filter(|k| !k.is_message()),
            device: publish.device,
            time: now,
            payload: publish.payload,
            idempotency_key: key.as_ref().map(|(_, k)| k.clone()),
            frame: OnceLock::new(),
        });
        if let Some(key) = key {
            // Recipients are filled in when the event is applied.
            self.idempotency.insert(
                key,
                Idem {
                    id,
                    recipients: 0,
                    at: now,
                },
            );
        }
        records.push(Record::Event(event.clone()));
        Effect::Publish { event, reply }
    }

    fn apply(&mut self, effect: Effect, now: Timestamp, counters: &Counters) {
        match effect {
            Effect::Fail(reply, err) => reply.send(err),
            Effect::Publish { event, reply } => {
                let receipts = self.fan_out(event, counters);
                counters.published.fetch_add(1, Ordering::Relaxed);
                let published = Published {
                    id: receipts.id(),
                    channel: receipts.event.channel.clone(),
                    recipients: receipts.audience().len(),
                    duplicate: false,
                    receipts: Some(receipts),
                };
                tracing::info!(
                    channel = %published.channel,
                    id = %published.id,
                    recipients = published.recipients,
                    "published"
                );
                let _ = reply.send(Ok(published));
            }
            Effect::Duplicate {
                id,
                channel,
                recipients,
                reply,
            } => {
                let receipts = self.by_id.get(&id).cloned();
                let recipients = receipts.as_ref().map_or(recipients, |r| r.audience().len());
                tracing::info!(channel = %channel, id = %id, "idempotent retry answered with the first result");
                let _ = reply.send(Ok(Published {
                    id,
                    channel,
                    recipients,
                    duplicate: true,
                    receipts,
                }));
            }
            Effect::Ack {
                receipts,
                subscription,
                device,
                status,
                reply,
            } => {
                receipts.ack(&device, status.clone(), now);
                counters.acked.fetch_add(1, Ordering::Relaxed);
                self.note_ack(
                    &subscription,
                    &receipts.event.channel,
                    &device,
                    receipts.id(),
                    now,
                );
                tracing::info!(
                    channel = %receipts.event.channel,
                    id = %receipts.id(),
                    device = %device,
                    status = %status,
                    "receipt"
                );
                let _ = reply.send(Ok(Acked {
                    id: receipts.id(),
                    device,
                    state: ReceiptState::Acked,
                }));
            }
            Effect::Subscribe {
                req,
                last_event_id,
                existed,
                stream,
                reply,
            } => {
                let plan = self.register(req, last_event_id, &existed, stream.clone(), now);
                if reply.send(Ok(plan)).is_err() || stream.tx.is_closed() {
                    // The subscriber left before it got its stream.
                    self.close_stream(stream.shared.id, now);
                }
            }
            Effect::Done(reply) => {
                let _ = reply.send(Ok(()));
            }
            Effect::Shutdown(reply) => {
                let _ = reply.send(());
            }
            Effect::None => {}
        }
    }

    /// Builds the event's receipts with its audience (members of matching
    /// subscriptions who joined before it) and queues it to every matching
    /// stream once.
    fn fan_out(&mut self, event: Arc<Event>, counters: &Counters) -> Arc<EventReceipts> {
        let id = event.id;
        let watchers = self.watchers_for(&event.channel);
        let mut audience: Vec<DeviceId> = Vec::new();
        let mut slow: Vec<u64> = Vec::new();
        let receipts = {
            let subs = self.matching(&event.channel);
            let several = subs.len() > 1;
            let mut slots: HashMap<&DeviceId, u32> = HashMap::new();
            let mut targets: Vec<(&StreamTx, u32)> = Vec::new();
            for sub in &subs {
                for (device, member) in &sub.members {
                    if !member.is_member || member.since >= id {
                        continue;
                    }
                    let slot = if several {
                        *slots.entry(device).or_insert_with(|| {
                            audience.push(device.clone());
                            (audience.len() - 1) as u32
                        })
                    } else {
                        audience.push(device.clone());
                        (audience.len() - 1) as u32
                    };
                    targets.extend(member.streams.iter().map(|s| (s, slot)));
                }
                targets.extend(sub.anonymous.iter().map(|s| (s, NO_SLOT)));
            }
            let receipts = Arc::new(EventReceipts::new(event, audience.into(), watchers));
            for (stream, slot) in targets {
                if stream.shared.enqueued_upto.swap(id.0, Ordering::Relaxed) == id.0 {
                    continue;
                }
                let delivery = Delivery {
                    receipts: receipts.clone(),
                    slot,
                };
                if let Err(mpsc::error::TrySendError::Full(_)) = stream.tx.try_send(delivery) {
                    slow.push(stream.shared.id);
                }
            }
            receipts
        };
        for stream in slow {
            tracing::warn!(
                stream,
                "stream closed: its queue is full (the device resumes later)"
            );
            counters.slow_disconnects.fetch_add(1, Ordering::Relaxed);
            self.close_stream(stream, receipts.event.time);
        }
        let channel = receipts.event.channel.clone();
        self.channels
            .entry(channel.clone())
            .or_default()
            .receipts
            .push_back(receipts.clone());
        self.by_id.insert(id, receipts.clone());
        if let Some(key) = &receipts.event.idempotency_key {
            if let Some(idem) = self.idempotency.get_mut(&(channel, key.clone())) {
                idem.recipients = receipts.audience().len();
            }
        }
        self.head = id;
        receipts
    }

    /// Registers a stream and plans its replay.
    fn register(
        &mut self,
        req: SubscribeRequest,
        last_event_id: Option<String>,
        existed: &[bool],
        stream: StreamTx,
        now: Timestamp,
    ) -> Plan {
        let head = self.head;
        let replay_all_default = matches!(req.resume, Resume::Auto) && self.replay_all;
        // Where each subscription starts.
        let mut starts: Vec<(Pattern, EventId, bool)> = Vec::with_capacity(req.patterns.len());
        for (i, pattern) in req.patterns.iter().enumerate() {
            let Some(sub) = self.subs.get_mut(pattern) else {
                continue;
            };
            let (start, checked) = match (req.resume, &req.device) {
                (Resume::After(id), _) => (id, true),
                (Resume::All, _) => (EventId::ZERO, false),
                (Resume::Now, _) => (head, false),
                (Resume::Auto, Some(device)) if existed.get(i).copied().unwrap_or(false) => {
                    let cursor = sub
                        .members
                        .get(device)
                        .map_or(head, |m| m.effective_cursor().0);
                    (cursor, true)
                }
                (Resume::Auto, _) if replay_all_default => (EventId::ZERO, false),
                (Resume::Auto, _) => (head, false),
            };
            starts.push((pattern.clone(), start.min(head), checked));
            match &req.device {
                Some(device) => {
                    if let Some(member) = sub.members.get_mut(device) {
                        if member.streams.is_empty() {
                            member.connected_at = Some(now);
                        }
                        member.streams.push(stream.clone());
                        member.disconnected_at = None;
                        member.last_seen = now;
                        member.op = Op::Feed;
                        member.op_at = now;
                        member.last_event_id = last_event_id.clone();
                    }
                }
                None => sub.anonymous.push(stream.clone()),
            }
        }
        self.streams.insert(
            stream.shared.id,
            OpenStream {
                subs: req.patterns.clone(),
                device: req.device.clone(),
            },
        );
        // Nothing at or below `head` is queued live to this stream.
        stream.shared.enqueued_upto.store(head.0, Ordering::Relaxed);

        let mut replay: Vec<Arc<EventReceipts>> = Vec::new();
        let mut gap: Option<Gap> = None;
        for (channel, ledger) in &self.channels {
            let mut after: Option<(EventId, bool)> = None;
            for (pattern, start, checked) in &starts {
                if pattern.matches(channel) {
                    after = Some(match after {
                        Some((a, c)) if a <= *start => (a, c),
                        _ => (*start, *checked),
                    });
                }
            }
            let Some((after, checked)) = after else {
                continue;
            };
            let oldest = ledger.receipts.front().map(|r| r.id());
            if checked && (after < ledger.evicted_upto || after < self.floor) {
                let g = gap.get_or_insert(Gap {
                    from: after,
                    oldest,
                });
                g.from = g.from.min(after);
                g.oldest = match (g.oldest, oldest) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            let start = ledger.receipts.partition_point(|r| r.id() <= after);
            replay.extend(
                ledger
                    .receipts
                    .range(start..)
                    .take_while(|r| r.id() <= head)
                    .cloned(),
            );
        }
        if gap.is_none() {
            // A resume point below what this hub remembers at all (a volatile
            // store restarted) lost events even on channels with nothing
            // retained now.
            if let Some((_, start, _)) = starts
                .iter()
                .filter(|(_, _, checked)| *checked)
                .min_by_key(|(_, s, _)| *s)
            {
                if *start < self.floor {
                    gap = Some(Gap {
                        from: *start,
                        oldest: None,
                    });
                }
            }
        }
        replay.sort_unstable_by_key(|r| r.id());
        let resumed_from = match req.resume {
            Resume::After(id) => Some(id),
            _ => starts
                .iter()
                .filter(|(_, _, checked)| *checked)
                .map(|(_, s, _)| *s)
                .min(),
        };
        tracing::info!(
            stream = stream.shared.id,
            device = req.device.as_ref().map(DeviceId::as_str),
            channels = ?req.patterns.iter().map(Pattern::as_str).collect::<Vec<_>>(),
            resumed_from = resumed_from.map(|id| id.0),
            replayed = replay.len(),
            "subscribed"
        );
        Plan {
            hello: Hello {
                device: req.device,
                channels: req.patterns,
                resumed_from,
                replayed: replay.len(),
            },
            gap,
            replay,
        }
    }

    /// Unregisters a stream: drops its queue senders (its body ends after
    /// what is queued) and folds its cursor into the member.
    fn close_stream(&mut self, id: u64, now: Timestamp) {
        let Some(open) = self.streams.remove(&id) else {
            return;
        };
        for pattern in &open.subs {
            let Some(sub) = self.subs.get_mut(pattern) else {
                continue;
            };
            let Some(device) = &open.device else {
                if let Some(i) = sub.anonymous.iter().position(|s| s.shared.id == id) {
                    let stream = sub.anonymous.swap_remove(i);
                    self.delivered_closed += stream.shared.delivered.load(Ordering::Relaxed);
                }
                continue;
            };
            let Some(member) = sub.members.get_mut(device) else {
                continue;
            };
            let Some(i) = member.streams.iter().position(|s| s.shared.id == id) else {
                continue;
            };
            let stream = member.streams.swap_remove(i);
            self.delivered_closed += stream.shared.delivered.load(Ordering::Relaxed);
            let upto = stream.shared.delivered_upto();
            if upto > member.cursor {
                member.cursor = upto;
                member.cursor_at = stream.shared.delivered_at();
            }
            member.last_seen = now;
            if member.streams.is_empty() {
                member.connected_at = None;
                member.disconnected_at = Some(now);
                member.op = Op::Left;
                member.op_at = now;
                self.deferred.push(Record::Presence {
                    subscription: pattern.clone(),
                    device: device.clone(),
                    online: false,
                    last_event_id: None,
                    at: now,
                });
            }
            if member.cursor > member.journaled_cursor {
                member.journaled_cursor = member.cursor;
                self.deferred.push(Record::Cursor {
                    subscription: pattern.clone(),
                    device: device.clone(),
                    cursor: member.cursor,
                    at: member.cursor_at.unwrap_or(now),
                });
            }
        }
    }

    /// Shutdown: every stream ends, every receipts stream too.
    fn close_all(&mut self, now: Timestamp) {
        let ids: Vec<u64> = self.streams.keys().copied().collect();
        for id in ids {
            self.close_stream(id, now);
        }
        for watchers in self.watchers.values() {
            watchers.close_all();
        }
        self.closed = true;
    }

    /// Presence bookkeeping for a receipt: every membership of the device
    /// that matches the event's channel, or a presence-only entry on the
    /// subscription the receipt named.
    fn note_ack(
        &mut self,
        subscription: &Pattern,
        channel: &ChannelName,
        device: &DeviceId,
        id: EventId,
        now: Timestamp,
    ) {
        let mut noted = false;
        for (pattern, sub) in self.subs.iter_mut() {
            if !pattern.matches(channel) {
                continue;
            }
            if let Some(member) = sub.members.get_mut(device) {
                touch_ack(member, id, now);
                noted = true;
            }
        }
        if !noted {
            let sub = match self.subs.entry(subscription.clone()) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    if subscription.exact().is_none() {
                        self.wild.push(subscription.clone());
                    }
                    e.insert(Sub::default())
                }
            };
            let member = sub.members.entry(device.clone()).or_insert_with(|| Member {
                is_member: false,
                ..Member::joined(id, now)
            });
            touch_ack(member, id, now);
        }
    }

    /// Drops the receipts of evicted events.
    fn evict(&mut self, evicted: &[Evicted]) {
        for e in evicted {
            let Some(ledger) = self.channels.get_mut(&e.channel) else {
                continue;
            };
            while ledger.receipts.front().is_some_and(|r| r.id() <= e.upto) {
                if let Some(r) = ledger.receipts.pop_front() {
                    self.by_id.remove(&r.id());
                }
            }
            ledger.evicted_upto = ledger.evicted_upto.max(e.upto);
        }
    }

    /// The periodic chores: memberships past their TTL, idempotency keys
    /// past theirs, cursors checkpointed, empty subscriptions dropped.
    fn maintain(&mut self, now: Timestamp, config: &HubConfig, records: &mut Vec<Record>) {
        let ttl = config.member_ttl;
        for (pattern, sub) in self.subs.iter_mut() {
            sub.members.retain(|device, member| {
                if !member.streams.is_empty() {
                    let (cursor, at) = member.effective_cursor();
                    if cursor > member.journaled_cursor {
                        member.journaled_cursor = cursor;
                        records.push(Record::Cursor {
                            subscription: pattern.clone(),
                            device: device.clone(),
                            cursor,
                            at: at.unwrap_or(now),
                        });
                    }
                    return true;
                }
                let since = member
                    .disconnected_at
                    .unwrap_or(member.last_seen)
                    .max(member.last_seen);
                if now.since(since) < ttl {
                    return true;
                }
                if member.is_member {
                    tracing::info!(subscription = %pattern, device = %device, "membership expired");
                    records.push(Record::Left {
                        subscription: pattern.clone(),
                        device: device.clone(),
                        at: now,
                    });
                }
                false
            });
        }
        let before = self.subs.len();
        self.subs
            .retain(|_, sub| !sub.members.is_empty() || !sub.anonymous.is_empty());
        if self.subs.len() != before {
            let subs = &self.subs;
            self.wild.retain(|p| subs.contains_key(p));
        }
        let idem_ttl = config.idempotency_ttl;
        let by_id = &self.by_id;
        self.idempotency
            .retain(|_, idem| by_id.contains_key(&idem.id) || now.since(idem.at) < idem_ttl);
        for watchers in self.watchers.values() {
            watchers.sweep();
        }
    }

    /// Rebuilds the state from the journal, in order.
    fn recover(&mut self, records: Vec<Record>, evicted: &[Evicted]) {
        for e in evicted {
            let ledger = self.channels.entry(e.channel.clone()).or_default();
            ledger.evicted_upto = ledger.evicted_upto.max(e.upto);
        }
        let counters = Counters::default();
        for record in records {
            match record {
                Record::Event(event) => {
                    if event.id > self.seq.last() {
                        self.seq = Sequencer::after(event.id);
                    }
                    if let Some(key) = &event.idempotency_key {
                        self.idempotency.insert(
                            (event.channel.clone(), key.clone()),
                            Idem {
                                id: event.id,
                                recipients: 0,
                                at: event.time,
                            },
                        );
                    }
                    self.fan_out(event, &counters);
                }
                Record::Ack {
                    id,
                    device,
                    status,
                    at,
                } => {
                    if let Some(receipts) = self.by_id.get(&id).cloned() {
                        receipts.ack(&device, status, at);
                        let channel = receipts.event.channel.clone();
                        let pattern = Pattern::from(channel.clone());
                        self.note_ack(&pattern, &channel, &device, id, at);
                    }
                }
                Record::Joined {
                    subscription,
                    device,
                    head,
                    at,
                } => {
                    if subscription.exact().is_none() && !self.subs.contains_key(&subscription) {
                        self.wild.push(subscription.clone());
                    }
                    let sub = self.subs.entry(subscription).or_default();
                    let last_acked = sub.members.get(&device).and_then(|m| m.last_acked);
                    let mut member = Member::joined(head, at);
                    member.last_acked = last_acked;
                    sub.members.insert(device, member);
                }
                Record::Cursor {
                    subscription,
                    device,
                    cursor,
                    at,
                } => {
                    if let Some(member) = self
                        .subs
                        .get_mut(&subscription)
                        .and_then(|s| s.members.get_mut(&device))
                    {
                        if cursor > member.cursor {
                            member.cursor = cursor;
                            member.cursor_at = Some(at);
                            member.journaled_cursor = cursor;
                        }
                    }
                }
                Record::Presence {
                    subscription,
                    device,
                    online,
                    last_event_id,
                    at,
                } => {
                    if let Some(member) = self
                        .subs
                        .get_mut(&subscription)
                        .and_then(|s| s.members.get_mut(&device))
                    {
                        member.last_seen = at;
                        member.op = if online { Op::Feed } else { Op::Left };
                        member.op_at = at;
                        member.disconnected_at = Some(at);
                        if online {
                            member.last_event_id = last_event_id.map(|id| id.to_string());
                        }
                    }
                }
                Record::Left {
                    subscription,
                    device,
                    ..
                } => {
                    if let Some(sub) = self.subs.get_mut(&subscription) {
                        sub.members.remove(&device);
                    }
                }
            }
        }
        // Deliveries up to each member's cursor happened before the restart.
        for (pattern, sub) in &self.subs {
            for (device, member) in &sub.members {
                if member.cursor <= member.since {
                    continue;
                }
                let at = member.cursor_at.unwrap_or_default();
                for (channel, ledger) in &self.channels {
                    if !pattern.matches(channel) {
                        continue;
                    }
                    let start = ledger.receipts.partition_point(|r| r.id() <= member.since);
                    for r in ledger.receipts.range(start..) {
                        if r.id() > member.cursor {
                            break;
                        }
                        r.mark_delivered(device, at);
                    }
                }
            }
        }
        let now = Timestamp::now();
        for sub in self.subs.values_mut() {
            for member in sub.members.values_mut() {
                // Nobody is connected after a restart; the TTL counts from now.
                member.disconnected_at = Some(member.disconnected_at.unwrap_or(now).max(now));
            }
        }
    }
}

fn touch_ack(member: &mut Member, id: EventId, now: Timestamp) {
    if member.last_acked.is_none_or(|(last, _)| id >= last) {
        member.last_acked = Some((id, now));
    }
    member.last_seen = now;
    member.op = Op::Feedback;
    member.op_at = now;
    member.last_event_id = Some(id.to_string());
}

#[cfg(test)]
mod tests;
