//! [`ClusterConfig`]: where Redis is, who this node is, and how long things
//! are kept; and the parsing of `--cluster` URLs into a [`Target`].

use std::time::Duration;

use crate::error::{EngineError, Result};

/// The key prefix when none is given.
pub const DEFAULT_PREFIX: &str = "pere";

/// How long an idempotency key is remembered by default: a day, far beyond
/// docs/PROTOCOL.md §2's minimum of ten minutes, so a publisher that retries
/// after a night's outage still gets its first answer.
pub const DEFAULT_IDEM_TTL: Duration = Duration::from_secs(24 * 3600);

/// How long log entries stay beyond the snapshot by default: a node that
/// was away less than this (a restart, a deploy) catches up from the log
/// instead of reloading the whole snapshot. Ten minutes, not hours: the
/// log lives in Redis's memory, and at 1,000 appends/s of 12 KB each ten
/// minutes already hold 7 GB (the README has the arithmetic).
pub const DEFAULT_LOG_KEEP: Duration = Duration::from_secs(600);

/// How often the ticker node snapshots the state by default: the log then
/// holds at most this plus `log_keep` of entries, and a starting node
/// replays no more than that after loading the snapshot.
pub const DEFAULT_SNAPSHOT_EVERY: Duration = Duration::from_secs(60);

/// How long one Redis command may take by default before the engine calls
/// Redis unavailable. A blob of a few MB crosses a LAN in milliseconds; a
/// server that takes seconds is stuck (or `SIGSTOP`ped) and the publisher
/// deserves a prompt `503`.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(3);

/// How long an append waits by default for the replicas `replicas` asks
/// for (`WAIT`) before it is answered as unavailable: on a LAN a replica
/// acknowledges within a millisecond, and a replica a second behind is
/// one a failover would lose writes to.
pub const DEFAULT_REPLICA_WAIT: Duration = Duration::from_secs(1);

/// Where the cluster's Redis is and how this node uses it.
#[derive(Clone)]
pub struct ClusterConfig {
    /// `redis://[user:pass@]HOST:PORT[/DB]`, or
    /// `redis+sentinel://[user:pass@]H1:P1,H2:P2/MASTER[/DB]` to follow
    /// Sentinel failovers (the credentials are the data nodes', not the
    /// sentinels').
    pub url: String,
    /// This node's id: unique in the cluster, stable across restarts.
    pub node: String,
    /// Prefix of every key the engine uses (default `pere`), so several
    /// clusters can share one Redis.
    pub prefix: String,
    /// How long an idempotency key is remembered.
    pub idem_ttl: Duration,
    /// How long log entries stay before trimming, beyond the snapshot.
    pub log_keep: Duration,
    /// How long one command may take before Redis is called unavailable.
    pub command_timeout: Duration,
    /// How often the state is snapshotted (after which the log is trimmed).
    pub snapshot_every: Duration,
    /// Replicas that must have an entry before its append succeeds (Redis
    /// `WAIT`); 0, the default, answers once the primary has it. With 1 and
    /// one replica, a Sentinel failover cannot lose an entry whose append
    /// succeeded; an append the replicas do not confirm in `replica_wait`
    /// fails as unavailable with its outcome unknown.
    pub replicas: u32,
    /// How long an append waits for `replicas`; under `command_timeout`.
    pub replica_wait: Duration,
}

impl ClusterConfig {
    /// A configuration with the documented defaults.
    pub fn new(url: impl Into<String>, node: impl Into<String>) -> Self {
        ClusterConfig {
            url: url.into(),
            node: node.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            idem_ttl: DEFAULT_IDEM_TTL,
            log_keep: DEFAULT_LOG_KEEP,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            replicas: 0,
            replica_wait: DEFAULT_REPLICA_WAIT,
        }
    }

    /// Checks the configuration without connecting: the URL parses and
    /// names what the engine can reach, the settings are in range. A
    /// command line is checked so before anything starts.
    ///
    /// # Errors
    ///
    /// [`EngineError::Config`], saying what is wrong.
    pub fn check(&self) -> Result<()> {
        self.target().map(drop)
    }

    /// Checks what the engine relies on and parses the URL.
    pub(crate) fn target(&self) -> Result<Target> {
        if self.node.is_empty() {
            return Err(EngineError::Config("the node id is empty".into()));
        }
        if self.prefix.is_empty() {
            return Err(EngineError::Config("the key prefix is empty".into()));
        }
        if self.idem_ttl < Duration::from_millis(1) {
            return Err(EngineError::Config(
                "the idempotency ttl is under a millisecond".into(),
            ));
        }
        if self.snapshot_every < Duration::from_millis(100) {
            return Err(EngineError::Config(
                "snapshots are taken less than 100 ms apart".into(),
            ));
        }
        if self.command_timeout < Duration::from_millis(10) {
            return Err(EngineError::Config(
                "the command timeout is under 10 ms".into(),
            ));
        }
        if self.replicas > 0
            && !(Duration::from_millis(1)..self.command_timeout).contains(&self.replica_wait)
        {
            // A longer WAIT would be cut by the command timeout, which
            // drops the connection rather than saying what is missing.
            return Err(EngineError::Config(format!(
                "the wait for replicas ({:?}) is not between 1 ms and the command timeout ({:?})",
                self.replica_wait, self.command_timeout
            )));
        }
        Target::parse(&self.url)
    }
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("url", &redacted(&self.url))
            .field("node", &self.node)
            .field("prefix", &self.prefix)
            .field("idem_ttl", &self.idem_ttl)
            .field("log_keep", &self.log_keep)
            .field("command_timeout", &self.command_timeout)
            .field("snapshot_every", &self.snapshot_every)
            .field("replicas", &self.replicas)
            .field("replica_wait", &self.replica_wait)
            .finish()
    }
}

