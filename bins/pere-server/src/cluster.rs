//! `--cluster`, `--node-id`, `--snapshot-every`, `--log-keep` and
//! `--replicas`: what makes this server one node of many.

use std::time::Duration;

use pere_core::duration::parse_duration;

use crate::config::StoreKind;

/// The cluster's tuning flags, as given.
#[derive(Debug, Default)]
pub struct Tuning {
    /// `--snapshot-every`.
    pub snapshot_every: Option<String>,
    /// `--log-keep`.
    pub log_keep: Option<String>,
    /// `--replicas`.
    pub replicas: Option<String>,
}

impl Tuning {
    /// The first flag given, for the error when there is no `--cluster`.
    pub fn given(&self) -> Option<&'static str> {
        if self.snapshot_every.is_some() {
            Some("snapshot-every")
        } else if self.log_keep.is_some() {
            Some("log-keep")
        } else if self.replicas.is_some() {
            Some("replicas")
        } else {
            None
        }
    }
}

/// A duration flag, with its floor.
fn duration(
    value: Option<&str>,
    flag: &str,
    default: Duration,
    min: Duration,
) -> Result<Duration, String> {
    let Some(v) = value else {
        return Ok(default);
    };
    let d = parse_duration(v).map_err(|e| format!("--{flag}: {e}"))?;
    if d < min {
        return Err(format!("--{flag} `{v}` is under its minimum of {min:?}"));
    }
    Ok(d)
}

/// The store of a cluster node, from `--cluster URL`, `--node-id` and the
/// tuning flags.
pub fn store(url: &str, node_id: Option<&str>, tuning: &Tuning) -> Result<StoreKind, String> {
    let url = url.trim().to_owned();
    if !(url.starts_with("redis://")
        || url.starts_with("rediss://")
        || url.starts_with("redis+sentinel://"))
    {
        return Err(format!(
            "--cluster `{url}` is not a redis:// or redis+sentinel:// URL"
        ));
    }
    let node = match node_id {
        Some(id) => check_node_id(id.trim())?,
        None => default_node_id(),
    };
    pere_cluster::ClusterConfig::new(url.clone(), node.clone())
        .check()
        .map_err(|err| format!("--cluster: {err}"))?;
    // A second is plenty often (a snapshot walks the whole state); a log
    // kept under a second would make nodes that blink reload snapshots.
    let snapshot_every = duration(
        tuning.snapshot_every.as_deref(),
        "snapshot-every",
        pere_cluster::DEFAULT_SNAPSHOT_EVERY,
        Duration::from_secs(1),
    )?;
    let log_keep = duration(
        tuning.log_keep.as_deref(),
        "log-keep",
        pere_cluster::DEFAULT_LOG_KEEP,
        Duration::from_secs(1),
    )?;
    let replicas = match tuning.replicas.as_deref() {
        None => 0,
        Some(n) => n
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n <= MAX_REPLICAS)
            .ok_or_else(|| {
                format!("--replicas `{n}` is not a number of replicas from 0 to {MAX_REPLICAS}")
            })?,
    };
    Ok(StoreKind::Cluster {
        url,
        node,
        snapshot_every,
        log_keep,
        replicas,
    })
}

/// More replicas than any deployment waits for: a larger number is a typo
/// (a port, a duration) that would refuse every write.
const MAX_REPLICAS: u32 = 16;

/// A node id goes into Redis keys and log entries: short, printable.
fn check_node_id(id: &str) -> Result<String, String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(id.to_owned())
    } else {
        Err(format!(
            "--node-id `{id}` must be 1 to 64 letters, digits, `-`, `_` or `.`"
        ))
    }
}

/// A node id no other node has: host name, process id, start time. A new
/// one at each start, so the streams of a node that died are swept by the
/// others once its heartbeat expires, whatever this one does.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(32)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{host}-{}-{started:x}", std::process::id())
}

