//! The hub's state and the writer's two phases over it: *prepare* (decide,
//! journal) and *apply* (fan out, register, answer).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{
    Acked, Command, Counters, Gap, Hello, Publish, Published, Reply, Resume, SubscribeRequest,
};
use crate::auth::{AuthRegistry, Reach, TokenHash};
use crate::config::HubConfig;
use crate::error::Error;
use crate::event::{Event, EventId, FrameCache, Sequencer, Timestamp};
use crate::ledger::{EventReceipts, NO_SLOT, OverdueNotice, ReceiptState};
use crate::log::{Evicted, Record};
use crate::metrics::HubMetrics;
use crate::name::{ChannelName, DeviceId, Pattern};
use crate::presence::{Delivery, Member, Op, StreamShared, StreamTx};
use crate::queue::Push;
use crate::receipt_log::ReceiptLog;

pub(super) enum Effect {
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
        token: Option<TokenHash>,
        existed: Vec<bool>,
        stream: StreamTx,
        reply: Reply<Plan>,
    },
    Done(Reply<()>),
    Token {
        existed: bool,
        reply: Reply<bool>,
    },
    Shutdown(oneshot::Sender<()>),
    None,
}

pub(super) enum FailReply {
    Publish(Reply<Published>),
    Ack(Reply<Acked>),
    Subscribe(Reply<Plan>),
    Unit(Reply<()>),
    Bool(Reply<bool>),
}

impl FailReply {
    pub(super) fn send(self, err: Error) {
        // A caller that went away no longer needs an answer.
        match self {
            FailReply::Publish(r) => drop(r.send(Err(err))),
            FailReply::Ack(r) => drop(r.send(Err(err))),
            FailReply::Subscribe(r) => drop(r.send(Err(err))),
            FailReply::Unit(r) => drop(r.send(Err(err))),
            FailReply::Bool(r) => drop(r.send(Err(err))),
        }
    }
}

impl Effect {
    pub(super) fn fail(self, err: impl Fn() -> Error) {
        match self {
            Effect::Fail(r, e) => r.send(e),
            Effect::Publish { reply, .. } | Effect::Duplicate { reply, .. } => {
                FailReply::Publish(reply).send(err())
            }
            Effect::Ack { reply, .. } => FailReply::Ack(reply).send(err()),
            Effect::Subscribe { reply, .. } => FailReply::Subscribe(reply).send(err()),
            Effect::Done(reply) => FailReply::Unit(reply).send(err()),
            Effect::Token { reply, .. } => FailReply::Bool(reply).send(err()),
            Effect::Shutdown(reply) => drop(reply.send(())),
            Effect::None => {}
        }
    }
}

/// The writer's answer to a subscribe: what to replay and what to say first.
pub(super) struct Plan {
    pub(super) hello: Hello,
    pub(super) gap: Option<Gap>,
    pub(super) replay: Vec<Arc<EventReceipts>>,
}

#[derive(Debug, Default)]
pub(super) struct Sub {
    pub(super) members: HashMap<DeviceId, Member>,
    pub(super) anonymous: Vec<StreamTx>,
    /// At least the number of acknowledging members (recounted by each
    /// maintenance tick): while 0, a publish skips tracking `unacked`.
    pub(super) ackers: usize,
}

impl Sub {
    pub(super) fn open_streams(&self) -> usize {
        self.anonymous.len()
            + self
                .members
                .values()
                .map(Member::connections)
                .sum::<usize>()
    }
}

#[derive(Debug, Default)]
pub(super) struct ChannelLedger {
    pub(super) receipts: VecDeque<Arc<EventReceipts>>,
    /// Highest id dropped for retention.
    pub(super) evicted_upto: EventId,
}

/// Most reclaimed channels remembered one by one; beyond, they are folded
/// into one floor for all of them (a gap told conservatively).
const MAX_TOMBSTONES: usize = 100_000;

/// What the hub remembers of channels it reclaimed: which ids retention
/// dropped there, so a client resuming below them still hears of the gap.
/// A few dozen bytes each instead of a ledger, and bounded.
#[derive(Debug, Default)]
pub(super) struct Tombstones {
    upto: HashMap<ChannelName, EventId>,
    order: VecDeque<ChannelName>,
    /// The highest id dropped on any channel forgotten past the bound.
    floor: EventId,
}

impl Tombstones {
    fn add(&mut self, channel: ChannelName, upto: EventId) {
        if upto == EventId::ZERO {
            return;
        }
        if self.upto.insert(channel.clone(), upto).is_none() {
            self.order.push_back(channel);
        }
        while self.order.len() > MAX_TOMBSTONES {
            if let Some(old) = self.order.pop_front()
                && let Some(id) = self.upto.remove(&old)
            {
                self.floor = self.floor.max(id);
            }
        }
    }