/// The URL with its password replaced by `***`, for logs.
pub(crate) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{hosts}")
        }
        None => url.to_owned(),
    }
}

/// A parsed cluster URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// One Redis server.
    Direct(String),
    /// A master name resolved by Sentinel.
    Sentinel {
        /// `redis://H:P` of each sentinel.
        sentinels: Vec<String>,
        master: String,
        username: Option<String>,
        password: Option<String>,
        db: i64,
    },
}

impl Target {
    /// Parses `redis://…` (left to redis-rs) or `redis+sentinel://…`.
    pub(crate) fn parse(url: &str) -> Result<Target> {
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            // What redis-rs will connect to, checked now rather than at
            // the first connection (a typo is not an outage).
            redis::IntoConnectionInfo::into_connection_info(url).map_err(|err| {
                EngineError::Config(format!(
                    "cluster url `{}` is not valid: {err}",
                    redacted(url)
                ))
            })?;
            return Ok(Target::Direct(url.to_owned()));
        }
        let Some(rest) = url.strip_prefix("redis+sentinel://") else {
            return Err(EngineError::Config(format!(
                "cluster url `{url}` is neither redis:// nor redis+sentinel://"
            )));
        };
        let bad = |why: &str| EngineError::Config(format!("sentinel url `{url}` {why}"));
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((userinfo, rest)) => (Some(userinfo), rest),
            None => (None, rest),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, pass) = info.split_once(':').unwrap_or((info, ""));
                let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
                (some(user), some(pass))
            }
        };
        let mut parts = rest.split('/');
        let hosts = parts.next().unwrap_or_default();
        let master = parts
            .next()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| bad("names no master (…/MASTER)"))?;
        let db = match parts.next() {
            None | Some("") => 0,
            Some(db) => db
                .parse()
                .map_err(|_| bad(&format!("has a database `{db}` that is not a number")))?,
        };
        if parts.next().is_some() {
            return Err(bad("has more than /MASTER/DB after the hosts"));
        }
        let mut sentinels = Vec::new();
        for host in hosts.split(',') {
            let (h, p) = host
                .rsplit_once(':')
                .ok_or_else(|| bad(&format!("has a sentinel `{host}` without :PORT")))?;
            if h.is_empty() || p.parse::<u16>().is_err() {
                return Err(bad(&format!("has an invalid sentinel `{host}`")));
            }
            sentinels.push(format!("redis://{host}"));
        }
        Ok(Target::Sentinel {
            sentinels,
            master: master.to_owned(),
            username,
            password,
            db,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_urls_are_left_to_redis_rs() {
        assert_eq!(
            Target::parse("redis://127.0.0.1:6379/2").unwrap(),
            Target::Direct("redis://127.0.0.1:6379/2".into())
        );
    }

    #[test]
    fn sentinel_urls_name_hosts_master_credentials_and_db() {
        let cases: &[(&str, Option<Target>)] = &[
            (
                "redis+sentinel://h1:1,h2:2/main",
                Some(Target::Sentinel {
                    sentinels: vec!["redis://h1:1".into(), "redis://h2:2".into()],
                    master: "main".into(),
                    username: None,
                    password: None,
                    db: 0,
                }),
            ),
            (
                "redis+sentinel://u:p@h1:1/main/3",
                Some(Target::Sentinel {
                    sentinels: vec!["redis://h1:1".into()],
                    master: "main".into(),
                    username: Some("u".into()),
                    password: Some("p".into()),
                    db: 3,
                }),
            ),
            ("redis+sentinel://h1:1", None),
            ("redis+sentinel://h1:1/", None),
            ("redis+sentinel://h1/main", None),
            ("redis+sentinel://h1:x/main", None),
            ("redis+sentinel://h1:1/main/x", None),
            ("redis+sentinel://h1:1/main/1/2", None),
            ("http://h1:1", None),
        ];
        for (url, want) in cases {
            assert_eq!(Target::parse(url).ok(), *want, "{url}");
        }
    }

    #[test]
    fn passwords_never_reach_the_debug_output() {
        let config = ClusterConfig::new("redis+sentinel://u:secret@h:1/m", "a");
        let debug = format!("{config:?}");
        assert!(!debug.contains("secret"), "{debug}");
        assert!(debug.contains("redis+sentinel://u:***@h:1/m"), "{debug}");
        assert_eq!(redacted("redis://h:1"), "redis://h:1");
        assert_eq!(redacted("redis://:p@h:1"), "redis://:***@h:1");
    }

    #[test]
    fn the_wait_for_replicas_must_end_before_the_command_timeout() {
        let with = |replicas, wait_ms| ClusterConfig {
            replicas,
            replica_wait: Duration::from_millis(wait_ms),
            ..ClusterConfig::new("redis://127.0.0.1:1", "a")
        };
        assert!(with(1, 1000).check().is_ok());
        assert!(with(2, 2999).check().is_ok());
        for bad in [with(1, 0), with(1, 3000), with(1, 60_000)] {
            let err = bad.check().unwrap_err().to_string();
            assert!(err.contains("wait for replicas"), "{err}");
        }
        // Not waiting, the wait is not looked at.
        assert!(with(0, 0).check().is_ok());
    }

    #[test]
    fn empty_node_ids_are_refused() {
        let config = ClusterConfig::new("redis://127.0.0.1:1", "");
        assert!(matches!(config.target(), Err(EngineError::Config(_))));
    }
}
