//! The [`Hub`]: publish, subscribe, ack, and the queries behind the admin and
//! receipts endpoints.
//!
//! # Design
//! Ordering has one owner. Every change — a publish, a receipt, a stream
//! opening or closing, a membership ending — is a [`Command`] sent to the
//! hub's writer (a task, or a thread for a store whose appends block), which
//! drains them in batches:
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

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::auth::{AuthRegistry, Grants, MAX_GRANTS, Token, TokenHash};
use crate::config::HubConfig;
use crate::error::{Error, Result};
use crate::event::{EventId, Sequencer, Timestamp, validate_payload};
use crate::ledger::OverdueNotice;
use crate::log::{Damage, EventStore, MemoryStore};
use crate::metrics::HubMetrics;
use crate::name::{ChannelName, DeviceId, Pattern};
use crate::presence::{StreamRx, StreamShared, StreamTx};
use crate::receipt_log::{ReceiptFollower, ReceiptLog};

/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;
/// Most commands the writer takes into one batch (one journal write).
const MAX_BATCH: usize = 1024;

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
    /// One node of a cluster: deliveries reach the ledger through the log
    /// (see `Subscription::marks`).
    cluster: bool,
    /// A cluster node's wait for the log's head (see `Hub::caught_up`).
    barrier: Option<cluster::Barrier>,
    /// To the writer. Unbounded so a stream's `Drop` can always report
    /// its end; requests are bounded anyway by their callers waiting for
    /// the reply.
    commands: mpsc::UnboundedSender<Command>,
    state: Mutex<State>,
    /// The token table; the writer applies run-time changes to it, request
    /// handlers read it.
    auth: Arc<AuthRegistry>,
    next_stream: AtomicU64,
    /// Whether the store takes writes, and the retries when it does not.
    health: Mutex<Health>,
    /// What the store's recovery skipped.
    damage: Vec<Damage>,
    closing: AtomicBool,
    /// Turns true when shutdown begins, for requests held open on the hub
    /// (waiting publishes) that must answer before the server stops.
    closing_signal: tokio::sync::watch::Sender<bool>,
    counters: Counters,
    /// Why the hub stopped serving on its own, when it did (a cluster node
    /// whose shared log lost what it had applied).
    failed: tokio::sync::watch::Sender<Option<String>>,
    /// When a failover lost entries this node had applied: the newest event
    /// id the log still holds (events after it are gone).
    lost_after: tokio::sync::watch::Sender<Option<EventId>>,
    /// Latency histograms and the gauges the ledger keeps (also held by
    /// the state, for each channel's receipts, and by every stream).
    metrics: Arc<HubMetrics>,
    /// The gauges the last view of them found, for a `/metrics` scrape
    /// while the writer is held up (see `view.rs`).
    last_gauges: Mutex<view::Gauges>,
}

