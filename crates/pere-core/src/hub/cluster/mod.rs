//! Several nodes, one hub: the second engine behind the hub's ordering
//! seam.
//!
//! A single node's writer orders commands itself: it prepares a batch,
//! makes its records durable in the [`EventStore`], applies it. On a node
//! of a cluster the order is the **shared log's** ([`SharedLog`], Redis in
//! `pere-cluster`): the writer turns each batch of commands into one log
//! entry ([`wire`]), and applies entries — its own and the other nodes' —
//! in log order as they come back from the log, each with the entry's
//! time. Every node applies the same commands in the same order with the
//! same clock, so every node computes the same ids, audiences, receipts,
//! memberships, retention and notices: a replicated state machine. What
//! only one node knows — its streams, what they were written, that one
//! ended — it tells the others through the log too. A node answers a
//! request once its own entry came back from the log and was applied.
//! The ticker node stores a [`snapshot`] of that state now and then, after
//! which the log is trimmed; a node starts from the latest one.
//!
//! [`EventStore`]: crate::log::EventStore

mod barrier;
mod convert;
#[cfg(test)]
mod jwt_tests;
mod log;
mod loss;
mod serials;
pub(super) mod snapshot;
#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod ticker_tests;
pub(super) mod wire;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::command::Command;
use super::state::NodeStreams;
use super::writer::process_at;
use super::{Inner, MAX_BATCH};
use crate::auth::TokenHash;
use crate::error::Error;
use crate::event::{EventId, Sequencer, Timestamp};
use crate::log::{EventStore, Record};
pub(in crate::hub) use barrier::Barrier;
use convert::{from_wire, to_wire};
pub use log::{
    LogFuture, SharedAppended, SharedEntry, SharedLog, SharedLogError, SharedPos, SharedTail,
};
use serials::Serials;
use wire::Wire;

/// How often a node tells the others what its streams were written (their
/// receipts' `delivered` on other nodes lag by this much at most).
pub(super) const CURSOR_FLUSH: Duration = Duration::from_millis(50);
/// Every how many cursor flushes a node tells the others its streams and
/// renews its receipts streams' windows (1 s).
const STREAMS_EVERY: u64 = 20;
/// How long a node shutting down waits for its own last entries to come
/// back from the log, to answer their requests from them.
const DRAIN_OWN: Duration = Duration::from_secs(2);
/// A snapshot that holds the writer up longer than this is worth a warning.
const SLOW_SNAPSHOT: Duration = Duration::from_millis(250);
/// How often a node heartbeats, and how long a heartbeat lasts.
const HEARTBEAT: Duration = Duration::from_secs(1);
const HEARTBEAT_TTL: Duration = Duration::from_secs(5);

/// What a node asked through one of its entries, waiting for the entry to
/// come back: the commands themselves, with their answers and streams.
type Own = Vec<Option<Command>>;

/// Loads the latest snapshot, then applies the log after it until its head
/// at the time of the call: a node starts with the cluster's whole state.
pub(super) async fn bootstrap<S: EventStore>(
    inner: &Inner<S>,
    log: &dyn SharedLog,
) -> Result<SharedPos, Error> {
    let mut pos = SharedPos::default();
    if let Some((at, blob)) = log.snapshot().await.map_err(unavailable)? {
        load_snapshot(inner, at, &blob).await?;
        tracing::info!(pos = ?at, bytes = blob.len(), "loaded the cluster's snapshot");
        pos = at;
    }
    let head = log.head().await.map_err(unavailable)?;
    let mut tail = log.tail(pos);
    while pos < head {
        let entry = tail.next().await.map_err(unavailable)?;
        pos = entry.pos;
        apply_entry(inner, entry, None).await;
    }
    Ok(pos)
}

/// Loads a snapshot into a node's fresh state, and its retained events
/// into the node's store.
async fn load_snapshot<S: EventStore>(
    inner: &Inner<S>,
    at: SharedPos,
    blob: &[u8],
) -> Result<(), Error> {
    let unloadable = |err: snapshot::SnapshotError| {
        Error::StoreUnavailable(format!(
            "the cluster's snapshot cannot be loaded ({err}); do all nodes run the same version?"
        ))
    };
    let snap = snapshot::decode(blob).map_err(unloadable)?;
    let events = {
        let mut state = inner.state();
        // Receipt changes before the snapshot are not known here: the
        // channels' logs start after its position (its entry's time is
        // not kept; its millisecond is close enough for the windows).
        let time = Timestamp(i64::try_from(at.ms.saturating_mul(1000)).unwrap_or(i64::MAX));
        state.ledgers.clock().enter(at.ms, at.seq, time);
        state.restore_snapshot(snap).map_err(unloadable)?
    };
    let records: Vec<Record> = events.into_iter().map(Record::Event).collect();
    inner.store.append(&records).await?;
    Ok(())
}

