//! This node's numbers for its entries, so that an entry whose append got
//! no answer lands on the log at most once.
//!
//! When Redis hangs after taking an append, the node cannot know whether
//! it ran: Redis may run it on waking, long after the node gave up. What
//! the entry carried that only this node knew (a stream's end, what its
//! streams were written) must still reach the log, but sent again in a
//! later entry it was applied twice once the first copy ran too: a device
//! still streaming was counted offline. So each entry carries a serial
//! ([`SharedLog::append`]), and what an unanswered entry carried goes
//! again alone, under the same serial, before anything else: whichever
//! copy the log gets first lands, and the other adds nothing.

use bytes::Bytes;

use super::wire::{self, Wire};
use super::{SharedAppended, SharedLog, SharedLogError};

/// How many times an entry is renumbered when the log holds a later
/// serial of this node (one is enough: the log says its highest).
const RENUMBER: usize = 3;

/// The serials of this node's entries.
pub(super) struct Serials {
    /// The next fresh serial.
    next: u64,
    /// An entry that got no answer: its serial, and what it carried that
    /// only this node knew.
    unsettled: Option<(u64, Vec<Wire>)>,
}

impl Serials {
    /// Serials start at the clock (µs since the epoch, below Lua's exact
    /// 2^53 for two centuries): above those of the node's previous life,
    /// which took at most one per append made before this one started.
    /// The log corrects the rare start below them ([`SharedLogError::Stale`]).
    pub(super) fn new() -> Serials {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(1));
        Serials {
            next: now.max(1),
            unsettled: None,
        }
    }

    /// Whether an unanswered entry's news still has to go.
    pub(super) fn unsettled(&self) -> bool {
        self.unsettled.is_some()
    }

    /// Sends what an unanswered entry carried, under its serial, until the
    /// log has it: `Ok(true)` once it has, `Ok(false)` when there was none.
    pub(super) async fn settle(&mut self, log: &dyn SharedLog) -> Result<bool, SharedLogError> {
        let Some((serial, wires)) = self.unsettled.take() else {
            return Ok(false);
        };
        match self.send(log, serial, &wires, true).await {
            // Unconfirmed: the log has it, as when it succeeds.
            (_, Ok(_) | Err(SharedLogError::Unconfirmed { .. })) => Ok(true),
            (serial, Err(err)) => {
                self.unsettled = Some((serial, wires));
                Err(err)
            }
        }
    }

    /// Appends `wires` as a new entry. When the log cannot say whether it
    /// took it, what the entry carried that only this node knew (the
    /// wires `ours` marks) is kept to [`settle`](Serials::settle).
    pub(super) async fn append(
        &mut self,
        log: &dyn SharedLog,
        wires: Vec<Wire>,
        ours: impl Fn(usize) -> bool,
    ) -> Result<SharedAppended, SharedLogError> {
        let serial = self.take();
        let (serial, result) = self.send(log, serial, &wires, false).await;
        if let Err(err) = &result
            && !matches!(err, SharedLogError::Unconfirmed { .. })
        {
            let kept: Vec<Wire> = wires
                .into_iter()
                .enumerate()
                .filter_map(|(i, w)| ours(i).then_some(w))
                .collect();
            if !kept.is_empty() {
                self.unsettled = Some((serial, kept));
            }
        }
        result
    }

    fn take(&mut self) -> u64 {
        let serial = self.next;
        self.next += 1;
        serial
    }

    /// One entry under `serial` (`again`: sent before, with no answer),
    /// renumbered when the log took a later serial of this node. Returns
    /// the serial it went under last.
    async fn send(
        &mut self,
        log: &dyn SharedLog,
        mut serial: u64,
        wires: &[Wire],
        mut again: bool,
    ) -> (u64, Result<SharedAppended, SharedLogError>) {
        let blob = Bytes::from(wire::encode(wires));
        let events =
            u32::try_from(wires.iter().filter(|w| w.is_event()).count()).unwrap_or(u32::MAX);
        for _ in 0..RENUMBER {
            let last = match log.append(blob.clone(), events, Some(serial)).await {
                // A fresh serial the log had already: a previous life's.
                Ok(appended) if appended.again && !again => serial,
                // A later serial is on the log, so this one never lands:
                // a previous life's, since this life sends nothing new
                // while an entry is unsettled.
                Err(SharedLogError::Stale { last }) => last,
                result => return (serial, result),
            };
            tracing::debug!(
                serial,
                last,
                "the cluster log has a later serial of this node's; renumbering"
            );
            self.next = self.next.max(last.saturating_add(1));
            serial = self.take();
            again = false;
        }
        let err = SharedLogError::Other(format!(
            "the cluster log refused {RENUMBER} serials of this node's in a row"
        ));
        (serial, Err(err))
    }
}
