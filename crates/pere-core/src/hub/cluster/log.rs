//! The shared log a cluster's nodes order their commands through, as the
//! hub sees it (Redis in `pere-cluster`).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

/// A future of a [`SharedLog`].
pub type LogFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, SharedLogError>> + Send + 'a>>;

/// A position in the shared log (Redis: a stream id).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SharedPos {
    /// Milliseconds part.
    pub ms: u64,
    /// Counter within the millisecond.
    pub seq: u64,
}

/// One entry of the shared log.
#[derive(Clone, Debug)]
pub struct SharedEntry {
    /// Where it is.
    pub pos: SharedPos,
    /// The node that appended it.
    pub node: String,
    /// Its commands.
    pub blob: Bytes,
    /// The first event id the log gave it (its events get the next ones).
    pub first_id: u64,
    /// The log's time when it was appended, in µs.
    pub time: u64,
}

/// An append, as the log took it.
#[derive(Clone, Copy, Debug)]
pub struct SharedAppended {
    /// Where it is.
    pub pos: SharedPos,
    /// The log had taken the append's serial already: this is where that
    /// earlier append landed, and nothing was added.
    pub again: bool,
}

/// What a shared log can fail with.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SharedLogError {
    /// The log cannot be reached now; try again after `retry_after`.
    #[error("the cluster log is unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// The entry was appended at `pos` but the log cannot vouch for it yet
    /// (too few replicas confirmed it): answer as unavailable, with the
    /// outcome unknown, but do not append what it carried again: it will
    /// be read back from the log like any entry.
    #[error("the cluster log did not confirm the write: {reason}")]
    Unconfirmed {
        /// Why.
        reason: String,
        /// Where the entry is.
        pos: SharedPos,
        /// When to try again.
        retry_after: Duration,
    },
    /// The append's serial is below the highest the log took from this
    /// process (a later append overtook it): nothing was added.
    #[error("the cluster log took a later entry of this node ({last})")]
    Stale {
        /// The node's highest serial on the log.
        last: u64,
    },
    /// Entries this node read are gone (a failover lost them): its state
    /// must be rebuilt, and its streams may have been sent events that no
    /// longer exist.
    #[error("the cluster log lost entries: {reason}")]
    Lost {
        /// Why.
        reason: String,
        /// The last entry the log still holds: those after it are gone.
        kept: SharedPos,
    },
    /// Entries this node had not read yet were trimmed (a snapshot covers
    /// them): it was away or slow for longer than the log keeps entries,
    /// and must load the snapshot.
    #[error("this node fell behind the cluster log: {0}")]
    Behind(String),
    /// Anything else.
    #[error("the cluster log failed: {0}")]
    Other(String),
}

/// The ordering authority and durable log several nodes share.
pub trait SharedLog: Send + Sync + 'static {
    /// This node's name in the log.
    fn node(&self) -> &str;
    /// Appends an entry of `events` events, atomically with their ids.
    ///
    /// With a `serial` (this process's number for the entry, rising from
    /// one to the next; another process, even of the same node, counts on
    /// its own), the log takes the entry at most once and not after a
    /// later one: sent again with the same serial after no answer came,
    /// it lands once whichever copy the log gets first
    /// ([`SharedAppended::again`], [`SharedLogError::Stale`]).
    fn append(
        &self,
        blob: Bytes,
        events: u32,
        serial: Option<u64>,
    ) -> LogFuture<'_, SharedAppended>;
    /// Reads the log after `after`, in order, waiting for new entries.
    fn tail(&self, after: SharedPos) -> Box<dyn SharedTail>;
    /// The position of the last entry.
    fn head(&self) -> LogFuture<'_, SharedPos>;
    /// Whether appends would go through now, asked while they are refused
    /// after a failure; by default, whether the log answers at all.
    fn probe(&self) -> LogFuture<'_, ()> {
        Box::pin(async move { self.head().await.map(drop) })
    }
    /// Tells the others this node is alive for `ttl`.
    fn heartbeat(&self, ttl: Duration) -> LogFuture<'_, ()>;
    /// Nodes whose heartbeat expired.
    fn expired_nodes(&self) -> LogFuture<'_, Vec<String>>;
    /// Forgets a node that is gone.
    fn forget_node<'a>(&'a self, node: &'a str) -> LogFuture<'a, ()>;
    /// Takes or renews the named lease for `ttl`; whether this node holds it.
    fn try_lease<'a>(&'a self, name: &'a str, ttl: Duration) -> LogFuture<'a, bool>;
    /// Stores `blob`, the state after the entry at `pos` (unless a newer
    /// snapshot is stored), and trims the log entries it makes unneeded.
    fn put_snapshot(&self, pos: SharedPos, blob: Bytes) -> LogFuture<'_, ()>;
    /// The latest snapshot, and the position it covers.
    fn snapshot(&self) -> LogFuture<'_, Option<(SharedPos, Bytes)>>;
    /// How often the state is snapshotted (by one node).
    fn snapshot_every(&self) -> Duration;
    /// Whether the log holds the entry at `at` whose first event id is
    /// `first_id` (not another one at the same position), or trimmed past
    /// it (after a failover: which of the entries this node applied the
    /// log still has). By default unknown: an error.
    fn holds(&self, at: SharedPos, first_id: u64) -> LogFuture<'_, bool> {
        let _ = (at, first_id);
        Box::pin(async { Err(SharedLogError::Other("not supported".into())) })
    }
    /// The lowest event id this log can have held (µs, the time it began
    /// empty), or 0 when unknown. A resume point below it names an event of
    /// an earlier log that the shared store lost: it is told as a gap.
    fn genesis(&self) -> LogFuture<'_, u64>;
}

/// A reader of the shared log.
pub trait SharedTail: Send {
    /// The next entry, waiting for one.
    fn next(&mut self) -> LogFuture<'_, SharedEntry>;
}