/// A node restarted under the same id before the others noticed it was
/// gone still has its old streams counted open by every node: it ends
/// them through the log before it serves (the entry comes back to its own
/// tail like any other).
pub(super) async fn forget_previous_life<S: EventStore>(
    inner: &Inner<S>,
    log: &dyn SharedLog,
) -> Result<(), Error> {
    let node = log.node();
    let held = inner.state().memberships.held_by(node);
    if held {
        let wires = [Wire::NodeGone {
            node: node.to_owned(),
        }];
        log.append(Bytes::from(wire::encode(&wires)), 0, None)
            .await
            .map_err(unavailable)?;
    }
    Ok(())
}

fn unavailable(err: SharedLogError) -> Error {
    Error::StoreUnavailable(err.to_string())
}

/// The writer task of a cluster node.
pub(super) async fn writer<S: EventStore>(
    inner: Arc<Inner<S>>,
    mut rx: mpsc::UnboundedReceiver<Command>,
    log: Arc<dyn SharedLog>,
    after: SharedPos,
) {
    let applied = |pos| {
        if let Some(barrier) = &inner.barrier {
            barrier.applied(pos);
        }
    };
    applied(after);
    let (mut tail_task, mut entries) = spawn_tail(&log, after);
    let mut last = after;
    let mut chores = tokio::spawn(chores(inner.clone(), log.clone()));
    let mut pending: HashMap<SharedPos, Own> = HashMap::new();
    let mut serials = Serials::new();
    // Each recent entry's first event id: a failover that kept the log up
    // to an entry lost every event from the next entry's first id on (ids
    // rise in log order).
    let mut recent: std::collections::VecDeque<(SharedPos, u64)> =
        std::collections::VecDeque::with_capacity(RECENT_ENTRIES);
    let mut flush = tokio::time::interval(CURSOR_FLUSH);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(64);
    let mut shutdown = None;
    // Nothing told yet: the first count goes out even if it is none, for
    // a node restarted under the same id, whose previous life's count the
    // others still hold (a probe saw it stay for 30 s and more).
    let (mut ticks, mut told) = (0u64, None::<NodeStreams>);
    let every = log.snapshot_every();
    let mut snap_due = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    snap_due.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut snaps = Snapshots {
        covered: after,
        storing: None,
    };
    loop {
        tokio::select! {
            biased;
            entry = entries.recv() => match entry {
                Some(Ok(entry)) => {
                    last = entry.pos;
                    if recent.len() == RECENT_ENTRIES {
                        recent.pop_front();
                    }
                    recent.push_back((last, entry.first_id));
                    apply_read(&inner, entry, &mut pending).await;
                    applied(last);
                }
                Some(Err(err)) => {
                    // This node's state no longer matches the log (or it
                    // can no longer follow it): the safe thing is to stop
                    // serving rather than answer from it. Streams end,
                    // clients reconnect elsewhere, and the node is
                    // restarted to rebuild from the log as it now is.
                    let behind = matches!(err, SharedLogError::Behind(_));
                    let reason = if behind {
                        format!("this node fell behind the cluster log by more than its retention (--log-keep); restart it to load the latest snapshot: {err}")
                    } else {
                        format!("the cluster log lost entries this node had applied (a Redis failover): {err}")
                    };
                    tracing::error!(cause = %err, behind, "this node's state no longer follows the cluster log; closing its streams and stopping");
                    if let SharedLogError::Lost { kept, .. } = &err {
                        // Held requests (a publish waiting for receipts) must
                        // not answer 201 for what is gone: everything from
                        // the first lost entry's first id on (from the
                        // oldest remembered, if older ones were lost too).
                        let lost = loss::first_lost(&recent, &*log, *kept).await;
                        let kept_upto = recent
                            .get(lost)
                            .map_or(EventId(u64::MAX), |(_, first)| {
                                EventId(first.saturating_sub(1))
                            });
                        inner.lost_after.send_replace(Some(kept_upto));
                        loss::tell(&inner, &*log, kept_upto).await;
                    }
                    let mut state = inner.state();
                    if !behind {
                        // What its streams were sent may be gone: they hear
                        // of a gap. A node that fell behind lost nothing:
                        // its clients resume elsewhere from their last id.
                        for open in state.memberships.streams() {
                            open.shared.say_farewell(failover_gap(open.shared.delivered_upto()));
                        }
                    }
                    state.close_all(Timestamp::now());
                    drop(state);
                    inner.failed.send_replace(Some(reason));
                    break;
                }
                None => {
                    // The reader died (a panic: it never returns by
                    // itself while the log is readable); a node that
                    // stopped reading would answer nothing for good.
                    tracing::error!("the cluster log's reader stopped; starting another");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    (tail_task, entries) = spawn_tail(&log, last);
                }
            },
            n = rx.recv_many(&mut batch, MAX_BATCH) => {
                if n == 0 {
                    break;
                }
                if let Some(reply) = submit(&inner, &*log, std::mem::take(&mut batch), &mut pending, &mut serials).await {
                    shutdown = Some(reply);
                    break;
                }
            }
            _ = flush.tick() => {
                if chores.is_finished() {
                    tracing::error!("the cluster chores stopped; starting them again");
                    chores = tokio::spawn(self::chores(inner.clone(), log.clone()));
                }
                retry(&inner, &*log).await;
                {
                    let mut state = inner.state();
                    state.checkpoint_cursors();
                    ticks += 1;
                    if ticks % STREAMS_EVERY == 0 {
                        // Renewals of receipts streams' windows (due 30 s
                        // before they end; a new stream says so at once):
                        // a pass over every channel, once a second.
                        let watched = state.ledgers.watch_announcements(Timestamp::now());
                        state.outbox.extend(watched.into_iter().map(|channel| Wire::Watch { channel }));
                        // Said while there is anything to say (a node
                        // that just joined learns it within a second),
                        // and once when it drops to nothing.
                        let streams = state.memberships.local_streams();
                        if streams.total > 0 || told.as_ref() != Some(&streams) {
                            told = Some(streams.clone());
                            wire::tell_streams(&mut state.outbox, streams);
                        }
                    }
                }
                submit(&inner, &*log, Vec::new(), &mut pending, &mut serials).await;
            }
            _ = snap_due.tick() => snaps.take(&inner, &log, last),
        }
    }
    if let Some(storing) = snaps.storing {
        storing.abort();
    }
    // What this node put in the log is in it: its requests are answered
    // from their entries as they come back, as they would have been, and
    // before the state closes (which refuses everything). Refused as
    // shutting down, a publish that is stored anyway would be published
    // twice by a retry without an Idempotency-Key (a probe saw it).
    // Bounded: a log that stopped answering leaves them refused.
    let deadline = tokio::time::Instant::now() + DRAIN_OWN;
    while !pending.is_empty() {
        let Ok(Some(Ok(entry))) = tokio::time::timeout_at(deadline, entries.recv()).await else {
            break;
        };
        last = entry.pos;
        apply_read(&inner, entry, &mut pending).await;
        applied(last);
    }
    // The streams end; what they were written goes to the log if it can,
    // and so does that this node has none now (else the others count them
    // open until its heartbeat expires).
    {
        let mut state = inner.state();
        state.close_all(Timestamp::now());
        wire::tell_streams(&mut state.outbox, NodeStreams::default());
    }
    let _ = submit(&inner, &*log, Vec::new(), &mut pending, &mut serials).await;
    for own in pending.into_values() {
        fail_own(own, || Error::ShuttingDown);
    }
    chores.abort();
    tail_task.abort();
    rx.close();
    if let Some(reply) = shutdown {
        let _ = reply.send(());
    }
    while let Ok(cmd) = rx.try_recv() {
        if let Command::Shutdown(reply) = cmd {
            let _ = reply.send(());
        }
    }
}

