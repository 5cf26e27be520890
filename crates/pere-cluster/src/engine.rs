//! [`Engine`]: the cheap `Clone` handle every part of a node shares to append
//! to the cluster log, tail it, keep the snapshot, and coordinate nodes
//! (heartbeats, leases).
//!
//! Each call is one Redis command (a script or a plain read) on the shared
//! multiplexed connection, so concurrent callers pipeline; only
//! [`Engine::tail`] opens a connection of its own, because a blocking
//! `XREAD` would hold up every command queued behind it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::Value;
use redis::aio::MultiplexedConnection;

use crate::conn::{Connector, Link};
use crate::entry::{Appended, NewEntry, parse_appended};
use crate::error::{EngineError, Result};
use crate::{ClusterConfig, LogPos, Tail, scripts};

/// The engine's handle: clone it freely.
#[derive(Clone)]
pub struct Engine {
    pub(crate) shared: Arc<Shared>,
}

/// What all clones share.
pub(crate) struct Shared {
    pub(crate) config: ClusterConfig,
    pub(crate) keys: Keys,
    pub(crate) link: Link,
    /// With [`ClusterConfig::replicas`], the appends' own connection: their
    /// `WAIT` blocks the connection it is sent on (Redis reads nothing more
    /// from a client while it waits), which must not hold up heartbeats,
    /// leases and snapshots for up to `replica_wait` each time.
    pub(crate) appends: Option<Link>,
    /// This process's token in its claim on the node id (`claim.rs`).
    pub(crate) instance: String,
    /// Whether this process holds that claim: its heartbeats renew it.
    pub(crate) claimed: AtomicBool,
    /// Whether a heartbeat ran: until then the claim renews itself.
    pub(crate) beating: AtomicBool,
}

/// The engine's Redis keys, built once.
pub(crate) struct Keys {
    pub(crate) log: String,
    pub(crate) seq: String,
    pub(crate) head: String,
    pub(crate) snapshot: String,
    pub(crate) nodes: String,
    pub(crate) genesis: String,
    prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            log: format!("{prefix}:log"),
            seq: format!("{prefix}:seq"),
            head: format!("{prefix}:head"),
            snapshot: format!("{prefix}:snapshot"),
            nodes: format!("{prefix}:nodes"),
            genesis: format!("{prefix}:genesis"),
            prefix: prefix.to_owned(),
        }
    }

    /// Where an engine's highest [`NewEntry::serial`] is kept: one key per
    /// process (its claim's instance token), so that nothing another life
    /// of the node sends, late or at once, is compared with this one's.
    fn serial(&self, node: &str, instance: &str) -> String {
        format!("{}:serial:{node}:{instance}", self.prefix)
    }

    fn lease(&self, name: &str) -> String {
        format!("{}:lease:{name}", self.prefix)
    }

    pub(crate) fn claim(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }
}

/// How long an engine's highest serial is kept after its last append: far
/// longer than an append can stay in flight.
const SERIAL_TTL: Duration = Duration::from_secs(24 * 3600);

pub(crate) fn millis(d: Duration) -> u64 {
    // A ttl that rounds to zero would mean "no ttl" to Redis or be refused.
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("node", &self.shared.config.node)
            .field("prefix", &self.shared.config.prefix)
            .finish_non_exhaustive()
    }
}

/// Asks the sentinels every [`crate::sentinel::WATCH_EVERY`] which server
/// is the primary, while the engine lives.
async fn watch_primary(shared: std::sync::Weak<Shared>) {
    loop {
        tokio::time::sleep(crate::sentinel::WATCH_EVERY).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.link.connector.check_primary().await;
    }
}

impl Engine {
    /// Connects to Redis (directly or through Sentinel) and checks that it
    /// answers.
    ///
    /// # Errors
    ///
    /// [`EngineError::Config`] for an invalid configuration,
    /// [`EngineError::Unavailable`] if Redis cannot be reached now.
    pub async fn connect(config: ClusterConfig) -> Result<Engine> {
        let target = config.target()?;
        let connector = Arc::new(Connector::new(target, config.command_timeout)?);
        let engine = Engine {
            shared: Arc::new(Shared {
                keys: Keys::new(&config.prefix),
                appends: (config.replicas > 0).then(|| Link::new(connector.clone())),
                config,
                link: Link::new(connector),
                instance: crate::claim::instance_token(),
                claimed: AtomicBool::new(false),
                beating: AtomicBool::new(false),
            }),
        };
        if engine.shared.link.connector.follows_sentinel() {
            tokio::spawn(watch_primary(Arc::downgrade(&engine.shared)));
        }
        engine.time().await?;
        engine.check_server().await?;
        Ok(engine)
    }

