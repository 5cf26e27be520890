//! What a failover lost, told to the whole cluster (docs/PROTOCOL.md §10):
//! which of this node's applied entries the log no longer holds, and on
//! which channels their events were.

use std::time::Duration;

use bytes::Bytes;

use super::log::{SharedLog, SharedLogError, SharedPos};
use super::wire::{self, Wire};
use crate::event::EventId;
use crate::hub::Inner;
use crate::log::EventStore;

/// The first of `recent` (the entries this node applied, in log order)
/// that the log no longer holds. Those after `kept` are gone: the log said
/// so. Before it more can be, when other nodes wrote to the promoted
/// replica while this one still wrote to the old primary: their entries
/// sit between.
pub(super) async fn first_lost(
    recent: &std::collections::VecDeque<(SharedPos, u64)>,
    log: &dyn SharedLog,
    kept: SharedPos,
) -> usize {
    let below = recent.partition_point(|(pos, _)| *pos <= kept);
    // Bounded as the telling is: the node's streams wait for it.
    let search = boundary(below, |i| {
        let (pos, first_id) = recent[i];
        async move { log.holds(pos, first_id).await.ok() }
    });
    tokio::time::timeout(TELL_LOSS, search)
        .await
        .unwrap_or(below)
}

/// Where entries `..n` stop being held, asking `holds(i)` (`None`: no
/// answer): what the log holds of them, trimmed ones counted as held, is
/// a prefix, found by halving. Without an answer, what was found gone so
/// far is all that counts as lost.
async fn boundary<F, Fut>(n: usize, mut holds: F) -> usize
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Option<bool>>,
{
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match holds(mid).await {
            Some(true) => lo = mid + 1,
            Some(false) => hi = mid,
            None => return hi,
        }
    }
    lo
}

/// How long a node that saw a failover lose entries tries to tell the
/// others before it stops.
const TELL_LOSS: Duration = Duration::from_secs(3);

/// Appends to the log, as it now is, which channels' events after `kept`
/// this node had applied: every node (and every node started later) then
/// tells a client resuming from before them with a `pere.gap`, not only
/// the streams open here (docs/PROTOCOL.md §10). Best effort, and only
/// once the log answers again: it did, to report the loss.
pub(super) async fn tell<S: EventStore>(inner: &Inner<S>, log: &dyn SharedLog, kept: EventId) {
    // Each channel's first and newest lost events: a resume point below
    // the newest lost something there, one at or above it nothing.
    let lost: Vec<(crate::name::ChannelName, u64, u64)> = {
        let state = inner.state();
        state
            .ledgers
            .channels()
            .filter_map(|(channel, ledger)| {
                let newest = ledger.receipts.back()?.id();
                let first = ledger
                    .receipts
                    .get(ledger.receipts.partition_point(|r| r.id() <= kept))?;
                (newest > kept).then(|| (channel.clone(), first.id().0, newest.0))
            })
            .collect()
    };
    if lost.is_empty() {
        return;
    }
    let count = lost.len();
    let blob = Bytes::from(wire::encode(&[Wire::Lost { lost }]));
    match tokio::time::timeout(TELL_LOSS, log.append(blob, 0, None)).await {
        // Unconfirmed: in the log, short of replicas (a promoted primary
        // has none yet).
        Ok(Ok(_) | Err(SharedLogError::Unconfirmed { .. })) => tracing::warn!(
            after = kept.0,
            channels = count,
            "told the cluster which events the failover lost"
        ),
        Ok(Err(err)) => {
            tracing::error!(cause = %err, "could not tell the cluster which events the failover lost: clients resuming from before them elsewhere are not told")
        }
        Err(_) => tracing::error!(
            "could not tell the cluster which events the failover lost in time: clients resuming from before them elsewhere are not told"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::boundary;

    /// `held` as the log would answer: held (or trimmed), then lost.
    async fn found(held: &[bool]) -> (usize, usize) {
        let mut asked = 0;
        let at = boundary(held.len(), |i| {
            asked += 1;
            let answer = held[i];
            async move { Some(answer) }
        })
        .await;
        (at, asked)
    }

    #[tokio::test]
    async fn the_boundary_is_found_by_halving() {
        let mut held = vec![true; 3000];
        held[2990..].fill(false);
        let (at, asked) = found(&held).await;
        assert_eq!(at, 2990);
        assert!(asked <= 12, "{asked} round trips");
        assert_eq!(found(&[true, true, true]).await.0, 3);
        assert_eq!(found(&[false, false]).await.0, 0);
        assert_eq!(found(&[]).await.0, 0);
        for lost in 0..=40 {
            let mut held = vec![true; 40];
            held[40 - lost..].fill(false);
            assert_eq!(found(&held).await.0, 40 - lost, "{lost} lost");
        }
    }

    #[tokio::test]
    async fn without_an_answer_only_what_was_found_gone_counts() {
        // Halving asks 5 first (gone), then 2 (no answer): 5.. counts.
        let at = boundary(10, |i| async move { (i >= 5).then_some(false) }).await;
        assert_eq!(at, 5);
    }
}