/// The snapshots this node stores (as the ticker): one at a time, and only
/// when the log moved since the last.
struct Snapshots {
    /// What the last one covers.
    covered: SharedPos,
    /// The one being stored.
    storing: Option<tokio::task::JoinHandle<()>>,
}

impl Snapshots {
    /// Snapshots the state after entry `last` (what it is between two
    /// entries) if this node is the ticker, and stores it on a task of its
    /// own: the writer goes on applying entries meanwhile.
    fn take<S: EventStore>(&mut self, inner: &Inner<S>, log: &Arc<dyn SharedLog>, last: SharedPos) {
        if last <= self.covered || self.storing.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let walk = std::time::Instant::now();
        let snap = {
            let state = inner.state();
            if !state.notices.is_ticker() {
                return;
            }
            state.snapshot()
        };
        let paused = walk.elapsed();
        if paused > SLOW_SNAPSHOT {
            tracing::warn!(
                ?paused,
                "taking the snapshot held this node's writer up; a larger --snapshot-every makes that rarer"
            );
        }
        self.covered = last;
        let log = log.clone();
        self.storing = Some(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let blob = Bytes::from(snapshot::encode(&snap));
            drop(snap);
            let (bytes, encoded) = (blob.len(), started.elapsed());
            match log.put_snapshot(last, blob).await {
                Ok(()) => {
                    tracing::debug!(pos = ?last, bytes, ?paused, ?encoded, stored = ?started.elapsed(), "snapshot stored")
                }
                Err(err) => {
                    tracing::warn!(cause = %err, "the snapshot was not stored; the log keeps its entries until the next one")
                }
            }
        }));
    }
}

