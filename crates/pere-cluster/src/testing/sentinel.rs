//! [`SentinelGroup`]: a primary, one replica and three sentinels (quorum 2)
//! on loopback ports, tuned to fail over within seconds.

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use super::{RedisServer, wait_for};

/// The master name the sentinels monitor.
pub const MASTER: &str = "pere-test";

/// The replication user the replica logs in as: disabling it on the
/// primary is how [`SentinelGroup::cut_replication`] keeps the replica
/// from reconnecting.
const REPL_USER: &str = "pere-repl";
const REPL_PASS: &str = "pere-repl-pass";

/// How long until a silent primary is subjectively down: short, so tests
/// fail over in a few seconds.
const DOWN_AFTER_MS: u64 = 1000;

/// A primary, a replica and three sentinels, all killed on drop.
#[derive(Debug)]
pub struct SentinelGroup {
    /// The first primary (a replica after a failover, if restarted).
    pub primary: RedisServer,
    /// Its replica, promoted by a failover.
    pub replica: RedisServer,
    /// The sentinels.
    pub sentinels: Vec<RedisServer>,
}

impl SentinelGroup {
    /// Starts the five processes and waits until the sentinels know the
    /// replica and each other, so that a failover can happen at once.
    ///
    /// # Errors
    ///
    /// When a process does not start or the group does not form in time.
    pub fn start() -> io::Result<SentinelGroup> {
        let pass = format!(">{REPL_PASS}");
        // Each word its own argument: redis-server quotes every argument.
        let user = ["--user", REPL_USER, "on", &pass, "~*", "&*", "+@all"];
        let primary = RedisServer::start_with(&user)?;
        let port = primary.port().to_string();
        let mut args = vec![
            "--replicaof",
            "127.0.0.1",
            &port,
            "--masteruser",
            REPL_USER,
            "--masterauth",
            REPL_PASS,
        ];
        // Its own copy of the user, so it can serve a replica later.
        args.extend(user);
        let replica = RedisServer::start_with(&args)?;
        wait_for("the replica to sync", Duration::from_secs(20), || {
            (replica.info("replication", "master_link_status").ok()? == "up").then_some(())
        })?;
        let config = format!(
            "sentinel monitor {MASTER} 127.0.0.1 {port} 2\n\
             sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n\
             sentinel failover-timeout {MASTER} 10000\n\
             sentinel parallel-syncs {MASTER} 1\n"
        );
        let sentinels = (0..3)
            .map(|_| RedisServer::start_sentinel(&config))
            .collect::<io::Result<Vec<_>>>()?;
        let group = SentinelGroup {
            primary,
            replica,
            sentinels,
        };
        // Sentinels find replicas through the primary's INFO and each other
        // through hello messages every 2 s.
        wait_for(
            "the sentinels to know the group",
            Duration::from_secs(30),
            || {
                group
                    .sentinels
                    .iter()
                    .all(|s| {
                        let master = sentinel_master(s).unwrap_or_default();
                        let num = |f: &str| master.get(f).and_then(|v| v.parse::<u32>().ok());
                        num("num-slaves") == Some(1) && num("num-other-sentinels") == Some(2)
                    })
                    .then_some(())
            },
        )?;
        Ok(group)
    }

    /// `redis+sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/pere-test`.
    pub fn url(&self) -> String {
        let hosts: Vec<_> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        format!("redis+sentinel://{}/{MASTER}", hosts.join(","))
    }

    /// The port every sentinel names as the master's, if they agree.
    pub fn master_port(&self) -> Option<u16> {
        let mut ports = self.sentinels.iter().map(|s| {
            let addr: Vec<String> = s
                .query(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER])
                .ok()?;
            addr.get(1)?.parse::<u16>().ok()
        });
        let first = ports.next()??;
        ports.all(|p| p == Some(first)).then_some(first)
    }

    /// Waits until the sentinels agree on the replica as the master and it
    /// says it is one.
    ///
    /// # Errors
    ///
    /// When the failover does not complete within `limit`.
    pub fn wait_for_promotion(&self, limit: Duration) -> io::Result<()> {
        wait_for("the replica's promotion", limit, || {
            (self.master_port() == Some(self.replica.port())
                && self.replica.info("replication", "role").ok()? == "master")
                .then_some(())
        })
    }

    /// Asks a sentinel for a failover now, the primary healthy (`SENTINEL
    /// FAILOVER`): the replica is promoted, and the old primary goes on
    /// saying it is one until the sentinels reconfigure it, seconds later.
    ///
    /// # Errors
    ///
    /// When the sentinel refuses.
    pub fn planned_failover(&self) -> io::Result<()> {
        self.sentinels[0]
            .query::<()>(&["SENTINEL", "FAILOVER", MASTER])
            .map_err(io::Error::other)
    }

    /// Waits until the replica has everything the primary wrote (`WAIT`).
    ///
    /// # Errors
    ///
    /// When the replica does not acknowledge in time.
    pub fn sync_replica(&self) -> io::Result<()> {
        let acked: i64 = self
            .primary
            .query(&["WAIT", "1", "5000"])
            .map_err(io::Error::other)?;
        if acked == 1 {
            Ok(())
        } else {
            Err(io::Error::other("the replica did not acknowledge"))
        }
    }

    /// Cuts replication for good while the primary keeps serving: the
    /// replica's user is disabled on the primary and its link killed, so
    /// its reconnections fail authentication. What the primary takes from
    /// now on exists nowhere else: deterministic "async replication lost
    /// it", without timing games. (`DEBUG SLEEP` on the replica would not
    /// do: the writes would wait in its socket buffer and arrive after.)
    ///
    /// # Errors
    ///
    /// When the primary refuses, or still has a replica after 5 s.
    pub fn cut_replication(&self) -> io::Result<()> {
        let err = io::Error::other;
        self.primary
            .query::<()>(&["ACL", "SETUSER", REPL_USER, "off"])
            .map_err(err)?;
        self.primary
            .query::<i64>(&["CLIENT", "KILL", "TYPE", "replica"])
            .map_err(err)?;
        wait_for("the replica to be cut off", Duration::from_secs(5), || {
            (self.primary.info("replication", "connected_slaves").ok()? == "0").then_some(())
        })
    }
}

impl SentinelGroup {
    /// Undoes [`SentinelGroup::cut_replication`]: the replica logs in
    /// again and catches up with what the primary took meanwhile.
    ///
    /// # Errors
    ///
    /// When the primary refuses, or the replica is not back after 20 s.
    pub fn restore_replication(&self) -> io::Result<()> {
        self.primary
            .query::<()>(&["ACL", "SETUSER", REPL_USER, "on"])
            .map_err(io::Error::other)?;
        wait_for("the replica to be back", Duration::from_secs(20), || {
            (self
                .replica
                .info("replication", "master_link_status")
                .ok()?
                == "up")
                .then_some(())
        })
    }
}

/// `SENTINEL MASTER` as a map.
fn sentinel_master(sentinel: &RedisServer) -> redis::RedisResult<HashMap<String, String>> {
    let flat: Vec<String> = sentinel.query(&["SENTINEL", "MASTER", MASTER])?;
    Ok(flat
        .chunks(2)
        .filter_map(|pair| Some((pair.first()?.clone(), pair.get(1)?.clone())))
        .collect())
}
