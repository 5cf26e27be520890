//! The engine as the hub's shared log ([`pere_core::cluster::SharedLog`]):
//! how a `pere-server` node becomes one of many.

use std::time::Duration;

use bytes::Bytes;
use pere_core::cluster::{
    LogFuture, SharedAppended, SharedEntry, SharedLog, SharedLogError, SharedPos, SharedTail,
};

use crate::{Engine, EngineError, LogPos, NewEntry, Tail};

fn pos(p: LogPos) -> SharedPos {
    SharedPos {
        ms: p.ms,
        seq: p.seq,
    }
}

fn log_pos(p: SharedPos) -> LogPos {
    LogPos {
        ms: p.ms,
        seq: p.seq,
    }
}

fn error(err: EngineError) -> SharedLogError {
    match err {
        EngineError::Unavailable {
            retry_after,
            reason,
            ..
        } => SharedLogError::Unavailable {
            reason,
            retry_after,
        },
        EngineError::Unconfirmed { pos: at, reason } => SharedLogError::Unconfirmed {
            reason,
            pos: pos(at),
            retry_after: crate::error::MIN_RETRY_AFTER,
        },
        EngineError::Stale { last } => SharedLogError::Stale { last },
        err @ EngineError::Trimmed { .. } => SharedLogError::Behind(err.to_string()),
        err @ EngineError::Regressed { now, .. } => SharedLogError::Lost {
            reason: err.to_string(),
            kept: pos(now),
        },
        err => SharedLogError::Other(err.to_string()),
    }
}

impl SharedLog for Engine {
    fn node(&self) -> &str {
        Engine::node(self)
    }

    fn append(
        &self,
        blob: Bytes,
        events: u32,
        serial: Option<u64>,
    ) -> LogFuture<'_, SharedAppended> {
        Box::pin(async move {
            // Idempotency is the hub's (its keys are replicated state): the
            // log only orders and numbers.
            let entry = NewEntry {
                blob,
                idem: vec![None; events as usize],
                serial,
            };
            Engine::append(self, entry)
                .await
                .map(|a| SharedAppended {
                    pos: pos(a.pos),
                    again: a.again,
                })
                .map_err(error)
        })
    }

    fn tail(&self, after: SharedPos) -> Box<dyn SharedTail> {
        Box::new(Engine::tail(self, log_pos(after)))
    }

    fn holds(&self, at: SharedPos, first_id: u64) -> LogFuture<'_, bool> {
        Box::pin(async move {
            Engine::holds(self, log_pos(at), first_id)
                .await
                .map_err(error)
        })
    }

    fn head(&self) -> LogFuture<'_, SharedPos> {
        Box::pin(async move { Engine::head(self).await.map(pos).map_err(error) })
    }

    fn probe(&self) -> LogFuture<'_, ()> {
        Box::pin(async move { Engine::probe(self).await.map_err(error) })
    }

    fn heartbeat(&self, ttl: Duration) -> LogFuture<'_, ()> {
        Box::pin(async move { Engine::heartbeat(self, ttl).await.map_err(error) })
    }

    fn expired_nodes(&self) -> LogFuture<'_, Vec<String>> {
        Box::pin(async move { Engine::expired_nodes(self).await.map_err(error) })
    }

    fn forget_node<'a>(&'a self, node: &'a str) -> LogFuture<'a, ()> {
        Box::pin(async move {
            Engine::forget_node(self, node)
                .await
                .map(|_| ())
                .map_err(error)
        })
    }

    fn try_lease<'a>(&'a self, name: &'a str, ttl: Duration) -> LogFuture<'a, bool> {
        Box::pin(async move { Engine::try_lease(self, name, ttl).await.map_err(error) })
    }

    fn put_snapshot(&self, at: SharedPos, blob: Bytes) -> LogFuture<'_, ()> {
        Box::pin(async move {
            Engine::put_snapshot(self, log_pos(at), blob)
                .await
                .map_err(error)
        })
    }

    fn snapshot(&self) -> LogFuture<'_, Option<(SharedPos, Bytes)>> {
        Box::pin(async move {
            Engine::snapshot(self)
                .await
                .map(|s| s.map(|(p, blob)| (pos(p), blob)))
                .map_err(error)
        })
    }

    fn snapshot_every(&self) -> Duration {
        self.shared.config.snapshot_every
    }

    fn genesis(&self) -> LogFuture<'_, u64> {
        Box::pin(async move { Engine::genesis(self).await.map_err(error) })
    }
}

impl SharedTail for Tail {
    fn next(&mut self) -> LogFuture<'_, SharedEntry> {
        Box::pin(async move {
            let entry = Tail::next(self).await.map_err(error)?;
            Ok(SharedEntry {
                pos: pos(entry.pos),
                node: entry.node,
                blob: entry.blob,
                first_id: entry.first_id,
                time: entry.time,
            })
        })
    }
}
