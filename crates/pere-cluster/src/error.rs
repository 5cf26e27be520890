//! The engine's [`EngineError`] and [`Result`].
//!
//! Every variant tells the caller what to do next, which is why there are so
//! few: retry later ([`EngineError::Unavailable`]), reload the snapshot
//! ([`EngineError::Trimmed`]), resynchronise and tell streams of a gap
//! ([`EngineError::Regressed`]), or treat it as a bug or a misconfiguration
//! ([`EngineError::Protocol`], [`EngineError::Config`], [`EngineError::Invalid`]).

use std::time::Duration;

use crate::LogPos;

/// What the engine can fail at.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Redis cannot be reached, or is not (yet) a primary that accepts
    /// writes: down, restarting, loading its AOF, or in the middle of a
    /// failover.
    ///
    /// Publishes and receipts become `503` with `Retry-After`. For an append,
    /// `outcome_unknown` says whether the command may have run anyway (the
    /// connection failed after it was sent): the entry may then still show up
    /// on the log, which is why publishes are retried with their
    /// idempotency key.
    #[error("redis is unavailable ({reason}); retry in {retry_after:?}")]
    Unavailable {
        /// When a retry has a fair chance: the engine will not try to
        /// reconnect before then.
        retry_after: Duration,
        /// True when a command was sent and its reply never came, so it may
        /// have been applied.
        outcome_unknown: bool,
        /// What failed, for the logs.
        reason: String,
    },
    /// The entry was appended at `pos`, but fewer replicas than
    /// [`crate::ClusterConfig::replicas`] confirmed it in time: a failover
    /// could still lose it. Answer as for [`EngineError::Unavailable`] with
    /// the outcome unknown, knowing the entry will show up on the log (so
    /// what it carried must not be appended again).
    #[error("redis's replicas did not confirm the write: {reason}")]
    Unconfirmed {
        /// Where the entry is.
        pos: LogPos,
        /// What the replicas did, for the logs.
        reason: String,
    },
    /// The entry's [`crate::NewEntry::serial`] is below the highest the
    /// log took from this engine: a later append overtook it. Nothing was
    /// appended; an entry that must still go numbers itself above `last`.
    #[error("the entry's serial is below {last}, this engine's highest on the log")]
    Stale {
        /// The node's highest serial on the log.
        last: u64,
    },
    /// The log no longer holds the entries after the position asked for:
    /// they were trimmed after a snapshot covered them. The caller loads
    /// [`crate::Engine::snapshot`] and tails from its position.
    #[error("the log was trimmed past {after}: load the snapshot and tail from there")]
    Trimmed {
        /// The position the tail had reached.
        after: LogPos,
    },
    /// The log now ends, or continues, before entries this tail already
    /// returned: a failover promoted a replica that had not received them
    /// (Redis replicates asynchronously). Those entries are lost to the
    /// cluster; the caller resynchronises from the snapshot and tells its
    /// streams of a gap.
    #[error("the log regressed: this tail had read up to {had}, the log now continues from {now}")]
    Regressed {
        /// The last position this tail returned (lost on the new primary).
        had: LogPos,
        /// Where the log now ends, or the predecessor its next entry names.
        now: LogPos,
    },
    /// Redis answered something this engine does not understand: a bug, a
    /// foreign writer on our keys, or a Redis too old for our scripts.
    #[error("unexpected redis reply: {0}")]
    Protocol(String),
    /// The cluster configuration is invalid (a bad URL, an empty node id).
    #[error("invalid cluster configuration: {0}")]
    Config(String),
    /// Another live process runs as this node (the same `--node-id`).
    #[error(
        "another live node runs as `{node}` on this cluster: give each node its own --node-id (the default, host name, process id and start time, is unique)"
    )]
    NodeIdInUse {
        /// The node id.
        node: String,
    },
    /// The caller asked for something impossible (an idempotency key for an
    /// event the entry does not have).
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// The engine's result type.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// The shortest `retry_after` the engine reports: HTTP's `Retry-After` has
/// a resolution of one second, and a Sentinel failover takes seconds.
pub(crate) const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

impl EngineError {
    /// True for [`EngineError::Unavailable`]: the same call may work later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, EngineError::Unavailable { .. })
    }

    pub(crate) fn unavailable(reason: impl Into<String>, retry_after: Duration) -> Self {
        EngineError::Unavailable {
            retry_after: retry_after.max(MIN_RETRY_AFTER),
            outcome_unknown: false,
            reason: reason.into(),
        }
    }
}

/// How a failed Redis command is classified.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The connection is unusable or the server is not a writable primary
    /// right now: forget the connection and reconnect later.
    Link {
        /// The command may have run.
        sent: bool,
        reason: String,
    },
    /// The server answered with an error we do not expect.
    Reply(String),
}

/// Sorts a redis-rs error into "reconnect and retry later" or "a bug".
pub(crate) fn classify(err: &redis::RedisError) -> Failure {
    use redis::ServerErrorKind as K;
    let server_kind = match err.kind() {
        redis::ErrorKind::Server(kind) => Some(kind),
        _ => None,
    };
    let transient_server = matches!(
        server_kind,
        Some(K::ReadOnly | K::BusyLoading | K::MasterDown | K::TryAgain)
    ) || matches!(
        err.code(),
        // NOREPLICAS: min-replicas-to-write is set and too few replicas
        // answer; UNBLOCKED: the server became a replica while we were
        // blocked on it; BUSY: a script runs too long.
        Some("NOREPLICAS" | "UNBLOCKED" | "BUSY")
    );
    if transient_server {
        // The server refused before running the command.
        return Failure::Link {
            sent: false,
            reason: err.to_string(),
        };
    }
    if err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_unrecoverable_error()
    {
        return Failure::Link {
            sent: !err.is_connection_refusal(),
            reason: err.to_string(),
        };
    }
    Failure::Reply(err.to_string())
}
