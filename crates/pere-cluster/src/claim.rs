//! A node's claim on its id: two live processes with one `--node-id` would
//! each take the other's streams for their own (presence, cursors, the
//! sweep of dead nodes), so the second is refused at start.
//!
//! The claim is the key `{prefix}:node:{id}`, holding this process's
//! random instance token and the Redis time of its last renewal, with a
//! ttl. A heartbeat renews it. At start a node takes the key if it is free
//! or its own; if another instance holds it, the node watches it: a live
//! holder renews it within a heartbeat (its value changes), and the node
//! is refused; one that lapses, or stays unchanged for [`CLAIM_PATIENCE`],
//! is a previous life of this node (a `kill -9`), and is taken over. A
//! clean stop deletes the key, so a restart does not wait.

use std::hash::{BuildHasher, Hasher};
use std::sync::LazyLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::Script;

use crate::Engine;
use crate::error::{EngineError, Result};

/// How long an unchanged claim of another instance is watched before it
/// counts as dead: as long as the cluster counts a node alive without a
/// heartbeat (the hub's 5 s), and a little more. A holder's claim lapses
/// by then anyway, unless it died before its first heartbeat.
pub const CLAIM_PATIENCE: Duration = Duration::from_millis(5500);

/// How often a watched claim is looked at.
const CLAIM_POLL: Duration = Duration::from_millis(250);

/// The claim's ttl until the first heartbeat renews it with the
/// heartbeat's: long enough for a node to load a large snapshot first.
const CLAIM_TTL: Duration = Duration::from_secs(30);

/// Takes the claim if it is free, this instance's, or exactly `ARGV[3]`
/// (a claim watched long enough); else returns the holder's value.
///
/// `KEYS[1]` the claim, `ARGV[1]` instance token, `ARGV[2]` ttl in ms,
/// `ARGV[3]` the value it may replace (`''`: none).
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[3] and string.sub(cur, 1, #ARGV[1] + 1) ~= ARGV[1] .. ' ' then
  return cur
end
local t = redis.call('TIME')
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. t[1] .. '.' .. t[2], 'PX', ARGV[2])
return false
"#,
    )
});

/// Deletes the claim if this instance holds it.
///
/// `KEYS[1]` the claim, `ARGV[1]` instance token.
static UNCLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// A token no other process of any host shares in practice: the process
/// id and 64 bits from the standard library's per-process random keys.
pub(crate) fn instance_token() -> String {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{}-{random:016x}", std::process::id())
}

impl Engine {
    /// Claims this node's id for this process, before it serves: refused
    /// with [`EngineError::NodeIdInUse`] while another live process runs
    /// as the same node. A claim left by a previous life of this node
    /// (killed, not stopped) is taken over after [`CLAIM_PATIENCE`].
    ///
    /// # Errors
    ///
    /// [`EngineError::NodeIdInUse`], or [`EngineError::Unavailable`] when
    /// Redis cannot answer.
    pub async fn claim_node(&self) -> Result<()> {
        let Some(seen) = self.claim("").await? else {
            self.claimed();
            return Ok(());
        };
        let started = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(CLAIM_POLL).await;
            let quiet = started.elapsed() >= CLAIM_PATIENCE;
            match self.claim(if quiet { &seen } else { "" }).await? {
                None => {
                    tracing::info!(node = %self.shared.config.node, "took over this node's id from a previous run that stopped without a goodbye");
                    self.claimed();
                    return Ok(());
                }
                Some(now) if now != seen => {
                    return Err(EngineError::NodeIdInUse {
                        node: self.shared.config.node.clone(),
                    });
                }
                Some(_) => {}
            }
        }
    }

    /// Gives the node's id up (a clean stop): a restart need not wait.
    ///
    /// # Errors
    ///
    /// [`EngineError::Unavailable`] when Redis cannot take it; the claim
    /// then lapses with its ttl.
    pub async fn release_node(&self) -> Result<()> {
        if !self.shared.claimed.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let mut invocation = UNCLAIM.prepare_invoke();
        invocation
            .key(self.shared.keys.claim(&self.shared.config.node))
            .arg(&self.shared.instance);
        let _: i64 = self
            .run(async |conn| invocation.invoke_async(conn).await)
            .await?;
        Ok(())
    }

    /// Holds the claim from now on. Until the hub's heartbeats renew it,
    /// it renews itself every second: a node loading a large snapshot
    /// must not look dead to a second process with its id.
    fn claimed(&self) {
        self.shared.claimed.store(true, Ordering::Release);
        let engine = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let shared = &engine.shared;
                if shared.beating.load(Ordering::Acquire) || !shared.claimed.load(Ordering::Acquire)
                {
                    return;
                }
                if let Err(err) = engine.claim("").await {
                    tracing::warn!(cause = %err, "the node id's claim was not renewed");
                }
            }
        });
    }

    async fn claim(&self, replaces: &str) -> Result<Option<String>> {
        let mut invocation = CLAIM.prepare_invoke();
        invocation
            .key(self.shared.keys.claim(&self.shared.config.node))
            .arg(&self.shared.instance)
            .arg(crate::engine::millis(CLAIM_TTL))
            .arg(replaces);
        self.run(async |conn| invocation.invoke_async(conn).await)
            .await
    }
}