/// Entries whose newest event id is remembered, for a failover's loss (a
/// held publish waits at most a minute).
const RECENT_ENTRIES: usize = 8192;

/// The data of the `pere.gap` that ends a stream when the log lost
/// entries (docs/PROTOCOL.md §10): events after `from` this stream may have
/// been sent no longer exist, and others may be missing.
fn failover_gap(from: EventId) -> String {
    serde_json::json!({
        "from": from.0.to_string(),
        "oldest": null,
        "reason": "cluster_failover",
    })
    .to_string()
}

/// Entries of this node that the log acknowledged but that never came back
/// before a later one: a failover lost them. Their requests get a `503`
/// rather than wait forever (the publisher retries, with its
/// `Idempotency-Key` if it has one).
fn lost_own(pending: &mut HashMap<SharedPos, Own>, seen: SharedPos) {
    let lost: Vec<SharedPos> = pending.keys().copied().filter(|p| *p < seen).collect();
    for pos in lost {
        if let Some(own) = pending.remove(&pos) {
            tracing::warn!(pos = ?pos, "an entry the cluster log had taken is gone (a failover); its requests get 503");
            fail_own(own, || {
                Error::StoreUnavailable(
                    "the cluster log lost this request in a failover; retry".into(),
                )
            });
        }
    }
}

/// Asks the log whether it answers again once a retry is due (as
/// `health::retry` asks a single node's store): until then requests are
/// refused with `503` at once, rather than each waiting for a timeout.
async fn retry<S: EventStore>(inner: &Inner<S>, log: &dyn SharedLog) {
    let due = inner
        .health()
        .retry_at()
        .is_some_and(|at| at <= tokio::time::Instant::now());
    if !due {
        return;
    }
    match log.probe().await {
        Ok(()) => {
            if let Some(outage) = inner.health().recovered() {
                tracing::info!(
                    failing_for = ?Timestamp::now().since(outage.since),
                    failures = outage.failures,
                    "the cluster log takes writes again"
                );
            }
        }
        Err(err) => {
            inner.health().failed(err.to_string());
        }
    }
}

/// Reads the log after `after` on a task of its own (a `select!` must
/// never drop a read half done), entries and errors into the channel.
fn spawn_tail(
    log: &Arc<dyn SharedLog>,
    after: SharedPos,
) -> (
    tokio::task::JoinHandle<()>,
    mpsc::Receiver<Result<SharedEntry, SharedLogError>>,
) {
    let (entries_tx, entries) = mpsc::channel(256);
    let mut tail = log.tail(after);
    let task = tokio::spawn(async move {
        loop {
            let next = tail.next().await;
            let fatal = matches!(
                next,
                Err(SharedLogError::Lost { .. } | SharedLogError::Behind(_))
            );
            if let Err(SharedLogError::Unavailable { retry_after, .. }) = &next {
                tracing::warn!("the cluster log cannot be read; retrying");
                tokio::time::sleep((*retry_after).min(Duration::from_secs(1))).await;
                continue;
            }
            if entries_tx.send(next).await.is_err() || fatal {
                return;
            }
        }
    });
    (task, entries)
}

