//! Which server is the primary, as the sentinels say, and noticing when
//! that changes.
//!
//! redis-rs's Sentinel client asks the sentinels only when a connection
//! opens, and checks with `ROLE` that the server it names is a primary.
//! After a planned failover (`SENTINEL FAILOVER`) the old primary says it
//! is one for seconds more, until the sentinels reconfigure it, so nodes
//! kept writing to it: a probe lost 11 s of publishes answered `201`, and
//! a node started meanwhile joined the new primary, two logs at once.
//! Here every lookup asks all the sentinels and follows the one with the
//! highest configuration epoch (each failover raises it), and a watcher
//! asks again every [`WATCH_EVERY`]: a change of primary drops the
//! connections to the old one, and the next command reconnects.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};
use tokio::sync::Mutex;

use crate::error::{EngineError, Result};

/// How often the watcher asks the sentinels which server is the primary:
/// the longest a node writes to a primary the sentinels have replaced.
pub(crate) const WATCH_EVERY: Duration = Duration::from_millis(500);

/// A primary's address.
pub(crate) type Addr = (String, u16);

/// The sentinels of one master name.
pub(crate) struct Sentinels {
    sentinels: Vec<redis::Client>,
    /// Connections to them, opened on first use and after a failure.
    conns: Mutex<Vec<Option<MultiplexedConnection>>>,
    master: String,
    /// The data nodes' credentials and database.
    node: RedisConnectionInfo,
}

impl Sentinels {
    pub(crate) fn new(
        sentinels: &[String],
        master: String,
        node: RedisConnectionInfo,
    ) -> redis::RedisResult<Sentinels> {
        let sentinels = sentinels
            .iter()
            .map(|url| redis::Client::open(url.as_str()))
            .collect::<redis::RedisResult<Vec<_>>>()?;
        Ok(Sentinels {
            conns: Mutex::new(vec![None; sentinels.len()]),
            sentinels,
            master,
            node,
        })
    }

    /// The primary named by the sentinel with the highest configuration
    /// epoch among those that answer within `timeout`, asked all at once:
    /// one sentinel that drops packets costs the lookup `timeout`, not
    /// every lookup `timeout` more per such sentinel.
    pub(crate) async fn primary(&self, timeout: Duration) -> Result<Addr> {
        let conns: Vec<Option<MultiplexedConnection>> = self.conns.lock().await.clone();
        let mut asking = tokio::task::JoinSet::new();
        for (i, (client, conn)) in self.sentinels.iter().zip(conns).enumerate() {
            let (client, master) = (client.clone(), self.master.clone());
            asking.spawn(async move {
                let mut slot = conn;
                let answer = tokio::time::timeout(timeout, ask(&client, &mut slot, &master)).await;
                (i, slot, answer)
            });
        }
        let mut best: Option<(u64, Addr)> = None;
        let mut last_error = String::from("no sentinel configured");
        let mut kept = Vec::new();
        while let Some(joined) = asking.join_next().await {
            let Ok((i, slot, answer)) = joined else {
                continue;
            };
            match answer {
                Ok(Ok((epoch, addr))) => {
                    kept.push((i, slot));
                    if best.as_ref().is_none_or(|(e, _)| epoch > *e) {
                        best = Some((epoch, addr));
                    }
                }
                Ok(Err(err)) => {
                    kept.push((i, None));
                    last_error = err.to_string();
                }
                Err(_) => {
                    kept.push((i, None));
                    last_error = "a sentinel did not answer in time".into();
                }
            }
        }
        {
            let mut conns = self.conns.lock().await;
            for (i, slot) in kept {
                conns[i] = slot;
            }
        }
        best.map(|(_, addr)| addr).ok_or_else(|| {
            EngineError::unavailable(
                format!(
                    "no sentinel names a primary for {:?}: {last_error}",
                    self.master
                ),
                Duration::ZERO,
            )
        })
    }

    /// A connection to `addr`, checked with `ROLE` to be a primary.
    pub(crate) async fn connect(
        &self,
        addr: &Addr,
        config: &AsyncConnectionConfig,
    ) -> redis::RedisResult<MultiplexedConnection> {
        let info = ConnectionAddr::Tcp(addr.0.clone(), addr.1)
            .into_connection_info()?
            .set_redis_settings(self.node.clone());
        let mut conn = redis::Client::open(info)?
            .get_multiplexed_async_connection_with_config(config)
            .await?;
        let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
        match role.first() {
            Some(redis::Value::BulkString(r)) if r == b"master" => Ok(conn),
            _ => Err(redis::RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
                "the server the sentinels name is not a primary (yet)",
            ))),
        }
    }
}

/// One sentinel's view: its configuration epoch and the primary's address.
async fn ask(
    client: &redis::Client,
    slot: &mut Option<MultiplexedConnection>,
    master: &str,
) -> redis::RedisResult<(u64, Addr)> {
    if slot.is_none() {
        *slot = Some(client.get_multiplexed_async_connection().await?);
    }
    let conn = slot.as_mut().expect("opened above");
    let flat: Vec<String> = redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(master)
        .query_async(conn)
        .await?;
    parse_master(&flat).ok_or_else(|| {
        redis::RedisError::from((
            redis::ErrorKind::Parse,
            "SENTINEL MASTER answered without ip, port or config-epoch",
        ))
    })
}

/// `ip`, `port` and `config-epoch` of `SENTINEL MASTER`'s field/value list.
fn parse_master(flat: &[String]) -> Option<(u64, Addr)> {
    let field = |name: &str| {
        flat.chunks_exact(2)
            .find(|kv| kv[0] == name)
            .map(|kv| kv[1].as_str())
    };
    let ip = field("ip")?.to_owned();
    let port = field("port")?.parse().ok()?;
    let epoch = field("config-epoch")?.parse().ok()?;
    Some((epoch, (ip, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_primary_and_epoch_from_sentinel_master() {
        let flat: Vec<String> = [
            "name",
            "m",
            "ip",
            "127.0.0.1",
            "port",
            "6380",
            "flags",
            "master",
            "config-epoch",
            "3",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            parse_master(&flat),
            Some((3, ("127.0.0.1".to_owned(), 6380)))
        );
        assert_eq!(parse_master(&flat[..6]), None, "no epoch");
        let bad: Vec<String> = ["ip", "h", "port", "x", "config-epoch", "1"]
            .map(String::from)
            .to_vec();
        assert_eq!(parse_master(&bad), None);
    }
}
