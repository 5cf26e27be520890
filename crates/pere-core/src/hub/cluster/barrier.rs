//! A node's wait for the shared log's head, before answering what another
//! node may have changed a moment ago.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{SharedLog, SharedPos};

/// How long a [`Barrier`] waits for this node to catch up with the log.
const BARRIER_WAIT: Duration = Duration::from_secs(2);

/// A node's read barrier: what any node answered before a request is in
/// the log, so a node that has applied the log up to its head sees it too
/// (docs/PROTOCOL.md §10: a client's next request may land on another
/// node). Each node applies the log on its own and a little apart from
/// the others; a request that may have been answered from behind waits
/// for the barrier.
pub(in crate::hub) struct Barrier {
    log: Arc<dyn SharedLog>,
    /// The last entry this node applied.
    applied: watch::Sender<SharedPos>,
}

impl Barrier {
    pub(in crate::hub) fn new(log: Arc<dyn SharedLog>) -> Self {
        Self {
            log,
            applied: watch::Sender::new(SharedPos::default()),
        }
    }

    /// This node applied the log up to `pos`.
    pub(super) fn applied(&self, pos: SharedPos) {
        self.applied.send_replace(pos);
    }

    /// Waits until this node has applied the log up to its head as it is
    /// now. False when that cannot be learnt within [`BARRIER_WAIT`] (the
    /// log does not answer, or this node is stuck behind it).
    pub(in crate::hub) async fn wait(&self) -> bool {
        let reached = async {
            let head = self.log.head().await.ok()?;
            let mut applied = self.applied.subscribe();
            applied.wait_for(|pos| *pos >= head).await.ok().map(drop)
        };
        matches!(
            tokio::time::timeout(BARRIER_WAIT, reached).await,
            Ok(Some(()))
        )
    }
}