/// Sends a batch of this node's commands (and what its state has to tell
/// the others) as one entry. Returns the shutdown's answer when the batch
/// asks to stop.
async fn submit<S: EventStore>(
    inner: &Inner<S>,
    log: &dyn SharedLog,
    batch: Vec<Command>,
    pending: &mut HashMap<SharedPos, Own>,
    serials: &mut Serials,
) -> Option<oneshot::Sender<()>> {
    let now = Timestamp::now();
    let refused = inner.health().refusal().is_some();
    let mut wires = Vec::with_capacity(batch.len());
    let mut own: Own = Vec::with_capacity(batch.len());
    let mut shutdown = None;
    {
        let mut state = inner.state();
        for cmd in batch {
            match to_wire(&cmd, &state.auth) {
                Some(w) => {
                    wires.push(w);
                    own.push(Some(cmd));
                }
                None => match cmd {
                    Command::Closed(id) => state.owner_closed(id, now),
                    Command::Shutdown(reply) => shutdown = Some(reply),
                    // A view of this node's copy of the state.
                    Command::Read(read) => crate::hub::view::run(read, &state),
                    // The ticker's entries carry the shared chores.
                    _ => {}
                },
            }
        }
    }
    // While writes are refused, what only this node has to tell waits
    // (in the outbox, or unsettled) rather than going out on its own: an
    // append then fails anyway, or, when the log's replicas do not
    // confirm, lands after a wait for them that holds up the writer (and
    // everything it answers) each time.
    let sending = !refused || own.iter().any(Option::is_some);
    if !sending || (own.is_empty() && inner.state().outbox.is_empty() && !serials.unsettled()) {
        return shutdown;
    }
    let failed = |err: &SharedLogError| {
        let cause = err.to_string();
        if inner.health().failed(cause.clone()) {
            tracing::error!(cause = %cause, "the cluster log refused a batch; answering 503");
        }
        cause
    };
    // What an entry that got no answer carried goes first, alone: what
    // follows may depend on it (a stream's end before its next report).
    let settled = match serials.settle(log).await {
        Ok(settled) => settled,
        Err(err) => {
            let cause = failed(&err);
            fail_own(own, || Error::StoreUnavailable(cause.clone()));
            return shutdown;
        }
    };
    {
        let mut state = inner.state();
        for w in state.outbox.drain(..) {
            wires.push(w);
            own.push(None);
        }
    }
    if wires.is_empty() {
        if settled {
            inner.health().wrote();
        }
        return shutdown;
    }
    // What only this node knew, when the log cannot say whether it took
    // the entry, goes again under the entry's serial; when the log has
    // the entry but its replicas did not confirm it, not at all: it is
    // read back and applied as any entry (appended again, it was applied
    // once per retry: a stream closed 42 times).
    let ours: Vec<bool> = own.iter().map(Option::is_none).collect();
    match serials.append(log, wires, &ours).await {
        Ok(appended) => {
            inner.health().wrote();
            if own.iter().any(Option::is_some) {
                pending.insert(appended.pos, own);
            }
        }
        Err(err) => {
            let cause = failed(&err);
            fail_own(own, || Error::StoreUnavailable(cause.clone()));
        }
    }
    shutdown
}

fn fail_own(own: Own, err: impl Fn() -> Error) {
    for cmd in own.into_iter().flatten() {
        if let Some(owed) = cmd.owed() {
            owed.fail(err());
        }
    }
}

/// Applies an entry read from the log: this node's own requests in it
/// get their answers, and those of its entries the log no longer has
/// (before it) get theirs.
async fn apply_read<S: EventStore>(
    inner: &Inner<S>,
    entry: SharedEntry,
    pending: &mut HashMap<SharedPos, Own>,
) {
    let own = pending.remove(&entry.pos);
    lost_own(pending, entry.pos);
    apply_entry(inner, entry, own).await;
}

