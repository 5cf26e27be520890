//! `pere-cluster`: PERE's Redis engine, the shared log that lets several
//! `pere-server` nodes run one hub (issue 15).
//!
//! The cluster is a replicated state machine. Redis is the single ordering
//! authority and the durable journal; every node keeps the whole hub state
//! in memory by applying the same log in the same order, so every node
//! computes the same audiences, retention and receipts.
//!
//! - [`Engine`] is the handle a node shares: [`Engine::append`] puts one node
//!   batch ([`NewEntry`]) on the log in one atomic script that also assigns
//!   its event ids and settles its idempotency keys ([`IdemKey`]), answering
//!   an [`Appended`].
//! - [`Tail`] ([`Engine::tail`]) reads the log back in order as [`Entry`]s
//!   at [`LogPos`]itions, and says when it cannot be trusted any more:
//!   [`EngineError::Trimmed`] (reload the snapshot) or
//!   [`EngineError::Regressed`] (a failover lost entries).
//! - [`Engine::put_snapshot`] and [`Engine::snapshot`] keep the latest state
//!   snapshot, after which the log is trimmed.
//! - Heartbeats ([`Engine::heartbeat`], [`Engine::live_nodes`]) and leases
//!   ([`Engine::try_lease`]) coordinate the nodes; [`Engine::claim_node`]
//!   keeps two live processes from running as one node.
//!
//! The engine deals in opaque blobs plus the few fields Redis itself must
//! understand (event counts, idempotency keys): it knows nothing of the
//! hub's records. The Redis schema, every script and the failure semantics
//! are written down in this crate's README.
//!
//! With the `testing` feature, `testing` starts real `redis-server` and
//! Sentinel processes for tests and benchmarks.
//!
//! # A node's life
//!
//! ```no_run
//! use bytes::Bytes;
//! use pere_cluster::{ClusterConfig, Engine, LogPos, NewEntry};
//!
//! # async fn example(batch: Bytes) -> pere_cluster::Result<()> {
//! let engine = Engine::connect(ClusterConfig::new("redis://127.0.0.1:6379", "node-a")).await?;
//! let (from, state) = engine.snapshot().await?.unwrap_or((LogPos::ZERO, Bytes::new()));
//! // … load `state` into the hub, then follow the log from its position:
//! let mut tail = engine.tail(from);
//! let appended = engine.append(NewEntry { blob: batch, idem: vec![None; 3], serial: None }).await?;
//! let entry = tail.next().await?; // every node gets this entry, at the same place
//! # let _ = (state, appended, entry);
//! # Ok(())
//! # }
//! ```

mod claim;
mod config;
mod conn;
mod engine;
mod entry;
mod error;
mod pos;
mod scripts;
mod sentinel;
mod shared;
mod snapshot;
mod tail;
#[cfg(feature = "testing")]
pub mod testing;

pub use claim::CLAIM_PATIENCE;
pub use config::{
    ClusterConfig, DEFAULT_COMMAND_TIMEOUT, DEFAULT_IDEM_TTL, DEFAULT_LOG_KEEP, DEFAULT_PREFIX,
    DEFAULT_SNAPSHOT_EVERY,
};
pub use engine::Engine;
pub use entry::{Appended, Entry, IdemKey, NewEntry, Slot};
pub use error::{EngineError, Result};
pub use pos::{LogPos, ParseLogPosError};
pub use tail::Tail;
