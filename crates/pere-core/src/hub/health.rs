//! When the store fails: refusing writes, retrying the store with backoff,
//! and what becomes of a batch that could not be written.
//!
//! A failed [`EventStore::append`] stored nothing (the store undoes partial
//! writes), and *apply* never ran for the batch, so no client saw any of
//! it. But *prepare* already changed some state, and the hub keeps that
//! state and the journal in step:
//! - a publish is undone: its event is forgotten, and so is its
//!   idempotency key, so that the client's retry is a new publish (its id
//!   is not reused: ids only grow);
//! - an ack changed nothing yet;
//! - what happened anyway — a stream closed, a membership expired or was
//!   removed, a token changed, a notice was issued, a device joined — is
//!   already in the state: its records are kept and written first thing
//!   once the store takes writes again.
//!
//! Meanwhile every write is refused with [`Error::StoreUnavailable`], and
//! the writer asks the store ([`EventStore::probe`]) again after 100 ms,
//! then twice as long each time up to 5 s; the first success lets writes
//! through.

use std::collections::HashSet;
use std::ops::Range;
use std::time::Duration;

use tokio::time::Instant;

use super::Inner;
use super::command::Command;
use crate::error::Error;
use crate::event::{EventId, Timestamp};
use crate::log::{EventStore, Record};

use super::command::Effect;

/// The first retry after a failure.
pub(super) const FIRST_RETRY: Duration = Duration::from_millis(100);
/// The longest wait between retries.
pub(super) const LAST_RETRY: Duration = Duration::from_secs(5);

/// The store is failing: since when, why, and when the hub asks again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOutage {
    /// The last failure.
    pub cause: String,
    /// When writes started to fail.
    pub since: Timestamp,
    /// Failed attempts so far: the write, then each retry.
    pub failures: u64,
    /// How long until the next retry.
    pub retry_in: Duration,
}

/// The hub's view of the store's health.
#[derive(Debug)]
pub(super) struct Health {
    outage: Option<(StoreOutage, Instant)>,
    /// The wait before the next retry: doubles with each failure, and
    /// goes back to [`FIRST_RETRY`] only once a batch is written, so a
    /// store that passes its probe but fails real writes is not hammered.
    backoff: Duration,
    /// Failed writes and retries since start.
    failures: u64,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            outage: None,
            backoff: FIRST_RETRY,
            failures: 0,
        }
    }
}

impl Health {
    /// Why writes are refused now, if they are.
    pub(super) fn refusal(&self) -> Option<Error> {
        let (outage, retry_at) = self.outage.as_ref()?;
        let wait = retry_at.saturating_duration_since(Instant::now());
        Some(Error::StoreUnavailable(format!(
            "{}; writes are refused until it takes them again (next try in {} ms)",
            outage.cause,
            wait.as_millis()
        )))
    }

    /// The outage, with the time left until the next retry.
    pub(super) fn outage(&self) -> Option<StoreOutage> {
        self.outage.as_ref().map(|(outage, retry_at)| StoreOutage {
            retry_in: retry_at.saturating_duration_since(Instant::now()),
            ..outage.clone()
        })
    }

    /// When the next retry is due, during an outage.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.outage.as_ref().map(|(_, at)| *at)
    }

    /// Failed writes and retries since start.
    pub(super) fn failures(&self) -> u64 {
        self.failures
    }

    /// A write or a retry failed. Returns whether this starts an outage.
    pub(super) fn failed(&mut self, cause: String) -> bool {
        self.failures += 1;
        let retry_at = Instant::now() + self.backoff;
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(LAST_RETRY);
        match &mut self.outage {
            Some((outage, at)) => {
                outage.cause = cause;
                outage.failures += 1;
                outage.retry_in = wait;
                *at = retry_at;
                false
            }
            None => {
                self.outage = Some((
                    StoreOutage {
                        cause,
                        since: Timestamp::now(),
                        failures: 1,
                        retry_in: wait,
                    },
                    retry_at,
                ));
                true
            }
        }
    }

    /// A retry succeeded: writes go through again. Returns the outage.
    pub(super) fn recovered(&mut self) -> Option<StoreOutage> {
        self.outage.take().map(|(outage, _)| outage)
    }

    /// A write went through (a batch, or a cluster node's heartbeat).
    pub(super) fn wrote(&mut self) {
        self.backoff = FIRST_RETRY;
        // In an outage (a cluster node's heartbeat or append went through
        // while its writes were refused): try again now, not when the
        // backoff said. Background writes that failed during a short outage
        // had pushed that up to 5 s out (a probe saw writes refused 5-6 s
        // after Redis was back).
        if let Some((_, at)) = &mut self.outage {
            *at = Instant::now();
        }
    }
}

