//! [`Tail`]: reads the cluster log in order, on a connection of its own, and
//! checks the log's chain so that no loss goes unnoticed.
//!
//! # Invariants
//!
//! - Entries come out in log order, each once: the tail asks Redis for the
//!   entries after the last one it returned (`XREAD BLOCK … STREAMS log
//!   POS`), so reconnecting never skips or repeats one.
//! - Every entry names its predecessor (`prev`, set by the append script
//!   from `{prefix}:head`). The tail returns an entry only if its `prev` is
//!   the entry returned before it, so the entries returned are exactly a
//!   prefix of the log as it was written:
//!   - `prev` after the tail's position: entries between were removed from
//!     the front of the log, i.e. trimmed: [`EngineError::Trimmed`];
//!   - `prev` before it, or `{prefix}:head` before it (checked on every
//!     connect and every idle wake-up): the log lost entries this tail
//!     returned, i.e. a failover promoted a replica that lacked them:
//!     [`EngineError::Regressed`].
//! - Both are final for this tail: it keeps returning the same error, and
//!   the caller starts a new tail after resynchronising.
//! - Redis unreachable is not final: [`EngineError::Unavailable`] is
//!   returned once per failed attempt, and the next call waits out a
//!   backoff, reconnects and resumes where the tail was.
//!
//! What the chain cannot see: entries lost before this tail returned them
//! (nobody read them, so nobody diverged; the appender learns it when its
//! tail passes the position its append returned without meeting it), and a
//! new entry that happens to get the exact stream id of a lost one (same
//! millisecond and counter on a new primary, which needs clock skew between
//! the two Redis hosts in the node's favour).
//!
//! `next` is cancel-safe: entries are taken from Redis and buffered in one
//! step after the read completes, so dropping a pending `next` loses nothing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use crate::LogPos;
use crate::conn::Backoff;
use crate::engine::Shared;
use crate::entry::{Entry, parse_xread};
use crate::error::{EngineError, Failure, Result, classify};

/// How long one `XREAD` blocks before the tail checks the head and blocks
/// again: the bound on how long a regression with no new entry goes
/// unnoticed.
const BLOCK: Duration = Duration::from_secs(2);

/// How many entries one `XREAD` brings at most: enough for a lagging tail
/// to catch up in few round trips.
const MAX_COUNT: usize = 64;

/// How many blob bytes one `XREAD` should bring, roughly: blobs can be a
/// few MB each, and 64 of those in one reply would be hundreds of MB held
/// at once. The count adapts to the sizes of the entries last read.
const READ_BYTES: usize = 8 << 20;

/// The count of the first read, before any entry size is known: one
/// entry, whatever its size, then as many as fit [`READ_BYTES`].
const FIRST_COUNT: usize = 1;

/// A reader of the cluster log after a position. See the module docs.
pub struct Tail {
    shared: Arc<Shared>,
    /// The last entry returned (or the start position).
    pos: LogPos,
    /// The last entry read from Redis, whose successor the next read must
    /// chain to: `pos` unless entries are buffered.
    read: LogPos,
    conn: Option<MultiplexedConnection>,
    buffered: VecDeque<Entry>,
    /// Changes when Sentinel names another primary (see `conn`).
    switches: tokio::sync::watch::Receiver<u64>,
    /// A final error, returned once the buffer is drained.
    failed: Option<EngineError>,
    backoff: Backoff,
    retry_at: Option<Instant>,
    /// Entries per `XREAD`, adapted to blob sizes (see [`READ_BYTES`]).
    count: usize,
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tail")
            .field("pos", &self.pos)
            .field("connected", &self.conn.is_some())
            .field("buffered", &self.buffered.len())
            .finish_non_exhaustive()
    }
}

impl Tail {
    pub(crate) fn new(shared: Arc<Shared>, after: LogPos) -> Tail {
        Tail {
            switches: shared.link.connector.switches(),
            shared,
            pos: after,
            read: after,
            conn: None,
            buffered: VecDeque::new(),
            failed: None,
            backoff: Backoff::new(),
            retry_at: None,
            count: FIRST_COUNT,
        }
    }

    /// The position of the last entry returned (or the start position).
    pub fn pos(&self) -> LogPos {
        self.pos
    }