impl<S> Inner<S> {
    fn state(&self) -> MutexGuard<'_, State> {
        // State changes are applied step by step, each leaving it valid; a
        // panic in one must not take the whole hub down with poisoning.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn last_gauges(&self) -> MutexGuard<'_, view::Gauges> {
        self.last_gauges.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<S: EventStore> Hub<S> {
    /// Opens a hub over `store`: recovers what the store holds, then starts
    /// the writer: a task on the current Tokio runtime, or a thread of its
    /// own for a store whose appends block ([`EventStore::appends_block`]).
    ///
    /// # Errors
    /// The store could not be recovered.
    pub async fn open(config: HubConfig, store: S) -> Result<Self> {
        Self::open_with_auth(config, store, AuthRegistry::default()).await
    }

    /// [`Hub::open`] with `auth` set up beforehand (the `--auth` file's
    /// tokens, a JWT verifier), so that what the store replays is checked
    /// as it was when it was written.
    ///
    /// # Errors
    /// The store could not be recovered.
    pub async fn open_with_auth(config: HubConfig, store: S, auth: AuthRegistry) -> Result<Self> {
        let (inner, rx) = Self::assemble(config, store, None, None, auth).await?;
        writer::start(inner.clone(), rx)?;
        Ok(Self { inner })
    }

    /// Opens a hub as one node of a cluster that shares `log`
    /// ([`cluster`]): `store` keeps this node's copy of the retained events
    /// (a [`MemoryStore`]: the log is what is durable). Applies the whole log
    /// before it returns, so the node starts with the cluster's state.
    ///
    /// `auth` is set up beforehand (the `--auth` file's tokens, a JWT
    /// verifier): the log's token changes and subscribes are applied as on
    /// the nodes that took them, and with auth still off here a revocation
    /// of a file token, or any token created before an admin one, would be
    /// refused and lost on this node.
    ///
    /// # Errors
    /// The log cannot be read.
    pub async fn open_cluster(
        config: HubConfig,
        store: S,
        log: Arc<dyn cluster::SharedLog>,
        auth: AuthRegistry,
    ) -> Result<Self> {
        let barrier = cluster::Barrier::new(log.clone());
        let (inner, rx) =
            Self::assemble(config, store, Some(log.node()), Some(barrier), auth).await?;
        // Asked before the log is read, so that a log found empty (Redis
        // lost its data) begins after every id an earlier one gave.
        let genesis = log
            .genesis()
            .await
            .map_err(|err| Error::StoreUnavailable(err.to_string()))?;
        let pos = cluster::bootstrap(&inner, &*log).await?;
        {
            // A resume point below it names an event Redis lost: a gap,
            // as below what a restarted volatile store remembers.
            let mut state = inner.state();
            state.floor = state.floor.max(EventId(genesis));
            // And the log is at least there: a device that joins a log
            // without events joins there, and resumes from there (at 0, it
            // was below the floor, and its next stream told of a gap). Every node starts
            // from the same genesis, so all agree on where it joined; the
            // only event that can have the genesis's id is the log's first
            // (whose append recorded it), already applied if it exists.
            if state.seq.last() < EventId(genesis) {
                state.seq = crate::event::Sequencer::after(EventId(genesis));
            }
            state.head = state.head.max(EventId(genesis));
        }
        cluster::forget_previous_life(&inner, &*log).await?;
        writer::watch_panics(
            Arc::downgrade(&inner),
            tokio::spawn(cluster::writer(inner.clone(), rx, log, pos)),
        );
        Ok(Self { inner })
    }

    async fn assemble(
        config: HubConfig,
        store: S,
        node: Option<&str>,
        barrier: Option<cluster::Barrier>,
        auth: AuthRegistry,
    ) -> Result<(Arc<Inner<S>>, mpsc::UnboundedReceiver<Command>)> {
        let recovered = store.recover().await?;
        for note in &recovered.notes {
            tracing::info!(note = %note, "store recovery");
        }
        if !recovered.damage.is_empty() {
            tracing::error!(
                regions = recovered.damage.len(),
                bytes = recovered.damage.iter().map(|d| d.len).sum::<u64>(),
                "the store holds damaged records it skipped: every other record is served; see /healthz and the README (Durability) for what to do"
            );
        }
        let now = Timestamp::now();
        let mut seq = Sequencer::after(recovered.last_id);
        // A cluster node's state comes from the shared log, durable.
        let floor = if recovered.durable || node.is_some() {
            EventId::ZERO
        } else {
            EventId(u64::try_from(now.0).unwrap_or(0).max(recovered.last_id.0))
        };
        if !recovered.durable && node.is_none() {
            // Ids from a previous run are all below the clock; start above
            // it so every id we hand out is above `floor`.
            seq = Sequencer::after(floor);
        }
        let auth = Arc::new(auth);
        let metrics = Arc::new(HubMetrics::default());
        let mut state = State::new(&config, auth.clone(), seq, floor, node, metrics.clone());
        // Keys of dropped events first: a key used again (after its TTL)
        // by a retained event is that one's.
        for event in &recovered.keyed {
            state.idempotency.remember_event(event);
        }
        state.recover(recovered.records, &recovered.evicted);
        if node.is_none() {
            // What came due while the server was down (memberships past
            // their TTL above all) before anything is served; the records
            // go out with the first write.
            let mut due = Vec::new();
            state.maintain(now, &config, &mut due);
            state.deferred.extend(due);
        }
        if auth.has_runtime_changes() {
            // The store was secured before: stay secured even if this start
            // forgot `--auth`, rather than serve everyone.
            auth.enable_for_journal();
        }
        let (commands, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            config,
            store,
            cluster: node.is_some(),
            barrier,
            commands,
            state: Mutex::new(state),
            auth,
            next_stream: AtomicU64::new(1),
            health: Mutex::new(Health::default()),
            damage: recovered.damage,
            closing: AtomicBool::new(false),
            closing_signal: tokio::sync::watch::Sender::new(false),
            counters: Counters::default(),
            failed: tokio::sync::watch::Sender::new(None),
            lost_after: tokio::sync::watch::Sender::new(None),
            metrics,
            last_gauges: Mutex::default(),
        });
        Ok((inner, rx))
    }

