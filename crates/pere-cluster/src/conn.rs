//! Connections to the current primary: [`Connector`] opens them (directly or
//! through Sentinel), [`Link`] keeps the engine's shared one and replaces it
//! after a failure.
//!
//! Why not redis-rs's `ConnectionManager`: it reconnects to the one address
//! it was built with, so it cannot follow a Sentinel failover, and it
//! retries inside each request, which turns an outage into slow answers
//! where PERE owes its publishers a prompt `503`. [`Link`] instead fails a
//! command at once, forgets the broken connection, and lets the next command
//! reconnect (asking Sentinel anew), with a backoff so that an outage costs
//! one connection attempt per backoff period, not one per publish.
//!
//! Through Sentinel, a change of primary ([`crate::sentinel`]'s watcher)
//! bumps [`Connector::switches`]: the shared connection and every tail's
//! are then dropped and reopened on the new primary.

use std::time::{Duration, Instant};

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use tokio::sync::{Mutex, watch};

use crate::config::Target;
use crate::error::{EngineError, Failure, Result, classify};
use crate::sentinel::{Addr, Sentinels};

/// The first wait after a failed connection attempt.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// The longest wait between connection attempts: Redis that comes back is
/// used within a second.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The longest wait for a sentinel's answer: they answer from memory, in
/// milliseconds, and a lookup waits for the slowest of them.
const SENTINEL_WAIT: Duration = Duration::from_secs(1);

/// Opens fresh connections to the current primary.
pub(crate) struct Connector {
    kind: ConnectorKind,
    command_timeout: Duration,
    /// How many times the primary changed: a connection opened before the
    /// latest change is to the old one.
    switches: watch::Sender<u64>,
    /// The primary the latest connection went to (through Sentinel).
    primary: std::sync::Mutex<Option<Addr>>,
}

enum ConnectorKind {
    Direct(redis::Client),
    Sentinel(Sentinels),
}

impl Connector {
    pub(crate) fn new(target: Target, command_timeout: Duration) -> Result<Connector> {
        let bad = |e: redis::RedisError| EngineError::Config(e.to_string());
        let kind = match target {
            Target::Direct(url) => ConnectorKind::Direct(redis::Client::open(url).map_err(bad)?),
            Target::Sentinel {
                sentinels,
                master,
                username,
                password,
                db,
            } => {
                let mut info = redis::RedisConnectionInfo::default().set_db(db);
                if let Some(username) = username {
                    info = info.set_username(username);
                }
                if let Some(password) = password {
                    info = info.set_password(password);
                }
                ConnectorKind::Sentinel(Sentinels::new(&sentinels, master, info).map_err(bad)?)
            }
        };
        Ok(Connector {
            kind,
            command_timeout,
            switches: watch::Sender::new(0),
            primary: std::sync::Mutex::new(None),
        })
    }

    /// Whether the primary is found through Sentinel (and can change).
    pub(crate) fn follows_sentinel(&self) -> bool {
        matches!(self.kind, ConnectorKind::Sentinel(_))
    }

    /// How many times the primary changed so far, and a receiver to wait
    /// for the next change.
    pub(crate) fn switches(&self) -> watch::Receiver<u64> {
        self.switches.subscribe()
    }

    /// Asks the sentinels which server is the primary; if it is not the one
    /// the latest connection went to, counts a switch (see the module).
    pub(crate) async fn check_primary(&self) {
        let ConnectorKind::Sentinel(sentinels) = &self.kind else {
            return;
        };
        let Ok(now) = sentinels
            .primary(self.command_timeout.min(SENTINEL_WAIT))
            .await
        else {
            // No sentinel answers: the connections fail or not on their own.
            return;
        };
        self.note_primary(now);
    }

    /// Notes that the sentinels name `now` as the primary (asked by the
    /// watcher, or by a connection opening). Another one than the last
    /// noted is a switch: every connection opened before it goes to the
    /// old primary. A connection that reopens on its own (a tail's, the
    /// appends') counts it too: noting the new primary silently would
    /// leave the watcher nothing to see, and the others on the old one.
    fn note_primary(&self, now: Addr) {
        let mut primary = self.primary.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(was) = primary.as_ref()
            && *was != now
        {
            tracing::warn!(
                was = %format_args!("{}:{}", was.0, was.1),
                now = %format_args!("{}:{}", now.0, now.1),
                "Sentinel names another primary: reconnecting to it"
            );
            self.switches.send_modify(|n| *n += 1);
        }
        *primary = Some(now);
    }

    /// Opens a connection whose commands time out after `response_timeout`
    /// (the tail's blocking reads need longer than the command timeout).
    ///
    /// Through Sentinel, the primary is the one the sentinel with the
    /// highest configuration epoch names, checked with `ROLE`.
    pub(crate) async fn open(&self, response_timeout: Duration) -> Result<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.command_timeout))
            .set_response_timeout(Some(response_timeout));
        let opening = async {
            match &self.kind {
                ConnectorKind::Direct(client) => {
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                }
                ConnectorKind::Sentinel(sentinels) => {
                    let addr = sentinels
                        .primary(self.command_timeout.min(SENTINEL_WAIT))
                        .await
                        .map_err(|e| {
                            redis::RedisError::from(std::io::Error::other(e.to_string()))
                        })?;
                    let conn = sentinels.connect(&addr, &config).await?;
                    self.note_primary(addr);
                    Ok(conn)
                }
            }
        };
        // Sentinel lookups have no timeout of their own: bound the whole.
        match tokio::time::timeout(self.command_timeout * 2, opening).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(err)) => Err(EngineError::unavailable(
                format!("cannot connect: {err}"),
                Duration::ZERO,
            )),
            Err(_) => Err(EngineError::unavailable(
                "cannot connect: timed out",
                Duration::ZERO,
            )),
        }
    }

    /// The command timeout this connector was configured with.
    pub(crate) fn command_timeout(&self) -> Duration {
        self.command_timeout
    }
}