/// The URL with its password hidden, for messages.
pub fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, hosts)) => format!("{scheme}://***@{hosts}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::{Args, Config};

    #[test]
    fn cluster_urls_and_node_ids_are_checked() {
        let e = HashMap::from([(
            "PERE_CLUSTER".to_owned(),
            "redis://10.0.0.5:6379".to_owned(),
        )]);
        let store = Config::resolve(Args::default(), &e).unwrap().store;
        let StoreKind::Cluster { url, node, .. } = store else {
            panic!("PERE_CLUSTER makes a cluster node: {store:?}");
        };
        assert_eq!(url, "redis://10.0.0.5:6379");
        assert!(!node.is_empty() && check_node_id(&node).is_ok(), "{node}");
        let args = Args {
            cluster: Some("redis+sentinel://a:26379,b:26379/pere".into()),
            node_id: Some("eu-1".into()),
            ..Args::default()
        };
        assert_eq!(
            Config::resolve(args, &HashMap::new()).unwrap().store,
            StoreKind::Cluster {
                url: "redis+sentinel://a:26379,b:26379/pere".into(),
                node: "eu-1".into(),
                snapshot_every: pere_cluster::DEFAULT_SNAPSHOT_EVERY,
                log_keep: pere_cluster::DEFAULT_LOG_KEEP,
                replicas: 0,
            }
        );
        let err = |args: Args| Config::resolve(args, &HashMap::new()).unwrap_err();
        let tuned = Config::resolve(
            Args {
                cluster: Some("redis://r:6379".into()),
                snapshot_every: Some("5s".into()),
                log_keep: Some("2m".into()),
                ..Args::default()
            },
            &HashMap::new(),
        )
        .unwrap()
        .store;
        let StoreKind::Cluster {
            snapshot_every,
            log_keep,
            ..
        } = tuned
        else {
            panic!("{tuned:?}");
        };
        assert_eq!(
            (snapshot_every, log_keep),
            (Duration::from_secs(5), Duration::from_secs(120))
        );
        assert!(
            err(Args {
                cluster: Some("redis://r:6379".into()),
                snapshot_every: Some("10ms".into()),
                ..Args::default()
            })
            .contains("--snapshot-every `10ms` is under its minimum")
        );
        assert!(
            err(Args {
                log_keep: Some("1h".into()),
                ..Args::default()
            })
            .contains("--log-keep tunes a cluster: it needs --cluster")
        );
        let replicas = |n: &str| {
            Config::resolve(
                Args {
                    cluster: Some("redis://r:6379".into()),
                    replicas: Some(n.into()),
                    ..Args::default()
                },
                &HashMap::new(),
            )
            .map(|c| match c.store {
                StoreKind::Cluster { replicas, .. } => replicas,
                other => panic!("{other:?}"),
            })
        };
        assert_eq!(replicas("1"), Ok(1));
        assert_eq!(replicas(" 2 "), Ok(2));
        for bad in ["-1", "one", "17", "6379", ""] {
            let e = replicas(bad).unwrap_err();
            assert!(
                e.contains("is not a number of replicas from 0 to 16"),
                "{bad}: {e}"
            );
        }
        assert!(
            err(Args {
                replicas: Some("1".into()),
                ..Args::default()
            })
            .contains("--replicas tunes a cluster: it needs --cluster")
        );
        // A URL that cannot name a server is a usage error, not an outage.
        for url in [
            "redis://",
            "redis://127.0.0.1:notaport",
            "redis://127.0.0.1:99999",
            "redis://127.0.0.1:6379/abc",
            "redis://[::1:6379",
            "redis+sentinel://127.0.0.1:26379",
            "redis+sentinel:///main",
        ] {
            let e = err(Args {
                cluster: Some(url.into()),
                ..Args::default()
            });
            assert!(e.starts_with("--cluster: "), "{url}: {e}");
        }
        assert!(
            err(Args {
                cluster: Some("http://redis:6379".into()),
                ..Args::default()
            })
            .contains("not a redis://")
        );
        assert!(
            err(Args {
                cluster: Some("redis://r:6379".into()),
                data_dir: Some("/x".into()),
                ..Args::default()
            })
            .contains("contradict")
        );
        assert!(
            err(Args {
                cluster: Some("redis://r:6379".into()),
                node_id: Some("a b".into()),
                ..Args::default()
            })
            .contains("--node-id")
        );
        assert!(
            err(Args {
                node_id: Some("eu-1".into()),
                ..Args::default()
            })
            .contains("needs --cluster")
        );
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redacted("redis://u:secret@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redacted("redis://h:1"), "redis://h:1");
    }
}