    /// Takes a reclaimed channel's record back (it has events again).
    fn take(&mut self, channel: &ChannelName) -> EventId {
        match self.upto.remove(channel) {
            Some(id) => {
                self.order.retain(|c| c != channel);
                id
            }
            None => EventId::ZERO,
        }
    }

    /// Whether a client resuming after `after` on `pattern` may have lost
    /// events of a reclaimed channel.
    fn lost_after(&self, pattern: &Pattern, after: EventId) -> bool {
        if after < self.floor {
            return true;
        }
        match pattern.exact() {
            Some(channel) => self.upto.get(channel).is_some_and(|upto| after < *upto),
            None => self
                .upto
                .iter()
                .any(|(channel, upto)| after < *upto && pattern.matches(channel)),
        }
    }
}

/// Channel, publisher, key.
pub(super) type IdemKey = (ChannelName, Option<DeviceId>, Box<str>);

#[derive(Debug)]
pub(super) struct Idem {
    pub(super) id: EventId,
    pub(super) recipients: usize,
    pub(super) at: Timestamp,
}

#[derive(Debug)]
pub(super) struct OpenStream {
    pub(super) subs: Vec<Pattern>,
    pub(super) device: Option<DeviceId>,
    /// The token it was opened with: a change of that token re-checks it.
    pub(super) token: Option<TokenHash>,
    pub(super) shared: Arc<StreamShared>,
}

pub(super) struct State {
    /// The hub's token table (shared with request handlers).
    pub(super) auth: Arc<AuthRegistry>,
    pub(super) seq: Sequencer,
    /// The last event applied (fanned out). Streams registered now get
    /// live events above it and replay at or below it.
    pub(super) head: EventId,
    /// Ids below this predate what the store remembers (a volatile store's
    /// start): a client resuming below it may have lost events.
    pub(super) floor: EventId,
    pub(super) subs: HashMap<Pattern, Sub>,
    /// Subscriptions with wildcards, for matching channels against.
    pub(super) wild: Vec<Pattern>,
    pub(super) channels: HashMap<ChannelName, ChannelLedger>,
    /// Channels reclaimed once retention emptied them, with the highest id
    /// retention dropped there (for `pere.gap`).
    pub(super) tombstones: Tombstones,
    pub(super) by_id: HashMap<EventId, Arc<EventReceipts>>,
    /// Idempotency keys, scoped by channel and publisher (the `device` of
    /// the publish: a token's subject when auth is on), so one publisher's
    /// key never swallows another's event.
    pub(super) idempotency: HashMap<IdemKey, Idem>,
    pub(super) streams: HashMap<u64, OpenStream>,
    pub(super) watchers: HashMap<ChannelName, Arc<ReceiptLog>>,
    /// Gaps told to receipts streams that fell behind (metrics).
    pub(super) receipt_gaps: Arc<std::sync::atomic::AtomicU64>,
    /// Records produced while applying (a stream closed for being slow);
    /// written with the next batch.
    pub(super) deferred: Vec<Record>,
    /// [`HubConfig::replay_all`].
    pub(super) replay_all: bool,
    /// [`HubConfig::ack_deadline`].
    pub(super) ack_deadline: Option<Duration>,
    /// Events whose acknowledgement deadline has not been checked yet, in
    /// publish order (so the due ones are at the front).
    pub(super) deadlines: VecDeque<Arc<EventReceipts>>,
    /// Overdue notices issued, and whether the webhook accepted them.
    pub(super) notices: HashMap<(EventId, DeviceId), (OverdueNotice, bool)>,
    /// Where issued notices go (the webhook task), once somebody listens.
    pub(super) notice_tx: Option<mpsc::UnboundedSender<OverdueNotice>>,
    /// Counted deliveries of streams that closed.
    pub(super) delivered_closed: u64,
    /// Counted redeliveries of streams that closed.
    pub(super) redelivered_closed: u64,
    pub(super) closed: bool,
    /// The hub's measurements, handed to each channel's receipts.
    pub(super) metrics: Arc<HubMetrics>,
}

impl State {
    pub(super) fn watchers_for(&mut self, channel: &ChannelName) -> Arc<ReceiptLog> {
        let (gaps, metrics) = (&self.receipt_gaps, &self.metrics);
        self.watchers
            .entry(channel.clone())
            .or_insert_with(|| {
                Arc::new(ReceiptLog::counting_gaps(gaps.clone()).with_metrics(metrics.clone()))
            })
            .clone()
    }

    /// Adds a closed stream's counters to the hub's.
    fn fold_counts(&mut self, shared: &StreamShared) {
        self.delivered_closed += shared.delivered.load(Ordering::Relaxed);
        self.redelivered_closed += shared.redelivered.load(Ordering::Relaxed);
    }