    /// Refuses a Redis older than 7.0 (the append script's `SET NX GET`),
    /// and warns about a Redis set up to lose what the engine relies on: keys
    /// evicted under memory pressure (the log, or idempotency keys, which
    /// `volatile-*` policies pick first since they have a ttl), or writes
    /// acknowledged before they reach the disk. Warnings only: the setup is
    /// the operator's call, and managed services may hide `INFO` fields.
    async fn check_server(&self) -> Result<()> {
        let info: String = self
            .run(async |conn| {
                redis::cmd("INFO")
                    .arg("server")
                    .arg("memory")
                    .arg("persistence")
                    .arg("replication")
                    .query_async(conn)
                    .await
            })
            .await?;
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        if let Some(version) = field("redis_version") {
            let major = version
                .split('.')
                .next()
                .and_then(|m| m.parse::<u32>().ok());
            if major.is_some_and(|m| m < 7) {
                return Err(EngineError::Config(format!(
                    "redis {version} is too old: the scripts need 7.0 (SET NX GET)"
                )));
            }
        }
        if let Some(policy) = field("maxmemory_policy").filter(|p| *p != "noeviction") {
            tracing::warn!(
                policy,
                "redis may evict the cluster's keys: set maxmemory-policy noeviction"
            );
        }
        if field("aof_enabled") == Some("0") {
            tracing::warn!("redis runs without AOF: a restart loses acknowledged publishes");
        }
        let replicas = self.shared.config.replicas;
        let online = online_replicas(&info);
        if online < replicas {
            tracing::warn!(
                online,
                required = replicas,
                "redis has fewer replicas online than --replicas requires: writes are answered 503 until enough replicas are in sync"
            );
        }
        Ok(())
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.shared.config.node
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &ClusterConfig {
        &self.shared.config
    }

    /// Runs one command on the shared connection, turning failures into
    /// [`EngineError`]s (and forgetting a broken connection).
    pub(crate) async fn run<T>(
        &self,
        command: impl AsyncFnOnce(&mut MultiplexedConnection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let (generation, mut conn) = self.shared.link.get().await?;
        match command(&mut conn).await {
            Ok(value) => Ok(value),
            Err(err) => Err(self.shared.link.failed(generation, &err).await),
        }
    }

    /// Appends one node batch to the log in ONE atomic script: assigns its
    /// event ids (`first = max(Redis TIME in µs, seq + 1)`, event `i` gets
    /// `first + i`), settles its idempotency keys (a known key makes its
    /// event a duplicate of the original id; its own slot id is then never
    /// used) and adds the entry. There is no "get an id, then publish" step
    /// to interleave with another node's.
    ///
    /// Appends in flight at the same time (from one node or several) land
    /// in some order, each whole; a writer that needs its batches in its own
    /// order awaits each before the next. [`Appended::pos`] says where the
    /// entry landed.
    ///
    /// # Errors
    ///
    /// [`EngineError::Unavailable`] when Redis cannot take it; if
    /// `outcome_unknown`, the entry may still appear on the log (unless a
    /// retry with the same [`NewEntry::serial`] or a later one lands
    /// first). [`EngineError::Stale`] for a serial below the node's
    /// highest. [`EngineError::Unconfirmed`] when too few replicas have
    /// it. [`EngineError::Invalid`] for more than `u32::MAX` events.
    pub async fn append(&self, entry: NewEntry) -> Result<Appended> {
        let events = u32::try_from(entry.idem.len())
            .map_err(|_| EngineError::Invalid("more than u32::MAX events in one entry".into()))?;
        let Shared {
            config,
            keys,
            instance,
            ..
        } = &*self.shared;
        let mut invocation = scripts::APPEND.prepare_invoke();
        invocation
            .key(&keys.seq)
            .key(&keys.log)
            .key(&keys.head)
            .key(&keys.genesis)
            .key(keys.serial(&config.node, instance));
        invocation
            .arg(&config.node)
            .arg(entry.blob.as_ref())
            .arg(events)
            .arg(millis(config.idem_ttl))
            .arg(entry.serial.map(|n| n.to_string()).unwrap_or_default())
            .arg(millis(SERIAL_TTL));
        for (index, key) in entry.idem.iter().enumerate() {
            if let Some(key) = key {
                invocation.key(key.redis_key(&config.prefix)).arg(index);
            }
        }
        let link = self.shared.appends.as_ref().unwrap_or(&self.shared.link);
        let (generation, mut conn) = link.get().await?;
        let reply: Value = match invocation.invoke_async(&mut conn).await {
            Ok(reply) => reply,
            Err(err) => return Err(link.failed(generation, &err).await),
        };
        let appended = parse_appended(reply)?;
        if config.replicas > 0 {
            wait_for_replicas(config, link, generation, &mut conn, &appended).await?;
        }
        tracing::trace!(pos = %appended.pos, first = appended.first_id, events, "appended");
        Ok(appended)
    }

    /// Whether appends would go through now: Redis answers and, with
    /// [`ClusterConfig::replicas`], has that many replicas online (a
    /// replica still in its first sync confirms nothing).
    ///
    /// # Errors
    ///
    /// [`EngineError::Unavailable`] when Redis cannot answer or has too
    /// few replicas online.
    pub async fn probe(&self) -> Result<()> {
        let replicas = self.shared.config.replicas;
        if replicas == 0 {
            return self.head().await.map(drop);
        }
        // On the shared connection: the appends' may be waiting for the
        // very replicas this asks about.
        let link = &self.shared.link;
        let (generation, mut conn) = link.get().await?;
        let info: String = match redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await
        {
            Ok(info) => info,
            Err(err) => return Err(link.failed(generation, &err).await),
        };
        let online = online_replicas(&info);
        if online >= replicas {
            return Ok(());
        }
        Err(EngineError::unavailable(
            format!("redis has {online} of the {replicas} replicas required online"),
            crate::error::MIN_RETRY_AFTER,
        ))
    }

    /// Reads the log after `after`, in order; see [`Tail`].
    pub fn tail(&self, after: LogPos) -> Tail {
        Tail::new(self.shared.clone(), after)
    }

    /// The position of the last entry on the log ([`LogPos::ZERO`] if none).
    ///
    /// # Errors
    ///
    /// [`EngineError::Unavailable`] when Redis cannot answer.
    pub async fn head(&self) -> Result<LogPos> {
        let head: Option<Vec<u8>> = self
            .run(async |conn| {
                redis::cmd("GET")
                    .arg(&self.shared.keys.head)
                    .query_async(conn)
                    .await
            })
            .await?;
        head.map_or(Ok(LogPos::ZERO), |h| LogPos::from_bytes(&h))
    }

    /// Whether the log holds the entry at `at` whose first id is
    /// `first_id`, or trimmed past it (a snapshot covers it): after a
    /// failover, which of the entries a node applied the promoted replica
    /// still has. False for a position the log does not have and would
    /// still keep, for another entry at the same position (two servers
    /// can give one id in the same millisecond), and for a position from
    /// before the log began (a replica promoted empty: nothing trimmed).
    ///
    /// # Errors
    ///
    /// [`EngineError::Unavailable`] when Redis cannot answer.
    pub async fn holds(&self, at: LogPos, first_id: u64) -> Result<bool> {
        let id = at.to_string();
        let (exact, first, genesis): (redis::Value, redis::Value, Option<String>) = self
            .run(async |conn| {
                redis::pipe()
                    .cmd("XRANGE")
                    .arg(&self.shared.keys.log)
                    .arg(&id)
                    .arg(&id)
                    .arg("COUNT")
                    .arg(1)
                    .cmd("XRANGE")
                    .arg(&self.shared.keys.log)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1)
                    .cmd("GET")
                    .arg(&self.shared.keys.genesis)
                    .query_async(conn)
                    .await
            })
            .await?;
        if let redis::Value::Array(items) = exact
            && let Some(entry) = items.into_iter().next()
        {
            return Ok(crate::entry::parse_entry(entry)?.first_id == first_id);
        }
        // The oldest entry kept: a position before it was trimmed.
        let oldest = match &first {
            redis::Value::Array(items) => match items.first() {
                Some(redis::Value::Array(entry)) => match entry.first() {
                    Some(redis::Value::BulkString(id)) => Some(LogPos::from_bytes(id)?),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        };
        // Ids are the log's clock in µs, positions its clock in ms: a
        // position below the log's beginning is from a log that is gone.
        let began = genesis.and_then(|g| g.parse::<u64>().ok()).unwrap_or(0);
        let ends = at.ms.saturating_add(1).saturating_mul(1000);
        Ok(oldest.is_some_and(|oldest| at < oldest) && ends > began)
    }

    /// The log's beginning: the Redis time (µs) when the first node found
    /// it empty, which no event id of this log is below. A resume point
    /// below it names an event of an earlier log, one Redis lost (a restart
    /// without persistence, a failover to an empty replica). `0` when not
    /// known: a log that already held entries when this was first asked
    /// (written by a version that did not record it).
    ///
    /// # Errors
    ///
    /// [`EngineError::Unavailable`] when Redis cannot answer.
    pub async fn genesis(&self) -> Result<u64> {
        let mut invocation = scripts::GENESIS.prepare_invoke();
        invocation
            .key(&self.shared.keys.genesis)
            .key(&self.shared.keys.head);
        let genesis: String = self
            .run(async |conn| invocation.invoke_async(conn).await)
            .await?;
        genesis.parse().map_err(|_| {
            EngineError::Protocol(format!(
                "`{}` holds `{genesis}`, not a number: is another program using this Redis?",
                self.shared.keys.genesis
            ))
        })
    }

    /// Redis's clock, in µs since the Unix epoch: the cluster's one clock.
    ///
    /// # Errors
    ///
    /// [`EngineError::Unavailable`] when Redis cannot answer.
    pub async fn time(&self) -> Result<u64> {
        let (secs, micros): (u64, u64) = self
            .run(async |conn| redis::cmd("TIME").query_async(conn).await)
            .await?;
        Ok(secs * 1_000_000 + micros)
    }

    /// Says this node is alive for the next `ttl` (by the Redis clock),
    /// and renews its claim on its id ([`Engine::claim_node`]) as long.
    ///
    /// # Errors
    ///
    /// [`EngineError::Unavailable`] when Redis cannot take it.
    pub async fn heartbeat(&self, ttl: Duration) -> Result<()> {
        let node = &self.shared.config.node;
        self.shared.beating.store(true, Ordering::Release);
        let claimed = self.shared.claimed.load(Ordering::Acquire);
        let mut invocation = scripts::HEARTBEAT.prepare_invoke();
        invocation
            .key(&self.shared.keys.nodes)
            .key(self.shared.keys.claim(node))
            .arg(node)
            .arg(millis(ttl))
            .arg(&self.shared.instance)
            .arg(if claimed { "1" } else { "0" });
        let mine: i64 = self
            .run(async |conn| invocation.invoke_async(conn).await)
            .await?;
        if claimed && mine == 0 {
            // It stalled past its claim's ttl and another process started
            // as this node since: both now act as one node.
            tracing::error!(node = %node, "another process took over this node's id (--node-id) while this one was unreachable: stop one of them");
        }
        Ok(())
    }

    /// The nodes whose last heartbeat has not expired, sorted by expiry.
    ///
    /// # Errors
    ///
    /// [`EngineError::Unavailable`] when Redis cannot answer.
    pub async fn live_nodes(&self) -> Result<Vec<String>> {
        self.nodes("live").await
    }

    /// The nodes whose heartbeat expired and that were not forgotten yet:
    /// what the sweeper has to clean up after.
    ///
    /// # Errors
    ///
    /// [`EngineError::Unavailable`] when Redis cannot answer.
    pub async fn expired_nodes(&self) -> Result<Vec<String>> {
        self.nodes("expired").await
    }

    async fn nodes(&self, which: &str) -> Result<Vec<String>> {
        let mut invocation = scripts::NODES.prepare_invoke();
        invocation.key(&self.shared.keys.nodes).arg(which);
        self.run(async |conn| invocation.invoke_async(conn).await)
            .await
    }

    /// Forgets `node` if its heartbeat expired (after the sweeper cleaned up
    /// after it); true if it was forgotten, false if it is alive again or
    /// unknown.
    ///
    /// # Errors
    ///
    /// [`EngineError::Unavailable`] when Redis cannot take it.
    pub async fn forget_node(&self, node: &str) -> Result<bool> {
        let mut invocation = scripts::FORGET.prepare_invoke();
        invocation.key(&self.shared.keys.nodes).arg(node);
        let forgotten: i64 = self
            .run(async |conn| invocation.invoke_async(conn).await)
            .await?;
        Ok(forgotten == 1)
    }

    /// Takes the lease `name` for `ttl` if it is free, or renews it if this
    /// node holds it; true if this node holds it now.
    ///
    /// A lease is advisory: a holder that stalls longer than `ttl` (a GC
    /// pause, a stopped VM) may still act while a successor holds it, so
    /// what a lease holder does must stay harmless when done twice (its
    /// decisions go through the log, which orders them).
    ///
    /// # Errors
    ///
    /// [`EngineError::Unavailable`] when Redis cannot answer: the caller
    /// must then act as if it did not hold the lease.
    pub async fn try_lease(&self, name: &str, ttl: Duration) -> Result<bool> {
        let mut invocation = scripts::LEASE.prepare_invoke();
        invocation
            .key(self.shared.keys.lease(name))
            .arg(&self.shared.config.node)
            .arg(millis(ttl));
        let held: i64 = self
            .run(async |conn| invocation.invoke_async(conn).await)
            .await?;
        Ok(held == 1)
    }

    /// Gives up the lease `name` if this node holds it; true if it did.
    ///
    /// # Errors
    ///
    /// [`EngineError::Unavailable`] when Redis cannot take it.
    pub async fn release_lease(&self, name: &str) -> Result<bool> {
        let mut invocation = scripts::RELEASE.prepare_invoke();
        invocation
            .key(self.shared.keys.lease(name))
            .arg(&self.shared.config.node);
        let released: i64 = self
            .run(async |conn| invocation.invoke_async(conn).await)
            .await?;
        Ok(released == 1)
    }
}

/// Waits until [`ClusterConfig::replicas`] replicas have everything `conn`
/// wrote, `appended` included (`WAIT` counts the writes of the connection
/// it is sent on: this one, which ran the append). Short of them the append fails as
/// [`EngineError::Unconfirmed`]: the entry is on the log, and a failover now
/// could lose it.
async fn wait_for_replicas(
    config: &ClusterConfig,
    link: &Link,
    generation: u64,
    conn: &mut MultiplexedConnection,
    appended: &Appended,
) -> Result<()> {
    let waited: redis::RedisResult<i64> = redis::cmd("WAIT")
        .arg(config.replicas)
        .arg(millis(config.replica_wait))
        .query_async(conn)
        .await;
    let reason = match waited {
        Ok(n) if n >= i64::from(config.replicas) => return Ok(()),
        Ok(n) => format!(
            "log entry {} reached {n} of the {} replicas required within {:?}",
            appended.pos, config.replicas, config.replica_wait
        ),
        Err(err) => {
            // A demoted primary answers with an error too: the connection
            // goes either way, and the next append finds the primary anew.
            link.forget(generation).await;
            format!(
                "log entry {} was written but the wait for the replicas failed: {err}",
                appended.pos
            )
        }
    };
    tracing::warn!(pos = %appended.pos, cause = %reason, "append not confirmed by the replicas");
    Err(EngineError::Unconfirmed {
        pos: appended.pos,
        reason,
    })
}

/// Seconds since a replica's last acknowledgement past which it is not
/// counted (replicas acknowledge every second, and at once when an append
/// waits for them): one that stalled would make every append wait
/// `replica_wait` for nothing.
const MAX_REPLICA_LAG: u64 = 3;

/// Replicas `INFO replication` lists as online and acknowledging
/// (`slaveN:…,state=online,offset=…,lag=…`). A server that lists none but
/// counts some (`connected_slaves`: a proxy or managed service that hides
/// the details) is taken at its count, one that says nothing at all as
/// having enough: `WAIT` still decides each append.
fn online_replicas(info: &str) -> u32 {
    let listed = info.lines().any(|line| {
        line.strip_prefix("slave")
            .and_then(|rest| rest.split(':').next())
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    });
    if !listed {
        let counted = info.lines().find_map(|line| {
            line.strip_prefix("connected_slaves:")
                .and_then(|n| n.trim().parse::<u32>().ok())
        });
        return counted.unwrap_or(u32::MAX);
    }
    let online = info
        .lines()
        .filter(|line| line.starts_with("slave") && line.contains("state=online"))
        .filter(|line| {
            line.split(',')
                .find_map(|f| f.trim().strip_prefix("lag="))
                .and_then(|lag| lag.parse::<u64>().ok())
                .is_none_or(|lag| lag <= MAX_REPLICA_LAG)
        })
        .count();
    u32::try_from(online).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::online_replicas;

    #[test]
    fn only_replicas_online_count() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:4\r\n\
            slave0:ip=127.0.0.1,port=7001,state=online,offset=42,lag=0\r\n\
            slave1:ip=127.0.0.1,port=7002,state=wait_bgsave,offset=0,lag=0\r\n\
            slave2:ip=127.0.0.1,port=7003,state=online,offset=42,lag=1\r\n\
            slave3:ip=127.0.0.1,port=7004,state=online,offset=40,lag=9\r\n\
            slave_read_repl_offset:1\r\nmaster_repl_offset:42\r\n";
        assert_eq!(online_replicas(info), 2);
        assert_eq!(
            online_replicas("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n"),
            0
        );
        // Details hidden: the count, or nothing known.
        assert_eq!(
            online_replicas("# Replication\r\nrole:master\r\nconnected_slaves:2\r\n"),
            2
        );
        assert_eq!(
            online_replicas("# Replication\r\nrole:master\r\n"),
            u32::MAX
        );
    }
}