    /// The next entry of the log, waiting for one if needed.
    ///
    /// # Errors
    ///
    /// [`EngineError::Unavailable`] when Redis cannot be read (call again:
    /// the tail waits out a backoff and resumes by itself);
    /// [`EngineError::Trimmed`] and [`EngineError::Regressed`] are final (see
    /// the module docs); [`EngineError::Protocol`] for an entry this engine
    /// cannot parse.
    pub async fn next(&mut self) -> Result<Entry> {
        loop {
            if let Some(entry) = self.buffered.pop_front() {
                self.pos = entry.pos;
                return Ok(entry);
            }
            if let Some(err) = &self.failed {
                return Err(err.clone());
            }
            if let Some(at) = self.retry_at {
                tokio::time::sleep_until(at).await;
                self.retry_at = None;
            }
            if let Err(err) = self.read_some().await {
                if !err.is_unavailable() {
                    self.failed = Some(err.clone());
                }
                return Err(err);
            }
        }
    }

    /// Connects if needed, then reads what follows `read` (blocking up to
    /// [`BLOCK`]) into the buffer.
    async fn read_some(&mut self) -> Result<()> {
        if self.switches.has_changed().unwrap_or(false) {
            // Sentinel names another primary: read the log there.
            self.switches.mark_unchanged();
            self.conn = None;
        }
        if self.conn.is_none() {
            let timeout = BLOCK + self.shared.link.connector.command_timeout();
            match self.shared.link.connector.open(timeout).await {
                Ok(conn) => self.conn = Some(conn),
                Err(err) => return Err(self.unavailable(err.to_string())),
            }
            // The log may have lost what we read while we were away.
            self.check_head().await?;
            if self.failed.is_some() {
                return Ok(());
            }
            self.backoff.reset();
            tracing::debug!(pos = %self.read, "tail connected");
        }
        let conn = self.conn.as_mut().expect("connected above");
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(self.count)
            .arg("BLOCK")
            .arg(u64::try_from(BLOCK.as_millis()).unwrap_or(u64::MAX))
            .arg("STREAMS")
            .arg(&self.shared.keys.log)
            .arg(self.read.to_string());
        let reply = tokio::select! {
            reply = cmd.query_async::<Value>(conn) => reply,
            // What the former primary still gives is not the log.
            // (`changed` marks the switch seen: drop the connection here.)
            _ = self.switches.changed() => {
                self.conn = None;
                return Ok(());
            }
        };
        let entries = parse_xread(reply.map_err(|e| self.lost(e))?)?;
        if entries.is_empty() {
            // Idle: a failover may have cut the log short with nothing
            // appended since, which only the head shows.
            return self.check_head().await;
        }
        let bytes: usize = entries.iter().map(|e| e.blob.len()).sum();
        let average = (bytes / entries.len()).max(1);
        self.count = (READ_BYTES / average).clamp(1, MAX_COUNT);
        for entry in entries {
            if entry.prev != self.read {
                // Return what chained correctly first, then the error.
                self.failed = Some(if entry.prev > self.read {
                    EngineError::Trimmed { after: self.read }
                } else {
                    EngineError::Regressed {
                        had: self.read,
                        now: entry.prev,
                    }
                });
                return Ok(());
            }
            self.read = entry.pos;
            self.buffered.push_back(entry);
        }
        Ok(())
    }

    /// Reads `{prefix}:head`: a log whose last entry is before what this
    /// tail read has lost entries.
    async fn check_head(&mut self) -> Result<()> {
        let conn = self.conn.as_mut().expect("called when connected");
        let head = redis::cmd("GET")
            .arg(&self.shared.keys.head)
            .query_async::<Option<Vec<u8>>>(conn)
            .await;
        let head = match head.map_err(|e| self.lost(e))? {
            None => LogPos::ZERO,
            Some(bytes) => LogPos::from_bytes(&bytes)?,
        };
        if head < self.read {
            self.failed = Some(EngineError::Regressed {
                had: self.read,
                now: head,
            });
        }
        Ok(())
    }

    /// Schedules the next attempt after a backoff and says so.
    fn unavailable(&mut self, reason: String) -> EngineError {
        self.conn = None;
        let wait = self.backoff.fail();
        self.retry_at = Some(Instant::now() + wait);
        EngineError::unavailable(reason, wait)
    }

    /// A command failed: the connection is dropped and the tail retries
    /// after a backoff, unless Redis answered something we do not expect.
    fn lost(&mut self, err: redis::RedisError) -> EngineError {
        match classify(&err) {
            Failure::Reply(reason) => EngineError::Protocol(reason),
            Failure::Link { reason, .. } => {
                tracing::warn!(cause = %reason, pos = %self.read, "tail lost redis");
                self.unavailable(reason)
            }
        }
    }
}