/// Applies one entry of the log, with this node's own commands when it
/// appended it.
async fn apply_entry<S: EventStore>(inner: &Inner<S>, entry: SharedEntry, own: Option<Own>) {
    let wires = match wire::decode(&entry.blob) {
        Ok(wires) => wires,
        Err(err) => {
            tracing::error!(pos = ?entry.pos, node = %entry.node, cause = %err, "a cluster log entry this node cannot read; skipped");
            if let Some(own) = own {
                fail_own(own, || {
                    Error::StoreUnavailable(format!("unreadable log entry: {err}"))
                });
            }
            return;
        }
    };
    let now = Timestamp(i64::try_from(entry.time).unwrap_or(i64::MAX));
    let node: Arc<str> = Arc::from(entry.node.as_str());
    let mut own = own.unwrap_or_default();
    own.resize_with(wires.len(), || None);
    let mut batch = Vec::with_capacity(wires.len());
    // A stream of this node whose entry's answer was lost (the append
    // failed as far as this node knew, yet reached the log): every node
    // counts it open, so this node tells them it is not.
    let mut orphans = Vec::new();
    let ours = *node == *inner.state().node;
    for (w, mine) in wires.into_iter().zip(own) {
        if let Wire::Token {
            token, jti: true, ..
        } = &w
        {
            inner.auth.note_jti(TokenHash(*token));
        }
        if ours
            && mine.is_none()
            && let Wire::Subscribe {
                patterns,
                device: Some(device),
                ..
            } = &w
        {
            orphans.push(Wire::Closed {
                subs: patterns.clone(),
                device: Some(device.clone()),
                upto: 0,
                at: None,
                from: None,
            });
        }
        batch.push(match mine {
            Some(cmd) => cmd,
            None => from_wire(w, &node),
        });
    }
    {
        let mut state = inner.state();
        // Ids come from the log: this entry's events get `first_id` on.
        if entry.first_id > state.seq.last().0 + 1 {
            state.seq = Sequencer::after(EventId(entry.first_id - 1));
        }
        // And the numbers of the receipt changes it makes.
        state
            .ledgers
            .clock()
            .enter(entry.pos.ms, entry.pos.seq, now);
        state.current_node = node;
    }
    process_at(inner, batch, now, true).await;
    let mut state = inner.state();
    state.current_node = state.node.clone();
    state.outbox.extend(orphans);
}

/// A node's background duties: heartbeats; and, for the holder of the
/// ticker lease, the shared chores' entries and the sweep of dead nodes.
async fn chores<S: EventStore>(inner: Arc<Inner<S>>, log: Arc<dyn SharedLog>) {
    let tick = inner.config.tick.max(Duration::from_millis(10));
    let mut every = tokio::time::interval(tick.min(HEARTBEAT));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_beat = tokio::time::Instant::now() - HEARTBEAT;
    let mut last_tick = tokio::time::Instant::now();
    // Since when this node has reached Redis without a failure. After an
    // outage every node's heartbeat has lapsed: another node is only
    // declared gone once it had a whole heartbeat lifetime to beat again.
    let mut reachable_since = tokio::time::Instant::now();
    loop {
        every.tick().await;
        let now = tokio::time::Instant::now();
        if now - last_beat >= HEARTBEAT {
            last_beat = now;
            let beat = log.heartbeat(HEARTBEAT_TTL).await;
            if beat.is_ok() {
                // A write Redis took: a blip's backoff starts over, as after
                // an append (an idle node makes none).
                inner.health().wrote();
            }
            if let Err(err) = beat {
                tracing::warn!(cause = %err, "heartbeat failed");
                reachable_since = tokio::time::Instant::now();
                // A node that takes no write must not say it is healthy
                // (/healthz, pere_store_writable) while the log is out of
                // reach: writes are refused from now, and the writer's
                // probe lets them through again once it answers.
                if inner.health().failed(err.to_string()) {
                    tracing::error!(cause = %err, "the cluster log is out of reach; answering 503");
                }
            }
        }
        if now - last_tick < tick {
            continue;
        }
        last_tick = now;
        let ticker = match log
            .try_lease("ticker", (tick * 3).max(Duration::from_secs(3)))
            .await
        {
            Ok(held) => held,
            Err(_) => {
                reachable_since = tokio::time::Instant::now();
                false
            }
        };
        inner.state().notices.become_ticker(ticker);
        // The shared chores wait, as this node's own news does, while its
        // writes are refused (`submit`): their entry would wait for the
        // replicas the log lacks, or fail.
        if !ticker || inner.health().refusal().is_some() {
            continue;
        }
        let mut wires = vec![Wire::Tick];
        let settled = now.saturating_duration_since(reachable_since) >= HEARTBEAT_TTL + HEARTBEAT;
        if settled && let Ok(gone) = log.expired_nodes().await {
            for node in gone {
                if node == log.node() {
                    continue;
                }
                tracing::warn!(node = %node, "a node stopped heartbeating: its streams are gone");
                wires.push(Wire::NodeGone { node: node.clone() });
                let _ = log.forget_node(&node).await;
            }
        }
        if let Err(err) = log.append(Bytes::from(wire::encode(&wires)), 0, None).await {
            tracing::warn!(cause = %err, "the ticker's entry was not appended");
        }
    }
}