/// Exponential backoff between connection attempts.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff { next: BACKOFF_MIN }
    }

    /// The wait before the next attempt, doubling each time.
    pub(crate) fn fail(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        wait
    }

    pub(crate) fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// The engine's shared connection: multiplexed, so every caller pipelines
/// on it, replaced after a failure.
pub(crate) struct Link {
    /// Shared by the engine's links (and its tails).
    pub(crate) connector: std::sync::Arc<Connector>,
    state: Mutex<LinkState>,
}

struct LinkState {
    /// The connection, tagged with a generation so that a caller reporting
    /// a failure on an old connection does not drop a fresh one, and with
    /// the switch count it was opened at.
    conn: Option<(u64, u64, MultiplexedConnection)>,
    generation: u64,
    backoff: Backoff,
    /// No connection attempt before this instant.
    retry_at: Option<Instant>,
    /// Why the last attempt failed, repeated to callers until the next.
    last_error: String,
}

impl Link {
    pub(crate) fn new(connector: std::sync::Arc<Connector>) -> Link {
        Link {
            connector,
            state: Mutex::new(LinkState {
                conn: None,
                generation: 0,
                backoff: Backoff::new(),
                retry_at: None,
                last_error: String::new(),
            }),
        }
    }

    /// The current connection, opened if needed. While a previous attempt's
    /// backoff runs, fails at once with `Unavailable`.
    pub(crate) async fn get(&self) -> Result<(u64, MultiplexedConnection)> {
        let mut state = self.state.lock().await;
        let switches = *self.connector.switches.borrow();
        match &state.conn {
            Some((generation, at, conn)) if *at == switches => {
                return Ok((*generation, conn.clone()));
            }
            Some(_) => {
                tracing::debug!("dropping the connection to the former primary");
                state.conn = None;
                state.retry_at = None;
            }
            None => {}
        }
        if let Some(at) = state.retry_at {
            let now = Instant::now();
            if now < at {
                return Err(EngineError::unavailable(state.last_error.clone(), at - now));
            }
        }
        match self.connector.open(self.connector.command_timeout()).await {
            Ok(conn) => {
                state.generation += 1;
                state.backoff.reset();
                state.retry_at = None;
                let generation = state.generation;
                state.conn = Some((generation, switches, conn.clone()));
                tracing::debug!(generation, "connected to redis");
                Ok((generation, conn))
            }
            Err(err) => {
                let wait = state.backoff.fail();
                state.retry_at = Some(Instant::now() + wait);
                // The reason alone: the error it becomes says the rest.
                state.last_error = match err {
                    EngineError::Unavailable { reason, .. } => reason,
                    other => other.to_string(),
                };
                tracing::warn!(cause = %state.last_error, retry_in = ?wait, "redis connection failed");
                Err(EngineError::unavailable(state.last_error.clone(), wait))
            }
        }
    }

    /// Drops the connection of `generation`, if it is still the current
    /// one: the next command opens another.
    pub(crate) async fn forget(&self, generation: u64) {
        let mut state = self.state.lock().await;
        if state
            .conn
            .as_ref()
            .is_some_and(|(g, _, _)| *g == generation)
        {
            state.conn = None;
        }
    }

    /// Turns a command's failure into an [`EngineError`], forgetting the
    /// connection if the failure says it is broken or not a primary.
    pub(crate) async fn failed(&self, generation: u64, err: &redis::RedisError) -> EngineError {
        match classify(err) {
            Failure::Reply(reason) => EngineError::Protocol(reason),
            Failure::Link { sent, reason } => {
                let mut state = self.state.lock().await;
                if state
                    .conn
                    .as_ref()
                    .is_some_and(|(g, _, _)| *g == generation)
                {
                    tracing::warn!(cause = %reason, "redis connection lost");
                    state.conn = None;
                }
                EngineError::Unavailable {
                    retry_after: crate::error::MIN_RETRY_AFTER,
                    outcome_unknown: sent,
                    reason,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn through_sentinel() -> Connector {
        let target = Target::Sentinel {
            sentinels: vec!["redis://127.0.0.1:1".into()],
            master: "m".into(),
            username: None,
            password: None,
            db: 0,
        };
        Connector::new(target, Duration::from_secs(1)).unwrap()
    }

    #[test]
    fn a_connection_that_finds_another_primary_counts_a_switch() {
        let connector = through_sentinel();
        let switches = connector.switches();
        let a = ("127.0.0.1".to_owned(), 7001);
        let b = ("127.0.0.1".to_owned(), 7002);
        connector.note_primary(a.clone());
        connector.note_primary(a);
        assert_eq!(*switches.borrow(), 0, "the same primary again");
        // A tail reconnecting after a failover, before the watcher asked:
        // the shared connection, still on the old primary, must hear of it.
        connector.note_primary(b.clone());
        assert_eq!(*switches.borrow(), 1);
        // The watcher then finds nothing new.
        connector.note_primary(b);
        assert_eq!(*switches.borrow(), 1);
    }
}