    /// Subscriptions matching `channel`: the exact one and the wildcards.
    pub(super) fn matching<'a>(&'a self, channel: &ChannelName) -> Vec<&'a Sub> {
        let mut subs = Vec::with_capacity(1 + self.wild.len());
        if let Some(sub) = self.subs.get(channel.as_str()) {
            subs.push(sub);
        }
        for pattern in &self.wild {
            if pattern.matches(channel)
                && let Some(sub) = self.subs.get(pattern)
            {
                subs.push(sub);
            }
        }
        subs
    }

    pub(super) fn prepare(
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
                Command::Token { reply, .. } => {
                    Effect::Fail(FailReply::Bool(reply), Error::ShuttingDown)
                }
                Command::Shutdown(reply) => Effect::Shutdown(reply),
                Command::Closed(_) | Command::Tick | Command::NoticeSent { .. } => Effect::None,
            };
        }
        match cmd {
            Command::Publish(publish, reply) => {
                self.prepare_publish(*publish, reply, now, config, records)
            }
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
                token,
                stream,
                reply,
            } => {
                if let Some(token) = &token
                    && let Err(err) = self.check_subscribe(token, &req)
                {
                    return Effect::Fail(FailReply::Subscribe(reply), err);
                }
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
                        // An acknowledging device rejoining: its new events
                        // are tracked from the first publish on.
                        sub.ackers += usize::from(last_acked.is_some());
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
                    token,
                    existed,
                    stream,
                    reply,
                }
            }
            Command::Token {
                token,
                grants,
                reply,
            } => {
                if !self.auth.is_enabled() {
                    // docs/PROTOCOL.md §7: admin-created tokens turn auth on. The
                    // first one must be an admin token, or nobody could
                    // manage tokens (or anything under /admin) afterwards.
                    if !grants.as_ref().is_some_and(|g| g.admin) {
                        return Effect::Fail(FailReply::Bool(reply), Error::AuthDisabled);
                    }
                    tracing::warn!("auth turned on by the first run-time admin token");
                    self.auth.enable_for_journal();
                }
                let existed = self.auth.grants(&token).is_some();
                // A JWT's `jti` is revoked whether or not it was seen.
                if grants.is_none() && !existed && !self.auth.is_jti(&token) {
                    return Effect::Fail(
                        FailReply::Bool(reply),
                        Error::UnknownToken(token.fingerprint()),
                    );
                }
                tracing::info!(
                    token = %token.fingerprint(),
                    subject = grants.as_ref().map(|g| g.subject.as_str()),
                    change = if grants.is_none() { "revoked" } else if existed { "changed" } else { "created" },
                    "token"
                );
                records.push(Record::Token {
                    token,
                    grants: grants.clone(),
                    at: now,
                });
                // Applied now, not after the journal write, so that later
                // commands of this batch already see it; should the write
                // fail the hub refuses every write from then on anyway, and
                // a revocation is better applied early than late.
                self.auth.apply(token, grants);
                self.enforce_grants(&token, now);
                for jwt in self.auth.tokens_of_jti(&token) {
                    self.enforce_grants(&jwt, now);
                }
                records.append(&mut self.deferred);
                Effect::Token { existed, reply }
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
                            self.fold_counts(&stream.shared);
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
                self.check_deadlines(now, records);
                Effect::None
            }
            Command::NoticeSent { id, device } => {
                if let Some(entry) = self.notices.get_mut(&(id, device.clone()))
                    && !entry.1
                {
                    entry.1 = true;
                    records.push(Record::Notice {
                        id,
                        device,
                        sent: true,
                        at: now,
                    });
                }
                Effect::None
            }
            Command::Shutdown(reply) => Effect::Shutdown(reply),
        }
    }

    pub(super) fn prepare_publish(
        &mut self,
        publish: Publish,
        reply: Reply<Published>,
        now: Timestamp,
        config: &HubConfig,
        records: &mut Vec<Record>,
    ) -> Effect {
        let key = publish.idempotency_key.map(|k| {
            (
                publish.channel.clone(),
                publish.device.clone(),
                k.into_boxed_str(),
            )
        });
        if let Some(key) = &key
            && let Some(first) = self.idempotency.get(key)
        {
            return Effect::Duplicate {
                id: first.id,
                channel: publish.channel,
                recipients: first.recipients,
                reply,
            };
        }
        if !self.channels.contains_key(&publish.channel) {
            if self.channels.len() >= config.max_channels {
                return Effect::Fail(
                    FailReply::Publish(reply),
                    Error::ChannelLimit {
                        limit: config.max_channels,
                    },
                );
            }
            // Opened now, so later publishes of this batch count it; a
            // channel that was reclaimed remembers what retention dropped.
            let evicted_upto = self.tombstones.take(&publish.channel);
            self.channels.insert(
                publish.channel.clone(),
                ChannelLedger {
                    receipts: VecDeque::new(),
                    evicted_upto,
                },
            );
        }
        let id = self.seq.next(now);
        let event = Arc::new(Event {
            id,
            channel: publish.channel,
            kind: publish.kind.filter(|k| !k.is_message()),
            device: publish.device,
            time: now,
            payload: publish.payload,
            idempotency_key: key.as_ref().map(|(_, _, k)| k.clone()),
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

    pub(super) fn apply(&mut self, effect: Effect, now: Timestamp, counters: &Counters) {
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
                // Per event: DEBUG (issue 18.2); pere_http::activity sums
                // them up at INFO.
                tracing::debug!(
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
                tracing::debug!(channel = %channel, id = %id, "idempotent retry answered with the first result");
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
                tracing::debug!(
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
                token,
                existed,
                stream,
                reply,
            } => {
                let plan = self.register(req, last_event_id, token, &existed, stream.clone(), now);
                if reply.send(Ok(plan)).is_err() || stream.is_closed() {
                    // The subscriber left before it got its stream.
                    self.close_stream(stream.shared.id, now);
                }
            }
            Effect::Done(reply) => {
                let _ = reply.send(Ok(()));
            }
            Effect::Token { existed, reply } => {
                let _ = reply.send(Ok(existed));
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
    pub(super) fn fan_out(&mut self, event: Arc<Event>, counters: &Counters) -> Arc<EventReceipts> {
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
            // One cache of encodings for this fan-out's streams: freed with
            // the last delivery that holds it, not kept with the event.
            let frames = Arc::new(FrameCache::default());
            for (stream, slot) in targets {
                // A stream whose token lost this channel's grant never gets
                // it queued (and its device is not marked delivered).
                if !stream.shared.allows(&receipts.event.channel) {
                    continue;
                }
                if stream.shared.enqueued_upto.swap(id.0, Ordering::Relaxed) == id.0 {
                    continue;
                }
                let delivery = Delivery {
                    receipts: receipts.clone(),
                    slot,
                    frames: frames.clone(),
                };
                if stream.push(delivery) == Push::Full {
                    slow.push(stream.shared.id);
                }
            }
            receipts
        };
        for stream in slow {
            // Which device, and where it will resume from, so that a
            // client's report of a closed stream can be matched to this line.
            let open = self.streams.get(&stream);
            tracing::warn!(
                stream,
                device = open.and_then(|o| o.device.as_ref()).map(DeviceId::as_str),
                event = id.0,
                delivered_upto = open.map(|o| o.shared.delivered_upto().0),
                "stream closed: its queue is full (the device resumes later)"
            );
            counters.slow_disconnects.fetch_add(1, Ordering::Relaxed);
            self.close_stream(stream, receipts.event.time);
        }
        let channel = receipts.event.channel.clone();
        self.track_unacked(&channel, id);
        self.channels
            .entry(channel.clone())
            .or_default()
            .receipts
            .push_back(receipts.clone());
        self.by_id.insert(id, receipts.clone());
        if self.ack_deadline.is_some() {
            self.deadlines.push_back(receipts.clone());
        }
        if let Some(key) = &receipts.event.idempotency_key
            && let Some(idem) =
                self.idempotency
                    .get_mut(&(channel, receipts.event.device.clone(), key.clone()))
        {
            idem.recipients = receipts.audience().len();
        }
        self.head = id;
        receipts
    }

    /// Adds a new event to `unacked` of every acknowledging member in its
    /// audience, online or not: it is theirs until they acknowledge it.
    fn track_unacked(&mut self, channel: &ChannelName, id: EventId) {
        let State { subs, wild, .. } = self;
        let track = |sub: &mut Sub| {
            if sub.ackers == 0 {
                return;
            }
            for member in sub.members.values_mut() {
                if member.is_member && member.since < id && member.acknowledges() {
                    member.unacked.push_back(id);
                }
            }
        };
        if let Some(sub) = subs.get_mut(channel.as_str()) {
            track(sub);
        }
        for pattern in wild.iter() {
            if pattern.matches(channel)
                && let Some(sub) = subs.get_mut(pattern)
            {
                track(sub);
            }
        }
    }

    /// Registers a stream and plans its replay.
    pub(super) fn register(
        &mut self,
        req: SubscribeRequest,
        last_event_id: Option<String>,
        token: Option<TokenHash>,
        existed: &[bool],
        stream: StreamTx,
        now: Timestamp,
    ) -> Plan {
        let head = self.head;
        let replay_all_default = matches!(req.resume, Resume::Auto) && self.replay_all;
        // Where each subscription starts: after an id, for every event of
        // its channels…
        let mut starts: Vec<(Pattern, EventId, bool)> = Vec::with_capacity(req.patterns.len());
        // …or, for an acknowledging member resuming on its own, exactly the
        // events it has not acknowledged (docs/PROTOCOL.md §5).
        let mut redeliver: Vec<EventId> = Vec::new();
        let mut floors: Vec<EventId> = Vec::new();
        let mut lost = false;
        for (i, pattern) in req.patterns.iter().enumerate() {
            let Some(sub) = self.subs.get_mut(pattern) else {
                continue;
            };
            let existed = existed.get(i).copied().unwrap_or(false);
            let (start, checked) = match (req.resume, &req.device) {
                (Resume::After(id), _) => (id, true),
                (Resume::All, _) => (EventId::ZERO, false),
                (Resume::Now, _) => (head, false),
                (Resume::Auto, Some(device)) if existed => match sub.members.get_mut(device) {
                    Some(member) if member.acknowledges() => {
                        let floor = unacked_to_send(member, &self.by_id, head, &mut redeliver);
                        lost |= member.lost_from.take().is_some();
                        floors.push(floor);
                        // Nothing in order after a point: the list says it all.
                        (head, false)
                    }
                    member => (member.map_or(head, |m| m.effective_cursor().0), true),
                },
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
                token,
                shared: stream.shared.clone(),
            },
        );
        // Nothing at or below `head` is queued live to this stream.
        stream.shared.enqueued_upto.store(head.0, Ordering::Relaxed);

        let mut replay: Vec<Arc<EventReceipts>> = redeliver
            .iter()
            .filter_map(|id| self.by_id.get(id).cloned())
            .collect();
        let mut gap: Option<Gap> = None;
        let mut oldest_of_all: Option<EventId> = None;
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
            oldest_of_all = match (oldest_of_all, oldest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
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
        for (pattern, start, checked) in &starts {
            if *checked && self.tombstones.lost_after(pattern, *start) {
                // A channel reclaimed after retention emptied it.
                let g = gap.get_or_insert(Gap {
                    from: *start,
                    oldest: oldest_of_all,
                });
                g.from = g.from.min(*start);
            }
        }
        if lost {
            // Retention dropped events the device had not acknowledged
            // before it could get them again.
            let from = floors.iter().copied().min().unwrap_or(head);
            let g = gap.get_or_insert(Gap {
                from,
                oldest: oldest_of_all,
            });
            g.from = g.from.min(from);
        }
        if gap.is_none() {
            // A resume point below what this hub remembers at all (a volatile
            // store restarted) lost events even on channels with nothing
            // retained now.
            if let Some((_, start, _)) = starts
                .iter()
                .filter(|(_, _, checked)| *checked)
                .min_by_key(|(_, s, _)| *s)
                && *start < self.floor
            {
                gap = Some(Gap {
                    from: *start,
                    oldest: None,
                });
            }
        }
        replay.sort_unstable_by_key(|r| r.id());
        // An event matching several subscriptions (or both redelivered and
        // replayed) is sent once.
        replay.dedup_by_key(|r| r.id());
        let resumed_from = match req.resume {
            Resume::After(id) => Some(id),
            _ => starts
                .iter()
                .filter(|(_, _, checked)| *checked)
                .map(|(_, s, _)| *s)
                .chain(floors.iter().copied())
                .min(),
        };
        tracing::debug!(
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
    pub(super) fn close_stream(&mut self, id: u64, now: Timestamp) {
        let Some(open) = self.streams.remove(&id) else {
            return;
        };
        self.fold_counts(&open.shared);
        for pattern in &open.subs {
            let Some(sub) = self.subs.get_mut(pattern) else {
                continue;
            };
            let Some(device) = &open.device else {
                if let Some(i) = sub.anonymous.iter().position(|s| s.shared.id == id) {
                    sub.anonymous.swap_remove(i);
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

    /// Whether a stream may open for `token` (docs/PROTOCOL.md §7): the token
    /// exists, the device is its subject, and every pattern is covered.
    fn check_subscribe(&self, token: &TokenHash, req: &SubscribeRequest) -> Result<(), Error> {
        let Some(grants) = self.auth.grants(token) else {
            return Err(Error::Unauthorized(
                "the token is unknown or was revoked".into(),
            ));
        };
        if req.device.as_ref() != Some(&grants.subject) {
            return Err(Error::Forbidden(format!(
                "this token speaks for device `{}` only",
                grants.subject
            )));
        }
        if let Some(p) = req.patterns.iter().find(|p| !grants.may_subscribe(p)) {
            return Err(Error::Forbidden(format!(
                "the token does not grant subscribing to `{p}`"
            )));
        }
        Ok(())
    }

    /// Applies a change of `token` to its open streams: a stream it no
    /// longer reaches at all closes (and skips what it had queued); one it
    /// reaches in part is filtered to the channels still granted; one it
    /// reaches wholly is unrestricted again.
    pub(super) fn enforce_grants(&mut self, token: &TokenHash, now: Timestamp) {
        let grants = self.auth.grants(token);
        let mut close = Vec::new();
        for (id, open) in &self.streams {
            if open.token.as_ref() != Some(token) {
                continue;
            }
            let reach = match &grants {
                None => Reach::None,
                Some(g) => g.reach(open.device.as_ref(), &open.subs),
            };
            match reach {
                Reach::All => open.shared.restrict(None),
                Reach::Some(allowed) => open.shared.restrict(Some(allowed)),
                Reach::None => {
                    open.shared.revoke();
                    close.push(*id);
                }
            }
        }
        for id in close {
            tracing::info!(
                stream = id,
                token = %token.fingerprint(),
                "stream closed: its token no longer grants it"
            );
            self.close_stream(id, now);
        }
    }

    /// Shutdown: every stream ends, every receipts stream too.
    pub(super) fn close_all(&mut self, now: Timestamp) {
        let ids: Vec<u64> = self.streams.keys().copied().collect();
        for id in ids {
            self.close_stream(id, now);
        }
        for watchers in self.watchers.values() {
            watchers.close();
        }
        self.closed = true;
    }

    /// Presence bookkeeping for a receipt: every membership of the device
    /// that matches the event's channel, or a presence-only entry on the
    /// subscription the receipt named.
    pub(super) fn note_ack(
        &mut self,
        subscription: &Pattern,
        channel: &ChannelName,
        device: &DeviceId,
        id: EventId,
        now: Timestamp,
    ) {
        let mut noted = false;
        let State { subs, channels, .. } = self;
        for (pattern, sub) in subs.iter_mut() {
            if !pattern.matches(channel) {
                continue;
            }
            if let Some(member) = sub.members.get_mut(device) {
                if member.acknowledges() {
                    member.forget_unacked(id);
                } else if member.is_member {
                    // Its first receipt: from now on it is sent again what
                    // it has not acknowledged, starting with what it has
                    // already been sent.
                    member.unacked = unacked_events(channels, pattern, device, member.since);
                    sub.ackers += 1;
                }
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
    pub(super) fn evict(&mut self, evicted: &[Evicted], now: Timestamp) {
        let mut gone = Vec::new();
        for e in evicted {
            let Some(ledger) = self.channels.get_mut(&e.channel) else {
                continue;
            };
            while ledger.receipts.front().is_some_and(|r| r.id() <= e.upto) {
                if let Some(r) = ledger.receipts.pop_front() {
                    self.by_id.remove(&r.id());
                    gone.push(r);
                }
            }
            ledger.evicted_upto = ledger.evicted_upto.max(e.upto);
        }
        // With a deadline, no unacknowledged event leaves without a word:
        // its devices get a notice now (journaled with the next batch).
        if let Some(deadline) = self.ack_deadline {
            let mut records = std::mem::take(&mut self.deferred);
            for r in gone {
                self.notify_unacked(&r, r.event.time.plus(deadline), true, now, &mut records);
            }
            self.deferred = records;
        }
    }

    /// Issues an overdue notice for every device that has not acked an event
    /// whose deadline passed (once per event and device, ever).
    pub(super) fn check_deadlines(&mut self, now: Timestamp, records: &mut Vec<Record>) {
        let Some(deadline) = self.ack_deadline else {
            return;
        };
        while let Some(front) = self.deadlines.front() {
            let due = front.event.time.plus(deadline);
            if due > now {
                break;
            }
            let Some(receipts) = self.deadlines.pop_front() else {
                break;
            };
            if !self.by_id.contains_key(&receipts.id()) {
                continue; // no longer retained
            }
            self.notify_unacked(&receipts, due, false, now, records);
        }
    }

    /// Issues one notice per device that has not acknowledged `receipts`'
    /// event and was not noticed yet (overdue, or `expired` when retention
    /// drops the event first), journaled so it is never issued twice.
    fn notify_unacked(
        &mut self,
        receipts: &EventReceipts,
        deadline: Timestamp,
        expired: bool,
        now: Timestamp,
        records: &mut Vec<Record>,
    ) {
        for (device, state) in receipts.unacked_devices() {
            let key = (receipts.id(), device.clone());
            if self.notices.contains_key(&key) {
                continue;
            }
            let notice = OverdueNotice {
                id: receipts.id(),
                channel: receipts.event.channel.clone(),
                device: device.clone(),
                state,
                published_at: receipts.event.time,
                deadline,
                expired,
            };
            tracing::debug!(
                channel = %notice.channel,
                id = %notice.id,
                device = %device,
                state = state.as_str(),
                expired,
                "receipt overdue"
            );
            records.push(Record::Notice {
                id: notice.id,
                device,
                sent: false,
                at: now,
            });
            receipts.announce_overdue(&notice);
            if let Some(tx) = &self.notice_tx
                && tx.send(notice.clone()).is_err()
            {
                self.notice_tx = None;
            }
            self.notices.insert(key, (notice, false));
        }
    }

    /// Starts delivering overdue notices to a new listener: every notice
    /// issued but not yet accepted first, then new ones.
    pub(super) fn attach_notices(&mut self, tx: mpsc::UnboundedSender<OverdueNotice>) {
        let mut unsent: Vec<&OverdueNotice> = self
            .notices
            .values()
            .filter(|(_, sent)| !sent)
            .map(|(n, _)| n)
            .collect();
        unsent.sort_by_key(|n| (n.id, n.device.clone()));
        for notice in unsent {
            let _ = tx.send(notice.clone());
        }
        self.notice_tx = Some(tx);
    }

    /// The periodic chores: memberships past their TTL, idempotency keys
    /// past theirs, cursors checkpointed, empty subscriptions dropped.
    pub(super) fn maintain(
        &mut self,
        now: Timestamp,
        config: &HubConfig,
        records: &mut Vec<Record>,
    ) {
        let ttl = config.member_ttl;
        let by_id = &self.by_id;
        for (pattern, sub) in self.subs.iter_mut() {
            let mut ackers = 0;
            for member in sub.members.values_mut() {
                if member.acknowledges() {
                    ackers += 1;
                    // Retention dropped these before the device acknowledged
                    // them: forget them, and tell it when it comes back.
                    while let Some(&first) = member.unacked.front()
                        && !by_id.contains_key(&first)
                    {
                        member.unacked.pop_front();
                        member.lost_from = member.lost_from.or(Some(first));
                    }
                }
            }
            sub.ackers = ackers;
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
                    tracing::debug!(subscription = %pattern, device = %device, "membership expired");
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
        self.reclaim_channels();
        let by_id = &self.by_id;
        // Kept until the webhook took them, even for events gone since.
        self.notices
            .retain(|(id, _), (_, sent)| by_id.contains_key(id) || !*sent);
        let idem_ttl = config.idempotency_ttl;
        let by_id = &self.by_id;
        self.idempotency
            .retain(|_, idem| by_id.contains_key(&idem.id) || now.since(idem.at) < idem_ttl);
    }

    /// Forgets channels retention emptied (keeping a tombstone of what it
    /// dropped) and receipt-watcher slots nobody uses: a server that saw a
    /// million short-lived channels holds only what is still retained.
    fn reclaim_channels(&mut self) {
        let tombstones = &mut self.tombstones;
        self.channels.retain(|channel, ledger| {
            if !ledger.receipts.is_empty() {
                return true;
            }
            tombstones.add(channel.clone(), ledger.evicted_upto);
            false
        });
        if self.channels.capacity() > 2 * self.channels.len() + 64 {
            self.channels.shrink_to_fit();
        }
        let channels = &self.channels;
        let now = Timestamp::now();
        self.watchers
            .retain(|channel, w| !w.idle(now) || channels.contains_key(channel));
        if self.watchers.capacity() > 2 * self.watchers.len() + 64 {
            self.watchers.shrink_to_fit();
        }
        if self.by_id.capacity() > 2 * self.by_id.len() + 1024 {
            self.by_id.shrink_to_fit();
        }
    }

    /// Rebuilds the state from the journal, in order.
    pub(super) fn recover(&mut self, records: Vec<Record>, evicted: &[Evicted]) {
        for e in evicted {
            let ledger = self.channels.entry(e.channel.clone()).or_default();
            ledger.evicted_upto = ledger.evicted_upto.max(e.upto);
        }
        let counters = Counters::default();
        // Receipts go last: deliveries are only known from cursors (their
        // times are the cursor's), and an ack first would claim the delivery
        // with its own time.
        let mut acks = Vec::new();
        let mut notices = Vec::new();
        for record in records {
            match record {
                Record::Event(event) => {
                    if self.by_id.contains_key(&event.id) {
                        // Replayed twice (a store's own recovery should
                        // prevent it): the first copy stands.
                        continue;
                    }
                    if event.id > self.seq.last() {
                        self.seq = Sequencer::after(event.id);
                    }
                    if let Some(key) = &event.idempotency_key {
                        self.idempotency.insert(
                            (event.channel.clone(), event.device.clone(), key.clone()),
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
                } => acks.push((id, device, status, at)),
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
                        && cursor > member.cursor
                    {
                        member.cursor = cursor;
                        member.cursor_at = Some(at);
                        member.journaled_cursor = cursor;
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
                Record::Notice {
                    id, device, sent, ..
                } => notices.push((id, device, sent)),
                Record::Token { token, grants, .. } => self.auth.apply(token, grants),
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
        for (id, device, status, at) in acks {
            if let Some(receipts) = self.by_id.get(&id).cloned() {
                receipts.ack(&device, status, at);
                let channel = receipts.event.channel.clone();
                let pattern = Pattern::from(channel.clone());
                self.note_ack(&pattern, &channel, &device, id, at);
            }
        }
        for (id, device, sent) in notices {
            let Some(receipts) = self.by_id.get(&id) else {
                continue;
            };
            let key = (id, device.clone());
            match self.notices.get_mut(&key) {
                Some(entry) => entry.1 |= sent,
                None => {
                    let state = receipts
                        .receipt_of(&device)
                        .map_or(ReceiptState::Pending, |r| r.state);
                    let notice = OverdueNotice {
                        id,
                        channel: receipts.event.channel.clone(),
                        device,
                        state,
                        published_at: receipts.event.time,
                        deadline: receipts
                            .event
                            .time
                            .plus(self.ack_deadline.unwrap_or_default()),
                        expired: false,
                    };
                    self.notices.insert(key, (notice, sent));
                }
            }
        }
        let now = Timestamp::now();
        for sub in self.subs.values_mut() {
            sub.ackers = sub.members.values().filter(|m| m.acknowledges()).count();
            for member in sub.members.values_mut() {
                // Nobody is connected after a restart; the TTL counts from now.
                member.disconnected_at = Some(member.disconnected_at.unwrap_or(now).max(now));
            }
        }
    }
}

/// Collects into `out` the retained events of an acknowledging `member`
/// that it has not acknowledged (up to `head`), forgetting those retention
/// dropped (noted in `lost_from`). Returns the point it resumes after: just
/// before its oldest unacknowledged event, or its cursor when there is none.
fn unacked_to_send(
    member: &mut Member,
    by_id: &HashMap<EventId, Arc<EventReceipts>>,
    head: EventId,
    out: &mut Vec<EventId>,
) -> EventId {
    let mut lost_from = member.lost_from;
    member.unacked.retain(|id| {
        if by_id.contains_key(id) {
            return true;
        }
        lost_from = Some(lost_from.map_or(*id, |l| l.min(*id)));
        false
    });
    member.lost_from = lost_from;
    // Told in `pere.hello` as `resumed_from` (and as a gap's `from`): the
    // cursor or the last acknowledged event when one is below everything
    // resent or lost, else just below the first of those.
    let cursor = member.effective_cursor().0;
    let first = match (member.unacked.front().copied(), lost_from) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let floor = match first {
        None => cursor,
        Some(first) => [Some(cursor), member.last_acked.map(|(id, _)| id)]
            .into_iter()
            .flatten()
            .filter(|id| *id < first)
            .max()
            .unwrap_or(EventId(first.0 - 1)),
    };
    out.extend(member.unacked.iter().copied().take_while(|id| *id <= head));
    floor
}

/// The retained events on `pattern`'s channels after `since` that `device`
/// has not acknowledged, in id order: an acknowledging member's `unacked`
/// when it starts acknowledging, or after a restart.
fn unacked_events(
    channels: &HashMap<ChannelName, ChannelLedger>,
    pattern: &Pattern,
    device: &DeviceId,
    since: EventId,
) -> VecDeque<EventId> {
    let mut ids = Vec::new();
    let mut scan = |ledger: &ChannelLedger| {
        let start = ledger.receipts.partition_point(|r| r.id() <= since);
        ids.extend(
            ledger
                .receipts
                .range(start..)
                .filter(|r| !r.is_acked_by(device))
                .map(|r| r.id()),
        );
    };
    match pattern.exact() {
        Some(channel) => {
            if let Some(ledger) = channels.get(channel) {
                scan(ledger);
            }
        }
        None => {
            for (channel, ledger) in channels {
                if pattern.matches(channel) {
                    scan(ledger);
                }
            }
        }
    }
    ids.sort_unstable();
    ids.into()
}

pub(super) fn touch_ack(member: &mut Member, id: EventId, now: Timestamp) {
    if member.last_acked.is_none_or(|(last, _)| id >= last) {
        member.last_acked = Some((id, now));
    }
    member.last_seen = now;
    member.op = Op::Feedback;
    member.op_at = now;
    member.last_event_id = Some(id.to_string());
}