    /// Resolves, with the reason, if the hub stops serving on its own: a
    /// cluster node whose shared log lost entries it had applied (a Redis
    /// failover) must be restarted to rebuild its state from the log.
    /// And on any hub, when its writer panicked (a bug: the hub can then
    /// write nothing more).
    pub async fn failure(&self) -> String {
        let mut rx = self.inner.failed.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }

    /// After a failover lost entries this node had applied: the newest
    /// event id the cluster log still holds. An event above it, answered
    /// durable before, is gone (docs/PROTOCOL.md §10).
    pub fn lost_after(&self) -> Option<EventId> {
        *self.inner.lost_after.borrow()
    }

    /// Whether the hub is one node of a cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.cluster
    }

    /// The hub's configuration.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// Latency histograms and gauges for an operator (issue 18.11).
    pub fn metrics(&self) -> &HubMetrics {
        &self.inner.metrics
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// The token table (docs/PROTOCOL.md §7): off until [`AuthRegistry::enable`],
    /// or on from the start when the store holds run-time tokens.
    pub fn auth(&self) -> &Arc<AuthRegistry> {
        &self.inner.auth
    }

    /// Creates or replaces a token at run time; journaled, so it survives a
    /// restart with a durable store. Returns whether it replaced one. Open
    /// streams of the token are re-checked at once.
    ///
    /// # Errors
    /// [`Error::AuthDisabled`] when auth is off and the token is not an
    /// admin token (an admin token turns auth on), [`Error::InvalidToken`]
    /// for grant lists past [`MAX_GRANTS`], a store failure.
    pub async fn put_token(&self, token: &Token, grants: Grants) -> Result<bool> {
        if grants.subscribe.len() > MAX_GRANTS || grants.publish.len() > MAX_GRANTS {
            return Err(Error::InvalidToken(format!(
                "a token grants at most {MAX_GRANTS} patterns per list"
            )));
        }
        self.call(|reply| {
            Command::Token(TokenCmd {
                token: token.hash(),
                grants: Some(grants),
                reply,
            })
        })
        .await
    }

    /// Revokes the JWTs whose `jti` is `jti`, seen or not (journaled as a
    /// token revocation under [`jti_key`](crate::auth::jti_key)). Their
    /// open streams close; they are refused from now on.
    ///
    /// # Errors
    /// [`Error::AuthDisabled`], a store failure.
    pub async fn revoke_jti(&self, jti: &str) -> Result<()> {
        let token = crate::auth::jti_key(jti);
        // The revocation's own line names the hash it is kept under; an
        // operator looks for the jti, which is no secret.
        tracing::info!(jti, token = %token.fingerprint(), "revoking a JWT id");
        self.inner.auth.note_jti(token);
        self.call(|reply| {
            Command::Token(TokenCmd {
                token,
                grants: None,
                reply,
            })
        })
        .await
        .map(|_| ())
    }

    /// Revokes a token at run time (journaled). Its open streams close.
    ///
    /// # Errors
    /// [`Error::UnknownToken`], [`Error::AuthDisabled`], a store failure.
    pub async fn delete_token(&self, token: TokenHash) -> Result<()> {
        self.call(|reply| {
            Command::Token(TokenCmd {
                token,
                grants: None,
                reply,
            })
        })
        .await
        .map(|_| ())
    }

    /// Whether the hub is shutting down (new streams are refused).
    pub fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
    }

    /// Resolves once shutdown has begun ([`Hub::shutdown`]): a request held
    /// open on the hub, such as a publish waiting for receipts, answers with
    /// what it has instead of being cut by the server's grace period.
    pub async fn closing(&self) {
        let mut signal = self.inner.closing_signal.subscribe();
        // The sender lives as long as the hub this handle keeps alive.
        let _ = signal.wait_for(|closing| *closing).await;
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        if let Some(refused) = self.inner.health().refusal() {
            return Err(refused);
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
    pub async fn publish(&self, mut publish: Publish) -> Result<Published> {
        validate_payload(&publish.payload, self.inner.config.max_payload)?;
        // A payload is often a slice of a transport's read buffer (hyper's
        // are 8 KiB and more): retained as it is, a 10-byte event would
        // keep the whole buffer alive for its retention.
        publish.payload = Bytes::copy_from_slice(&publish.payload);
        if let Some(key) = &publish.idempotency_key {
            validate_idempotency_key(key)?;
        }
        let published = self
            .call(|reply| Command::Publish(Box::new(publish), reply))
            .await?;
        if published.duplicate {
            self.inner
                .metrics
                .idempotent_replays
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(published)
    }

    /// Opens a stream: registers it, becomes (or stays) a member for each
    /// subscription, and returns a [`Subscription`] that yields the replay
    /// and then live events, with no gap and no duplicate between them.
    ///
    /// `last_event_id` is the raw `Last-Event-ID` the client sent, kept for
    /// PERE's presence fields.
    ///
    /// # Errors
    /// No channel or too many, the hub is shutting down, or auth is on
    /// (a stream without a token is granted nothing then: use
    /// [`subscribe_with_token`](Self::subscribe_with_token)).
    pub async fn subscribe(
        &self,
        req: SubscribeRequest,
        last_event_id: Option<String>,
    ) -> Result<Subscription> {
        self.subscribe_with_token(req, last_event_id, None).await
    }

    /// [`subscribe`](Self::subscribe) on behalf of a token: the writer checks
    /// that the token exists, that the device is its subject and that every
    /// pattern is covered by its subscribe grants, and ties the stream to
    /// the token so that later changes apply to it (docs/PROTOCOL.md §7).
    ///
    /// # Errors
    /// As `subscribe`, plus [`Error::Unauthorized`] and [`Error::Forbidden`].
    pub async fn subscribe_with_token(
        &self,
        mut req: SubscribeRequest,
        last_event_id: Option<String>,
        token: Option<TokenHash>,
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
        let mut shared = StreamShared::new(
            id,
            req.device.clone(),
            self.inner.config.queue_capacity,
            self.inner.config.queue_bytes,
        );
        shared.marks = !self.inner.cluster;
        let shared = Arc::new(shared);
        let rx = StreamRx::new(shared.clone());
        // The guard exists before the writer hears of the stream, so the
        // stream is unregistered however this future or its result ends.
        let guard = StreamGuard {
            id,
            commands: self.inner.commands.clone(),
        };
        let device = req.device.clone();
        let stream = StreamTx::new(shared.clone());
        let plan = self
            .call(|reply| {
                Command::Subscribe(SubscribeCmd {
                    req,
                    last_event_id,
                    token,
                    jti: None,
                    stream: Some(stream),
                    reply,
                })
            })
            .await?;
        self.inner
            .counters
            .streams_opened
            .fetch_add(1, Ordering::Relaxed);
        if plan.gap.is_some() {
            self.inner.metrics.gaps.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Subscription {
            metrics: self.inner.metrics.clone(),
            hello: plan.hello,
            gap: plan.gap,
            replay: plan.replay.into(),
            rx,
            shared,
            device,
            guard,
            held: None,
            replay_done_held: false,
        })
    }

    /// Ends `device`'s membership of `subscription` and closes its streams
    /// there.
    ///
    /// # Errors
    /// [`Error::UnknownMember`] when it is not a member.
    pub async fn remove_member(&self, subscription: &Pattern, device: &DeviceId) -> Result<()> {
        self.call(|reply| {
            Command::RemoveMember(RemoveMemberCmd {
                subscription: subscription.clone(),
                device: device.clone(),
                reply,
            })
        })
        .await
    }

    /// Follows the receipt changes of `channel` after change number
    /// `after` (`None`: from now on), at the follower's own pace; one that
    /// falls behind what the channel keeps is told of the gap
    /// ([`crate::receipt_log`]). It ends when the hub shuts down.
    pub fn watch_receipts(&self, channel: &ChannelName, after: Option<u64>) -> ReceiptFollower {
        let mut state = self.inner.state();
        if state.closed {
            let log = Arc::new(ReceiptLog::default());
            log.close();
            return log.follow(after);
        }
        let log = state.ledgers.watchers_for(channel);
        let follower = log.follow(after);
        if state.cluster && log.announce_due(Timestamp::now()) {
            // Every node records the channel's changes while a receipts
            // stream follows it anywhere, so it can resume on any of them:
            // said with the writer's next entry, not the next checkpoint,
            // so that few changes come before the others record them.
            let _ = self.inner.commands.send(Command::Watch(channel.clone()));
        }
        follower
    }

    /// Overdue notices ([`HubConfig::ack_deadline`]), for the one task that
    /// delivers them (a webhook): first every notice issued but not yet
    /// confirmed with [`Hub::notice_delivered`] — including those from before
    /// a restart — then each new one as it is issued. A second call takes
    /// the feed over from the first.
    pub fn overdue_notices(&self) -> mpsc::UnboundedReceiver<OverdueNotice> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner.state().notices.attach(tx);
        rx
    }

    /// Records that an overdue notice reached its destination, so it is
    /// not sent again after a restart.
    pub fn notice_delivered(&self, notice: &OverdueNotice) {
        // If the writer is gone the hub is shut down; the notice is then
        // resent after the restart, which is the safe side.
        let _ = self.inner.commands.send(Command::NoticeSent {
            id: notice.id,
            device: notice.device.clone(),
        });
    }

    /// Shuts down: refuses new work, ends every stream (their bodies see the
    /// end of their queue), writes what is pending and closes the store.
    /// Safe to call more than once.
    pub async fn shutdown(&self) {
        self.inner.closing.store(true, Ordering::Release);
        self.inner.closing_signal.send_replace(true);
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

fn dedup_patterns(patterns: &mut Vec<Pattern>) {
    let mut seen = HashSet::new();
    patterns.retain(|p| seen.insert(p.clone()));
}

mod audience;
pub mod cluster;
mod cmd;
mod command;
mod health;
mod receipt;
mod recover;
mod state;
mod subscription;
mod types;
mod view;
mod writer;

pub use audience::PatternInfo;
use cmd::{AckCmd, RemoveMemberCmd, SubscribeCmd, TokenCmd};
use command::{Command, Reply};
use health::Health;
pub use health::StoreOutage;
use state::State;
use subscription::StreamGuard;
pub use subscription::{Outgoing, Subscription};
pub use types::{
    Acked, ChannelInfo, Connections, Gap, Hello, Publish, Published, Resume, Stats, StoreHealth,
    SubscribeRequest,
};

#[cfg(test)]
mod ack_batch_tests;
#[cfg(test)]
mod auth_tests;
#[cfg(test)]
mod blocking_store_tests;
#[cfg(test)]
mod ending_tests;
#[cfg(test)]
mod membership_ttl_tests;
#[cfg(test)]
mod redelivery_tests;
#[cfg(test)]
mod restart_tests;
#[cfg(test)]
mod tests;