/// What becomes of a command's journal records when its batch cannot be
/// written (module docs).
#[derive(Clone, Copy, Debug)]
pub(super) enum OnFailure {
    /// Nothing of it took effect: drop them (and undo a publish).
    Drop,
    /// It took effect anyway: keep them for the next write.
    Keep,
    /// A stream that failed to open, but whose device became a member:
    /// keep the `Joined` records only.
    KeepJoins,
}

impl OnFailure {
    /// For `cmd`, before *prepare* takes it.
    pub(super) fn of(cmd: &Command) -> Self {
        match cmd {
            Command::Publish(..) | Command::Ack(_) => OnFailure::Drop,
            Command::Subscribe(_) => OnFailure::KeepJoins,
            Command::Closed(_)
            | Command::ReplayDone(_)
            | Command::Token(_)
            | Command::RemoveMember(_)
            | Command::Tick
            | Command::NoticeSent { .. }
            | Command::Shutdown(_)
            | Command::RemoteClosed(..)
            | Command::Cursor { .. }
            | Command::Replayed { .. }
            | Command::NodeGone(_)
            | Command::SharedTick(_)
            | Command::Watch(_)
            | Command::NodeStreams(..)
            | Command::FailoverLoss(_)
            | Command::Read(_) => OnFailure::Keep,
        }
    }
}

/// Answers a batch whose records could not be written: every request gets
/// `err`, the state is put back in step with the journal (module docs),
/// and a shutdown still closes the store.
pub(super) async fn fail_batch<S: EventStore>(
    inner: &Inner<S>,
    err: Error,
    records: Vec<Record>,
    spans: Vec<(Range<usize>, OnFailure)>,
    effects: Vec<Effect>,
) {
    let message = match &err {
        Error::StoreUnavailable(m) => m.clone(),
        other => other.to_string(),
    };
    let mut kept = Vec::new();
    let mut undone: HashSet<EventId> = HashSet::new();
    let mut records = records.into_iter().map(Some).collect::<Vec<_>>();
    for (range, what) in spans {
        for slot in &mut records[range] {
            let Some(record) = slot.take() else { continue };
            match (what, &record) {
                (OnFailure::Drop, Record::Event(e)) => {
                    undone.insert(e.id);
                }
                (OnFailure::Drop, _) => {}
                (OnFailure::KeepJoins, Record::Joined { .. }) | (OnFailure::Keep, _) => {
                    kept.push(record);
                }
                (OnFailure::KeepJoins, _) => {}
            }
        }
    }
    {
        let mut state = inner.state();
        kept.append(&mut state.deferred);
        state.deferred = kept;
        if !undone.is_empty() {
            state.idempotency.forget_events(&undone);
        }
    }
    let mut shutdown = Vec::new();
    for effect in effects {
        match effect {
            Effect::Shutdown(reply) => shutdown.push(reply),
            effect => effect.fail(|| Error::StoreUnavailable(message.clone())),
        }
    }
    if !shutdown.is_empty() {
        let unwritten = inner.state().deferred.len();
        if unwritten > 0 {
            // Only records of things no client was told are durable: stream
            // closes, cursors, expiries (README, Durability).
            tracing::error!(
                records = unwritten,
                cause = %message,
                "shutting down while the store fails: these journal records are lost"
            );
        }
        if let Err(err) = inner.store.close().await {
            tracing::error!(cause = %err, "closing the store failed");
        }
        for reply in shutdown {
            let _ = reply.send(());
        }
    }
}

/// Asks the store whether it takes writes again, once a retry is due;
/// writes what was kept from failed batches as soon as it does.
pub(super) async fn retry<S: EventStore>(inner: &Inner<S>) {
    let due = inner
        .health()
        .retry_at()
        .is_some_and(|at| at <= Instant::now());
    if !due {
        return;
    }
    match inner.store.probe().await {
        Ok(()) => {
            if let Some(outage) = inner.health().recovered() {
                tracing::info!(
                    failing_for = ?Timestamp::now().since(outage.since),
                    failures = outage.failures,
                    "the store takes writes again"
                );
            }
            if !inner.state().deferred.is_empty() {
                Box::pin(super::writer::process(inner, Vec::new())).await;
            }
        }
        Err(err) => {
            let mut health = inner.health();
            health.failed(err.to_string());
            let wait = health.retry_at().map(|at| at - Instant::now());
            tracing::warn!(cause = %err, next_try_in = ?wait, "the store still fails");
        }
    }
}

#[cfg(test)]
mod tests;
